"""What a resume may change, and how a run starts from another run's checkpoint.

``trainer.resume=<run dir | checkpoint>`` continues a run: weights, optimiser, schedule, scaler, step count,
RNG state. It only makes sense with the settings the checkpoint was trained with, so
:func:`config_differences` compares the checkpoint's config with the current one:

- must match: ``model.*``, ``data.*`` (except :data:`DATA_LOCATION_KEYS`, where the files live and how they
  are fetched or loaded), ``optim.*``, ``seed`` and ``trainer.precision`` (canonical: ``32`` == ``"32"``);
- may change: every other ``trainer.*`` key (``max_epochs``, ``patience``, checkpoint cadence, threads,
  device, compile mode, progress, TensorBoard) and the run folder.

``trainer.init_from=<checkpoint | run dir>`` starts a *new* run from a checkpoint's model weights only (fresh
optimiser, schedule and step count): the way to continue with other optimisation settings, a lower learning
rate after a divergence, or from another run's weights. The architecture must match (:func:`load_weights`).
"""

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import nn

from ..data import resolve_config as resolve_data_config
from .checkpoint import load_checkpoint, resolve_checkpoint_path
from .config import ConfigError, normalize_precision

DATA_LOCATION_KEYS = ("root", "download", "verify_checksum", "num_workers")
"""``data.*`` keys that say where files live or how they are loaded, not what the data is."""

OPTIM_DEFAULTS = {"ema_decay": 0.0}
"""``optim.*`` keys newer than some checkpoints, with the value those runs trained with."""


def _flatten(node: Any, prefix: str) -> Dict[str, Any]:
    if isinstance(node, Mapping):
        flat: Dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: node}


def defining_settings(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The settings of a (plain, resolved) config that define what a run trains, as ``{dotted key: value}``."""
    data = dict(config.get("data") or {})
    try:                                               # where the files live is not compared (nor checked here)
        data = resolve_data_config({**data, "root": None} if "root" in data else data)
    except ValueError:
        data = dict(config.get("data") or {})
    data = {k: v for k, v in data.items() if k not in DATA_LOCATION_KEYS}
    try:
        precision: Any = normalize_precision((config.get("trainer") or {}).get("precision", "32"))
    except ConfigError:
        precision = (config.get("trainer") or {}).get("precision")
    optim = {**OPTIM_DEFAULTS, **(config.get("optim") or {})}   # keys added later: their default then
    return {**_flatten(config.get("model") or {}, "model"), **_flatten(data, "data"),
            **_flatten(optim, "optim"), "seed": config.get("seed"),
            "trainer.precision": precision}


_MISSING = "<missing>"


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> List[str]:
    """``key=<checkpoint value> in the checkpoint, <current value> now`` for every defining setting that differs."""
    old, new = defining_settings(saved), defining_settings(current)
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if a != b:
            lines.append(f"{key}: {a!r} in the checkpoint, {b!r} now")
    return lines


def check_resume_config(path: Path, saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Refuse (one :class:`ConfigError`) a resume whose defining settings differ from the checkpoint's."""
    differences = config_differences(saved, current)
    if differences:
        raise ConfigError(
            f"trainer.resume: {path} was trained with other settings ({'; '.join(differences)}); resume with the "
            f"checkpoint's values, or start a new run from its weights with trainer.init_from={path} (new "
            f"optimiser, schedule and step count)")


def architecture_differences(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> List[str]:
    """Parameter/buffer names and shapes where ``weights`` does not fit ``model``."""
    own = model.state_dict()
    lines = [f"{k} missing from the checkpoint" for k in own if k not in weights]
    lines += [f"{k} not in this model" for k in weights if k not in own]
    lines += [f"{k}: {list(weights[k].shape)} in the checkpoint, {list(own[k].shape)} in this model"
              for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    return lines


def load_weights(model: nn.Module, weights: Mapping[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(weights)`` or one :class:`ConfigError` listing the first differences."""
    differences = architecture_differences(model, weights)
    if differences:
        shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
        raise ConfigError(f"{source}: the checkpoint's model does not fit this model's architecture ({shown}); "
                          f"use the checkpoint's model.* settings and the same data (vocabulary)")
    model.load_state_dict(weights)


def load_for_resume(resume: str, current: Mapping[str, Any], device: torch.device) -> Dict[str, Any]:
    """The checkpoint ``trainer.resume`` names, checked against the current config."""
    try:
        path = resolve_checkpoint_path(resume)
        state = load_checkpoint(path, map_location=device)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    if state["progress"].get("weights_only"):
        raise ConfigError(f"trainer.resume={resume}: {path} holds model weights only (no optimiser state); "
                          f"start a new run from it with trainer.init_from={path}")
    check_resume_config(path, state["config"], current)
    state["path"] = path
    return state


def same_folder(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def adopt_history(source_dir: Path, run_dir: Path, progress: Dict[str, Any]) -> None:
    """Make ``run_dir`` hold the resumed run's history up to the checkpoint: ``metrics.jsonl`` lines of the
    epochs it has finished, and (resuming into another folder) the source's ``best.pt`` when it is not newer
    than the checkpoint. The source folder is only read."""
    lines = []
    metrics = source_dir / "metrics.jsonl"
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        try:
            if json.loads(line).get("epoch", 0) <= progress["epoch"]:
                lines.append(line)
        except (ValueError, AttributeError):           # a line cut short by a kill: dropped
            continue
    (run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    best = source_dir / "checkpoints" / "best.pt"
    if not same_folder(source_dir, run_dir) and best.is_file():
        if load_checkpoint(best)["progress"]["step"] <= progress["step"]:
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            shutil.copy2(best, run_dir / "checkpoints" / "best.pt")


def resolve_init_from(init_from: str) -> Path:
    """``trainer.init_from``: a checkpoint file, or a run folder (its ``checkpoints/best.pt``, else ``last.pt``)."""
    path = Path(init_from).expanduser()
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
    if not path.is_file():
        raise ConfigError(f"trainer.init_from={init_from!r}: no checkpoint there; give a .pt checkpoint file or a "
                          f"run folder holding checkpoints/best.pt or last.pt")
    return path


def load_init_weights(model: nn.Module, init_from: str, device: torch.device) -> Optional[Path]:
    """Load the model weights of ``trainer.init_from`` into ``model``; returns the checkpoint's path."""
    path = resolve_init_from(init_from)
    try:
        state = load_checkpoint(path, map_location=device)
    except ValueError as error:
        raise ConfigError(f"trainer.init_from: {error}") from error
    load_weights(model, state["model"], f"trainer.init_from={path}")
    return path
