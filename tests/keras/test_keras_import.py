"""Parity of ``models.keras.from_keras`` with Keras 3 on saved ``.keras`` and legacy ``.h5`` models.

Every comparison runs the Keras model and the imported module on the same fresh random batches: full
length, right-padded, left-padded (Keras's ``pad_sequences`` default) and with masked gaps. Keras returns
well-defined values at masked steps (zeros for ``Bidirectional`` sequence outputs, the previous output for an
unwrapped layer), so all positions are compared.
"""

import itertools
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np
import pytest
import torch
from helpers.optional import optional_import

keras, needs_keras = optional_import("keras", "the Keras tests need keras (pip install -e '.[dev]')")
pytestmark = needs_keras
layers = keras.layers

from models import BiGRU, BiLSTM  # noqa: E402
from models.keras import KerasImportError, KerasPairModel, from_keras, load_keras_weights, module_from_specs  # noqa: E402
from models.keras.module import BidirectionalStage  # noqa: E402

B, T, F, V = 4, 7, 3, 12
CELLS = {"LSTM": layers.LSTM, "GRU": layers.GRU, "SimpleRNN": layers.SimpleRNN}
MODES = ["concat", "sum", "mul", "ave", None]


def _mask(rng: np.random.Generator) -> np.ndarray:
    """Validity mask (B, T), one row each: full length, right-padded, left-padded, gaps."""
    steps = np.arange(T)
    gaps = rng.random(T) > 0.4
    gaps[3] = True
    return np.stack([steps < T, steps < 4, steps >= T - 2, gaps])


def _inputs(kind: str, rng: np.random.Generator) -> list:
    """One mixed batch (see ``_mask``) of token ids (0 = padding) or features (zero vectors = padding)."""
    mask = _mask(rng)
    if kind == "ids":
        return [np.where(mask, rng.integers(1, V, (B, T)), 0).astype("int64")]
    x = rng.normal(size=(B, T, F)).astype("float32")
    return [np.where(mask[..., None], x, 0.0).astype("float32")]


def _head(kind: str) -> list:
    if kind == "ids":
        return [keras.Input((None,), dtype="int32"), layers.Embedding(V, 5, mask_zero=True)]
    if kind == "masking":
        return [keras.Input((None, F)), layers.Masking(0.0)]
    return [keras.Input((None, F))]


def _numpy(value):
    if isinstance(value, (list, tuple)):
        return tuple(_numpy(v) for v in value)
    return keras.ops.convert_to_numpy(value)


def _assert_parity(model, tmp_path, inputs, formats=("keras", "h5"), tol=1e-5):
    """Save ``model`` in each format, import it, compare eager and scripted outputs with Keras on ``inputs``."""
    expected_all = [_numpy(model(x)) for x in inputs]
    for fmt in formats:
        path = tmp_path / f"model.{fmt}"
        model.save(path)
        module = from_keras(path)
        candidates = (module, torch.jit.script(module)) if fmt == formats[0] else (module,)
        for x, expected in zip(inputs, expected_all, strict=True):
            for candidate in candidates:
                got = candidate(torch.as_tensor(x))
                got = tuple(g.detach().numpy() for g in got) if isinstance(got, tuple) else got.detach().numpy()
                if isinstance(expected, tuple):
                    assert isinstance(got, tuple) and len(got) == 2
                    for e, g in zip(expected, got, strict=True):
                        np.testing.assert_allclose(g, e, atol=tol, rtol=0)
                else:
                    assert got.shape == expected.shape
                    np.testing.assert_allclose(got, expected, atol=tol, rtol=0, equal_nan=True)
    return module


CASES = [(cell, mode, 1 + i % 3, i % 2 == 0, ("ids", "masking", "plain")[(i // 2) % 3], ("keras", "h5")[:1 + i % 2])
         for i, (cell, mode) in enumerate(itertools.product(CELLS, MODES))]


@pytest.mark.parametrize("cell,mode,num_layers,return_sequences,kind,formats", CASES)
def test_bidirectional_stack_parity(tmp_path, cell, mode, num_layers, return_sequences, kind, formats):
    """1-3 Bidirectional layers (inner merge modes mixed), every cell and final merge mode, mask on and off."""
    rng = np.random.default_rng(num_layers)
    stack = _head(kind)
    for layer in range(num_layers):
        last = layer == num_layers - 1
        merge = mode if last else MODES[(layer + num_layers) % 4]
        stack.append(layers.Bidirectional(CELLS[cell](4, return_sequences=return_sequences or not last),
                                          merge_mode=merge))
    model = keras.Sequential(stack)
    module = _assert_parity(model, tmp_path, _inputs("ids" if kind == "ids" else "features", rng), formats)
    fused = [s for s in module.stages if isinstance(s, BidirectionalStage)]
    assert len(fused) == 1 and fused[0].block.num_layers == num_layers
    assert isinstance(module, KerasPairModel) == (mode is None)


@pytest.mark.parametrize("cell,return_sequences,zero_output", list(itertools.product(
    CELLS, [True, False], [False, True])))
def test_unidirectional_parity(tmp_path, cell, return_sequences, zero_output):
    """Unwrapped layers: masked steps carry the previous output (Keras default) or are zero."""
    rng = np.random.default_rng(1)
    model = keras.Sequential([*_head("masking"), CELLS[cell](5, return_sequences=return_sequences,
                                                             zero_output_for_mask=zero_output)])
    _assert_parity(model, tmp_path, _inputs("features", rng), formats=("keras",))


@pytest.mark.parametrize("pool,kind,functional", [
    ("avg", "ids", False), ("max", "ids", True), ("avg", "masking", True), ("max", "masking", False),
    ("avg", "plain", True), ("max", "plain", False)])
def test_pooling_heads_parity(tmp_path, pool, kind, functional):
    """BiRNN -> dropout -> Dense -> global pooling -> Dense; Keras averages over valid steps only, while
    its GlobalMaxPooling1D ignores the mask (max over all steps, zeros at masked ones included)."""
    rng = np.random.default_rng(2)
    head = _head(kind)
    body = [layers.Bidirectional(layers.GRU(4, return_sequences=True), merge_mode="concat"),
            layers.SpatialDropout1D(0.3) if functional else layers.Dropout(0.3),
            layers.Dense(6, activation="relu"),
            layers.GlobalAveragePooling1D() if pool == "avg" else layers.GlobalMaxPooling1D(),
            layers.Dense(3, activation="softmax")]
    if functional:
        out = head[0]
        for layer in head[1:] + body:
            out = layer(out)
        model = keras.Model(head[0], out)
    else:
        model = keras.Sequential(head + body)
    _assert_parity(model, tmp_path, _inputs("ids" if kind == "ids" else "features", rng))


def test_dense_activations_parity(tmp_path):
    rng = np.random.default_rng(3)
    acts = ["linear", "relu", "sigmoid", "tanh", "softplus", "softsign", "elu", "selu", "silu", "gelu", "softmax"]
    model = keras.Sequential([keras.Input((None, F)), layers.LSTM(4, return_sequences=True)]
                             + [layers.Dense(4, activation=a) for a in acts])
    _assert_parity(model, tmp_path, _inputs("features", rng), formats=("keras",))


def test_activation_layers_parity(tmp_path):
    """Activation layers (Dense then a separate softmax, Keras 2 style) pass the mask on to the masked average."""
    rng = np.random.default_rng(13)
    model = keras.Sequential([*_head("ids"), layers.Bidirectional(layers.LSTM(4, return_sequences=True)),
                              layers.TimeDistributed(layers.Dense(3)), layers.Activation("softmax"),
                              layers.GlobalAveragePooling1D(), layers.Dense(2), layers.Activation("swish")])
    _assert_parity(model, tmp_path, _inputs("ids", rng))


def test_rows_without_valid_steps(tmp_path):
    """An all-padding row: Keras gives zeros from the RNN and NaN from the masked average (0 / 0)."""
    model = keras.Sequential([*_head("ids"), layers.Bidirectional(layers.LSTM(4, return_sequences=True)),
                              layers.Bidirectional(layers.LSTM(3), merge_mode="sum")])
    x = np.array([[0] * T, [3, 4, 0, 0, 0, 0, 0]], dtype="int64")
    _assert_parity(model, tmp_path, [x], formats=("keras",))
    pooled = keras.Sequential([*_head("ids"), layers.Bidirectional(layers.LSTM(4, return_sequences=True)),
                               layers.GlobalAveragePooling1D()])
    _assert_parity(pooled, tmp_path, [x], formats=("keras",))


def test_checkpoint_and_weights_file(tmp_path):
    """state_dict + keras_specs rebuild the module; a .weights.h5 reloads into it and into a bare BiLSTM."""
    rng = np.random.default_rng(4)
    model = keras.Sequential([keras.Input((None, F)),
                              layers.Bidirectional(layers.LSTM(4, return_sequences=True), merge_mode="sum"),
                              layers.Bidirectional(layers.LSTM(4, return_sequences=True), merge_mode="mul")])
    model.save(tmp_path / "m.keras")
    module = from_keras(tmp_path / "m.keras")
    torch.save({"keras_specs": module.keras_specs, "state_dict": module.state_dict()}, tmp_path / "ckpt.pt")
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    rebuilt = module_from_specs(checkpoint["keras_specs"])
    rebuilt.load_state_dict(checkpoint["state_dict"])
    x = _inputs("features", rng)[0]
    torch.testing.assert_close(rebuilt(torch.as_tensor(x)), module(torch.as_tensor(x)), rtol=0, atol=0)

    for layer in model.layers:  # new weights in Keras, saved as weights only
        layer.set_weights([rng.normal(size=w.shape).astype("float32") * 0.5 for w in layer.get_weights()])
    model.save_weights(tmp_path / "new.weights.h5")
    expected = _numpy(model(x))
    load_keras_weights(module, tmp_path / "new.weights.h5")
    np.testing.assert_allclose(module(torch.as_tensor(x)).detach().numpy(), expected, atol=1e-5, rtol=0)

    block = BiLSTM(F, 4, num_layers=2, batch_first=True, merge_mode=["sum", "mul"])
    load_keras_weights(block, tmp_path / "new.weights.h5")
    out, _ = block(torch.as_tensor(x))  # no mask in this model: Keras runs over the padding too
    np.testing.assert_allclose(out.detach().numpy(), expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_compile_and_export(tmp_path):
    model = keras.Sequential([*_head("ids"), layers.Bidirectional(layers.GRU(4, return_sequences=True)),
                              layers.GlobalAveragePooling1D(), layers.Dense(2)])
    model.save(tmp_path / "m.keras")
    module = from_keras(tmp_path / "m.keras")
    x = torch.as_tensor(_inputs("ids", np.random.default_rng(5))[0])
    expected = module(x)
    torch.testing.assert_close(torch.compile(module)(x), expected, rtol=0, atol=1e-6)
    exported = torch.export.export(module, (x,))
    torch.testing.assert_close(exported.module()(x), expected, rtol=0, atol=1e-6)


def test_without_biases(tmp_path):
    rng = np.random.default_rng(6)
    model = keras.Sequential([*_head("masking"),
                              layers.Bidirectional(layers.GRU(4, use_bias=False, return_sequences=True)),
                              layers.SimpleRNN(3, use_bias=False, activation="relu", return_sequences=True),
                              layers.LSTM(3, use_bias=False), layers.Dense(2, use_bias=False)])
    _assert_parity(model, tmp_path, _inputs("features", rng), formats=("keras", "h5"))


@pytest.mark.parametrize("kind,use_bias", [("ids", True), ("masking", False), ("plain", True)])
def test_gru_reset_before_parity(tmp_path, kind, use_bias):
    """Keras's original GRU (reset_after=False): two fused Bidirectional layers, then an unwrapped one, on the
    reference path (eager and TorchScript), masks anywhere."""
    rng = np.random.default_rng(8)
    gru = lambda units, **kw: layers.GRU(units, reset_after=False, use_bias=use_bias, **kw)  # noqa: E731
    model = keras.Sequential([*_head(kind), layers.Bidirectional(gru(4, return_sequences=True), merge_mode="mul"),
                              layers.Bidirectional(gru(4, return_sequences=True), merge_mode="concat"),
                              gru(3, return_sequences=True), layers.Dense(2)])
    for layer in model.layers:  # Keras initialises biases to zero: random ones show a misplaced bias
        layer.set_weights([rng.normal(size=w.shape).astype("float32") * 0.5 for w in layer.get_weights()])
    module = _assert_parity(model, tmp_path, _inputs("ids" if kind == "ids" else "features", rng))
    fused = [s for s in module.stages if isinstance(s, BidirectionalStage)]
    assert len(fused) == 1 and fused[0].block.num_layers == 2 and fused[0].block.reset_after is False


def test_gru_reset_before_weights_file_into_a_block(tmp_path):
    """A .weights.h5 of Bidirectional(GRU(reset_after=False)) layers loads into BiGRU(reset_after=False) (one bias
    per direction), and is refused by a reset_after=True block (its biases are (2, 3H))."""
    rng = np.random.default_rng(12)
    model = keras.Sequential([keras.Input((None, F)),
                              layers.Bidirectional(layers.GRU(4, return_sequences=True, reset_after=False),
                                                   merge_mode="ave")])
    for layer in model.layers:
        layer.set_weights([rng.normal(size=w.shape).astype("float32") * 0.5 for w in layer.get_weights()])
    model.save_weights(tmp_path / "gru.weights.h5")
    x = _inputs("features", rng)[0]
    block = BiGRU(F, 4, batch_first=True, merge_mode="ave", reset_after=False)
    load_keras_weights(block, tmp_path / "gru.weights.h5")
    np.testing.assert_allclose(block(torch.as_tensor(x))[0].detach().numpy(), _numpy(model(x)), atol=1e-5, rtol=0)
    with pytest.raises(KerasImportError, match=r"shape \(12,\), expected \(2, 12\)"):
        load_keras_weights(BiGRU(F, 4, batch_first=True, merge_mode="ave"), tmp_path / "gru.weights.h5")


def test_gru_reset_after_kinds_are_not_fused(tmp_path):
    """A reset_after=True and a reset_after=False Bidirectional(GRU) in a row stay two stages."""
    rng = np.random.default_rng(9)
    model = keras.Sequential([keras.Input((None, F)),
                              layers.Bidirectional(layers.GRU(4, return_sequences=True, reset_after=False)),
                              layers.Bidirectional(layers.GRU(4, return_sequences=True))])
    module = _assert_parity(model, tmp_path, _inputs("features", rng), formats=("keras",))
    assert [s.block.reset_after for s in module.stages] == [False, True]


@pytest.mark.parametrize("kind", ["ids", "plain"])
def test_time_distributed_dense_parity(tmp_path, kind):
    """Sequence tagging: TimeDistributed(Dense) after Bidirectional(return_sequences=True) is a per-step linear
    layer that passes the mask on (the masked average after it only sees valid steps)."""
    rng = np.random.default_rng(10)
    head = _head(kind)
    out = head[0]
    for layer in head[1:] + [layers.Bidirectional(layers.LSTM(4, return_sequences=True), merge_mode="sum"),
                             layers.TimeDistributed(layers.Dense(3, activation="tanh"))]:
        out = layer(out)
    tagger = keras.Model(head[0], out)
    for layer in tagger.layers:
        layer.set_weights([rng.normal(size=w.shape).astype("float32") * 0.5 for w in layer.get_weights()])
    inputs = _inputs("ids" if kind == "ids" else "features", rng)
    _assert_parity(tagger, tmp_path, inputs)
    pooled = keras.Sequential([*_head(kind), layers.Bidirectional(layers.GRU(4, return_sequences=True)),
                               layers.TimeDistributed(layers.Dense(3)), layers.GlobalAveragePooling1D()])
    _assert_parity(pooled, tmp_path, inputs, formats=("keras",))


def test_functional_ending_in_merge_none(tmp_path):
    """A functional model whose output is both directions (a list of two outputs in its config)."""
    rng = np.random.default_rng(11)
    inputs = keras.Input((None,), dtype="int32")
    hidden = layers.Embedding(V, 5, mask_zero=True)(inputs)
    outputs = layers.Bidirectional(layers.GRU(3, return_sequences=True, reset_after=False), merge_mode=None)(hidden)
    module = _assert_parity(keras.Model(inputs, outputs), tmp_path, _inputs("ids", rng))
    assert isinstance(module, KerasPairModel)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_functional_masked_last_step(tmp_path, cell):
    """Functional graphs pass the mask explicitly; a masked layer returning its last step ends the mask."""
    rng = np.random.default_rng(7)
    inputs = keras.Input((None,), dtype="int32")
    hidden = layers.Embedding(V, 5, mask_zero=True)(inputs)
    hidden = layers.Bidirectional(CELLS[cell](4), merge_mode="ave")(CELLS[cell](4, return_sequences=True)(hidden))
    model = keras.Model(inputs, layers.Dense(2, activation="tanh")(hidden))
    _assert_parity(model, tmp_path, _inputs("ids", rng))
