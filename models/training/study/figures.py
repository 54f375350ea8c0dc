"""The study's two figures (matplotlib, Agg): accuracy per merge mode with error bars, and accuracy against
training throughput. One panel per data task; the y axes span the data (never bars from zero), so the
differences between modes are visible at the scale of their spread."""

import logging
from pathlib import Path
from typing import Any, Dict, List, Sequence

log = logging.getLogger(__name__)

MARKERS = ("o", "s", "^", "D", "v", "P")
COLORS = {"concat": "tab:blue", "sum": "tab:orange", "mul": "tab:green", "ave": "tab:red"}


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed (pip install -e '.[dev]'): no study figures")
        return None
    return plt


def _panels(plt: Any, cells: Sequence[Dict[str, Any]]) -> Any:
    data = list(dict.fromkeys(c["data"] for c in cells))
    columns = min(len(data), 4)
    rows = (len(data) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), squeeze=False)
    for axis in axes.flat[len(data):]:
        axis.set_visible(False)
    return figure, list(zip(data, axes.flat, strict=False))


def plot_accuracy(cells: Sequence[Dict[str, Any]], path: Path) -> bool:
    """Test accuracy mean +- std over seeds per merge mode, one series per model; False without matplotlib."""
    plt = _pyplot()
    if plt is None or not cells:
        return False
    figure, panels = _panels(plt, cells)
    for data, axis in panels:
        mine = [c for c in cells if c["data"] == data]
        modes = list(dict.fromkeys(c["merge_mode"] for c in mine))
        models = list(dict.fromkeys(c["model"] for c in mine))
        for k, model in enumerate(models):
            offset = (k - (len(models) - 1) / 2) * 0.15
            points = [(modes.index(c["merge_mode"]) + offset, c) for c in mine if c["model"] == model]
            axis.errorbar([x for x, _ in points], [100 * c["test_accuracy"]["mean"] for _, c in points],
                          yerr=[100 * c["test_accuracy"]["std"] for _, c in points], fmt=MARKERS[k % len(MARKERS)],
                          capsize=4, label=model)
            for x, c in points:                        # each seed's value, faint, so n=3 is visible as n=3
                axis.scatter([x] * len(c["test_accuracy_by_seed"]),
                             [100 * v for v in c["test_accuracy_by_seed"].values()], s=8, alpha=0.35, color="gray")
        axis.set_xticks(range(len(modes)))
        axis.set_xticklabels(modes)
        axis.set_xlim(-0.5, len(modes) - 0.5)
        axis.set_title(data, fontsize=10)
        axis.set_ylabel("test accuracy (%)")
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("test accuracy, mean +- std over seeds (gray: each seed)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def plot_speed(cells: Sequence[Dict[str, Any]], path: Path) -> bool:
    """Accuracy against training tokens/s (both +- std), color per merge mode, marker per model."""
    plt = _pyplot()
    if plt is None or not cells:
        return False
    figure, panels = _panels(plt, cells)
    for data, axis in panels:
        mine = [c for c in cells if c["data"] == data]
        models: List[str] = list(dict.fromkeys(c["model"] for c in mine))
        for c in mine:
            axis.errorbar(c["train_tokens_per_s"]["mean"], 100 * c["test_accuracy"]["mean"],
                          xerr=c["train_tokens_per_s"]["std"], yerr=100 * c["test_accuracy"]["std"],
                          fmt=MARKERS[models.index(c["model"]) % len(MARKERS)],
                          color=COLORS.get(c["merge_mode"], "black"), capsize=3,
                          label=f"{c['model']} {c['merge_mode']}")
        axis.set_title(data, fontsize=10)
        source = "post-sweep timing" if all(c["speed_source"] == "post-sweep timing" for c in mine) else \
            "training loop"
        axis.set_xlabel(f"training tokens/s ({source})")
        axis.set_ylabel("test accuracy (%)")
        axis.grid(alpha=0.3)
    handles, labels = panels[0][1].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), fontsize=8)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
