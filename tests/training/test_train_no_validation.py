"""``data.val_fraction=0``: the final fit on every training row. No validation split, so no early stopping; each
epoch's weights become ``best.pt`` and the last epoch's are tested. A small TREC run in this process (seconds), and a
killed-then-resumed one in subprocesses (slow)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

import pytest
import torch
from helpers.composing import compose_config
from helpers.testing_aids import KILL_AT_STEP_ENV

from models.training.checkpoint import load_checkpoint
from models.training.loop import train

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "trec").is_dir(),
                                  reason=f"shared data folder {SHARED} is missing (needs the shared TREC files)")


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@needs_shared
def test_a_run_without_validation_trains_every_epoch_and_tests_the_last_weights(tmp_path: Path) -> None:
    cfg = compose_config("data=trec", f"data.root={SHARED}", "data.download=false", "data.val_fraction=0",
                         "model.embed_dim=8", "model.hidden_size=8", "trainer.max_epochs=3", "trainer.patience=1",
                         "trainer.num_threads=1", "trainer.tensorboard=false")
    results = train(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["val_loss"], r["val_acc"]) for r in rows] == [(1, None, None), (2, None, None),
                                                                         (3, None, None)]
    assert rows[-1]["step"] == 3 * 86, "5,452 training rows in batches of 64: 86 steps an epoch"
    assert results["stop_reason"] == "max_epochs", "patience 1 must not stop a run that has nothing to validate"
    assert results["best_val_accuracy"] is None and 0.0 < results["test_accuracy"] <= 1.0
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")["model"]
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model"]
    assert best.keys() == last.keys()
    for name in best:
        torch.testing.assert_close(best[name], last[name], rtol=0, atol=0, msg=f"best.pt is the last epoch: {name}")


def _train(run_dir: Path, *extra: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """``python train.py`` on a small TREC run without a validation split (2 epochs of 86 steps, hidden size 8)."""
    script = ROOT / "tests" / "helpers" / "train_with_aids.py" if env else ROOT / "train.py"     # the testing aids
    command = [sys.executable, str(script), f"hydra.run.dir={run_dir}", "data=trec", f"data.root={SHARED}",
               "data.download=false", "data.val_fraction=0", "model.embed_dim=8", "model.hidden_size=8",
               "model.dropout=0.3", "trainer.max_epochs=2", "trainer.num_threads=1", "trainer.tensorboard=false",
               "trainer.checkpoint_every_steps=4", *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


@pytest.mark.slow  # three small TREC runs in subprocesses (~30 s); resume itself is in the default suite
@needs_shared
def test_a_run_without_validation_killed_mid_epoch_resumes_bit_for_bit(tmp_path: Path) -> None:
    straight = _train(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _train(tmp_path / "killed", env={KILL_AT_STEP_ENV: "10"})
    assert killed.returncode == -signal.SIGKILL
    progress = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["progress"]
    assert (progress["step"], progress["batch_in_epoch"], progress["best_val_accuracy"]) == (8, 8, -1.0)
    resumed = _train(tmp_path / "killed", f"trainer.resume={tmp_path / 'killed'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (tmp_path / "killed" / "train.log").read_text()
    assert "at epoch 0, step 8" in log, "the second process continued the killed run, not a fresh one"
    before = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    after = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(before[name], after[name]) for name in before), "resume must be bit for bit"
    assert json.loads((tmp_path / "killed" / "results.json").read_text())["best_val_accuracy"] is None
