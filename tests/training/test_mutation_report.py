"""``models/training/report.py`` function by function, sharp enough that mutation testing (issue 37) finds no
change a user would not notice: which results are read or skipped (and why), how runs are grouped and ordered,
the exact table, the figure's size and layout, and the command line and Hydra callback. Files in ``tmp_path``."""

import json
import logging
import math
import struct
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import pytest

from models.training import report
from models.training.report import (
    _flatten,
    _job_overrides,
    _rank,
    _settings,
    _spread,
    _value,
    load_failures,
    load_results,
    markdown_table,
    problems_section,
    summarize,
    swept_keys,
    varying_keys,
    write_report,
)


def result(seed: int = 0, accuracy: float = 0.5, config: Any = None, **extra: Any) -> Dict[str, Any]:
    row = {"data": "synthetic-ends_sum", "model": "bilstm", "cell": "lstm", "merge_mode": "concat",
           "pooling": "last", "seed": seed, "num_parameters": 1234, "test_accuracy": accuracy,
           "train_tokens_per_s": 1000.0, "infer_tokens_per_s": 3000.0, "epochs": 2}
    if config is not None:
        row["config"] = config
    row.update(extra)
    return row


def write(folder: Path, row: Any, overrides: Optional[List[str]] = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(row if isinstance(row, str) else json.dumps(row))
    if overrides is not None:
        (folder / ".hydra").mkdir(exist_ok=True)
        (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    return folder / "results.json"


def config(hidden: int = 8, seed: int = 0, **model: Any) -> Dict[str, Any]:
    return {"model": {"name": "bilstm", "hidden_size": hidden, **model}, "data": {"name": "synthetic"}, "seed": seed}


# -- settings ---------------------------------------------------------------------------------------------------
def test_flatten_joins_keys_with_dots_and_writes_lists_as_json() -> None:
    assert _flatten({"a": {"b": [1, "x"], "c": None}, "d": 2}) == {"a.b": '[1, "x"]', "a.c": None, "d": 2}
    assert _flatten({"a": {"b": 1}}, "p") == {"p.a.b": 1}


def test_settings_come_from_the_results_config_without_unresolved_values(tmp_path: Path) -> None:
    row = result(config={"model": {"hidden_size": 8, "tag": "${oops}"}, "seed": 1})
    assert _settings(row, tmp_path / "results.json") == {"model.hidden_size": 8, "seed": 1}


def test_settings_of_an_older_run_come_from_its_hydra_config(tmp_path: Path) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("model:\n  hidden_size: 12\n  width: ${model.hidden_size}\n"
                                                     "seed: 3\n")
    assert _settings(result(), tmp_path / "results.json") == {"model.hidden_size": 12, "model.width": 12, "seed": 3}
    (tmp_path / ".hydra" / "config.yaml").write_text("model:\n  hidden_size: 12\n  width: ${nowhere}\nseed: 3\n")
    assert _settings(result(), tmp_path / "results.json") == {"model.hidden_size": 12, "seed": 3}


def test_settings_of_an_older_run_may_name_a_zoo_preset(tmp_path: Path) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("model:\n  name: bigru\n  hidden_size: ${zoo_preset:${.name},"
                                                     "hidden_size}\nseed: 3\n")
    assert _settings(result(), tmp_path / "results.json") == {"model.name": "bigru", "model.hidden_size": 128,
                                                              "seed": 3}


def test_settings_of_a_bare_result_are_the_few_it_names(tmp_path: Path) -> None:
    assert _settings(result(seed=4), tmp_path / "results.json") == {
        "data.name": "synthetic-ends_sum", "model.model": "bilstm", "model.cell": "lstm",
        "model.merge_mode": "concat", "model.pooling": "last", "seed": 4}
    bare = {"data": "d", "seed": 1, "cell": "gru"}
    assert _settings(bare, tmp_path / "results.json") == {"data.name": "d", "model.cell": "gru", "seed": 1}


# -- reading a sweep --------------------------------------------------------------------------------------------
def test_load_results_reads_the_good_and_says_why_it_skips_the_rest(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as error:
        load_results(tmp_path)
    assert str(error.value) == f"no results.json under {tmp_path}: is it a finished sweep folder (multirun/...)?"
    good = write(tmp_path / "a", result(seed=1, config=config()), overrides=["seed=1"])
    bad_json = write(tmp_path / "b", "{oops")
    a_list = write(tmp_path / "c", "[1, 2]")
    incomplete = write(tmp_path / "d", {k: v for k, v in result().items() if k not in ("seed", "test_accuracy")})
    not_a_number = write(tmp_path / "e", result(train_tokens_per_s="fast"))
    none_metric = write(tmp_path / "f", result(infer_tokens_per_s=None))
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "results.json").write_bytes(b"\xff\xfe")
    (tmp_path / "h" / "results.json").mkdir(parents=True)     # a folder by that name: unreadable
    good2 = write(tmp_path / "i", result(seed=2, config=config(seed=2)))
    rows, skipped = load_results(tmp_path)
    assert [row["path"] for row in rows] == [str(good), str(good2)]
    assert rows[0]["settings"] == {"model.name": "bilstm", "model.hidden_size": 8, "data.name": "synthetic",
                                   "seed": 0}
    assert rows[0]["overrides"] == ["seed=1"] and rows[1]["overrides"] == []
    assert {k: rows[0][k] for k in result()} == result(seed=1)
    reasons = dict(skipped)
    assert list(reasons) == [bad_json, a_list, incomplete, not_a_number, none_metric, tmp_path / "g" / "results.json",
                             tmp_path / "h" / "results.json"]
    assert reasons[bad_json].startswith("not valid JSON (Expecting property name") and reasons[bad_json][-1] == ")"
    assert reasons[a_list] == "holds a list, not an object"
    assert reasons[incomplete] == "incomplete: lacks ['seed', 'test_accuracy']"
    assert reasons[not_a_number] == reasons[none_metric] == "a metric is not a number"
    assert reasons[tmp_path / "g" / "results.json"].startswith("not valid JSON ('utf-8' codec")
    assert reasons[tmp_path / "h" / "results.json"].startswith("not valid JSON ([Errno 21] Is a directory")


def test_job_overrides_are_strings_or_none(tmp_path: Path) -> None:
    assert _job_overrides(tmp_path) == []
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- seed=1\n- model.hidden_size=8\n")
    assert _job_overrides(tmp_path) == ["seed=1", "model.hidden_size=8"]


def test_swept_keys_are_the_override_keys_that_differ_or_some_jobs_lack() -> None:
    assert swept_keys([]) == [] and swept_keys([[], []]) == []
    jobs = [["model.hidden_size=8", "seed=0", "data=trec", "+extra=1", "data.root=/a=b"],
            ["model.hidden_size=12", "seed=1", "data=trec", "data.root=/a=c"],
            [],                                                    # a job that recorded no overrides
            ["model.hidden_size=8", "~seed", "data=trec", "data.root=/a=b", "trainer.resume=/r"]]
    assert swept_keys(jobs) == ["data.root", "extra", "model.hidden_size"]
    assert swept_keys([["a=1", "b=1"], ["a=1"]]) == ["b"]
    assert swept_keys([["ab=1", "a=2"], ["ab=1", "a=2"]]) == []


def test_load_failures_reads_each_job_error_in_order(tmp_path: Path) -> None:
    assert load_failures(tmp_path) == []
    (tmp_path / "2").mkdir(), (tmp_path / "1").mkdir()
    (tmp_path / "2" / report.JOB_ERROR).write_text(json.dumps({"kind": "exception", "error": "E", "message": "m"}))
    (tmp_path / "1" / report.JOB_ERROR).write_text("{broken")
    assert load_failures(tmp_path) == [
        {"kind": "?", "error": "?", "message": "unreadable job_error.json", "folder": str(tmp_path / "1")},
        {"kind": "exception", "error": "E", "message": "m", "folder": str(tmp_path / "2")}]


# -- grouping ---------------------------------------------------------------------------------------------------
def rows_of(*settings: Dict[str, Any], **fields: Any) -> List[Dict[str, Any]]:
    return [{**result(**fields), "settings": s} for s in settings]


def test_varying_keys_are_the_settings_that_differ_except_seeds_and_start() -> None:
    rows = rows_of({"a": 1, "b": [1], "seed": 0, "data.seed": 1, "trainer.resume": "x", "trainer.overwrite": True},
                   {"a": 1, "b": [2], "seed": 1, "data.seed": 2, "trainer.resume": "y", "trainer.overwrite": False},
                   {"a": 1, "b": [2], "c": None})
    assert varying_keys(rows) == ["b"]
    assert varying_keys(rows_of({"a": {"x": 1, "y": 2}}, {"a": {"y": 2, "x": 1}, "c": 1})) == ["c"]


def test_summarize_averages_seeds_within_a_group_and_orders_the_groups() -> None:
    rows = []
    for hidden, accuracies in ((12, (0.5, 0.7)), (8, (0.2, 0.3, 0.7)), (9, (0.9,))):
        for seed, accuracy in enumerate(accuracies):
            rows.append({**result(seed=seed, accuracy=accuracy, train_tokens_per_s=100.0 * (seed + 1),
                                  num_parameters=hidden * 10),
                         "settings": {"model.hidden_size": hidden, "seed": seed}})
    rows.append({**result(seed=0, accuracy=0.6, num_parameters=80), "settings": {"model.hidden_size": 8, "seed": 0}})
    keys, summary = summarize(rows)
    assert keys == ["model.hidden_size"]
    assert [s["group"] for s in summary] == [{"model.hidden_size": h} for h in (8, 9, 12)]
    eight, nine, twelve = summary
    assert (eight["runs"], eight["seeds"], eight["num_parameters"], eight["data"]) == (4, 3, 80, "synthetic-ends_sum")
    assert eight["test_accuracy"] == pytest.approx(0.45, rel=1e-12)
    assert eight["test_accuracy_std"] == pytest.approx(math.sqrt(0.17 / 3), rel=1e-12)
    assert eight["train_tokens_per_s"] == pytest.approx(400.0) and eight["infer_tokens_per_s"] == 3000.0
    assert eight["infer_tokens_per_s_std"] == 0.0
    assert (nine["runs"], nine["seeds"], nine["test_accuracy"]) == (1, 1, 0.9)
    assert all(math.isnan(nine[key + "_std"]) for key in report.METRICS)
    assert twelve["test_accuracy_std"] == pytest.approx(math.sqrt(0.02), rel=1e-12)


def test_a_swept_config_group_is_a_column_by_its_name_even_where_all_runs_agree() -> None:
    rows = rows_of({"model.name": "bigru", "model.hidden_size": 8, "seed": 0},
                   {"model.name": "bigru", "model.hidden_size": 8, "seed": 1})
    assert summarize(rows, ["model"])[0] == ["model.name"]
    assert summarize(rows, ["model.hidden_size", "trainer.device"])[0] == ["model.hidden_size"]
    keys, summary = summarize(rows, ["model.hidden_size", "model.hidden_size"])
    assert keys == ["model.hidden_size"] and summary[0]["runs"] == 2


def test_groups_sort_merge_modes_as_keras_lists_them_then_numbers_then_text() -> None:
    assert sorted(["ave", None, "sum", "concat", "mul"], key=lambda v: _rank("model.merge_mode", v)) == \
        ["concat", "sum", "mul", "ave", None]
    assert _rank("model.merge_mode", "concat") == (0, 0) and _rank("model.merge_mode", None) == (0, 4)
    assert _rank("model.merge_mode", "other") == (2, "other")
    assert _rank("model.hidden_size", 12) == (1, 12) and _rank("x", 0.5) == (1, 0.5)
    assert _rank("x", True) == (2, "True") and _rank("x", None) == (2, "None") and _rank("x", "8") == (2, "8")
    assert _rank("merge_mode_note", "sum") == (2, "sum")


# -- the table --------------------------------------------------------------------------------------------------
def test_values_and_spreads_as_shown() -> None:
    assert _value(None) == "null" and _value(8) == "8" and _value("sum") == "sum"
    assert _spread(0.5, 0.25, 100, ".1f") == "50.0 +- 25.0"
    assert _spread(1234.5, math.nan, 1, ",.0f") == "1,234 +- n/a"


def entry(group: Dict[str, Any], accuracy: float, std: float, runs: int = 2) -> Dict[str, Any]:
    return {"group": group, "runs": runs, "seeds": runs, "data": "trec", "num_parameters": 12345,
            "test_accuracy": accuracy, "test_accuracy_std": std, "train_tokens_per_s": 1500.0,
            "train_tokens_per_s_std": 10.0, "infer_tokens_per_s": 25000.0, "infer_tokens_per_s_std": math.nan}


def test_the_markdown_table() -> None:
    summary = [entry({"model.merge_mode": "sum", "model.hidden_size": 8}, 0.8, 0.01),
               entry({"model.merge_mode": None, "model.hidden_size": 8}, 0.75, math.nan, runs=1)]
    assert markdown_table(["model.merge_mode", "model.hidden_size"], summary) == (
        "| model.merge_mode | model.hidden_size | seeds | runs | params | test accuracy | train tokens/s | "
        "infer tokens/s |\n"
        "|---|---|---|---|---|---|---|---|\n"
        "| sum | 8 | 2 | 2 | 12,345 | 80.0 +- 1.0 | 1,500 +- 10 | 25,000 +- n/a |\n"
        "| null | 8 | 1 | 1 | 12,345 | 75.0 +- n/a | 1,500 +- 10 | 25,000 +- n/a |\n")
    assert markdown_table([], [entry({}, 0.5, 0.0)]) == (
        "| data | seeds | runs | params | test accuracy | train tokens/s | infer tokens/s |\n"
        "|---|---|---|---|---|---|---|\n"
        "| trec | 2 | 2 | 12,345 | 50.0 +- 0.0 | 1,500 +- 10 | 25,000 +- n/a |\n")


def test_the_problems_section() -> None:
    assert problems_section([], []) == ""
    failures = [{"folder": "/s/1", "overrides": ["seed=1", "model=bigru"], "kind": "exception", "error": "ValueError",
                 "message": "bad\n   value"},
                {"folder": "/s/2", "kind": "signal"}]
    skipped = [(Path("/s/3/results.json"), "a metric is not a number")]
    assert problems_section(failures, skipped) == (
        "\n## Failed jobs (2)\n\n"
        "- `/s/1` (seed=1 model=bigru): exception: ValueError: bad value\n"
        "- `/s/2` (): signal: None: \n"
        "\n## Skipped results (1)\n\n"
        "- `/s/3/results.json`: a metric is not a number\n")
    assert problems_section([],
                            skipped) == "\n## Skipped results (1)\n\n- `/s/3/results.json`: a metric is not a number\n"


# -- the figure -------------------------------------------------------------------------------------------------
def png_size(path: Path) -> tuple:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> Dict[str, Any]:
    """The figure ``plot`` draws, kept as it is saved."""
    pytest.importorskip("matplotlib", reason="summary.png needs matplotlib (the dev extra)")
    import matplotlib.pyplot as plt

    kept: Dict[str, Any] = {}
    real = plt.Figure.savefig

    def keep(figure: Any, *args: Any, **kwargs: Any) -> None:
        kept.update(figure=figure, kwargs=kwargs)
        real(figure, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", keep)
    return kept


def test_a_small_report_figure(tmp_path: Path, drawn: Dict[str, Any]) -> None:
    summary = [entry({"model.hidden_size": 8}, 0.8, 0.01), entry({"model.hidden_size": 12}, 0.6, math.nan, runs=1)]
    assert report.plot(["model.hidden_size"], summary, tmp_path / "summary.png") is True
    assert png_size(tmp_path / "summary.png") == (880, 495)                      # 8 x 4.5 inches at 110 dpi
    assert drawn["kwargs"] == {"dpi": 110, "format": "png"}
    figure = drawn["figure"]
    accuracy, speed = figure.axes
    assert [accuracy.get_title(), speed.get_title()] == ["test accuracy (%)", "training tokens/s"]
    assert [p.get_height() for p in accuracy.patches] == pytest.approx([80.0, 60.0])
    assert [p.get_height() for p in speed.patches] == pytest.approx([1500.0, 1500.0])
    assert [p.get_width() for p in accuracy.patches] == pytest.approx([0.7, 0.7])
    assert [t.get_text() for t in accuracy.get_xticklabels()] == ["8", "12"]
    assert list(accuracy.get_xticks()) == [0, 1]
    assert all(t.get_fontsize() == 7 and t.get_rotation() == 0 for t in accuracy.get_xticklabels())
    assert accuracy.get_xlabel() == "model.hidden_size" and accuracy.xaxis.label.get_fontsize() == 8
    error_bars = next(c for c in accuracy.containers if hasattr(c, "has_yerr"))
    caps = error_bars.lines[1]
    assert len(caps) == 2 and caps[0].get_markersize() == 6                     # capsize=3 draws 6-point caps
    segments = error_bars.lines[2][0].get_segments()
    assert [(s[0][1], s[1][1]) for s in segments if len(s)] == [pytest.approx((79.0, 81.0))]   # one seed: no bar


def test_the_figure_widens_with_the_groups_and_stands_crowded_labels_up(tmp_path: Path,
                                                                        drawn: Dict[str, Any]) -> None:
    summary = [entry({"model.merge_mode": f"${'W' * 30}{i}"}, 0.5, 0.0) for i in range(10)]   # W: wider than most
    assert report.plot(["model.merge_mode"], summary, tmp_path / "summary.png")
    widest = len(r"\$" + "W" * 30 + "0")
    inches = 2 * max(0.6, 0.075 * widest + 0.25) * 10 + 2
    assert png_size(tmp_path / "summary.png") == (round(inches * 110), 495)
    labels = drawn["figure"].axes[0].get_xticklabels()
    assert labels[0].get_text() == r"\$" + "W" * 30 + "0", "a $ is not math mode"
    assert all(label.get_rotation() == 90 for label in labels)


def test_a_figure_without_keys_names_the_data(tmp_path: Path, drawn: Dict[str, Any]) -> None:
    assert report.plot([], [entry({}, 0.5, 0.0)], tmp_path / "summary.png")
    axis = drawn["figure"].axes[0]
    assert [t.get_text() for t in axis.get_xticklabels()] == ["trec"] and axis.get_xlabel() == "data"
    assert png_size(tmp_path / "summary.png") == (880, 495)


def test_a_figure_of_many_keys_has_one_line_per_key(tmp_path: Path, drawn: Dict[str, Any]) -> None:
    assert report.plot(["a", "b"], [entry({"a": 1, "b": None}, 0.5, 0.0)], tmp_path / "summary.png")
    axis = drawn["figure"].axes[0]
    assert [t.get_text() for t in axis.get_xticklabels()] == ["1\nnull"] and axis.get_xlabel() == "a / b"


def test_no_matplotlib_no_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with caplog.at_level(logging.WARNING, logger="models.training.report"):
        assert report.plot([], [entry({}, 0.5, 0.0)], tmp_path / "summary.png") is False
    assert [r.getMessage() for r in caplog.records] == ["matplotlib not installed: no summary.png"]
    assert not (tmp_path / "summary.png").exists()


# -- the whole report -------------------------------------------------------------------------------------------
def sweep(folder: Path) -> None:
    for number, (hidden, seed, accuracy) in enumerate(((8, 0, 0.5), (8, 1, 0.7), (12, 0, 0.9))):
        write(folder / str(number), result(seed=seed, accuracy=accuracy, config=config(hidden, seed),
                                           merge_mode=["sum", "mul"] if number == 2 else "concat"),
              overrides=[f"model.hidden_size={hidden}", f"seed={seed}"])


def test_write_report_writes_the_csv_the_table_and_the_figure(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="summary.png needs matplotlib (the dev extra)")
    sweep(tmp_path)
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / report.JOB_ERROR).write_text(json.dumps(
        {"kind": "exception", "error": "E", "message": "m", "overrides": ["model.hidden_size=16", "seed=0"]}))
    write(tmp_path / "4", "{")
    outputs = write_report(str(tmp_path))
    assert outputs == {"csv": tmp_path / "summary.csv", "md": tmp_path / "summary.md", "png": tmp_path / "summary.png"}
    lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert lines[0] == ",".join([*report.COLUMNS, "model.hidden_size"])
    assert lines[1] == "synthetic-ends_sum,bilstm,lstm,concat,last,0,1234,,0.5,1000.0,3000.0,2,,,,,8"
    assert lines[3].split(",")[3] == "sum/mul" and len(lines) == 4
    md = (tmp_path / "summary.md").read_text()
    assert md == (
        "| model.hidden_size | seeds | runs | params | test accuracy | train tokens/s | infer tokens/s |\n"
        "|---|---|---|---|---|---|---|\n"
        "| 8 | 2 | 2 | 1,234 | 60.0 +- 14.1 | 1,000 +- 0 | 3,000 +- 0 |\n"
        "| 12 | 1 | 1 | 1,234 | 90.0 +- n/a | 1,000 +- n/a | 3,000 +- n/a |\n"
        f"\n## Failed jobs (1)\n\n- `{tmp_path / '3'}` (model.hidden_size=16 seed=0): exception: E: m\n"
        f"\n## Skipped results (1)\n\n- `{tmp_path / '4' / 'results.json'}`: not valid JSON (Expecting property name "
        f"enclosed in double quotes: line 1 column 2 (char 1))\n")
    assert png_size(tmp_path / "summary.png")[1] == 495


def test_the_csv_has_a_column_for_each_varying_setting_it_lacks(tmp_path: Path) -> None:
    for seed, lr in ((0, 0.1), (1, 0.2)):
        write(tmp_path / str(seed), result(seed=seed, config={**config(seed=seed), "optim": {"lr": lr}}))
    write_report(tmp_path)
    lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert lines[0] == ",".join([*report.COLUMNS, "optim.lr"])
    assert lines[1].endswith(",0.1") and lines[2].endswith(",0.2")


def test_a_report_without_matplotlib_has_no_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sweep(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert sorted(write_report(tmp_path)) == ["csv", "md"]
    assert not (tmp_path / "summary.png").exists()


def test_a_sweep_with_no_usable_result_lists_its_problems(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as error:
        write_report(tmp_path)
    assert str(error.value) == f"no usable results.json under {tmp_path}: is it a finished sweep folder (multirun/...)?"
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / report.JOB_ERROR).write_text(json.dumps({"kind": "signal", "error": "SIGTERM", "message": ""}))
    with pytest.raises(ValueError) as error:
        write_report(tmp_path)
    assert str(error.value) == f"no usable results.json under {tmp_path} (1 failed job(s), 0 broken result(s))"
    assert (tmp_path / "summary.md").read_text() == (
        f"No finished runs.\n\n## Failed jobs (1)\n\n- `{tmp_path / '1'}` (): signal: SIGTERM: \n")
    assert not (tmp_path / "summary.csv").exists()
    write(tmp_path / "2", "[]")
    with pytest.raises(ValueError, match=r"\(1 failed job\(s\), 1 broken result\(s\)\)$"):
        write_report(tmp_path)
    assert "\n## Skipped results (1)\n" in (tmp_path / "summary.md").read_text()


def test_the_hydra_callback_prints_the_report_and_counts_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(report, "failed_in_last_sweep", 0)
    sweep(tmp_path)
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / report.JOB_ERROR).write_text("{}")
    cfg = SimpleNamespace(hydra=SimpleNamespace(sweep=SimpleNamespace(dir=str(tmp_path))))
    with caplog.at_level(logging.WARNING, logger="models.training.report"):
        report.ReportCallback().on_multirun_end(cfg)
    assert report.failed_in_last_sweep == 1
    printed = capsys.readouterr().out
    assert printed == ((tmp_path / "summary.md").read_text() + "\n"
                       + f"report: {tmp_path / 'summary.csv'}, {tmp_path / 'summary.md'}\n")
    assert [r.getMessage() for r in caplog.records if r.name == "models.training.report"][-1] == (
        f"1 of the sweep's jobs failed (listed in {tmp_path / 'summary.md'})")


def test_the_hydra_callback_of_a_sweep_without_results_only_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(report, "failed_in_last_sweep", 5)
    cfg = SimpleNamespace(hydra=SimpleNamespace(sweep=SimpleNamespace(dir=str(tmp_path))))
    with caplog.at_level(logging.WARNING, logger="models.training.report"):
        report.ReportCallback().on_multirun_end(cfg)
    assert report.failed_in_last_sweep == 0 and capsys.readouterr().out == ""
    assert [r.getMessage() for r in caplog.records] == [
        f"no sweep report: no usable results.json under {tmp_path}: is it a finished sweep folder (multirun/...)?"]


def test_a_clean_sweep_has_no_failure_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    sweep(tmp_path)
    cfg = SimpleNamespace(hydra=SimpleNamespace(sweep=SimpleNamespace(dir=str(tmp_path))))
    with caplog.at_level(logging.WARNING, logger="models.training.report"):
        report.ReportCallback().on_multirun_end(cfg)
    assert [r.getMessage() for r in caplog.records] == ["matplotlib not installed: no summary.png"]


def test_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as exit_:
        report.main([str(tmp_path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith(
        f"error: no usable results.json under {tmp_path}: is it a finished sweep folder (multirun/...)?\n")
    sweep(tmp_path)
    report.main([str(tmp_path)])
    assert capsys.readouterr().out == ((tmp_path / "summary.md").read_text() + "\n"
                                       + f"wrote {tmp_path / 'summary.csv'}, {tmp_path / 'summary.md'}\n")
    monkeypatch.setattr(sys, "argv", ["report", str(tmp_path)])
    report.main()
    assert capsys.readouterr().out.startswith("| model.hidden_size |")
    with pytest.raises(SystemExit):
        report.main(["--help"])
    helped = capsys.readouterr().out
    assert helped.startswith("usage: ") and "The report of a sweep:" in helped
    assert "sweep_dir a sweep folder (hydra.sweep.dir) holding */results.json" in " ".join(helped.split())


def test_a_diverged_runs_non_finite_numbers_are_written_as_python_writes_them() -> None:
    # A run whose loss blew up can report nan accuracy and inf throughput; the table says so in lower case.
    diverged = {**entry({}, math.nan, math.nan, runs=1), "train_tokens_per_s": math.inf,
                "infer_tokens_per_s": -math.inf}
    assert markdown_table([], [diverged]).splitlines()[-1] == (
        "| trec | 1 | 1 | 12,345 | nan +- n/a | inf +- 10 | -inf +- n/a |")


def test_swept_keys_strip_only_a_leading_plus_or_tilde_from_a_key() -> None:
    assert swept_keys([["+foo=1", "a=1"], ["foo=1", "a=2"]]) == ["a"]
    assert swept_keys([["Xa=1"], ["Xa=2"]]) == ["Xa"]
    assert swept_keys([["Xa=1"], ["a=1", "Xa=1"]]) == ["a"]


def test_a_setting_json_cannot_write_groups_by_its_text() -> None:
    rows = rows_of({"data.root": Path("b"), "seed": 0}, {"data.root": Path("a"), "seed": 1},
                   {"data.root": Path("b"), "seed": 2})
    keys, summary = summarize(rows)
    assert keys == ["data.root"]
    assert [(s["group"]["data.root"], s["runs"]) for s in summary] == [(Path("a"), 1), (Path("b"), 2)]


def test_a_group_swept_only_by_a_failed_job_is_still_a_column(tmp_path: Path) -> None:
    write(tmp_path / "0", result(config=config()), overrides=["model=bilstm", "seed=0"])
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / report.JOB_ERROR).write_text(json.dumps(
        {"kind": "exception", "error": "E", "message": "m", "overrides": ["model=bigru", "seed=0"]}))
    assert sorted(write_report(tmp_path)) in (["csv", "md"], ["csv", "md", "png"])
    assert (tmp_path / "summary.md").read_text().splitlines()[:3] == [
        "| model.name | seeds | runs | params | test accuracy | train tokens/s | infer tokens/s |",
        "|---|---|---|---|---|---|---|",
        "| bilstm | 1 | 1 | 1,234 | 50.0 +- n/a | 1,000 +- n/a | 3,000 +- n/a |"]
    assert (tmp_path / "summary.csv").read_text().splitlines()[0] == ",".join([*report.COLUMNS, "model.name"])


def test_load_results_reads_an_older_runs_settings_from_its_own_hydra_config(tmp_path: Path) -> None:
    write(tmp_path / "0", result())
    (tmp_path / "0" / ".hydra").mkdir()
    (tmp_path / "0" / ".hydra" / "config.yaml").write_text("model:\n  hidden_size: 12\nseed: 3\n")
    rows, skipped = load_results(tmp_path)
    assert skipped == [] and [row["settings"] for row in rows] == [{"model.hidden_size": 12, "seed": 3}]


def test_each_skipped_result_is_a_line_of_its_own() -> None:
    skipped = [(Path("/s/1/results.json"), "a"), (Path("/s/2/results.json"), "b")]
    assert problems_section([], skipped) == (
        "\n## Skipped results (2)\n\n- `/s/1/results.json`: a\n- `/s/2/results.json`: b\n")
