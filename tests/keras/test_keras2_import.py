"""Keras 2 (tf.keras / ``tf_keras``) files: committed fixtures made by ``tests/keras/fixtures/keras2/make_fixtures.py``
(TensorFlow is not needed here), imported with ``from_keras`` and compared with the outputs Keras 2 gave on
the same batch (full length, right-padded, left-padded, gaps; every output position compared; character ids
``(B, words, chars)`` padded the same ways inside each word). Covers the attention layers (``Attention``,
``AdditiveAttention``, ``MultiHeadAttention``, with Keras 2's own masked softmax) and ``TimeDistributed`` around
``Embedding``, ``Bidirectional``, ``Conv1D``, poolings and ``Flatten`` (Keras 2 hands the wrapped layer each step's
mask). Also: every refusal of a Keras 2 config is a ``KerasImportError``, never a parser crash, and SavedModel
folders are refused with a re-save hint.
"""

import copy
import json
import os
import zipfile

import h5py
import numpy as np
import pytest
import torch

from models.keras import KerasImportError, from_keras
from models.keras.config import parse_model_config

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "keras2")
PARITY = ["seq_bilstm3", "seq_bigru", "fn_imdb", "fn_gru_pool", "fn_masking_rnn", "seq_gru_reset_before", "fn_tagger",
          "fn_attention", "fn_additive_attention", "fn_mha", "fn_mha_masked_rows", "fn_mha_robust", "fn_char_tagger",
          "seq_char_pool", "seq_char_conv"]
ALL = [*PARITY, "fn_branches"]
FORMATS = ["h5", "keras"]
TOL = 1e-5   # float32 rounding of Keras 2's TensorFlow kernels vs PyTorch's (observed <= 2.4e-7), relative to the
             # largest output where that is over 1 (fn_mha_masked_rows: outputs up to 173, observed 4.4e-8 relative)


def _config(name: str, fmt: str) -> dict:
    path = os.path.join(HERE, f"{name}.{fmt}")
    if fmt == "h5":
        with h5py.File(path, "r") as handle:
            return json.loads(handle.attrs["model_config"])
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json"))


def _inputs(name: str) -> torch.Tensor:
    x = np.load(os.path.join(HERE, f"{name}.inputs.npy"))
    return torch.as_tensor(x.astype("int64") if x.dtype.kind == "i" else x)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", PARITY)
def test_keras2_fixture_matches_keras2_outputs(name: str, fmt: str) -> None:
    module = from_keras(os.path.join(HERE, f"{name}.{fmt}"))
    expected = np.load(os.path.join(HERE, f"{name}.expected.npy"))
    x = _inputs(name)
    got = module(x).detach().numpy()
    assert got.shape == expected.shape
    tol = TOL * max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, atol=tol, rtol=0)
    if fmt == "keras":   # TorchScript runs the same stages (the reset_after=False GRU on its reference path)
        scripted = torch.jit.script(module)
        np.testing.assert_allclose(scripted(x).detach().numpy(), expected, atol=tol, rtol=0)


def test_keras2_files_are_keras2() -> None:
    """The fixtures are what they claim: Keras 2's nested-list inbound nodes and batch_input_shape."""
    for fmt in FORMATS:
        config = _config("fn_imdb", fmt)
        embedding = config["config"]["layers"][1]
        assert embedding["inbound_nodes"] == [[["input_1", 0, 0, {}]]]
        assert config["config"]["layers"][0]["config"]["batch_input_shape"] == [None, None]
    with h5py.File(os.path.join(HERE, "fn_imdb.h5"), "r") as handle:
        assert str(handle.attrs["keras_version"]).startswith("2.")


def test_structure_of_imported_modules() -> None:
    tagger = from_keras(os.path.join(HERE, "fn_tagger.keras"))
    assert [type(s).__name__ for s in tagger.stages] == ["EmbeddingStage", "BidirectionalStage", "DenseStage",
                                                         "ActivationStage"]
    stacked = from_keras(os.path.join(HERE, "seq_bilstm3.h5"))
    assert stacked.stages[1].block.merge_modes == ["sum", "ave", "mul"]     # three layers, one block
    gru = from_keras(os.path.join(HERE, "seq_gru_reset_before.h5"))
    assert gru.stages[1].block.reset_after is False and gru.stages[1].block.num_layers == 2
    assert type(gru.stages[2].rnn).__name__ == "GRUResetBefore"


def _keras3_twin_of_fn_branches():
    """``fn_branches`` rebuilt in Keras 3 with the Keras 2 file's arrays (read with h5py by ``weight_names``)."""
    keras = pytest.importorskip("keras")
    from keras import layers
    inputs = keras.Input((None,), dtype="int32")
    x = layers.Embedding(12, 5, mask_zero=True, name="embedding")(inputs)
    a = layers.Bidirectional(layers.LSTM(3), name="bidirectional")(x)
    b = layers.Bidirectional(layers.GRU(3), name="bidirectional_1")(x)
    outputs = layers.Dense(2, name="dense")(layers.Concatenate()([a, b]))
    twin = keras.Model(inputs, outputs)
    with h5py.File(os.path.join(HERE, "fn_branches.h5"), "r") as handle:
        for name in ("embedding", "bidirectional", "bidirectional_1", "dense"):
            group = handle["model_weights"][name]
            names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
            twin.get_layer(name).set_weights([np.asarray(group[n]) for n in names])
    return twin


@pytest.mark.parametrize("fmt", FORMATS)
def test_two_branches_import(fmt: str) -> None:
    """One Embedding feeding two Bidirectional layers, concatenated: a graph, imported exactly (checked against
    Keras 3 running the same arrays; no mask reaches the merge, so Keras 2 and 3 agree)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    config = _config("fn_branches", fmt)
    vocabulary = _layer(config, "Embedding")["config"]["input_dim"]
    assert vocabulary == 12
    twin = _keras3_twin_of_fn_branches()
    module = from_keras(os.path.join(HERE, f"fn_branches.{fmt}"))
    x = _inputs("fn_imdb")
    expected = np.asarray(twin(x.numpy()).detach().cpu())
    np.testing.assert_allclose(module(x).detach().numpy(), expected, atol=TOL, rtol=0)


def _layer(config: dict, class_name: str) -> dict:
    return next(layer for layer in config["config"]["layers"] if layer["class_name"] == class_name)


def _edits() -> list:
    """(fixture, edit of its config, expected message) for Keras 2 configs outside the subset."""
    def node(value):
        def edit(config):
            _layer(config, "Bidirectional")["inbound_nodes"] = value
        return edit

    def inner(key, value, class_name="Bidirectional"):
        def edit(config):
            _layer(config, class_name)["config"]["layer"]["config"][key] = value
        return edit

    def wrap(class_name):
        def edit(config):
            _layer(config, "TimeDistributed")["config"]["layer"]["class_name"] = class_name
        return edit

    return [
        ("fn_imdb", node([[["embedding", 0, 0, {}]], [["embedding", 0, 0, {}]]]), r"'bidirectional'.*called 2 times"),
        ("fn_imdb", node([[["embedding", 0, 0, {}], ["input_1", 0, 0, {}]]]), r"'bidirectional'.*on 2 inputs"),
        ("fn_imdb", node([[["embedding", 1, 0, {}]]]), r"'bidirectional'.*shared layer"),
        ("fn_imdb", node([[["embedding", 0, 1, {}]]]), r"'bidirectional'.*second output"),
        ("fn_imdb", node([[["embedding", 0, 0, {"training": True}]]]), r"'bidirectional'.*training=True"),
        ("fn_imdb", node([[["embedding", 0, 0, {"initial_state": [["x", 0, 0]]}]]]), r"call arguments"),
        ("fn_imdb", node([[["embedding", 0, 0, []]]]), r"'bidirectional'.*malformed"),
        ("fn_imdb", node([[[7, 0, 0, {}]]]), r"'bidirectional'.*malformed"),
        ("fn_imdb", node("embedding"), r"'bidirectional'.*malformed"),
        ("fn_imdb", node([["embedding", 0, 0, {}]]), r"'bidirectional'.*malformed"),
        ("fn_imdb", node([42]), r"'bidirectional'.*malformed"),
        ("fn_imdb", inner("time_major", True), r"'bidirectional'.*time_major=True"),
        ("fn_imdb", inner("stateful", True), r"'bidirectional'.*stateful=True"),
        ("fn_imdb", inner("recurrent_activation", "softmax"), r"recurrent_activation='softmax'"),
        ("fn_gru_pool", inner("reset_after", "no"), r"reset_after='no' is not a bool"),
        ("fn_gru_pool", inner("return_sequences", 1), r"return_sequences=1 is not a bool"),
        ("fn_tagger", wrap("Conv1D"), r"'time_distributed'.*Conv1D needs a \(batch, time, features\) input"),
        ("fn_tagger", wrap("LSTM"), r"'time_distributed'.*TimeDistributed\(LSTM\) on a masked input.*\(B \* T,\)"),
        ("fn_tagger", wrap("GlobalAveragePooling1D"), r"TimeDistributed\(GlobalAveragePooling1D\) on a masked input"),
        ("fn_tagger", wrap("Conv2D"), r"'time_distributed'.*wraps 'Conv2D'; supported"),
        ("fn_imdb", lambda c: c["config"]["layers"].append(7), r"layer #5.*malformed"),
        ("fn_imdb", lambda c: c["config"].update(output_layers=[["dense", 0, 1]]), r"model output"),
        ("fn_imdb", lambda c: c["config"].update(output_layers=[["bidirectional", 0, 0]]), r"model output"),
        ("fn_imdb", lambda c: c["config"].update(output_layers=[["dense", 0, 0], ["dense", 0, 1]]), r"model output"),
        ("fn_imdb", lambda c: c["config"].update(output_layers="dense"), r"model output"),
        ("fn_imdb", lambda c: _layer(c, "Dense").update(config=[1, 2]), r"'dense'.*malformed"),
        ("fn_imdb", lambda c: _layer(c, "Bidirectional")["config"].update(layer={"class_name": "LSTM", "config": 3}),
         r"'bidirectional'.*malformed"),
        ("fn_imdb", lambda c: _layer(c, "Dense").update(class_name="TFOpLambda"), r"'dense'.*'TFOpLambda' is not"),
    ]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("fixture, edit, message", _edits())
def test_keras2_configs_outside_the_subset_are_refused(fixture: str, edit, message: str, fmt: str) -> None:
    config = _config(fixture, fmt)
    parse_model_config(config)            # the unedited config parses
    edit(config)
    with pytest.raises(KerasImportError, match=message):
        parse_model_config(config)


def _mutations(value, rng: np.random.Generator, path=()):
    """Every (path, replacement) that swaps one value of a config for a value of the wrong kind."""
    junk = [None, 0, -1, "x", [], {}, [[]], 1.5, True]
    yield path, junk[int(rng.integers(len(junk)))]
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _mutations(child, rng, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _mutations(child, rng, (*path, index))


@pytest.mark.parametrize("name", ALL)
def test_malformed_keras2_configs_never_crash_the_parser(name: str) -> None:
    """Replace each value of the config (one at a time) with junk: the parser either still accepts it or raises
    a KerasImportError from its own checks; never AttributeError, KeyError, TypeError or IndexError, and not
    even through ``parse_model_config``'s last-resort conversion of those ("malformed model config (...)")."""
    rng = np.random.default_rng(len(name))
    for fmt in FORMATS:
        original = _config(name, fmt)
        for path, replacement in _mutations(original, rng):
            config = copy.deepcopy(original)
            if not path:
                config = replacement
            else:
                target = config
                for key in path[:-1]:
                    target = target[key]
                target[path[-1]] = replacement
            try:
                parse_model_config(config)
            except KerasImportError as error:
                assert "malformed model config (" not in str(error), (path, replacement, str(error))


def test_saved_model_folder_is_refused_with_a_resave_hint(tmp_path) -> None:
    folder = tmp_path / "exported"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"\x08\x01")
    for target in (folder, folder / "saved_model.pb"):
        with pytest.raises(KerasImportError, match=r"SavedModel.*\.h5 or \.keras.*load_model.*model\.save"):
            from_keras(str(target))
    with pytest.raises(KerasImportError, match=r"is a folder"):
        from_keras(str(tmp_path))


@pytest.mark.parametrize("name", ["seq_bilstm3", "fn_gru_pool", "fn_mha", "fn_char_tagger"])
def test_keras2_weights_only_h5_loads(name: str, tmp_path) -> None:
    """Keras 2's ``save_weights("w.h5")`` layout (the full file's ``model_weights`` groups at the root, with
    ``layer_names``) loads into a module of the same architecture, all or nothing, and gives Keras 2's outputs."""
    from models.keras import load_keras_weights
    module = from_keras(os.path.join(HERE, f"{name}.h5"))
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.zero_()
    path = tmp_path / "w.h5"
    with h5py.File(os.path.join(HERE, f"{name}.h5"), "r") as full, h5py.File(path, "w") as weights:
        for key, value in full["model_weights"].attrs.items():
            weights.attrs[key] = value
        for key in full["model_weights"]:
            full.copy(full["model_weights"][key], weights, name=key)
    load_keras_weights(module, path)
    expected = np.load(os.path.join(HERE, f"{name}.expected.npy"))
    np.testing.assert_allclose(module(_inputs(name)).detach().numpy(), expected, atol=TOL, rtol=0)
    with h5py.File(path, "r+") as weights:
        del weights.attrs["layer_names"]
    with pytest.raises(KerasImportError, match="nor a Keras 2 weights file"):
        load_keras_weights(module, path)


def test_keras2_attention_and_time_distributed_structure() -> None:
    """The Keras 2 rules are the ones switched on: Keras 2's masked softmax in MultiHeadAttention (adds -1e9; with
    softmax_robust_masking replaces by -1e9), the query mask multiplied in Attention, TimeDistributed handing the
    wrapped stage each step's mask."""
    mha = from_keras(os.path.join(HERE, "fn_mha_masked_rows.keras"))
    stage = next(m for m in mha.modules() if type(m).__name__ == "MultiHeadAttentionStage")
    assert stage.add_negative and stage.large_negative == -1e9
    robust = from_keras(os.path.join(HERE, "fn_mha_robust.h5"))
    stage = next(m for m in robust.modules() if type(m).__name__ == "MultiHeadAttentionStage")
    assert not stage.add_negative and stage.large_negative == -1e9
    attention = from_keras(os.path.join(HERE, "fn_attention.h5"))
    assert [m.keras2 for m in attention.modules() if type(m).__name__ == "AttentionStage"] == [True, True]
    tagger = from_keras(os.path.join(HERE, "fn_char_tagger.h5"))
    wrappers = [m for m in tagger.modules() if type(m).__name__ == "TimeDistributedStage"]
    assert len(wrappers) == 3 and all(m.keras2 for m in wrappers)    # TimeDistributed(Dense) is a Dense stage


def test_keras2_masked_query_rows_follow_keras2_not_keras3() -> None:
    """On a masked query step every score is masked: Keras 2 adds -1e9 (float32, so large scores still count),
    Keras 3 replaces them (every step averaged). The fixture's scores are large, so the two differ by far more than
    the tolerance: Keras 3's rule would fail the parity test."""
    module = from_keras(os.path.join(HERE, "fn_mha_masked_rows.h5"))
    x = _inputs("fn_mha_masked_rows")
    expected = np.load(os.path.join(HERE, "fn_mha_masked_rows.expected.npy"))
    stage = next(m for m in module.modules() if type(m).__name__ == "MultiHeadAttentionStage")
    stage.add_negative, stage.large_negative = False, -0.7 * 3.38953e38
    assert np.abs(module(x).detach().numpy() - expected).max() > 1.0


def _without_call_kwarg(config: dict, layer: str, key: str) -> None:
    entry = next(e for e in config["config"]["layers"] if e["name"] == layer)
    for tensor in entry["inbound_nodes"][0]:
        tensor[3].pop(key, None)


@pytest.mark.parametrize("fmt", FORMATS)
def test_keras2_attention_causal_config_key(fmt: str) -> None:
    """tf.keras before ``use_causal_mask`` saved ``causal`` in the layer config (``tf_keras`` drops it when saving):
    read as the call's ``use_causal_mask``. Without either the layer is not causal (the outputs change)."""
    from models.keras.archive import read_model_file
    from models.keras.convert import _import
    path = os.path.join(HERE, f"fn_attention.{fmt}")
    expected = np.load(os.path.join(HERE, "fn_attention.expected.npy"))
    x = _inputs("fn_attention")
    config, weights = read_model_file(path)
    _without_call_kwarg(config, "attention", "use_causal_mask")
    _layer(config, "Attention")["config"]["causal"] = True
    np.testing.assert_allclose(_import(config, weights)(x).detach().numpy(), expected, atol=TOL, rtol=0)
    config, weights = read_model_file(path)
    _without_call_kwarg(config, "attention", "use_causal_mask")
    assert np.abs(_import(config, weights)(x).detach().numpy() - expected).max() > 1e-3
    config, weights = read_model_file(path)
    _layer(config, "Attention")["config"]["causal"] = "yes"
    weights.close()
    with pytest.raises(KerasImportError, match=r"'attention'.*causal='yes' is not a bool"):
        parse_graph_config(config)


def parse_graph_config(config: dict):
    from models.keras.graph_config import parse_graph
    return parse_graph(config)


@pytest.mark.parametrize("edit, message", [
    (lambda c: _layer(c, "MultiHeadAttention")["config"].update(softmax_robust_masking=1),
     r"softmax_robust_masking=1 is not a bool"),
    (lambda c: _layer(c, "MultiHeadAttention")["config"].update(attention_axes=[1, 2]), r"attention_axes=\[1, 2\]"),
    (lambda c: _layer(c, "MultiHeadAttention")["inbound_nodes"][0][0][3].update(return_attention_scores=True),
     r"return_attention_scores=True"),
    (lambda c: _layer(c, "MultiHeadAttention")["inbound_nodes"][0][0][3].update(attention_mask=["input_1", 0, 0]),
     r"call arguments \['attention_mask'\] are not supported"),
    (lambda c: _layer(c, "MultiHeadAttention")["inbound_nodes"][0][0][3].update(value="x"),
     r"must be called as layer\(query, value\)"),
])
def test_keras2_attention_configs_outside_the_subset_are_refused(edit, message: str) -> None:
    config = _config("fn_mha_masked_rows", "h5")
    parse_graph_config(config)
    edit(config)
    with pytest.raises(KerasImportError, match=message):
        parse_graph_config(config)


@pytest.mark.parametrize("name", ["fn_mha_masked_rows", "fn_attention", "fn_char_tagger", "seq_char_pool"])
def test_keras2_rules_survive_keras_specs(name: str) -> None:
    """``module_from_specs(module.keras_specs)`` rebuilds the Keras 2 rules too (they live in the specs): the rebuilt
    module, given the weights, still gives Keras 2's outputs."""
    from models.keras import module_from_specs
    module = from_keras(os.path.join(HERE, f"{name}.keras"))
    rebuilt = module_from_specs(module.keras_specs)
    rebuilt.load_state_dict(module.state_dict())
    expected = np.load(os.path.join(HERE, f"{name}.expected.npy"))
    tol = TOL * max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(rebuilt.eval()(_inputs(name)).detach().numpy(), expected, atol=tol, rtol=0)
