"""The CUDA path's logic, checked on the CPU with the same math: cuDNN's train flag and dropout, the packed-data
``lengths`` path (forced on here; CUDA takes it by itself), the flat-weight call sites, the bf16-autocast rule and
``compile_model``'s ``compile_mode``. float64 so the packed and padded paths agree to rounding (tolerance: torch's
float64 defaults)."""

from typing import Any, Dict, List

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import models
from models import BiGRU, BiLSTM, BiRNN
from models.blocks import cpu_kernel, fused
from models.blocks.base import _BiRNNBase

MERGES = ["concat", "sum", "mul", "ave", ["sum", None], ["concat", "mul"]]


@pytest.fixture
def packed_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every block takes the packed-data path, as on CUDA."""
    monkeypatch.setattr(_BiRNNBase, "_packed_path", lambda self, x: bool(self.reset_after))


def _states(state: Any) -> List[torch.Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


def test_cudnn_train_flag_follows_grad_and_dropout_follows_training(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: List[Dict[str, Any]] = []
    real = fused._fused_kernels

    def spy(mode, x, h0, c0, weights, has_biases, num_layers, dropout, train, bidirectional):  # type: ignore[no-untyped-def]
        seen.append({"train": train, "dropout": dropout})
        return real(mode, x, h0, c0, weights, has_biases, num_layers, dropout, train, bidirectional)

    monkeypatch.setattr(fused, "_fused_kernels", spy)
    block = BiLSTM(3, 4, num_layers=2, dropout=0.5)
    x = torch.randn(5, 2, 3)
    with cpu_kernel.disabled():
        block.eval()
        out, _ = block(x)                                  # eval + grad: cuDNN must keep what backward needs
        out.sum().backward()
        assert seen[-1] == {"train": True, "dropout": 0.0}
        with torch.no_grad():
            block(x)
        assert seen[-1] == {"train": False, "dropout": 0.0}
        block.train()
        block(x)
        assert seen[-1] == {"train": True, "dropout": 0.5}
        with torch.no_grad():
            first, _ = block(x)                            # no grad in training: dropout still applies
            second, _ = block(x)
        assert seen[-1] == {"train": True, "dropout": 0.5}
        assert not torch.equal(first, second)


@pytest.mark.parametrize("block_type", [BiLSTM, BiGRU, BiRNN])
@pytest.mark.parametrize("merge_mode", MERGES, ids=str)
def test_packed_path_equals_the_padded_path_with_gradients(
    block_type: type, merge_mode: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    block = block_type(5, 8, num_layers=2, merge_mode=merge_mode).double()
    x = torch.randn(7, 4, 5, dtype=torch.float64)
    x[5:, 1] = float("nan")                                # padding may hold anything
    lengths = torch.tensor([7, 5, 2, 6])
    h0 = torch.randn(4, 4, 8, dtype=torch.float64)
    hx = (h0, torch.randn(4, 4, 8, dtype=torch.float64)) if block_type is BiLSTM else h0
    with cpu_kernel.disabled():
        x_pad = x.clone().requires_grad_()
        want, want_state = block(x_pad, hx, lengths=lengths)
        packed_input = pack_padded_sequence(x, lengths, enforce_sorted=False)
        want_packed, want_packed_state = block(packed_input, hx)
        monkeypatch.setattr(_BiRNNBase, "_packed_path", lambda self, x: True)
        x_packed = x.clone().requires_grad_()
        got, got_state = block(x_packed, hx, lengths=lengths)
        got_packed, got_packed_state = block(packed_input, hx)
    torch.testing.assert_close(got, want)
    assert got[5:, 1].eq(0).all()
    torch.testing.assert_close(got_packed.data, want_packed.data)
    assert torch.equal(got_packed.batch_sizes, packed_input.batch_sizes)
    assert torch.equal(got_packed.unsorted_indices, packed_input.unsorted_indices)
    for a, b in zip(_states(got_state) + _states(got_packed_state), _states(want_state) + _states(want_packed_state),
                    strict=True):
        torch.testing.assert_close(a, b)
    params = list(block.parameters())
    want_grads = torch.autograd.grad(want.square().sum(), [x_pad] + params)
    got_grads = torch.autograd.grad(got.square().sum(), [x_packed] + params)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b)
    assert torch.isfinite(got_grads[0]).all()


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_packed_concat_stack_is_nn_module_on_the_same_packed_batch(
    cell: str, packed_path: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(1)
    block = (BiLSTM if cell == "LSTM" else BiGRU)(5, 8, num_layers=3).double()
    reference = getattr(nn, cell)(5, 8, num_layers=3, bidirectional=True).double()
    reference.load_state_dict(block.state_dict())
    packed_input = pack_padded_sequence(torch.randn(6, 3, 5, dtype=torch.float64), torch.tensor([2, 6, 4]),
                                        enforce_sorted=False)
    calls: List[int] = []
    real = fused._packed_call
    monkeypatch.setattr(fused, "_packed_call", lambda *args: calls.append(args[7]) or real(*args))  # num_layers
    with cpu_kernel.disabled():
        got, got_state = block(packed_input)
    assert calls == [3]                                    # one call for the whole stack
    want, want_state = reference(packed_input)
    torch.testing.assert_close(got.data, want.data)
    for a, b in zip(_states(got_state), _states(want_state), strict=True):
        torch.testing.assert_close(a, b)
    params = list(block.parameters())
    for a, b in zip(torch.autograd.grad(got.data.sum(), params),
                    torch.autograd.grad(want.data.sum(), list(reference.parameters())), strict=True):
        torch.testing.assert_close(a, b)


def test_packed_path_mixed_merges_make_one_bidirectional_call_per_layer(
    packed_path: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: List[int] = []
    real = fused._packed_call
    monkeypatch.setattr(fused, "_packed_call", lambda *args: calls.append(args[7]) or real(*args))
    block = BiLSTM(3, 4, num_layers=3, merge_mode="sum")
    with cpu_kernel.disabled():
        block(torch.randn(5, 2, 3), lengths=torch.tensor([5, 3]))
    assert calls == [1, 1, 1]


def test_cudnn_call_sites_one_per_fused_call_and_flatten_is_a_no_op_on_cpu() -> None:
    concat = BiLSTM(3, 4, num_layers=2)
    assert concat.cudnn_call_sites() == [(concat._flat_weights_names, 3, 2)]
    mixed = BiGRU(3, 4, num_layers=3, merge_mode=["sum", "concat", "mul"], bias=False)
    sites = mixed.cudnn_call_sites()
    assert [(inputs, layers) for _, inputs, layers in sites] == [(3, 1), (4, 1), (8, 1)]
    assert sites[1][0] == ["weight_ih_l1", "weight_hh_l1", "weight_ih_l1_reverse", "weight_hh_l1_reverse"]
    assert [getattr(mixed, names[0]).shape[1] for names, _, _ in sites] == [3, 4, 8]
    pointers = [p.data_ptr() for p in concat.parameters()]
    concat.flatten_parameters()
    assert [p.data_ptr() for p in concat.parameters()] == pointers


def test_bf16_autocast_rule_runs_the_rnn_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeCuda:
        is_cuda = True

    monkeypatch.setattr(torch, "is_autocast_enabled", lambda *device: True)
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda device: torch.bfloat16)
    assert fused._autocast_runs_fp32(FakeCuda())           # type: ignore[arg-type]
    assert not fused._autocast_runs_fp32(torch.zeros(1))   # the CPU's bf16 autocast is real bf16
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda device: torch.float16)
    assert not fused._autocast_runs_fp32(FakeCuda())       # type: ignore[arg-type]  # fp16: cuDNN + GradScaler


def test_bf16_autocast_fallback_casts_inputs_to_the_weights_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused, "_autocast_runs_fp32", lambda x: True)
    block = BiGRU(3, 4, num_layers=2, merge_mode="sum")
    x = torch.randn(5, 2, 3)
    with cpu_kernel.disabled():
        want, _ = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, _ = block(x)
    assert got.dtype == torch.float32                      # the RNN left autocast; only the merge follows it
    torch.testing.assert_close(got, want)


def test_compile_model_passes_compile_mode_and_refuses_unknown_options(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: Dict[str, Any] = {}
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: seen.update(kwargs) or model)
    model = nn.Linear(2, 2)
    assert models.compile_model(model, "inductor", compile_mode="reduce-overhead", dynamic=False) is model
    assert seen == {"backend": "inductor", "mode": "reduce-overhead", "dynamic": False}
    with pytest.raises(TypeError, match=r"unknown torch\.compile option.*'modee'"):
        models.compile_model(model, "inductor", modee="max-autotune")
    with pytest.raises(ValueError, match="compile_mode='fast'"):
        models.compile_model(model, "inductor", compile_mode="fast")
    with pytest.raises(ValueError, match="needs mode='inductor'"):
        models.compile_model(model, "aot_eager", compile_mode="reduce-overhead")
    with pytest.raises(TypeError, match=r"takes no torch\.compile options"):
        models.compile_model(model, "script", compile_mode="reduce-overhead")


@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_reset_before_one_loop_for_both_directions_equals_two_direction_loops(with_lengths: bool, bias: bool) -> None:
    """The ``reset_after=False`` layer runs both directions in one recurrence (scripted on CUDA): the same numbers
    as the per-direction reference loop, eager and scripted, float64."""
    from models.blocks import gru_reset_before as grb

    torch.manual_seed(2)
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    h0 = torch.randn(2, 3, 5, dtype=torch.float64)
    weights = [torch.randn(15, 4), torch.randn(15, 5), torch.randn(15), torch.randn(15)] * 2
    weights = [w.double() * 0.5 for w in weights[:4]] + [w.double() * 0.3 for w in weights[4:]]
    if not bias:
        weights = weights[:2] + weights[4:6]
    per = 4 if bias else 2
    lengths = torch.tensor([6, 2, 4]) if with_lengths else None
    if with_lengths:
        x[4:, 1] = float("nan")
    want = [grb.gru_reset_before_direction(x, h0[d], *weights[d * per:d * per + 2],
                                           *(weights[d * per + 2:d * per + 4] if bias else [None, None]),
                                           lengths, d == 1) for d in (0, 1)]
    got, h_n = grb.gru_reset_before_bidirectional(x, h0, weights, bias, lengths)
    torch.testing.assert_close(got, torch.cat([want[0][0], want[1][0]], -1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n, torch.stack([want[0][1], want[1][1]]), rtol=1e-12, atol=1e-12)
    gates = torch.randn(2, 6, 3, 15, dtype=torch.float64)
    valid = torch.arange(6).unsqueeze(1) < torch.tensor([6, 2, 4]) if with_lengths else None
    bias_hh = torch.randn(2, 15, dtype=torch.float64) if bias else None
    weight_hh = torch.randn(2, 15, 5, dtype=torch.float64)
    eager = grb._bidirectional_loop(gates, h0, weight_hh, bias_hh, valid)
    scripted = grb._scripted_loop(gates, h0, weight_hh, bias_hh, valid)
    for a, b in zip(scripted, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_load_exported_takes_map_location(tmp_path: Any) -> None:
    model = models.create_model("birnn", vocab_size=30, num_classes=2, hidden_size=4, embed_dim=4,
                                merge_mode="sum").eval()
    path = models.export(model, tmp_path / "model.pt", "torchscript")
    tokens = torch.randint(1, 30, (2, 5))
    loaded = models.load_exported(path, map_location=torch.device("cpu"))
    torch.testing.assert_close(loaded(tokens), model(tokens))
    assert all(t.device.type == "cpu" for t in loaded.state_dict().values())
