"""The Keras importer against Keras 3 with every weight random and non-zero (issue 37): Keras's default biases are
zeros (and a GRU's two bias rows are equal then), so a swapped or dropped bias would pass a parity test on a fresh
layer. Every merge mode, every cell (GRU with ``reset_after`` true and false), both CPU paths (the kernel and
PyTorch's kernels); initial states given to the block as ``hx`` and to Keras as ``initial_state``."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.optional import optional_import

keras, needs_keras = optional_import("keras", "the Keras tests need keras (pip install -e '.[dev]')")
pytestmark = needs_keras
layers = keras.layers

from models import BiGRU, BiLSTM, BiRNN  # noqa: E402
from models.blocks import cpu_kernel  # noqa: E402
from models.keras import from_keras, load_keras_weights  # noqa: E402

B, T, F, H = 3, 5, 4, 3
ATOL = 1e-5
CELLS = {
    "LSTM": (lambda **kw: layers.LSTM(H, return_sequences=True, **kw), BiLSTM, {}),
    "GRU": (lambda **kw: layers.GRU(H, return_sequences=True, **kw), BiGRU, {}),
    "GRU_reset_before": (lambda **kw: layers.GRU(H, return_sequences=True, reset_after=False, **kw), BiGRU,
                         {"reset_after": False}),
    "SimpleRNN": (lambda **kw: layers.SimpleRNN(H, return_sequences=True, **kw), BiRNN, {}),
}
MODES = ["concat", "sum", "mul", "ave", None]


def cpu_paths() -> list:
    """The CPU paths a block can take here: PyTorch's kernels, and the project's kernel where it is built."""
    return [cpu_kernel.disabled, *([cpu_kernel.forced] if cpu_kernel.available() else [])]


def randomize(layer: "layers.Layer", rng: np.random.Generator) -> None:
    """Every weight, biases included, random and far from Keras's initial values."""
    layer.set_weights([(rng.normal(size=w.shape) * 0.6).astype("float32") for w in layer.get_weights()])


def stack(cell: str, mode: object) -> list:
    """Two Bidirectional layers: ``mode`` after the last, ``concat`` (or ``mode``) after the first."""
    make = CELLS[cell][0]
    first = "concat" if mode is None else mode
    return [layers.Bidirectional(make(), merge_mode=first, name="bidirectional"),
            layers.Bidirectional(make(), merge_mode=mode, name="bidirectional_1")]


def as_numpy(outputs: object) -> np.ndarray:
    if isinstance(outputs, (list, tuple)):                           # merge_mode=None: [forward, backward]
        return np.stack([keras.ops.convert_to_numpy(o) for o in outputs], -2)
    return keras.ops.convert_to_numpy(outputs)


# Keras's own run dominates the time: each test runs Keras once and compares both CPU paths with it. LSTM and GRU
# (two bias rows) in the default suite; SimpleRNN and reset_after=False GRU under -m slow.
CASES = [pytest.param(cell, marks=[pytest.mark.slow] if cell in ("SimpleRNN", "GRU_reset_before") else [])
         for cell in CELLS]


@pytest.mark.parametrize("cell", CASES)
@pytest.mark.parametrize("mode", MODES, ids=str)
def test_from_keras_and_initial_states_with_random_biases_match_keras(tmp_path: Path, cell: str,
                                                                      mode: object) -> None:
    rng = np.random.default_rng(7)
    bidirectionals = stack(cell, mode)
    model = keras.Sequential([keras.Input((None, F)), *bidirectionals])
    for layer in bidirectionals:
        randomize(layer, rng)
    if cell == "GRU":   # the two bias rows (input side, recurrent side) differ: a swap changes the outputs
        bias = bidirectionals[0].get_weights()[2]
        assert bias.shape == (2, 3 * H) and not np.allclose(bias[0], bias[1])
    model.save(tmp_path / "model.keras")
    model.save_weights(tmp_path / "stack.weights.h5")
    x = rng.normal(size=(B, T, F)).astype("float32")
    expected = as_numpy(model(x))

    # initial states: per layer, per direction, h (and c); Keras takes [forward states..., backward states...]
    n_states = 2 if cell == "LSTM" else 1
    initial = rng.normal(size=(2, 2, n_states, B, H)).astype("float32")     # (layer, direction, state, B, H)
    outputs = x
    for layer, bidirectional in enumerate(bidirectionals):
        outputs = bidirectional(outputs,
                                initial_state=[initial[layer, d, s] for d in range(2) for s in range(n_states)])
    expected_from_states = as_numpy(outputs)
    h0 = torch.from_numpy(initial[:, :, 0].reshape(4, B, H))              # rows: l0 fwd, l0 bwd, l1 fwd, l1 bwd
    hx = (h0, torch.from_numpy(initial[:, :, 1].reshape(4, B, H))) if cell == "LSTM" else h0

    imported = from_keras(str(tmp_path / "model.keras"))
    block_cls, kwargs = CELLS[cell][1], CELLS[cell][2]
    block = block_cls(F, H, num_layers=2, batch_first=True, merge_mode=["concat" if mode is None else mode, mode],
                      **kwargs)
    load_keras_weights(block, str(tmp_path / "stack.weights.h5"))
    for path in cpu_paths():
        with path(), torch.no_grad():
            got = imported(torch.from_numpy(x))
            got = torch.stack(got, -2) if isinstance(got, tuple) else got
            np.testing.assert_allclose(got.numpy(), expected, atol=ATOL, rtol=0, err_msg=path.__name__)
            from_states, _ = block(torch.from_numpy(x), hx)
            np.testing.assert_allclose(from_states.numpy(), expected_from_states, atol=ATOL, rtol=0,
                                       err_msg=path.__name__)
