"""Check a composed training config before anything is loaded or built.

Hydra's struct mode already refuses ``model.typo=1`` and a missing group option; this module refuses the
rest (``+model.typo=1``, ``model.merge_mode=avg``, ``trainer.compile=jit``, ...) with the key path, the
value and the allowed values, so a typo costs a second, not a run.
"""

import inspect
from typing import Any, Dict, Iterable, Mapping

from omegaconf import DictConfig, OmegaConf

from .classifier import CELLS, POOLINGS, SequenceClassifier
from .compile import COMPILE_MODES
from .data import resolve_config as resolve_data_config
from .merge import resolve_merge_modes
from .registry import list_models

TOP_LEVEL = ("model", "data", "optim", "trainer", "seed")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("none", "cosine", "linear")
TRAIN_COMPILE_MODES = tuple(mode for mode in COMPILE_MODES if mode != "export")  # export graphs are eval-only
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("32", "bf16", "fp16")
# Filled in by the training app; the data sizes come from the dataset.
MODEL_KEYS_FROM_DATA = ("vocab_size", "num_classes", "input_size")

OPTIM_KEYS: Dict[str, type] = {"name": str, "lr": float, "weight_decay": float, "betas": list, "momentum": float,
                               "scheduler": str, "warmup_steps": int, "grad_clip": float}
TRAINER_KEYS: Dict[str, type] = {
    "max_epochs": int, "device": str, "compile": str, "precision": str, "patience": int, "resume": str,
    "checkpoint_every_steps": int, "max_nonfinite_steps": int, "num_threads": int, "log_every_steps": int,
    "progress": bool, "tensorboard": bool, "infer_batches": int, "restore_rng": bool, "kill_at_step": int,
}
NULLABLE = {"trainer.resume", "trainer.num_threads", "trainer.kill_at_step", "trainer.checkpoint_every_steps",
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

    trainer = _plain(cfg.trainer)
    _known_keys("trainer", trainer, TRAINER_KEYS)
    for key, value in trainer.items():
        _typed(f"trainer.{key}", value, TRAINER_KEYS[key])
    _choice("trainer.device", trainer["device"], DEVICES)
    _choice("trainer.compile", trainer["compile"], TRAIN_COMPILE_MODES)
    _choice("trainer.precision", str(trainer["precision"]), PRECISIONS)
    if trainer["max_epochs"] < 1:
        raise ConfigError(f"trainer.max_epochs={trainer['max_epochs']!r} must be >= 1")

    try:
        return resolve_data_config(_plain(cfg.data))
    except ValueError as error:
        raise ConfigError(str(error)) from error
