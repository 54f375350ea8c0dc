"""The serving fast path (``cpu_kernel/inference.py``'s ``fast_forward``, taken by ``BiLSTM``/``BiGRU.forward``
without ``hx``): bit for bit the general path (``block.run``, the same C call prepared field by field), taken where
it should be, and never where it must not: wrong input goes to the general path and its clear errors."""

import contextlib
import sysconfig
import threading
import weakref
from pathlib import Path
from typing import Iterator, List, Optional

import pytest
import torch
from helpers.kernel_aids import count_serving_calls, needs_serving_call
from torch import Tensor, nn

from models import BiGRU, BiLSTM
from models.blocks import cpu_kernel
from models.blocks.cpu_kernel import build
from models.blocks.cpu_kernel import inference as cpu_kernel_inference

needs_kernel = needs_serving_call  # every test here but the last two takes the serving call


@pytest.fixture(autouse=True)
def kernel_chosen() -> Iterator[None]:
    """The policy may send a shape to PyTorch on some CPU: these tests are about the kernel's fast path."""
    with cpu_kernel.forced():
        yield


def block_of(mode: str, batch_first: bool, merges: List[Optional[str]], dtype: torch.dtype = torch.float32
             ) -> nn.Module:
    kwargs = {"batch_first": batch_first, "merge_mode": merges, "dtype": dtype}
    if mode == "LSTM":
        return BiLSTM(6, 9, len(merges), **kwargs).eval()
    return BiGRU(6, 9, len(merges), reset_after=mode == "GRU", **kwargs).eval()


def fast_calls(block: nn.Module) -> List[int]:
    """Warm the block's plan up, then count the fast path's C calls (the plan's entry point, wrapped)."""
    with torch.no_grad():
        block(torch.zeros((1, 2, 6), dtype=block.weight_ih_l0.dtype))
    return count_serving_calls(cpu_kernel_inference._plans[block].fast)


def general(block: nn.Module, x: Tensor, lengths: Optional[Tensor]) -> List[Tensor]:
    with torch.no_grad():
        out, h_n, c_n = block.run(x, None, None, lengths)
    return [out, h_n, c_n]


def outputs(result: object) -> List[Tensor]:
    out, state = result  # type: ignore[misc]
    return [out, *state] if isinstance(state, tuple) else [out, state, state]


@needs_kernel
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "GRU_RESET_BEFORE"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("lengths_kind", ["none", "full", "ragged", "all_short"])
def test_fast_path_is_bit_exact_with_the_general_path(mode: str, batch_first: bool, batch: int,
                                                       lengths_kind: str) -> None:
    torch.manual_seed(0)
    steps = 7
    block = block_of(mode, batch_first, ["sum", None])
    calls = fast_calls(block)
    x = torch.randn((batch, steps, 6) if batch_first else (steps, batch, 6))
    lengths = {"none": None, "full": torch.full((batch,), steps), "all_short": torch.full((batch,), 4),
               "ragged": torch.tensor([steps, 2, 5][:batch]) if batch > 1 else torch.tensor([3])}[lengths_kind]
    with torch.no_grad():
        got = outputs(block(x, lengths=lengths))
    assert calls == [1], "the fast path was not taken"
    want = general(block, x, lengths)
    for name, a, b in zip(("output", "h_n", "c_n"), got, want, strict=True):
        assert a.shape == b.shape and (a.is_contiguous() or not b.is_contiguous()), name
        assert torch.equal(a, b), name
    if mode != "LSTM":
        assert got[1] is got[2]
    with torch.inference_mode():
        again = outputs(block(x, lengths=lengths))
    assert all(torch.equal(a, b) for a, b in zip(again, got, strict=True)) and len(calls) == 2


@needs_kernel
def test_outputs_are_fresh_tensors_and_padding_reads_nothing() -> None:
    """Each call returns new tensors (nothing a caller keeps is overwritten by the next call), and NaN in the
    padding of a request never reaches its outputs."""
    block = block_of("LSTM", True, ["concat", "concat"])
    calls = fast_calls(block)
    x = torch.randn(1, 9, 6)
    x[:, 5:] = float("nan")
    with torch.no_grad():
        first, (h1, c1) = block(x, lengths=torch.tensor([5]))
        kept = [first.clone(), h1.clone(), c1.clone()]
        second, (h2, c2) = block(torch.randn(1, 9, 6))
    assert len(calls) == 2
    assert all(torch.equal(a, b) for a, b in zip((first, h1, c1), kept, strict=True))
    assert {t.data_ptr() for t in (first, h1, c1)}.isdisjoint({t.data_ptr() for t in (second, h2, c2)})
    assert not first.isnan().any() and torch.all(first[:, 5:] == 0)


@needs_kernel
def test_float64_and_a_float64_default_dtype() -> None:
    block = block_of("GRU", False, ["ave", "concat"], torch.float64)
    calls = fast_calls(block)
    x = torch.randn(4, 2, 6, dtype=torch.float64)
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        with torch.no_grad():
            got = outputs(block(x))
        float32_block = block_of("LSTM", False, ["sum", "sum"])
        float32_calls = fast_calls(float32_block)
        with torch.no_grad():
            out, (h_n, c_n) = float32_block(x.float())
        assert out.dtype == h_n.dtype == c_n.dtype == torch.float32 and float32_calls == [1]
    finally:
        torch.set_default_dtype(previous)
    assert calls == [1] and all(t.dtype == torch.float64 for t in got)
    assert all(torch.equal(a, b) for a, b in zip(got, general(block, x, None), strict=True))


@needs_kernel
@pytest.mark.parametrize("case", ["dtype", "features", "no_steps", "lengths_too_long", "lengths_zero",
                                  "lengths_float", "lengths_shape"])
def test_bad_input_leaves_the_fast_path_for_the_checked_one(case: str) -> None:
    block = block_of("LSTM", False, ["concat"])
    calls = fast_calls(block)
    x = torch.randn(5, 2, 6)
    lengths: Optional[Tensor] = None
    if case == "dtype":
        x = x.double()
    elif case == "features":
        x = torch.randn(5, 2, 7)
    elif case == "no_steps":
        x = torch.randn(0, 2, 6)
    elif case == "lengths_too_long":
        lengths = torch.tensor([6, 2])
    elif case == "lengths_zero":
        lengths = torch.tensor([0, 2])
    elif case == "lengths_float":
        lengths = torch.tensor([5.0, 2.0])
    else:
        lengths = torch.tensor([5, 2, 1])
    with torch.no_grad(), pytest.raises((ValueError, TypeError)):
        block(x, lengths=lengths)
    assert calls == []


@needs_kernel
def test_not_taken_where_the_general_path_must_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gradients needed, a given state, training mode, disabled(), autocast, a changed weight: never the fast
    path (a weight change re-prepares the plan, whose fast path then runs with the new weights)."""
    block = block_of("LSTM", False, ["concat"])
    calls = fast_calls(block)
    x = torch.randn(5, 2, 6)
    block(x)  # gradients needed by the weights
    block(x.requires_grad_(False), (torch.zeros(2, 2, 9), torch.zeros(2, 2, 9)))
    with torch.no_grad():
        with cpu_kernel.disabled():
            block(x)
        # oneDNN's bf16 LSTM needs a CPU with bf16 support; without, it raises: either way not the fast path
        with torch.autocast("cpu", dtype=torch.bfloat16), contextlib.suppress(RuntimeError):
            block(x)
    assert calls == []
    with torch.no_grad():
        block.weight_hh_l0.mul_(0.5)  # a new plan, its own fast path
        got = block(x)[0]
    assert calls == [] and cpu_kernel_inference._plans[block].fast is not None
    assert torch.equal(got, general(block, x, None)[0])
    block.train()
    with torch.no_grad():
        block(x)
    assert cpu_kernel_inference._plans.get(block) is None


@pytest.mark.skipif(not cpu_kernel.available(), reason="CPU kernel not built")
def test_without_the_serving_extension_calls_take_the_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where ``birnn_fast_call`` cannot be built (no Python headers, a torch whose headers it does not compile
    against), one warning says why, the plan is still cached, and every eval call gives the general path's bits."""
    monkeypatch.setattr(cpu_kernel_inference, "_native", [])  # not tried yet in this process

    def unavailable() -> None:
        raise build.KernelUnavailable("Python's C headers are not installed (/x/Python.h is missing)")

    monkeypatch.setattr(cpu_kernel_inference.cpu_kernel_build, "load_fast_call", unavailable)
    torch.manual_seed(0)
    block, x = BiLSTM(6, 9, 2).eval(), torch.randn(5, 2, 6)
    with torch.no_grad(), cpu_kernel.forced(), pytest.warns(RuntimeWarning) as caught:
        got = [outputs(block(x)) for _ in range(3)]
        BiGRU(6, 9, 1).eval()(x)  # another block's plan: asked once per process, so no second warning
    assert [str(w.message) for w in caught] == [
        "birnn-zoo: the kernel's serving call is unavailable, inference calls take the general path (Python's C "
        "headers are not installed (/x/Python.h is missing))"]
    assert cpu_kernel_inference._plans[block].fast is None
    with cpu_kernel.forced():
        want = general(block, x, None)
    for outs in got:
        assert all(torch.equal(a, b) for a, b in zip(outs, want, strict=True))


@needs_kernel
def test_a_deleted_block_frees_its_weights_and_serving_call() -> None:
    """The serving call holds the weights it checks and what its prepared addresses point into, but nothing that
    holds it: when the block goes, all of it goes (no reference cycle through the extension)."""
    block = BiLSTM(6, 9, 2).eval()
    with torch.no_grad(), cpu_kernel.forced():
        block(torch.randn(4, 1, 6))
    fast = cpu_kernel_inference._plans[block].fast
    assert fast is not None
    alive = [weakref.ref(fast), weakref.ref(block.weight_hh_l1), weakref.ref(cpu_kernel_inference._plans[block])]
    del block, fast
    assert [ref() for ref in alive] == [None, None, None]  # freed by reference counts alone, no collection


@needs_kernel
def test_threads_sharing_a_block_get_their_own_results() -> None:
    """The kernel runs without the GIL: two threads calling one block at different batch sizes (each new size
    widens the plan's zero state) get what each gets alone."""
    torch.manual_seed(1)
    block = BiGRU(6, 9, 2, merge_mode="ave").eval()
    inputs = {batch: torch.randn(7, batch, 6) for batch in (1, 3, 5, 2)}
    with torch.no_grad(), cpu_kernel.forced():
        want = {batch: outputs(block(x)) for batch, x in inputs.items()}
    failures: List[str] = []

    def serve(order: List[int]) -> None:
        with torch.no_grad(), cpu_kernel.forced():
            for _ in range(30):
                for batch in order:
                    got = outputs(block(inputs[batch]))
                    if not all(torch.equal(a, b) for a, b in zip(got, want[batch], strict=True)):
                        failures.append(f"batch {batch}")

    threads = [threading.Thread(target=serve, args=(order,)) for order in ([1, 3, 5, 2], [5, 2, 1, 3])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_the_serving_call_builds_where_pythons_headers_are() -> None:
    """Where the kernel builds and Python's C headers are installed, its serving call builds too (else every eval
    call would quietly take the general path)."""
    if not cpu_kernel.available():
        pytest.skip("CPU kernel not built")
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.is_file():
        pytest.skip(f"Python's C headers are not installed ({headers}): the serving call cannot be built")
    assert cpu_kernel_inference._fast_call_module() is not None
