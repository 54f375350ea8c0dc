"""``logger=`` config group: CSV, TensorBoard, Weights & Biases and MLflow, each run offline on the tiny run."""

import csv
import importlib.util
from pathlib import Path
from typing import Callable

import pytest
from helpers.composing import TINY
from omegaconf import DictConfig

from models.training import loggers
from models.training.config import ConfigError, check_config
from models.training.loop import train

RUN = (*TINY, "trainer.log_every_steps=3")     # 6 steps an epoch, 2 epochs: step losses at 3, 6, 9, 12


def test_no_logger_by_default(compose: Callable[..., DictConfig]) -> None:
    assert "logger" not in compose()


def test_csv_logger_writes_step_epoch_and_test_metrics(compose: Callable[..., DictConfig], tmp_path: Path) -> None:
    results = train(compose(*RUN, "logger=csv"), tmp_path)
    with (tmp_path / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows if r["train/loss"]] == [3, 6, 9, 12]
    assert [r["epoch/epoch"] for r in rows if r["epoch/epoch"]] == ["1.0", "2.0"]
    assert float(rows[-1]["test/accuracy"]) == pytest.approx(results["test_accuracy"])


def test_tensorboard_logger_writes_events(compose: Callable[..., DictConfig], tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="logger=tensorboard needs the tensorboard extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(compose(*RUN, "logger=many_loggers"), tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [3, 6, 9, 12]
    assert (tmp_path / "metrics.csv").is_file()


@pytest.mark.slow   # the extra's own start-up (wandb's service, MLflow's schema) takes 20-60 s
def test_wandb_logger_offline(compose: Callable[..., DictConfig], tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb", reason="logger=wandb needs the wandb extra")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(compose(*RUN, "logger=wandb"), tmp_path)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


@pytest.mark.slow   # the extra's own start-up (wandb's service, MLflow's schema) takes 20-60 s
def test_mlflow_logger_local_store(compose: Callable[..., DictConfig], tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="logger=mlflow needs the mlflow extra")
    import mlflow

    store = f"sqlite:///{tmp_path / 'store.db'}"
    results = train(compose(*RUN, "logger=mlflow", f"logger.mlflow.tracking_uri={store}"), tmp_path / "run")
    client = mlflow.MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("birnn-zoo").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [3, 6, 9, 12]
    assert run.data.metrics["test_accuracy"] == pytest.approx(results["test_accuracy"])
    assert run.data.params["model.name"] == "bilstm"


@pytest.mark.slow   # the extra's own start-up (wandb's service, MLflow's schema) takes 20-60 s
def test_mlflow_logger_default_store_is_in_the_run_folder(compose: Callable[..., DictConfig], tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="logger=mlflow needs the mlflow extra")
    train(compose(*RUN, "logger=mlflow"), tmp_path)
    assert (tmp_path / "mlflow.db").is_file()


def test_a_logger_whose_package_is_missing_fails_in_one_line(compose: Callable[..., DictConfig],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(ConfigError, match=r"^logger=wandb needs the wandb package: pip install -e '.\[wandb\]'$"):
        check_config(compose("logger=wandb"))
