"""Eager tests for the parts of ``models/blocks/gru_reset_before.py`` that mutation testing found unreached or
weakly checked (issue 37): ``GRUResetBefore`` called eagerly (its other test scripts it, which mutmut's
trampolines cannot), ``gru_reset_before`` unidirectional, multi-layer, without biases and with dropout,
``gru_reset_before_bidirectional`` with and without ``lengths`` and biases, and the GPU-only parts taken on the CPU:
the device arguments (meta inputs with host lengths) and the CUDA branch (a CUDA-looking input, a recording stand-in
for the TorchScript loop). The reference is a float64 NumPy loop written from the formula in PyTorch's gate order
(r, z, n), run per row for ``lengths``; tolerances are float32 rounding over a few steps (1e-5 absolute)."""

from typing import List, Optional, Tuple

import numpy as np
import pytest
import torch

from models.blocks import gru_reset_before as gru_reset_before_module
from models.blocks.gru_reset_before import (
    GRUResetBefore,
    _bidirectional_loop,
    gru_reset_before,
    gru_reset_before_bidirectional,
    gru_reset_before_direction,
)

TOL = 1e-5


def _ref_direction(x: np.ndarray, h: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray, b_ih: Optional[np.ndarray],
                   b_hh: Optional[np.ndarray], reverse: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """One direction on ``x (T, B, F)`` from ``h (B, H)`` in float64 -> ``out (T, B, H)``, ``h_n (B, H)``."""
    units = h.shape[1]
    b_ih = np.zeros(3 * units) if b_ih is None else b_ih
    b_hh = np.zeros(3 * units) if b_hh is None else b_hh
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    out = np.zeros((x.shape[0], x.shape[1], units))
    for t in steps:
        gx = x[t] @ w_ih.T + b_ih
        r = 1 / (1 + np.exp(-(gx[:, :units] + h @ w_hh[:units].T + b_hh[:units])))
        z = 1 / (1 + np.exp(-(gx[:, units:2 * units] + h @ w_hh[units:2 * units].T + b_hh[units:2 * units])))
        n = np.tanh(gx[:, 2 * units:] + (r * h) @ w_hh[2 * units:].T + b_hh[2 * units:])
        h = (1 - z) * n + z * h
        out[t] = h
    return out, h


def _ref_layer(x: np.ndarray, h0: np.ndarray, weights: List[np.ndarray], has_biases: bool,
               lengths: Optional[List[int]]) -> Tuple[np.ndarray, np.ndarray]:
    """One bidirectional layer, rows run alone up to their length (zeros after) -> ``(T, B, 2H)``, ``(2, B, H)``."""
    per = 4 if has_biases else 2
    units = h0.shape[2]
    out = np.zeros((x.shape[0], x.shape[1], 2 * units))
    h_n = np.zeros((2, x.shape[1], units))
    for row in range(x.shape[1]):
        length = x.shape[0] if lengths is None else lengths[row]
        for d in range(2):
            w = weights[d * per:(d + 1) * per]
            b = (w[2], w[3]) if has_biases else (None, None)
            o, h = _ref_direction(x[:length, row:row + 1], h0[d, row:row + 1], w[0], w[1], *b, reverse=d == 1)
            out[:length, row, d * units:(d + 1) * units] = o[:, 0]
            h_n[d, row] = h[0]
    return out, h_n


def _weights(feats: int, units: int, has_biases: bool, directions: int, layers: int) -> List[torch.Tensor]:
    """``torch._VF.gru``'s flat order; the next layer's input has ``directions * units`` features."""
    weights = []
    for layer in range(layers):
        inp = feats if layer == 0 else directions * units
        for _ in range(directions):
            weights += [torch.randn(3 * units, inp) * 0.7, torch.randn(3 * units, units) * 0.7]
            if has_biases:
                weights += [torch.randn(3 * units) * 0.5, torch.randn(3 * units) * 0.5]
    return weights


def _np(tensors: List[torch.Tensor]) -> List[np.ndarray]:
    return [t.double().numpy() for t in tensors]


@pytest.mark.parametrize("has_biases", [True, False])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_bidirectional_layer_matches_per_row_reference(has_biases: bool, with_lengths: bool) -> None:
    torch.manual_seed(10)
    steps, batch, feats, units = 5, 4, 3, 2
    weights = _weights(feats, units, has_biases, 2, 1)
    x, h0 = torch.randn(steps, batch, feats), torch.randn(2, batch, units)
    lengths = [5, 2, 1, 4] if with_lengths else None
    if lengths is not None:
        pad = torch.arange(steps).unsqueeze(1) >= torch.tensor(lengths).unsqueeze(0)
        x = x.masked_fill(pad.unsqueeze(-1), float("nan"))   # padding may hold anything
    out, h_n = gru_reset_before_bidirectional(x, h0, weights, has_biases,
                                              None if lengths is None else torch.tensor(lengths))
    expected, expected_h = _ref_layer(np.nan_to_num(x.double().numpy()), h0.double().numpy(), _np(weights),
                                      has_biases, lengths)
    assert out.shape == (steps, batch, 2 * units) and h_n.shape == (2, batch, units)
    np.testing.assert_allclose(out.numpy(), expected, atol=TOL, rtol=0)
    np.testing.assert_allclose(h_n.numpy(), expected_h, atol=TOL, rtol=0)


@pytest.mark.parametrize("has_biases", [True, False])
def test_bidirectional_loop_with_mask_keeps_state_and_zeroes_output(has_biases: bool) -> None:
    """``_bidirectional_loop`` directly: a masked step leaves the state as it was and outputs zeros."""
    torch.manual_seed(11)
    steps, batch, units = 4, 3, 2
    gates_x = torch.randn(2, steps, batch, 3 * units)
    h0 = torch.randn(2, batch, units)
    weight_hh = torch.randn(2, 3 * units, units)
    bias_hh = torch.randn(2, 3 * units) if has_biases else None
    valid = torch.tensor([[True, True, True], [True, False, True], [True, False, False], [True, False, False]])
    out, h_n = _bidirectional_loop(gates_x, h0, weight_hh, bias_hh, valid)
    for d in range(2):
        h = h0[d].double().numpy()
        w = weight_hh[d].double().numpy()
        b = np.zeros(3 * units) if bias_hh is None else bias_hh[d].double().numpy()
        for t in range(steps):
            g = gates_x[d, t].double().numpy()
            r = 1 / (1 + np.exp(-(g[:, :units] + h @ w[:units].T + b[:units])))
            z = 1 / (1 + np.exp(-(g[:, units:2 * units] + h @ w[units:2 * units].T + b[units:2 * units])))
            n = np.tanh(g[:, 2 * units:] + (r * h) @ w[2 * units:].T + b[2 * units:])
            new = (1 - z) * n + z * h
            keep = valid[t].numpy()[:, None]
            np.testing.assert_allclose(out[d, t].numpy(), np.where(keep, new, 0.0), atol=TOL, rtol=0)
            h = np.where(keep, new, h)
        np.testing.assert_allclose(h_n[d].numpy(), h, atol=TOL, rtol=0)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("has_biases", [True, False])
@pytest.mark.parametrize("layers", [2, 3])
def test_stacked_layers_match_layer_by_layer_reference(bidirectional: bool, has_biases: bool, layers: int) -> None:
    """Two and three layers (the third reads ``hx`` rows past the second's slice)."""
    torch.manual_seed(12)
    steps, batch, feats, units = 4, 3, 3, 2
    directions = 2 if bidirectional else 1
    per = 4 if has_biases else 2
    weights = _weights(feats, units, has_biases, directions, layers)
    x, hx = torch.randn(steps, batch, feats), torch.randn(directions * layers, batch, units)
    lengths = [4, 1, 3]
    out, h_n = gru_reset_before(x, hx, weights, has_biases, layers, 0.0, False, bidirectional, torch.tensor(lengths))
    layer_in, states = x.double().numpy(), []
    w_np = _np(weights)
    for layer in range(layers):
        outs = []
        for d in range(directions):
            w = w_np[(layer * directions + d) * per:(layer * directions + d + 1) * per]
            b = (w[2], w[3]) if has_biases else (None, None)
            o = np.zeros((steps, batch, units))
            h = np.zeros((batch, units))
            for row, length in enumerate(lengths):
                o_row, h_row = _ref_direction(layer_in[:length, row:row + 1], hx[layer * directions + d,
                                              row:row + 1].double().numpy(), w[0], w[1], *b, reverse=d == 1)
                o[:length, row] = o_row[:, 0]
                h[row] = h_row[0]
            outs.append(o)
            states.append(h)
        layer_in = np.concatenate(outs, -1)
    assert out.shape == (steps, batch, directions * units) and h_n.shape == (directions * layers, batch, units)
    np.testing.assert_allclose(out.numpy(), layer_in, atol=TOL, rtol=0)
    np.testing.assert_allclose(h_n.numpy(), np.stack(states), atol=TOL, rtol=0)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_dropout_only_between_layers_and_only_when_training(bidirectional: bool) -> None:
    """Dropout (``train`` and ``dropout > 0``) applies to every layer's output but the last: with one layer, or
    not training, or ``dropout == 0``, the result is the plain one; with two layers and training it is exactly
    the plain layers with ``F.dropout`` in between, drawn from the same seed."""
    torch.manual_seed(13)
    steps, batch, feats, units = 4, 3, 3, 5
    directions = 2 if bidirectional else 1
    per = 4 * directions
    weights = _weights(feats, units, True, directions, 2)
    x, hx = torch.randn(steps, batch, feats), torch.randn(2 * directions, batch, units)
    plain = gru_reset_before(x, hx, weights, True, 2, 0.0, True, bidirectional)
    torch.manual_seed(0)
    dropped = gru_reset_before(x, hx, weights, True, 2, 0.5, True, bidirectional)
    assert (dropped[0] - plain[0]).abs().max() > 1e-3                         # it did drop
    torch.manual_seed(0)
    first = gru_reset_before(x, hx[:directions], weights[:per], True, 1, 0.0, False, bidirectional)
    mid = torch.nn.functional.dropout(first[0], 0.5, True)
    second = gru_reset_before(mid, hx[directions:], weights[per:], True, 1, 0.0, False, bidirectional)
    torch.testing.assert_close(dropped[0], second[0], atol=0, rtol=0)
    torch.testing.assert_close(dropped[1], torch.cat([first[1], second[1]]), atol=0, rtol=0)
    for args in ((0.5, False), (0.0, True)):                                 # not training, or no dropout
        torch.testing.assert_close(gru_reset_before(x, hx, weights, True, 2, *args, bidirectional)[0], plain[0],
                                   atol=0, rtol=0)
    single = gru_reset_before(x, hx[:directions], weights[:per], True, 1, 0.9, True, bidirectional)
    torch.testing.assert_close(single[0], first[0], atol=0, rtol=0)          # no dropout after the last layer


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
def test_module_eager_matches_reference(bias: bool, batch_first: bool) -> None:
    torch.manual_seed(14)
    feats, units, steps, batch = 3, 4, 5, 2
    module = GRUResetBefore(feats, units, bias=bias, batch_first=batch_first)
    assert (module.input_size, module.hidden_size, module.bias, module.batch_first) == (feats, units, bias,
                                                                                        batch_first)
    shapes = {n: tuple(p.shape) for n, p in module.named_parameters()}
    expected_shapes = {"weight_ih_l0": (3 * units, feats), "weight_hh_l0": (3 * units, units)}
    if bias:
        expected_shapes.update(bias_ih_l0=(3 * units,), bias_hh_l0=(3 * units,))
    else:
        assert module.bias_ih_l0 is None and module.bias_hh_l0 is None
    assert shapes == expected_shapes
    bound = units ** -0.5
    for p in module.parameters():                        # nn.GRU's init: uniform in [-1/sqrt(H), 1/sqrt(H)]
        assert p.abs().max() <= bound and p.abs().max() > 0.6 * bound and p.std() > 0.3 * bound
    assert module.extra_repr() == f"{feats}, {units}, bias={bias}, batch_first={batch_first}, reset_after=False"
    x_tm = torch.randn(steps, batch, feats)
    x = x_tm.transpose(0, 1) if batch_first else x_tm
    w = [module.weight_ih_l0, module.weight_hh_l0] + ([module.bias_ih_l0, module.bias_hh_l0] if bias else [None] * 2)
    w_np = [None if t is None else t.detach().double().numpy() for t in w]
    for hx in (None, torch.randn(1, batch, units)):
        out, h_n = module(x, hx)
        h0 = np.zeros((batch, units)) if hx is None else hx[0].double().numpy()
        expected, expected_h = _ref_direction(x_tm.double().numpy(), h0, *w_np)
        if batch_first:
            expected = expected.transpose(1, 0, 2)
        assert out.shape == expected.shape and h_n.shape == (1, batch, units)
        np.testing.assert_allclose(out.detach().numpy(), expected, atol=TOL, rtol=0)
        np.testing.assert_allclose(h_n[0].detach().numpy(), expected_h, atol=TOL, rtol=0)


def test_module_refusals_name_the_argument_and_the_value() -> None:
    module = GRUResetBefore(3, 4, batch_first=True)
    x = torch.randn(2, 5, 3)
    with pytest.raises(ValueError) as info:
        module(torch.randn(2, 5, 7))
    assert str(info.value) == "input must be 3-D with 3 features, got shape [2, 5, 7]"
    with pytest.raises(ValueError) as info:
        module(torch.randn(5, 3))
    assert str(info.value) == "input must be 3-D with 3 features, got shape [5, 3]"
    with pytest.raises(ValueError) as info:
        module(x, torch.zeros(2, 2, 4))
    assert str(info.value) == ("hx must be (1, B, hidden_size) = [1, 2, 4] of the input's dtype torch.float32, "
                               "got shape [2, 2, 4] and dtype torch.float32")
    for bad in (torch.zeros(1, 2, 4, dtype=torch.float64), torch.zeros(1, 5, 4), torch.zeros(1, 2, 3)):
        with pytest.raises(ValueError, match=r"hx must be \(1, B, hidden_size\)"):
            module(x, bad)
    for name, args in (("input_size", (0, 4)), ("hidden_size", (3, 0))):
        with pytest.raises(ValueError) as info:
            GRUResetBefore(*args)
        assert str(info.value) == f"{name} must be a positive int, got 0"


def test_module_defaults_are_nn_grus() -> None:
    """As ``nn.GRU``: biases on, time-major input by default."""
    module = GRUResetBefore(3, 4)
    assert module.bias is True and module.batch_first is False
    assert module.bias_ih_l0 is not None and module.bias_hh_l0 is not None
    x = torch.randn(5, 2, 3)                                 # (T, B, F): 5 steps of a batch of 2
    out, h_n = module(x)
    assert out.shape == (5, 2, 4)
    torch.testing.assert_close(h_n[0], out[-1], atol=0, rtol=0)


# -- the device arguments and the CUDA branch, taken on the CPU --------------------------------------------------


def _meta(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta")


def test_steps_and_lengths_are_moved_to_the_inputs_device() -> None:
    """On CUDA the blocks may hand host ``lengths`` to a GPU input: ``steps`` must be made on the input's device and
    ``lengths`` moved there, or the comparisons mix devices. The meta device is a second device on any machine (a
    tensor made without the input's device lands on the CPU, and mixing it with a meta tensor raises): the layer,
    forward and reversed, and both directions at once, run on meta inputs with host lengths to outputs of the
    right shapes on the input's device."""
    steps, batch, feats, units = 4, 3, 2, 5
    lengths = torch.tensor([4, 2, 3])
    weights = [_meta(3 * units, feats), _meta(3 * units, units), _meta(3 * units), _meta(3 * units)]
    for reverse in (False, True):
        out, h_n = gru_reset_before_direction(_meta(steps, batch, feats), _meta(batch, units), *weights, lengths,
                                              reverse)
        assert out.device.type == h_n.device.type == "meta"
        assert out.shape == (steps, batch, units) and h_n.shape == (batch, units)
    out, h_n = gru_reset_before_bidirectional(_meta(steps, batch, feats), _meta(2, batch, units), weights * 2, True,
                                              lengths)
    assert out.device.type == h_n.device.type == "meta"
    assert out.shape == (steps, batch, 2 * units) and h_n.shape == (2, batch, units)


class _LooksCuda(torch.Tensor):
    """A CPU tensor that says it is on CUDA (operations on it return the same): the CUDA branch without a GPU."""

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return True


@pytest.mark.parametrize("with_lengths", [False, True])
def test_a_cuda_input_runs_the_jit_loop_with_the_layers_arguments(monkeypatch: pytest.MonkeyPatch,
                                                                   with_lengths: bool) -> None:
    """On CUDA the bidirectional layer runs its recurrence as ``_scripted_loop`` (``_bidirectional_loop`` compiled
    by TorchScript: no Python per step); on the CPU eagerly. A stand-in ``_scripted_loop`` records its calls and runs
    ``_bidirectional_loop`` eagerly on them (compiling needs the unmutated function): a CUDA-looking input calls it
    exactly once, with the layer's gates, states, weights, biases and mask (the result equals the per-row reference
    with biases and, with ``lengths``, padding), and a CPU input never calls it."""
    calls: List[int] = []

    def stand_in(gates_x: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor, bias_hh: Optional[torch.Tensor],
                 valid: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        calls.append(gates_x.shape[1])
        plain = [None if t is None else t.as_subclass(torch.Tensor) for t in (gates_x, h, weight_hh, bias_hh, valid)]
        return _bidirectional_loop(*plain)

    monkeypatch.setattr(gru_reset_before_module, "_scripted_loop", stand_in)
    torch.manual_seed(15)
    steps, batch, feats, units = 5, 4, 3, 2
    weights = _weights(feats, units, True, 2, 1)
    x, h0 = torch.randn(steps, batch, feats), torch.randn(2, batch, units)
    lengths = [5, 2, 1, 4] if with_lengths else None
    lengths_t = None if lengths is None else torch.tensor(lengths)
    expected, expected_h = _ref_layer(x.double().numpy(), h0.double().numpy(), _np(weights), True, lengths)
    out, h_n = gru_reset_before_bidirectional(x.as_subclass(_LooksCuda), h0, weights, True, lengths_t)
    assert calls == [steps]
    np.testing.assert_allclose(out.as_subclass(torch.Tensor).numpy(), expected, atol=TOL, rtol=0)
    np.testing.assert_allclose(h_n.as_subclass(torch.Tensor).numpy(), expected_h, atol=TOL, rtol=0)
    calls.clear()
    out, _ = gru_reset_before_bidirectional(x, h0, weights, True, lengths_t)
    assert calls == []
    np.testing.assert_allclose(out.numpy(), expected, atol=TOL, rtol=0)
