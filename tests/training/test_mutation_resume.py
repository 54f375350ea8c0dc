"""``models/training/resume.py`` function by function, sharp enough that mutation testing (issue 37) finds no
change a user would not notice: what a resume compares, every refusal's message, the history a resumed run
adopts, and which checkpoint ``trainer.init_from`` picks. Small configs and tiny models; no training."""

import json
import logging
import re
from pathlib import Path
from typing import Any, Dict

import pytest
import torch
from torch import nn

from models.data import resolve_config as resolve_data_config
from models.training import resume as resume_module
from models.training.checkpoint import FORMAT, REQUIRED_KEYS, save_checkpoint
from models.training.config import ConfigError
from models.training.resume import (
    _check_best,
    _flatten,
    _metrics_lines,
    adopt_history,
    architecture_differences,
    check_resume_config,
    checkpoint_folder,
    config_differences,
    defining_settings,
    load_for_resume,
    load_init_weights,
    load_weights,
    resolve_init_from,
    same_folder,
)

CPU = torch.device("cpu")
CONFIG = {"model": {"name": "bilstm", "hidden_size": 8, "cell": {"kind": "lstm"}}, "data": {"name": "synthetic"},
          "optim": {"lr": 0.1, "ema_decay": 0.0}, "seed": 1, "trainer": {"precision": "32", "max_epochs": 2}}


def with_(config: Dict[str, Any], **changes: Any) -> Dict[str, Any]:
    """``config`` with dotted keys (``data__batch_size``) changed; ``None`` removes a key."""
    out = json.loads(json.dumps(config))
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return out


# -- defining_settings / config_differences ---------------------------------------------------------------------
def test_the_defining_settings_of_a_config_are_model_data_optim_seed_and_precision() -> None:
    data = {k: v for k, v in resolve_data_config({"name": "synthetic"}).items()
            if k not in ("download", "verify_checksum", "num_workers")}
    assert "batch_size" in data and "num_workers" not in data
    assert defining_settings(CONFIG) == {
        "model.name": "bilstm", "model.hidden_size": 8, "model.cell.kind": "lstm",
        **{f"data.{k}": v for k, v in data.items()},
        "optim.lr": 0.1, "optim.ema_decay": 0.0, "seed": 1, "trainer.precision": "32"}


def test_flattening_names_nested_keys_with_dots() -> None:
    assert _flatten({"a": {"b": 1, "c": {"d": 2}}, 3: "x"}, "") == {"a.b": 1, "a.c.d": 2, "3": "x"}
    assert _flatten(5, "seed") == {"seed": 5}


def test_a_config_without_sections_has_defaults_for_optim_and_precision() -> None:
    assert defining_settings({}) == {"optim.ema_decay": 0.0, "seed": None, "trainer.precision": "32"}
    assert defining_settings({"model": None, "data": None, "optim": None, "trainer": None}) == defining_settings({})


def test_precision_is_compared_canonically_and_an_unknown_one_as_written() -> None:
    assert defining_settings(with_(CONFIG, trainer__precision=32))["trainer.precision"] == "32"
    assert defining_settings(with_(CONFIG, trainer__precision="bf16-mixed"))["trainer.precision"] == "bf16"
    assert defining_settings(with_(CONFIG, trainer__precision=None))["trainer.precision"] == "32"
    assert defining_settings(with_(CONFIG, trainer__precision="fp64"))["trainer.precision"] == "fp64"


def test_data_that_does_not_resolve_is_compared_as_written() -> None:
    odd = {"name": "synthetic", "no_such_key": 1}
    assert {k: v for k, v in defining_settings({"data": odd}).items() if k.startswith("data.")} == \
        {"data.name": "synthetic", "data.no_such_key": 1}
    assert config_differences({"data": odd}, {"data": {**odd, "no_such_key": 2}}) == \
        ["data.no_such_key: 1 in the checkpoint, 2 now"]


def test_data_in_a_folder_missing_here_is_compared_with_its_defaults_filled_in() -> None:
    """The checkpoint's ``data.root`` need not exist on this node: its other keys still resolve, so a key left
    at its default equals the same value written out."""
    saved = {"data": {"name": "trec", "root": "/no/such/old/node"}}
    current = {"data": {"name": "trec", "root": "/no/such/new/node", "batch_size": 64, "lowercase": True}}
    assert config_differences(saved, current) == []
    assert config_differences(saved, with_(current, data__batch_size=8)) == [
        "data.batch_size: 64 in the checkpoint, 8 now"]


def test_location_keys_may_change_and_every_other_data_key_may_not() -> None:
    moved = with_(CONFIG, data__num_workers=3)
    assert config_differences(CONFIG, moved) == []
    assert config_differences(CONFIG, with_(CONFIG, data__max_len=30)) == ["data.max_len: 60 in the checkpoint, 30 now"]


def test_an_older_checkpoint_without_ema_decay_trained_without_ema() -> None:
    old = with_(CONFIG, optim__ema_decay=None)
    assert config_differences(old, CONFIG) == []
    assert config_differences(old, with_(CONFIG, optim__ema_decay=0.9)) == [
        "optim.ema_decay: 0.0 in the checkpoint, 0.9 now"]


def test_differences_are_sorted_and_name_a_key_on_one_side_only_as_missing() -> None:
    current = with_(CONFIG, seed=2, model__dropout=0.5, model__hidden_size=None)
    assert config_differences(CONFIG, current) == [
        "model.dropout: '<missing>' in the checkpoint, 0.5 now",
        "model.hidden_size: 8 in the checkpoint, '<missing>' now",
        "seed: 1 in the checkpoint, 2 now"]


def test_other_trainer_keys_may_change() -> None:
    assert config_differences(CONFIG, with_(CONFIG, trainer__max_epochs=9, trainer__device="cpu")) == []


def test_a_refused_resume_lists_every_difference_and_the_way_out() -> None:
    check_resume_config(Path("run/last.pt"), CONFIG, with_(CONFIG, trainer__max_epochs=5))   # no error
    with pytest.raises(ConfigError) as error:
        check_resume_config(Path("run/last.pt"), CONFIG, with_(CONFIG, seed=2, optim__lr=0.5))
    assert str(error.value) == (
        "trainer.resume: run/last.pt was trained with other settings (optim.lr: 0.1 in the checkpoint, 0.5 now; "
        "seed: 1 in the checkpoint, 2 now); resume with the checkpoint's values, or start a new run from its "
        "weights with trainer.init_from=run/last.pt (new optimiser, schedule and step count)")


# -- architecture ------------------------------------------------------------------------------------------------
def model() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))


def test_architecture_differences_name_missing_extra_and_reshaped_tensors() -> None:
    weights = {k: v.clone() for k, v in model().state_dict().items()}
    assert architecture_differences(model(), weights) == []
    del weights["0.bias"]
    weights["2.weight"] = torch.zeros(1)
    weights["1.weight"] = torch.zeros(1, 4)
    assert architecture_differences(model(), weights) == [
        "0.bias missing from the checkpoint", "2.weight not in this model",
        "1.weight: [1, 4] in the checkpoint, [1, 3] in this model"]


def test_load_weights_loads_or_lists_at_most_four_differences() -> None:
    source, target = model(), model()
    load_weights(target, source.state_dict(), "x")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values(),
                                                 strict=True))
    tail = "; use the checkpoint's model.* settings and the same data (vocabulary)"
    four = {"0.weight": torch.zeros(3, 2)}             # 3 missing, 1 extra
    with pytest.raises(ConfigError) as error:
        load_weights(model(), {**four, "extra": torch.zeros(1)}, "trainer.init_from=a.pt")
    assert str(error.value) == (
        "trainer.init_from=a.pt: the checkpoint's model does not fit this model's architecture (0.bias missing from "
        "the checkpoint; 1.weight missing from the checkpoint; 1.bias missing from the checkpoint; extra not in "
        "this model)" + tail)
    with pytest.raises(ConfigError) as error:
        load_weights(model(), {"e1": torch.zeros(1), "e2": torch.zeros(1)}, "src")
    assert str(error.value) == (
        "src: the checkpoint's model does not fit this model's architecture (0.weight missing from the checkpoint; "
        "0.bias missing from the checkpoint; 1.weight missing from the checkpoint; 1.bias missing from the "
        "checkpoint; and 2 more)" + tail)
    with pytest.raises(ConfigError, match=r"checkpoint; and 1 more\)"):
        load_weights(model(), {"e1": torch.zeros(1)}, "src")


# -- load_for_resume ---------------------------------------------------------------------------------------------
def write_checkpoint(path: Path, step: int = 10, epoch: int = 2, config: Any = None, **progress: Any) -> Path:
    state: Dict[str, Any] = {key: {} for key in REQUIRED_KEYS}
    state.update(format=FORMAT, model={"w": torch.ones(2)}, config=CONFIG if config is None else config,
                 progress={"step": step, "epoch": epoch, **progress})
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(state, path)


def test_load_for_resume_returns_the_checked_checkpoint_with_its_path_and_best(tmp_path: Path) -> None:
    last = write_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", step=10)
    state = load_for_resume(str(tmp_path / "run"), with_(CONFIG, trainer__max_epochs=5), CPU)
    assert state["path"] == last and state["progress"]["step"] == 10
    assert (state["best_damage"], state["best_step"]) == (None, None)
    write_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", step=6)
    state = load_for_resume(str(last), CONFIG, CPU)
    assert (state["best_damage"], state["best_step"]) == (None, 6)


def test_load_for_resume_checks_the_config(tmp_path: Path) -> None:
    last = write_checkpoint(tmp_path / "last.pt")
    with pytest.raises(ConfigError, match=rf"^trainer\.resume: {re.escape(str(last))} was trained with other "
                                          r"settings \(seed: 1 in the checkpoint, 3 now\)"):
        load_for_resume(str(last), with_(CONFIG, seed=3), CPU)


def test_a_weights_only_checkpoint_cannot_be_resumed(tmp_path: Path) -> None:
    last = write_checkpoint(tmp_path / "w.pt", weights_only=True)
    with pytest.raises(ConfigError) as error:
        load_for_resume(str(last), CONFIG, CPU)
    assert str(error.value) == (f"trainer.resume={last}: {last} holds model weights only (no optimiser state); "
                                f"start a new run from it with trainer.init_from={last}")
    write_checkpoint(tmp_path / "full.pt")   # a full checkpoint carries no weights-only flag in its progress
    load_for_resume(str(tmp_path / "full.pt"), CONFIG, CPU)


def test_a_run_killed_before_its_first_checkpoint_has_nothing_to_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name in ("metrics.jsonl", "results.json", "job_error.json", "metrics.csv"):
        (run / name).write_text("{}")
    with pytest.raises(ConfigError) as error:
        load_for_resume(str(run), CONFIG, CPU)
    assert str(error.value) == (
        f"trainer.resume={run}: the run in {run} stopped before its first checkpoint (it holds job_error.json, "
        f"metrics.csv, metrics.jsonl but no checkpoints/last.pt), so there is nothing to resume; start over in it "
        f"with trainer.overwrite=true (without trainer.resume), or choose another hydra.run.dir")


def test_no_checkpoint_or_a_broken_one_is_a_config_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"^trainer\.resume='.*empty': no checkpoint at .*last\.pt; give a run "):
        load_for_resume(str(tmp_path / "empty"), CONFIG, CPU)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=r"^checkpoint .*bad\.pt is corrupted, truncated"):
        load_for_resume(str(tmp_path / "bad.pt"), CONFIG, CPU)


def test_load_for_resume_maps_onto_the_device(tmp_path: Path) -> None:
    last = write_checkpoint(tmp_path / "last.pt")
    assert load_for_resume(str(last), CONFIG, torch.device("meta"))["model"]["w"].device.type == "meta"


def test_a_best_checkpoint_that_cannot_be_used_says_why(tmp_path: Path) -> None:
    best = tmp_path / "best.pt"
    assert _check_best(best) == (None, None)
    write_checkpoint(best, step=7)
    assert _check_best(best) == (None, 7)
    best.write_bytes(b"garbage")
    damage, step = _check_best(best)
    assert step is None and damage.startswith(f"checkpoint {best} is corrupted")
    state: Dict[str, Any] = {key: {} for key in REQUIRED_KEYS}
    save_checkpoint({**state, "format": FORMAT, "progress": {}}, best)
    assert _check_best(best) == ("'step'", None)                  # KeyError
    save_checkpoint({**state, "format": FORMAT, "progress": {"step": None}}, best)
    damage, step = _check_best(best)
    assert step is None and "NoneType" in damage                   # TypeError


def test_checkpoint_folder_and_same_folder(tmp_path: Path) -> None:
    assert checkpoint_folder(tmp_path / "run" / "checkpoints" / "last.pt") == tmp_path / "run"
    assert checkpoint_folder(tmp_path / "run" / "saved" / "last.pt") == tmp_path / "run" / "saved"
    assert same_folder(tmp_path / "a" / ".." / "b", tmp_path / "b")
    assert not same_folder(tmp_path / "a", tmp_path / "b")


# -- history ----------------------------------------------------------------------------------------------------
def line(epoch: Any, **extra: Any) -> str:
    return json.dumps({"epoch": epoch, **extra})


def test_metrics_lines_keep_the_finished_epochs_and_drop_damaged_lines(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    metrics = tmp_path / "metrics.jsonl"
    assert _metrics_lines(metrics, 3) == []
    good = [line(1), line(2), json.dumps({"note": "no epoch"}), line(3)]
    metrics.write_bytes(("\n".join([*good[:2], "", '{"epoch": 2', *good[2:], line(4)]) + "\n")
                        .encode())
    with caplog.at_level(logging.WARNING, logger="train"):
        assert _metrics_lines(metrics, 3) == good
    assert caplog.records == [], "one line cut short by a kill (and blank lines) are expected: no warning"
    metrics.write_bytes(b"\n".join([line(1).encode(), b"[1, 2]", b"\xff\xfe{", line("1").encode(), line(2).encode()]))
    with caplog.at_level(logging.WARNING, logger="train"):
        assert _metrics_lines(metrics, 1) == [line(1)]
    assert [r.getMessage() for r in caplog.records] == [f"{metrics}: 3 damaged lines dropped (kept 1 epoch lines)"]


def test_a_resume_in_its_own_folder_keeps_the_history_up_to_the_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text("".join(line(e) + "\n" for e in (1, 2, 3)))
    write_checkpoint(tmp_path / "checkpoints" / "best.pt", step=30)
    adopt_history(tmp_path, tmp_path, {"epoch": 2, "step": 20})
    assert (tmp_path / "metrics.jsonl").read_text() == line(1) + "\n" + line(2) + "\n"
    assert (tmp_path / "checkpoints" / "best.pt").is_file(), "its own best.pt stays"
    adopt_history(tmp_path, tmp_path, {"epoch": 0, "step": 0})
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_a_resume_into_another_folder_copies_a_best_that_is_not_newer(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir(), target.mkdir()
    (source / "metrics.jsonl").write_text(line(1) + "\n")
    best = write_checkpoint(source / "checkpoints" / "best.pt", step=20)
    adopt_history(source, target, {"epoch": 2, "step": 20})      # best of the checkpoint's own step: copied
    assert (target / "checkpoints" / "best.pt").read_bytes() == best.read_bytes()
    assert (target / "metrics.jsonl").read_text() == line(1) + "\n"
    (target / "checkpoints" / "best.pt").unlink()
    adopt_history(source, target, {"epoch": 2, "step": 19})      # a best newer than the checkpoint: not copied
    assert not (target / "checkpoints" / "best.pt").exists()
    adopt_history(source, target, {"epoch": 2, "step": 19}, best_step=19)   # the step given is used
    assert (target / "checkpoints" / "best.pt").is_file()
    assert best.is_file() and (source / "metrics.jsonl").read_text() == line(1) + "\n", "the source only read"


def test_a_damaged_best_is_set_aside_in_its_own_folder_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    (source / "checkpoints").mkdir(parents=True), target.mkdir()
    best = source / "checkpoints" / "best.pt"
    best.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="train"):
        adopt_history(source, target, {"epoch": 1, "step": 5}, best_damage="why")
    assert [r.getMessage() for r in caplog.records] == [
        f"{best} is damaged and is not used (why); the test will use the best epoch validated from now on, else "
        f"the weights of last.pt"]
    assert best.read_bytes() == b"garbage" and not (target / "checkpoints").exists()
    assert (target / "metrics.jsonl").read_text() == ""
    adopt_history(source, source, {"epoch": 1, "step": 5}, best_damage="why")
    assert not best.exists() and (source / "checkpoints" / "best.pt.damaged").read_bytes() == b"garbage"


# -- init_from --------------------------------------------------------------------------------------------------
def test_init_from_picks_best_then_last_then_the_file_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    last = write_checkpoint(run / "checkpoints" / "last.pt")
    assert resolve_init_from(str(run)) == last
    best = write_checkpoint(run / "checkpoints" / "best.pt")
    assert resolve_init_from(str(run)) == best
    assert resolve_init_from(str(last)) == last
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_init_from("~/run") == best
    (tmp_path / "empty").mkdir()
    for given in ("~/empty", str(tmp_path / "none.pt")):
        with pytest.raises(ConfigError) as error:
            resolve_init_from(given)
        assert str(error.value) == (f"trainer.init_from={given!r}: no checkpoint there; give a .pt checkpoint file "
                                    f"or a run folder holding checkpoints/best.pt or last.pt")


def test_load_init_weights_loads_the_model_or_names_the_problem(tmp_path: Path) -> None:
    source = model()
    state: Dict[str, Any] = {key: {} for key in REQUIRED_KEYS}
    path = save_checkpoint({**state, "format": FORMAT, "model": source.state_dict()}, tmp_path / "m.pt")
    target = model()
    assert load_init_weights(target, str(path), CPU) == path
    assert torch.equal(target[0].weight, source[0].weight)
    with pytest.raises(ConfigError, match=rf"^trainer\.init_from={re.escape(str(path))}: the checkpoint's model "):
        load_init_weights(nn.Linear(2, 2), str(path), CPU)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=r"^trainer\.init_from: checkpoint .*bad\.pt is corrupted"):
        load_init_weights(model(), str(tmp_path / "bad.pt"), CPU)
    meta = model().to("meta")
    load_init_weights(meta, str(path), torch.device("meta"))
    assert meta[0].weight.device.type == "meta"


def test_load_init_weights_reads_the_checkpoint_onto_the_runs_device(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint trained on a GPU must load on a CPU-only machine: its tensors are mapped onto the run's device
    (a recorded ``load_checkpoint``: this machine has no second device to save from)."""
    state: Dict[str, Any] = {key: {} for key in REQUIRED_KEYS}
    path = save_checkpoint({**state, "format": FORMAT, "model": model().state_dict()}, tmp_path / "m.pt")
    seen = []

    def recorded(*args: Any, **kwargs: Any) -> Dict[str, Any]:
        seen.append(kwargs.get("map_location"))
        return real(*args, **kwargs)

    real = resume_module.load_checkpoint
    monkeypatch.setattr(resume_module, "load_checkpoint", recorded)
    load_init_weights(model(), str(path), CPU)
    assert seen == [CPU]


def test_at_epoch_0_a_line_without_an_epoch_is_kept_and_two_damaged_lines_are_warned_of(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    metrics = tmp_path / "metrics.jsonl"
    note = json.dumps({"note": "no epoch"})
    metrics.write_text("\n".join([note, line(1), "[1]", '{"epoch": 1']) + "\n")
    with caplog.at_level(logging.WARNING, logger="train"):
        assert _metrics_lines(metrics, 0) == [note]
    assert [r.getMessage() for r in caplog.records] == [f"{metrics}: 2 damaged lines dropped (kept 1 epoch lines)"]


def test_a_resume_into_another_folder_adds_only_the_history(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir(), target.mkdir()
    (source / "metrics.jsonl").write_text(line(1) + "\n")
    adopt_history(source, target, {"epoch": 2, "step": 20})      # no best.pt in the source: none to copy
    assert sorted(p.name for p in target.rglob("*")) == ["metrics.jsonl"]
    write_checkpoint(source / "checkpoints" / "best.pt", step=20)
    adopt_history(source, target, {"epoch": 2, "step": 20})
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == [
        "checkpoints", "checkpoints/best.pt", "metrics.jsonl"]
