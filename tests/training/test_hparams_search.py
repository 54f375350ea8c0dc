"""Honest tuning: ``train.py``'s ``main`` returns the best validation accuracy (what a sweeper optimises), never a
test metric; a run without a validation split returns None and says why; the shipped Optuna search runs."""

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.composing import TINY, compose_config
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

ROOT = Path(__file__).resolve().parents[2]
# The tiny run's model and trainer for data other than the synthetic task (experiment=tiny sets its sizes).
SMALL = ("model.embed_dim=8", "model.hidden_size=8", "trainer.max_epochs=2", "trainer.num_threads=1",
         "trainer.infer_batches=1")


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run_main(run_dir: Path, *overrides: str, base: tuple = TINY) -> Any:
    """``train.main`` as Hydra calls it for one run (its Hydra config set), in this process."""
    import train as app

    composed = compose_config(*base, "trainer.tensorboard=false", *overrides, hydra=True)
    with open_dict(composed):
        composed.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(composed)
    cfg = OmegaConf.masked_copy(composed, [k for k in composed if k != "hydra"])
    try:
        return app.main.__wrapped__(cfg)
    finally:
        HydraConfig.instance().cfg = None


def test_main_returns_the_best_validation_accuracy_not_the_test_accuracy(tmp_path: Path) -> None:
    returned = run_main(tmp_path, "model.merge_mode=sum", "data.num_test=50")
    results = json.loads((tmp_path / "results.json").read_text())
    best_val = max(json.loads(line)["val_acc"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines())
    assert returned == results["best_val_accuracy"] == best_val
    # 64 validation and 50 test rows: the two accuracies of this run differ, so the check above can tell them apart
    assert results["best_val_accuracy"] != results["test_accuracy"]


def test_a_run_without_validation_returns_none_and_says_why(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                             ) -> None:
    from helpers.text_rows import write_csv

    train_file, test_file = write_csv(tmp_path / "train.csv", 48), write_csv(tmp_path / "test.csv", 16, seed=1)
    with caplog.at_level(logging.WARNING, logger="train"):
        returned = run_main(tmp_path / "run", "data=text_files", f"data.train={train_file}", f"data.test={test_file}",
                            "data.val_fraction=0", "data.batch_size=16", base=SMALL)
    assert returned is None
    assert json.loads((tmp_path / "run" / "results.json").read_text())["best_val_accuracy"] is None
    assert "no validation split" in caplog.text and "returns None" in caplog.text


def test_a_three_trial_optuna_search_of_the_tiny_experiment_maximises_validation_accuracy(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper",
                        reason="the Optuna sweeper is an optional extra: pip install -e '.[sweep]'")
    import subprocess
    import sys

    import yaml

    command = [sys.executable, str(ROOT / "train.py"), "hparams_search=merge_modes", *TINY,
               "hydra.sweeper.n_trials=3", "model.hidden_size=choice(8,12)", "data.num_test=50",
               "trainer.max_epochs=1", "trainer.tensorboard=false", f"hydra.sweep.dir={tmp_path}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/results.json"))]
    assert len(trials) == 3
    found = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert found["best_value"] == max(t["best_val_accuracy"] for t in trials)
    best = next(t for t in trials if t["best_val_accuracy"] == found["best_value"])
    assert found["best_params"]["model.merge_mode"] == best["merge_mode"]
    assert found["best_params"]["model.hidden_size"] in (8, 12)
    assert set(found["best_params"]) == {"model.merge_mode", "model.hidden_size", "model.dropout", "optim.lr"}
    # 64 validation and 50 test rows: a sweep that read test accuracies could not return these validation values
    assert all(t["best_val_accuracy"] * 64 == round(t["best_val_accuracy"] * 64) for t in trials)
