"""The layer chain of a Keras model config: Sequential as listed, Functional (Keras 3 or Keras 2) checked to be
a single chain (one input, every layer called once on the previous layer's only output, the last layer the
model's output).

Keras 3 writes a functional layer's inbound node as ``{"args": [keras_tensor], "kwargs": {...}}`` with the
source in ``keras_tensor["config"]["keras_history"] = [layer, node_index, tensor_index]``; Keras 2 (tf.keras,
``tf_keras``) as nested lists ``[[[layer, node_index, tensor_index, kwargs]]]``. Anything else, or a graph
that is not a chain, is a ``KerasImportError`` naming the layer.
"""

from typing import Any, Dict, List, Optional, Tuple

from .errors import KerasImportError

# Mask computations of Masking / Embedding(mask_zero) that Keras 3 may list as layers; masks are rebuilt by
# Keras's rules (config.py), so these are skipped.
_MASK_OPS = ("NotEqual", "Any")


class NotAChain(KerasImportError):
    """The functional model is a graph, not a single chain: ``graph_config.parse_graph`` imports it."""


def fail(layer: str, reason: str) -> KerasImportError:
    return KerasImportError(f"layer {layer!r}: {reason}")


def _branch(layer: str, reason: str) -> NotAChain:
    return NotAChain(f"layer {layer!r}: {reason}")


def as_object(value: Any, layer: str, what: str) -> Dict[str, Any]:
    """``value`` if it is a JSON object (None counts as empty), else a clear refusal."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail(layer, f"{what} is a {type(value).__name__}, expected a JSON object; malformed config")
    return value


def _history(value: Any, name: str) -> str:
    """``[layer, node_index, tensor_index]`` (Keras 3 ``keras_history``, Keras 2 node entry head) -> ``layer``,
    refusing a second call of a layer (node index) or a second output (tensor index)."""
    if not isinstance(value, list) or len(value) < 3 or not isinstance(value[0], str):
        raise fail(name, f"inbound tensor {value!r} is not [layer, node_index, tensor_index]; malformed config")
    if value[1] != 0 or value[2] != 0:
        raise _branch(name, f"reads output {value[2]!r} of call {value[1]!r} of layer {value[0]!r}: a shared layer or "
                   "a second output; linear models only")
    return value[0]


def _inbound(entry: Dict[str, Any], name: str) -> Tuple[str, Dict[str, Any], Optional[bool]]:
    """The one inbound node of a functional layer: ``(source layer, call kwargs, called with a mask)``.

    Keras 3: ``[{"args": [keras_tensor], "kwargs": {...}}]``; Keras 2: ``[[[source, 0, 0, {kwargs}]]]``. The
    mask flag is ``None`` for Keras 2, whose configs do not record masks passed implicitly.
    """
    nodes = entry.get("inbound_nodes")
    if not isinstance(nodes, list):
        raise fail(name, f"inbound_nodes={nodes!r} is not a list; malformed config")
    if len(nodes) != 1:
        raise _branch(name, f"layer is called {len(nodes)} times; linear models only")
    node = nodes[0]
    if isinstance(node, list):                                     # Keras 2
        if not all(isinstance(tensor, list) for tensor in node):
            raise fail(name, f"inbound node {node!r} is not a list of [layer, node_index, tensor_index, kwargs]; "
                       "malformed config")
        if len(node) != 1:
            raise _branch(name, f"layer is called on {len(node)} inputs; linear models only")
        tensor = node[0]
        source = _history(tensor, name)
        kwargs = as_object(tensor[3] if len(tensor) > 3 else None, name, "the call arguments")
        if any(isinstance(kwargs.get(key), list) for key in ("query", "value", "key")):
            raise _branch(name, "layer reads a second tensor by keyword; linear models only")
        return source, kwargs, None
    if not isinstance(node, dict):
        raise fail(name, f"inbound node {node!r} is neither a Keras 3 dict nor a Keras 2 list; malformed config")
    args = node.get("args")
    if not isinstance(args, list) or len(args) != 1:
        raise _branch(name, "layer is called on several inputs (or none); linear models only")
    tensor = args[0]
    if isinstance(tensor, list):
        raise _branch(name, "layer is called on a list of inputs; linear models only")
    history = as_object(tensor, name, "the inbound tensor")
    source = _history(as_object(history.get("config"), name, "the inbound tensor's config").get("keras_history"), name)
    kwargs = as_object(node.get("kwargs"), name, "the call arguments")
    return source, kwargs, kwargs.get("mask") is not None


def model_layers(model: Dict[str, Any]) -> Tuple[List[Dict[str, Any]], bool]:
    """The model's layer configs in call order and whether it is Sequential; refuses non-linear graphs."""
    class_name = model.get("class_name")
    config = model.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise KerasImportError(f"model config of class {class_name!r} has no layer list")
    layers = config["layers"]
    for index, entry in enumerate(layers):
        if not isinstance(entry, dict):
            raise KerasImportError(f"layer #{index} of the model config is a {type(entry).__name__}, expected a "
                                   "JSON object; malformed config")
    if class_name == "Sequential":
        return layers, True
    if class_name not in ("Functional", "Model"):
        raise KerasImportError(f"model class {class_name!r} is not supported (Sequential or a linear Functional)")
    chain: List[Dict[str, Any]] = []
    previous: Optional[str] = None
    for entry in layers:
        cls, name = entry.get("class_name"), entry.get("name")
        if not isinstance(name, str):
            name = str(as_object(entry.get("config"), str(cls), "the layer config").get("name", cls))
        if cls in _MASK_OPS:
            continue  # mask computations of Masking / Embedding(mask_zero); masks are rebuilt by Keras's rules
        if cls == "InputLayer":
            if previous is not None:
                raise _branch(name, "a second model input is not supported (linear models only)")
        else:
            source, kwargs, called_with_mask = _inbound(entry, name)
            if source != previous:
                raise _branch(name, f"reads {source!r}, not the previous layer {previous!r} (a branch or skip "
                           "connection); only single-chain models are supported")
            if kwargs.get("training"):
                raise fail(name, "called with training=True (dropout active at inference); refused")
            allowed = {"training", "mask"} if called_with_mask is not None else {"training"}
            stray = sorted(set(kwargs) - allowed)
            if stray:
                raise fail(name, f"call arguments {stray} are not supported")
            entry = {**entry, "_called_with_mask": called_with_mask}
        previous = name
        chain.append(entry)
    outputs = config.get("output_layers")
    if isinstance(outputs, list) and outputs and not isinstance(outputs[0], list):
        outputs = [outputs]
    # One output, the last layer's; or both directions of a last Bidirectional(merge_mode=None), a list of two.
    last = chain[-1] if chain else {}
    pair = (last.get("class_name") == "Bidirectional"
            and isinstance(last.get("config"), dict) and last["config"].get("merge_mode", "concat") is None)
    expected = [[previous, 0, index] for index in range(2 if pair else 1)]
    if not isinstance(outputs, list) or [list(o[:3]) if isinstance(o, list) else o for o in outputs] != expected:
        raise NotAChain(f"model outputs {outputs!r} are not the last layer {previous!r}'s output; "
                               "single-chain models only")
    return chain, False
