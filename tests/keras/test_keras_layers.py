"""Layers beyond the recurrent core, imported with ``from_keras`` and compared with Keras 3 on the same batches
(full length, right-padded, left-padded, gaps; random biases): ``Conv1D`` with every padding mode, strides,
dilation and groups, and ``MaxPooling1D`` / ``AveragePooling1D`` (valid and same). Neither supports masking in
Keras: values at masked steps enter as they are and the mask ends, which the comparison covers.
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

from models.keras import from_keras  # noqa: E402

B, T, V = 4, 9, 12
TOL = 1e-5


def _ids(rng: np.random.Generator) -> np.ndarray:
    steps = np.arange(T)
    mask = np.stack([steps < T, steps < 4, steps >= T - 3, rng.random(T) > 0.4])
    return np.where(mask, rng.integers(1, V, (B, T)), 0).astype("int64")


def _check(model, tmp_path, x: np.ndarray) -> torch.nn.Module:
    expected = keras.ops.convert_to_numpy(model(x))
    module = None
    for fmt in ("keras", "h5"):
        model.save(tmp_path / f"m.{fmt}")
        module = from_keras(tmp_path / f"m.{fmt}")
        for candidate in (module, torch.jit.script(module)) if fmt == "keras" else (module,):
            got = candidate(torch.as_tensor(x)).detach().numpy()
            assert got.shape == expected.shape
            np.testing.assert_allclose(got, expected, atol=TOL, rtol=TOL, equal_nan=True)
    return module


@pytest.mark.parametrize("padding,strides,dilation,groups,pool,pool_padding", [
    ("valid", 1, 1, 1, "max", "valid"), ("same", 2, 1, 2, "avg", "same"), ("causal", 1, 2, 1, "max", "same"),
    ("same", 3, 1, 1, "avg", "valid"), ("valid", 1, 2, 2, "avg", "same"), ("causal", 1, 1, 2, "avg", "valid")])
def test_conv1d_and_pooling_before_a_bidirectional(tmp_path, padding, strides, dilation, groups, pool,
                                                   pool_padding) -> None:
    pooling = layers.MaxPooling1D if pool == "max" else layers.AveragePooling1D
    model = keras.Sequential([
        keras.Input((T,), dtype="int32"), layers.Embedding(V, 4, mask_zero=True),
        layers.Conv1D(6, 3, strides=strides, dilation_rate=dilation, groups=groups, padding=padding,
                      activation="relu", bias_initializer="random_normal"),
        pooling(2, strides=3 if pool_padding == "same" else None, padding=pool_padding),
        layers.Bidirectional(layers.GRU(3, return_sequences=True, bias_initializer="random_normal")),
        layers.GlobalAveragePooling1D(), layers.Dense(2, bias_initializer="random_normal")])
    _check(model, tmp_path, _ids(np.random.default_rng(10)))


def test_cnn_birnn_hybrid_graph(tmp_path) -> None:
    """Conv branch and BiLSTM branch over one masked embedding, pooled and concatenated (a common real shape)."""
    inputs = keras.Input((None,), dtype="int32")
    x = layers.Embedding(V, 5, mask_zero=True)(inputs)
    conv = layers.MaxPooling1D(2, padding="same")(layers.Conv1D(4, 2, padding="same", activation="tanh")(x))
    rnn = layers.Bidirectional(layers.LSTM(3, return_sequences=True, bias_initializer="random_normal"))(x)
    rnn = layers.Bidirectional(layers.LSTM(3, return_sequences=True, bias_initializer="random_normal"))(
        layers.Conv1D(6, 1)(rnn))
    merged = layers.Concatenate()([layers.GlobalMaxPooling1D()(conv), layers.GlobalAveragePooling1D()(rnn)])
    model = keras.Model(inputs, layers.Dense(3, activation="softmax")(merged))
    _check(model, tmp_path, _ids(np.random.default_rng(11)))


@pytest.mark.filterwarnings("ignore:Keras .* has no fused kernel")
@pytest.mark.parametrize("make", [
    lambda b: layers.Bidirectional(layers.LSTM(3, recurrent_activation="hard_sigmoid", return_sequences=True, **b),
                                   merge_mode="sum"),
    lambda b: layers.Bidirectional(layers.GRU(3, activation="relu", return_sequences=True, **b)),
    lambda b: layers.Bidirectional(layers.GRU(3, activation="relu", reset_after=False,
                                              recurrent_activation="hard_sigmoid", **b), merge_mode="ave"),
    lambda b: layers.GRU(3, activation="elu", return_sequences=True, **b),
    lambda b: layers.LSTM(3, activation="relu6", **b),
    lambda b: layers.SimpleRNN(3, activation="sigmoid", return_sequences=True, **b)])
def test_recurrent_options_without_a_fused_kernel(tmp_path, make) -> None:
    """Non-tanh activations, hard_sigmoid (Keras 3's relu6(x + 3) / 6), reset_after=False with them: the exact
    time loop, masks included, and a warning that says so."""
    model = keras.Sequential([keras.Input((None,), dtype="int32"), layers.Embedding(V, 4, mask_zero=True),
                              make({"bias_initializer": "random_normal"}), layers.Dense(2)])
    x = _ids(np.random.default_rng(12))
    expected = keras.ops.convert_to_numpy(model(x))
    for fmt in ("keras", "h5"):
        model.save(tmp_path / f"m.{fmt}")
        with pytest.warns(UserWarning, match="exact PyTorch time loop"):
            module = from_keras(tmp_path / f"m.{fmt}")
        for candidate in (module, torch.jit.script(module)):
            got = candidate(torch.as_tensor(x)).detach().numpy()
            np.testing.assert_allclose(got, expected, atol=TOL, rtol=TOL)


def test_every_dense_activation_by_name(tmp_path) -> None:
    from models.keras.layer_options import DENSE_ACTIVATIONS
    inputs = keras.Input((None, 3))
    outputs = [layers.Dense(3, activation=name, bias_initializer="random_normal")(inputs) for name in DENSE_ACTIVATIONS]
    model = keras.Model(inputs, layers.Concatenate()(outputs))
    x = np.random.default_rng(13).normal(size=(B, T, 3)).astype("float32") * 3
    expected = keras.ops.convert_to_numpy(model(x))
    model.save(tmp_path / "a.keras")
    got = from_keras(tmp_path / "a.keras")(torch.as_tensor(x)).detach().numpy()
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=TOL)


def test_normalisation_and_reshaping_layers(tmp_path) -> None:
    """BatchNormalization (moving statistics set away from 0 / 1) and LayerNormalization pass the mask to the
    BiLSTM; Flatten, Reshape, Permute, RepeatVector and GlobalAveragePooling1D(keepdims=True) end it."""
    inputs = keras.Input((T,), dtype="int32")
    x = layers.Embedding(V, 4, mask_zero=True)(inputs)
    norm = layers.BatchNormalization()
    x = layers.LayerNormalization(beta_initializer="random_normal")(norm(x))
    h = layers.Bidirectional(layers.LSTM(3, return_sequences=True, bias_initializer="random_normal"))(x)
    a = layers.Dense(2)(layers.Flatten()(h))
    outputs = [a, layers.GlobalAveragePooling1D(keepdims=True)(h), layers.Permute((2, 1))(h),
               layers.RepeatVector(3)(a), layers.Reshape((-1, 3))(layers.Flatten()(h)),
               layers.BatchNormalization(center=False)(layers.Dense(5)(a))]
    model = keras.Model(inputs, outputs)
    for variable in norm.weights:
        variable.assign(np.random.default_rng(14).uniform(0.5, 2.0, variable.shape).astype("float32"))
    x = _ids(np.random.default_rng(15))
    expected = [keras.ops.convert_to_numpy(v) for v in model(x)]
    for fmt in ("keras", "h5"):
        model.save(tmp_path / f"n.{fmt}")
        module = from_keras(tmp_path / f"n.{fmt}")
        for candidate in (module, torch.jit.script(module)):
            for got, want in zip(candidate(torch.as_tensor(x)), expected, strict=True):
                assert tuple(got.shape) == want.shape
                np.testing.assert_allclose(got.detach().numpy(), want, atol=TOL, rtol=TOL)


def test_docs_table_is_the_registry() -> None:
    """docs/keras-import.md's supported-layers table names exactly the classes the importer accepts."""
    import re
    from pathlib import Path

    from models.keras.config import SUPPORTED
    from models.keras.graph_config import GRAPH_LAYERS
    text = (Path(__file__).resolve().parents[2] / "docs" / "keras-import.md").read_text(encoding="utf-8")
    table = text.split("## Supported layers", 1)[1].split("\n\n| Keras layer |", 1)[1].split("\n\n", 1)[0]
    listed = set()
    for row in table.splitlines()[2:]:
        listed |= set(re.findall(r"`(\w+)`", row.split("|")[1]))
    assert listed == set(SUPPORTED) | set(GRAPH_LAYERS)
