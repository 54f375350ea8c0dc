"""``python train.py`` end to end on a tiny config: outputs, sweep + report, kill and resume, checkpoints."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest
import torch
from helpers.composing import TINY
from helpers.testing_aids import KILL_AT_STEP_ENV, SKIP_RNG_RESTORE_ENV

from models.training.checkpoint import FORMAT, REQUIRED_KEYS, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def run_train(*overrides: str, multirun: bool = False, env: Optional[Dict[str, str]] = None
              ) -> subprocess.CompletedProcess:
    """``python train.py`` on the tiny run; ``env``: the testing aids (``tests/helpers/train_with_aids.py`` runs it)."""
    script = ROOT / "tests" / "helpers" / "train_with_aids.py" if env else ROOT / "train.py"
    command = [sys.executable, str(script), *(["-m"] if multirun else []), *TINY, *overrides]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def test_a_tiny_run_writes_every_output(tmp_path: Path) -> None:
    result = run_train(f"hydra.run.dir={tmp_path}", "model.merge_mode=sum")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert set(lines[0]) == {"epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "tokens_per_s", "lr",
                             "seconds"}
    assert lines[1]["step"] == 12                           # 192 / 32 batches per epoch, 2 epochs
    results = json.loads((tmp_path / "results.json").read_text())
    for key in ("model", "cell", "merge_mode", "data", "seed", "num_parameters", "best_val_accuracy",
                "test_accuracy", "train_tokens_per_s", "infer_tokens_per_s", "wall_time_s", "compile", "device",
                "torch"):
        assert key in results, key
    assert results["merge_mode"] == "sum" and results["cell"] == "lstm" and results["data"] == "synthetic-ends_sum"
    assert 0.0 <= results["test_accuracy"] <= 1.0 and results["infer_tokens_per_s"] > 0
    for name in ("last.pt", "best.pt"):
        checkpoint = load_checkpoint(tmp_path / "checkpoints" / name)
        assert checkpoint["progress"]["epoch"] >= 1 and checkpoint["config"]["model"]["merge_mode"] == "sum"
    assert (tmp_path / "train.log").read_text().count("epoch 2:") == 1


# ``python train.py`` whose training raises (a bug, a full disk, ...) for hidden size 16: a job that raised.
RAISES_FOR_16 = """
import runpy, sys
import models.training.loop
real = models.training.loop.train
def train(cfg, run_dir):
    if cfg.model.hidden_size == 16:
        raise RuntimeError("disk full (injected)")
    return real(cfg, run_dir)
models.training.loop.train = train
sys.argv = [{script!r}, *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""


def test_a_sweep_survives_bad_jobs_and_reports_the_others_by_what_differs(tmp_path: Path) -> None:
    # A bad value (model.hidden_size=0) stops the sweep before any job (tests/training/test_sweep_fail_fast.py); a job
    # that raises while it runs is recorded and the sweep goes on.
    command = [sys.executable, "-c", RAISES_FOR_16.format(script=str(ROOT / "train.py")), "-m", *TINY,
               f"hydra.sweep.dir={tmp_path}",
               "model.hidden_size=8,16,12", "trainer.max_epochs=1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]           # the sweep ran to its end, one job failed
    assert sorted(p.parent.name for p in tmp_path.glob("*/results.json")) == ["0", "2"]
    raised = json.loads((tmp_path / "1" / "job_error.json").read_text())
    assert raised["kind"] == "exception" and "disk full (injected)" in raised["traceback"]
    summary = (tmp_path / "summary.md").read_text()
    assert "| model.hidden_size | seeds | runs |" in summary
    assert "| 8 | 1 | 1 |" in summary and "| 12 | 1 | 1 |" in summary, "sizes are never averaged together"
    assert "## Failed jobs (1)" in summary and "RuntimeError: disk full (injected)" in summary
    assert (tmp_path / "summary.csv").read_text().count("\n") == 3
    # The report also runs on its own.
    again = subprocess.run([sys.executable, "-m", "models.training.report", str(tmp_path)], cwd=ROOT,
                           capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0 and "model.hidden_size" in again.stdout


def test_a_bad_value_stops_the_sweep_before_any_job(tmp_path: Path) -> None:
    result = run_train(f"hydra.sweep.dir={tmp_path}", "model.hidden_size=8,0", "trainer.max_epochs=1", multirun=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "config error: sweep job 1 (experiment=tiny model.hidden_size=0 trainer.max_epochs=1): model.hidden_size=0")
    assert not list(tmp_path.glob("*/results.json")) and not list(tmp_path.glob("*/.hydra"))


def final_parameters(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


KILL_AT_10 = {KILL_AT_STEP_ENV: "10"}                   # SIGKILL right after global step 10 (testing aid)


def kill_at_10_then_resume(run_dir: Path, overrides: List[str],
                           resume_env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """The tiny run in ``run_dir`` killed (SIGKILL) right after step 10, then resumed there (``resume_env``: testing
    aids for the resumed process); returns the ``progress`` of the ``last.pt`` the kill left."""
    killed = run_train(f"hydra.run.dir={run_dir}", *overrides, env=KILL_AT_10)
    assert killed.returncode == -signal.SIGKILL
    progress = load_checkpoint(run_dir / "checkpoints" / "last.pt")["progress"]
    resumed = run_train(f"hydra.run.dir={run_dir}", *overrides, f"trainer.resume={run_dir}", env=resume_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return progress


def test_kill_mid_epoch_then_resume_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    common = ["model.dropout=0.3", "model.head_dropout=0.3", "trainer.checkpoint_every_steps=4"]
    reference = run_train(f"hydra.run.dir={tmp_path / 'straight'}", *common)
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    assert kill_at_10_then_resume(killed_dir, common)["batch_in_epoch"] == 2    # killed mid-epoch

    straight, after_kill = final_parameters(tmp_path / "straight"), final_parameters(killed_dir)
    assert all(torch.equal(straight[name], after_kill[name]) for name in straight), "resume must be bit for bit"

    # Negative control: the same resume without restoring the RNG state draws other dropout masks.
    control_dir = tmp_path / "control"
    kill_at_10_then_resume(control_dir, common, resume_env={SKIP_RNG_RESTORE_ENV: "1"})
    differs = final_parameters(control_dir)
    assert not all(torch.equal(straight[name], differs[name]) for name in straight)


def minimal_checkpoint(value: float) -> dict:
    return {"format": FORMAT, "model": {"w": torch.full((3,), value)}, "optimizer": {}, "scheduler": {},
            "scaler": {}, "rng": {}, "progress": {"step": int(value)}, "config": {}}


def test_a_kill_while_writing_leaves_the_previous_checkpoint_loadable(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(minimal_checkpoint(1.0), path)

    def dies_halfway(obj: object, file: object) -> None:
        file.write(b"PK\x03\x04 half a zip")                  # type: ignore[attr-defined]
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(minimal_checkpoint(2.0), path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert list(tmp_path.iterdir()) == [path], "the temporary file is removed"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "not_a_dict", "missing_keys", "pickle"])
def test_a_damaged_checkpoint_gives_a_clear_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(minimal_checkpoint(1.0), path)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
        expected = "is corrupted, truncated or not a birnn-zoo checkpoint"
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64)
        expected = "is corrupted, truncated or not a birnn-zoo checkpoint"
    elif damage == "not_a_dict":
        torch.save([1, 2], path)
        expected = "holds a list, expected a dict"
    elif damage == "missing_keys":
        partial = minimal_checkpoint(1.0)
        del partial["optimizer"], partial["rng"]
        torch.save(partial, path)
        expected = "lacks keys ['optimizer', 'rng']"
    else:
        torch.save({"format": FORMAT, "model": Path("x")}, path)   # needs unpickling of a class: refused
        expected = "is corrupted, truncated or not a birnn-zoo checkpoint"
    with pytest.raises(ValueError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        load_checkpoint(path)
    assert set(REQUIRED_KEYS) >= {"model", "optimizer", "rng"}


@pytest.mark.parametrize("mode", ["script", "aot_eager"])
def test_training_runs_under_each_compile_mode(tmp_path: Path, mode: str) -> None:
    result = run_train(f"hydra.run.dir={tmp_path}", f"trainer.compile={mode}", "model.merge_mode=ave",
                       "trainer.max_epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "results.json").read_text())["compile"] == mode


def test_validation_runs_in_eval_mode(tmp_path: Path, compose: Callable[..., Any]) -> None:
    """The logged val loss is the eval-mode (dropout off) loss of the epoch's final parameters."""
    from models import create_model
    from models.data import build_data
    from models.training.evaluation import evaluate

    overrides = [*TINY, "trainer.max_epochs=1", "model.head_dropout=0.9", "model.embed_dropout=0.5"]
    result = run_train(f"hydra.run.dir={tmp_path}", *overrides[len(TINY):])
    assert result.returncode == 0, result.stderr[-3000:]
    cfg = compose(*overrides)
    data = build_data(cfg.data, seed=cfg.seed)
    values = {k: v for k, v in cfg.model.items() if k != "name"}
    model = create_model(cfg.model.name, vocab_size=data.vocab_size, num_classes=data.num_classes, **values)
    model.load_state_dict(load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model"])
    model.eval()
    val = evaluate(model, data.loader("val", cfg.data.eval_batch_size, shuffle=False, seed=cfg.seed),
                   torch.device("cpu"))
    logged = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert logged["val_loss"] == pytest.approx(val["loss"], rel=1e-5)
    assert logged["val_acc"] == pytest.approx(val["accuracy"])
