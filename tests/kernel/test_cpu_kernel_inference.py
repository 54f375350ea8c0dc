"""The direct inference path (models/cpu_kernel_inference.py: prepared weights, packed W_ih/W_hh, one C call for
all the layers) against the custom operator's path it replaces without gradients, and against nn.LSTM/nn.GRU; and its
weight cache: reused while nothing changed, never stale after a change. Fresh random inputs every run."""

from typing import Iterator, Optional, Tuple

import pytest
import torch
from helpers.kernel_aids import StackSpy
from torch import Tensor, nn

from models import BiGRU, BiLSTM
from models.blocks import cpu_kernel
from models.blocks.cpu_kernel import inference as cpu_kernel_inference

needs_kernel = pytest.mark.skipif(not cpu_kernel.available(), reason="CPU kernel not built")
TOL = {torch.float32: 2e-6, torch.float64: 1e-12}


@pytest.fixture(autouse=True)
def kernel_chosen() -> Iterator[None]:
    """These tests cover the kernel's direct path, wherever the policy would send a shape on this CPU (on AVX-512
    one-thread LSTM without lengths goes to oneDNN): the blocks take the kernel wherever it can run."""
    with cpu_kernel.forced():
        yield


def block_of(mode: str, features: int, hidden: int, layers: int, **kwargs: object) -> nn.Module:
    if mode == "LSTM":
        return BiLSTM(features, hidden, layers, **kwargs)
    return BiGRU(features, hidden, layers, reset_after=mode != "GRU_RESET_BEFORE", **kwargs)


def run(block: nn.Module, x: Tensor, lengths: Optional[Tensor], h0: Optional[Tensor],
        c0: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    with torch.inference_mode():
        return block.run(x, h0, c0, lengths)


def on_operator_path(monkeypatch: pytest.MonkeyPatch, *args: object) -> Tuple[Tensor, Tensor, Tensor]:
    """The same call with the direct path switched off: the custom operator without stash, as before."""
    with monkeypatch.context() as patch:
        patch.setattr(cpu_kernel_inference, "usable", lambda *_: False)
        return run(*args)  # type: ignore[arg-type]


def taken(monkeypatch: pytest.MonkeyPatch) -> list:
    """Count the calls that take the direct path."""
    calls: list = []
    original = cpu_kernel_inference.run_layers

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cpu_kernel_inference, "run_layers", counting)
    return calls


@needs_kernel
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "GRU_RESET_BEFORE"])
@pytest.mark.parametrize("batch", [1, 3, 16])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_direct_path_equals_operator_path(monkeypatch: pytest.MonkeyPatch, mode: str, batch: int,
                                          with_lengths: bool, dtype: torch.dtype) -> None:
    steps, features, hidden, layers = 11, 7, 19, 3  # odd sizes: vector tails and partial panels
    block = block_of(mode, features, hidden, layers, merge_mode=["sum", "concat", "mul"]).to(dtype).eval()
    x = torch.randn(steps, batch, features, dtype=dtype)
    lengths = torch.randint(1, steps, (batch,)) if with_lengths else None  # padded at the last step but row 0
    if lengths is not None:
        lengths[0] = steps
        x[steps - 1, 1:] = float("nan")  # padding may hold anything; it must not reach a valid output
    h0 = torch.randn(2 * layers, batch, hidden, dtype=dtype)
    c0 = torch.randn(2 * layers, batch, hidden, dtype=dtype) if mode == "LSTM" else None
    calls = taken(monkeypatch)
    got = run(block, x, lengths, h0, c0)
    assert calls, "the direct path was not taken"
    expected = on_operator_path(monkeypatch, block, x, lengths, h0, c0)
    for name, a, b in zip(("output", "h_n", "c_n"), got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=TOL[dtype], rtol=TOL[dtype], msg=name)
    if lengths is not None:
        padded = torch.arange(steps).unsqueeze(1) >= lengths.unsqueeze(0)
        assert torch.all(got[0][padded] == 0) and not got[0].isnan().any()


@needs_kernel
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "GRU_RESET_BEFORE"])
def test_a_request_alone_gives_the_bits_it_gives_in_a_batch(mode: str) -> None:
    """Each output is the same sum in the same order however the product blocks its rows (step_gemm.h): a request
    alone (its projections over T rows: 1-6 in small blocks, 7-24 in AVX-512's 12-row blocks) and the same request
    as every row of a batch of 5 (5 T rows: the usual blocks) agree bit for bit, at every T from 1 to 26."""
    features, hidden = 37, 24  # a partial panel: 4 gates x 24 = 96 columns
    block = block_of(mode, features, hidden, 2, merge_mode=["concat", "sum"]).eval()
    for steps in range(1, 27):
        x = torch.randn(steps, 1, features)
        alone = run(block, x, None, None, None)
        batch = run(block, x.expand(steps, 5, features).contiguous(), None, None, None)
        for name, a, b in zip(("output", "h_n", "c_n"), alone, batch, strict=True):
            assert all(torch.equal(a[..., 0:1, :] if name == "output" else a, b[..., r:r + 1, :])
                       for r in range(5)), f"{name} at T = {steps}"


@needs_kernel
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "GRU_RESET_BEFORE"])
@pytest.mark.parametrize("merge", ["concat", "ave", None])
def test_steps_after_the_longest_sequence_are_skipped_with_the_same_result(
        monkeypatch: pytest.MonkeyPatch, mode: str, merge: Optional[str]) -> None:
    steps, batch, features, hidden = 12, 3, 5, 9
    block = block_of(mode, features, hidden, 2, merge_mode=["sum", merge]).eval()
    x = torch.randn(steps, batch, features)
    lengths = torch.tensor([7, 2, 5])  # every row padded after step 7
    x[7:] = float("nan")
    got = run(block, x, lengths, None, None)
    expected = on_operator_path(monkeypatch, block, x, lengths, None, None)
    assert got[0].shape == expected[0].shape and torch.all(got[0][7:] == 0)
    for name, a, b in zip(("output", "h_n", "c_n"), got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=2e-6, msg=name)


@needs_kernel
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "GRU_RESET_BEFORE"])
@pytest.mark.parametrize("batch", [1, 5])
def test_full_length_rows_run_without_the_lengths_path(monkeypatch: pytest.MonkeyPatch, mode: str,
                                                       batch: int) -> None:
    """Every row as long as x (a single unpadded request, a batch of equal lengths): the kernel is called without
    lengths, with the bits of the call without lengths; a single shorter request runs its own length only."""
    steps, features, hidden = 9, 6, 11
    block = block_of(mode, features, hidden, 2, merge_mode=["ave", "concat"]).eval()
    x = torch.randn(steps, batch, features)
    seen: list = []
    spy = StackSpy(cpu_kernel._kernel(), lambda name, args: seen.append((args.steps, args.lengths)))
    monkeypatch.setattr(cpu_kernel_inference.cpu_kernel, "_kernel", lambda: spy)
    full = torch.full((batch,), steps)
    got = run(block, x, full, None, None)
    without = run(block, x, None, None, None)
    assert seen == [(steps, None), (steps, None)]
    for name, a, b in zip(("output", "h_n", "c_n"), got, without, strict=True):
        assert torch.equal(a, b), name
    expected = on_operator_path(monkeypatch, block, x, full, None, None)
    for name, a, b in zip(("output", "h_n", "c_n"), got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=2e-6, msg=name)
    if batch == 1:  # one request padded to 9 steps, 4 of them real: 4 steps, no lengths, zeros after
        seen.clear()
        short = run(block, x, torch.tensor([4]), None, None)
        alone = run(block, x[:4], None, None, None)
        assert seen == [(4, None), (4, None)]
        assert torch.equal(short[0][:4], alone[0]) and torch.all(short[0][4:] == 0)
        assert torch.equal(short[1], alone[1])


@needs_kernel
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("threads", [1, 2])
def test_direct_path_equals_torch_module(mode: str, batch: int, threads: int) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        steps, hidden = 13, 33
        reference = getattr(nn, mode)(hidden, hidden, 2, batch_first=True, bidirectional=True).eval()
        block = block_of(mode, hidden, hidden, 2, batch_first=True).eval()
        block.load_state_dict(reference.state_dict())
        x = torch.randn(batch, steps, hidden)
        x[0, 3, 5] = float("nan")  # NaN propagates as in nn.*
        with torch.inference_mode():
            out, state = block(x)
            ref_out, ref_state = reference(x)
        torch.testing.assert_close(out, ref_out, atol=2e-6, rtol=2e-6, equal_nan=True)
        torch.testing.assert_close(state, ref_state, atol=2e-6, rtol=2e-6, equal_nan=True)
        assert torch.equal(out.isnan(), ref_out.isnan())
    finally:
        torch.set_num_threads(before)


@needs_kernel
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "GRU_RESET_BEFORE"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("steps", [1, 3])
def test_a_non_finite_recurrent_weight_reaches_the_first_step_from_a_zero_state(mode: str, value: float,
                                                                                 steps: int) -> None:
    """From a zero state the first step's product is skipped only when every W_hh is finite: 0 x Inf is NaN in
    nn.*, and must be here, on the serving path (no hx) and the direct path alike. T = 1: the first step is all
    there is. A finite W_hh again (a new plan) skips it and gives the operator path's bits."""
    torch.manual_seed(0)
    block = block_of(mode, 4, 8, 1).eval()
    x = torch.randn(steps, 2, 4)
    with torch.no_grad():
        block.weight_hh_l0_reverse[5, 3] = value  # the backward direction starts at the last step
        for _ in range(2):  # the second call on the cached plan's fast path
            out, _ = block(x)
    # Row 5 of W_hh is a gate of unit 5 (LSTM i, GRU r or z): at that direction's first step unit 5 is NaN.
    assert out[-1, :, 8 + 5].isnan().all()
    assert not out[:, :, :8].isnan().any()  # the forward direction never reads that weight
    if mode != "GRU_RESET_BEFORE":
        reference = getattr(nn, mode)(4, 8, 1, bidirectional=True).eval()
        reference.load_state_dict(block.state_dict())
        with torch.no_grad():
            ref_out, _ = reference(x)
        assert torch.equal(out.isnan(), ref_out.isnan())
    with torch.no_grad():
        block.weight_hh_l0_reverse[5, 3] = 0.5
        got = block(x)[0]
    assert not got.isnan().any()
    with torch.no_grad(), cpu_kernel.disabled():
        torch.testing.assert_close(got, block(x)[0], atol=2e-6, rtol=2e-6)


@needs_kernel
def test_unbatched_and_no_bias_and_merge_none(monkeypatch: pytest.MonkeyPatch) -> None:
    block = BiLSTM(5, 8, 2, bias=False, merge_mode=["ave", None]).eval()
    x = torch.randn(6, 5)
    calls = taken(monkeypatch)
    got = run(block, x, None, None, None)
    assert calls
    expected = on_operator_path(monkeypatch, block, x, None, None, None)
    assert got[0].shape == (6, 2, 8)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=2e-6)


def fresh_output(block: nn.Module, x: Tensor) -> Tensor:
    """What a block with the same weights and no cache returns (a copy of the block)."""
    twin = type(block)(block.input_size, block.hidden_size, block.num_layers).eval()
    twin.load_state_dict(block.state_dict())
    with torch.no_grad():
        return twin(x)[0]


@needs_kernel
def test_cache_is_reused_and_never_stale() -> None:
    torch.manual_seed(0)
    block = BiLSTM(6, 10, 2).eval()
    x = torch.randn(7, 2, 6)
    with torch.no_grad():
        first = block(x)[0]
        plan = cpu_kernel_inference._plans.get(block)
        assert plan is not None
        block(x)
        assert cpu_kernel_inference._plans.get(block) is plan  # nothing changed: reused

    def changed(after: Tensor) -> None:
        assert not torch.equal(after, first)
        torch.testing.assert_close(after, fresh_output(block, x), atol=1e-6, rtol=1e-6)

    # an optimiser step (in-place, version counter)
    block.train()
    loss = block(x)[0].square().sum()
    loss.backward()
    torch.optim.SGD(block.parameters(), lr=0.1).step()
    block.eval()
    with torch.no_grad():
        changed(block(x)[0])
        first = block(x)[0]
    # load_state_dict (copy_ under no_grad), with and without assign
    other = BiLSTM(6, 10, 2)
    block.load_state_dict(other.state_dict())
    with torch.no_grad():
        changed(block(x)[0])
        first = block(x)[0]
    block.load_state_dict(BiLSTM(6, 10, 2).state_dict(), assign=True)
    block.eval()
    with torch.no_grad():
        changed(block(x)[0])
        first = block(x)[0]
        # an in-place write under no_grad
        block.weight_hh_l1_reverse.mul_(0.5)
        changed(block(x)[0])
        first = block(x)[0]
        # a new tensor behind the same Parameter (.data =): a new address
        block.weight_ih_l0.data = torch.randn_like(block.weight_ih_l0)
        changed(block(x)[0])
        first = block(x)[0]
    # writes through .data bypass the version counter: clear() (or eval()) makes them seen
    block.weight_hh_l0.data.mul_(0.0)
    cpu_kernel_inference.clear(block)
    with torch.no_grad():
        changed(block(x)[0])


@needs_kernel
def test_no_cache_in_train_mode_and_dropout_still_applies() -> None:
    block = BiGRU(4, 6, 2, dropout=0.5).train()
    x = torch.randn(5, 3, 4)
    with torch.no_grad():
        a = block(x)[0]
        b = block(x)[0]
    assert cpu_kernel_inference._plans.get(block) is None
    assert not torch.equal(a, b)  # dropout between layers in train mode, as on every other path
    block.eval()
    with torch.no_grad():
        torch.testing.assert_close(block(x)[0], block(x)[0], atol=0, rtol=0)


@needs_kernel
def test_inference_mode_weights_and_gradients_still_use_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    with torch.inference_mode():
        block = BiLSTM(4, 5, 1).eval()  # inference tensors: no version counter, so no cache, still correct
        x = torch.randn(3, 2, 4)
        reference = nn.LSTM(4, 5, bidirectional=True).eval()
        reference.load_state_dict(block.state_dict())
        torch.testing.assert_close(block(x)[0], reference(x)[0], atol=2e-6, rtol=2e-6)
    assert cpu_kernel_inference._plans.get(block) is None
    trained = BiLSTM(4, 5, 1)
    calls = taken(monkeypatch)
    out = trained(torch.randn(3, 2, 4))[0]  # gradients needed: the operator with its autograd
    assert not calls and out.requires_grad


@needs_kernel
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "GRU_RESET_BEFORE"])
@pytest.mark.parametrize("merges", [["ave", "concat", "sum"], ["mul", "sum", None]])
def test_direct_path_on_more_threads_equals_two_threads(monkeypatch: pytest.MonkeyPatch, mode: str,
                                                        merges: list) -> None:
    """All layers and merges in one parallel region, the batch split into row groups (4 and 8 threads: 2 and 4
    groups of 9-19 rows), against the operator path on two threads; a repeat gives the same bits."""
    steps, batch, features, hidden = 9, 37, 6, 13
    block = block_of(mode, features, hidden, 3, merge_mode=merges).eval()
    x = torch.randn(steps, batch, features)
    lengths = torch.randint(1, steps + 1, (batch,))
    h0 = torch.randn(6, batch, hidden)
    c0 = torch.randn(6, batch, hidden) if mode == "LSTM" else None
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        expected = on_operator_path(monkeypatch, block, x, lengths, h0, c0)
        for threads in (4, 8):
            torch.set_num_threads(threads)
            calls = taken(monkeypatch)
            with cpu_kernel.forced():  # the policy keeps PyTorch's kernels above two threads
                got = run(block, x, lengths, h0, c0)
                again = run(block, x, lengths, h0, c0)
            assert calls, "the direct path was not taken"
            for name, a, b in zip(("output", "h_n", "c_n"), got, expected, strict=True):
                torch.testing.assert_close(a, b, atol=2e-6, rtol=2e-6, msg=f"{threads} threads, {name}")
            assert all(torch.equal(a, b) for a, b in zip(got, again, strict=True)), \
                f"{threads} threads: a repeat differs"
    finally:
        torch.set_num_threads(previous)
