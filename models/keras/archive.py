"""Reading Keras files as data: a ``.keras`` zip, a legacy ``.h5`` full model, a ``.weights.h5``.

Nothing here runs the file: ``config.json`` (or the ``model_config`` attribute) is parsed as plain JSON,
weights are read with h5py after checks. Refused: zip members other than the expected ones or larger than
their caps, HDF5 soft and external links anywhere in the file, external or virtual dataset storage,
datasets whose declared size is over ``MAX_DATASET_ELEMENTS`` (or all together over
``MAX_TOTAL_ELEMENTS``), and weights that are not finite float32.
"""

import io
import json
import os
import re
import zipfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import h5py
import numpy as np

from .errors import KerasImportError

MAX_DATASET_ELEMENTS = 2**28
"""Largest declared size of one weight dataset (elements)."""
MAX_TOTAL_ELEMENTS = 2**30
"""Largest declared size of all weight datasets together (elements)."""
MAX_COMPRESSION_RATIO = 64
"""A member or dataset that expands more than this (Keras stores weights uncompressed) is refused unread."""
MAX_CONFIG_BYTES = 16 * 2**20
MAX_WEIGHTS_BYTES = 4 * 2**30
MAX_H5_ENTRIES = 100_000
_KERAS_MEMBERS = {"config.json": MAX_CONFIG_BYTES, "metadata.json": 2**20, "model.weights.h5": MAX_WEIGHTS_BYTES}


@dataclass
class WeightFile:
    """An open, link-checked HDF5 weights file: ``kind`` is ``"keras"`` (``layers/<path>/...vars/<i>``) or
    ``"legacy"`` (``model_weights/<name>/<weight_name>``)."""

    h5: h5py.File
    kind: str
    total_elements: int = 0

    def close(self) -> None:
        self.h5.close()


MAX_ASSET_BYTES = 256 * 2**20
_VOCABULARY_ASSET = re.compile(r"assets/[A-Za-z0-9_./-]{1,500}/vocabulary\.txt")


def _read_member(archive: zipfile.ZipFile, name: str) -> bytes:
    info = archive.getinfo(name)
    cap = _KERAS_MEMBERS.get(name, MAX_ASSET_BYTES)
    if info.file_size > cap:
        raise KerasImportError(f"archive member {name!r} declares {info.file_size} bytes, over the cap of {cap}")
    if info.file_size > MAX_COMPRESSION_RATIO * info.compress_size + 2**20:   # a zip bomb: refused before reading
        raise KerasImportError(f"archive member {name!r} expands {info.compress_size} bytes to {info.file_size}, "
                               f"over {MAX_COMPRESSION_RATIO}x: refused as a zip bomb")
    with archive.open(info) as handle:
        data = handle.read(cap + 1)
    if len(data) > cap or len(data) != info.file_size:
        raise KerasImportError(f"archive member {name!r} does not decompress to its declared size")
    return data


def _parse_json(data: bytes, what: str) -> Dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as error:
        raise KerasImportError(f"{what} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise KerasImportError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _check_links(group: h5py.Group, prefix: str, budget: List[int]) -> None:
    """Walk the whole file by links (never following one) and refuse anything but hard links."""
    for key in group.keys():
        budget[0] -= 1
        if budget[0] < 0:
            raise KerasImportError(f"weights file has more than {MAX_H5_ENTRIES} entries")
        path = f"{prefix}/{key}" if prefix else key
        link = group.get(key, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise KerasImportError(f"weights file entry {path!r} is an HDF5 external link; refused")
        if isinstance(link, h5py.SoftLink):
            raise KerasImportError(f"weights file entry {path!r} is an HDF5 soft link; refused")
        if not isinstance(link, h5py.HardLink):
            raise KerasImportError(f"weights file entry {path!r} is an HDF5 {type(link).__name__}; refused")
        child = group.get(key)
        if isinstance(child, h5py.Group):
            _check_links(child, path, budget)
        elif not isinstance(child, h5py.Dataset):
            raise KerasImportError(f"weights file entry {path!r} is neither a group nor a dataset")


def open_weights(source: Any, kind: str) -> WeightFile:
    """Open an HDF5 file (path or bytes) and check every link in it before anything is read."""
    try:
        h5 = h5py.File(io.BytesIO(source) if isinstance(source, bytes) else source, "r")
    except OSError as error:
        raise KerasImportError(f"weights are not a readable HDF5 file: {error}") from None
    try:
        _check_links(h5, "", [MAX_H5_ENTRIES])
    except BaseException:
        h5.close()
        raise
    return WeightFile(h5, kind)


SAVED_MODEL_HINT = (
    "A SavedModel holds TensorFlow graphs, not a Keras config, so it cannot be imported. Re-save it with "
    "TensorFlow as .h5 or .keras: `model = tf.keras.models.load_model(folder); model.save('model.h5')` "
    "(or 'model.keras'); on TensorFlow >= 2.16 install tf_keras and set TF_USE_LEGACY_KERAS=1 first "
    "(`import tf_keras; model = tf_keras.models.load_model(folder)`). Then import that file. A subclassed "
    "model has no config to save: rebuild it as a functional model of the same layers, or save its weights "
    "(`model.save_weights('w.h5')`) and load them with models.keras.load_keras_weights into a module of the same "
    "architecture (from_keras of a functional twin, or a BiLSTM/BiGRU/BiRNN block).")


def _refuse_saved_model(path: str) -> None:
    """A TensorFlow SavedModel folder (or its ``saved_model.pb``) gets a message saying how to re-save it."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise KerasImportError(f"{path!r} is a TensorFlow SavedModel folder (it holds saved_model.pb). "
                                   + SAVED_MODEL_HINT)
        raise KerasImportError(f"{path!r} is a folder; expected a .keras archive or an .h5 file")
    if os.path.basename(path) == "saved_model.pb":
        raise KerasImportError(f"{path!r} is the graph of a TensorFlow SavedModel folder. " + SAVED_MODEL_HINT)


def refuse_text_vectorization(config: Dict[str, Any]) -> None:
    """A ``TextVectorization`` layer (raw-string preprocessing) is refused by name, with advice that works."""
    layers = (config.get("config") or {}).get("layers") if isinstance(config.get("config"), dict) else None
    for entry in layers if isinstance(layers, list) else []:
        if isinstance(entry, dict) and entry.get("class_name") == "TextVectorization":
            name = entry.get("name") or (entry.get("config") or {}).get("name")
            raise KerasImportError(
                f"layer {name!r}: TextVectorization (raw-string preprocessing) is not imported by from_keras: use "
                "models.keras.from_keras_text(path), which returns the module and the layer's vectorizer "
                "(raw strings -> the same token ids). Or import the model after it: "
                "save `keras.Sequential(model.layers[1:])` (Sequential) or `keras.Model(<the layer after it>.input, "
                "model.output)` (functional) and import that file.")


def read_model_file(path: str, text: bool = False) -> Tuple[Dict[str, Any], WeightFile]:
    """``.keras`` or legacy ``.h5`` full model -> ``(config dict, weights)``; the caller closes the weights.
    Keras 3 and Keras 2 (``tf_keras``) files share these layouts; a TensorFlow SavedModel folder is refused.
    ``text``: a ``TextVectorization`` layer is let through, and its ``vocabulary.txt`` assets are read (as text,
    into ``config["_assets"]``)."""
    _refuse_saved_model(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            assets = [n for n in names if text and _VOCABULARY_ASSET.fullmatch(n) and ".." not in n.split("/")]
            unexpected = sorted(set(names) - set(_KERAS_MEMBERS) - set(assets))
            if unexpected and "config.json" in names and not text:   # assets of a TextVectorization: name it
                refuse_text_vectorization(_parse_json(_read_member(archive, "config.json"), "config.json"))
            if unexpected:
                raise KerasImportError(f".keras archive holds unexpected members {unexpected}; expected only "
                                       f"{sorted(_KERAS_MEMBERS)} (sharded weights and assets are not supported)")
            if len(names) != len(set(names)):
                raise KerasImportError(".keras archive holds duplicate member names")
            for required in ("config.json", "model.weights.h5"):
                if required not in names:
                    raise KerasImportError(f".keras archive has no {required!r}")
            config = _parse_json(_read_member(archive, "config.json"), "config.json")
            if not text:
                refuse_text_vectorization(config)
            try:
                if text:
                    config["_assets"] = {n: _read_member(archive, n).decode("utf-8") for n in assets}
            except UnicodeDecodeError:
                raise KerasImportError("a vocabulary.txt asset is not UTF-8 text") from None
            weights = _read_member(archive, "model.weights.h5")
            if "metadata.json" in names:   # which Keras wrote it: activations such as hard_sigmoid differ
                version = _parse_json(_read_member(archive, "metadata.json"), "metadata.json").get("keras_version")
                config["_keras_version"] = str(version)
        return config, open_weights(weights, "keras")
    weights_file = open_weights(path, "legacy")
    try:
        raw = weights_file.h5.attrs.get("model_config")
        if raw is None:
            raise KerasImportError(f"{path!r} is neither a .keras archive nor a full-model .h5 (no model_config); "
                                   "use load_keras_weights for a .weights.h5 file")
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8")
        if not isinstance(raw, str) or len(raw) > MAX_CONFIG_BYTES:
            raise KerasImportError("model_config attribute is not a JSON string of sane size")
        if "model_weights" not in weights_file.h5:
            raise KerasImportError("legacy .h5 file has no 'model_weights' group")
        config = _parse_json(raw.encode("utf-8"), "model_config")
        if not text:
            refuse_text_vectorization(config)
        version = weights_file.h5.attrs.get("keras_version")
        config["_keras_version"] = version.decode("utf-8") if isinstance(version, bytes) else str(version)
        return config, weights_file
    except BaseException:
        weights_file.close()
        raise


def check_dataset(weights: WeightFile, dataset: h5py.Dataset, where: str) -> None:
    """Refuse before reading: declared size over the caps, external or virtual storage, a dtype not float32."""
    shape = dataset.shape
    size = int(np.prod(shape, dtype=np.float64)) if shape else 1
    if shape is None or size > MAX_DATASET_ELEMENTS:
        raise KerasImportError(f"{where}: weight {dataset.name!r} declares shape {shape}, over the cap of "
                               f"{MAX_DATASET_ELEMENTS} elements")
    weights.total_elements += size
    if weights.total_elements > MAX_TOTAL_ELEMENTS:
        raise KerasImportError(f"{where}: weights together declare over {MAX_TOTAL_ELEMENTS} elements")
    stored = dataset.id.get_storage_size()
    if size * dataset.dtype.itemsize > MAX_COMPRESSION_RATIO * stored + 2**20:   # unwritten or bomb-compressed
        raise KerasImportError(f"{where}: weight {dataset.name!r} declares {size} values but the file stores "
                               f"{stored} bytes of them; refused")
    if dataset.external or dataset.is_virtual:
        raise KerasImportError(f"{where}: weight {dataset.name!r} uses external or virtual storage; refused")
    if dataset.dtype not in (np.dtype("<f4"), np.dtype(">f4")):
        raise KerasImportError(f"{where}: weight {dataset.name!r} has dtype {dataset.dtype}, expected float32")


def read_dataset(dataset: h5py.Dataset, where: str) -> np.ndarray:
    """One weight array (after ``check_dataset``), refused unless every value is finite."""
    array = np.asarray(dataset[()], dtype=np.float32)
    if not np.isfinite(array).all():
        raise KerasImportError(f"{where}: weight {dataset.name!r} holds NaN or Inf")
    return array


def _numbered_vars(group: Optional[Any], where: str) -> List[h5py.Dataset]:
    """Datasets ``vars/0, vars/1, ...`` of a ``.keras`` layer group, in order; nothing else allowed there."""
    if group is None:
        return []
    if not isinstance(group, h5py.Group):
        raise KerasImportError(f"{where}: {group.name!r} is not a group")
    keys = list(group.keys())
    expected = [str(i) for i in range(len(keys))]
    if sorted(keys, key=lambda k: (len(k), k)) != expected:
        raise KerasImportError(f"{where}: unexpected weight entries {sorted(keys)} in {group.name!r}")
    return [group[k] for k in expected]


def keras_layer_datasets(weights: WeightFile, path: str, nested: List[str], where: str) -> List[h5py.Dataset]:
    """``.keras`` layout: the datasets of ``layers/<path>`` found at ``vars`` and under ``nested`` sub-paths
    (e.g. ``["forward_layer/cell", "backward_layer/cell"]``), in that order. Any dataset elsewhere under
    the layer is refused, so the count is exact."""
    root = weights.h5.get("layers")
    group = None if root is None else root.get(path)
    if group is None:
        return []
    found: List[h5py.Dataset] = []
    allowed = {"vars"} | {f"{sub}/vars" for sub in nested}
    for sub in ["", *nested]:
        found += _numbered_vars(group.get(f"{sub}/vars" if sub else "vars"), where)
    seen: List[str] = []
    group.visititems(lambda name, obj: seen.append(name) if isinstance(obj, h5py.Dataset) else None)
    stray = [name for name in seen if name.rsplit("/", 1)[0] not in allowed]
    if stray:
        raise KerasImportError(f"{where}: unexpected weights {stray} under {group.name!r}")
    return found


def legacy_layer_datasets(weights: WeightFile, name: str, where: str) -> List[h5py.Dataset]:
    """Legacy layout: ``model_weights/<name>`` (a full model) or ``<name>`` at the root (Keras 2's weights-only
    ``save_weights("x.h5")``) datasets in the order of its ``weight_names`` attribute."""
    root = weights.h5 if weights.kind == "legacy_weights" else weights.h5.get("model_weights")
    group = None if root is None else root.get(name)
    if group is None:
        return []
    names = group.attrs.get("weight_names", [])
    found: List[h5py.Dataset] = []
    for raw in names:
        key = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        item = group.get(key)
        if not isinstance(item, h5py.Dataset):
            raise KerasImportError(f"{where}: weight {key!r} listed in weight_names is missing")
        found.append(item)
    count: List[int] = []
    group.visititems(lambda _, obj: count.append(1) if isinstance(obj, h5py.Dataset) else None)
    if len(count) != len(found):
        raise KerasImportError(f"{where}: {len(count)} datasets under {group.name!r} but weight_names lists "
                               f"{len(found)}")
    return found
