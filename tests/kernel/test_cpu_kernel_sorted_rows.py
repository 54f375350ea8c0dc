"""Lengths sorted longest first: the kernel's step products, input projections and gradient sums cover only the
rows valid at each step (``csrc/args.h``, ``StepRows``); the blocks' training path sorts a batch so
(``models/blocks/base.py``), an inference call sorts inside the kernel (``csrc/forward.h``, ``forward_stack``).

A product row depends only on its own input row, so on the float32 vector builds (the step products on
``step_gemm.h``'s micro-kernel) a row's outputs, states and input gradient are the same bits whichever rows share
its products; only the weight gradients, summed over rows in another order, move within float32 rounding."""

import contextlib
from typing import Any, List, Tuple

import pytest
import torch
from torch import Tensor, nn

from models import BiGRU, BiLSTM, quantize
from models.blocks import cpu_kernel
from models.blocks.cpu_kernel import bf16

needs_kernel = pytest.mark.skipif(not cpu_kernel.available(), reason="CPU kernel not built (see test_kernel_builds)")
needs_vector_build = pytest.mark.skipif(
    cpu_kernel.capability() not in ("avx2", "avx512"),
    reason=f"bit-identical rows need the vector builds' own step product (this build: {cpu_kernel.capability()})")

STEPS, FEATURES, HIDDEN = 12, 5, 7


def layer_run(mode: str, x: Tensor, h0: Tensor, c0: Tensor, lengths: Tensor, weights: List[Tensor],
              threads: int) -> Tuple[Tensor, ...]:
    """One kernel layer with gradients: ``out, h_n, c_n, d_x, d_h0, d_c0`` and the weights' gradients."""
    x, h0, c0 = (t.detach().requires_grad_() for t in (x, h0, c0))
    weights = [w.detach().requires_grad_() for w in weights]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out, h_n, c_n = cpu_kernel.fused_layer(mode, x, h0, c0, lengths, weights, True)
        loss = (out.square() + out).sum() + h_n.square().sum()  # the same for any order of the rows
        if mode == "LSTM":
            loss = loss + c_n.sin().sum()
        loss.backward()
    finally:
        torch.set_num_threads(before)
    grads = [x.grad, h0.grad] + ([c0.grad] if mode == "LSTM" else [])
    return (out, h_n, c_n, *grads, *(w.grad for w in weights))


@needs_kernel
@needs_vector_build
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "GRU_RESET_BEFORE"])
@pytest.mark.parametrize("threads,batch,steps,features,hidden", [
    (1, 6, STEPS, FEATURES, HIDDEN),
    (4, 16, STEPS, FEATURES, HIDDEN),  # 4 threads, 16 rows: two row groups a direction
    # ~10,000 valid (t, b) of up to ~3 KB copies each: the projections and the gradient sums run in several runs
    # of steps (csrc/scratch.h, kPackedBytes = 8 MB a run)
    (2, 64, 300, 64, 64),
])
def test_sorted_rows_give_each_row_the_bits_of_a_full_product(mode: str, threads: int, batch: int, steps: int,
                                                               features: int, hidden: int) -> None:
    """The same rows run sorted longest first (products, projections and gradient sums over the valid rows only)
    and in an unsorted order (over every row): equal outputs, states and input gradients bit for bit, weight
    gradients to float32 rounding (1e-5 relative, 1e-6 of the largest element). Lengths with ties and none
    reaching ``T``, so that late steps have no valid row at all."""
    torch.manual_seed(7)
    gates = {"LSTM": 4, "GRU": 3, "GRU_RESET_BEFORE": 3}[mode]
    weights = [torch.randn(gates * hidden, features) * 0.4, torch.randn(gates * hidden, hidden) * 0.4,
               torch.randn(gates * hidden) * 0.1, torch.randn(gates * hidden) * 0.1] * 2
    lengths = torch.randint(1, steps - 2, (batch,))
    lengths[1] = lengths[2]
    longest_first = torch.argsort(lengths, descending=True, stable=True)
    assert not torch.equal(longest_first, torch.arange(batch))  # the unsorted run really is unsorted
    x = torch.randn(steps, batch, features)
    h0, c0 = torch.randn(2, batch, hidden), torch.randn(2, batch, hidden)

    plain = layer_run(mode, x, h0, c0, lengths, weights, threads)
    sorted_run = layer_run(mode, x[:, longest_first], h0[:, longest_first], c0[:, longest_first],
                           lengths[longest_first], weights, threads)
    back = torch.argsort(longest_first)
    row_outputs = 6 if mode == "LSTM" else 5  # out, h_n, c_n, d_x, d_h0 (, d_c0)
    for i, (got, want) in enumerate(zip(sorted_run[:row_outputs], plain[:row_outputs], strict=True)):
        assert torch.equal(got.index_select(1, back), want), f"output {i} differs"
    for got, want in zip(sorted_run[row_outputs:], plain[row_outputs:], strict=True):
        # sums over up to ~10,000 rows in another order: float32 rounding, relative to the gradient's scale
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))


def recorded_lengths(monkeypatch: pytest.MonkeyPatch) -> List[List[int]]:
    """The ``lengths`` each kernel layer is handed, as lists."""
    seen: List[List[int]] = []
    original = cpu_kernel.fused_layer

    def recording(mode: str, x: Tensor, h0: Tensor, c0: Tensor, lengths: Any, *args: Any) -> Any:
        seen.append(None if lengths is None else lengths.tolist())
        return original(mode, x, h0, c0, lengths, *args)

    monkeypatch.setattr(cpu_kernel, "fused_layer", recording)
    return seen


@needs_kernel
@pytest.mark.parametrize("block_type,reference_type", [(BiLSTM, nn.LSTM), (BiGRU, nn.GRU)])
def test_the_training_path_sorts_longest_first_and_answers_in_the_callers_order(
        block_type: type, reference_type: type, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every layer gets the lengths sorted longest first; outputs, ``h_n`` (``c_n``) and every gradient come back
    in the caller's row order: against ``nn.LSTM``/``nn.GRU`` on a packed batch with distinct initial states per
    row (a state handed to the wrong row would show), to float32 rounding."""
    torch.manual_seed(3)
    batch, layers = 6, 2
    reference = reference_type(FEATURES, HIDDEN, layers, bidirectional=True)
    block = block_type(FEATURES, HIDDEN, layers)
    block.load_state_dict(reference.state_dict())
    x = torch.randn(STEPS, batch, FEATURES, requires_grad=True)
    lengths = torch.tensor([3, STEPS, 1, 8, 8, 5])
    h0 = torch.randn(2 * layers, batch, HIDDEN, requires_grad=True)
    c0 = torch.randn(2 * layers, batch, HIDDEN, requires_grad=True)
    hx = (h0, c0) if block_type is BiLSTM else h0
    seen = recorded_lengths(monkeypatch)

    with cpu_kernel.forced():
        out, state = block(x, hx, lengths=lengths)
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    want_packed, want_state = reference(packed, hx)
    want, _ = nn.utils.rnn.pad_packed_sequence(want_packed, total_length=STEPS)

    assert seen == [sorted(lengths.tolist(), reverse=True)] * layers
    got_all = [out] + list(state if block_type is BiLSTM else [state])
    want_all = [want] + list(want_state if block_type is BiLSTM else [want_state])
    for got, expected in zip(got_all, want_all, strict=True):
        torch.testing.assert_close(got, expected, rtol=2e-5, atol=2e-6)
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)
    inputs = [x, h0] + ([c0] if block_type is BiLSTM else [])
    got_grads = torch.autograd.grad((out * weights).sum() + sum(s.sum() for s in got_all[1:]),
                                    inputs + list(block.parameters()))
    want_grads = torch.autograd.grad((want * weights).sum() + sum(s.sum() for s in want_all[1:]),
                                     inputs + list(reference.parameters()))
    for got, expected in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=2e-5, atol=2e-5)


@needs_kernel
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "GRU_RESET_BEFORE"])
def test_sorted_rows_never_read_padded_inputs(mode: str) -> None:
    """With lengths sorted longest first the kernel layer's projections and its weight, bias and input gradients
    run over the valid (t, b) only (``StepRows.pack``): NaN in every padded input changes no output and no
    gradient (over every row, padded inputs would reach the weight gradients as 0 * NaN), and the input's
    gradient is zero at padded steps."""
    torch.manual_seed(11)
    gates = {"LSTM": 4, "GRU": 3, "GRU_RESET_BEFORE": 3}[mode]
    weights = [torch.randn(gates * HIDDEN, FEATURES) * 0.4, torch.randn(gates * HIDDEN, HIDDEN) * 0.4,
               torch.randn(gates * HIDDEN) * 0.1, torch.randn(gates * HIDDEN) * 0.1] * 2
    lengths = torch.tensor([STEPS - 1, 9, 9, 4, 1])
    padded = torch.arange(STEPS).unsqueeze(1) >= lengths.unsqueeze(0)  # (T, B)
    x = torch.randn(STEPS, 5, FEATURES).masked_fill(padded.unsqueeze(-1), 0.0)
    h0, c0 = torch.randn(2, 5, HIDDEN), torch.randn(2, 5, HIDDEN)

    clean = layer_run(mode, x, h0, c0, lengths, weights, 1)
    dirty = layer_run(mode, x.masked_fill(padded.unsqueeze(-1), float("nan")), h0, c0, lengths, weights, 1)
    for i, (got, want) in enumerate(zip(dirty, clean, strict=True)):
        assert torch.equal(got, want), f"output {i} differs"
    d_x = clean[3]
    assert torch.count_nonzero(d_x[padded]) == 0 and torch.count_nonzero(d_x[~padded]) > 0


@needs_kernel
@needs_vector_build
@pytest.mark.parametrize("block_type", [BiLSTM, BiGRU])
@pytest.mark.parametrize("threads", [1, 2])
def test_inference_runs_rows_longest_first_and_answers_in_the_callers_order(block_type: type, threads: int) -> None:
    """An inference call with unsorted lengths is run longest first inside the kernel (``forward_stack`` gathers
    the rows, scatters the answers back): every row's output and final states are the bits of that row run alone,
    for two layers with a ``sum`` merge between them and distinct initial states per row."""
    torch.manual_seed(5)
    batch, layers, steps = 7, 2, 40
    block = block_type(FEATURES, HIDDEN, layers, merge_mode=["sum", "concat"]).eval()
    x = torch.randn(steps, batch, FEATURES)
    lengths = torch.tensor([3, 17, 40, 1, 17, 25, 8])
    h0 = torch.randn(2 * layers, batch, HIDDEN)
    c0 = torch.randn(2 * layers, batch, HIDDEN)
    hx = (lambda rows: (h0[:, rows], c0[:, rows])) if block_type is BiLSTM else (lambda rows: h0[:, rows])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad(), cpu_kernel.forced():
            out, state = block(x, hx(slice(None)), lengths=lengths)
            alone = [block(x[:, b:b + 1], hx(slice(b, b + 1)), lengths=lengths[b:b + 1]) for b in range(batch)]
    finally:
        torch.set_num_threads(before)
    states = state if block_type is BiLSTM else (state,)
    for b, (row_out, row_state) in enumerate(alone):
        assert torch.equal(out[:, b:b + 1], row_out), f"row {b}: output"
        for got, want in zip(states, row_state if block_type is BiLSTM else (row_state,), strict=True):
            assert torch.equal(got[:, b:b + 1], want), f"row {b}: state"


@needs_kernel
@pytest.mark.parametrize("block_type", [BiLSTM, BiGRU])
@pytest.mark.parametrize("path", ["int8", "bf16"])
def test_low_precision_inference_runs_rows_longest_first(block_type: type, path: str) -> None:
    """The int8 (``models.quantize``) and bf16 (autocast) inference stacks run a batch with unsorted lengths longest
    first too (``csrc/row_order.h``), their step products over the valid rows only: the same batch given in another
    row order answers with the same bits, row for row; int8, whose products are exact integers, gives each row the
    bits of that row run alone."""
    if path == "bf16" and not bf16.supported():
        pytest.skip(f"no bf16 kernel here (CPU kernel capability {cpu_kernel.capability()}, AVX512_BF16 needed)")
    torch.manual_seed(5)
    batch, steps = 7, 40
    block = block_type(FEATURES, HIDDEN, 2, merge_mode=["sum", "concat"]).eval()
    if path == "int8":
        block = quantize(block)
    x = torch.randn(steps, batch, FEATURES)
    lengths = torch.tensor([3, 17, 40, 1, 17, 25, 8])
    order = torch.tensor([2, 5, 1, 4, 6, 0, 3])  # longest first
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if path == "bf16" else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        out, state = block(x, lengths=lengths)
        sorted_out, sorted_state = block(x[:, order], lengths=lengths[order])
        alone = [block(x[:, b:b + 1], lengths=lengths[b:b + 1]) for b in range(batch)] if path == "int8" else []
    states = state if isinstance(state, tuple) else (state,)
    sorted_states = sorted_state if isinstance(sorted_state, tuple) else (sorted_state,)
    assert torch.equal(out[:, order], sorted_out)
    for got, want in zip(states, sorted_states, strict=True):
        assert torch.equal(got[:, order], want)
    for b, (row_out, row_state) in enumerate(alone):
        assert torch.equal(out[:, b:b + 1], row_out), f"row {b}: output"
        for got, want in zip(states, row_state if isinstance(row_state, tuple) else (row_state,), strict=True):
            assert torch.equal(got[:, b:b + 1], want), f"row {b}: state"
