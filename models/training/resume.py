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
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..atomic import write_atomically
from ..data import resolve_config as resolve_data_config
from .checkpoint import load_checkpoint, resolve_checkpoint_path
from .config import ConfigError, normalize_precision
from .run_folder import run_files

log = logging.getLogger("train")

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


def checkpoint_folder(checkpoint_path: Path) -> Path:
    """The run folder a checkpoint file belongs to (``<run>/checkpoints/last.pt`` -> ``<run>``)."""
    parent = Path(checkpoint_path).parent
    return parent.parent if parent.name == "checkpoints" else parent


def load_for_resume(resume: str, current: Mapping[str, Any], device: torch.device) -> Dict[str, Any]:
    """The checkpoint ``trainer.resume`` names, checked against the current config, with every other file of the
    source run the resume will read checked now, before any step: a damaged ``last.pt`` is a config error naming
    it; a damaged ``best.pt`` is noted in ``state["best_damage"]`` (recoverable: see :func:`adopt_history`)."""
    folder = Path(resume).expanduser()
    if folder.is_dir() and not (folder / "checkpoints" / "last.pt").exists() and run_files(folder):
        raise ConfigError(
            f"trainer.resume={resume}: the run in {folder} stopped before its first checkpoint (it holds "
            f"{', '.join(run_files(folder)[:3])} but no checkpoints/last.pt), so there is nothing to resume; start "
            f"over in it with trainer.overwrite=true (without trainer.resume), or choose another hydra.run.dir")
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
    state["best_damage"], state["best_step"] = _check_best(checkpoint_folder(path) / "checkpoints" / "best.pt")
    return state


def _check_best(best: Path) -> Tuple[Optional[str], Optional[int]]:
    """``(why best.pt cannot be used, None)`` or ``(None, its step)``; ``(None, None)`` without a best.pt."""
    if not best.is_file():
        return None, None
    try:
        return None, int(load_checkpoint(best)["progress"]["step"])
    except (ValueError, KeyError, TypeError) as error:
        return str(error), None


def same_folder(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _metrics_lines(metrics: Path, epoch: int) -> List[str]:
    """The lines of ``metrics.jsonl`` up to ``epoch``; lines a kill cut short or damaged bytes are dropped,
    with a warning that names the file."""
    if not metrics.is_file():
        return []
    lines, dropped = [], 0
    for line in metrics.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("epoch", 0), int):
                raise ValueError(line)
        except ValueError:
            dropped += bool(line.strip())
            continue
        if record.get("epoch", 0) <= epoch:
            lines.append(line)
    if dropped > 1:                                     # one line cut short by a kill is expected
        log.warning("%s: %d damaged lines dropped (kept %d epoch lines)", metrics, dropped, len(lines))
    return lines


def adopt_history(source_dir: Path, run_dir: Path, progress: Dict[str, Any], best_damage: Optional[str] = None,
                  best_step: Optional[int] = None) -> None:
    """Make ``run_dir`` hold the resumed run's history up to the checkpoint: ``metrics.jsonl`` lines of the
    epochs it has finished, and (resuming into another folder) the source's ``best.pt`` when it is not newer
    than the checkpoint. The source folder is only read. A damaged ``best.pt`` is not used: in the run's own
    folder it is set aside as ``best.pt.damaged``; the test then uses the best epoch validated from now on,
    else ``last.pt``'s weights."""
    lines = _metrics_lines(source_dir / "metrics.jsonl", progress["epoch"])
    write_atomically(run_dir / "metrics.jsonl", "".join(line + "\n" for line in lines))
    best = source_dir / "checkpoints" / "best.pt"
    if best_damage is not None:
        log.warning("%s is damaged and is not used (%s); the test will use the best epoch validated from now on, "
                    "else the weights of last.pt", best, best_damage)
        if same_folder(source_dir, run_dir):
            os.replace(best, best.with_name("best.pt.damaged"))
        return
    if not same_folder(source_dir, run_dir) and best.is_file():
        if best_step is None:
            best_step = load_checkpoint(best)["progress"]["step"]
        if best_step <= progress["step"]:
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            write_atomically(run_dir / "checkpoints" / "best.pt", best.read_bytes())


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
