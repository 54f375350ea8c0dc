"""The call graph of a Keras functional model (Keras 3 or Keras 2), as data: which layer is called on which
tensors, in an order where every call comes after the calls it reads.

A Keras layer may be called several times (a shared layer); each call is a node ``(layer, node_index)`` and
each output a tensor ``(layer, node_index, tensor_index)``. Keras 3 writes a call as ``{"args": [tensor or
[tensors]], "kwargs": {...}}`` with the source in ``tensor["config"]["keras_history"]``; Keras 2 as a list
``[[layer, node_index, tensor_index, kwargs], ...]``. Keras 3 also lists the ``keras.ops`` calls that build
masks (``NotEqual``, ``Any``, ``LogicalOr``, ...): they are not layers and are never run (masks are rebuilt
by Keras's rules); one that the outputs read as data is refused, since it is code.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .errors import KerasImportError
from .graph import as_object, fail

Tensor = Tuple[str, int, int]


@dataclass
class Call:
    """One call of a layer: ``sources`` are the tensors it reads (several for merge layers, ``as_list`` when
    called on a list), ``called_with_mask`` whether Keras 3 passed it a mask (None for Keras 2: not recorded)."""

    layer: str
    node: int
    entry: Dict[str, Any]
    sources: List[Tensor]
    as_list: bool
    kwargs: Dict[str, Any] = field(default_factory=dict)
    called_with_mask: Optional[bool] = None
    roles: List[str] = field(default_factory=list)


@dataclass
class Dag:
    """``entries``: the model's layer configs in config order (``keras.ops`` calls left out); ``inputs``: the
    model's input layers; ``calls``: the calls the outputs need, each after its sources; ``keras2``: the config
    was written by Keras 2 (nested-list inbound nodes)."""

    entries: List[Dict[str, Any]]
    inputs: List[str]
    calls: List[Call]
    outputs: List[Tensor]
    keras2: bool


def is_operation(entry: Dict[str, Any]) -> bool:
    """A ``keras.ops`` call listed among the layers of a Keras 3 functional config (not a layer)."""
    module = entry.get("module")
    if isinstance(module, str):
        return module.startswith("keras.src.ops")
    # A legacy .h5 drops "module": the operations Keras 3 records while building masks, by name (their configs
    # have no "trainable"; every layer's but InputLayer's and SpatialDropout1D's has)
    config = entry.get("config")
    return (entry.get("class_name") in _MASK_OPERATIONS and isinstance(config, dict) and "trainable" not in config)


_MASK_OPERATIONS = ("NotEqual", "Equal", "Any", "All", "ExpandDims", "ZerosLike", "OnesLike", "LogicalOr",
                    "LogicalAnd", "LogicalNot", "Concatenate", "Cast", "Squeeze", "Reshape", "BroadcastTo")


def _tensor(value: Any, name: str) -> Tensor:
    """``[layer, node_index, tensor_index, ...]`` -> a checked ``(layer, node_index, tensor_index)``."""
    if (not isinstance(value, list) or len(value) < 3 or not isinstance(value[0], str)
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value[1:3])):
        raise fail(name, f"inbound tensor {value!r} is not [layer, node_index, tensor_index]; malformed config")
    return value[0], value[1], value[2]


def _keras3_tensor(value: Any, name: str) -> Optional[Tensor]:
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        history = as_object(value.get("config"), name, "the inbound tensor's config").get("keras_history")
        return _tensor(history, name)
    return None


def _parse_node(node: Any, name: str) -> Tuple[List[Tensor], bool, Dict[str, Any], Optional[bool], bool, List[str]]:
    """One inbound node -> ``(sources, as_list, kwargs, called_with_mask, keras2, roles)``; ``roles`` names each
    source of a call on several positional tensors or with tensors as keyword arguments (``MultiHeadAttention``:
    ``["arg0", "arg1", "key"]``), else is empty. A Keras 2 node names tensors passed by keyword in its kwargs
    (``mha(q, v)`` is saved as ``[["q", 0, 0, {"value": ["v", 0, 0]}]]``)."""
    if isinstance(node, list):                                     # Keras 2
        if not node or not all(isinstance(tensor, list) for tensor in node):
            raise fail(name, f"inbound node {node!r} is not a list of [layer, node_index, tensor_index, kwargs]; "
                       "malformed config")
        sources = [_tensor(tensor, name) for tensor in node]
        kwargs: Dict[str, Any] = {}
        for tensor in node:
            kwargs.update(as_object(tensor[3] if len(tensor) > 3 else None, name, "the call arguments"))
        roles: List[str] = []
        for key in ("query", "value", "key"):
            if isinstance(kwargs.get(key), list):
                roles = roles or [f"arg{i}" for i in range(len(sources))]
                sources.append(_tensor(kwargs[key], name))
                roles.append(key)
        return sources, len(node) > 1, kwargs, None, True, roles
    if not isinstance(node, dict):
        raise fail(name, f"inbound node {node!r} is neither a Keras 3 dict nor a Keras 2 list; malformed config")
    args = node.get("args")
    if not isinstance(args, list) or not args:
        raise fail(name, "layer is called without an input; malformed config")
    first = args[0]
    as_list = isinstance(first, list) and len(args) == 1
    sources = []
    for value in (first if as_list else args):
        tensor = _keras3_tensor(value, name)
        if tensor is None:
            raise fail(name, f"layer input {value!r} is not a Keras tensor; malformed config")
        sources.append(tensor)
    kwargs = as_object(node.get("kwargs"), name, "the call arguments")
    roles = [f"arg{i}" for i in range(len(args))] if len(args) > 1 else []
    for key, value in kwargs.items():          # inputs passed by keyword (``mha(q, value=v)``); masks are not
        tensor = _keras3_tensor(value, name) if key in ("query", "value", "key") else None
        if tensor is not None:
            roles = roles or [f"arg{i}" for i in range(len(sources))]
            sources.append(tensor)
            roles.append(key)
    return sources, as_list, kwargs, kwargs.get("mask") is not None, False, roles


def model_dag(model: Dict[str, Any]) -> Dag:
    """The checked call graph of a functional model config (``class_name`` ``Functional`` or ``Model``)."""
    config = model.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise KerasImportError(f"model config of class {model.get('class_name')!r} has no layer list")
    entries: List[Dict[str, Any]] = []
    calls: Dict[Tuple[str, int], Call] = {}
    outputs_of: Dict[str, int] = {}
    inputs: List[str] = []
    keras2 = False
    for index, entry in enumerate(config["layers"]):
        if not isinstance(entry, dict):
            raise KerasImportError(f"layer #{index} of the model config is a {type(entry).__name__}, expected a "
                                   "JSON object; malformed config")
        name = entry.get("name")
        if not isinstance(name, str):
            name = str(as_object(entry.get("config"), str(entry.get("class_name")), "the layer config").get("name"))
        if any(name == e.get("_name") for e in entries):
            raise fail(name, "two layers share this name; malformed config")
        operation = is_operation(entry)
        if not operation:
            entries.append({**entry, "_name": name})
        nodes = entry.get("inbound_nodes")
        if entry.get("class_name") == "InputLayer":
            inputs.append(name)
            calls[(name, 0)] = Call(name, 0, entry, [], False)
            outputs_of[name] = 1
            continue
        if not isinstance(nodes, list):
            raise fail(name, f"inbound_nodes={nodes!r} is not a list; malformed config")
        for node_index, node in enumerate(nodes):
            if operation:    # never run; refused in ``visit`` if the outputs read it
                calls[(name, node_index)] = Call(name, node_index, {**entry, "_operation": True}, [], False)
                continue
            try:
                sources, as_list, kwargs, with_mask, old, roles = _parse_node(node, name)
            except KerasImportError as error:   # raised only if the outputs read this call (see ``visit``)
                calls[(name, node_index)] = Call(name, node_index, {**entry, "_error": error}, [], False)
                continue
            keras2 = keras2 or old
            calls[(name, node_index)] = Call(name, node_index, {**entry, "_operation": operation}, sources, as_list,
                                             kwargs, with_mask, roles)
    outputs = _outputs(config.get("output_layers"))
    order: List[Call] = []
    state: Dict[Tuple[str, int], int] = {}

    def visit(tensor: Tensor, reader: str) -> None:
        key = tensor[:2]
        if key not in calls:
            raise fail(reader, f"reads call {tensor[1]} of layer {tensor[0]!r}, which the config does not have; "
                       "malformed config")
        if state.get(key) == 2:
            return
        if state.get(key) == 1:
            raise fail(reader, "the graph has a cycle; malformed config")
        state[key] = 1
        call = calls[key]
        if isinstance(call.entry.get("_error"), KerasImportError):
            raise call.entry["_error"]
        if call.entry.get("_operation"):
            raise fail(call.layer, f"keras.ops call {call.entry.get('class_name')!r} on the data path is code, "
                       "not a layer; not supported (use a layer, e.g. Add or Concatenate, instead)")
        for source in call.sources:
            visit(source, call.layer)
        state[key] = 2
        order.append(call)

    for tensor in outputs:
        visit(tensor, "model outputs")
    return Dag(entries, inputs, order, outputs, keras2)


def _outputs(value: Any) -> List[Tensor]:
    if isinstance(value, list) and value and not isinstance(value[0], list):
        value = [value]
    if isinstance(value, dict):   # Keras 3 may write a dict of named outputs
        value = list(value.values())
    if not isinstance(value, list) or not value:
        raise KerasImportError(f"model outputs {value!r} are not a list of [layer, node_index, tensor_index]")
    return [_tensor(item, "model outputs") for item in value]
