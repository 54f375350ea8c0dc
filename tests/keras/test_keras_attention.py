"""Keras 3 ``Attention``, ``AdditiveAttention`` and ``MultiHeadAttention`` on top of BiLSTMs, imported with
``from_keras`` from ``.keras`` and ``.h5`` and compared with Keras 3 on batches with full-length, right-padded,
left-padded and gapped rows (masks from ``Embedding(mask_zero=True)``), at every output position; weights
random (scales and biases not at their initial values). Unsupported options are refused by name.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np
import pytest
import torch

keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

from models.keras import KerasImportError, from_keras, load_keras_weights, module_from_specs  # noqa: E402

B, T, F, V, H = 4, 7, 4, 12, 3
TOL = 1e-5
BIAS = {"bias_initializer": "random_normal"}


def _ids(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    steps = np.arange(T)
    gaps = rng.random(T) > 0.4
    gaps[3] = True
    mask = np.stack([steps < T, steps < 4, steps >= T - 2, gaps])       # full, right-, left-padded, gaps
    return np.where(mask, rng.integers(1, V, (B, T)), 0).astype("int64")


def _randomize(model: keras.Model, seed: int) -> None:
    """Every weight random (scales start at one, MHA biases at zero: a wrong layout would not show)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign(rng.normal(scale=0.5, size=weight.shape).astype("float32"))


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _check(model: keras.Model, tmp_path, ids: np.ndarray, script: bool = True) -> float:
    """Save as .keras and .h5, import each, compare every output with Keras; the max |diff| seen."""
    expected = [keras.ops.convert_to_numpy(v) for v in _as_list(model(ids))]
    worst = 0.0
    for fmt in ("keras", "h5"):
        model.save(tmp_path / f"a.{fmt}")
        module = from_keras(tmp_path / f"a.{fmt}")
        candidates = [module] + ([torch.jit.script(module)] if script and fmt == "keras" else [])
        for candidate in candidates:
            got = _as_list(candidate(torch.as_tensor(ids)))
            assert len(got) == len(expected)
            for g, e in zip(got, expected, strict=True):
                assert tuple(g.shape) == e.shape
                np.testing.assert_allclose(g.detach().numpy(), e, atol=TOL, rtol=TOL)
                worst = max(worst, float(np.abs(g.detach().numpy() - e).max()))
    return worst


def _encoder(inputs):
    x = layers.Embedding(V, F, mask_zero=True)(inputs)
    return layers.Bidirectional(layers.LSTM(H, return_sequences=True, **BIAS))(x)


@pytest.mark.parametrize("options", [{}, {"use_scale": True}, {"score_mode": "concat"},
                                     {"score_mode": "concat", "use_scale": True}])
def test_luong_attention_self_and_pooled(options: dict, tmp_path) -> None:
    """Attention([h, h]) (value mask on the scores, query mask zeroing rows, output masked), then a masked
    average, and the sequence output itself."""
    inputs = keras.Input((None,), dtype="int32")
    h = _encoder(inputs)
    context = layers.Attention(**options)([h, h])
    pooled = layers.GlobalAveragePooling1D()(context)
    model = keras.Model(inputs, [layers.Dense(2, **BIAS)(pooled), context])
    _randomize(model, 1)
    _check(model, tmp_path, _ids(1))


def test_attention_query_value_key_and_causal(tmp_path) -> None:
    """Three inputs (the key's mask is not used, as in Keras) and use_causal_mask=True, a call argument the
    functional config records."""
    inputs = keras.Input((None,), dtype="int32")
    h = _encoder(inputs)
    value = layers.Dense(5, **BIAS)(h)
    key = layers.Dense(2 * H, **BIAS)(h)
    context = layers.Attention(use_scale=True)([h, value, key], use_causal_mask=True)
    additive = layers.AdditiveAttention()([h, value, key], use_causal_mask=True)
    model = keras.Model(inputs, layers.Concatenate()([context, additive]))
    _randomize(model, 2)
    _check(model, tmp_path, _ids(2))


@pytest.mark.parametrize("use_scale", [True, False])
def test_additive_attention(use_scale: bool, tmp_path) -> None:
    inputs = keras.Input((None,), dtype="int32")
    h = _encoder(inputs)
    query = layers.Dense(2 * H, **BIAS)(h)
    context = layers.AdditiveAttention(use_scale=use_scale)([query, h])
    model = keras.Model(inputs, layers.GlobalAveragePooling1D()(context))
    _randomize(model, 3)
    _check(model, tmp_path, _ids(3))


def test_multi_head_self_attention_with_masks(tmp_path) -> None:
    """mha(h, h): the query's and value's masks AND-ed (a padded query row averages every step, as Keras); a
    second layer with value_dim, output_shape and no bias reads the first's output (its mask: the query's); a
    third on another encoder with use_causal_mask=True."""
    inputs = keras.Input((None,), dtype="int32")
    h = _encoder(inputs)
    a = layers.MultiHeadAttention(num_heads=2, key_dim=3)(h, h)
    b = layers.MultiHeadAttention(num_heads=3, key_dim=2, value_dim=4, output_shape=5, use_bias=False)(a, a)
    g = _encoder(inputs)
    c = layers.MultiHeadAttention(num_heads=2, key_dim=2)(g, g, use_causal_mask=True)
    pooled = layers.GlobalAveragePooling1D()(layers.Concatenate()([b, c]))
    model = keras.Model(inputs, [pooled, layers.Dense(2, **BIAS)(b)])
    _randomize(model, 4)
    _check(model, tmp_path, _ids(4))


def test_multi_head_attention_with_key_and_keywords(tmp_path) -> None:
    """mha(query, value=v, key=k) with a differently sized key (its mask AND-ed too), causal without any mask
    (Keras's fused causal path), and a sliding window."""
    inputs = keras.Input((None,), dtype="int32")
    h = _encoder(inputs)
    key = layers.Dense(5, **BIAS)(layers.Embedding(V, F, mask_zero=True)(inputs))
    a = layers.MultiHeadAttention(num_heads=2, key_dim=3)(h, value=h, key=key)
    feats = keras.Input((None, F))
    b = layers.MultiHeadAttention(num_heads=2, key_dim=3)(feats, feats, use_causal_mask=True)
    g = _encoder(inputs)
    c = layers.MultiHeadAttention(num_heads=1, key_dim=3, sliding_window=2)(g, g)
    model = keras.Model([inputs, feats], [a, b, c])
    _randomize(model, 5)
    ids = _ids(5)
    x = np.random.default_rng(5).normal(size=(B, T, F)).astype("float32")
    expected = [keras.ops.convert_to_numpy(v) for v in model([ids, x])]
    for fmt in ("keras", "h5"):
        model.save(tmp_path / f"k.{fmt}")
        module = from_keras(tmp_path / f"k.{fmt}")
        for candidate in [module] + ([torch.jit.script(module)] if fmt == "keras" else []):
            got = candidate([torch.as_tensor(ids), torch.as_tensor(x)])
            for g, e in zip(got, expected, strict=True):
                np.testing.assert_allclose(g.detach().numpy(), e, atol=TOL, rtol=TOL)


def test_shared_attention_rebuilt_from_specs_and_weights_file(tmp_path) -> None:
    """One Attention and one MultiHeadAttention layer each called twice; the module rebuilds from keras_specs and
    load_keras_weights fills it from a .weights.h5."""
    inputs = keras.Input((None,), dtype="int32")
    h = _encoder(inputs)
    attend = layers.Attention(use_scale=True)
    mha = layers.MultiHeadAttention(num_heads=2, key_dim=2)
    first = attend([h, h])
    second = attend([first, h])
    once = mha(second, second)
    out = mha(once, once)
    model = keras.Model(inputs, layers.GlobalAveragePooling1D()(out))
    _randomize(model, 6)
    ids = _ids(6)
    _check(model, tmp_path, ids)
    module = from_keras(tmp_path / "a.keras")
    model.save_weights(tmp_path / "w.weights.h5")
    rebuilt = load_keras_weights(module_from_specs(module.keras_specs), tmp_path / "w.weights.h5").eval()
    torch.testing.assert_close(rebuilt(torch.as_tensor(ids)), module(torch.as_tensor(ids)))


def test_a_masked_tensor_shared_by_multi_head_attention_is_refused(tmp_path) -> None:
    """Keras 3 removes the masks of MultiHeadAttention's inputs at run time: the residual Add reading the same
    masked tensor would see a mask or not by Keras's run order. Refused, naming the layer; without a mask the
    same shape imports exactly."""
    for mask_zero in (True, False):
        inputs = keras.Input((None,), dtype="int32")
        x = layers.Embedding(V, F, mask_zero=mask_zero)(inputs)
        h = layers.Bidirectional(layers.LSTM(H, return_sequences=True, **BIAS))(x)
        attended = layers.MultiHeadAttention(num_heads=2, key_dim=3, name="mha")(h, h)
        out = layers.LayerNormalization()(layers.Add()([h, attended]))
        model = keras.Model(inputs, layers.GlobalAveragePooling1D()(out))
        _randomize(model, 7)
        if mask_zero:
            model.save(tmp_path / "m.keras")
            with pytest.raises(KerasImportError, match=r"'mha'.*removes that tensor's mask"):
                from_keras(tmp_path / "m.keras")
        else:
            _check(model, tmp_path, np.random.default_rng(7).integers(0, V, (B, T)))


@pytest.mark.parametrize("build, words", [
    (lambda h: layers.Attention()([h, h], return_attention_scores=True)[0], "return_attention_scores"),
    (lambda h: layers.MultiHeadAttention(2, 2, use_gate=True)(h, h), "use_gate"),
    (lambda h: layers.MultiHeadAttention(2, 2)(h, h, attention_mask=layers.Dot(axes=2)([h, h])),
     "attention_mask"),
    (lambda h: layers.MultiHeadAttention(2, 2, output_shape=(2, 3))(h, h), "output_shape"),
])
def test_unsupported_options_are_refused_by_name(build, words: str, tmp_path) -> None:
    inputs = keras.Input((T,), dtype="int32")
    model = keras.Model(inputs, build(_encoder(inputs)))
    model.save(tmp_path / "r.keras")
    with pytest.raises(KerasImportError, match=words):
        from_keras(tmp_path / "r.keras")


def test_hostile_attention_specs_are_refused_before_any_allocation() -> None:
    """keras_specs are data: a MultiHeadAttention (or a TimeDistributed layer) declaring huge sizes is refused."""
    import json
    mha = {"kind": "attention", "class_name": "MultiHeadAttention", "name": "m", "path": "m", "in_features": 8,
           "options": {"op": "MultiHeadAttention", "num_heads": 2**15, "key_dim": 2**15, "value_dim": 4,
                       "query_features": 8, "key_features": 8, "value_features": 8, "output_dim": 8}}
    graph = {"format": "graph", "layers": [mha], "nodes": [], "outputs": [], "input_kinds": ["features"]}
    with pytest.raises(KerasImportError, match="parameters"):
        module_from_specs(json.dumps(graph))
    embedding = {"kind": "embedding", "class_name": "Embedding", "name": "e", "path": "e", "in_features": 0,
                 "options": {"input_dim": 2**20, "output_dim": 2**20, "mask_zero": False}}
    wrapped = {"kind": "timedistributed", "class_name": "TimeDistributed", "name": "t", "path": "t", "in_features": 0,
               "options": {"inner": embedding}}
    with pytest.raises(KerasImportError, match="parameters"):
        module_from_specs(json.dumps([wrapped]))
