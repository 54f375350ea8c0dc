"""``models/blocks/fused.py`` paths that the drop-in tests leave open (issue 37's mutation testing): the packed
call's bf16-autocast fallback (the CUDA rule, forced on the CPU), between-layer dropout never after the last layer
of a per-layer stack, cuDNN's train flag of a per-layer stack, and the ``reset_after=False`` GRU's lengths path
against per-row runs. float32 tolerances as the drop-in tests (torch's defaults, 1.3e-6 relative)."""

from typing import Any, Dict, List

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from models import BiGRU, BiLSTM, BiRNN
from models.blocks import cpu_kernel, fused


@pytest.mark.parametrize("block_type, kwargs", [(BiLSTM, {}), (BiGRU, {}), (BiRNN, {}),
                                                (BiRNN, {"nonlinearity": "relu"})])
def test_the_packed_call_under_the_bf16_rule_runs_in_the_weights_dtype_outside_autocast(
    block_type: type, kwargs: Dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_packed_kernels`` with the CUDA bf16-autocast rule on (forced here for bf16 data): bf16 data and states are cast to the
    weights' float32 and the call is the same as a float32 call outside autocast, for every mode."""
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


@pytest.mark.parametrize("block_type", [BiLSTM, BiGRU, BiRNN])
def test_a_per_layer_stack_drops_out_between_layers_and_never_after_the_last(block_type: type) -> None:
    """``merge_mode="sum"`` runs one fused call per layer (``_run_layers``); in training, dropout 0.5 applies to
    layer 0's merged output (two calls differ) but not to the last layer's (no output is exactly 0: a dropped
    element is). The C kernel is off: it serves eval() only, but the test pins the fused path."""
    torch.manual_seed(0)
    block = block_type(3, 8, num_layers=2, dropout=0.5, merge_mode="sum").train()
    x = torch.randn(6, 4, 3)
    with cpu_kernel.disabled():
        first, _ = block(x)
        second, _ = block(x)
    assert not torch.equal(first, second)                 # dropout between the layers
    assert (first != 0).all() and (second != 0).all()     # and none after the last


def test_a_per_layer_stack_asks_cudnn_to_keep_nothing_without_grad(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuDNN's ``train`` flag per layer: off for a no-grad forward (dropout between layers is the block's own, not
    the kernel's, so the kernel gets dropout 0 and nothing makes it train), on with grad."""
    seen: List[Any] = []
    real = fused._fused_kernels

    def spy(*args: Any) -> Any:
        seen.append((args[6], args[7], args[8]))           # num_layers, dropout, train
        return real(*args)

    monkeypatch.setattr(fused, "_fused_kernels", spy)
    block = BiLSTM(3, 4, num_layers=2, dropout=0.5, merge_mode="sum").train()
    x = torch.randn(5, 2, 3)
    with cpu_kernel.disabled():
        with torch.no_grad():
            block(x)
        assert seen == [(1, 0.0, False), (1, 0.0, False)]
        seen.clear()
        block(x)
        assert seen == [(1, 0.0, True), (1, 0.0, True)]


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
    torch.manual_seed(0)
    block = BiGRU(3, 8, num_layers=2, dropout=0.5, merge_mode="sum").eval()
    x = torch.randn(6, 4, 3)
    with cpu_kernel.disabled():
        first, _ = block(x)
        second, _ = block(x)
    assert torch.equal(first, second)
