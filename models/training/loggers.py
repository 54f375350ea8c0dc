"""Experiment loggers of ``train.py``: the ``logger=`` config group (``conf/logger/``).

``logger=csv`` (no extra package), ``logger=tensorboard``, ``logger=wandb`` and ``logger=mlflow`` (optional
extras), or several: ``logger=many_loggers`` (CSV and TensorBoard). Each gets the step losses every
``trainer.log_every_steps`` steps, each epoch's ``metrics.jsonl`` record and the test results, with the run's
resolved config as its parameters. Rank 0 alone logs. The config's ``logger`` node is ``{backend: settings}``:

- ``csv``: ``<run>/metrics.csv`` (``file`` to rename it), one row per logged step, rewritten atomically;
- ``tensorboard``: events in ``<run>/tensorboard``;
- ``wandb``: ``project``, ``name``, ``mode`` (``offline``: no network; ``null``: ``$WANDB_MODE`` or online),
  files under ``<run>/wandb``;
- ``mlflow``: ``tracking_uri`` (``null``: a local SQLite store ``<run>/mlflow.db``; MLflow 3 refuses new file
  stores), ``experiment_name``, ``run_name``.
"""

import csv
import importlib.util
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

PACKAGES = {"csv": None, "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
"""Each backend and the package it needs (``None``: none)."""
EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_logger_config(node: Optional[Mapping[str, Any]]) -> List[str]:
    """The backends ``logger`` asks for; raises ``ValueError`` (one line) for an unknown one or one whose package
    is not installed."""
    if node is None:
        return []
    if not isinstance(node, Mapping):
        raise ValueError(f"logger={node!r}: expected a logger= option ({', '.join(PACKAGES)}) or null")
    for name, settings in node.items():
        if name not in PACKAGES:
            raise ValueError(f"logger.{name}: unknown logger; choose from {list(PACKAGES)}")
        if settings is not None and not isinstance(settings, Mapping):
            raise ValueError(f"logger.{name}={settings!r}: expected its settings (a mapping) or {{}}")
        package = PACKAGES[name]
        if package is not None and importlib.util.find_spec(package) is None:
            raise ValueError(f"logger={name} needs the {package} package: pip install -e '.[{EXTRAS[name]}]'")
    return list(node)


def _flat(node: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(node, Mapping):
        flat: Dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: node}


class CSVBackend:
    """``<run>/metrics.csv``: one row per ``log`` call, a column per metric seen so far."""

    def __init__(self, run_dir: Path, file: str = "metrics.csv") -> None:
        self.path = run_dir / file
        self.rows: List[Dict[str, Any]] = []
        if self.path.is_file():                          # a resume in the same folder goes on with the file
            with self.path.open(newline="") as handle:
                self.rows = list(csv.DictReader(handle))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.rows.append({"step": step, **metrics})
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.rows)
        fd, temp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text.getvalue())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.path)

    def close(self) -> None:
        pass


class TensorBoardBackend:
    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbBackend:
    def __init__(self, run_dir: Path, config: Mapping[str, Any], project: str = "birnn-zoo",
                 name: Optional[str] = None, mode: Optional[str] = None) -> None:
        import wandb

        (run_dir / "wandb").mkdir(exist_ok=True)
        self.run = wandb.init(project=project, name=name or run_dir.name, dir=str(run_dir), config=dict(config),
                              mode=mode, reinit="finish_previous")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


class MLflowBackend:
    def __init__(self, run_dir: Path, config: Mapping[str, Any], tracking_uri: Optional[str] = None,
                 experiment_name: str = "birnn-zoo", run_name: Optional[str] = None) -> None:
        import mlflow

        self.client = mlflow.MlflowClient(tracking_uri or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}")
        experiment = self.client.get_experiment_by_name(experiment_name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(experiment_name)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name or run_dir.name).info.run_id
        for key, value in _flat(config).items():
            self.client.log_param(self.run_id, key, str(value)[:500])

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, key.replace("/", "_"), float(value), step=step)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class MetricLoggers:
    """The backends ``logger`` names, fed together; with none, every call does nothing."""

    def __init__(self, node: Optional[Mapping[str, Any]], run_dir: Path, config: Mapping[str, Any]) -> None:
        self.backends: List[Any] = []
        for name in check_logger_config(node):
            settings = dict((node or {})[name] or {})
            if name == "csv":
                self.backends.append(CSVBackend(run_dir, **settings))
            elif name == "tensorboard":
                self.backends.append(TensorBoardBackend(run_dir, **settings))
            elif name == "wandb":
                self.backends.append(WandbBackend(run_dir, config, **settings))
            else:
                self.backends.append(MLflowBackend(run_dir, config, **settings))

    def log(self, metrics: Mapping[str, Optional[float]], step: int) -> None:
        """Log the numbers of ``metrics`` (``None`` values, e.g. no validation split, are left out)."""
        numbers = {key: float(value) for key, value in metrics.items() if value is not None}
        for backend in self.backends:
            backend.log(numbers, step)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()
