"""The kernel's scratch memory kept across calls (models/blocks/cpu_kernel/csrc/scratch.h): a call never sees another
call's values, whatever sizes came before, and calls on different threads never share a buffer. Fresh random
inputs; references are PyTorch's kernels (``cpu_kernel.disabled()``) and the kernel's own single-threaded results."""

import threading
from typing import List, Optional, Tuple

import pytest
import torch
from torch import Tensor

from models import BiGRU, BiLSTM
from models.blocks import cpu_kernel

needs_kernel = pytest.mark.skipif(not cpu_kernel.available(), reason="CPU kernel not built")

# (T, B): growing, shrinking and growing again, so a kept buffer is reused at smaller and regrown at larger sizes.
SHAPES = [(5, 2), (40, 7), (3, 1), (40, 7), (17, 3), (64, 16)]


def call(block: torch.nn.Module, x: Tensor, lengths: Optional[Tensor]) -> Tuple[Tensor, ...]:
    with torch.inference_mode(), cpu_kernel.forced():
        out, state = block(x, lengths=lengths) if lengths is not None else block(x)
    return (out,) + (tuple(state) if isinstance(state, tuple) else (state,))


@needs_kernel
@pytest.mark.parametrize("merges", [["concat", "concat"], ["sum", "concat"], ["concat", "ave", "mul"], [None]])
@pytest.mark.parametrize("cls", [BiLSTM, BiGRU])
def test_sizes_that_grow_and_shrink_give_pytorchs_results(cls: type, merges: List[Optional[str]]) -> None:
    block = cls(6, 9, num_layers=len(merges), merge_mode=merges).eval()
    for steps, batch in SHAPES:
        x = torch.randn(steps, batch, 6)
        lengths = torch.randint(1, steps + 1, (batch,)) if batch > 1 else None
        got = call(block, x, lengths)
        with torch.inference_mode(), cpu_kernel.disabled():
            out, state = block(x, lengths=lengths) if lengths is not None else block(x)
        expected = (out,) + (tuple(state) if isinstance(state, tuple) else (state,))
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, atol=2e-6, rtol=2e-6)


@needs_kernel
def test_calls_on_two_threads_at_once_equal_the_same_calls_one_after_another() -> None:
    """ctypes releases the GIL for the kernel's call, so these run at the same time, each thread with its own kept
    buffers: the results are bit-identical to the same calls made one after another."""
    blocks = [BiLSTM(8, 12, num_layers=2, merge_mode=["sum", "concat"]).eval(),
              BiGRU(8, 12, num_layers=2).eval()]
    inputs = [[torch.randn(steps, batch, 8) for steps, batch in SHAPES] for _ in blocks]
    expected = [[call(block, x, None) for x in xs] for block, xs in zip(blocks, inputs, strict=True)]
    results: List[List[Tuple[Tensor, ...]]] = [[], []]
    errors: List[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(5):
                results[i].extend(call(blocks[i], x, None) for x in inputs[i])
        except BaseException as error:  # re-raised in the main thread below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for i in range(2):
        assert len(results[i]) == 5 * len(SHAPES)
        for k, got in enumerate(results[i]):
            for a, b in zip(got, expected[i][k % len(SHAPES)], strict=True):
                assert torch.equal(a, b)
