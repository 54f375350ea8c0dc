"""The sweep report never averages different things; broken results and failed jobs are listed, not fatal
(issue 19)."""

import csv
import json
from pathlib import Path

import pytest

from models.training.report import load_results, main, summarize, write_report


def config(hidden: int, seed: int, lr: float = 0.003) -> dict:
    return {"model": {"name": "bilstm", "hidden_size": hidden, "merge_mode": "concat", "cell": "lstm"},
            "data": {"name": "synthetic", "task": "ends_sum", "seed": None}, "optim": {"lr": lr},
            "trainer": {"resume": None, "max_epochs": 1}, "seed": seed}


def write_run(folder: Path, hidden: int, seed: int, accuracy: float, lr: float = 0.003) -> None:
    folder.mkdir(parents=True)
    row = {"data": "synthetic-ends_sum", "model": "bilstm", "cell": "lstm", "merge_mode": "concat",
           "pooling": "last", "seed": seed, "num_parameters": 100 * hidden, "test_accuracy": accuracy,
           "train_tokens_per_s": 1000.0, "infer_tokens_per_s": 2000.0, "config": config(hidden, seed, lr)}
    (folder / "results.json").write_text(json.dumps(row))


def test_a_hidden_size_sweep_gets_one_row_per_size_averaging_only_seeds(tmp_path: Path) -> None:
    accuracies = {(8, 0): 0.5, (8, 1): 0.7, (12, 0): 0.9, (12, 1): 0.8}
    for number, ((hidden, seed), accuracy) in enumerate(accuracies.items()):
        write_run(tmp_path / str(number), hidden, seed, accuracy)
    rows, skipped = load_results(tmp_path)
    keys, summary = summarize(rows)
    assert keys == ["model.hidden_size"] and skipped == []
    assert [(s["group"]["model.hidden_size"], s["seeds"], round(s["test_accuracy"], 6)) for s in summary] == [
        (8, 2, 0.6), (12, 2, 0.85)]
    write_report(tmp_path)
    table = (tmp_path / "summary.md").read_text()
    assert "| model.hidden_size | seeds | runs |" in table
    assert "| 8 | 2 | 2 | 800 | 60.0 +- 14.1 |" in table and "| 12 | 2 | 2 | 1,200 | 85.0 +- 7.1 |" in table
    with (tmp_path / "summary.csv").open() as file:
        assert [row["model.hidden_size"] for row in csv.DictReader(file)] == ["8", "8", "12", "12"]


def test_every_differing_key_splits_the_groups(tmp_path: Path) -> None:
    write_run(tmp_path / "0", 8, 0, 0.5, lr=0.003)
    write_run(tmp_path / "1", 8, 1, 0.6, lr=0.01)
    write_run(tmp_path / "2", 12, 0, 0.7, lr=0.01)
    keys, summary = summarize(load_results(tmp_path)[0])
    assert keys == ["model.hidden_size", "optim.lr"] and [s["runs"] for s in summary] == [1, 1, 1]


def test_broken_and_incomplete_results_and_failed_jobs_are_listed_and_skipped(tmp_path: Path) -> None:
    write_run(tmp_path / "0", 8, 0, 0.5)
    write_run(tmp_path / "1", 8, 1, 0.7)
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "results.json").write_text('{"data": "synthetic-ends_sum", "test_acc')
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "results.json").write_text(json.dumps({"data": "synthetic-ends_sum", "seed": 0}))
    (tmp_path / "4").mkdir()
    (tmp_path / "4" / "job_error.json").write_text(json.dumps(
        {"kind": "config error", "error": "ConfigError", "message": "model.hidden_size=0: hidden_size must be a "
         "positive int, got 0", "overrides": ["model.hidden_size=0"]}))
    write_report(tmp_path)
    table = (tmp_path / "summary.md").read_text()
    assert "| synthetic-ends_sum | 2 | 2 |" in table            # nothing differs: one row of two seeds
    assert "## Failed jobs (1)" in table and "model.hidden_size=0: hidden_size must be a positive int" in table
    assert "## Skipped results (2)" in table
    assert f"`{tmp_path / '2' / 'results.json'}`: not valid JSON" in table
    assert f"`{tmp_path / '3' / 'results.json'}`: incomplete: lacks ['num_parameters', 'test_accuracy'" in table


def test_the_command_line_report_exits_2_with_a_message_when_nothing_is_usable(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "results.json").write_text("[]")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2 and "no usable results.json" in capsys.readouterr().err
    assert "holds a list, not an object" in (tmp_path / "summary.md").read_text()
