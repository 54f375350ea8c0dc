"""Switches that only tests use, read from the environment: a :class:`~models.training.callbacks.Callback` that
``tests/helpers/train_with_aids.py`` (``train.py`` for tests) gives the run; ``train.py`` itself knows nothing of them.

- ``BIRNN_ZOO_KILL_AT_STEP=N``: the process SIGKILLs itself right after global step ``N`` (a hard kill that
  nothing gets to clean up: what a resume must survive).
- ``BIRNN_ZOO_PAUSE_AT_STEP=N``: right after global step ``N`` the process prints ``paused at step N`` on stderr
  and waits (at most 5 minutes) until a stopping signal arrives, then goes on; a test can then act on a run that
  is known to be mid-epoch, whatever the machine's speed (a fixed sleep was either too short or too long).
- ``BIRNN_ZOO_SKIP_RNG_RESTORE=1``: a resume continues from a freshly seeded RNG, not the checkpoint's RNG state
  (the negative control of the bit-for-bit resume test: other dropout masks, other weights).

All are unset in normal use; a malformed value is an error naming the variable, not silently ignored.
"""

import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from models.training.callbacks import Callback
from models.training.runtime import seed_everything

KILL_AT_STEP_ENV = "BIRNN_ZOO_KILL_AT_STEP"
PAUSE_AT_STEP_ENV = "BIRNN_ZOO_PAUSE_AT_STEP"
PAUSE_LIMIT_SECONDS = 300.0
SKIP_RNG_RESTORE_ENV = "BIRNN_ZOO_SKIP_RNG_RESTORE"


@dataclass(frozen=True)
class TestingAids(Callback):
    """What the environment asks of this run; the defaults are a normal run."""

    __test__ = False                                   # not a pytest test class, despite its name

    kill_at_step: Optional[int] = None
    pause_at_step: Optional[int] = None
    restore_rng: bool = True

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None) -> "TestingAids":
        environ = os.environ if environ is None else environ
        kill = _step_from(environ, KILL_AT_STEP_ENV)
        pause = _step_from(environ, PAUSE_AT_STEP_ENV)
        skip = environ.get(SKIP_RNG_RESTORE_ENV, "").strip()
        if skip not in ("", "0", "1"):
            raise ValueError(f"{SKIP_RNG_RESTORE_ENV}={skip!r} must be 1, 0 or unset")
        return cls(kill_at_step=kill, pause_at_step=pause, restore_rng=skip != "1")

    def on_train_start(self, run: Any) -> None:
        """``BIRNN_ZOO_SKIP_RNG_RESTORE=1`` on a resume: replace the checkpoint's RNG state just restored."""
        if not self.restore_rng and run.resume:
            seed_everything(run.settings.seed)

    def on_step_end(self, run: Any, stop_requested: Callable[[], bool]) -> None:
        self.after_step(run.progress.step, stop_requested)

    def after_step(self, step: int, signalled: Callable[[], bool]) -> None:
        """Kill this process at once when ``step`` is the one ``BIRNN_ZOO_KILL_AT_STEP`` names; wait for a signal
        (``signalled()`` true) when it is the one ``BIRNN_ZOO_PAUSE_AT_STEP`` names."""
        if self.kill_at_step is not None and step == self.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.pause_at_step is not None and step == self.pause_at_step:
            print(f"paused at step {step} ({PAUSE_AT_STEP_ENV})", file=sys.stderr, flush=True)
            deadline = time.monotonic() + PAUSE_LIMIT_SECONDS
            while not signalled() and time.monotonic() < deadline:
                time.sleep(0.01)


def _step_from(environ: Mapping[str, str], name: str) -> Optional[int]:
    """The global step variable ``name`` holds, or None when unset."""
    value = environ.get(name, "").strip()
    if value and not (value.isdigit() and int(value) >= 1):
        raise ValueError(f"{name}={value!r} must be a positive integer (a global step) or unset")
    return int(value) if value else None
