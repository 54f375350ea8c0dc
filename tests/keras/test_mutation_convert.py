"""``models/keras/convert.py``'s ``_group_state`` without Keras: where each layer kind's Keras arrays go in the
module's state dict (the names and layouts written out here: Keras's ``(in, out)`` kernels transposed to torch's
``(out, in)``, Conv1D's ``(k, in/g, out)`` to ``(out, in/g, k)``, normalization's arrays in Keras's order gamma,
beta, moving mean, moving variance). The survivors of issue 37's mutation run on ``convert.py``; exact equality
(the arrays are only moved)."""

import dataclasses
import re
import zipfile
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import pytest
import torch

pytest.importorskip("h5py", reason="the Keras conversion reads HDF5 files (pip install -e '.[dev]')")
import h5py

from models import BiGRU, BiLSTM
from models.keras import KerasImportError, from_keras, load_keras_weights
from models.keras.archive import WeightFile, open_weights
from models.keras.config import LayerSpec
from models.keras.convert import _direction, _group_state, _install, _read_layer, _tensors


def arrays(*shapes: tuple) -> List[np.ndarray]:
    rng = np.random.default_rng(len(shapes))
    return [rng.standard_normal(shape).astype(np.float32) for shape in shapes]


def state_of(specs: List[LayerSpec], values: List[List[np.ndarray]]) -> Dict[str, np.ndarray]:
    group = [dataclasses.asdict(spec) | {"_id": index} for index, spec in enumerate(specs)]
    state: Dict[str, np.ndarray] = {}
    _group_state("stage.", group, dict(enumerate(values)), state)
    return state


def assert_state(state: Dict[str, np.ndarray], expected: Dict[str, np.ndarray]) -> None:
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert np.array_equal(state[key], value), key


def test_an_embeddings_table_is_its_weight_as_is() -> None:
    (table,) = arrays((11, 4))
    spec = LayerSpec("embedding", "Embedding", "e", "e", 0, {"input_dim": 11, "output_dim": 4})
    assert_state(state_of([spec], [[table]]), {"stage.embedding.weight": table})


@pytest.mark.parametrize("use_bias", [True, False])
def test_a_dense_kernel_is_transposed_and_its_bias_kept(use_bias: bool) -> None:
    values = arrays((6, 2), (2,))[:2 if use_bias else 1]
    spec = LayerSpec("dense", "Dense", "d", "d", 6, {"units": 2, "use_bias": use_bias})
    expected = {"stage.linear.weight": values[0].T} | ({"stage.linear.bias": values[1]} if use_bias else {})
    assert_state(state_of([spec], [values]), expected)


@pytest.mark.parametrize(("scale", "center", "batch", "names"), [
    (True, True, False, ["gamma", "beta"]),
    (False, True, False, ["beta"]),
    (True, False, False, ["gamma"]),
    (True, True, True, ["gamma", "beta", "moving_mean", "moving_variance"]),
    (False, False, True, ["moving_mean", "moving_variance"]),
])
def test_normalization_arrays_in_kerass_order(scale: bool, center: bool, batch: bool, names: List[str]) -> None:
    values = arrays(*[(6,)] * len(names))
    spec = LayerSpec("norm", "BatchNormalization" if batch else "LayerNormalization", "n", "n", 6,
                     {"scale": scale, "center": center, "batch": batch})
    expected = {f"stage.{name}": value for name, value in zip(names, values, strict=True)}
    assert_state(state_of([spec], [values]), expected)


@pytest.mark.parametrize("use_bias", [True, False])
def test_a_conv1d_kernel_becomes_out_in_k(use_bias: bool) -> None:
    values = arrays((3, 3, 4), (4,))[:2 if use_bias else 1]
    spec = LayerSpec("conv", "Conv1D", "c", "c", 6, {"kernel_size": 3, "groups": 2, "filters": 4, "use_bias": use_bias})
    kernel = values[0]
    want = np.stack([np.stack([kernel[:, i, o] for i in range(3)]) for o in range(4)])   # [out][in/g][k]
    expected = {"stage.conv.weight": want} | ({"stage.conv.bias": values[1]} if use_bias else {})
    assert_state(state_of([spec], [values]), expected)


def test_a_time_distributed_layer_is_its_inner_layer_under_inner() -> None:
    values = arrays((6, 2), (2,))
    inner = LayerSpec("dense", "Dense", "d", "d", 6, {"units": 2, "use_bias": True})
    spec = LayerSpec("timedistributed", "TimeDistributed", "t", "t", 6, {"inner": dataclasses.asdict(inner)})
    assert_state(state_of([spec], [values]),
                 {"stage.inner.linear.weight": values[0].T, "stage.inner.linear.bias": values[1]})


def test_recurrent_layers_are_numbered_per_layer_and_direction() -> None:
    options = {"cell": "LSTM", "units": 3, "use_bias": True, "bidirectional": True}
    specs = [LayerSpec("recurrent", "Bidirectional", "a", "a", 5, options),
             LayerSpec("recurrent", "Bidirectional", "b", "b", 6, options)]
    values = [arrays((5, 12), (3, 12), (12,), (5, 12), (3, 12), (12,)),
              arrays((6, 12), (3, 12), (12,), (6, 12), (3, 12), (12,))]
    expected = {}
    for layer, layer_values in enumerate(values):
        for direction, suffix in enumerate(["", "_reverse"]):
            chunk = _direction("LSTM", 3, layer_values[3 * direction:3 * direction + 3])
            for name, value in zip(["weight_ih", "weight_hh", "bias_ih", "bias_hh"], chunk, strict=True):
                expected[f"stage.block.{name}_l{layer}{suffix}"] = value
    assert_state(state_of(specs, values), expected)


def test_a_one_direction_recurrent_layer_goes_to_rnn() -> None:
    values = arrays((5, 9), (3, 9), (2, 9))
    spec = LayerSpec("recurrent", "GRU", "g", "g", 5, {"cell": "GRU", "units": 3, "use_bias": True,
                                                       "bidirectional": False})
    chunk = _direction("GRU", 3, values)
    expected = {f"stage.rnn.{name}_l0": value
                for name, value in zip(["weight_ih", "weight_hh", "bias_ih", "bias_hh"], chunk, strict=True)}
    assert_state(state_of([spec], [values]), expected)


def test_an_attention_layer_keeps_kerass_arrays_under_their_names() -> None:
    values = arrays((), ())
    spec = LayerSpec("attention", "Attention", "a", "a", 6, {"op": "Attention", "use_scale": True,
                                                          "score_mode": "concat"})
    assert_state(state_of([spec], [values]),
                 {"stage.scale": values[0], "stage.concat_score_weight": values[1]})


# ``load_keras_weights`` and ``from_keras`` on real files: the committed Keras 2 fixtures (``tf_keras``'s ``.keras``
# archives use Keras 3's ``layers/<path>`` layout; their ``model.weights.h5`` is a ``.weights.h5`` file) and
# files written here with h5py. No Keras needed.

FIXTURES = Path(__file__).parent / "fixtures" / "keras2"


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


def weights_of(archive: Path, target: Path) -> Path:
    """The ``model.weights.h5`` inside a ``.keras`` archive, written to ``target``."""
    with zipfile.ZipFile(archive) as zipped:
        target.write_bytes(zipped.read("model.weights.h5"))
    return target


def with_weights(archive: Path, target: Path, edit: Callable[[h5py.File], None]) -> Path:
    """A copy of a ``.keras`` archive whose ``model.weights.h5`` went through ``edit``."""
    weights = weights_of(archive, target.with_suffix(".weights.h5"))
    with h5py.File(weights, "r+") as h5:
        edit(h5)
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(target, "w") as copy:
        for member in source.namelist():
            copy.writestr(member, weights.read_bytes() if member == "model.weights.h5" else source.read(member))
    return target


def zeroed(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """``module``'s state (copied), then every entry of it set to zero, so a load has to write each one."""
    state = {key: value.clone() for key, value in module.state_dict().items()}
    with torch.no_grad():
        for value in module.state_dict().values():
            value.zero_()
    return state


def lstm_layer(name: str, features: int, units: int, fill: float) -> Dict[str, np.ndarray]:
    """A ``Bidirectional(LSTM)``'s groups in a ``.weights.h5`` file, each array filled with one value."""
    out = {}
    for side in ("forward_layer", "backward_layer"):
        for index, shape in enumerate([(features, 4 * units), (units, 4 * units), (4 * units,)]):
            out[f"layers/{name}/{side}/cell/vars/{index}"] = np.full(shape, fill + index, dtype="float32")
    return out


def write(path: Path, datasets: Dict[str, np.ndarray], attrs: Optional[Dict[str, object]] = None) -> Path:
    with h5py.File(path, "w") as h5:
        for key, value in datasets.items():
            h5.create_dataset(key, data=value)
        for key, value in (attrs or {}).items():
            h5.attrs[key] = value
    return path


def test_a_keras_3_weights_file_with_a_stray_layer_names_attribute_is_still_read_as_keras_3(tmp_path: Path) -> None:
    """The ``layers`` group decides the layout; ``layer_names`` (Keras 2's marker) only where it is missing."""
    path = write(tmp_path / "w.weights.h5", lstm_layer("bidirectional", 2, 3, 1.0),
                 {"layer_names": [b"bidirectional"]})
    block = load_keras_weights(BiLSTM(2, 3), str(path))
    assert (block.weight_ih_l0 == 1.0).all() and (block.bias_ih_l0_reverse == 3.0).all()


def test_a_block_takes_its_groups_by_path_whatever_name_they_record(tmp_path: Path) -> None:
    """``layers=`` names groups by path (Keras matches by path too); a group recording another layer's name is
    not refused, as ``from_keras`` refuses it (below)."""
    path = write(tmp_path / "w.weights.h5", lstm_layer("encoder", 2, 3, 1.0))
    with h5py.File(path, "r+") as h5:
        h5["layers/encoder"].create_group("vars").attrs["name"] = "bidirectional_7"
    block = load_keras_weights(BiLSTM(2, 3), str(path), layers=["encoder"])
    assert (block.weight_hh_l0 == 2.0).all() and (block.bias_ih_l0 == 3.0).all()


@pytest.mark.parametrize("name", ["seq_bilstm3", "fn_branches"])   # a KerasModel, a KerasGraphModel
def test_an_imported_module_takes_a_weights_file_by_path_whatever_name_it_records(tmp_path: Path,
                                                                                  name: str) -> None:
    module = from_keras(str(FIXTURES / f"{name}.keras"))
    assert type(module).__name__ == ("KerasModel" if name.startswith("seq") else "KerasGraphModel")
    path = weights_of(FIXTURES / f"{name}.keras", tmp_path / "w.weights.h5")
    with h5py.File(path, "r+") as h5:
        for group in h5["layers"].values():
            group.require_group("vars").attrs["name"] = "renamed"
    expected = zeroed(module)
    assert load_keras_weights(module, str(path)) is module
    assert list(module.state_dict()) == list(expected)
    for key, value in expected.items():
        assert torch.equal(module.state_dict()[key], value), key


def test_from_keras_refuses_a_weights_group_recording_another_layers_name(tmp_path: Path) -> None:
    def rename(to: str) -> Callable[[h5py.File], None]:
        return lambda h5: h5["layers/bidirectional"].require_group("vars").attrs.__setitem__("name", to)

    own = with_weights(FIXTURES / "seq_bilstm3.keras", tmp_path / "own.keras", rename("bidirectional"))
    reference = from_keras(str(FIXTURES / "seq_bilstm3.keras")).state_dict()
    module = from_keras(str(own))      # its own name recorded: imported, the same arrays
    assert all(torch.equal(module.state_dict()[key], value) for key, value in reference.items())
    other = with_weights(FIXTURES / "seq_bilstm3.keras", tmp_path / "other.keras", rename("encoder"))
    with pytest.raises(KerasImportError, match=exact(
            "layer 'bidirectional': weights group layers/bidirectional belongs to layer 'encoder'")):
        from_keras(str(other))


def test_from_keras_checks_every_layers_shapes_before_it_reads_any_values(tmp_path: Path) -> None:
    """A file with NaN in its first layer and a wrong shape in its last is refused for the shape: all shapes are
    checked (cheap, from the file's headers) before the first array is read."""
    def spoil(h5: h5py.File) -> None:
        h5["layers/embedding/vars/0"][0, 0] = np.nan
        del h5["layers/dense/vars/0"]
        h5["layers/dense/vars"].create_dataset("0", data=np.zeros((3, 1), dtype="float32"))

    path = with_weights(FIXTURES / "seq_bilstm3.keras", tmp_path / "spoilt.keras", spoil)
    with pytest.raises(KerasImportError, match=exact(
            "layer 'dense': weight '/layers/dense/vars/0' has shape (3, 1), expected (4, 3)")):
        from_keras(str(path))


def test_tensors_are_float32_in_the_arrays_shapes() -> None:
    """Whatever array type comes in (float64 from a computation, a transposed view, a 0-d scale), a float32
    tensor of the same shape and values comes out."""
    scale, kernel = np.float64(0.125), np.arange(6, dtype=np.float64).reshape(2, 3).T
    out = _tensors({"scale": np.asarray(scale), "kernel": kernel})
    assert list(out) == ["scale", "kernel"]
    assert out["scale"].dtype == out["kernel"].dtype == torch.float32
    assert out["scale"].shape == () and out["kernel"].shape == (3, 2)
    assert out["scale"].item() == 0.125 and torch.equal(out["kernel"], torch.tensor(kernel, dtype=torch.float32))


def test_install_refuses_a_missing_key_alone_and_an_unexpected_key_alone() -> None:
    module = torch.nn.Linear(2, 3)
    weight = module.weight.detach().clone()
    with pytest.raises(KerasImportError,
                       match=exact("weights do not match the module: missing ['bias'], unexpected []")):
        _install(module, {"weight": torch.ones(3, 2)})
    with pytest.raises(KerasImportError,
                       match=exact("weights do not match the module: missing [], unexpected ['scale']")):
        _install(module, {"weight": torch.ones(3, 2), "bias": torch.ones(3), "scale": torch.ones(3)})
    assert torch.equal(module.weight, weight)      # nothing copied


# ``_read_layer`` on ``.keras``-layout files written here: where each layer class keeps its arrays (Keras 3's
# ``layers/<path>/<sub-layer>/vars/<i>``), the order it reads them in, and what it checks.

def keras_weights(path: Path, datasets: Dict[str, np.ndarray], names: Optional[Dict[str, str]] = None) -> WeightFile:
    """A ``.weights.h5`` file (``names``: a ``vars`` group -> the layer name it records), opened."""
    write(path, datasets)
    with h5py.File(path, "r+") as h5:
        for group, name in (names or {}).items():
            h5.require_group(group).attrs["name"] = name
    return open_weights(str(path), "keras")


def numbered(prefix: str, shapes: List[tuple], start: float) -> Dict[str, np.ndarray]:
    """``prefix/vars/0, 1, ...`` of the given shapes, array i filled with ``start + i``."""
    return {f"{prefix}/vars/{i}": np.full(shape, start + i, dtype="float32") for i, shape in enumerate(shapes)}


RNN = {"units": 2, "use_bias": True, "bidirectional": False}
DENSE = LayerSpec("dense", "Dense", "d", "d", 3, {"units": 2, "use_bias": True})
MHA = {"op": "MultiHeadAttention", "num_heads": 1, "key_dim": 2, "value_dim": 2, "use_bias": False, "output_dim": 3,
       "query_features": 3, "key_features": 3, "value_features": 3}
MHA_SHAPES = [(3, 1, 2), (3, 1, 2), (3, 1, 2), (1, 2, 3)]


@pytest.mark.parametrize(("spec", "layout"), [
    (LayerSpec("recurrent", "Bidirectional", "bi", "x", 3, {**RNN, "cell": "LSTM", "bidirectional": True}),
     [("forward_layer/cell", [(3, 8), (2, 8), (8,)]), ("backward_layer/cell", [(3, 8), (2, 8), (8,)])]),
    (LayerSpec("recurrent", "LSTM", "l", "x", 3, {**RNN, "cell": "LSTM"}), [("cell", [(3, 8), (2, 8), (8,)])]),
    (LayerSpec("recurrent", "GRU", "g", "x", 3, {**RNN, "cell": "GRU"}), [("cell", [(3, 6), (2, 6), (2, 6)])]),
    (LayerSpec("recurrent", "SimpleRNN", "s", "x", 3, {**RNN, "cell": "SimpleRNN"}),
     [("cell", [(3, 2), (2, 2), (2,)])]),
    (LayerSpec("timedistributed", "TimeDistributed", "t", "x", 3, {"inner": dataclasses.asdict(DENSE)}),
     [("layer", [(3, 2), (2,)])]),
    (LayerSpec("timedistributed", "TimeDistributed", "t", "x", 3, {"inner": dataclasses.asdict(LayerSpec(
        "recurrent", "Bidirectional", "bi", "bi", 3, {**RNN, "cell": "GRU", "bidirectional": True}))}),
     [("layer/forward_layer/cell", [(3, 6), (2, 6), (2, 6)]), ("layer/backward_layer/cell", [(3, 6), (2, 6), (2, 6)])]),
    (LayerSpec("timedistributed", "TimeDistributed", "t", "x", 3, {"inner": dataclasses.asdict(LayerSpec(
        "recurrent", "LSTM", "l", "l", 3, {**RNN, "cell": "LSTM"}))}), [("layer/cell", [(3, 8), (2, 8), (8,)])]),
    (LayerSpec("timedistributed", "TimeDistributed", "t", "x", 3, {"inner": dataclasses.asdict(LayerSpec(
        "recurrent", "GRU", "g", "g", 3, {**RNN, "cell": "GRU"}))}), [("layer/cell", [(3, 6), (2, 6), (2, 6)])]),
    (LayerSpec("timedistributed", "TimeDistributed", "t", "x", 3, {"inner": dataclasses.asdict(LayerSpec(
        "recurrent", "SimpleRNN", "s", "s", 3, {**RNN, "cell": "SimpleRNN"}))}),
     [("layer/cell", [(3, 2), (2, 2), (2,)])]),
    (LayerSpec("attention", "MultiHeadAttention", "m", "x", 3, MHA),
     [(part, [shape]) for part, shape in zip(["query_dense", "key_dense", "value_dense", "output_dense"], MHA_SHAPES,
                                             strict=True)]),
    (LayerSpec("attention", "MultiHeadAttention", "m", "x", 3, {**MHA, "keras2": True}),
     [(part, [shape]) for part, shape in zip(["_query_dense", "_key_dense", "_value_dense", "_output_dense"],
                                             MHA_SHAPES, strict=True)]),
])
def test_each_layer_class_is_read_from_its_sub_layers_in_kerass_order(tmp_path: Path, spec: LayerSpec,
                                                                      layout: list) -> None:
    datasets: Dict[str, np.ndarray] = {}
    for sub, shapes in layout:
        datasets |= numbered(f"layers/x/{sub}", shapes, 10.0 * len(datasets))
    weights = keras_weights(tmp_path / "w.weights.h5", datasets)
    try:
        got = _read_layer(weights, spec)
        checked = [dataset.name for dataset in _read_layer(weights, spec, read=False)]   # the datasets, unread
    finally:
        weights.close()
    assert len(got) == len(datasets)
    for array, (key, value) in zip(got, datasets.items(), strict=True):
        assert array.dtype == np.float32 and np.array_equal(array, value), key
    assert checked == ["/" + key for key in datasets]


def test_a_group_is_checked_against_the_layer_name_it_records(tmp_path: Path) -> None:
    """Refused naming the layer, its group and the name the group records; accepted when that is the layer's
    name (not its path), or without ``check_name`` (``load_keras_weights``: by path only)."""
    spec = LayerSpec("dense", "Dense", "head", "x", 3, {"units": 2, "use_bias": True})
    datasets = numbered("layers/x", [(3, 2), (2,)], 1.0)
    for recorded in ["x", "other"]:
        weights = keras_weights(tmp_path / f"{recorded}.weights.h5", datasets, {"layers/x/vars": recorded})
        try:
            with pytest.raises(KerasImportError, match=exact(
                    f"layer 'head': weights group layers/x belongs to layer {recorded!r}")):
                _read_layer(weights, spec)
            assert [a[0].tolist() for a in _read_layer(weights, spec, check_name=False)] == [[1.0, 1.0], 2.0]
        finally:
            weights.close()
    weights = keras_weights(tmp_path / "own.weights.h5", datasets, {"layers/x/vars": "head"})
    try:
        assert len(_read_layer(weights, spec)) == 2
    finally:
        weights.close()


def test_a_conv1d_kernel_of_another_shape_is_refused_naming_both_shapes_in_whole_numbers(tmp_path: Path) -> None:
    spec = LayerSpec("conv", "Conv1D", "c", "x", 6, {"kernel_size": 3, "groups": 2, "filters": 4, "use_bias": False})
    weights = keras_weights(tmp_path / "w.weights.h5", numbered("layers/x", [(3, 6, 4)], 1.0))
    try:
        with pytest.raises(KerasImportError, match=exact(
                "layer 'c': weight '/layers/x/vars/0' has shape (3, 6, 4), expected (3, 3, 4)")):
            _read_layer(weights, spec)
    finally:
        weights.close()


def test_a_keras_2_weights_file_missing_a_listed_weight_is_refused_naming_the_layer(tmp_path: Path) -> None:
    """Keras 2's ``save_weights("w.h5")``: the layer's group lists its arrays in ``weight_names``; one listed but
    absent is refused, naming the layer and the weight."""
    path = write(tmp_path / "w.h5", {"bidirectional/bidirectional/forward_gru/kernel:0": np.zeros((2, 9), "float32")},
                 {"layer_names": [b"bidirectional"]})
    with h5py.File(path, "r+") as h5:
        h5["bidirectional"].attrs["weight_names"] = [b"bidirectional/forward_gru/kernel:0",
                                                     b"bidirectional/forward_gru/recurrent_kernel:0"]
    with pytest.raises(KerasImportError, match=exact(
            "layer 'bidirectional': weight 'bidirectional/forward_gru/recurrent_kernel:0' listed in weight_names "
            "is missing")):
        load_keras_weights(BiGRU(2, 3), str(path))
