"""Progress where stderr is not a terminal (SLURM, nohup, a sweep's jobs): lines in the log every N steps or
seconds; "tensorboard not installed" once, and only when TensorBoard was asked for."""

import logging
import re
import sys
from pathlib import Path
from typing import Callable, List

import pytest
from helpers.composing import TINY
from omegaconf import DictConfig

from models.training import setup
from models.training.loop import train
from models.training.progress import Progress, ProgressLines

LINE = re.compile(r"^epoch (\d+)/2 step (\d+)/6 \(\d+%\) loss \d+\.\d{4} acc \d\.\d{3} tokens/s [\d,]+ ETA \d+s$")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_come_every_n_steps_or_seconds_with_an_eta() -> None:
    clock = Clock()
    lines = ProgressLines(every_steps=10, every_seconds=30.0, max_epochs=2, start_step=0,
                          clock=clock)
    progress = Progress(step=5, batch_in_epoch=5, epoch_loss_sum=5.0, epoch_count=10, epoch_correct=4,
                        epoch_tokens=500, epoch_seconds=2.0)
    clock.now += 5
    assert not lines.due(5)                                    # 5 steps, 5 s: neither limit reached
    clock.now += 25
    assert lines.due(5)                                        # 30 s
    text = lines.line(progress, steps_per_epoch=20)
    # 30 s for 5 steps = 6 s a step; 35 steps left of 40 -> 210 s
    assert text == "epoch 1/2 step 5/20 (25%) loss 0.5000 acc 0.400 tokens/s 250 ETA 3m30s"
    assert not lines.due(5) and not lines.due(14) and lines.due(15)   # counted from the last line


def train_log(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.name == "train"]


def test_a_run_without_a_terminal_logs_progress_lines(compose: Callable[..., DictConfig], tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    assert not sys.stderr.isatty()
    caplog.set_level(logging.INFO, logger="train")
    train(compose(*TINY, "trainer.log_every_steps=4", "trainer.log_every_seconds=1000"), tmp_path)
    lines = [m for m in train_log(caplog) if m.startswith("epoch ") and " ETA " in m]
    assert [LINE.match(m).groups() for m in lines] == [("1", "4"), ("2", "2"), ("2", "6")], lines
    assert not [m for m in train_log(caplog) if "tensorboard" in m.lower()]   # not asked for: not mentioned


def test_missing_tensorboard_is_said_once_and_only_when_asked_for(compose: Callable[..., DictConfig], tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # import fails as if not installed
    setup._say_tensorboard_is_missing.cache_clear()
    caplog.set_level(logging.INFO, logger="train")
    for run in ("a", "b"):
        train(compose(*TINY, "trainer.tensorboard=true"), tmp_path / run)
    told = [m for m in train_log(caplog) if "tensorboard is not installed" in m]
    assert len(told) == 1 and "trainer.tensorboard=true" in told[0]
    assert not (tmp_path / "a" / "tensorboard").exists()


def test_each_attempt_opens_with_a_header_line(compose: Callable[..., DictConfig], tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="train")
    train(compose(*TINY), tmp_path)
    train(compose(*TINY, f"trainer.resume={tmp_path}", "trainer.max_epochs=3"), tmp_path)
    train(compose(*TINY, "trainer.overwrite=true"), tmp_path)
    headers = [m for m in train_log(caplog) if m.startswith("===== attempt started ")]
    assert len(headers) == 3 and all(m.endswith(" =====") for m in headers)
    assert ": new run; " in headers[0] and f": resume of {tmp_path}; " in headers[1]
    assert "new run (trainer.overwrite=true: earlier outputs deleted)" in headers[2]
    messages = train_log(caplog)
    assert messages[0] == headers[0]                           # the first line of each attempt
