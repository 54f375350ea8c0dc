"""One config pass: a run checks each setting once (``merge_mode`` here, the setting a run's model, its
meta-device stand-in and each block used to re-check), hands the loop frozen settings, and calls the callbacks it
is given (the loop's one extension point; tests inject their aids through it)."""

import dataclasses
from pathlib import Path
from typing import Callable, List, Tuple

import pytest
from helpers.composing import TINY, compose_config

import models.merge
from models.merge import MergeModes, resolve_merge_modes
from models.training.callbacks import Callback
from models.training.config import ConfigError, check_config
from models.training.loop import train


def count_merge_mode_checks(monkeypatch: pytest.MonkeyPatch) -> List[Tuple[object, int]]:
    """Every call of the one function that checks a ``merge_mode`` argument, as ``(value, num_layers)``."""
    calls: List[Tuple[object, int]] = []
    check = models.merge.check_merge_modes

    def counted(merge_mode: object, num_layers: int) -> list:
        calls.append((merge_mode, num_layers))
        return check(merge_mode, num_layers)

    monkeypatch.setattr(models.merge, "check_merge_modes", counted)
    return calls


class Steps(Callback):
    """Records what the loop shows a callback."""

    def __init__(self) -> None:
        self.started: List[int] = []
        self.steps: List[int] = []

    def on_train_start(self, run) -> None:  # type: ignore[no-untyped-def]
        self.started.append(run.progress.step)

    def on_step_end(self, run, stop_requested: Callable[[], bool]) -> None:  # type: ignore[no-untyped-def]
        assert stop_requested() is False
        self.steps.append(run.progress.step)


def test_a_tiny_run_checks_merge_mode_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From the composed config to results.json: ``merge_mode`` is checked once (it was 8 times: two
    ``check_config`` calls, each building a meta-device model whose classifier and block re-checked it, then the
    real model and its block)."""
    calls = count_merge_mode_checks(monkeypatch)
    steps = Steps()
    results = train(compose_config(*TINY, "model.merge_mode=[sum,ave]", "trainer.max_epochs=1",
                                   "trainer.infer_batches=1"), tmp_path, callbacks=[steps])
    assert calls == [(["sum", "ave"], 2)]
    assert results["merge_mode"] == ["sum", "ave"] and results["steps"] == 6
    assert steps.started == [0] and steps.steps == [1, 2, 3, 4, 5, 6]


def test_a_bad_merge_mode_is_still_refused_before_any_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_merge_mode_checks(monkeypatch)
    with pytest.raises(ConfigError, match=r"model\.merge_mode\[1\]='avg' is not a merge mode; choose one of "):
        check_config(compose_config(*TINY, "model.merge_mode=[sum,avg]"))
    assert len(calls) == 1


def test_the_checked_settings_are_typed_and_frozen() -> None:
    settings = check_config(compose_config(*TINY, "trainer.precision=32", "model.merge_mode=sum"))
    assert settings.trainer.max_epochs == 2 and settings.precision == "32" and settings.optim.name == "adamw"
    assert isinstance(settings.model.arguments["merge_mode"], MergeModes)
    assert settings.data["batch_size"] == 32
    for change in (lambda: setattr(settings, "seed", 1), lambda: setattr(settings.trainer, "max_epochs", 9),
                   lambda: setattr(settings.optim, "lr", 1.0), lambda: setattr(settings.model, "name", "bigru")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            change()
    with pytest.raises(TypeError):
        settings.data["batch_size"] = 1                               # type: ignore[index]
    with pytest.raises(TypeError):
        settings.model.arguments["hidden_size"] = 1                   # type: ignore[index]
    # What checkpoints keep and a resume compares: plain values, a copy of its own.
    plain = settings.as_dict()
    assert plain["model"]["merge_mode"] == "sum" and type(plain["model"]["merge_mode"]) is str
    plain["seed"] = 5
    assert settings.as_dict()["seed"] == 0


def test_merge_modes_are_checked_when_made_and_not_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_merge_mode_checks(monkeypatch)
    modes = resolve_merge_modes("sum", 2)
    assert resolve_merge_modes(modes, 2) is modes and len(calls) == 1
    with pytest.raises(ValueError, match="has 2 entries but num_layers=3"):   # another depth: checked again
        resolve_merge_modes(modes, 3)
    assert resolve_merge_modes(["sum", "sum"], 2) == modes and len(calls) == 3   # a plain list: checked
