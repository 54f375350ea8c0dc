"""Check a composed training config before anything is loaded or built.

Hydra checks the ``trainer``, ``optim`` and ``data`` groups' types and keys while composing (structured configs,
``models/training/schema.py``) and refuses ``model.typo=1`` and a missing group option. This module checks the
rest, with the key path, the value and the allowed values, so a typo costs a second, not a run: keys added with
``+`` (``+model.typo=1``), each schema field's allowed values and bounds (``trainer.compile=jit``,
``optim.weight_decay=-1``), the model's arguments (``model.merge_mode=avg``, ``model.hidden_size=0``: the model
is built on the meta device to run its own checks), the data keys (``models.data.resolve_config``) and the checks
across keys (``optim.betas``, ``trainer.device=cuda`` without a GPU, fp16 on CPU, ``resume`` with ``init_from``).
``train.py`` prints each as one line ``config error: ...`` and exits with status 2. Values are accepted as typed:
``trainer.precision=32`` (an int), ``"32"``, ``16``, ``bf16``.

:func:`check_config` runs once per run and returns a frozen :class:`TrainConfig` (frozen ``TrainerConfig`` and
``OptimConfig``, the data config completed with its defaults, the model's arguments with ``merge_mode`` as checked
``MergeModes``): the set-up and the loop read it, never the composed ``DictConfig``. ``merge_mode`` is not
checked again (the meta-device model and the real one take the checked modes as they are); the library's entry
points still guard their own arguments (the model's constructor its sizes, ``build_data`` the data config), in
microseconds and before any data is read.
"""

import copy
import dataclasses
import inspect
import math
import os
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Dict, Iterable, Mapping, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from ..arguments import check_choice, plain
from ..data import resolve_config as resolve_data_config
from ..merge import resolve_merge_modes
from ..zoo.classifier import CELLS, POOLINGS, SequenceClassifier
from ..zoo.config_group import DATA_KEYS
from ..zoo.registry import create_model, list_models
from .loggers import check_logger_config
from .schema import DEVICES, OPTIMIZERS, SCHEDULERS, TRAIN_COMPILE_MODES, OptimConfig, TrainerConfig, structured

__all__ = ["ConfigError", "DEVICES", "ModelSettings", "OPTIMIZERS", "SCHEDULERS", "TRAIN_COMPILE_MODES", "TrainConfig",
           "check_config", "check_model_config", "normalize_precision", "optional_path"]

TOP_LEVEL = ("model", "data", "optim", "trainer", "seed", "logger")
# What users type (``trainer.precision=32`` arrives as an int) -> the canonical name.
PRECISION_ALIASES = {"32": "32", "fp32": "32", "32-true": "32", "16": "fp16", "fp16": "fp16", "16-mixed": "fp16",
                     "bf16": "bf16", "bf16-mixed": "bf16"}
# Filled in by the training app; the data sizes come from the dataset.
MODEL_KEYS_FROM_DATA = DATA_KEYS


class ConfigError(ValueError):
    """A config value or key the training app cannot use."""


@dataclass(frozen=True)
class ModelSettings:
    """``model``, checked: the preset and every ``SequenceClassifier`` argument but the data's sizes."""

    name: str
    arguments: Mapping[str, Any]                       # read-only; merge_mode as checked MergeModes (not re-checked)
    num_parameters: int                                # without the embedding table (the vocabulary is the data's)

    def build(self, **data_sizes: int) -> nn.Module:
        """The model, with the data's ``num_classes`` and ``vocab_size`` (or ``input_size``)."""
        return create_model(self.name, **data_sizes, **self.arguments)


@dataclass(frozen=True)
class TrainConfig:
    """A composed training config, checked once by :func:`check_config`: what the loop and its set-up read."""

    model: ModelSettings
    data: Mapping[str, Any]                            # read-only: ``data`` completed with its defaults
    optim: OptimConfig
    trainer: TrainerConfig
    seed: int
    precision: str                                     # trainer.precision, canonical: "32" | "bf16" | "fp16"
    resume: Optional[str]                              # trainer.resume / init_from: None when unset or empty
    init_from: Optional[str]
    composed: Mapping[str, Any] = field(repr=False)    # the whole config, plain and resolved (read-only)

    def as_dict(self) -> Dict[str, Any]:
        """The composed config as a plain, resolved dict of its own: what checkpoints and ``results.json`` keep,
        and what a resume compares (``models/training/resume.py``)."""
        return copy.deepcopy(dict(self.composed))


def _known_keys(path: str, node: Mapping[str, Any], allowed: Iterable[str]) -> None:
    allowed = sorted(allowed)
    unknown = sorted(set(node) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown config key {path}.{unknown[0]}; allowed keys under {path}: {allowed}")


def normalize_precision(value: Any) -> str:
    """``trainer.precision`` as typed (``32``, ``"32"``, ``16``, ``bf16``, ``fp16``, ...) ->
    ``"32" | "bf16" | "fp16"``."""
    name = str(value).strip().lower() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if name not in PRECISION_ALIASES:
        raise ConfigError(f"trainer.precision={value!r} is not allowed; choose one of 32, bf16, fp16 (16)")
    return PRECISION_ALIASES[name]


def optional_path(value: Any) -> Optional[str]:
    """``trainer.resume`` / ``trainer.init_from``: None or an empty string (an unset shell variable) mean none."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return str(value)


def _shown(value: Any) -> str:
    """A value as the user typed it: ``-1`` for the -1.0 a float field made of ``optim.weight_decay=-1``."""
    if isinstance(value, float) and value.is_integer():
        return repr(int(value))
    return repr(value)


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")


def check_group(path: str, node: Any, schema: type) -> Any:
    """``node`` (a composed group, or a plain mapping) against its schema dataclass: known keys, types (as Hydra
    checks them when composing), then each field's ``choices``/``min``/``above``. Returns a (frozen) ``schema``."""
    values = plain(node)
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path}={values!r} must be a mapping of keys to values")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    _known_keys(path, values, fields)
    try:
        typed = OmegaConf.merge(structured(schema), values)
    except OmegaConfBaseException as error:
        key = str(error.full_key).split("[")[0] if error.full_key else "?"
        value = values.get(key)
        if value is None:
            raise ConfigError(f"{path}.{key} must not be null") from error
        raise ConfigError(f"{path}.{key}={value!r} must be of type {_type_name(fields[key].type)}") from error
    for key, spec in fields.items():
        if OmegaConf.is_missing(typed, key):
            raise ConfigError(f"{path}.{key} is not set; add it to the group's YAML file or the command line")
        value = typed[key]
        if value is None:
            continue
        bounds = spec.metadata
        if "choices" in bounds:
            check_choice(f"{path}.{key}", value, bounds["choices"], error=ConfigError)
        if "min" in bounds and value < bounds["min"]:
            raise ConfigError(f"{path}.{key}={_shown(value)} must be >= {bounds['min']}")
        if "above" in bounds and not value > bounds["above"]:
            raise ConfigError(f"{path}.{key}={_shown(value)} must be > {bounds['above']}")
        if ("min" in bounds or "above" in bounds) and isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{path}.{key}={_shown(value)} must be a finite number")
    return OmegaConf.to_object(typed)


def command_line_merge_error(error: Exception) -> str:
    """``models.merge``'s message in the spelling the command line parses: Python's ``None`` is ``null`` there
    (``None`` arrives as the string ``'None'``), and a mode per layer is a list in brackets."""
    message = re.sub(r"(?<!')\bNone\b(?!')", "null", str(error))
    typed_none = re.search(r"='(None|none)'", message) is not None
    return (f"model.{message}" + ("; write null, not None" if typed_none else "")
            + "; on the command line: model.merge_mode=sum (every layer), model.merge_mode=null (no merge, the "
              "last layer only) or one mode per layer: model.merge_mode=[concat,null]")


def check_model_config(model: Mapping[str, Any]) -> ModelSettings:
    """``model``: ``name`` is a registered preset; every other key is a ``SequenceClassifier`` argument. Returns
    them checked, with the model's parameter count without its embedding table (the vocabulary comes with the
    data)."""
    name = model.get("name")
    check_choice("model.name", name, list_models(), error=ConfigError)
    parameters = inspect.signature(SequenceClassifier.__init__).parameters
    allowed = [key for key in parameters if key not in ("self", *MODEL_KEYS_FROM_DATA)]
    _known_keys("model", model, ["name", *allowed])
    arguments = {key: value for key, value in model.items() if key != "name"}
    layers = arguments.get("num_layers", parameters["num_layers"].default)
    try:                                               # checked here, once: the models below reuse the result
        arguments["merge_mode"] = resolve_merge_modes(arguments.get("merge_mode", "concat"), layers)
    except (TypeError, ValueError) as error:
        raise ConfigError(command_line_merge_error(error)) from error
    check_choice("model.cell", arguments.get("cell", "lstm"), CELLS, error=ConfigError)
    check_choice("model.pooling", arguments.get("pooling", "last"), POOLINGS, error=ConfigError)
    # Every other argument: build the model on the meta device (no memory, no compute), with stand-in data
    # sizes, and turn its own argument check (and the preset's: model.cell=gru is not a bilstm) into a config
    # error naming the key. It also counts the parameters, for check_fits_in_memory.
    padding = arguments.get("padding_idx", 0)
    vocab = padding + 1 if isinstance(padding, int) and not isinstance(padding, bool) and padding >= 1 else 2
    settings = ModelSettings(name=name, arguments=MappingProxyType(arguments), num_parameters=0)
    try:
        with torch.device("meta"):
            built = settings.build(num_classes=2, vocab_size=vocab)
    except (TypeError, ValueError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        key = next((k for k in sorted(arguments, key=len, reverse=True) if message.startswith(k)), None)
        prefix = f"model.{key}={model[key]!r}: " if key is not None else "model: "
        raise ConfigError(prefix + message) from error
    return dataclasses.replace(settings, num_parameters=sum(p.numel() for p in built.parameters()))


SIZE_KEYS = ("hidden_size", "embed_dim", "num_layers")
TRAINING_BYTES_PER_PARAMETER = 16
"""float32 weights, their gradients and Adam's two moments."""


def _memory_bytes() -> Optional[int]:
    """This machine's memory (``MemTotal``), None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as file:
            for line in file:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits_in_memory(model: Mapping[str, Any], parameters: int, data: Mapping[str, Any],
                         memory: Optional[int] = None) -> None:
    """Refuse, naming the size key to lower, a model whose training state (parameters, gradients, optimiser
    moments) and activations of one batch cannot fit in this machine's memory: a config error in a second, not
    an allocator traceback minutes later."""
    memory = _memory_bytes() if memory is None else memory
    if not memory:
        return
    defaults = inspect.signature(SequenceClassifier.__init__).parameters
    sizes = {key: model.get(key, defaults[key].default) for key in SIZE_KEYS if key in defaults}
    hidden, layers = int(sizes.get("hidden_size") or 1), int(sizes.get("num_layers") or 1)
    steps = data.get("max_len") or 512                   # text without a length bound: a long sentence
    activations = 4 * 16 * hidden * layers * int(data.get("batch_size") or 1) * int(steps)   # gates, states, 2 dirs
    needed = parameters * TRAINING_BYTES_PER_PARAMETER + activations
    if needed <= memory:
        return
    key = max(sizes, key=lambda k: float(sizes[k] or 0) / float(defaults[k].default or 1))
    raise ConfigError(
        f"model.{key}={sizes[key]!r}: the model ({parameters:.3g} parameters without the embedding, "
        f"{needed / 2**30:.1f} GiB to train with gradients, optimiser state and one batch's activations) cannot "
        f"fit in this machine's {memory / 2**30:.1f} GiB of memory; lower model.{key}")


def check_config(cfg: Any) -> TrainConfig:
    """Check the whole composed config, once, before anything is loaded or built; returns it typed and frozen."""
    _known_keys("<root>", cfg, TOP_LEVEL)
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed={seed!r} must be a non-negative integer")
    if isinstance(cfg.get("model"), DictConfig) and OmegaConf.is_missing(cfg.model, "name"):
        raise ConfigError(f"model=preset is the base every preset builds on, not a model: choose one of "
                          f"{', '.join(f'model={name}' for name in list_models())}")
    composed = plain(cfg)
    model = check_model_config(composed["model"])

    optim = check_group("optim", composed["optim"], OptimConfig)
    if optim.betas is not None and (len(optim.betas) != 2 or not all(0.0 <= b < 1.0 for b in optim.betas)):
        raise ConfigError(f"optim.betas={composed['optim']['betas']!r} must be two numbers in [0, 1), e.g. "
                          f"[0.9, 0.999]")
    if not optim.ema_decay < 1.0:
        raise ConfigError(f"optim.ema_decay={composed['optim']['ema_decay']!r} must be in [0, 1): the weight of the "
                          f"running average at each step, e.g. 0.99 (0: no average)")

    trainer = check_group("trainer", composed["trainer"], TrainerConfig)
    precision = normalize_precision(trainer.precision)
    cuda = torch.cuda.is_available()
    if trainer.device == "cuda" and not cuda:
        raise ConfigError("trainer.device='cuda' but no CUDA device is available (torch.cuda.is_available() is "
                          "False); use trainer.device=auto or cpu")
    if precision == "fp16" and (trainer.device == "cpu" or not cuda):
        raise ConfigError(f"trainer.precision={trainer.precision!r} (fp16) needs a CUDA device; use "
                          f"trainer.precision=bf16 on CPU")
    resume, init_from = optional_path(trainer.resume), optional_path(trainer.init_from)
    if resume and init_from:
        raise ConfigError(f"trainer.resume={trainer.resume!r} and trainer.init_from={trainer.init_from!r} "
                          f"both given: resume continues a run (weights, optimiser, schedule, step), init_from "
                          f"starts a new one from a checkpoint's weights; choose one")

    try:
        check_logger_config(composed.get("logger"))
    except ValueError as error:
        raise ConfigError(str(error)) from error
    try:
        data = resolve_data_config(composed["data"])
    except ValueError as error:
        raise ConfigError(str(error)) from error
    check_fits_in_memory(composed["model"], model.num_parameters, data)
    return TrainConfig(model=model, data=MappingProxyType(data), optim=optim, trainer=trainer, seed=seed,
                       precision=precision, resume=resume, init_from=init_from, composed=MappingProxyType(composed))
