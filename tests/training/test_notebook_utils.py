"""``models.training.notebook_utils``: repo root, metrics and sweep summaries, parameter counts, the plot, clean
notebooks."""

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from models.training.notebook_utils import (
    clear_outputs,
    count_parameters,
    find_repo_root,
    latest_sweep_summary,
    notebook_output_problems,
    plot_merge_mode_runs,
    read_metrics,
    read_summary_csv,
)

ROOT = Path(__file__).resolve().parents[2]


def write_metrics(run_dir: Path, records: list) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


# -- find_repo_root ----------------------------------------------------------------------------------------------
def test_find_repo_root_walks_up_from_a_subfolder() -> None:
    assert find_repo_root(ROOT / "notebooks") == ROOT
    assert find_repo_root(ROOT) == ROOT
    assert find_repo_root(ROOT / "models" / "keras") == ROOT


def test_find_repo_root_prefers_the_nearest_config(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert find_repo_root(tmp_path / "a" / "b") == tmp_path.resolve()


def test_find_repo_root_defaults_to_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT / "notebooks")
    assert find_repo_root() == ROOT
    # Outside any checkout: the folder above the installed (editable) package.
    monkeypatch.chdir(tmp_path)
    assert find_repo_root() == ROOT


def test_find_repo_root_raises_when_nothing_has_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import models.training.notebook_utils as utils

    monkeypatch.setattr(utils, "__file__",
                        str(tmp_path / "site-packages" / "models" / "training" / "notebook_utils.py"))
    with pytest.raises(FileNotFoundError, match=r"conf/config\.yaml"):
        find_repo_root(tmp_path)


# -- read_metrics ------------------------------------------------------------------------------------------------
def test_read_metrics_gives_columns(tmp_path: Path) -> None:
    write_metrics(tmp_path, [{"epoch": 1, "val_acc": 0.5, "train_loss": 1.0},
                             {"epoch": 2, "val_acc": 0.75, "train_loss": 0.5}])
    assert read_metrics(tmp_path) == {"epoch": [1, 2], "val_acc": [0.5, 0.75], "train_loss": [1.0, 0.5]}


def test_read_metrics_fills_missing_keys_and_skips_blank_lines(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n\n{"epoch": 2, "lr": 0.1}\n')
    columns = read_metrics(tmp_path)
    assert columns["epoch"] == [1, 2] and columns["lr"][1] == 0.1 and columns["lr"][0] != columns["lr"][0]  # nan


def test_read_metrics_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2,\n')
    with pytest.raises(ValueError, match="line 2"):
        read_metrics(tmp_path)


def test_read_metrics_reads_a_real_training_run(tmp_path: Path, compose: Callable[..., Any]) -> None:
    from helpers.composing import TINY

    from models.training.loop import train

    train(compose(*TINY, "trainer.tensorboard=false", "trainer.progress=false"), tmp_path)
    columns = read_metrics(tmp_path)
    assert columns["epoch"] == [1, 2] and len(columns["val_acc"]) == 2 and len(columns["tokens_per_s"]) == 2


# -- sweeps -------------------------------------------------------------------------------------------------------
def test_latest_sweep_summary(tmp_path: Path) -> None:
    assert latest_sweep_summary(tmp_path) is None                         # no multirun/ folder
    (tmp_path / "multirun").mkdir()
    assert latest_sweep_summary(tmp_path) is None                         # no summary yet
    old = tmp_path / "multirun" / "2024-01-02" / "10-00-00" / "summary.csv"
    new = tmp_path / "multirun" / "2024-01-01" / "09-00-00" / "summary.csv"
    for path in (old, new):
        path.parent.mkdir(parents=True)
        path.write_text("data,seed\nx,0\n")
    now = time.time()
    os.utime(old, (now - 100, now - 100))
    os.utime(new, (now, now))
    assert latest_sweep_summary(tmp_path) == new                          # most recently written, not by name
    assert latest_sweep_summary(tmp_path, sweeps="elsewhere") is None


def test_read_summary_csv_converts_numbers(tmp_path: Path) -> None:
    path = tmp_path / "summary.csv"
    path.write_text("data,merge_mode,seed,test_accuracy\nsynthetic-ends_sum,sum,1,0.875\nsynthetic-ends_sum,mul,2,0.5\n")
    assert read_summary_csv(path) == [
        {"data": "synthetic-ends_sum", "merge_mode": "sum", "seed": 1, "test_accuracy": 0.875},
        {"data": "synthetic-ends_sum", "merge_mode": "mul", "seed": 2, "test_accuracy": 0.5},
    ]


def test_read_summary_csv_reads_the_report_format(tmp_path: Path) -> None:
    from models.training.report import COLUMNS, write_report

    for seed in (0, 1):
        row = {key: 1 for key in COLUMNS}
        row.update(data="synthetic-ends_sum", model="bilstm", cell="lstm", merge_mode="ave", pooling="last",
                   seed=seed, test_accuracy=0.5 + seed / 4, compile="none", device="cpu", run_dir=str(tmp_path))
        (tmp_path / str(seed)).mkdir()
        (tmp_path / str(seed) / "results.json").write_text(json.dumps(row))
    write_report(tmp_path)
    rows = read_summary_csv(tmp_path / "summary.csv")
    assert [r["test_accuracy"] for r in rows] == [0.5, 0.75] and rows[0]["merge_mode"] == "ave"


# -- models and plots ---------------------------------------------------------------------------------------------
def test_count_parameters() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    assert count_parameters(model) == 3 * 4 + 4 + 4 * 2 + 2
    model[0].requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 4 * 2 + 2
    assert count_parameters(model) == 26


def test_plot_merge_mode_runs() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = {mode: {"epoch": [1, 2], "val_acc": [0.4, 0.6], "train_loss": [1.1, 0.9]} for mode in ("sum", "ave")}
    results = {"sum": {"test_accuracy": 0.6, "train_tokens_per_s": 1000.0},
               "ave": {"test_accuracy": 0.5, "train_tokens_per_s": 900.0}}
    figure = plot_merge_mode_runs(histories, results, title="t")
    try:
        assert len(figure.axes) == 4
        assert [line.get_label() for line in figure.axes[0].get_lines()] == ["sum", "ave"]
        assert [round(p.get_height(), 6) for p in figure.axes[2].patches] == [60.0, 50.0]
        assert [p.get_height() for p in figure.axes[3].patches] == [1000.0, 900.0]
    finally:
        plt.close(figure)


def test_plot_merge_mode_runs_leaves_out_the_val_curve_of_a_run_without_validation() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = {"sum": {"epoch": [1, 2], "val_acc": [0.4, 0.6], "train_loss": [1.1, 0.9]},
                 "final fit": {"epoch": [1, 2], "val_acc": [None, None], "train_loss": [1.0, 0.8]}}  # val_fraction=0
    results = {k: {"test_accuracy": 0.6, "train_tokens_per_s": 1000.0} for k in histories}
    figure = plot_merge_mode_runs(histories, results)
    try:
        assert [line.get_label() for line in figure.axes[0].get_lines()] == ["sum"]
        assert [line.get_label() for line in figure.axes[1].get_lines()] == ["sum", "final fit"]
    finally:
        plt.close(figure)


# -- notebook hygiene ---------------------------------------------------------------------------------------------
def test_notebook_output_problems_and_clear_outputs() -> None:
    notebook = {"cells": [
        {"cell_type": "markdown", "source": "# hi"},
        {"cell_type": "code", "source": "1", "outputs": [{"output_type": "execute_result"}], "execution_count": 3,
         "metadata": {"execution": {"iopub.status.busy": "2025-01-01T00:00:00Z"}, "tags": ["keep"]}},
        {"cell_type": "code", "source": "2", "outputs": [], "execution_count": None},
    ]}
    assert notebook_output_problems(notebook) == ["cell 1 has 1 output(s)", "cell 1 has execution_count 3"]
    assert clear_outputs(notebook) is notebook
    assert notebook_output_problems(notebook) == []
    assert notebook["cells"][1]["outputs"] == [] and notebook["cells"][1]["execution_count"] is None
    assert notebook["cells"][1]["metadata"] == {"tags": ["keep"]}


def test_clear_outputs_round_trips_an_executed_notebook(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    notebook.cells[0].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    notebook.cells[0].execution_count = 1
    path = tmp_path / "x.ipynb"
    nbformat.write(notebook, path)
    assert notebook_output_problems(nbformat.read(path, as_version=4)) != []
    nbformat.write(clear_outputs(nbformat.read(path, as_version=4)), path)
    cleaned = nbformat.read(path, as_version=4)
    nbformat.validate(cleaned)
    assert notebook_output_problems(cleaned) == [] and cleaned.cells[0].source == "print(1)"
