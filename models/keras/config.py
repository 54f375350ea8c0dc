"""Keras model configuration (plain JSON) -> a checked list of ``LayerSpec``s against an allow-list.

Reads Keras 3 configs and Keras 2 (tf.keras / ``tf_keras``) ones: a Keras 2 functional model lists its
inbound nodes as nested lists (``[[["embedding", 0, 0, {}]]]``) where Keras 3 writes ``{"args", "kwargs"}``
dicts, and gives input shapes as ``batch_input_shape``. Every layer that cannot be represented exactly is
refused with a ``KerasImportError`` naming the layer and the reason, and so is a malformed config. Mask
propagation follows Keras inference semantics (the same in Keras 2 and 3 for this subset but ``TimeDistributed``
around layers other than ``Dense``: see ``_time_distributed``):
``Embedding(mask_zero=True)`` and ``Masking`` create a mask; recurrent layers with ``return_sequences=True``,
``Dense``, ``TimeDistributed(Dense)``, ``Activation`` and the dropouts pass it on; recurrent layers with
``return_sequences=False`` and the global poolings end it.
"""

import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .dag import is_operation
from .errors import KerasImportError
from .graph import as_object as _dict
from .graph import fail as _fail
from .graph import model_layers
from .identity import check_identities
from .layer_options import (
    DENSE_ACTIVATIONS,
    RECURRENT,
    activation_name,
    bidirectional_options,
    check_dtype,
    conv1d_options,
    dense_options,
    flag,
    pool1d_options,
    positive_int,
    recurrent_options,
)

IDENTITY = ("Dropout", "SpatialDropout1D")
POOLING = {"GlobalAveragePooling1D": "avg", "GlobalMaxPooling1D": "max"}
POOLING_1D = ("MaxPooling1D", "AveragePooling1D")
NORMALIZATION = ("BatchNormalization", "LayerNormalization")
RESHAPING = ("Flatten", "Reshape", "Permute", "RepeatVector")
SUPPORTED = ("InputLayer", "Embedding", "Masking", "Bidirectional", "Dense", "TimeDistributed", "Activation",
             *RECURRENT,
             *IDENTITY, *POOLING, "Conv1D", *POOLING_1D, *NORMALIZATION, *RESHAPING)


@dataclass
class LayerSpec:
    """One Keras layer to rebuild. ``kind``: ``embedding | masking | recurrent | dense | activation | pool |
    identity``.

    ``path`` is the layer's group in a ``.keras`` weights file (``layers/<path>``), ``name`` its Keras name
    (the group in a legacy ``.h5``), ``options`` the values the PyTorch side needs, ``in_features`` the
    last-axis size it reads.
    """

    kind: str
    class_name: str
    name: str
    path: str
    in_features: int
    options: Dict[str, Any] = field(default_factory=dict)


def to_snake_case(name: str) -> str:
    """Keras's ``naming.to_snake_case``: ``GlobalAveragePooling1D`` -> ``global_average_pooling1d``."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def parse_model_config(model: Dict[str, Any]) -> Tuple[List[LayerSpec], str]:
    """Checked specs of every layer in call order, and the input kind: ``"ids"`` ``(B, T)`` or ``"features"``.

    Raises ``KerasImportError`` for anything outside the supported subset and for a malformed config (the
    checks above name the layer; a structure they do not foresee is still reported as a malformed config,
    never as a bare ``AttributeError``/``KeyError``)."""
    if not isinstance(model, dict):
        raise KerasImportError(f"model config is a {type(model).__name__}, expected a JSON object")
    check_identities(model)                            # module and registered_name too, not class_name alone
    try:
        return _parse(model)
    except KerasImportError:
        raise
    except (AttributeError, KeyError, TypeError, IndexError, ValueError, RecursionError) as error:
        raise KerasImportError(f"malformed model config ({type(error).__name__}: {error})") from None


@dataclass
class Stream:
    """What flows from layer to layer while parsing: the tensor's rank and feature size, whether a mask travels
    with it, whether a ``merge_mode=None`` pair has ended the model, the model's input kind, and Keras's counter
    per layer class that names the weights groups (``lstm``, ``lstm_1``, ...)."""

    rank: Optional[int] = None
    features: Optional[int] = None
    masked: bool = False
    paired: bool = False
    input_kind: str = "features"
    used: Dict[str, int] = field(default_factory=dict)
    time: Optional[int] = None
    keras2: bool = False
    middle: Optional[int] = None       # axis 2 of a rank-4 (batch, time, steps, features) tensor (TimeDistributed)
    step_mask: bool = False            # Keras 2: the mask is (batch, time, steps), one per step of a rank-4 tensor

    def path(self, class_name: str) -> str:
        """The next layer of ``class_name``'s weights group: Keras counts each class's layers."""
        snake = to_snake_case(class_name)
        self.used[snake] = self.used.get(snake, -1) + 1
        return snake if self.used[snake] == 0 else f"{snake}_{self.used[snake]}"

    def take_shape(self, shape: Any, error: KerasImportError) -> None:
        """The model's input shape ``(batch, time)`` ids, ``(batch, time, features)`` or ``(batch, time, steps,
        features)`` (for ``TimeDistributed`` layers); else ``error``."""
        if not isinstance(shape, list) or len(shape) not in (2, 3, 4):
            raise error
        self.rank, self.features = len(shape), (shape[-1] if len(shape) > 2 else None)
        self.time = shape[1] if isinstance(shape[1], int) and not isinstance(shape[1], bool) else None
        if len(shape) == 4:
            self.middle = shape[2] if isinstance(shape[2], int) and not isinstance(shape[2], bool) else None


def _parse(model: Dict[str, Any]) -> Tuple[List[LayerSpec], str]:
    layers, sequential = model_layers(model)
    model_config = model["config"]
    specs: List[LayerSpec] = []
    nested = any(isinstance(e.get("inbound_nodes"), list) and e["inbound_nodes"]
                 and isinstance(e["inbound_nodes"][0], list) for e in layers)     # Keras 2's node lists
    stream = Stream(keras2=str(model.get("_keras_version", "3")).startswith("2") or nested)
    for index, entry in enumerate(layers):
        class_name = entry.get("class_name")
        name = str(entry.get("name", f"#{index}"))
        config = _dict(entry.get("config"), name, "the layer config")
        name = str(config.get("name", name))
        if is_operation(entry):
            raise _fail(name, f"keras.ops call {class_name!r} on the data path is code, not a layer; not supported "
                              "(use a layer, e.g. Add or Concatenate, instead)")
        if class_name not in SUPPORTED:
            raise _fail(name, f"layer class {class_name!r} is not supported (supported: {list(SUPPORTED)})")
        if "/" in name or name in ("", ".", ".."):
            raise _fail(name, "layer name is not a plain name")
        if stream.paired:
            raise _fail(name, "follows a Bidirectional with merge_mode=None; merge_mode=None is only allowed last")
        if class_name == "InputLayer":
            shape = config.get("batch_shape") or config.get("batch_input_shape")
            stream.take_shape(shape, _fail(name, f"input shape {shape!r} is not (batch, time) ids, (batch, time, "
                                                 "features) or (batch, time, steps, features)"))
            if not sequential:
                stream.path(class_name)
            continue
        mask_in = stream.masked
        path = stream.path(class_name)
        if stream.rank is None:  # Sequential without an InputLayer: the first layer's build shape (Keras 3 or 2)
            shape = (_dict(entry.get("build_config"), name, "build_config").get("input_shape")
                     or config.get("batch_input_shape") or model_config.get("build_input_shape"))
            stream.take_shape(shape, KerasImportError("model has no InputLayer and no input shape; cannot size the "
                                                      "import"))
        spec = layer_spec(class_name, config, name, path, stream, first=not specs)
        called_with_mask = entry.get("_called_with_mask")
        consumes = spec.kind == "recurrent" or spec.options.get("mode") == "avg"
        if called_with_mask is not None and consumes and called_with_mask != mask_in:
            raise _fail(name, f"the saved graph {'passes' if called_with_mask else 'does not pass'} a mask here, "
                              "which this importer's Keras mask rules do not reproduce; refused")
        specs.append(spec)
    if not specs:
        raise KerasImportError("model has no layers to import")
    return specs, stream.input_kind


def layer_spec(class_name: str, config: Dict[str, Any], name: str, path: str, stream: "Stream",
               first: bool) -> LayerSpec:
    """The checked spec of one (non-input, single-input) layer; moves ``stream`` on to what the layer outputs.
    The one place where a layer config is dispatched on its class name (``_dispatch``)."""
    spec = _dispatch(class_name, config, name, path, stream, first)
    if stream.keras2 and spec.kind != "recurrent" and spec.options.get("activation") == "hard_sigmoid":
        spec.options["activation"] = "hard_sigmoid_keras2"        # Keras 2's clip(0.2 x + 0.5, 0, 1)
    return spec


def _dispatch(class_name: str, config: Dict[str, Any], name: str, path: str, stream: "Stream",
              first: bool) -> LayerSpec:
    features = stream.features
    if class_name == "TimeDistributed" and _wrapped_class(config) != "Dense":
        return _time_distributed(config, name, path, stream, first)
    if class_name == "Embedding":
        if not first or stream.rank != 2:
            raise _fail(name, "Embedding is only supported as the first layer, on (batch, time) token ids")
        if config.get("quantization_config") or config.get("sparse") or config.get("lora_rank"):
            raise _fail(name, "quantized, sparse or LoRA embeddings are not supported")
        check_dtype(config, name)
        spec = LayerSpec("embedding", class_name, name, path, 0, {
            "input_dim": positive_int(config, "input_dim", name),
            "output_dim": positive_int(config, "output_dim", name),
            "mask_zero": flag(config, "mask_zero", False, name)})
        stream.masked, stream.rank, stream.features = spec.options["mask_zero"], 3, spec.options["output_dim"]
        stream.input_kind = "ids"
        return spec
    if class_name in RESHAPING:
        return _reshaping(class_name, config, name, path, stream)
    if stream.rank != 3 and class_name not in ("Dense", "TimeDistributed", "Activation", *IDENTITY, *NORMALIZATION):
        raise _fail(name, f"{class_name} needs a (batch, time, features) input here")
    if features is None and class_name in ("Activation", "Masking", *IDENTITY, *POOLING, *POOLING_1D):
        features = 0            # layers without weights run on any feature size (e.g. after a Dot)
    elif features is None or isinstance(features, bool) or not isinstance(features, int) or features < 1:
        raise _fail(name, f"input feature size {features!r} is not known; give the Input a feature size")
    if class_name == "Masking":
        value = config.get("mask_value", 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _fail(name, f"mask_value={value!r} is not a finite number")
        stream.masked = True
        return LayerSpec("masking", class_name, name, path, features, {"mask_value": float(value)})
    if class_name in ("Bidirectional", *RECURRENT):
        if class_name == "Bidirectional":
            options = bidirectional_options(config, name)
        else:
            options = recurrent_options(class_name, config, name, wrapped=False)
            options["bidirectional"], options["merge_mode"] = False, "concat"
        units = options["units"]
        stream.features = units if not options["bidirectional"] or options["merge_mode"] not in (None, "concat") \
            else 2 * units
        stream.paired = options["bidirectional"] and options["merge_mode"] is None
        options["keras2"] = stream.keras2
        if not options["return_sequences"]:
            stream.masked, stream.rank = False, 2
        return LayerSpec("recurrent", class_name, name, path, features, options)
    if class_name in NORMALIZATION:
        check_dtype(config, name)
        axis = config.get("axis", -1)
        if axis not in (-1, [-1], stream.rank - 1, [stream.rank - 1]) or config.get("rms_scaling"):
            raise _fail(name, f"axis={axis!r}: only the last axis is supported (and no rms_scaling)")
        epsilon = config.get("epsilon", 1e-3)
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon >= 0:
            raise _fail(name, f"epsilon={epsilon!r} is not a number >= 0")
        if class_name == "BatchNormalization" and (config.get("renorm") or config.get("virtual_batch_size")):
            raise _fail(name, "renorm and virtual_batch_size are not supported")
        return LayerSpec("norm", class_name, name, path, features, {
            "batch": class_name == "BatchNormalization", "epsilon": float(epsilon),
            "scale": flag(config, "scale", True, name), "center": flag(config, "center", True, name)})
    if class_name == "Conv1D":
        o = conv1d_options(config, features, name)
        effective = (o["kernel_size"] - 1) * o["dilation_rate"] + 1
        stream.time = _length_after(stream.time, effective, o["strides"], o["padding"])
        stream.features, stream.masked = o["filters"], False
        return LayerSpec("conv", class_name, name, path, features, o)
    if class_name in POOLING_1D:
        o = pool1d_options(class_name, config, name)
        stream.time = _length_after(stream.time, o["pool_size"], o["strides"], o["padding"])
        stream.masked = False
        return LayerSpec("pool1d", class_name, name, path, features, o)
    if class_name in ("Dense", "TimeDistributed"):
        spec = LayerSpec("dense", class_name, name, path, features, dense_options(class_name, config, name))
        stream.features = spec.options["units"]
        return spec
    if class_name == "Activation":
        activation = activation_name(config.get("activation"), name, "activation")
        if activation not in DENSE_ACTIVATIONS:
            raise _fail(name, f"activation={activation!r} is not supported (supported: {list(DENSE_ACTIVATIONS)})")
        return LayerSpec("activation", class_name, name, path, features, {"activation": activation})
    if class_name in POOLING:
        if config.get("data_format", "channels_last") != "channels_last":
            raise _fail(name, "only data_format='channels_last' is supported")
        keepdims = flag(config, "keepdims", False, name)
        stream.masked, stream.rank, stream.time = False, 3 if keepdims else 2, 1 if keepdims else None
        return LayerSpec("pool", class_name, name, path, features, {"mode": POOLING[class_name], "keepdims": keepdims})
    return LayerSpec("identity", class_name, name, path, features or 0)


# Layers ``TimeDistributed`` imports around any layer it wraps (``Dense`` has its own path: ``dense_options``);
# those that take a mask in their call are refused on a masked input (Keras would hand them one step's mask).
TIME_DISTRIBUTABLE = ("Embedding", "Bidirectional", *RECURRENT, "Conv1D", *POOLING_1D, *POOLING, "Activation",
                      *NORMALIZATION, "Flatten", *IDENTITY)
_TAKES_MASK = ("Bidirectional", *RECURRENT, *POOLING)


def _wrapped_class(config: Dict[str, Any]) -> Any:
    inner = config.get("layer")
    return inner.get("class_name") if isinstance(inner, dict) else None


def _time_distributed(config: Dict[str, Any], name: str, path: str, stream: "Stream", first: bool) -> LayerSpec:
    """``TimeDistributed(layer)``: Keras 3 runs ``layer.call`` on each step ``x[:, t]`` (no mask of its own: an inner
    ``Embedding(mask_zero=True)`` masks nothing) and stacks the results; the input's mask passes on. Inputs of rank
    3 (``(B, T, F)`` features or ``(B, words, chars)`` ids) or 4 (``(B, T, S, F)``).

    Keras 2 (``tf_keras``'s ``TimeDistributed.call``/``compute_mask``) runs the layer on ``(B * T, ...)`` and hands
    it the input's mask reshaped to ``(B * T, S)`` where the layer's call takes a mask; the output's mask is the
    layer's own output mask reshaped to ``(B, T, ...)`` (an inner ``Embedding(mask_zero=True)`` masks each
    character), else the input's mask reduced to ``(B, T)`` by ``any`` (a word with no valid character is masked).
    """
    check_dtype(config, name)
    inner = _dict(config.get("layer"), name, "the wrapped layer")
    inner_class = inner.get("class_name")
    if inner_class not in TIME_DISTRIBUTABLE:
        raise _fail(name, f"TimeDistributed wraps {inner_class!r}; supported: {['Dense', *TIME_DISTRIBUTABLE]}")
    inner_config = _dict(inner.get("config"), name, "the wrapped layer's config")
    if stream.rank not in (3, 4):
        raise _fail(name, f"TimeDistributed needs an input of rank 3 or 4, got rank {stream.rank}")
    step_masked = stream.keras2 and stream.masked and stream.step_mask      # Keras 2: (B * T, S) to the layer
    if stream.masked and inner_class in _TAKES_MASK and not step_masked:
        shape = ", of shape (B * T,) here" if stream.keras2 else ""
        raise _fail(name, f"TimeDistributed({inner_class}) on a masked input is not supported (Keras passes the "
                          f"wrapped layer one time step's mask{shape})")
    if stream.rank == 3:
        inside = Stream(rank=2, features=stream.features, keras2=stream.keras2, input_kind=stream.input_kind)
    else:
        inside = Stream(rank=3, features=stream.features, time=stream.middle, keras2=stream.keras2,
                        input_kind=stream.input_kind, masked=step_masked)
    spec = layer_spec(str(inner_class), inner_config, name, path, inside, first)
    if spec.kind == "identity":
        return LayerSpec("identity", "TimeDistributed", name, path, stream.features or 0)
    if inside.rank not in (2, 3) or inside.paired:
        raise _fail(name, f"TimeDistributed({inner_class}) gives a step output of rank {inside.rank}; only rank 2 or "
                          "3 is supported")
    stream.input_kind = inside.input_kind
    stream.features = inside.features
    if stream.keras2:
        stream.masked = stream.masked or inside.masked
        stream.step_mask = inside.masked and inside.rank == 3
    if inside.rank == 3:
        stream.rank, stream.middle = 4, inside.time
    else:
        stream.rank, stream.middle = 3, None
    options = {"inner": {"kind": spec.kind, "class_name": spec.class_name, "name": spec.name, "path": spec.path,
                         "in_features": spec.in_features, "options": spec.options}, "keras2": stream.keras2}
    return LayerSpec("timedistributed", "TimeDistributed", name, path, spec.in_features, options)


def _length_after(length: Optional[int], window: int, stride: int, padding: str) -> Optional[int]:
    """The time length after a window of ``window`` steps (``valid``: inside the input only)."""
    if length is None:
        return None
    if padding == "valid":
        return (length - window) // stride + 1
    return (length + stride - 1) // stride


def _reshaping(class_name: str, config: Dict[str, Any], name: str, path: str, stream: "Stream") -> LayerSpec:
    """``Flatten``, ``Reshape``, ``Permute``, ``RepeatVector`` on ``(B, T, F)`` or ``(B, F)`` tensors."""
    check_dtype(config, name)
    sizes = [stream.time, stream.features][: (stream.rank or 2) - 1] if stream.rank in (2, 3) else None
    if sizes is None:
        raise _fail(name, f"{class_name} needs a (batch, features) or (batch, time, features) input here")
    features, shape, n = stream.features or 0, [], 0
    if class_name == "Flatten":
        if config.get("data_format", "channels_last") != "channels_last":
            raise _fail(name, "only data_format='channels_last' is supported")
        op, out = "flatten", [None if None in sizes else math.prod(sizes)]
    elif class_name == "RepeatVector":
        if stream.rank != 2:
            raise _fail(name, "RepeatVector needs a (batch, features) input")
        op, n = "repeat", positive_int(config, "n", name)
        out = [n, stream.features]
    elif class_name == "Permute":
        dims = config.get("dims")
        if not isinstance(dims, list) or sorted(dims) != list(range(1, len(sizes) + 1)):
            raise _fail(name, f"dims={dims!r} is not a permutation of 1..{len(sizes)}")
        op, shape = "permute", list(dims)
        out = [sizes[d - 1] for d in dims]
    else:
        target = config.get("target_shape")
        if (not isinstance(target, list) or not 1 <= len(target) <= 2
                or any(isinstance(v, bool) or not isinstance(v, int) or (v < 1 and v != -1) for v in target)):
            raise _fail(name, f"target_shape={target!r} is not 1 or 2 sizes (one may be -1)")
        op, shape = "reshape", list(target)
        total = None if None in sizes else math.prod(sizes)
        out = [(total // -math.prod(target) if total is not None else None) if v == -1 else v for v in target]
    stream.masked, stream.rank = False, len(out) + 1
    stream.features = out[-1]
    stream.time = out[0] if len(out) == 2 else None
    return LayerSpec("shape", class_name, name, path, features, {"op": op, "shape": shape, "n": n})
