"""Keras functional graphs (branches, several inputs and outputs, shared layers, merge layers) imported with
``from_keras`` and compared with Keras 3 on the same batches: full length, right-padded, left-padded and with
gaps, every output position; biases random, not zero. Also: TorchScript runs the same graph, the module is
rebuilt from ``keras_specs``, ``load_keras_weights`` fills it, and code in the graph is refused by name.
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

from models.keras import KerasImportError, from_keras, load_keras_weights, module_from_specs  # noqa: E402
from models.keras.graph_module import KerasGraphModel, LayerNode, MergeNode  # noqa: E402

B, T, F, V = 4, 7, 4, 12
TOL = 1e-5
BIAS = {"bias_initializer": "random_normal"}


def _mask(rng: np.random.Generator) -> np.ndarray:
    steps = np.arange(T)
    gaps = rng.random(T) > 0.4
    gaps[3] = True
    return np.stack([steps < T, steps < 4, steps >= T - 2, gaps])       # full, right-, left-padded, gaps


def _ids(rng: np.random.Generator) -> np.ndarray:
    return np.where(_mask(rng), rng.integers(1, V, (B, T)), 0).astype("int64")


def _features(rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(size=(B, T, F)).astype("float32")
    return np.where(_mask(rng)[..., None], x, 0.0).astype("float32")


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _check(model, tmp_path, inputs: list, script: bool = True):
    """Save as .keras and .h5, import, compare every output with Keras (eager and, once, scripted)."""
    feed = inputs if len(inputs) > 1 else inputs[0]
    expected = [keras.ops.convert_to_numpy(v) for v in _as_list(model(feed))]
    module = None
    for fmt in ("keras", "h5"):
        model.save(tmp_path / f"g.{fmt}")
        module = from_keras(tmp_path / f"g.{fmt}")
        torch_feed = [torch.as_tensor(x) for x in inputs]
        candidates = [module] + ([torch.jit.script(module)] if script and fmt == "keras" else [])
        for candidate in candidates:
            got = _as_list(candidate(torch_feed if len(inputs) > 1 else torch_feed[0]))
            assert len(got) == len(expected)
            for g, e in zip(got, expected, strict=True):
                assert tuple(g.shape) == e.shape
                np.testing.assert_allclose(g.detach().numpy(), e, atol=TOL, rtol=TOL, equal_nan=True)
    return module


def _branches(merge: str) -> keras.Model:
    """Embedding(mask_zero) feeding two recurrent branches that return sequences, merged with a mask."""
    inputs = keras.Input((None,), dtype="int32")
    x = layers.Embedding(V, F, mask_zero=True)(inputs)
    a = layers.Bidirectional(layers.GRU(3, return_sequences=True, **BIAS), merge_mode="sum")(x)
    b = layers.Bidirectional(layers.LSTM(3, return_sequences=True, **BIAS), merge_mode="ave")(x)
    merged = getattr(layers, merge)()([a, b])
    out = layers.Bidirectional(layers.LSTM(2, **BIAS))(merged)         # reads the merged mask
    return keras.Model(inputs, layers.Dense(3, **BIAS)(out))


@pytest.mark.parametrize("merge", ["Concatenate", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"])
def test_merge_layers_with_masks(merge: str, tmp_path) -> None:
    rng = np.random.default_rng(1)
    _check(_branches(merge), tmp_path, [_ids(rng)], script=merge == "Concatenate")


def test_mask_of_a_merge_with_one_unmasked_input(tmp_path) -> None:
    """Keras 3: Add of a masked and an unmasked input has no mask; Concatenate counts the unmasked one valid."""
    ids = keras.Input((None,), dtype="int32")
    feats = keras.Input((None, F))
    x = layers.Embedding(V, F, mask_zero=True)(ids)
    added = layers.Add()([x, feats])
    joined = layers.Concatenate()([x, feats])
    a = layers.LSTM(3, return_sequences=True, **BIAS)(added)
    b = layers.GRU(3, return_sequences=True, **BIAS)(joined)
    pooled = layers.GlobalAveragePooling1D()(layers.Concatenate()([a, b]))
    model = keras.Model([ids, feats], [pooled, layers.GlobalAveragePooling1D()(b)])
    rng = np.random.default_rng(2)
    module = _check(model, tmp_path, [_ids(rng), _features(rng)])
    assert type(module).__name__ == "KerasMultiInputOutputModel"


def test_shared_layers_two_inputs_two_outputs(tmp_path) -> None:
    """A siamese encoder: one Embedding and one Bidirectional called on two inputs, compared with Dot, plus a
    second output; the shared layers' weights are read once and used by both calls."""
    left, right = keras.Input((None,), dtype="int32"), keras.Input((None,), dtype="int32")
    embed = layers.Embedding(V, F, mask_zero=True)
    encode = layers.Bidirectional(layers.GRU(3, **BIAS))
    a, b = encode(embed(left)), encode(embed(right))
    similarity = layers.Dot(axes=1, normalize=True)([a, b])
    diff = layers.Subtract()([a, b])
    model = keras.Model([left, right], [layers.Dense(1, activation="sigmoid", **BIAS)(
        layers.Concatenate()([similarity, diff])), layers.Maximum()([a, b])])
    rng = np.random.default_rng(3)
    module = _check(model, tmp_path, [_ids(rng), _ids(rng)])
    stages = [node.stage for node in module.nodes if isinstance(node, LayerNode)]
    assert len(stages) == 5 and len({id(s) for s in stages}) == 3       # 2 shared stages, each called twice


def test_attention_from_dense_dot_softmax(tmp_path) -> None:
    """The hand-built attention of many real models: scores = Dot(h, h), softmax, context = Dot(weights, h)."""
    inputs = keras.Input((T,), dtype="int32")
    h = layers.Bidirectional(layers.LSTM(3, return_sequences=True, **BIAS))(layers.Embedding(V, F)(inputs))
    scores = layers.Dot(axes=[2, 2])([h, h])
    weights = layers.Activation("softmax")(scores)
    context = layers.Dot(axes=[2, 1])([weights, h])
    pooled = layers.Dot(axes=[1, 1])([layers.Dense(1, **BIAS)(h), h])          # (B, 1, 2H)
    model = keras.Model(inputs, [layers.GlobalMaxPooling1D()(context), pooled])
    _check(model, tmp_path, [_ids(np.random.default_rng(4))])


def test_chained_bidirectional_layers_in_a_graph_are_fused(tmp_path) -> None:
    inputs = keras.Input((None, F))
    x = layers.Masking()(inputs)
    x = layers.Bidirectional(layers.LSTM(3, return_sequences=True, **BIAS), merge_mode="mul")(x)
    x = layers.Dropout(0.3)(x)
    x = layers.Bidirectional(layers.LSTM(3, return_sequences=True, **BIAS), merge_mode="concat")(x)
    pooled = layers.Concatenate()([layers.GlobalMaxPooling1D()(x), layers.GlobalAveragePooling1D()(x)])
    model = keras.Model(inputs, layers.Dense(2, **BIAS)(pooled))
    module = _check(model, tmp_path, [_features(np.random.default_rng(5))])
    blocks = [n.stage.block for n in module.nodes if isinstance(n, LayerNode) and hasattr(n.stage, "block")]
    assert len(blocks) == 1 and blocks[0].merge_modes == ["mul", "concat"]
    assert sum(isinstance(n, MergeNode) for n in module.nodes) == 1


def test_merge_mode_none_inside_a_graph(tmp_path) -> None:
    inputs = keras.Input((None, F))
    forward, backward = layers.Bidirectional(layers.GRU(3, return_sequences=True, **BIAS), merge_mode=None)(
        layers.Masking()(inputs))
    model = keras.Model(inputs, layers.GlobalAveragePooling1D()(layers.Add()([forward, backward])))
    _check(model, tmp_path, [_features(np.random.default_rng(6))])


def test_rebuilt_from_specs_and_weights_file(tmp_path) -> None:
    model = _branches("Concatenate")
    model.save(tmp_path / "g.keras")
    module = from_keras(tmp_path / "g.keras")
    assert isinstance(module, KerasGraphModel)
    rebuilt = module_from_specs(module.keras_specs)
    model.save_weights(tmp_path / "g.weights.h5")
    load_keras_weights(rebuilt, tmp_path / "g.weights.h5")
    ids = torch.as_tensor(_ids(np.random.default_rng(7)))
    torch.testing.assert_close(rebuilt.eval()(ids), module(ids), rtol=0, atol=0)


def test_an_operation_on_the_data_path_is_refused(tmp_path) -> None:
    inputs = keras.Input((None, F))
    x = layers.LSTM(3, return_sequences=True)(inputs)
    model = keras.Model(inputs, layers.Dense(2)(keras.ops.sum(x, axis=1)))
    model.save(tmp_path / "op.keras")
    with pytest.raises(KerasImportError, match=r"keras.ops call 'Sum' on the data path is code"):
        from_keras(tmp_path / "op.keras")


def test_a_multi_input_module_counts_its_inputs(tmp_path) -> None:
    a, b = keras.Input((None, F)), keras.Input((None, F))
    keras.Model([a, b], layers.LSTM(2)(layers.Add()([a, b]))).save(tmp_path / "two.keras")
    module = from_keras(tmp_path / "two.keras")
    with pytest.raises(ValueError, match="takes 2 inputs, got 1"):
        module([torch.zeros(1, 3, F)])
