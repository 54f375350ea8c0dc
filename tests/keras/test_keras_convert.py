"""``models/keras/convert.py`` without Keras: the weight shapes it expects of each layer kind (Keras's documented
shapes, written out here), the all-or-nothing install and every refusal of ``load_keras_weights`` word for word,
on ``.weights.h5`` files written in the test (issue 37's mutation testing). The parity with Keras itself is in
``tests/keras/test_keras_import.py`` and ``tests/keras/test_keras_parity_biases.py``."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("h5py", reason="the Keras conversion reads HDF5 files (pip install -e '.[dev]')")
import h5py

from models import BiGRU, BiLSTM
from models.keras import KerasImportError, load_keras_weights
from models.keras.config import LayerSpec
from models.keras.convert import _expected_shapes, _install


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


def recurrent(cell: str, units: int = 3, use_bias: bool = True, bidirectional: bool = True,
              **options: object) -> LayerSpec:
    return LayerSpec("recurrent", "Bidirectional", "bi", "bi", 5,
                     {"cell": cell, "units": units, "use_bias": use_bias, "bidirectional": bidirectional, **options})


@pytest.mark.parametrize(("spec", "shapes"), [
    (LayerSpec("embedding", "Embedding", "e", "e", 0, {"input_dim": 11, "output_dim": 4}), [(11, 4)]),
    (LayerSpec("dense", "Dense", "d", "d", 6, {"units": 2, "use_bias": True}), [(6, 2), (2,)]),
    (LayerSpec("dense", "Dense", "d", "d", 6, {"units": 2, "use_bias": False}), [(6, 2)]),
    (LayerSpec("norm", "LayerNormalization", "n", "n", 6, {"scale": True, "center": True, "batch": False}),
     [(6,), (6,)]),
    (LayerSpec("norm", "LayerNormalization", "n", "n", 6, {"scale": False, "center": True, "batch": False}), [(6,)]),
    (LayerSpec("norm", "LayerNormalization", "n", "n", 6, {"scale": True, "center": False, "batch": False}), [(6,)]),
    (LayerSpec("norm", "BatchNormalization", "n", "n", 6, {"scale": True, "center": True, "batch": True}),
     [(6,)] * 4),
    (LayerSpec("norm", "BatchNormalization", "n", "n", 6, {"scale": False, "center": False, "batch": True}),
     [(6,)] * 2),
    (LayerSpec("conv", "Conv1D", "c", "c", 6, {"kernel_size": 3, "groups": 2, "filters": 4, "use_bias": True}),
     [(3, 3, 4), (4,)]),
    (LayerSpec("conv", "Conv1D", "c", "c", 6, {"kernel_size": 2, "groups": 1, "filters": 4, "use_bias": False}),
     [(2, 6, 4)]),
    (LayerSpec("pool", "GlobalAveragePooling1D", "p", "p", 6, {}), []),
    (recurrent("LSTM"), [(5, 12), (3, 12), (12,)] * 2),
    (recurrent("LSTM", use_bias=False, bidirectional=False), [(5, 12), (3, 12)]),
    (recurrent("GRU"), [(5, 9), (3, 9), (2, 9)] * 2),
    (recurrent("GRU", reset_after=True, bidirectional=False), [(5, 9), (3, 9), (2, 9)]),
    (recurrent("GRU", reset_after=False), [(5, 9), (3, 9), (9,)] * 2),
    (recurrent("SimpleRNN", units=4, bidirectional=False), [(5, 4), (4, 4), (4,)]),
])
def test_the_weight_shapes_of_each_layer_kind(spec: LayerSpec, shapes: list) -> None:
    assert _expected_shapes(spec) == shapes


def write(path: Path, groups: dict, attrs: dict | None = None) -> Path:
    """A ``.weights.h5`` file: ``{"layers/x/vars/0": array, ...}``."""
    with h5py.File(path, "w") as h5:
        for key, value in groups.items():
            h5.create_dataset(key, data=np.asarray(value, dtype="<f4"))
        for key, value in (attrs or {}).items():
            h5.attrs[key] = value
    return path


def lstm_layer(name: str, features: int, units: int, fill: float) -> dict:
    out = {}
    for side in ("forward_layer", "backward_layer"):
        shapes = [(features, 4 * units), (units, 4 * units), (4 * units,)]
        for index, shape in enumerate(shapes):
            out[f"layers/{name}/{side}/cell/vars/{index}"] = np.full(shape, fill + index, dtype="float32")
    return out


def test_a_block_loads_the_default_group_names_and_the_given_ones(tmp_path: Path) -> None:
    block = BiLSTM(2, 3, num_layers=2, merge_mode=["sum", "concat"])
    path = write(tmp_path / "w.weights.h5", {**lstm_layer("bidirectional", 2, 3, 1.0),
                                            **lstm_layer("bidirectional_1", 3, 3, 5.0)})
    assert load_keras_weights(block, str(path)) is block
    assert (block.weight_ih_l0 == 1.0).all() and (block.bias_ih_l1_reverse == 7.0).all()
    assert (block.bias_hh_l1 == 0.0).all() and (block.weight_hh_l1 == 6.0).all()
    other = BiLSTM(2, 3, num_layers=2, merge_mode=["sum", "concat"])
    path = write(tmp_path / "named.weights.h5", {**lstm_layer("a", 2, 3, 2.0), **lstm_layer("b", 3, 3, 3.0)})
    load_keras_weights(other, str(path), layers=["a", "b"])
    assert (other.weight_ih_l0_reverse == 2.0).all() and (other.weight_hh_l1 == 4.0).all()


def test_the_width_after_each_merge_mode_decides_the_next_kernels_shape(tmp_path: Path) -> None:
    """Layer 1 reads H features after ``sum`` and 2H after ``concat``/``None``-free concat: a file of the other
    width is refused naming the weight and both shapes."""
    path = write(tmp_path / "w.weights.h5", {**lstm_layer("bidirectional", 2, 3, 1.0),
                                            **lstm_layer("bidirectional_1", 6, 3, 5.0)})
    load_keras_weights(BiLSTM(2, 3, num_layers=2, merge_mode=["concat", None]), str(path))
    with pytest.raises(KerasImportError, match=exact(
            "layer 'bidirectional_1': weight '/layers/bidirectional_1/forward_layer/cell/vars/0' has shape (6, 12), "
            "expected (3, 12)")):
        load_keras_weights(BiLSTM(2, 3, num_layers=2, merge_mode=["ave", "sum"]), str(path))


def test_a_file_with_another_number_of_arrays_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "w.weights.h5", lstm_layer("bidirectional", 2, 3, 1.0))
    with pytest.raises(KerasImportError, match=exact("layer 'bidirectional': expected 4 weight arrays, the file "
                                                     "holds 6")):
        load_keras_weights(BiLSTM(2, 3, bias=False), str(path))


def test_nothing_is_loaded_unless_everything_fits(tmp_path: Path) -> None:
    block = BiLSTM(2, 3, num_layers=2)
    before = {key: value.clone() for key, value in block.state_dict().items()}
    path = write(tmp_path / "w.weights.h5", lstm_layer("bidirectional", 2, 3, 1.0))       # layer 1 is missing
    with pytest.raises(KerasImportError, match=exact("layer 'bidirectional_1': expected 6 weight arrays, the file "
                                                     "holds 0")):
        load_keras_weights(block, str(path))
    assert all(torch.equal(block.state_dict()[key], value) for key, value in before.items())


def test_layer_names_must_be_one_per_layer(tmp_path: Path) -> None:
    path = write(tmp_path / "w.weights.h5", lstm_layer("a", 2, 3, 1.0))
    with pytest.raises(KerasImportError, match=exact("1 layer names given for a 2-layer block")):
        load_keras_weights(BiLSTM(2, 3, num_layers=2), str(path), layers=["a"])


def test_a_file_of_neither_layout_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "w.h5", {"other/0": np.zeros(2)})
    with pytest.raises(KerasImportError, match=exact(
            f"{str(path)!r} is neither a Keras 3 .weights.h5 file (no 'layers' group) nor a Keras 2 weights file "
            "(no 'layer_names')")):
        load_keras_weights(BiLSTM(2, 3), str(path))


def test_a_keras_2_weights_file_loads_by_layer_name(tmp_path: Path) -> None:
    """Keras 2's ``save_weights("w.h5")``: one group per layer name at the root, arrays at the paths its
    ``weight_names`` lists, in that order (forward kernel, recurrent kernel, bias; then the backward ones)."""
    names, arrays = [], {}
    for side in ("forward_gru", "backward_gru"):
        for index, (kind, shape) in enumerate([("kernel", (2, 9)), ("recurrent_kernel", (3, 9)),
                                               ("bias", (2, 9))]):
            key = f"bidirectional/{side}/{kind}:0"
            names.append(key.encode())
            arrays[f"bidirectional/{key}"] = np.full(shape, 10.0 * (side == "backward_gru") + index, dtype="float32")
    path = write(tmp_path / "w.h5", arrays, {"layer_names": [b"bidirectional"]})
    with h5py.File(path, "r+") as h5:
        h5["bidirectional"].attrs["weight_names"] = names
    block = load_keras_weights(BiGRU(2, 3), str(path))
    assert (block.weight_hh_l0 == 1.0).all() and (block.bias_hh_l0_reverse == 12.0).all()


def test_only_a_keras_module_or_a_block_takes_keras_weights(tmp_path: Path) -> None:
    path = write(tmp_path / "w.weights.h5", lstm_layer("bidirectional", 2, 3, 1.0))
    with pytest.raises(KerasImportError, match=exact(
            "cannot map Keras weights onto a LSTM; use a from_keras module or a BiLSTM/BiGRU/BiRNN block")):
        load_keras_weights(torch.nn.LSTM(2, 3, bidirectional=True), str(path))


def test_install_checks_every_key_and_shape_before_the_first_copy() -> None:
    module = torch.nn.Linear(2, 3)
    weight, bias = module.weight.detach().clone(), module.bias.detach().clone()
    with pytest.raises(KerasImportError, match=exact(
            "weights do not match the module: missing ['bias'], unexpected ['scale']")):
        _install(module, {"weight": torch.ones(3, 2), "scale": torch.ones(3)})
    with pytest.raises(KerasImportError, match=exact("weight bias: shape (2,) does not fit (3,)")):
        _install(module, {"weight": torch.ones(3, 2), "bias": torch.ones(2)})
    assert torch.equal(module.weight, weight) and torch.equal(module.bias, bias)
    _install(module, {"weight": torch.full((3, 2), 2.0), "bias": torch.full((3,), 3.0)})
    assert (module.weight == 2.0).all() and (module.bias == 3.0).all()
