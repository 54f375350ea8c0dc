"""Function-level tests of models/blocks/cpu_kernel/inference.py's serving fast path written for mutation testing
(issue 37): which shape it asks the policy about (a wrong question changes only which path runs, so the tests look
at the path taken), and its zero initial state when the batch size changes, in float64 too."""

from typing import Any, List, Tuple

import pytest
import torch

from models import BiLSTM
from models.blocks import cpu_kernel
from models.blocks.cpu_kernel import inference

needs_kernel = pytest.mark.skipif(not cpu_kernel.available(), reason="CPU kernel not built")


def warmed(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A one-layer BiLSTM (F = 6, H = 9) in eval mode with its plan cached (prepared on the kernel, forced)."""
    torch.manual_seed(0)
    block = BiLSTM(6, 9, 1, dtype=dtype).eval()
    with torch.no_grad(), cpu_kernel.forced():
        block(torch.zeros(2, 1, 6, dtype=dtype))
    assert inference._plans[block].fast is not None
    return block


@needs_kernel
def test_the_fast_path_asks_the_policy_about_the_calls_own_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    block = warmed()
    asked: List[Tuple[Any, ...]] = []
    answer = [True]

    def policy(*args: Any) -> bool:
        asked.append(args)
        return answer[0]
    monkeypatch.setattr(cpu_kernel, "kernel_chosen", policy)
    x = torch.randn(5, 3, 6)
    lengths = torch.tensor([5, 1, 3])  # a row of one step is valid input for the fast path
    with torch.no_grad():
        assert inference.fast_forward(block, x, lengths) is not None
        assert asked == [("LSTM", 3, 9, 5, True, False, torch.get_num_threads())]
        assert inference.fast_forward(block, x, None) is not None
        assert asked[-1] == ("LSTM", 3, 9, 5, False, False, torch.get_num_threads())
        answer[0] = False  # the policy sends this shape to PyTorch: the general path runs it
        assert inference.fast_forward(block, x, lengths) is None
        assert inference.fast_forward(block, x, None) is None
        asked.clear()
        with cpu_kernel.forced():  # forced onto the kernel: the policy is not asked
            assert inference.fast_forward(block, x, None) is not None
        assert asked == []


@needs_kernel
def test_float64_is_never_weighed_by_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    block = warmed(torch.float64)
    monkeypatch.setattr(cpu_kernel, "kernel_chosen", lambda *args: False)
    with torch.no_grad():
        assert inference.fast_forward(block, torch.randn(5, 3, 6, dtype=torch.float64), None) is not None


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_new_batch_size_gets_a_zero_state_of_the_weights_dtype(dtype: torch.dtype) -> None:
    block = warmed(dtype)
    with torch.no_grad(), cpu_kernel.forced():
        for batch in (3, 9, 2):
            x = torch.randn(4, batch, 6, dtype=dtype)
            fast = inference.fast_forward(block, x, None)
            assert fast is not None
            out, h_n, c_n = block.run(x, None, None, None)
            assert torch.equal(fast[0], out) and torch.equal(fast[1], h_n) and torch.equal(fast[2], c_n)
            assert inference._plans[block].fast.zeros.dtype == dtype
