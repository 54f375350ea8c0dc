"""The raw blocks against Keras 3: a stack of ``Bidirectional(LSTM|GRU|SimpleRNN, return_sequences=True)``
layers with one merge mode vs ``BiLSTM``/``BiGRU``/``BiRNN`` with the weights copied by hand (a mapping
written here, independent of ``models.keras``). Float32 on both sides with ``ATOL = 1e-5``: with
``keras.config.set_floatx("float64")`` Keras 3.15's torch backend still deviates from an exact float64
computation by float32-level amounts (~1e-8 after one SimpleRNN step, ~1e-7 after two layers), so float64
buys nothing; a wrong mapping is off by ~1e-1. Masked batches
(right- and left-padded rows, Keras ``Masking``) are compared on their valid steps, the blocks running
with ``lengths`` after ``compact_valid_steps``.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np
import pytest
import torch
from helpers.optional import optional_import

keras, needs_keras = optional_import("keras", "the Keras tests need keras (pip install -e '.[dev]')")
pytestmark = needs_keras
layers = keras.layers

from models import BiGRU, BiLSTM, BiRNN  # noqa: E402
from models.zoo.pooling import compact_valid_steps  # noqa: E402

B, T, F, H = 4, 6, 3, 4
ATOL = 1e-5
KERAS_CELLS = {"LSTM": layers.LSTM, "GRU": layers.GRU, "SimpleRNN": layers.SimpleRNN}
BLOCKS = {"LSTM": BiLSTM, "GRU": BiGRU, "SimpleRNN": BiRNN}


def _gru_rows(a: np.ndarray) -> np.ndarray:
    """Keras gate blocks z, r, h -> PyTorch r, z, n (axis 0)."""
    return np.concatenate([a[H:2 * H], a[:H], a[2 * H:]])


def _copy(bidirectional, block, layer: int, cell: str) -> None:
    weights = bidirectional.get_weights()           # forward kernel, recurrent, bias; then backward
    for direction, suffix in enumerate(["", "_reverse"]):
        kernel, recurrent, bias = weights[3 * direction:3 * direction + 3]
        w_ih, w_hh = kernel.T, recurrent.T
        if cell == "GRU":
            values = [_gru_rows(w_ih), _gru_rows(w_hh), _gru_rows(bias[0]), _gru_rows(bias[1])]
        else:
            values = [w_ih, w_hh, bias, np.zeros_like(bias)]
        for name, value in zip(["weight_ih", "weight_hh", "bias_ih", "bias_hh"], values, strict=True):
            getattr(block, f"{name}_l{layer}{suffix}").data.copy_(torch.from_numpy(np.ascontiguousarray(value)))


@pytest.mark.parametrize("cell", list(KERAS_CELLS))
@pytest.mark.parametrize("mode", ["concat", "sum", "mul", "ave", None])
def test_block_matches_keras_stack(cell, mode):
    rng = np.random.default_rng(0)
    modes = ["concat" if mode is None else mode, mode]
    stack = [layers.Bidirectional(KERAS_CELLS[cell](H, return_sequences=True), merge_mode=m) for m in modes]
    model = keras.Sequential([keras.Input((None, F)), layers.Masking(0.0), *stack])
    for layer in model.layers[1:]:  # non-zero biases, so the bias mapping is exercised
        layer.set_weights([(rng.normal(size=w.shape) * 0.5).astype("float32") for w in layer.get_weights()])
    block = BLOCKS[cell](F, H, num_layers=2, batch_first=True, merge_mode=modes, dtype=torch.float32)
    for index, bidirectional in enumerate(stack):
        _copy(bidirectional, block, index, cell)

    steps = np.arange(T)
    mask = np.stack([steps < T, steps < 3, steps >= 2, steps >= T - 1])     # full, right, left, left
    x = np.where(mask[..., None], rng.normal(size=(B, T, F)), 0.0).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x))
    if mode is None:                                                  # Keras: [forward, backward]
        expected = np.stack(expected, -2)

    with torch.no_grad():
        full, _ = block(torch.from_numpy(x[:1]))                       # no padding: the plain fused path
        compact, lengths = compact_valid_steps(torch.from_numpy(x), torch.from_numpy(mask))
        out, _ = block(compact, lengths=lengths)
    np.testing.assert_allclose(full.numpy()[0], expected[0], atol=ATOL, rtol=0)
    for row in range(B):
        valid = mask[row]
        np.testing.assert_allclose(out.numpy()[row, :valid.sum()], expected[row][valid], atol=ATOL, rtol=0)
