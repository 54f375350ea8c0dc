"""Every refusal of ``models.keras``: the error names the layer (or file part) and the reason, and nothing
is half-loaded."""

import io
import json
import os
import zipfile

os.environ.setdefault("KERAS_BACKEND", "torch")

import h5py
import numpy as np
import pytest
import torch
from helpers.optional import optional_import

keras, needs_keras = optional_import("keras", "the Keras tests need keras (pip install -e '.[dev]')")
pytestmark = needs_keras
layers = keras.layers

from models.keras import KerasImportError, from_keras, load_keras_weights  # noqa: E402
from models.keras import archive as archive_module  # noqa: E402

FORWARD_KERNEL = "layers/bidirectional/forward_layer/cell/vars/0"


def _save(tmp_path, *stack, name="m.keras"):
    path = tmp_path / name
    keras.Sequential(list(stack)).save(path)
    return path


def _bilstm(tmp_path, name="m.keras"):
    return _save(tmp_path, keras.Input((None, 3)), layers.Bidirectional(layers.LSTM(4, return_sequences=True)),
                 layers.Bidirectional(layers.LSTM(4), merge_mode="sum"), name=name)


def _rewrite(path, edit_h5=None, edit_config=None, extra=None):
    """Rewrite a .keras archive in place: ``edit_h5(h5py.File)`` on the weights, ``edit_config(dict)``."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    if edit_h5 is not None:
        buffer = io.BytesIO(members["model.weights.h5"])
        with h5py.File(buffer, "r+") as h5:
            edit_h5(h5)
        members["model.weights.h5"] = buffer.getvalue()
    if edit_config is not None:
        config = json.loads(members["config.json"])
        edit_config(config)
        members["config.json"] = json.dumps(config).encode()
    members.update(extra or {})
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _replace(h5, name, data, **kwargs):
    del h5[name]
    h5.create_dataset(name, data=data, **kwargs)


@pytest.mark.parametrize("layer,match", [
    (lambda: layers.UpSampling1D(2), r"layer 'up_sampling1d(_\d+)?'.*'UpSampling1D' is not supported"),
    (lambda: layers.LSTM(4, go_backwards=True), r"layer 'lstm.*go_backwards=True on an unwrapped"),
    (lambda: layers.Bidirectional(layers.LSTM(4, return_sequences=True), backward_layer=layers.LSTM(
        4, return_sequences=True, go_backwards=True, use_bias=False)),
        r"layer 'bidirectional.*backward_layer differs.*use_bias"),
    (lambda: layers.LSTM(4, activation="softmax"),
     r"layer 'lstm.*activation='softmax' is not a supported element-wise"),
    (lambda: layers.Dense(3, activation="sparsemax"), r"layer 'dense.*activation='sparsemax' is not supported"),
])
def test_refused_layers(tmp_path, layer, match):
    path = _save(tmp_path, keras.Input((None, 3)), layer())
    with pytest.raises(KerasImportError, match=match):
        from_keras(path)


def test_refused_stateful_and_unroll(tmp_path):
    path = _save(tmp_path, keras.Input(batch_shape=(2, 5, 3)), layers.LSTM(4, stateful=True))
    with pytest.raises(KerasImportError, match=r"layer 'lstm.*stateful=True is not supported"):
        from_keras(path)
    path = _save(tmp_path, keras.Input((5, 3)), layers.GRU(4, unroll=True))
    with pytest.raises(KerasImportError, match=r"layer 'gru.*unroll=True is not supported"):
        from_keras(path)


def test_refused_merge_none_before_last(tmp_path):
    def edit(config):
        config["config"]["layers"][1]["config"]["merge_mode"] = None
    path = _rewrite(_bilstm(tmp_path), edit_config=edit)
    with pytest.raises(KerasImportError, match=r"layer 'bidirectional_\d+'.*merge_mode=None is only allowed last"):
        from_keras(path)


def test_refused_training_true_call(tmp_path):
    inputs = keras.Input((None, 3))
    outputs = layers.Dropout(0.5)(layers.LSTM(4)(inputs), training=True)
    keras.Model(inputs, outputs).save(tmp_path / "f.keras")
    with pytest.raises(KerasImportError, match=r"layer 'dropout.*training=True"):
        from_keras(tmp_path / "f.keras")


@pytest.mark.parametrize("edit,match", [
    (lambda h5: _replace(h5, FORWARD_KERNEL, np.zeros((3, 15), "float32")), r"shape \(3, 15\), expected \(3, 16\)"),
    (lambda h5: _replace(h5, FORWARD_KERNEL, np.zeros((3, 16), "float64")), r"dtype float64, expected float32"),
    (lambda h5: h5.__delitem__("layers/bidirectional/forward_layer/cell/vars/2"), r"expected 6 weight arrays.*holds 5"),
    (lambda h5: h5.create_dataset("layers/bidirectional/forward_layer/cell/vars/3", data=np.zeros(2, "float32")),
     r"expected 6 weight arrays.*holds 7"),
    (lambda h5: h5.create_dataset("layers/bidirectional/forward_layer/extra", data=np.zeros(2, "float32")),
     r"unexpected weights \['forward_layer/extra'\]"),
    (lambda h5: h5[FORWARD_KERNEL].__setitem__((0, 0), np.nan), r"holds NaN or Inf"),
    (lambda h5: h5.__setitem__("layers/bidirectional/forward_layer/cell/vars/9", h5py.ExternalLink("x.h5", "/w")),
     r"'layers/bidirectional/forward_layer/cell/vars/9' is an HDF5 external link"),
    (lambda h5: h5.__setitem__("vars/alias", h5py.SoftLink("/layers/bidirectional")),
     r"'vars/alias' is an HDF5 soft link"),
])
def test_refused_weights(tmp_path, edit, match):
    path = _rewrite(_bilstm(tmp_path), edit_h5=edit)
    with pytest.raises(KerasImportError, match=r"layer 'bidirectional.*" + match if "link" not in match else match):
        from_keras(path)


def test_refused_inf_in_legacy_h5(tmp_path):
    path = _bilstm(tmp_path, name="m.h5")
    with h5py.File(path, "r+") as h5:
        last = h5["model_weights"].attrs["layer_names"][-1]
        name = "model_weights/" + (last.decode() if isinstance(last, bytes) else last)
        key = next(k.decode() if isinstance(k, bytes) else k for k in h5[name].attrs["weight_names"])
        h5[f"{name}/{key}"][0, 0] = np.inf
    with pytest.raises(KerasImportError, match=r"layer 'bidirectional_\d+'.*NaN or Inf"):
        from_keras(path)


def test_refused_huge_declared_dataset(tmp_path):
    """A few bytes can declare 2**29 elements: refused before anything is read or allocated."""
    path = _save(tmp_path, keras.Input((None,), dtype="int32"), layers.Embedding(10, 2), layers.LSTM(3))

    def config(c):
        c["config"]["layers"][1]["config"]["input_dim"] = 2**28

    def weights(h5):
        del h5["layers/embedding/vars/0"]
        h5.create_dataset("layers/embedding/vars/0", shape=(2**28, 2), dtype="float32", chunks=(1024, 2))
    _rewrite(path, edit_h5=weights, edit_config=config)
    assert path.stat().st_size < 2**20
    with pytest.raises(KerasImportError,
                       match=r"layer 'embedding(_\d+)?'.*declares shape \(268435456, 2\), over the cap"):
        from_keras(path)


def test_refused_archive_members(tmp_path, monkeypatch):
    path = _rewrite(_bilstm(tmp_path), extra={"assets/evil.pkl": b"\x80\x04."})
    with pytest.raises(KerasImportError, match=r"unexpected members \['assets/evil.pkl'\]"):
        from_keras(path)
    path = _bilstm(tmp_path, name="n.keras")
    monkeypatch.setitem(archive_module._KERAS_MEMBERS, "config.json", 100)
    with pytest.raises(KerasImportError, match=r"'config.json' declares \d+ bytes, over the cap of 100"):
        from_keras(path)


def test_nothing_half_loaded(tmp_path):
    """A bad last layer in a .weights.h5 leaves every parameter of the target module untouched."""
    path = _bilstm(tmp_path)
    module = from_keras(path)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    model = keras.Sequential([keras.Input((None, 3)), layers.Bidirectional(layers.LSTM(4, return_sequences=True)),
                              layers.Bidirectional(layers.LSTM(4), merge_mode="sum")])
    model.save_weights(tmp_path / "w.weights.h5")
    with h5py.File(tmp_path / "w.weights.h5", "r+") as h5:
        h5["layers/bidirectional_1/backward_layer/cell/vars/1"][0, 0] = np.nan
    with pytest.raises(KerasImportError, match=r"layer 'bidirectional_\d+'.*bidirectional_1/backward_layer.*NaN"):
        load_keras_weights(module, tmp_path / "w.weights.h5")
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("assets", [False, True])
def test_text_vectorization_is_refused_by_name(tmp_path, assets):
    """Keras 3 needs TensorFlow to build a TextVectorization, so the layer is written into a saved config (and its
    vocabulary into the archive's assets, as Keras does)."""
    def edit(config):
        config["config"]["layers"].insert(1, {"class_name": "TextVectorization", "name": "text_vectorization",
                                              "config": {"name": "text_vectorization", "max_tokens": 20}})
    extra = {"assets/text_vectorization/vocabulary.txt": b"a\ncat\n"} if assets else None
    path = _rewrite(_bilstm(tmp_path), edit_config=edit, extra=extra)
    with pytest.raises(KerasImportError, match=r"'text_vectorization'.*TextVectorization.*is not imported.*"
                                               r"model.layers\[1:\]"):
        from_keras(path)
