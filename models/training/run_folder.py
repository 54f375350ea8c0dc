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
import shlex
import shutil
import socket
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .config import ConfigError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
RUN_OUTPUTS = ("results.json", "metrics.jsonl")
"""Files a run writes at the top of its folder (``train.log`` and ``.hydra/`` belong to Hydra)."""


def run_files(run_dir: Path) -> List[str]:
    """What in ``run_dir`` shows that it holds a run: checkpoints and ``results.json`` (relative paths)."""
    found = sorted(str(p.relative_to(run_dir)) for p in (run_dir / "checkpoints").glob("*.pt"))
    if (run_dir / "results.json").exists():
        found.append("results.json")
    return found


def clear_run(run_dir: Path) -> None:
    """Delete a previous run's outputs from ``run_dir`` (``trainer.overwrite=true``); Hydra's files stay."""
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    for name in RUN_OUTPUTS:
        (run_dir / name).unlink(missing_ok=True)


def refuse_a_used_folder(run_dir: Path, overwrite: bool) -> None:
    """A fresh run (no ``trainer.resume``) stops with a config error in a folder holding a run, unless
    ``overwrite`` (then the old outputs are deleted, with a note)."""
    found = run_files(run_dir)
    if not found:
        return
    if overwrite:
        log.warning("trainer.overwrite=true: deleting the previous run in %s (%s)", run_dir, ", ".join(found))
        clear_run(run_dir)
        return
    raise ConfigError(
        f"run folder {run_dir} already holds a run ({', '.join(found[:4])}); continue it with "
        f"trainer.resume={run_dir}, or start over in it with trainer.overwrite=true (or choose another "
        f"hydra.run.dir)")


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
                if holder is None:                      # garbage: whoever wrote it is unknown, refuse
                    holder = {"host": "?", "pid": -1}
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


DROPPED = ("trainer.resume", "trainer.init_from", "trainer.overwrite", "hydra.run.dir")


def continue_command(run_dir: Path, settings: Sequence[str], world_size: int = 1,
                     overrides: Optional[Sequence[str]] = None) -> str:
    """The shell command that reruns this job's overrides with ``settings`` (e.g. ``trainer.resume=<dir>``,
    ``optim.lr=...``) replacing the same keys and the ones in :data:`DROPPED`, in ``run_dir``."""
    overrides = _user_overrides() if overrides is None else list(overrides)
    replaced = {s.split("=", 1)[0].lstrip("+~") for s in settings} | set(DROPPED)
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in replaced]
    launcher = ["python"] if world_size <= 1 else ["torchrun", "--standalone", f"--nproc_per_node={world_size}"]
    words = [*launcher, "train.py", *kept, *settings, f"hydra.run.dir={run_dir}"]
    return " ".join(shlex.quote(str(word)) for word in words)
