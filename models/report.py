"""The merge-mode report of a sweep: ``python -m models.report <sweep dir>``.

Reads every ``results.json`` under the sweep folder and writes, next to them:
- ``summary.csv``: one row per run;
- ``summary.md``: mean +- std over seeds of test accuracy, parameters, train and inference tokens/s per
  (data, cell, merge mode);
- ``summary.png``: accuracy and throughput per merge mode and cell (when matplotlib is installed).

``ReportCallback`` runs the same at the end of a Hydra multirun (``conf/hydra/default.yaml``).
"""

import argparse
import csv
import json
import logging
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

log = logging.getLogger(__name__)

COLUMNS = ("data", "model", "cell", "merge_mode", "pooling", "seed", "num_parameters", "best_val_accuracy",
           "test_accuracy", "train_tokens_per_s", "infer_tokens_per_s", "epochs", "wall_time_s", "compile",
           "device", "run_dir")


def load_results(sweep_dir: Path) -> List[Dict[str, Any]]:
    """All ``results.json`` below ``sweep_dir``, sorted by path. Raises ``ValueError`` if there are none."""
    paths = sorted(sweep_dir.rglob("results.json"))
    if not paths:
        raise ValueError(f"no results.json under {sweep_dir}: is it a finished sweep folder (multirun/...)?")
    rows = []
    for path in paths:
        try:
            rows.append(json.loads(path.read_text()))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
    return rows


def _mode_name(mode: Any) -> str:
    return "/".join(str(m) for m in mode) if isinstance(mode, list) else str(mode)


def summarize(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Group runs by (data, cell, merge mode): mean and std over seeds of the headline numbers."""
    groups: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["data"], row["cell"], _mode_name(row["merge_mode"]))].append(row)
    summary = []
    for (data, cell, mode), runs in sorted(groups.items()):
        entry: Dict[str, Any] = {"data": data, "cell": cell, "merge_mode": mode, "runs": len(runs),
                                 "num_parameters": runs[0]["num_parameters"]}
        for key in ("test_accuracy", "train_tokens_per_s", "infer_tokens_per_s"):
            values = [float(run[key]) for run in runs]
            entry[key] = statistics.fmean(values)
            entry[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def markdown_table(summary: Sequence[Dict[str, Any]]) -> str:
    lines = ["| data | cell | merge mode | runs | params | test accuracy | train tokens/s | infer tokens/s |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(
            f"| {s['data']} | {s['cell']} | {s['merge_mode']} | {s['runs']} | {s['num_parameters']:,} | "
            f"{100 * s['test_accuracy']:.1f} +- {100 * s['test_accuracy_std']:.1f} | "
            f"{s['train_tokens_per_s']:,.0f} +- {s['train_tokens_per_s_std']:,.0f} | "
            f"{s['infer_tokens_per_s']:,.0f} +- {s['infer_tokens_per_s_std']:,.0f} |")
    return "\n".join(lines) + "\n"


def plot(summary: Sequence[Dict[str, Any]], path: Path) -> bool:
    """Accuracy and train throughput per merge mode, one bar group per cell. False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed: no %s", path.name)
        return False
    labels = sorted({(s["data"], s["merge_mode"]) for s in summary})
    cells = sorted({s["cell"] for s in summary})
    lookup = {(s["data"], s["merge_mode"], s["cell"]): s for s in summary}
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(cells), 1)
    for c, cell in enumerate(cells):
        xs = [i + c * width for i in range(len(labels))]
        for axis, key, scale in ((axes[0], "test_accuracy", 100.0), (axes[1], "train_tokens_per_s", 1.0)):
            values = [scale * lookup[(d, m, cell)][key] if (d, m, cell) in lookup else 0.0 for d, m in labels]
            errors = [scale * lookup[(d, m, cell)][key + "_std"] if (d, m, cell) in lookup else 0.0
                      for d, m in labels]
            axis.bar(xs, values, width, yerr=errors, label=cell, capsize=3)
    for axis, title in ((axes[0], "test accuracy (%)"), (axes[1], "training tokens/s")):
        axis.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))])
        axis.set_xticklabels([m if len({d for d, _ in labels}) == 1 else f"{d}\n{m}" for d, m in labels])
        axis.set_title(title)
    handles, names = axes[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="lower center", ncol=max(len(cells), 1), frameon=False)
    figure.tight_layout(rect=(0, 0.07, 1, 1))  # room for the legend below the bars
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def write_report(sweep_dir: Path) -> Dict[str, Path]:
    """Write ``summary.csv``, ``summary.md`` and ``summary.png`` into ``sweep_dir``; returns their paths."""
    sweep_dir = Path(sweep_dir)
    rows = load_results(sweep_dir)
    outputs = {"csv": sweep_dir / "summary.csv", "md": sweep_dir / "summary.md", "png": sweep_dir / "summary.png"}
    with outputs["csv"].open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "merge_mode": _mode_name(row["merge_mode"])})
    summary = summarize(rows)
    outputs["md"].write_text(markdown_table(summary))
    if not plot(summary, outputs["png"]):
        del outputs["png"]
    return outputs


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency
    Callback = object  # type: ignore[assignment,misc]


class ReportCallback(Callback):  # type: ignore[misc]
    """Hydra callback: writes the report into the sweep folder when a multirun ends."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            outputs = write_report(sweep_dir)
        except ValueError as error:
            log.warning("no merge-mode report: %s", error)
            return
        print(Path(outputs["md"]).read_text())
        print(f"report: {', '.join(str(p) for p in outputs.values())}")


def main(argv: Sequence[str] = ()) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a sweep folder (hydra.sweep.dir) holding */results.json")
    args = parser.parse_args(list(argv) or None)
    try:
        outputs = write_report(args.sweep_dir)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    print(outputs["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in outputs.values()))


if __name__ == "__main__":
    main()
