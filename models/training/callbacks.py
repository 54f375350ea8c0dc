"""What code outside the loop may add to a run: objects ``train(cfg, run_dir, callbacks=[...])`` calls.

A callback sees the whole :class:`~models.training.setup.Run` (model, optimiser, progress, settings); the loop
calls each in the order given:

- ``on_train_start(run)``: after the set-up (a resume's weights, optimiser and RNG state restored), before the
  first step;
- ``on_step_end(run, stop_requested)``: after each optimiser step and its checkpoint (``run.progress.step`` is the
  global step just taken); ``stop_requested()`` is true once SIGINT/SIGTERM arrived, and the loop stops after
  the step.

Subclass :class:`Callback` and override what you need; the defaults do nothing.
"""

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:                                      # the run's type only: setup imports the whole training stack
    from .setup import Run


class Callback:
    """Does nothing at each point of the loop; override the methods a callback needs."""

    def on_train_start(self, run: "Run") -> None:
        """Before the first step (of this attempt: after a resume, at its step)."""

    def on_step_end(self, run: "Run", stop_requested: Callable[[], bool]) -> None:
        """After the optimiser step ``run.progress.step`` (and ``trainer.checkpoint_every_steps``' checkpoint)."""
