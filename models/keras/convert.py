"""Keras weights -> the imported module's state_dict, and the two entry points.

Mapping (verified against Keras 3): a kernel ``(in, G*H)`` transposes to ``weight_ih (G*H, in)``, the recurrent
kernel likewise to ``weight_hh``; LSTM gates i, f, c, o keep their order and ``bias (4H,)`` becomes ``bias_ih``
with ``bias_hh`` zero; GRU gates z, r, h reorder to PyTorch's r, z, n and the ``(2, 3H)`` bias splits into
``bias_ih`` (row 0) and ``bias_hh`` (row 1); a ``reset_after=False`` GRU's single ``bias (3H,)`` becomes
``bias_ih`` with ``bias_hh`` zero (see ``models/blocks/gru_reset_before.py``); SimpleRNN as LSTM with one gate; Dense
(or ``TimeDistributed(Dense)``) ``kernel (in, out)`` transposes; Embedding is as is. Keras 2 files use the
same arrays and orders (``.h5``: ``model_weights/<name>`` by ``weight_names``; ``tf_keras``'s ``.keras``:
Keras 3's ``layers/<path>`` layout, ``MultiHeadAttention``'s sub-layers named ``_query_dense`` ... ``_output_dense``).
"""

import dataclasses
import json
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..blocks.base import _BiRNNBase
from ..cells import BY_MODE
from .archive import (
    WeightFile,
    check_dataset,
    keras_layer_datasets,
    legacy_layer_datasets,
    open_weights,
    read_dataset,
    read_model_file,
)
from .config import LayerSpec, parse_model_config
from .errors import KerasImportError
from .graph import NotAChain
from .graph_config import parse_graph
from .graph_module import KerasGraphModel
from .module import KerasModel, module_from_specs, plan_stages

if TYPE_CHECKING:
    from .text_vectorization import TextVectorizer


def _expected_shapes(spec: LayerSpec) -> List[Tuple[int, ...]]:
    o = spec.options
    if spec.kind == "embedding":
        return [(o["input_dim"], o["output_dim"])]
    if spec.kind == "dense":
        return [(spec.in_features, o["units"])] + ([(o["units"],)] if o["use_bias"] else [])
    if spec.kind == "norm":
        size = (spec.in_features,)
        return [size] * (int(o["scale"]) + int(o["center"]) + (2 if o["batch"] else 0))
    if spec.kind == "conv":
        kernel = (o["kernel_size"], spec.in_features // o["groups"], o["filters"])
        return [kernel] + ([(o["filters"],)] if o["use_bias"] else [])
    if spec.kind == "timedistributed":
        return _expected_shapes(LayerSpec(**o["inner"]))
    if spec.kind == "attention":
        from .attention import attention_shapes
        return attention_shapes(spec)
    if spec.kind != "recurrent":
        return []
    width = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}[o["cell"]] * o["units"]
    one = [(spec.in_features, width), (o["units"], width)]
    if o["use_bias"]:
        one.append((2, width) if o["cell"] == "GRU" and o.get("reset_after", True) else (width,))
    return one * (2 if o["bidirectional"] else 1)


def _read_layer(weights: WeightFile, spec: LayerSpec, check_name: bool = True, read: bool = True) -> List[Any]:
    """The checked arrays of one layer, in Keras's variable order (forward direction first). A ``.keras``
    group records its layer's name; ``check_name`` insists it is ``spec.name`` (Keras itself matches by path)."""
    where = f"layer {spec.name!r}"
    if weights.kind == "keras":
        nested = {"Bidirectional": ["forward_layer/cell", "backward_layer/cell"], "LSTM": ["cell"], "GRU": ["cell"],
                  "SimpleRNN": ["cell"], "TimeDistributed": ["layer"],
                  "MultiHeadAttention": ["query_dense", "key_dense", "value_dense", "output_dense"]
                  }.get(spec.class_name, [])
        if spec.class_name == "MultiHeadAttention" and spec.options.get("keras2"):   # tf_keras's attribute names
            nested = ["_query_dense", "_key_dense", "_value_dense", "_output_dense"]
        if spec.kind == "timedistributed":      # the wrapped layer's groups under ``layer``
            inner = spec.options["inner"]["class_name"]
            nested = ["layer"] + [f"layer/{sub}" for sub in {"Bidirectional": ["forward_layer/cell",
                      "backward_layer/cell"], "LSTM": ["cell"], "GRU": ["cell"], "SimpleRNN": ["cell"]}.get(inner, [])]
        root = weights.h5.get("layers")
        if check_name and root is not None and spec.path in root:
            vars_group = root[spec.path].get("vars")
            stored = vars_group.attrs.get("name") if vars_group is not None else None
            if stored is not None and stored != spec.name:
                raise KerasImportError(f"{where}: weights group layers/{spec.path} belongs to layer {stored!r}")
        datasets = keras_layer_datasets(weights, spec.path, nested, where)
    else:
        datasets = legacy_layer_datasets(weights, spec.name, where)
    for dataset in datasets:
        check_dataset(weights, dataset, where)
    expected = _expected_shapes(spec)
    if len(datasets) != len(expected):
        raise KerasImportError(f"{where}: expected {len(expected)} weight arrays, the file holds {len(datasets)}")
    for dataset, shape in zip(datasets, expected, strict=True):
        if tuple(dataset.shape or ()) != shape:
            raise KerasImportError(f"{where}: weight {dataset.name!r} has shape {dataset.shape}, expected {shape}")
    return [read_dataset(dataset, where) for dataset in datasets] if read else datasets


def _gru_order(array: np.ndarray, units: int) -> np.ndarray:
    """Keras z, r, h blocks on axis 0 -> PyTorch r, z, n."""
    return np.concatenate([array[units:2 * units], array[:units], array[2 * units:]], 0)


def _direction(cell: str, units: int, arrays: List[np.ndarray]) -> List[np.ndarray]:
    """One direction's Keras arrays -> ``[weight_ih, weight_hh, (bias_ih, bias_hh)]``."""
    w_ih, w_hh = arrays[0].T, arrays[1].T
    if cell == "GRU":
        w_ih, w_hh = _gru_order(w_ih, units), _gru_order(w_hh, units)
    out = [w_ih, w_hh]
    if len(arrays) == 3:
        if cell == "GRU" and arrays[2].ndim == 2:
            out += [_gru_order(arrays[2][0], units), _gru_order(arrays[2][1], units)]
        elif cell == "GRU":  # reset_after=False: one bias, all of it on the input side
            out += [_gru_order(arrays[2], units), np.zeros_like(arrays[2])]
        else:
            out += [arrays[2], np.zeros_like(arrays[2])]
    return out


def _group_state(prefix: str, group: List[Dict], arrays_of: Dict[int, List[np.ndarray]],
                 state: Dict[str, np.ndarray]) -> None:
    """The state of one stage (``prefix``: its key in the module) from its layers' Keras arrays."""
    for layer, spec in enumerate(group):
        values, o = arrays_of[spec["_id"]], spec["options"]
        if spec["kind"] == "embedding":
            state[prefix + "embedding.weight"] = values[0]
        elif spec["kind"] == "dense":
            state[prefix + "linear.weight"] = values[0].T
            if o["use_bias"]:
                state[prefix + "linear.bias"] = values[1]
        elif spec["kind"] == "norm":
            names = (["gamma"] if o["scale"] else []) + (["beta"] if o["center"] else [])
            names += ["moving_mean", "moving_variance"] if o["batch"] else []
            for name, value in zip(names, values, strict=True):
                state[prefix + name] = value
        elif spec["kind"] == "conv":
            state[prefix + "conv.weight"] = values[0].transpose(2, 1, 0)      # (k, in/g, out) -> (out, in/g, k)
            if o["use_bias"]:
                state[prefix + "conv.bias"] = values[1]
        elif spec["kind"] == "timedistributed":
            _group_state(prefix + "inner.", [{**o["inner"], "_id": spec["_id"]}], arrays_of, state)
        elif spec["kind"] == "attention":
            from .attention import attention_state
            attention_state(prefix, spec, values, state)
        elif spec["kind"] == "recurrent":
            per = len(values) // (2 if o["bidirectional"] else 1)
            names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
            owner = "block" if o["bidirectional"] else "rnn"
            suffixes = ["", "_reverse"] if o["bidirectional"] else [""]
            for direction, suffix in enumerate(suffixes):
                chunk = _direction(o["cell"], o["units"], values[direction * per:(direction + 1) * per])
                for name, value in zip(names, chunk, strict=False):
                    state[f"{prefix}{owner}.{name}_l{layer}{suffix}"] = value


def _tensors(state: Dict[str, np.ndarray]) -> Dict[str, torch.Tensor]:
    # ``reshape``: ``ascontiguousarray`` makes a 0-d array (an attention scale) 1-d
    return {key: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32).reshape(np.shape(value)))
            for key, value in state.items()}


def _state_dict(specs: List[LayerSpec], arrays: List[List[np.ndarray]]) -> Dict[str, torch.Tensor]:
    """State dict of ``module_from_specs(specs)`` holding the Keras arrays (one list per spec)."""
    arrays_of = {id(spec): layer_arrays for spec, layer_arrays in zip(specs, arrays, strict=True)}
    state: Dict[str, np.ndarray] = {}
    groups = plan_stages([dataclasses.asdict(spec) | {"_id": id(spec)} for spec in specs])
    for index, group in enumerate(groups):
        _group_state(f"stages.{index}.", group, arrays_of, state)
    return _tensors(state)


def _graph_state(plan: Dict, specs: List[LayerSpec], arrays: List[List[np.ndarray]]) -> Dict[str, torch.Tensor]:
    """State dict of a graph module (``plan``: ``GraphPlan.to_json_dict``); a shared layer's arrays go to every
    node that calls it (the same parameters)."""
    arrays_of = {id(spec): layer_arrays for spec, layer_arrays in zip(specs, arrays, strict=True)}
    by_name = {spec.name: dataclasses.asdict(spec) | {"_id": id(spec)} for spec in specs}
    state: Dict[str, np.ndarray] = {}
    for index, node in enumerate(plan["nodes"]):
        group = [by_name[name] for name in node["layers"]]
        if group[0]["kind"] != "merge":
            _group_state(f"nodes.{index}.stage.", group, arrays_of, state)
    return _tensors(state)


def _install(module: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Copy a complete, shape-checked state dict in; checks everything before the first copy."""
    own = module.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise KerasImportError(f"weights do not match the module: missing {missing}, unexpected {extra}")
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise KerasImportError(f"weight {key}: shape {tuple(value.shape)} does not fit {tuple(own[key].shape)}")
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value)


def from_keras(path: str) -> nn.Module:
    """Import a Keras ``.keras`` archive or ``.h5`` full model (Keras 3, or Keras 2: tf.keras / ``tf_keras``) as a
    PyTorch module (eval mode): a ``KerasModel`` for a chain of layers, a ``KerasGraphModel`` for a functional
    graph (several inputs: a list in; several outputs: a list out).

    The module takes what the Keras model takes, token ids ``(B, T)`` int64 or features ``(B, T, F)`` float32,
    and returns what ``keras_model(x)`` returns: a tensor, or a ``(forward, backward)`` tuple for a model
    ending in ``Bidirectional(merge_mode=None)``. Raises ``KerasImportError`` naming the layer and reason.
    A model starting with ``TextVectorization`` is refused here: ``from_keras_text`` imports it.
    """
    config, weights = read_model_file(str(path))
    return _import(config, weights)


def from_keras_text(path: str) -> Tuple[nn.Module, "TextVectorizer"]:
    """Import a Keras model whose string input feeds a ``TextVectorization`` layer: ``(module, vectorizer)``, where
    ``vectorizer.encode(texts)`` turns raw strings into the token ids ``(B, L)`` the Keras layer gives and
    ``module(ids)`` returns what the Keras model returns on those strings. A model without one imports as with
    ``from_keras`` (``vectorizer`` then ``None``)."""
    from .text_vectorization import split_text_vectorization
    config, weights = read_model_file(str(path), text=True)
    try:
        config, vectorizer = split_text_vectorization(config)
    except BaseException:
        weights.close()
        raise
    return _import(config, weights), vectorizer


def _import(config: Dict[str, Any], weights: WeightFile) -> nn.Module:
    try:
        plan = None
        try:
            specs, _ = parse_model_config(config)
        except NotAChain:
            plan = parse_graph(config)
            specs = plan.layers
        checked = [_read_layer(weights, spec, read=False) for spec in specs]   # every shape before any read
        arrays = [[read_dataset(d, f"layer {spec.name!r}") for d in datasets] for spec, datasets in zip(specs, checked,
                                                                                                       strict=True)]
    finally:
        weights.close()
    if plan is None:
        module = module_from_specs(json.dumps([dataclasses.asdict(spec) for spec in specs]))
        _install(module, _state_dict(specs, arrays))
    else:
        plan_dict = plan.to_json_dict()
        module = module_from_specs(json.dumps(plan_dict))
        _install(module, _graph_state(plan_dict, specs, arrays))
    return module.eval()


def _block_specs(block: _BiRNNBase, names: List[str]) -> List[LayerSpec]:
    cell = BY_MODE[block.mode]
    specs: List[LayerSpec] = []
    features = block.input_size
    for path, mode in zip(names, block.merge_modes, strict=True):
        options = {"cell": cell.keras, "units": block.hidden_size, "use_bias": block.bias, "bidirectional": True,
                   "merge_mode": mode, "return_sequences": True, "activation": cell.activation,
                   "zero_output_for_mask": True, "reset_after": bool(getattr(block, "reset_after", True))}
        specs.append(LayerSpec("recurrent", "Bidirectional", path, path, features, options))
        features = block.hidden_size * (2 if mode in (None, "concat") else 1)
    return specs


def load_keras_weights(module: nn.Module, path: str, layers: Optional[List[str]] = None) -> nn.Module:
    """Load a Keras ``.weights.h5`` file (or a Keras 2 ``save_weights("x.h5")`` file, groups by layer name) into
    ``module``, all or nothing.

    ``module`` is a ``from_keras`` result (or ``module_from_specs``) of the same architecture, or a
    ``BiLSTM``/``BiGRU``/``BiRNN`` whose layers are the file's ``Bidirectional`` layers: by default the
    groups ``layers/bidirectional, layers/bidirectional_1, ...`` (Keras's own names in a ``.weights.h5``),
    or the group names given in ``layers`` (one per block layer).
    """
    weights = open_weights(str(path), "keras")
    try:
        if "layers" not in weights.h5 and "layer_names" in weights.h5.attrs:
            weights.kind = "legacy_weights"       # Keras 2 save_weights("x.h5"): one group per layer name
        elif "layers" not in weights.h5:
            raise KerasImportError(f"{path!r} is neither a Keras 3 .weights.h5 file (no 'layers' group) nor a "
                                   "Keras 2 weights file (no 'layer_names')")
        if isinstance(module, _BiRNNBase):
            names = layers or ["bidirectional" + (f"_{i}" if i else "") for i in range(module.num_layers)]
            if len(names) != module.num_layers:
                raise KerasImportError(f"{len(names)} layer names given for a {module.num_layers}-layer block")
            specs = _block_specs(module, names)
            arrays = [_read_layer(weights, spec, check_name=False) for spec in specs]
            state = {key.removeprefix("stages.0.block."): value for key, value in _state_dict(specs, arrays).items()}
        elif isinstance(module, KerasModel):
            specs = [LayerSpec(**spec) for spec in json.loads(module.keras_specs)]
            arrays = [_read_layer(weights, spec, check_name=False) for spec in specs]
            state = _state_dict(specs, arrays)
        elif isinstance(module, KerasGraphModel):
            plan_dict = json.loads(module.keras_specs)
            specs = [LayerSpec(**spec) for spec in plan_dict["layers"]]
            arrays = [_read_layer(weights, spec, check_name=False) for spec in specs]
            state = _graph_state(plan_dict, specs, arrays)
        else:
            raise KerasImportError(f"cannot map Keras weights onto a {type(module).__name__}; use a from_keras "
                                   "module or a BiLSTM/BiGRU/BiRNN block")
    finally:
        weights.close()
    _install(module, state)
    return module
