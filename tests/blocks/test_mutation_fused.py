"""``models/blocks/fused.py`` paths that the drop-in tests leave open (issue 37's mutation testing): the packed
call's bf16-autocast fallback (the CUDA rule, forced on the CPU), between-layer dropout never after the last layer
of a per-layer stack, cuDNN's train flag of a per-layer stack, and the ``reset_after=False`` GRU's lengths path
against per-row runs. Round 3: the bf16 rule itself (CUDA's autocast state set on this CPU build) and the fused
call's fallback under it; what the lengths path hands each kernel call (state rows, dropout, train), its dropout,
its ``c_n`` for one-state cells, its zeroed padding under large input weights, and its device (meta tensors);
the whole reset-before stack's dropout; the packed fallback's dtypes as cuDNN would get them (a stand-in for
``torch._VF``). float32 tolerances as the drop-in tests (torch's defaults, 1.3e-6 relative)."""

import contextlib
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from models import BiGRU, BiLSTM, BiRNN
from models.blocks import cpu_kernel, fused


@pytest.mark.parametrize("block_type, kwargs", [(BiLSTM, {}), (BiGRU, {}), (BiRNN, {}),
                                                (BiRNN, {"nonlinearity": "relu"})])
def test_the_packed_call_under_the_bf16_rule_runs_in_the_weights_dtype_outside_autocast(
    block_type: type, kwargs: Dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_packed_kernels`` with the CUDA bf16-autocast rule on (forced here for bf16 data): bf16 data and states are
    cast to the weights' float32 and the call is the same as a float32 call outside autocast, for every mode."""
    torch.manual_seed(0)
    block = block_type(3, 4, num_layers=2, **kwargs)
    x, lengths = torch.randn(5, 3, 3), torch.tensor([5, 2, 4])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    weights = [p.detach() for p in block._flat_weights]
    states = 2 if block_type is BiLSTM else 1
    h0 = torch.randn(4, 3, 4)
    c0 = torch.randn(4, 3, 4) if states == 2 else h0
    data_bf16 = packed.data.to(torch.bfloat16)
    want = fused._packed_kernels(block.mode, data_bf16.float(), packed.batch_sizes, h0.to(torch.bfloat16).float(),
                                 c0.to(torch.bfloat16).float(), weights, True, 2, 0.0, False)
    # The rule as on CUDA under bf16 autocast: true for the bf16 data, false for the call it makes after the cast.
    monkeypatch.setattr(fused, "_autocast_runs_fp32", lambda x: x.dtype == torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fused._packed_kernels(block.mode, data_bf16, packed.batch_sizes, h0.to(torch.bfloat16),
                                    c0.to(torch.bfloat16), weights, True, 2, 0.0, False)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w)
    # ... and the float32 call is that mode's packed nn.LSTM/GRU/RNN (the mode string picks the kernel).
    reference = {"LSTM": nn.LSTM, "GRU": nn.GRU}.get(block.mode, nn.RNN)
    extra = {"nonlinearity": "relu"} if block.mode == "RNN_RELU" else {}
    ref = reference(3, 4, num_layers=2, bidirectional=True, **extra)
    ref.load_state_dict(dict(zip(ref.state_dict(), weights, strict=True)))
    ref_out, _ = ref(torch.nn.utils.rnn.PackedSequence(data_bf16.float(), packed.batch_sizes),
                     (h0.to(torch.bfloat16).float(), c0.to(torch.bfloat16).float()) if states == 2
                     else h0.to(torch.bfloat16).float())
    torch.testing.assert_close(want[0], ref_out.data)


def _two_calls(block_type: type, training: bool, lengths: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """The outputs ``(6, 4, 8)`` of two forwards of one seeded 2-layer ``merge_mode="sum"`` stack with dropout 0.5 on
    the same ``x (6, 4, 3)`` (with ``lengths (4,)`` if given), in training or eval(). ``"sum"`` runs one fused call
    per layer (``_run_layers``; ``_run_layers_with_lengths`` with ``lengths``). The C kernel is off: it serves eval()
    only, but the tests pin the fused path."""
    torch.manual_seed(0)
    block = block_type(3, 8, num_layers=2, dropout=0.5, merge_mode="sum").train(training)
    x = torch.randn(6, 4, 3)
    with cpu_kernel.disabled():
        first, _ = block(x, lengths=lengths)
        second, _ = block(x, lengths=lengths)
    return first, second


@pytest.mark.parametrize("block_type", [BiLSTM, BiGRU, BiRNN])
def test_a_per_layer_stack_drops_out_between_layers_and_never_after_the_last(block_type: type) -> None:
    """In training, dropout 0.5 applies to layer 0's merged output (two calls differ) but not to the last layer's
    (no output is exactly 0: a dropped element is)."""
    first, second = _two_calls(block_type, training=True)
    assert not torch.equal(first, second)                 # dropout between the layers
    assert (first != 0).all() and (second != 0).all()     # and none after the last


def _record_fused_calls(monkeypatch: pytest.MonkeyPatch) -> List[Any]:
    """Replace ``fused._fused_kernels`` by a spy that calls it and records, per call, the shapes of ``h0`` and ``c0``
    and ``(num_layers, dropout, train, bidirectional)``: what cuDNN would be asked (it refuses states of any other
    shape than ``(num_layers * directions, B, H)``, where the CPU's kernels read the first rows and go on)."""
    seen: List[Any] = []
    real = fused._fused_kernels

    def spy(*args: Any) -> Any:
        seen.append((tuple(args[2].shape), tuple(args[3].shape), args[6], args[7], args[8], args[9]))
        return real(*args)

    monkeypatch.setattr(fused, "_fused_kernels", spy)
    return seen


def test_a_per_layer_stack_asks_cudnn_to_keep_nothing_without_grad(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuDNN's ``train`` flag per layer: off for a no-grad forward (dropout between layers is the block's own, not
    the kernel's, so the kernel gets dropout 0 and nothing makes it train), on with grad; each layer's call gets
    its own two state rows ``(2, B, H)``."""
    seen = _record_fused_calls(monkeypatch)
    block = BiLSTM(3, 4, num_layers=2, dropout=0.5, merge_mode="sum").train()
    x = torch.randn(5, 2, 3)
    with cpu_kernel.disabled():
        with torch.no_grad():
            block(x)
        assert seen == [((2, 2, 4), (2, 2, 4), 1, 0.0, False, True)] * 2
        seen.clear()
        block(x)
        assert seen == [((2, 2, 4), (2, 2, 4), 1, 0.0, True, True)] * 2


@pytest.mark.parametrize("merge_mode", ["concat", "sum", ["mul", "ave"]])
def test_a_reset_before_gru_with_lengths_equals_each_row_run_alone(merge_mode: Any) -> None:
    """``reset_after=False`` with ``lengths`` (``_run_reset_before_with_lengths``): each row's output, zeros at its
    padded steps, and ``h_n`` equal that row run alone at its own length; given ``hx`` rows are honoured; in
    training, dropout 0.5 applies between the layers but not after the last; gradients reach every weight."""
    torch.manual_seed(0)
    block = BiGRU(3, 4, num_layers=2, reset_after=False, merge_mode=merge_mode)
    x, lengths = torch.randn(6, 3, 3), torch.tensor([6, 2, 4])
    h0 = torch.randn(4, 3, 4)
    with cpu_kernel.disabled():
        out, h_n = block(x, h0, lengths=lengths)
        assert out.shape[:2] == (6, 3)
        for row in range(3):
            n = int(lengths[row])
            alone, alone_h = block(x[:n, row:row + 1], h0[:, row:row + 1].contiguous())
            torch.testing.assert_close(out[:n, row:row + 1], alone)
            torch.testing.assert_close(h_n[:, row:row + 1], alone_h)
            assert (out[n:, row] == 0).all()
        out.sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())
        block.dropout = 0.5
        block.train()
        first, _ = block(x, lengths=lengths)
        second, _ = block(x, lengths=lengths)
    assert not torch.equal(first, second)
    valid = torch.arange(6).unsqueeze(1) < lengths
    assert (first[valid] != 0).all() and (second[valid] != 0).all()


def test_a_reset_before_gru_with_lengths_asks_the_loop_to_keep_nothing_without_grad(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The time loop's ``train`` argument follows grad mode, one bidirectional single-layer call per layer."""
    seen: List[Any] = []
    real = fused.gru_reset_before

    def spy(*args: Any) -> Any:
        seen.append((args[4], args[5], args[6], args[7]))  # num_layers, dropout, train, bidirectional
        return real(*args)

    monkeypatch.setattr(fused, "gru_reset_before", spy)
    block = BiGRU(3, 4, num_layers=2, reset_after=False, merge_mode="sum")
    x, lengths = torch.randn(5, 2, 3), torch.tensor([5, 3])
    with cpu_kernel.disabled():
        with torch.no_grad():
            block(x, lengths=lengths)
        block(x, lengths=lengths)
    assert seen == [(1, 0.0, False, True)] * 2 + [(1, 0.0, True, True)] * 2


def test_the_reference_for_the_reset_before_rows_is_not_the_reset_after_gru() -> None:
    """Guard for the per-row test above: ``reset_after=False`` differs from ``nn.GRU``'s math, so the comparison
    cannot pass by a path that ignored the flag."""
    torch.manual_seed(0)
    block = BiGRU(3, 4, reset_after=False)
    reference = nn.GRU(3, 4, bidirectional=True)
    reference.load_state_dict({k: v for k, v in block.state_dict().items() if k in reference.state_dict()},
                              strict=False)
    x = torch.randn(5, 2, 3)
    with cpu_kernel.disabled():
        out, _ = block(x)
    ref, _ = reference(x)
    assert not torch.allclose(out, ref)


def test_a_per_layer_stack_in_eval_drops_nothing_between_layers() -> None:
    """eval(): the block's between-layer dropout is off, so two calls give the same bits."""
    first, second = _two_calls(BiGRU, training=False)
    assert torch.equal(first, second)


@pytest.mark.parametrize("block_type", [BiLSTM, BiGRU])
def test_the_lengths_path_asks_for_one_direction_one_state_row_no_dropout_and_no_train_without_grad(
    block_type: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_layer_with_lengths``: two single-direction calls per layer, each with its own state row ``(1, B, H)``,
    dropout 0 (the block drops out between layers itself) and, without grad, nothing to keep for backward, even in
    training with dropout 0.5."""
    seen = _record_fused_calls(monkeypatch)
    block = block_type(3, 4, num_layers=2, dropout=0.5, merge_mode="sum").train()
    x, lengths = torch.randn(5, 2, 3), torch.tensor([5, 3])
    with cpu_kernel.disabled(), torch.no_grad():
        block(x, lengths=lengths)
    assert seen == [((1, 2, 4), (1, 2, 4), 1, 0.0, False, False)] * 4


@pytest.mark.parametrize("block_type", [BiLSTM, BiGRU, BiRNN])
def test_the_lengths_path_drops_out_between_layers_and_never_after_the_last(block_type: type) -> None:
    """``_run_layers_with_lengths`` in training with dropout 0.5: two calls differ (dropout after layer 0), and no
    output at a valid step is exactly 0 (none after the last layer; padded steps are 0 by design)."""
    lengths = torch.tensor([6, 2, 4, 5])
    first, second = _two_calls(block_type, training=True, lengths=lengths)
    valid = torch.arange(6).unsqueeze(1) < lengths                               # (T, B)
    assert not torch.equal(first, second)
    assert (first[valid] != 0).all() and (second[valid] != 0).all()
    assert (first[~valid] == 0).all()


def test_a_whole_stack_reset_before_gru_drops_out_between_its_layers_in_training_only() -> None:
    """An all-``concat`` ``reset_after=False`` stack without ``lengths`` is one ``gru_reset_before`` call
    (``_fused_kernels``), which must be told to train for its dropout: two training calls differ, two eval() calls
    do not."""
    torch.manual_seed(0)
    block = BiGRU(3, 4, num_layers=2, dropout=0.5, reset_after=False).train()
    x = torch.randn(6, 3, 3)
    with cpu_kernel.disabled():
        assert not torch.equal(block(x)[0], block(x)[0])
        block.eval()
        assert torch.equal(block(x)[0], block(x)[0])


@pytest.mark.parametrize("block_type", [BiGRU, BiRNN])
def test_run_with_lengths_gives_a_one_state_cell_h_n_as_its_c_n(block_type: type) -> None:
    """``run()``'s documented contract: ``c_n`` is ``h_n`` for ``BiGRU``/``BiRNN``, on the lengths path too (where
    the kernel's own final state has run on through padding and differs from ``h_n`` for the short rows)."""
    torch.manual_seed(0)
    block = block_type(3, 4, num_layers=2)
    x, lengths = torch.randn(5, 2, 3), torch.tensor([5, 2])
    with cpu_kernel.disabled():
        _, h_n, c_n = block.run(x, lengths=lengths)
    assert torch.equal(c_n, h_n)


def test_padded_steps_leave_the_lstm_cell_state_alone_even_with_large_input_weights() -> None:
    """The LSTM lengths path pins ``i = 0, f = 1`` at padded steps with an input column worth -/+1e4
    (``_SATURATE``). Padded inputs are zeroed first, so input-gate weights of 1e4 (which outweigh the column at any
    non-zero input: 3 features of 1 give +3e4) cannot open the gate there: each row's ``c_n`` (and output, ``h_n``)
    equals that row run alone at its own length. float32, torch's default tolerances."""
    torch.manual_seed(0)
    block = BiLSTM(3, 4)
    with torch.no_grad():
        block.weight_ih_l0[:4] = 1.0e4                 # the input gate's rows, both directions
        block.weight_ih_l0_reverse[:4] = 1.0e4
    x, lengths = torch.randn(5, 3, 3), torch.tensor([5, 2, 4])
    with cpu_kernel.disabled():
        out, (h_n, c_n) = block(x, lengths=lengths)
        for row in range(3):
            n = int(lengths[row])
            alone, (alone_h, alone_c) = block(x[:n, row:row + 1])
            torch.testing.assert_close(out[:n, row:row + 1], alone)
            torch.testing.assert_close(h_n[:, row:row + 1], alone_h)
            torch.testing.assert_close(c_n[:, row:row + 1], alone_c)


@pytest.mark.parametrize("block_type", [BiLSTM, BiGRU, BiRNN])
def test_the_lengths_path_makes_no_tensor_off_the_inputs_device(block_type: type) -> None:
    """``_run_layers_with_lengths`` on meta tensors (shapes only): a helper tensor made without the input's device
    (the time steps, the masks, the indexes) would land on the CPU, and meeting a meta tensor raises, as a CPU one
    beside CUDA inputs would on a GPU. The outputs stay on the input's device with their shapes."""
    block = block_type(3, 4, num_layers=2, device="meta")
    x = torch.empty(5, 2, 3, device="meta")
    lengths = torch.empty(2, dtype=torch.long, device="meta")
    h0 = torch.empty(4, 2, 4, device="meta")
    out, h_n, c_n = block._run_layers_with_lengths(x, lengths, h0, h0, block._weights_now())
    for got, shape in ((out, (5, 2, 8)), (h_n, (4, 2, 4)), (c_n, (4, 2, 4))):
        assert got.device.type == "meta" and tuple(got.shape) == shape


@contextlib.contextmanager
def _cuda_autocast(enabled: bool, dtype: torch.dtype) -> Iterator[None]:
    """CUDA's autocast state set directly (``torch.autocast("cuda")`` turns itself off without a GPU; the state is
    a thread-local flag and dtype, which this CPU build holds too), restored after."""
    was = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", enabled)
    torch.set_autocast_dtype("cuda", dtype)
    try:
        yield
    finally:
        torch.set_autocast_enabled("cuda", was[0])
        torch.set_autocast_dtype("cuda", was[1])


def test_the_bf16_rule_holds_for_cuda_data_under_cuda_bf16_autocast_only() -> None:
    """``_autocast_runs_fp32``: true only for CUDA data (a stand-in: only ``is_cuda`` is read) under CUDA autocast
    in bfloat16; false under float16 autocast, with autocast off, for CPU data, and under the CPU's autocast."""
    cuda_data, cpu_data = SimpleNamespace(is_cuda=True), torch.zeros(2)
    with _cuda_autocast(True, torch.bfloat16):
        assert fused._autocast_runs_fp32(cuda_data)  # type: ignore[arg-type]
        assert not fused._autocast_runs_fp32(cpu_data)
    with _cuda_autocast(True, torch.float16):
        assert not fused._autocast_runs_fp32(cuda_data)  # type: ignore[arg-type]
    with _cuda_autocast(False, torch.bfloat16):
        assert not fused._autocast_runs_fp32(cuda_data)  # type: ignore[arg-type]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not fused._autocast_runs_fp32(cuda_data)  # type: ignore[arg-type]


@pytest.mark.parametrize("block_type, kwargs", [(BiLSTM, {}), (BiGRU, {}), (BiGRU, {"reset_after": False}),
                                                (BiRNN, {}), (BiRNN, {"nonlinearity": "relu"})])
def test_the_fused_call_under_the_bf16_rule_runs_in_the_weights_dtype_outside_autocast(
    block_type: type, kwargs: Dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_fused_eager`` with the CUDA bf16-autocast rule on (forced here for bf16 data, as for the packed call
    above): bf16 input and states are cast to the weights' float32 and the call leaves autocast, so the result is
    the float32 call's, in float32, for every mode. (The CPU's own bf16 autocast does run the LSTM in bf16, checked
    first: a fallback that stayed inside autocast would show.)"""
    torch.manual_seed(0)
    block = block_type(3, 4, num_layers=2, **kwargs)
    mode = block.mode if block.reset_after else "GRU_RESET_BEFORE"
    weights = [p.detach() for p in block._flat_weights]
    x, h0 = torch.randn(5, 3, 3).bfloat16(), torch.randn(4, 3, 4).bfloat16()
    c0 = torch.randn(4, 3, 4).bfloat16() if block_type is BiLSTM else h0
    want = fused._fused_kernels(mode, x.float(), h0.float(), c0.float(), weights, True, 2, 0.0, False, True)
    if mode == "LSTM":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = fused._fused_kernels(mode, x.float(), h0.float(), c0.float(), weights, True, 2, 0.0, False, True)
        assert inside[0].dtype == torch.bfloat16
    monkeypatch.setattr(fused, "_autocast_runs_fp32", lambda t: t.dtype == torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fused._fused_eager(mode, x, h0, c0, weights, True, 2, 0.0, False, True)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w)


def test_the_packed_call_under_the_bf16_rule_hands_the_kernel_one_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuDNN refuses a call whose input, states and weights differ in dtype (the CPU's packed LSTM promotes a bf16
    ``c0`` and goes on): a stand-in for ``torch._VF`` records the dtypes each kernel call gets, and under the
    bf16 rule (forced for bf16 data) every floating tensor handed to it is float32, ``c0`` included."""
    seen: List[List[torch.dtype]] = []

    class RecordingVF:
        def __getattr__(self, name: str) -> Any:
            real = getattr(torch._VF, name)

            def call(*args: Any) -> Any:
                tensors = [a for a in args if isinstance(a, Tensor)]
                tensors += [t for a in args if isinstance(a, list) for t in a]
                seen.append([t.dtype for t in tensors if t.is_floating_point()])
                return real(*args)
            return call

    torch.manual_seed(0)
    block = BiLSTM(3, 4)
    packed = pack_padded_sequence(torch.randn(5, 3, 3), torch.tensor([5, 2, 4]), enforce_sorted=False)
    h0, c0 = torch.randn(2, 3, 4).bfloat16(), torch.randn(2, 3, 4).bfloat16()
    monkeypatch.setattr(fused, "_VF", RecordingVF())
    monkeypatch.setattr(fused, "_autocast_runs_fp32", lambda t: t.dtype == torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused._packed_kernels("LSTM", packed.data.bfloat16(), packed.batch_sizes, h0, c0,
                              [p.detach() for p in block._flat_weights], True, 1, 0.0, False)
    assert len(seen) == 1 and len(seen[0]) == 1 + 2 + 8      # data, h0 and c0, the eight weights
    assert set(seen[0]) == {torch.float32}
