"""Keras model configuration (plain JSON) -> a checked list of ``LayerSpec``s against an allow-list.

Reads Keras 3 configs and Keras 2 (tf.keras / ``tf_keras``) ones: a Keras 2 functional model lists its
inbound nodes as nested lists (``[[["embedding", 0, 0, {}]]]``) where Keras 3 writes ``{"args", "kwargs"}``
dicts, and gives input shapes as ``batch_input_shape``. Every layer that cannot be represented exactly is
refused with a ``KerasImportError`` naming the layer and the reason, and so is a malformed config. Mask
propagation follows Keras inference semantics (the same in Keras 2 and 3 for this subset):
``Embedding(mask_zero=True)`` and ``Masking`` create a mask; recurrent layers with ``return_sequences=True``,
``Dense``, ``TimeDistributed(Dense)``, ``Activation`` and the dropouts pass it on; recurrent layers with
``return_sequences=False`` and the global poolings end it.
"""

import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..cells import KERAS_LAYERS
from ..merge import MERGE_MODES
from .errors import KerasImportError
from .graph import as_object as _dict
from .graph import fail as _fail
from .graph import model_layers

RECURRENT = KERAS_LAYERS  # ("LSTM", "GRU", "SimpleRNN")
IDENTITY = ("Dropout", "SpatialDropout1D")
POOLING = {"GlobalAveragePooling1D": "avg", "GlobalMaxPooling1D": "max"}
SUPPORTED = ("InputLayer", "Embedding", "Masking", "Bidirectional", "Dense", "TimeDistributed", "Activation", *RECURRENT,
             *IDENTITY, *POOLING)
DENSE_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "softmax", "softplus", "softsign", "elu", "selu",
                     "silu", "swish", "gelu")
# Keys of a recurrent layer's config that may differ between the forward and backward layer of a Bidirectional
# (besides initializers, regularizers and constraints, which do not change inference).
_DIRECTION_KEYS = ("name", "go_backwards", "zero_output_for_mask", "seed", "trainable")


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


def _activation(value: Any, layer: str, what: str) -> str:
    """A Keras activation as a plain name; custom or parametrised activations are refused."""
    if isinstance(value, dict) and value.get("class_name") == "function" and isinstance(value.get("config"), str):
        value = value["config"]
    if not isinstance(value, str):
        raise _fail(layer, f"{what}={value!r} is not a built-in Keras activation; refused")
    return value


def _positive(config: Dict[str, Any], key: str, layer: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(layer, f"{key}={value!r} is not a positive int")
    return value


def _flag(config: Dict[str, Any], key: str, default: bool, layer: str) -> bool:
    """A boolean option; anything but true/false (or absent: ``default``) is a malformed config."""
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise _fail(layer, f"{key}={value!r} is not a bool; malformed config")
    return value


def _check_dtype(config: Dict[str, Any], layer: str) -> None:
    dtype = config.get("dtype")
    if isinstance(dtype, dict):
        dtype = (dtype.get("config") or {}).get("name")
    if dtype not in (None, "float32"):
        raise _fail(layer, f"dtype policy {dtype!r} is not float32; only float32 models are imported")


def _recurrent(class_name: str, config: Dict[str, Any], layer: str, wrapped: bool) -> Dict[str, Any]:
    """Options of an LSTM/GRU/SimpleRNN config, refusing anything the fused kernels cannot compute."""
    for key, bad in (("stateful", True), ("unroll", True), ("return_state", True), ("time_major", True)):
        if _flag(config, key, False, layer) == bad:
            raise _fail(layer, f"{key}={bad} is not supported")
    if not wrapped and _flag(config, "go_backwards", False, layer):
        raise _fail(layer, "go_backwards=True on an unwrapped recurrent layer is not supported (use Bidirectional)")
    if wrapped and _flag(config, "go_backwards", False, layer):
        raise _fail(layer, "go_backwards=True on the forward layer of a Bidirectional is not supported")
    activation = _activation(config.get("activation", "tanh"), layer, "activation")
    allowed = ("tanh", "relu") if class_name == "SimpleRNN" else ("tanh",)
    if activation not in allowed:
        raise _fail(layer, f"activation={activation!r} has no exact fused-kernel equivalent for {class_name} "
                           f"(allowed: {list(allowed)})")
    if class_name != "SimpleRNN":
        recurrent = _activation(config.get("recurrent_activation", "sigmoid"), layer, "recurrent_activation")
        if recurrent != "sigmoid":
            raise _fail(layer, f"non-default recurrent_activation={recurrent!r} is not supported (only 'sigmoid')")
    reset_after = _flag(config, "reset_after", True, layer) if class_name == "GRU" else True
    units = _positive(config, "units", layer)
    _check_dtype(config, layer)
    return {"cell": class_name, "units": units, "activation": activation, "use_bias": _flag(config, "use_bias", True, layer),
            "return_sequences": _flag(config, "return_sequences", False, layer),
            "zero_output_for_mask": _flag(config, "zero_output_for_mask", False, layer), "reset_after": reset_after}


def _plain(value: Any) -> Any:
    """A config without Keras's ``shared_object_id`` bookkeeping, for comparisons."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "shared_object_id"}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _inference_keys(config: Dict[str, Any]) -> Dict[str, Any]:
    return {k: _plain(v) for k, v in config.items() if k not in _DIRECTION_KEYS
            and not k.endswith(("_initializer", "_regularizer", "_constraint"))}


def _bidirectional(config: Dict[str, Any], layer: str) -> Dict[str, Any]:
    inner = config.get("layer")
    if not isinstance(inner, dict) or inner.get("class_name") not in RECURRENT:
        inner_class = inner.get("class_name") if isinstance(inner, dict) else inner
        raise _fail(layer, f"Bidirectional wraps {inner_class!r}; only {list(RECURRENT)} are supported")
    forward_config = _dict(inner.get("config"), layer, "the wrapped layer's config")
    options = _recurrent(inner["class_name"], forward_config, layer, wrapped=True)
    backward = config.get("backward_layer")
    if backward is not None:
        backward_config = _dict(backward.get("config") if isinstance(backward, dict) else None, layer,
                                "backward_layer's config")
        same_class = isinstance(backward, dict) and backward.get("class_name") == inner["class_name"]
        fw, bw = _inference_keys(forward_config), _inference_keys(backward_config)
        differing = sorted(key for key in set(fw) | set(bw) if fw.get(key) != bw.get(key))
        if not same_class or differing:
            raise _fail(layer, f"custom backward_layer differs from the forward layer ({differing or 'class'}); "
                               "only a mirror of the forward layer is supported")
        if not _flag(backward_config, "go_backwards", True, layer):
            raise _fail(layer, "backward_layer has go_backwards=False")
    merge_mode = config.get("merge_mode", "concat")
    if merge_mode is not None and merge_mode not in MERGE_MODES:
        raise _fail(layer, f"merge_mode={merge_mode!r} is not one of {list(MERGE_MODES)} or None")
    _check_dtype(config, layer)
    # Bidirectional forces zero_output_for_mask = return_sequences on both directions.
    options.update(bidirectional=True, merge_mode=merge_mode, zero_output_for_mask=options["return_sequences"])
    return options


def _dense(class_name: str, config: Dict[str, Any], name: str) -> Dict[str, Any]:
    """Options of a ``Dense``, or of the ``Dense`` inside a ``TimeDistributed`` (a per-step linear layer on a
    ``(batch, time, features)`` input, the mask passed on, exactly what a ``Dense`` on that input does)."""
    if class_name == "TimeDistributed":
        _check_dtype(config, name)
        inner = _dict(config.get("layer"), name, "the wrapped layer")
        if inner.get("class_name") != "Dense":
            raise _fail(name, f"TimeDistributed wraps {inner.get('class_name')!r}; only Dense is supported")
        config = _dict(inner.get("config"), name, "the wrapped Dense's config")
    if config.get("lora_rank") or config.get("quantization_config"):
        raise _fail(name, "quantized or LoRA Dense layers are not supported")
    activation = _activation(config.get("activation", "linear"), name, "activation")
    if activation not in DENSE_ACTIVATIONS:
        raise _fail(name, f"activation={activation!r} is not supported (supported: {list(DENSE_ACTIVATIONS)})")
    _check_dtype(config, name)
    return {"units": _positive(config, "units", name), "activation": activation,
            "use_bias": _flag(config, "use_bias", True, name)}


def parse_model_config(model: Dict[str, Any]) -> Tuple[List[LayerSpec], str]:
    """Checked specs of every layer in call order, and the input kind: ``"ids"`` ``(B, T)`` or ``"features"``.

    Raises ``KerasImportError`` for anything outside the supported subset and for a malformed config (the
    checks above name the layer; a structure they do not foresee is still reported as a malformed config,
    never as a bare ``AttributeError``/``KeyError``)."""
    if not isinstance(model, dict):
        raise KerasImportError(f"model config is a {type(model).__name__}, expected a JSON object")
    try:
        return _parse(model)
    except KerasImportError:
        raise
    except (AttributeError, KeyError, TypeError, IndexError, ValueError, RecursionError) as error:
        raise KerasImportError(f"malformed model config ({type(error).__name__}: {error})") from None


def _parse(model: Dict[str, Any]) -> Tuple[List[LayerSpec], str]:
    layers, sequential = model_layers(model)
    model_config = model["config"]
    specs: List[LayerSpec] = []
    used: Dict[str, int] = {}
    features: Optional[int] = None
    rank: Optional[int] = None
    masked = False
    paired = False
    input_kind = "features"
    for index, entry in enumerate(layers):
        class_name = entry.get("class_name")
        name = str(entry.get("name", f"#{index}"))
        config = _dict(entry.get("config"), name, "the layer config")
        name = str(config.get("name", name))
        if class_name not in SUPPORTED:
            raise _fail(name, f"layer class {class_name!r} is not supported (supported: {list(SUPPORTED)})")
        if "/" in name or name in ("", ".", ".."):
            raise _fail(name, "layer name is not a plain name")
        if paired:
            raise _fail(name, "follows a Bidirectional with merge_mode=None; merge_mode=None is only allowed last")
        if class_name == "InputLayer":
            shape = config.get("batch_shape") or config.get("batch_input_shape")
            if not isinstance(shape, list) or len(shape) not in (2, 3):
                raise _fail(name, f"input shape {shape!r} is not (batch, time) ids or (batch, time, features)")
            rank, features = len(shape), (shape[2] if len(shape) == 3 else None)
            if not sequential:
                used[to_snake_case(class_name)] = used.get(to_snake_case(class_name), -1) + 1
            continue
        mask_in = masked
        snake = to_snake_case(class_name)
        used[snake] = used.get(snake, -1) + 1
        path = snake if used[snake] == 0 else f"{snake}_{used[snake]}"
        if rank is None:  # Sequential without an InputLayer: the first layer's build shape (Keras 3 or 2)
            shape = (_dict(entry.get("build_config"), name, "build_config").get("input_shape")
                     or config.get("batch_input_shape") or model_config.get("build_input_shape"))
            if not isinstance(shape, list) or len(shape) not in (2, 3):
                raise KerasImportError("model has no InputLayer and no input shape; cannot size the import")
            rank, features = len(shape), (shape[2] if len(shape) == 3 else None)
        if class_name == "Embedding":
            if specs or rank != 2:
                raise _fail(name, "Embedding is only supported as the first layer, on (batch, time) token ids")
            if config.get("quantization_config") or config.get("sparse") or config.get("lora_rank"):
                raise _fail(name, "quantized, sparse or LoRA embeddings are not supported")
            _check_dtype(config, name)
            spec = LayerSpec("embedding", class_name, name, path, 0, {
                "input_dim": _positive(config, "input_dim", name), "output_dim": _positive(config, "output_dim", name),
                "mask_zero": _flag(config, "mask_zero", False, name)})
            masked, rank, features = spec.options["mask_zero"], 3, spec.options["output_dim"]
            input_kind = "ids"
        elif rank != 3 and class_name not in ("Dense", "Activation", *IDENTITY):
            raise _fail(name, f"{class_name} needs a (batch, time, features) input here")
        elif features is None or isinstance(features, bool) or not isinstance(features, int) or features < 1:
            raise _fail(name, f"input feature size {features!r} is not known; give the Input a feature size")
        elif class_name == "Masking":
            value = config.get("mask_value", 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise _fail(name, f"mask_value={value!r} is not a finite number")
            spec = LayerSpec("masking", class_name, name, path, features, {"mask_value": float(value)})
            masked = True
        elif class_name in ("Bidirectional", *RECURRENT):
            if class_name == "Bidirectional":
                options = _bidirectional(config, name)
            else:
                options = _recurrent(class_name, config, name, wrapped=False)
                options["bidirectional"], options["merge_mode"] = False, "concat"
            spec = LayerSpec("recurrent", class_name, name, path, features, options)
            units = options["units"]
            features = units if not options["bidirectional"] or options["merge_mode"] not in (None, "concat") \
                else 2 * units
            paired = options["bidirectional"] and options["merge_mode"] is None
            if not options["return_sequences"]:
                masked, rank = False, 2
        elif class_name in ("Dense", "TimeDistributed"):
            spec = LayerSpec("dense", class_name, name, path, features, _dense(class_name, config, name))
            features = spec.options["units"]
        elif class_name == "Activation":
            activation = _activation(config.get("activation"), name, "activation")
            if activation not in DENSE_ACTIVATIONS:
                raise _fail(name, f"activation={activation!r} is not supported (supported: {list(DENSE_ACTIVATIONS)})")
            spec = LayerSpec("activation", class_name, name, path, features, {"activation": activation})
        elif class_name in POOLING:
            if config.get("data_format", "channels_last") != "channels_last" or config.get("keepdims", False):
                raise _fail(name, "only data_format='channels_last' and keepdims=False are supported")
            spec = LayerSpec("pool", class_name, name, path, features, {"mode": POOLING[class_name]})
        else:
            spec = LayerSpec("identity", class_name, name, path, features or 0)
        if class_name in POOLING:
            masked, rank = False, 2
        called_with_mask = entry.get("_called_with_mask")
        consumes = spec.kind == "recurrent" or spec.options.get("mode") == "avg"
        if called_with_mask is not None and consumes and called_with_mask != mask_in:
            raise _fail(name, f"the saved graph {'passes' if called_with_mask else 'does not pass'} a mask here, "
                              "which this importer's Keras mask rules do not reproduce; refused")
        specs.append(spec)
    if not specs:
        raise KerasImportError("model has no layers to import")
    return specs, input_kind
