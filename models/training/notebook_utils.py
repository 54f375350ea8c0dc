"""Small helpers the notebooks in ``notebooks/`` share: find the repo, read runs and sweeps, plot, check outputs.

Everything here is plain Python (matplotlib only inside ``plot_merge_mode_runs``), so the notebooks stay short
and the logic is tested in ``tests/training/test_notebook_utils.py`` rather than only by executing the notebooks::

    root = find_repo_root()                          # the folder holding conf/config.yaml
    history = read_metrics(run_dir)                  # {"epoch": [1, 2, 3], "val_acc": [...], ...}
    summary = latest_sweep_summary(root)             # newest multirun/**/summary.csv, or None
"""

import csv
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from torch import nn

from ..arguments import PathLike

CONFIG_MARKER = Path("conf") / "config.yaml"
"""A folder holding this file is the repository root (the Hydra config lives there)."""


def find_repo_root(start: Optional[PathLike] = None) -> Path:
    """The nearest folder at or above ``start`` (default: the working directory) holding ``conf/config.yaml``.

    Falls back to the folder above the installed ``models`` package (an editable install from a checkout), so a
    notebook started anywhere still finds the configs. Raises ``FileNotFoundError`` when neither has them.
    """
    here = Path.cwd() if start is None else Path(start)
    here = here.resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_MARKER).is_file():
            return folder
    package_parent = Path(__file__).resolve().parents[2]  # models/training/notebook_utils.py -> the checkout
    if (package_parent / CONFIG_MARKER).is_file():
        return package_parent
    raise FileNotFoundError(
        f"no {CONFIG_MARKER} at or above {here}, nor next to the installed models package ({package_parent}); "
        f"run from a birnn-zoo checkout"
    )


def read_metrics(run_dir: PathLike) -> Dict[str, List[float]]:
    """A run's ``metrics.jsonl`` (one JSON object per epoch) as columns: ``{"epoch": [1, 2], "val_acc": [...]}``.

    Keys missing from some lines are filled with ``nan`` so every column has one value per epoch. Raises
    ``FileNotFoundError`` if the run has no ``metrics.jsonl`` and ``ValueError`` naming the line that is not JSON.
    """
    path = Path(run_dir) / "metrics.jsonl"
    records: List[Dict[str, Any]] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not JSON ({error})") from error
    keys: List[str] = []
    for record in records:
        keys.extend(key for key in record if key not in keys)
    return {key: [record.get(key, float("nan")) for record in records] for key in keys}


def latest_sweep_summary(root: PathLike, sweeps: str = "multirun") -> Optional[Path]:
    """The most recently written ``summary.csv`` below ``root / sweeps`` (a finished Hydra sweep), or ``None``."""
    folder = Path(root) / sweeps
    if not folder.is_dir():
        return None
    candidates = [path for path in folder.rglob("summary.csv") if path.is_file()]
    if not candidates:
        return None
    return max(candidates, key=lambda path: (path.stat().st_mtime, str(path)))


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_summary_csv(path: PathLike) -> List[Dict[str, Any]]:
    """The rows of a sweep's ``summary.csv`` (``models.training.report``), numbers converted to ``int``/``float``."""
    with Path(path).open(newline="") as file:
        return [{key: _number(value) for key, value in row.items()} for row in csv.DictReader(file)]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``model`` (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def plot_merge_mode_runs(
    histories: Mapping[str, Mapping[str, Sequence[float]]],
    results: Mapping[str, Mapping[str, Any]],
    title: str = "",
) -> Any:
    """One figure, four panels: val accuracy and train loss per epoch, test accuracy and train tokens/s per run.

    ``histories`` maps a label (the merge mode) to ``read_metrics`` columns; ``results`` maps the same labels to
    ``models.training.loop.train``'s results. Returns the matplotlib ``Figure`` (the caller shows or saves it).
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for label, history in histories.items():
        if any(v is not None for v in history["val_acc"]):     # null: a run without a validation split
            axes[0].plot(history["epoch"], [math.nan if v is None else 100 * v for v in history["val_acc"]],
                         marker="o", label=label)
        axes[1].plot(history["epoch"], history["train_loss"], marker="o", label=label)
    for axis, name in ((axes[0], "val accuracy (%)"), (axes[1], "train loss")):
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(name)
        axis.legend()
    labels = list(results)
    colors = [f"C{i}" for i in range(len(labels))]
    axes[2].bar(labels, [100 * float(results[k]["test_accuracy"]) for k in labels], color=colors)
    axes[2].set_title("test accuracy (%)")
    axes[3].bar(labels, [float(results[k]["train_tokens_per_s"]) for k in labels], color=colors)
    axes[3].set_title("training tokens/s")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def notebook_output_problems(notebook: Mapping[str, Any]) -> List[str]:
    """Why a notebook (``nbformat`` dict) is not clean for git: cells with outputs or execution counts; [] if clean."""
    problems = []
    for index, cell in enumerate(notebook.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"cell {index} has {len(cell['outputs'])} output(s)")
        if cell.get("execution_count") is not None:
            problems.append(f"cell {index} has execution_count {cell['execution_count']}")
    return problems


def clear_outputs(notebook: Dict[str, Any]) -> Dict[str, Any]:
    """Remove every code cell's outputs, execution count and execution timing metadata in place (what git keeps).

    Returns ``notebook``. Clear files with
    ``nbformat.write(clear_outputs(nbformat.read(path, as_version=4)), path)``.
    """
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
            cell.get("metadata", {}).pop("execution", None)
    return notebook


__all__ = ["CONFIG_MARKER", "clear_outputs", "count_parameters", "find_repo_root", "latest_sweep_summary",
           "notebook_output_problems", "plot_merge_mode_runs", "read_metrics", "read_summary_csv"]
