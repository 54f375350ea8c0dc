"""The ``reset_after=False`` GRU reference (``models/blocks/gru_reset_before.py``) against independent references:
a float64 NumPy loop written from Keras's formula and Keras's weight layout, ``nn.GRU`` where both formulas
agree (reset gate pinned to 1), per-row runs for ``lengths``, and ``gradcheck`` in float64."""

import contextlib

import numpy as np
import pytest
import torch
from torch import nn

from models import BiGRU
from models.blocks import cpu_kernel
from models.blocks.gru_reset_before import GRUResetBefore, gru_reset_before, gru_reset_before_direction
from models.merge import merge_directions


def _keras_gru_reset_before(x: np.ndarray, h: np.ndarray, kernel: np.ndarray, recurrent: np.ndarray,
                            bias: np.ndarray) -> np.ndarray:
    """Keras 2's GRU cell (reset_after=False, gates z, r, h) in float64 over ``x (T, B, F)`` -> ``(T, B, H)``."""
    units = h.shape[1]
    out = []
    for x_t in x:
        m = x_t @ kernel + bias
        z = 1 / (1 + np.exp(-(m[:, :units] + h @ recurrent[:, :units])))
        r = 1 / (1 + np.exp(-(m[:, units:2 * units] + h @ recurrent[:, units:2 * units])))
        hh = np.tanh(m[:, 2 * units:] + (r * h) @ recurrent[:, 2 * units:])
        h = z * h + (1 - z) * hh
        out.append(h)
    return np.stack(out)


def _to_torch_order(array: np.ndarray, units: int) -> np.ndarray:
    """Keras z, r, h blocks (axis 0) -> PyTorch r, z, n."""
    return np.concatenate([array[units:2 * units], array[:units], array[2 * units:]], 0)


def test_matches_keras_formula_in_float64() -> None:
    rng = np.random.default_rng(0)
    steps, batch, feats, units = 6, 3, 4, 5
    x = rng.normal(size=(steps, batch, feats))
    h0 = rng.normal(size=(batch, units)) * 0.5
    kernel, recurrent = rng.normal(size=(feats, 3 * units)), rng.normal(size=(units, 3 * units))
    bias = rng.normal(size=3 * units)
    expected = _keras_gru_reset_before(x, h0, kernel, recurrent, bias)
    args = [torch.tensor(_to_torch_order(a, units), dtype=torch.float32) for a in (kernel.T, recurrent.T, bias)]
    out, h_n = gru_reset_before_direction(torch.tensor(x, dtype=torch.float32), torch.tensor(h0, dtype=torch.float32),
                                          args[0], args[1], args[2], torch.zeros(3 * units))
    np.testing.assert_allclose(out.numpy(), expected, atol=2e-6, rtol=0)
    np.testing.assert_allclose(h_n.numpy(), expected[-1], atol=2e-6, rtol=0)
    # Backward direction: the same recurrence on the time-reversed input, outputs back in input order.
    out_b, h_b = gru_reset_before_direction(torch.tensor(x, dtype=torch.float32), torch.tensor(h0, dtype=torch.float32),
                                            args[0], args[1], args[2], None, reverse=True)
    expected_b = _keras_gru_reset_before(x[::-1], h0, kernel, recurrent, bias)[::-1]
    np.testing.assert_allclose(out_b.numpy(), expected_b, atol=2e-6, rtol=0)
    np.testing.assert_allclose(h_b.numpy(), expected_b[0], atol=2e-6, rtol=0)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_equals_nn_gru_when_the_reset_gate_is_one(num_layers: int) -> None:
    """With r == 1 (W_hr = 0, b_ir = +1e4: sigmoid is exactly 1) both formulas coincide: compare with nn.GRU."""
    torch.manual_seed(1)
    gru = nn.GRU(3, 4, num_layers=num_layers, bidirectional=True).double()
    with torch.no_grad():
        for name, param in gru.named_parameters():
            if name.startswith("bias_ih"):
                param[:4] = 1.0e4
            if name.startswith("weight_hh"):
                param[:4] = 0.0
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    h0 = torch.randn(2 * num_layers, 2, 4, dtype=torch.float64)
    expected, expected_h = gru(x, h0)
    out, h_n = gru_reset_before(x, h0, gru._flat_weights, True, num_layers, 0.0, False, True)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(h_n, expected_h, atol=1e-12, rtol=0)


def test_lengths_match_per_row_runs_and_ignore_padding() -> None:
    torch.manual_seed(2)
    steps, batch, feats, units = 6, 4, 3, 5
    weights = [torch.randn(3 * units, feats), torch.randn(3 * units, units), torch.randn(3 * units),
               torch.randn(3 * units)]
    lengths = torch.tensor([6, 3, 1, 4])
    x = torch.randn(steps, batch, feats)
    pad = torch.arange(steps).unsqueeze(1) >= lengths.unsqueeze(0)
    x = x.masked_fill(pad.unsqueeze(-1), float("nan"))       # padding may hold anything
    h0 = torch.randn(batch, units)
    for reverse in (False, True):
        out, h_n = gru_reset_before_direction(x, h0, *weights, lengths=lengths, reverse=reverse)
        assert torch.isfinite(out).all() and (out[pad] == 0).all()
        for row, length in enumerate(lengths.tolist()):
            alone, alone_h = gru_reset_before_direction(x[:length, row:row + 1], h0[row:row + 1], *weights,
                                                        reverse=reverse)
            torch.testing.assert_close(out[:length, row:row + 1], alone, atol=1e-6, rtol=0)
            torch.testing.assert_close(h_n[row:row + 1], alone_h, atol=1e-6, rtol=0)


def test_gradcheck_float64_with_lengths() -> None:
    torch.manual_seed(3)
    steps, batch, feats, units = 3, 2, 2, 2
    params = [torch.randn(s, dtype=torch.float64, requires_grad=True)
              for s in [(steps, batch, feats), (2, batch, units)]
              + [(3 * units, feats), (3 * units, units), (3 * units,), (3 * units,)] * 2]
    lengths = torch.tensor([3, 2])

    def run(x: torch.Tensor, h0: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        out, h_n = gru_reset_before(x, h0, list(weights), True, 1, 0.0, False, True, lengths)
        return torch.cat([out.flatten(), h_n.flatten()])

    assert torch.autograd.gradcheck(run, params, atol=1e-7)


def test_scripted_module_matches_eager_and_has_nn_gru_parameter_names() -> None:
    torch.manual_seed(4)
    module = GRUResetBefore(3, 4, batch_first=True)
    assert [name for name, _ in module.named_parameters()] == [n for n, _ in nn.GRU(3, 4).named_parameters()]
    x = torch.randn(2, 5, 3)
    scripted = torch.jit.script(module)
    for got, expected in zip(scripted(x), module(x), strict=True):
        torch.testing.assert_close(got, expected, atol=0, rtol=0)
    out, h_n = module(x)
    assert out.shape == (2, 5, 4) and h_n.shape == (1, 2, 4)
    torch.testing.assert_close(h_n[0], out[:, -1], atol=0, rtol=0)
    with pytest.raises(ValueError, match="3 features"):
        module(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match=r"hx must be \(1, B, hidden_size\)"):
        module(x, torch.zeros(2, 2, 4))
    torch.testing.assert_close(module(x, h_n)[0], module(torch.cat([x, x], 1))[0][:, 5:], atol=1e-6, rtol=0)


# -- BiGRU(reset_after=False): the blocks route every path to the reference --------------------------------------

def _block(merge_mode, num_layers: int = 2, bias: bool = True, dtype: torch.dtype = torch.float32,
           device: str = "cpu") -> BiGRU:
    torch.manual_seed(5)
    return BiGRU(3, 4, num_layers, bias=bias, merge_mode=merge_mode, reset_after=False).to(device, dtype)


def _expected_block(block: BiGRU, x: torch.Tensor, h0: torch.Tensor) -> tuple:
    """Layer by layer from gru_reset_before_direction and merge_directions (time-major, full length)."""
    states = []
    for layer in range(block.num_layers):
        outs = []
        for direction, suffix in enumerate(("", "_reverse")):
            names = [f"{k}_l{layer}{suffix}" for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            weights = [getattr(block, n) if hasattr(block, n) else None for n in names]
            out, h = gru_reset_before_direction(x, h0[2 * layer + direction], *weights, reverse=direction == 1)
            outs.append(out)
            states.append(h)
        x = merge_directions(outs[0], outs[1], block.merge_modes[layer])
    return x, torch.stack(states)


@pytest.mark.parametrize("merge_mode,bias", [("concat", True), (["sum", "mul"], False), (["ave", None], True)])
def test_bigru_reset_before_matches_the_reference(merge_mode, bias: bool) -> None:
    block = _block(merge_mode, bias=bias)
    x, h0 = torch.randn(6, 3, 3), torch.randn(4, 3, 4)
    expected, expected_h = _expected_block(block, x, h0)
    out, h_n = block(x, hx=h0)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(h_n, expected_h, atol=1e-6, rtol=0)
    # Not PyTorch's formula: the same weights in a reset_after=True block give other outputs.
    other = BiGRU(3, 4, 2, bias=bias, merge_mode=merge_mode)
    other.load_state_dict(block.state_dict())
    assert (other(x, hx=h0)[0] - out).abs().max() > 1e-3


def test_bigru_reset_before_lengths_match_per_row_runs_and_script() -> None:
    block = _block(["sum", "concat"])
    block.batch_first = True
    lengths = torch.tensor([5, 2, 4])
    x = torch.randn(3, 5, 3)
    out, h_n = block(x, lengths=lengths)
    for row, length in enumerate(lengths.tolist()):
        alone, alone_h = block(x[row:row + 1, :length])
        torch.testing.assert_close(out[row:row + 1, :length], alone, atol=1e-6, rtol=0)
        torch.testing.assert_close(h_n[:, row:row + 1], alone_h, atol=1e-6, rtol=0)
        assert (out[row, length:] == 0).all()
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    packed_out, packed_h = block(packed)
    torch.testing.assert_close(nn.utils.rnn.pad_packed_sequence(packed_out, batch_first=True)[0], out[:, :5],
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(packed_h, h_n, atol=1e-6, rtol=0)
    scripted = torch.jit.script(block)
    for got, expected in zip(scripted(x, lengths=lengths), (out, h_n), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_bigru_reset_before_on_the_cpu_kernel_equals_the_time_loop(capability: str, monkeypatch, dtype, tol,
                                                                   with_lengths: bool) -> None:
    """The kernel's third cell (reset gate before the product) against the exact time loop: outputs, states and
    every gradient, on each instruction set this CPU has."""
    calls = []
    real = cpu_kernel.fused_layer
    monkeypatch.setattr(cpu_kernel, "fused_layer", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    block = _block(["sum", "concat"], dtype=dtype)
    x = torch.randn(6, 3, 3, dtype=dtype, requires_grad=True)
    h0 = torch.randn(4, 3, 4, dtype=dtype, requires_grad=True)
    lengths = torch.tensor([6, 2, 5]) if with_lengths else None
    results = []
    for switch in (contextlib.nullcontext, cpu_kernel.disabled):  # the fixture forces the kernel outside disabled()
        with switch():
            out, h_n = block(x, h0, lengths=lengths)
            grads = torch.autograd.grad(out.square().sum() + h_n.sin().sum(), [x, h0, *block.parameters()])
        results.append([out, h_n, *grads])
    assert calls == ["GRU_RESET_BEFORE", "GRU_RESET_BEFORE"]  # two layers, the first run only
    for kernel, loop in zip(*results, strict=True):
        torch.testing.assert_close(kernel, loop, atol=tol, rtol=tol)


def test_bigru_reset_before_gradcheck_float64() -> None:
    """Through the block (merges, lengths): input, initial state and every weight (the block reads its weights
    at each call, so ``functional_call`` substitutes them)."""
    block = _block(["ave", "concat"], dtype=torch.float64)
    names = [name for name, _ in block.named_parameters()]
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 4, dtype=torch.float64, requires_grad=True)
    weights = [p.detach().clone().requires_grad_() for p in block.parameters()]
    lengths = torch.tensor([3, 2])

    def run(x: torch.Tensor, h0: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        state = dict(zip(names, weights, strict=True))
        out, h_n = torch.func.functional_call(block, state, (x, h0), {"lengths": lengths})
        return torch.cat([out.flatten(), h_n.flatten()])

    assert torch.autograd.gradcheck(run, [x, h0, *weights], atol=1e-7, fast_mode=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bigru_reset_before_on_cuda_matches_cpu() -> None:
    cpu = _block(["sum", "concat"])
    gpu = _block(["sum", "concat"], device="cuda")
    x, lengths = torch.randn(6, 3, 3), torch.tensor([6, 2, 4])
    for got, expected in zip(gpu(x.cuda(), lengths=lengths.cuda()), cpu(x, lengths=lengths), strict=True):
        torch.testing.assert_close(got.cpu(), expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_bigru_reset_before_compile_and_export() -> None:
    block = _block(["sum", "concat"]).eval()
    block.batch_first = True
    x, lengths = torch.randn(3, 5, 3), torch.tensor([5, 2, 4])
    expected = block(x, lengths=lengths)
    for got in (torch.compile(block)(x, lengths=lengths),
                torch.export.export(block, (x,), {"lengths": lengths}).module()(x, lengths=lengths)):
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, atol=1e-6, rtol=0)
