"""The sweep report people read: x labels that do not run into each other (text bounding boxes), merge modes in
the order people list them, "n/a" for the spread of one seed, columns for the swept keys even after a failure."""

import json
from pathlib import Path
from typing import List, Optional

import pytest

from models.training import report

MODES = ["ave", "concat", "mul", "sum", None]     # alphabetical, as a sweep's folders would hand them over


def write_job(folder: Path, merge_mode: Optional[str], seed: int, accuracy: float, overrides: List[str],
              hidden: int = 8) -> None:
    folder.mkdir(parents=True)
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    config = {"model": {"name": "bilstm", "hidden_size": hidden, "merge_mode": merge_mode},
              "data": {"name": "synthetic", "task": "ends_sum"}, "seed": seed}
    (folder / "results.json").write_text(json.dumps(
        {"data": "synthetic-ends_sum", "model": "bilstm", "merge_mode": merge_mode, "seed": seed,
         "num_parameters": 1000, "test_accuracy": accuracy, "train_tokens_per_s": 1000.0 + 10 * seed,
         "infer_tokens_per_s": 2000.0, "config": config}))


def merge_sweep(folder: Path, seeds: int = 1, hidden_sizes: tuple = (8,)) -> None:
    number = 0
    for hidden in hidden_sizes:
        for mode in MODES:
            for seed in range(seeds):
                overrides = [f"model.merge_mode={'null' if mode is None else mode}", f"seed={seed}",
                             f"model.hidden_size={hidden}"]
                write_job(folder / str(number), mode, seed, 0.5 + 0.01 * number, overrides, hidden)
                number += 1


def test_merge_modes_come_in_the_order_people_list_them(tmp_path: Path) -> None:
    merge_sweep(tmp_path, seeds=2)
    keys, summary = report.summarize(report.load_results(tmp_path)[0])
    assert keys == ["model.merge_mode"]
    assert [s["group"]["model.merge_mode"] for s in summary] == ["concat", "sum", "mul", "ave", None]


def test_one_seed_shows_n_a_not_zero_spread(tmp_path: Path) -> None:
    merge_sweep(tmp_path, seeds=1)
    report.write_report(tmp_path)
    table = (tmp_path / "summary.md").read_text()
    assert "+- 0.0" not in table and "+- 0 |" not in table
    assert "| concat | 1 | 1 | 1,000 | 51.0 +- n/a | 1,000 +- n/a | 2,000 +- n/a |" in table


def test_a_failed_job_leaves_the_table_grouped_by_the_swept_key(tmp_path: Path) -> None:
    write_job(tmp_path / "0", "concat", 0, 0.5, ["model.merge_mode=concat"])
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / report.JOB_ERROR).write_text(json.dumps(
        {"kind": "exception", "error": "RuntimeError", "message": "boom", "overrides": ["model.merge_mode=sum"]}))
    report.write_report(tmp_path)
    table = (tmp_path / "summary.md").read_text()
    assert table.startswith("| model.merge_mode | seeds |") and "| concat | 1 | 1 |" in table


@pytest.mark.parametrize("hidden_sizes", [(8,), (8, 16)])
def test_the_plots_x_labels_do_not_overlap(tmp_path: Path, hidden_sizes: tuple) -> None:
    matplotlib = pytest.importorskip("matplotlib", reason="summary.png needs matplotlib (the dev extra)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    merge_sweep(tmp_path, seeds=2, hidden_sizes=hidden_sizes)
    keys, summary = report.summarize(report.load_results(tmp_path)[0])
    drawn = {}
    real_savefig = plt.Figure.savefig

    def keep(figure: "plt.Figure", *args: object, **kwargs: object) -> None:
        drawn["figure"] = figure
        real_savefig(figure, *args, **kwargs)

    plt.Figure.savefig = keep
    try:
        assert report.plot(keys, summary, tmp_path / "summary.png")
    finally:
        plt.Figure.savefig = real_savefig
    figure = drawn["figure"]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()           # plot() closed the figure: draw it again
    for axis in figure.axes:
        labels = [label for label in axis.get_xticklabels() if label.get_text()]
        assert len(labels) == len(summary)
        boxes = [label.get_window_extent(renderer) for label in labels]
        overlapping = [(labels[i].get_text(), labels[j].get_text()) for i in range(len(boxes))
                       for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
        assert not overlapping, overlapping
        assert "merge_mode" not in " ".join(label.get_text() for label in labels)   # the keys name the axis
        assert "merge_mode" in axis.get_xlabel()
    assert not report.labels_overlap(figure)


def test_the_overlap_check_sees_overlapping_labels() -> None:
    matplotlib = pytest.importorskip("matplotlib", reason="summary.png needs matplotlib (the dev extra)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(2, 2))
    axis.set_xticks(range(5))
    axis.set_xticklabels([f"merge_mode={m}" for m in MODES], fontsize=7)
    assert report.labels_overlap(figure)                    # what today's summary.png looked like
    plt.close(figure)
