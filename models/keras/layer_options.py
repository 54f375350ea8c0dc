"""The options of one Keras layer config, checked: recurrent layers (``LSTM``/``GRU``/``SimpleRNN``), their
``Bidirectional`` wrapper, ``Dense`` / ``TimeDistributed(Dense)``, and the values inside them (activations, positive
ints, flags, the dtype policy). Each refusal is a ``KerasImportError`` naming the layer; ``config.py`` walks the
model and calls these per layer.
"""

from typing import Any, Dict

from ..cells import KERAS_LAYERS
from ..merge import MERGE_MODES
from .graph import as_object as _dict
from .graph import fail as _fail

RECURRENT = KERAS_LAYERS  # ("LSTM", "GRU", "SimpleRNN")
DENSE_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "softmax", "softplus", "softsign", "elu", "selu",
                     "silu", "swish", "gelu", "relu6", "hard_sigmoid", "hard_silu", "hard_swish", "exponential",
                     "leaky_relu", "mish", "log_softmax", "celu")
# Keys of a recurrent layer's config that may differ between the forward and backward layer of a Bidirectional
# (besides initializers, regularizers and constraints, which do not change inference).
_DIRECTION_KEYS = ("name", "go_backwards", "zero_output_for_mask", "seed", "trainable")


def activation_name(value: Any, layer: str, what: str) -> str:
    """A Keras activation as a plain name; custom or parametrised activations are refused."""
    if isinstance(value, dict) and value.get("class_name") == "function" and isinstance(value.get("config"), str):
        value = value["config"]
    if not isinstance(value, str):
        raise _fail(layer, f"{what}={value!r} is not a built-in Keras activation; refused")
    return value


def positive_int(config: Dict[str, Any], key: str, layer: str) -> int:
    """``config[key]`` as an int >= 1 (Keras's own message, not ``models.arguments``': it names the layer)."""
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(layer, f"{key}={value!r} is not a positive int")
    return value


def flag(config: Dict[str, Any], key: str, default: bool, layer: str) -> bool:
    """A boolean option; anything but true/false (or absent: ``default``) is a malformed config."""
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise _fail(layer, f"{key}={value!r} is not a bool; malformed config")
    return value


def check_dtype(config: Dict[str, Any], layer: str) -> None:
    """Only float32 layers are imported (the dtype policy of Keras 3 or the dtype of Keras 2)."""
    dtype = config.get("dtype")
    if isinstance(dtype, dict):
        dtype = (dtype.get("config") or {}).get("name")
    if dtype not in (None, "float32"):
        raise _fail(layer, f"dtype policy {dtype!r} is not float32; only float32 models are imported")


def recurrent_options(class_name: str, config: Dict[str, Any], layer: str, wrapped: bool) -> Dict[str, Any]:
    """Options of an LSTM/GRU/SimpleRNN config, refusing anything the fused kernels cannot compute."""
    for key, bad in (("stateful", True), ("unroll", True), ("return_state", True), ("time_major", True)):
        if flag(config, key, False, layer) == bad:
            raise _fail(layer, f"{key}={bad} is not supported")
    if not wrapped and flag(config, "go_backwards", False, layer):
        raise _fail(layer, "go_backwards=True on an unwrapped recurrent layer is not supported (use Bidirectional)")
    if wrapped and flag(config, "go_backwards", False, layer):
        raise _fail(layer, "go_backwards=True on the forward layer of a Bidirectional is not supported")
    activation = activation_name(config.get("activation", "tanh"), layer, "activation")
    allowed = ("tanh", "relu") if class_name == "SimpleRNN" else ("tanh",)
    recurrent = "sigmoid"
    if class_name != "SimpleRNN":
        recurrent = activation_name(config.get("recurrent_activation", "sigmoid"), layer, "recurrent_activation")
    for key, value in (("activation", activation), ("recurrent_activation", recurrent)):
        if value not in DENSE_ACTIVATIONS or value in ("softmax", "log_softmax"):
            raise _fail(layer, f"{key}={value!r} is not a supported element-wise activation")
    # Anything the fused kernels do not hard-code runs on the exact time loop (``loop_rnn.py``)
    loop = activation not in allowed or recurrent != "sigmoid"
    reset_after = flag(config, "reset_after", True, layer) if class_name == "GRU" else True
    units = positive_int(config, "units", layer)
    check_dtype(config, layer)
    return {"cell": class_name, "units": units, "activation": activation,
            "use_bias": flag(config, "use_bias", True, layer),
            "return_sequences": flag(config, "return_sequences", False, layer),
            "zero_output_for_mask": flag(config, "zero_output_for_mask", False, layer), "reset_after": reset_after,
            "recurrent_activation": recurrent, "loop": loop}


def _without_bookkeeping(value: Any) -> Any:
    """A config without Keras's ``shared_object_id`` bookkeeping, for comparisons."""
    if isinstance(value, dict):
        return {k: _without_bookkeeping(v) for k, v in value.items() if k != "shared_object_id"}
    if isinstance(value, list):
        return [_without_bookkeeping(v) for v in value]
    return value


def _inference_keys(config: Dict[str, Any]) -> Dict[str, Any]:
    return {k: _without_bookkeeping(v) for k, v in config.items() if k not in _DIRECTION_KEYS
            and not k.endswith(("_initializer", "_regularizer", "_constraint"))}


def bidirectional_options(config: Dict[str, Any], layer: str) -> Dict[str, Any]:
    inner = config.get("layer")
    if not isinstance(inner, dict) or inner.get("class_name") not in RECURRENT:
        inner_class = inner.get("class_name") if isinstance(inner, dict) else inner
        raise _fail(layer, f"Bidirectional wraps {inner_class!r}; only {list(RECURRENT)} are supported")
    forward_config = _dict(inner.get("config"), layer, "the wrapped layer's config")
    options = recurrent_options(inner["class_name"], forward_config, layer, wrapped=True)
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
        if not flag(backward_config, "go_backwards", True, layer):
            raise _fail(layer, "backward_layer has go_backwards=False")
    merge_mode = config.get("merge_mode", "concat")
    if merge_mode is not None and merge_mode not in MERGE_MODES:
        raise _fail(layer, f"merge_mode={merge_mode!r} is not one of {list(MERGE_MODES)} or None")
    check_dtype(config, layer)
    # Bidirectional forces zero_output_for_mask = return_sequences on both directions.
    options.update(bidirectional=True, merge_mode=merge_mode, zero_output_for_mask=options["return_sequences"])
    return options


def dense_options(class_name: str, config: Dict[str, Any], name: str) -> Dict[str, Any]:
    """Options of a ``Dense``, or of the ``Dense`` inside a ``TimeDistributed`` (a per-step linear layer on a
    ``(batch, time, features)`` input, the mask passed on, exactly what a ``Dense`` on that input does)."""
    if class_name == "TimeDistributed":
        check_dtype(config, name)
        inner = _dict(config.get("layer"), name, "the wrapped layer")
        if inner.get("class_name") != "Dense":
            raise _fail(name, f"TimeDistributed wraps {inner.get('class_name')!r}; only Dense is supported")
        config = _dict(inner.get("config"), name, "the wrapped Dense's config")
    if config.get("lora_rank") or config.get("quantization_config"):
        raise _fail(name, "quantized or LoRA Dense layers are not supported")
    activation = activation_name(config.get("activation", "linear"), name, "activation")
    if activation not in DENSE_ACTIVATIONS:
        raise _fail(name, f"activation={activation!r} is not supported (supported: {list(DENSE_ACTIVATIONS)})")
    check_dtype(config, name)
    return {"units": positive_int(config, "units", name), "activation": activation,
            "use_bias": flag(config, "use_bias", True, name)}


def _int_or_single(config: Dict[str, Any], key: str, default: Any, layer: str) -> int:
    """A Keras 1-D size given as an int or a one-element list (``kernel_size=(3,)``)."""
    value = config.get(key, default)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(layer, f"{key}={config.get(key, default)!r} is not a positive int")
    return value


def conv1d_options(config: Dict[str, Any], in_features: int, name: str) -> Dict[str, Any]:
    """Options of a ``Conv1D`` (channels-last; padding valid, same or causal; strides, dilation, groups)."""
    check_dtype(config, name)
    if config.get("data_format", "channels_last") != "channels_last":
        raise _fail(name, f"data_format={config.get('data_format')!r}; only 'channels_last' is supported")
    if config.get("lora_rank") or config.get("quantization_config"):
        raise _fail(name, "quantized or LoRA convolutions are not supported")
    padding = config.get("padding", "valid")
    if padding not in ("valid", "same", "causal"):
        raise _fail(name, f"padding={padding!r} is not 'valid', 'same' or 'causal'")
    options = {"filters": positive_int(config, "filters", name),
               "kernel_size": _int_or_single(config, "kernel_size", None, name),
               "strides": _int_or_single(config, "strides", 1, name),
               "dilation_rate": _int_or_single(config, "dilation_rate", 1, name),
               "groups": _int_or_single(config, "groups", 1, name), "padding": padding,
               "use_bias": flag(config, "use_bias", True, name),
               "activation": activation_name(config.get("activation", "linear"), name, "activation")}
    if options["activation"] not in DENSE_ACTIVATIONS:
        raise _fail(name, f"activation={options['activation']!r} is not supported "
                          f"(supported: {list(DENSE_ACTIVATIONS)})")
    if in_features % options["groups"] or options["filters"] % options["groups"]:
        raise _fail(name, f"groups={options['groups']} does not divide the {in_features} input features and "
                          f"{options['filters']} filters")
    return options


def pool1d_options(class_name: str, config: Dict[str, Any], name: str) -> Dict[str, Any]:
    """Options of a ``MaxPooling1D`` / ``AveragePooling1D`` (channels-last, valid or same)."""
    check_dtype(config, name)
    if config.get("data_format", "channels_last") != "channels_last":
        raise _fail(name, f"data_format={config.get('data_format')!r}; only 'channels_last' is supported")
    padding = config.get("padding", "valid")
    if padding not in ("valid", "same"):
        raise _fail(name, f"padding={padding!r} is not 'valid' or 'same'")
    size = _int_or_single(config, "pool_size", 2, name)
    strides = config.get("strides")
    return {"mode": "max" if class_name == "MaxPooling1D" else "avg", "pool_size": size,
            "strides": size if strides is None else _int_or_single(config, "strides", size, name),
            "padding": padding}
