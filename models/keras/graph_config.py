"""A Keras functional graph (several inputs or outputs, branches, shared layers, merge layers) -> a checked
``GraphPlan``: the layers to rebuild (``LayerSpec``s, one per Keras layer however often it is called) and the
calls between numbered values, in an order where every call comes after what it reads.

Every single-input layer is checked by the same per-layer rules as a chain (``config.layer_spec``); merge layers
(``Concatenate``, ``Add``, ``Subtract``, ``Multiply``, ``Average``, ``Maximum``, ``Minimum``, ``Dot``) here.
Masks follow Keras: a merge of masked inputs is masked (Keras 3: the masks OR-ed, ``None`` if one input has
none; ``Concatenate`` counts an unmasked input as all valid; Keras 2: the masks present AND-ed), ``Dot`` drops
the mask. Consecutive ``Bidirectional`` layers of one chain (nothing else reading between them, neither one
shared) are fused into one multi-layer block, as in a chain.
"""

import copy
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .attention import ATTENTION, attention_spec
from .config import IDENTITY, LayerSpec, Stream, layer_spec, to_snake_case
from .dag import Call, Dag, Tensor, model_dag
from .errors import KerasImportError
from .graph import as_object as _dict
from .graph import fail as _fail
from .identity import check_identities
from .layer_options import check_dtype, flag

MERGES = ("Concatenate", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Dot")
GRAPH_LAYERS = (*MERGES, *ATTENTION)     # layers called on several inputs, imported in functional models only


@dataclass
class GraphPlan:
    """``layers``: one spec per Keras layer called; ``nodes``: ``{"layers": [names], "inputs": [value ids],
    "outputs": [value ids]}`` in run order (``layers`` holds several names where ``Bidirectional`` layers are
    fused); values ``0 .. len(inputs) - 1`` are the model inputs, each node's outputs are numbered after them in
    node order; ``outputs``: the model's output values; ``input_kinds``: ``"ids"`` or ``"features"`` per input."""

    layers: List[LayerSpec]
    nodes: List[Dict[str, Any]]
    outputs: List[int]
    input_kinds: List[str]
    keras2: bool = False
    names: List[str] = field(default_factory=list)

    def to_json_dict(self) -> Dict[str, Any]:
        from dataclasses import asdict
        return {"format": "graph", "layers": [asdict(spec) for spec in self.layers], "nodes": self.nodes,
                "outputs": self.outputs, "input_kinds": self.input_kinds, "keras2": self.keras2}


def _key(tensor: Tensor) -> str:
    return f"{tensor[0]}:{tensor[1]}:{tensor[2]}"


def _input_stream(entry: Dict[str, Any], name: str) -> Stream:
    config = _dict(entry.get("config"), name, "the layer config")
    shape = config.get("batch_shape") or config.get("batch_input_shape")
    stream = Stream()
    stream.take_shape(shape, _fail(name, f"input shape {shape!r} is not (batch, time) ids, (batch, time, features), "
                                         "(batch, time, steps, features) or (batch, features)"))
    dtype = config.get("dtype")
    if isinstance(dtype, dict):
        dtype = (dtype.get("config") or {}).get("name")
    if stream.rank == 2 and isinstance(dtype, str) and dtype.startswith("float"):
        stream.features, stream.time = shape[1], None      # (batch, features) floats, not token ids
    return stream


def _merge_mask(class_name: str, masked: List[bool], keras2: bool) -> bool:
    if class_name == "Dot":
        return False
    if keras2 or class_name == "Concatenate":
        return any(masked)
    return all(masked)


def _merge_spec(call: Call, config: Dict[str, Any], name: str, path: str, streams: List[Stream],
                keras2: bool) -> Tuple[LayerSpec, Stream]:
    """A merge layer's spec and what it outputs; refuses inputs of unequal rank (Keras would reshape them)."""
    class_name = call.entry["class_name"]
    check_dtype(config, name)
    if (not call.as_list and not keras2) or len(streams) < 2:
        raise _fail(name, f"{class_name} needs a list of at least two inputs")
    ranks = [s.rank for s in streams]
    if (len(set(ranks)) != 1 and class_name != "Dot") or any(r not in (2, 3) for r in ranks):
        raise _fail(name, f"{class_name} on inputs of ranks {ranks}: only inputs of one rank (2 or 3) are supported")
    rank = ranks[0]
    out = copy.copy(streams[0])
    out.masked = _merge_mask(class_name, [s.masked for s in streams], keras2)
    options: Dict[str, Any] = {"op": class_name, "keras2": keras2}
    features = [s.features for s in streams]
    if class_name == "Concatenate":
        axis = config.get("axis", -1)
        if isinstance(axis, bool) or not isinstance(axis, int) or not -rank <= axis < rank or axis % rank == 0:
            raise _fail(name, f"axis={axis!r} is not a non-batch axis of a rank-{rank} input")
        axis %= rank
        if axis == rank - 1:
            out.features = None if None in features else sum(features)
        else:
            out.time = None if any(s.time is None for s in streams) else sum(s.time for s in streams)
        options["axis"] = axis
    elif class_name == "Dot":
        if len(streams) != 2:
            raise _fail(name, "Dot takes exactly two inputs")
        axes = config.get("axes", -1)
        axes = [axes, axes] if isinstance(axes, int) and not isinstance(axes, bool) else axes
        if (not isinstance(axes, list) or len(axes) != 2
                or any(isinstance(a, bool) or not isinstance(a, int) for a in axes)):
            raise _fail(name, f"axes={config.get('axes')!r} is not an int or a pair of ints")
        axes = [a % r for a, r in zip(axes, ranks, strict=True)]
        if 0 in axes:
            raise _fail(name, "axes include the batch axis")
        options.update(axes=axes, normalize=flag(config, "normalize", False, name))
        dims = [[s.time, s.features][: s.rank - 1] for s in streams]      # the non-batch sizes
        rest = [d for i, d in enumerate(dims[0]) if i != axes[0] - 1] + \
               [d for i, d in enumerate(dims[1]) if i != axes[1] - 1]
        if not rest:
            rest = [1]
        if len(rest) > 2:
            raise _fail(name, "Dot output of rank > 3 is not supported")
        out.rank = len(rest) + 1
        out.features = rest[-1]
        out.time = rest[0] if len(rest) == 2 else None
    elif len(set(features)) != 1 or (class_name == "Subtract" and len(streams) != 2):
        raise _fail(name, f"{class_name} on inputs of feature sizes {features} (Subtract: exactly two inputs); "
                          "only equal shapes are supported")
    if out.rank == 2:
        out.masked = False
    return LayerSpec("merge", class_name, name, path, streams[0].features or 0, options), out


def _check_call(call: Call, keras2: bool) -> None:
    name = call.layer
    if call.kwargs.get("training"):
        raise _fail(name, "called with training=True (dropout active at inference); refused")
    allowed = {"training"} if keras2 else {"training", "mask"}
    stray = sorted(set(call.kwargs) - allowed)
    if stray:
        raise _fail(name, f"call arguments {stray} are not supported")


def parse_graph(model: Dict[str, Any]) -> GraphPlan:
    """The checked plan of a functional model; ``KerasImportError`` names the layer of anything outside the
    supported subset, and reports an unforeseen structure as a malformed config."""
    check_identities(model)                            # module and registered_name too, not class_name alone
    try:
        keras2 = str(model.get("_keras_version", "3")).startswith("2")
        return _parse(model_dag(model), model["config"], keras2)
    except KerasImportError:
        raise
    except (AttributeError, KeyError, TypeError, IndexError, ValueError, RecursionError) as error:
        raise KerasImportError(f"malformed model config ({type(error).__name__}: {error})") from None


def _parse(dag: Dag, model_config: Dict[str, Any], keras2: bool) -> GraphPlan:
    by_name = {entry["_name"]: entry for entry in dag.entries}
    paths: Dict[str, str] = {}
    used: Dict[str, int] = {}
    for entry in dag.entries:
        snake = to_snake_case(str(entry.get("class_name")))
        used[snake] = used.get(snake, -1) + 1
        paths[entry["_name"]] = snake if used[snake] == 0 else f"{snake}_{used[snake]}"
    input_names = [_tensor_name(t) for t in (model_config.get("input_layers") or [])] or dag.inputs
    input_names = [n for n in input_names if n in dag.inputs] if set(input_names) <= set(dag.inputs) else dag.inputs
    streams: Dict[str, Stream] = {}
    alias: Dict[str, str] = {}
    for name in input_names:
        if name not in by_name:
            raise KerasImportError(f"model input {name!r} is not an InputLayer of the config")
        streams[_key((name, 0, 0))] = _input_stream(by_name[name], name)
        streams[_key((name, 0, 0))].keras2 = keras2 or dag.keras2
    specs: Dict[str, LayerSpec] = {}
    calls_of: Dict[str, int] = {}
    for call in dag.calls:
        calls_of[call.layer] = calls_of.get(call.layer, 0) + 1
    nodes: List[Dict[str, Any]] = []
    input_kinds = {name: "features" for name in input_names}

    def source_key(tensor: Tensor, reader: str) -> str:
        key = _key(tensor)
        key = alias.get(key, key)
        if key not in streams:
            raise _fail(reader, f"reads output {tensor[2]} of call {tensor[1]} of layer {tensor[0]!r}, which does "
                        "not exist")
        return key

    for call in dag.calls:
        class_name = call.entry.get("class_name")
        name = call.layer
        if class_name == "InputLayer":
            if _key((name, 0, 0)) not in streams:
                raise _fail(name, "an InputLayer that is not a model input")
            continue
        config = _dict(call.entry.get("config"), name, "the layer config")
        if "/" in name or name in ("", ".", ".."):
            raise _fail(name, "layer name is not a plain name")
        keys = [source_key(t, name) for t in call.sources]
        out_key = _key((name, call.node, 0))
        if class_name in ATTENTION:
            if call.kwargs.get("training"):
                raise _fail(name, "called with training=True (dropout active at inference); refused")
            spec, out, order = attention_spec(class_name, config, name, paths[name], [streams[k] for k in keys],
                                              call.kwargs, call.roles, call.as_list, dag.keras2)
            if name in specs and specs[name].options != spec.options:
                raise _fail(name, "shared attention layer called on inputs of other sizes or with other call options")
            specs.setdefault(name, spec)
            streams[out_key] = out
            nodes.append({"layers": [name], "inputs": [keys[i] for i in order], "outputs": [out_key]})
            continue
        if call.roles:
            raise _fail(name, f"layer is called with {len(call.roles) - 1} extra argument tensor(s); not supported")
        _check_call(call, dag.keras2)
        if class_name in MERGES:
            spec, out = _merge_spec(call, config, name, paths[name], [streams[k] for k in keys], dag.keras2)
            specs.setdefault(name, spec)
            streams[out_key] = out
            nodes.append({"layers": [name], "inputs": keys, "outputs": [out_key]})
            continue
        if len(keys) != 1:
            raise _fail(name, f"{class_name} is called on {len(keys)} inputs; it takes one")
        source = streams[keys[0]]
        if class_name in IDENTITY:
            alias[out_key] = keys[0]
            continue
        stream = copy.copy(source)
        from_input = keys[0] in {_key((n, 0, 0)) for n in input_names}
        spec = layer_spec(str(class_name), config, name, paths[name], stream, first=from_input)
        if spec.kind == "identity":                    # TimeDistributed(Dropout)
            alias[out_key] = keys[0]
            continue
        if spec.kind == "embedding" or (spec.kind == "timedistributed"
                                         and spec.options["inner"]["kind"] == "embedding"):
            input_kinds[keys[0].split(":")[0]] = "ids"
        if name in specs and specs[name].in_features != spec.in_features:
            raise _fail(name, f"shared layer called on inputs of {specs[name].in_features} and {spec.in_features} "
                              "features")
        specs.setdefault(name, spec)
        consumes = spec.kind == "recurrent" or spec.options.get("mode") == "avg"
        if call.called_with_mask is not None and consumes and call.called_with_mask != source.masked:
            raise _fail(name, f"the saved graph {'passes' if call.called_with_mask else 'does not pass'} a mask "
                              "here, which this importer's Keras mask rules do not reproduce; refused")
        if stream.paired:              # Bidirectional(merge_mode=None): two outputs of H features each
            stream.features, stream.paired = spec.options["units"], False
            streams[out_key] = stream
            second = _key((name, call.node, 1))
            streams[second] = copy.copy(stream)
            nodes.append({"layers": [name], "inputs": keys, "outputs": [out_key, second]})
        else:
            streams[out_key] = stream
            nodes.append({"layers": [name], "inputs": keys, "outputs": [out_key]})
    outputs = [source_key(t, "model outputs") for t in dag.outputs]
    if not dag.keras2:                 # Keras 2's MultiHeadAttention leaves its inputs' masks alone
        _refuse_cleared_masks(nodes, specs, streams)
    nodes = _fuse(nodes, specs, calls_of, outputs)
    numbers = {_key((n, 0, 0)): i for i, n in enumerate(input_names)}
    for node in nodes:
        for key in node["outputs"]:
            numbers[key] = len(numbers)
    plan_nodes = [{"layers": node["layers"], "inputs": [numbers[k] for k in node["inputs"]],
                   "outputs": [numbers[k] for k in node["outputs"]]} for node in nodes]
    layer_order = [entry["_name"] for entry in dag.entries if entry["_name"] in specs]
    return GraphPlan([specs[n] for n in layer_order], plan_nodes, [numbers[k] for k in outputs],
                     [input_kinds[n] for n in input_names], dag.keras2, list(input_names))


def _refuse_cleared_masks(nodes: List[Dict[str, Any]], specs: Dict[str, LayerSpec], streams: Dict[str, Stream]) -> None:
    """Keras 3's ``MultiHeadAttention.call`` removes the mask of its input tensors at run time
    (``set_keras_mask(query, None)``, same for value and key), so another layer reading one of those masked tensors
    sees a mask or none depending on whether Keras happens to run it before or after the attention. Not
    reproducible from the file: refused, naming the layers."""
    for node in nodes:
        name = node["layers"][0]
        if specs[name].options.get("op") != "MultiHeadAttention":
            continue
        for key in set(node["inputs"]):
            if not streams[key].masked:
                continue
            others = [n["layers"][0] for n in nodes if n is not node and key in n["inputs"]]
            if others:
                raise _fail(name, f"reads a masked tensor that {others} also read(s); Keras 3's MultiHeadAttention "
                                  "removes that tensor's mask at run time, so what the other layers see depends on "
                                  "Keras's run order; refused (feed the attention a tensor only it reads, e.g. "
                                  "through its own layer, or drop the mask)")


def _tensor_name(value: Any) -> Optional[str]:
    return value[0] if isinstance(value, list) and value and isinstance(value[0], str) else None


def _fuse(nodes: List[Dict[str, Any]], specs: Dict[str, LayerSpec], calls_of: Dict[str, int],
          outputs: List[str]) -> List[Dict[str, Any]]:
    """Fold a ``Bidirectional`` node into the node before it where that one is a ``Bidirectional`` of the same
    cell returning sequences, whose output only it reads, neither layer being shared (``module.fusable``)."""
    from .module import fusable
    readers: Dict[str, int] = {}
    for node in nodes:
        for key in node["inputs"]:
            readers[key] = readers.get(key, 0) + 1
    for key in outputs:
        readers[key] = readers.get(key, 0) + 1
    producer: Dict[str, Dict[str, Any]] = {}
    fused: List[Dict[str, Any]] = []
    for node in nodes:
        name = node["layers"][0]
        spec = specs[name]
        if len(node["inputs"]) == 1 and node["inputs"][0] in producer and spec.kind == "recurrent":
            before = producer[node["inputs"][0]]
            group = [specs[n].__dict__ for n in before["layers"]]
            if (readers[node["inputs"][0]] == 1 and calls_of[name] == 1 and len(before["outputs"]) == 1
                    and all(calls_of[n] == 1 for n in before["layers"]) and fusable(group, spec.__dict__)):
                before["layers"].append(name)
                before["outputs"] = node["outputs"]
                for key in node["outputs"]:
                    producer[key] = before
                continue
        fused.append(node)
        for key in node["outputs"]:
            producer[key] = node
    return fused
