"""Switches that only tests use, read from the environment, never from the user's config.

- ``BIRNN_ZOO_KILL_AT_STEP=N``: the process SIGKILLs itself right after global step ``N`` (a hard kill that
  nothing gets to clean up: what a resume must survive).
- ``BIRNN_ZOO_SKIP_RNG_RESTORE=1``: a resume does not restore the checkpoint's RNG state (the negative control
  of the bit-for-bit resume test: other dropout masks, other weights).

Both are unset in normal use; a malformed value is an error naming the variable, not silently ignored.
"""

import os
import signal
from dataclasses import dataclass
from typing import Mapping, Optional

KILL_AT_STEP_ENV = "BIRNN_ZOO_KILL_AT_STEP"
SKIP_RNG_RESTORE_ENV = "BIRNN_ZOO_SKIP_RNG_RESTORE"


@dataclass(frozen=True)
class TestingAids:
    """What the environment asks of this run; the defaults are a normal run."""

    __test__ = False                                   # not a pytest test class, despite its name

    kill_at_step: Optional[int] = None
    restore_rng: bool = True

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None) -> "TestingAids":
        environ = os.environ if environ is None else environ
        kill = environ.get(KILL_AT_STEP_ENV, "").strip()
        if kill and not (kill.isdigit() and int(kill) >= 1):
            raise ValueError(f"{KILL_AT_STEP_ENV}={kill!r} must be a positive integer (a global step) or unset")
        skip = environ.get(SKIP_RNG_RESTORE_ENV, "").strip()
        if skip not in ("", "0", "1"):
            raise ValueError(f"{SKIP_RNG_RESTORE_ENV}={skip!r} must be 1, 0 or unset")
        return cls(kill_at_step=int(kill) if kill else None, restore_rng=skip != "1")

    def after_step(self, step: int) -> None:
        """Kill this process at once when ``step`` is the one ``BIRNN_ZOO_KILL_AT_STEP`` names."""
        if self.kill_at_step is not None and step == self.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
