"""The ``reset_after=False`` GRU reference (``models/gru_reset_before.py``) against independent references:
a float64 NumPy loop written from Keras's formula and Keras's weight layout, ``nn.GRU`` where both formulas
agree (reset gate pinned to 1), per-row runs for ``lengths``, and ``gradcheck`` in float64."""

import numpy as np
import pytest
import torch
from torch import nn

from models.gru_reset_before import GRUResetBefore, gru_reset_before, gru_reset_before_direction


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
