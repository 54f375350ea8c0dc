"""Where a run is (:class:`Progress`, saved in every checkpoint), how it is reported where no progress bar shows
(:class:`ProgressLines`), and the weights it would fall back to after a divergence (:class:`HealthyWeights`)."""

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional

import torch
from torch import nn


@dataclass
class Progress:
    """The loop's counters: ``checkpoint["progress"]`` as a dict, restored on resume (so a resumed run
    continues mid-epoch with the epoch's running sums and the early-stopping state)."""

    epoch: int = 0                    # finished epochs
    step: int = 0                     # global optimiser steps taken (skipped non-finite steps count)
    batch_in_epoch: int = 0           # batches of the current epoch done (a mid-epoch resume skips them)
    best_val_accuracy: float = -1.0
    epochs_since_best: int = 0
    nonfinite_steps: int = 0          # in the whole run
    nonfinite_in_a_row: int = 0       # reaching trainer.max_nonfinite_steps stops the run
    # Running sums of the current epoch (over the global batch under DDP).
    epoch_loss_sum: float = 0.0
    epoch_correct: int = 0
    epoch_count: int = 0
    epoch_tokens: int = 0
    epoch_seconds: float = 0.0
    # Totals of the finished epochs, for results.json's train_tokens_per_s.
    train_seconds: float = 0.0
    train_tokens: int = 0

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Take a checkpoint's ``progress`` (keys this class does not know, e.g. ``weights_only``, are ignored)."""
        for field in dataclasses.fields(self):
            if field.name in saved:
                setattr(self, field.name, saved[field.name])

    def add_step(self, loss_sum: float, correct: int, count: int, tokens: int, seconds: float) -> None:
        """One finished (finite) step's sums over the global batch."""
        self.epoch_loss_sum += loss_sum
        self.epoch_correct += correct
        self.epoch_count += count
        self.epoch_tokens += tokens
        self.epoch_seconds += seconds

    def epoch_metrics(self) -> Dict[str, float]:
        """The running epoch's mean loss, accuracy and training tokens/s."""
        count = max(self.epoch_count, 1)
        return {"train_loss": self.epoch_loss_sum / count, "train_acc": self.epoch_correct / count,
                "tokens_per_s": self.epoch_tokens / max(self.epoch_seconds, 1e-9)}

    def finish_epoch(self, val_accuracy: Optional[float]) -> bool:
        """Close the epoch: totals, early-stopping state, running sums reset. Returns whether val improved;
        ``None`` (no validation split) counts as improved: the newest weights are the ones kept and tested."""
        self.train_seconds += self.epoch_seconds
        self.train_tokens += self.epoch_tokens
        improved = val_accuracy is None or val_accuracy > self.best_val_accuracy
        if improved:
            if val_accuracy is not None:
                self.best_val_accuracy = val_accuracy
            self.epochs_since_best = 0
        else:
            self.epochs_since_best += 1
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_loss_sum, self.epoch_correct, self.epoch_count = 0.0, 0, 0
        self.epoch_tokens, self.epoch_seconds = 0, 0.0
        return improved


def _duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``."""
    seconds = max(round(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressLines:
    """Progress as log lines where no bar shows (stderr not a terminal: SLURM, ``nohup``, a sweep's jobs): one
    line every ``every_steps`` optimiser steps or ``every_seconds`` seconds, whichever comes first, e.g.
    ``epoch 1/3 step 150/282 (53%) loss 0.8123 acc 0.612 tokens/s 41,230 ETA 1m05s``. The ETA is the steps
    left in the run (``max_epochs`` epochs of ``steps_per_epoch``) at the rate of the steps seen so far. One
    object lives for the whole run, so the count goes on across epochs."""

    def __init__(self, every_steps: int, every_seconds: float, max_epochs: int, start_step: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every_steps, self.every_seconds, self.max_epochs = every_steps, every_seconds, max_epochs
        self.clock = clock
        self.start_time = self.last_time = clock()
        self.start_step = self.last_step = start_step

    def due(self, step: int) -> bool:
        """Whether a line is due after global step ``step``."""
        return (step - self.last_step >= self.every_steps
                or (step > self.last_step and self.clock() - self.last_time >= self.every_seconds))

    def line(self, progress: Progress, steps_per_epoch: int) -> str:
        """The line for ``progress`` now (and the next one counted from here)."""
        now = self.clock()
        self.last_time, self.last_step = now, progress.step
        per_epoch = max(steps_per_epoch, 1)
        total = per_epoch * self.max_epochs
        done = progress.epoch * per_epoch + progress.batch_in_epoch
        rate = (now - self.start_time) / max(progress.step - self.start_step, 1)     # seconds per step
        shown = progress.epoch_metrics()
        return (f"epoch {progress.epoch + 1}/{self.max_epochs} step {progress.batch_in_epoch}/{per_epoch} "
                f"({100 * progress.batch_in_epoch / per_epoch:.0f}%) loss {shown['train_loss']:.4f} "
                f"acc {shown['train_acc']:.3f} tokens/s {shown['tokens_per_s']:,.0f} "
                f"ETA {_duration(rate * max(total - done, 0))}")


def _cpu_copy(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class HealthyWeights:
    """The last healthy weights: the start, then each ``last.pt`` written while the weights are finite and the
    training loss is not far above chance level (``2 ln C + 1``). What a diverged run restarts from; huge finite
    weights (1e37 after a too-high learning rate) are not healthy: they only diverge again."""

    def __init__(self, model: nn.Module, step: int, num_classes: int) -> None:
        self.weights = _cpu_copy(model)
        self.step = step
        self.loss_limit = 2.0 * math.log(max(num_classes, 2)) + 1.0
        self.last_loss = math.nan                      # the latest finite step's loss; nan: none yet

    def offer(self, model: nn.Module, step: int) -> None:
        """Keep ``model``'s weights if the latest loss is healthy and every floating weight is finite."""
        if not self.last_loss <= self.loss_limit:
            return
        weights = _cpu_copy(model)
        if all(bool(torch.isfinite(t).all()) for t in weights.values() if t.is_floating_point()):
            self.weights, self.step = weights, step
