"""A run folder belongs to one run: ownership checks, a lock file, and the command that continues a run.

A *run folder* (``hydra.run.dir``, one per sweep job) holds one training run: ``checkpoints/last.pt`` and
``best.pt``, ``metrics.jsonl``, ``results.json``, TensorBoard events, Hydra's ``.hydra/`` and ``train.log``.

- :func:`run_files` says whether a folder already holds a run (any checkpoint or ``results.json``); a fresh
  run refuses such a folder unless ``trainer.overwrite=true`` (then :func:`clear_run` deletes the old run's
  outputs first), so a killed run is never overwritten and two runs never share a ``metrics.jsonl``.
- :class:`RunLock` keeps a second process out of a folder in use: ``<run dir>/.lock`` holds the owner's host
  and pid, created with ``O_EXCL``. A lock left by a dead process on this host is taken over, with a note.
- :func:`continue_command` rebuilds the command line that continues this run (after a signal) or starts a
  new one from its weights (after divergence): the user's own overrides, with ``trainer.resume`` /
  ``trainer.init_from`` / ``hydra.run.dir`` set.
"""

import json
import logging
import os
import re
import shlex
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..atomic import orphans, remove_orphans, write_atomically
from .config import ConfigError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
RUN_OUTPUTS = ("results.json", "metrics.jsonl", "job_error.json", "metrics.csv", "mlflow.db")
"""Files a run writes at the top of its folder, the default files of ``logger=csv`` and ``logger=mlflow``
included (``train.log`` and ``.hydra/`` belong to Hydra)."""
CHECKPOINT_NAMES = ("last.pt", "best.pt", "recover.pt", "best.pt.damaged")
STALE_EMPTY_LOCK_SECONDS = 5.0
"""An empty lock file older than this was left by a process killed between creating and writing it."""


def run_files(run_dir: Path) -> List[str]:
    """Every file of a run in ``run_dir`` (relative paths): checkpoints, ``metrics.jsonl``, ``results.json``,
    TensorBoard events and the temporaries of a killed write. A folder holding any of them is in use by a run,
    even one killed before its first checkpoint. Files the run did not write (a user's notes) are not listed."""
    run_dir = Path(run_dir)
    checkpoints = run_dir / "checkpoints"
    found = [checkpoints / name for name in CHECKPOINT_NAMES if (checkpoints / name).is_file()]
    found += orphans(checkpoints) + orphans(run_dir)
    found += [run_dir / name for name in RUN_OUTPUTS if (run_dir / name).is_file()]
    tensorboard = run_dir / "tensorboard"
    if tensorboard.is_dir():
        found += sorted(p for p in tensorboard.glob("events.out.tfevents.*") if p.is_file())
    return sorted(str(p.relative_to(run_dir)) for p in found)


def clear_run(run_dir: Path) -> List[str]:
    """Delete a previous run's files from ``run_dir`` (``trainer.overwrite=true``) and return them: only what
    :func:`run_files` lists; a user's own files, Hydra's files and non-empty folders stay."""
    removed = run_files(run_dir)
    for name in removed:
        (run_dir / name).unlink(missing_ok=True)
    for folder in ("tensorboard", "checkpoints"):
        try:
            (run_dir / folder).rmdir()                  # only when empty: a user's file in it keeps it
        except OSError:
            pass
    return removed


def clean_orphans(run_dir: Path) -> List[str]:
    """Remove the temporaries a killed write left in ``run_dir`` (call with the folder's lock held)."""
    removed = remove_orphans(run_dir / "checkpoints") + remove_orphans(run_dir)
    if removed:
        log.warning("removed %d temporary file(s) a killed write left in %s: %s", len(removed), run_dir,
                    ", ".join(str(p.relative_to(run_dir)) for p in removed))
    return [str(p.relative_to(run_dir)) for p in removed]


def refuse_a_used_folder(run_dir: Path, overwrite: bool) -> None:
    """A fresh run (no ``trainer.resume``) stops with a config error in a folder holding anything of a run,
    unless ``overwrite`` (then the old run's files, and only those, are deleted and listed)."""
    found = run_files(run_dir)
    if not found:
        return
    if overwrite:
        removed = clear_run(run_dir)
        log.warning("trainer.overwrite=true: deleted the previous run's %d file(s) in %s: %s", len(removed),
                    run_dir, ", ".join(removed))
        return
    shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
    if (run_dir / "checkpoints" / "last.pt").is_file():
        choice = f"continue it with trainer.resume={_quote_value(str(run_dir))}, or start over in it with"
    else:                                               # killed before its first checkpoint: nothing to resume
        choice = "it stopped before its first checkpoint, so it cannot be resumed; start over in it with"
    raise ConfigError(f"run folder {run_dir} already holds a run ({shown}); {choice} trainer.overwrite=true "
                      f"(or choose another hydra.run.dir)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True                                     # exists, owned by someone else
    return True


class RunLock:
    """``<run dir>/.lock`` while a run uses the folder; ``release()`` (or the context manager) removes it."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.owner = {"host": socket.gethostname(), "pid": os.getpid()}
        self.held = False

    def _holder(self) -> Optional[Dict[str, object]]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _stale_unreadable(self) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except OSError:
            return False
        return age > STALE_EMPTY_LOCK_SECONDS

    def acquire(self) -> "RunLock":
        """Take the lock or raise :class:`ConfigError` naming the process that holds it."""
        for _ in range(3):                              # a racing taker-over may delete the file between tries
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                for _ in range(10):                     # created a moment ago, its content not yet written
                    if holder is not None:
                        break
                    time.sleep(0.05)
                    holder = self._holder()
                if holder is None and self._stale_unreadable():
                    log.warning("removing the lock file %s: it is empty or unreadable and %.0f s old (its process "
                                "was killed before writing it)", self.path, STALE_EMPTY_LOCK_SECONDS)
                    self.path.unlink(missing_ok=True)
                    continue
                if holder is None:                      # unreadable and fresh: someone may be writing it, refuse
                    raise ConfigError(
                        f"run folder {self.path.parent} holds an unreadable lock file {self.path} written moments "
                        f"ago; wait and retry, or delete it if no run uses the folder") from None
                pid, host = holder.get("pid"), holder.get("host")
                same_host = host == self.owner["host"]
                if same_host and isinstance(pid, int) and pid == os.getpid():
                    raise ConfigError(f"run folder {self.path.parent} is already in use by this process") from None
                if same_host and isinstance(pid, int) and pid > 0 and not _alive(pid):
                    log.warning("taking over the stale lock %s of process %d, which no longer runs", self.path, pid)
                    self.path.unlink(missing_ok=True)
                    continue
                raise ConfigError(
                    f"run folder {self.path.parent} is in use by process {pid} on {host} (lock file {self.path}); "
                    f"wait for it to finish, choose another hydra.run.dir, or delete the lock file if that "
                    f"process is gone") from None
            with os.fdopen(handle, "w") as file:
                json.dump(self.owner, file)
            self.held = True
            return self
        raise ConfigError(f"could not take the lock {self.path}: other processes keep taking it")

    def release(self) -> None:
        if self.held and self._holder() == self.owner:   # host and pid: the same pid on another node is another process
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _user_overrides() -> List[str]:
    """The overrides this job was started with (Hydra's task overrides; empty outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    except ImportError:  # pragma: no cover - hydra is a dependency
        return []


_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_\-./:]*")


def _quote_value(value: str) -> str:
    """``value`` as Hydra's override grammar reads it back unchanged: plain paths as they are, anything else
    (``;``, ``$(``, ``${``, spaces, commas, quotes) in Hydra's single quotes with its escapes."""
    if _PLAIN_VALUE.fullmatch(value):
        return value
    return "'" + value.replace("'", "\\'").replace("${", "\\${") + "'"


def _setting(word: str) -> str:
    key, sep, value = word.partition("=")
    return f"{key}={_quote_value(value)}" if sep else word


DROPPED = ("trainer.resume", "trainer.init_from", "trainer.overwrite", "hydra.run.dir")


def continue_command(run_dir: Path, settings: Sequence[str], world_size: int = 1,
                     overrides: Optional[Sequence[str]] = None) -> str:
    """The shell command that reruns this job's overrides with ``settings`` (e.g. ``trainer.resume=<dir>``,
    ``optim.lr=...``) replacing the same keys and the ones in :data:`DROPPED`, in ``run_dir``."""
    overrides = _user_overrides() if overrides is None else list(overrides)
    replaced = {s.split("=", 1)[0].lstrip("+~") for s in settings} | set(DROPPED)
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in replaced]
    launcher = ["python"] if world_size <= 1 else ["torchrun", "--standalone", f"--nproc_per_node={world_size}"]
    words = [*launcher, "train.py", *kept, *(_setting(str(s)) for s in settings), _setting(f"hydra.run.dir={run_dir}")]
    return " ".join(shlex.quote(str(word)) for word in words)


def record_hydra_files(run_dir: Path, cfg: Any) -> None:
    """Hydra's ``.hydra/{config,hydra,overrides}.yaml`` for the run in ``run_dir``, written (atomically) once the
    folder is claimed: ``conf/hydra/default.yaml`` sets ``hydra.output_subdir: null`` so that Hydra does not write
    them before ``train.py`` knows whether the folder is this run's. Nothing outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    folder = Path(run_dir) / ".hydra"
    write_atomically(folder / "config.yaml", OmegaConf.to_yaml(cfg))
    write_atomically(folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})))
    write_atomically(folder / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.overrides.task))
