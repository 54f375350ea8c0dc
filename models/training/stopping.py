"""How a run stops early on purpose: a signal (Ctrl-C, SLURM/Kubernetes SIGTERM) or a divergence.

:class:`SignalStop` turns SIGINT/SIGTERM into a request the training loop honours after the current step:
it writes ``checkpoints/last.pt`` at that step (mid-epoch), logs the command that continues the run and
raises :class:`Interrupted`, which ``train.py`` turns into exit status 128 + signal (130 for SIGINT, 143 for
SIGTERM). A second signal while the first is being honoured stops at once (the default action).
"""

import signal
from types import FrameType
from typing import Any, Dict, Optional

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The run stopped on a signal after writing ``last.pt``; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, step: int, command: str) -> None:
        self.signum, self.step, self.command = signum, step, command
        super().__init__(f"interrupted ({signal.Signals(signum).name}) at step {step}; continue with: {command}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class TrainingDiverged(RuntimeError):
    """Non-finite losses stopped the run; the message names a checkpoint with finite weights and the command."""


class SignalStop:
    """Context manager: while inside, SIGINT/SIGTERM set :attr:`signum` instead of stopping the process.

    Handlers can only be installed from the main thread; elsewhere (a notebook's worker thread) this does
    nothing and signals keep their usual effect."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signum is not None:                    # a second signal: stop now, the usual way
            self._restore()
            signal.raise_signal(signum)
            return
        self.signum = signum                           # no logging here: a handler may interrupt a log call

    def __enter__(self) -> "SignalStop":
        try:
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:                              # not the main thread
            self._restore()
        return self

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def __exit__(self, *exc: object) -> None:
        self._restore()

    @property
    def requested(self) -> int:
        """1 when a signal arrived (summed over ranks under DDP, so every rank stops at the same step)."""
        return int(self.signum is not None)
