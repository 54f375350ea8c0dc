"""Check a composed training config before anything is loaded or built.

Hydra's struct mode already refuses ``model.typo=1`` and a missing group option; this module refuses the
rest (``+model.typo=1``, ``model.merge_mode=avg``, ``trainer.compile=jit``, ``model.hidden_size=0`` (the
model is built on the meta device to run its own argument checks), ``optim.betas=[0.9]``,
``trainer.device=cuda`` without a GPU, fp16 on CPU, ...) with the key path, the value and the allowed
values, so a typo costs a second, not a run. ``train.py`` prints each as one line ``config error: ...`` and
exits with status 2. Values are accepted as typed: ``trainer.precision=32`` (an int), ``"32"``, ``16``, ``bf16``.
"""

import inspect
from typing import Any, Dict, Iterable, Mapping, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from ..data import resolve_config as resolve_data_config
from ..deploy.compile import COMPILE_MODES
from ..merge import resolve_merge_modes
from ..zoo.classifier import CELLS, POOLINGS, SequenceClassifier
from ..zoo.registry import list_models

TOP_LEVEL = ("model", "data", "optim", "trainer", "seed")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("none", "cosine", "linear")
TRAIN_COMPILE_MODES = tuple(mode for mode in COMPILE_MODES if mode != "export")  # export graphs are eval-only
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("32", "bf16", "fp16")
# What users type (``trainer.precision=32`` arrives as an int) -> the canonical name.
PRECISION_ALIASES = {"32": "32", "fp32": "32", "32-true": "32", "16": "fp16", "fp16": "fp16", "16-mixed": "fp16",
                     "bf16": "bf16", "bf16-mixed": "bf16"}
# Filled in by the training app; the data sizes come from the dataset.
MODEL_KEYS_FROM_DATA = ("vocab_size", "num_classes", "input_size")

OPTIM_KEYS: Dict[str, type] = {"name": str, "lr": float, "weight_decay": float, "betas": list, "momentum": float,
                               "scheduler": str, "warmup_steps": int, "grad_clip": float}
TRAINER_KEYS: Dict[str, type] = {
    "max_epochs": int, "device": str, "compile": str, "precision": str, "patience": int, "resume": str,
    "overwrite": bool, "init_from": str,
    "checkpoint_every_steps": int, "max_nonfinite_steps": int, "num_threads": int, "log_every_steps": int,
    "progress": bool, "tensorboard": bool, "infer_batches": int,
}
# Lower bounds of the integer and float settings (checked after the type).
MINIMUM: Dict[str, float] = {"optim.weight_decay": 0.0, "optim.momentum": 0.0, "optim.warmup_steps": 0,
                             "optim.grad_clip": 0.0, "trainer.patience": 1, "trainer.checkpoint_every_steps": 1,
                             "trainer.max_nonfinite_steps": 1, "trainer.num_threads": 1,
                             "trainer.log_every_steps": 1, "trainer.infer_batches": 0}
NULLABLE = {"trainer.resume", "trainer.init_from", "trainer.num_threads", "trainer.checkpoint_every_steps",
            "optim.betas", "optim.momentum"}


class ConfigError(ValueError):
    """A config value or key the training app cannot use."""


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _choice(path: str, value: Any, choices: Iterable[str]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{path}={value!r} is not allowed; choose one of {choices}")


def _known_keys(path: str, node: Mapping[str, Any], allowed: Iterable[str]) -> None:
    allowed = sorted(allowed)
    unknown = sorted(set(node) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown config key {path}.{unknown[0]}; allowed keys under {path}: {allowed}")


def normalize_precision(value: Any) -> str:
    """``trainer.precision`` as typed (``32``, ``"32"``, ``16``, ``bf16``, ``fp16``, ...) -> ``"32" | "bf16" | "fp16"``."""
    name = str(value).strip().lower() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if name not in PRECISION_ALIASES:
        raise ConfigError(f"trainer.precision={value!r} is not allowed; choose one of 32, bf16, fp16 (16)")
    return PRECISION_ALIASES[name]


def optional_path(value: Any) -> Optional[str]:
    """``trainer.resume`` / ``trainer.init_from``: None or an empty string (an unset shell variable) mean none."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return str(value)


def _typed(path: str, value: Any, kind: type) -> None:
    if value is None:
        if path in NULLABLE:
            return
        raise ConfigError(f"{path} must not be null")
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ConfigError(f"{path}={value!r} must be of type {kind.__name__}")
    if path in MINIMUM and value < MINIMUM[path]:
        raise ConfigError(f"{path}={value!r} must be >= {MINIMUM[path]}")


def check_model_config(model: Mapping[str, Any]) -> None:
    """``model``: ``name`` is a registered preset; every other key is a ``SequenceClassifier`` argument."""
    name = model.get("name")
    _choice("model.name", name, list_models())
    parameters = inspect.signature(SequenceClassifier.__init__).parameters
    allowed = [key for key in parameters if key not in ("self", *MODEL_KEYS_FROM_DATA)]
    _known_keys("model", model, ["name", *allowed])
    layers = model.get("num_layers", parameters["num_layers"].default)
    try:
        resolve_merge_modes(model.get("merge_mode", "concat"), layers)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model.{error}") from error
    _choice("model.cell", model.get("cell", "lstm"), CELLS)
    _choice("model.pooling", model.get("pooling", "last"), POOLINGS)
    # Every other argument: build the model on the meta device (no memory, no compute), with stand-in data
    # sizes, and turn its own argument check into a config error naming the key.
    arguments = {key: value for key, value in model.items() if key != "name"}
    padding = arguments.get("padding_idx", 0)
    vocab = padding + 1 if isinstance(padding, int) and not isinstance(padding, bool) and padding >= 1 else 2
    try:
        with torch.device("meta"):
            SequenceClassifier(num_classes=2, vocab_size=vocab, **arguments)
    except (TypeError, ValueError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        key = next((k for k in sorted(arguments, key=len, reverse=True) if message.startswith(k)), None)
        prefix = f"model.{key}={arguments[key]!r}: " if key is not None else "model: "
        raise ConfigError(prefix + message) from error


def check_config(cfg: Any) -> Dict[str, Any]:
    """Validate the whole composed config; returns the data config completed with its defaults."""
    _known_keys("<root>", cfg, TOP_LEVEL)
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed={seed!r} must be a non-negative integer")
    check_model_config(_plain(cfg.model))

    optim = _plain(cfg.optim)
    _known_keys("optim", optim, OPTIM_KEYS)
    for key, value in optim.items():
        _typed(f"optim.{key}", value, OPTIM_KEYS[key])
    _choice("optim.name", optim["name"], OPTIMIZERS)
    _choice("optim.scheduler", optim.get("scheduler", "none"), SCHEDULERS)
    if optim["lr"] <= 0:
        raise ConfigError(f"optim.lr={optim['lr']!r} must be > 0")
    betas = optim.get("betas")
    if betas is not None and (len(betas) != 2 or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in betas)):
        raise ConfigError(f"optim.betas={betas!r} must be two numbers in [0, 1), e.g. [0.9, 0.999]")

    trainer = _plain(cfg.trainer)
    _known_keys("trainer", trainer, TRAINER_KEYS)
    precision = normalize_precision(trainer.get("precision"))
    for key, value in trainer.items():
        if key in ("resume", "init_from") and isinstance(value, int) and not isinstance(value, bool):
            continue                                   # a folder named by digits (a sweep job's "3")
        if key != "precision":
            _typed(f"trainer.{key}", value, TRAINER_KEYS[key])
    _choice("trainer.device", trainer["device"], DEVICES)
    _choice("trainer.compile", trainer["compile"], TRAIN_COMPILE_MODES)
    if trainer["max_epochs"] < 1:
        raise ConfigError(f"trainer.max_epochs={trainer['max_epochs']!r} must be >= 1")
    cuda = torch.cuda.is_available()
    if trainer["device"] == "cuda" and not cuda:
        raise ConfigError("trainer.device='cuda' but no CUDA device is available (torch.cuda.is_available() is "
                          "False); use trainer.device=auto or cpu")
    if precision == "fp16" and (trainer["device"] == "cpu" or not cuda):
        raise ConfigError(f"trainer.precision={trainer['precision']!r} (fp16) needs a CUDA device; use "
                          f"trainer.precision=bf16 on CPU")
    if optional_path(trainer.get("resume")) and optional_path(trainer.get("init_from")):
        raise ConfigError(f"trainer.resume={trainer['resume']!r} and trainer.init_from={trainer['init_from']!r} "
                          f"both given: resume continues a run (weights, optimiser, schedule, step), init_from "
                          f"starts a new one from a checkpoint's weights; choose one")

    try:
        return resolve_data_config(_plain(cfg.data))
    except ValueError as error:
        raise ConfigError(str(error)) from error
