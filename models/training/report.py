"""The report of a sweep: ``python -m models.training.report <sweep dir>``.

Reads every ``results.json`` under the sweep folder and writes, next to them:
- ``summary.csv``: one row per run, with every setting that differs between the runs;
- ``summary.md``: mean +- std over seeds of test accuracy, train and inference tokens/s, one row per group
  of runs that share every setting except the seed (and the run folder), with how many seeds it averages
  ("n/a" for the spread of one seed); the keys the sweep swept are columns even where a failed job left a
  single value, and merge modes come in the order concat, sum, mul, ave, None;
  then the failed jobs (``job_error.json``, written by ``train.py``) and the ``results.json`` files that were
  skipped because they are broken or incomplete;
- ``summary.png``: accuracy and throughput per group (when matplotlib is installed).

A run's settings are the ``config`` its ``results.json`` holds (older runs: ``.hydra/config.yaml`` beside
it; else the few settings ``results.json`` names). So a sweep over ``model.hidden_size=8,12`` gets one row
per size, never an average of the two.

``ReportCallback`` runs the same at the end of a Hydra multirun (``conf/hydra/default.yaml``).
"""

import argparse
import csv
import io
import json
import logging
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from models.atomic import atomic_path, write_atomically

log = logging.getLogger(__name__)

JOB_ERROR = "job_error.json"
"""What ``train.py`` writes into the folder of a sweep job that failed."""

COLUMNS = ("data", "model", "cell", "merge_mode", "pooling", "seed", "num_parameters", "best_val_accuracy",
           "test_accuracy", "train_tokens_per_s", "infer_tokens_per_s", "epochs", "wall_time_s", "compile",
           "device", "run_dir")
REQUIRED = ("data", "seed", "num_parameters", "test_accuracy", "train_tokens_per_s", "infer_tokens_per_s")
"""Keys a ``results.json`` must hold to be reported."""
NOT_GROUPED = ("seed", "data.seed", "trainer.resume", "trainer.overwrite")
"""Settings that never split a group: seeds (what is averaged) and where or how a run was started."""
METRICS = ("test_accuracy", "train_tokens_per_s", "infer_tokens_per_s")
MERGE_ORDER = ("concat", "sum", "mul", "ave", None)
"""How people list the merge modes (Keras's order, ``None`` last), not alphabetically."""

failed_in_last_sweep = 0
"""Failed jobs the last :class:`ReportCallback` saw (``train.py`` exits non-zero when any)."""


def _flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(node, dict):
        flat: Dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: json.dumps(node) if isinstance(node, list) else node}


def _settings(row: Dict[str, Any], path: Path) -> Dict[str, Any]:
    """The run's config as ``{dotted key: value}``."""
    config = row.get("config")
    if not isinstance(config, dict):
        hydra_config = path.parent / ".hydra" / "config.yaml"
        try:
            from omegaconf import OmegaConf

            from models.zoo.config_group import register

            register()                                 # ${zoo_preset:...} of an older run's config resolves
            loaded = OmegaConf.load(hydra_config)
            try:
                config = OmegaConf.to_container(loaded, resolve=True)
            except Exception:                          # something else unresolvable: those values are dropped
                config = OmegaConf.to_container(loaded, resolve=False)
        except Exception:
            config = {"data": {"name": row.get("data")},
                      "model": {k: row.get(k) for k in ("model", "cell", "merge_mode", "pooling") if k in row},
                      "seed": row.get("seed")}
    return {key: value for key, value in _flatten(config).items()
            if not (isinstance(value, str) and "${" in value)}


def load_results(sweep_dir: Path) -> Tuple[List[Dict[str, Any]], List[Tuple[Path, str]]]:
    """``(rows, skipped)``: every usable ``results.json`` below ``sweep_dir`` (sorted by path; each row gets
    ``settings`` and ``path``), and ``(path, reason)`` for each broken or incomplete one. Raises ``ValueError``
    if there is none at all."""
    paths = sorted(sweep_dir.rglob("results.json"))
    if not paths:
        raise ValueError(f"no results.json under {sweep_dir}: is it a finished sweep folder (multirun/...)?")
    rows, skipped = [], []
    for path in paths:
        try:
            row = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            skipped.append((path, f"not valid JSON ({error})"))
            continue
        if not isinstance(row, dict):
            skipped.append((path, f"holds a {type(row).__name__}, not an object"))
            continue
        missing = [key for key in REQUIRED if key not in row]
        if missing:
            skipped.append((path, f"incomplete: lacks {missing}"))
            continue
        try:
            [float(row[key]) for key in METRICS]
        except (TypeError, ValueError):
            skipped.append((path, "a metric is not a number"))
            continue
        rows.append({**row, "settings": _settings(row, path), "path": str(path),
                     "overrides": _job_overrides(path.parent)})
    return rows, skipped


def _job_overrides(folder: Path) -> List[str]:
    """The command-line overrides of the job in ``folder`` (Hydra's ``.hydra/overrides.yaml``; ``[]`` if none)."""
    try:
        from omegaconf import OmegaConf

        return [str(o) for o in OmegaConf.to_container(OmegaConf.load(folder / ".hydra" / "overrides.yaml"))]
    except Exception:
        return []


def swept_keys(jobs: Sequence[Sequence[str]]) -> List[str]:
    """Override keys that differ between the jobs (finished or failed) that recorded their overrides, except
    :data:`NOT_GROUPED`: what the sweep swept, even where only one of its jobs finished."""
    values: Dict[str, set] = defaultdict(set)
    recorded = [job for job in jobs if job]
    for job in recorded:
        for override in job:
            key, _, value = override.lstrip("+~").partition("=")
            values[key].add(value)
    return sorted(key for key, seen in values.items() if key not in NOT_GROUPED
                  and (len(seen) > 1 or sum(any(o.lstrip("+~").startswith(key + "=") for o in job)
                                            for job in recorded) < len(recorded)))


def load_failures(sweep_dir: Path) -> List[Dict[str, Any]]:
    """The ``job_error.json`` records below ``sweep_dir`` (each with its ``folder``)."""
    failures = []
    for path in sorted(sweep_dir.rglob(JOB_ERROR)):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = {"kind": "?", "error": "?", "message": f"unreadable {path.name}"}
        failures.append({**record, "folder": str(path.parent)})
    return failures


def varying_keys(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """Settings whose value differs between the runs, except :data:`NOT_GROUPED`."""
    keys = sorted({key for row in rows for key in row["settings"]} - set(NOT_GROUPED))
    return [key for key in keys if len({json.dumps(row["settings"].get(key), sort_keys=True, default=str)
                                        for row in rows}) > 1]


def summarize(rows: Sequence[Dict[str, Any]], swept: Sequence[str] = ()) -> Tuple[List[str], List[Dict[str, Any]]]:
    """``(keys, summary)``: runs grouped by every varying setting and every ``swept`` key a run's settings hold
    (``keys``); mean and std over the seeds of each group (std ``nan`` for one run), ``seeds`` = how many
    distinct seeds, ``runs`` = how many runs."""
    keys = varying_keys(rows)
    for key in swept:                                          # a config group (model=bigru): its name
        setting = key if any(key in row["settings"] for row in rows) else f"{key}.name"
        if setting not in keys and any(setting in row["settings"] for row in rows):
            keys.append(setting)
    groups: Dict[Tuple[str, ...], List[Dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[tuple(json.dumps(row["settings"].get(key), default=str) for key in keys)].append(row)
    def order(item: Tuple[Tuple[str, ...], List[Dict[str, Any]]]) -> Tuple[Tuple[int, Any], ...]:
        values = [item[1][0]["settings"].get(key) for key in keys]  # numbers by value (8 before 12), then text
        return tuple(_rank(key, v) for key, v in zip(keys, values, strict=True))

    summary = []
    for _, runs in sorted(groups.items(), key=order):
        first = runs[0]
        entry: Dict[str, Any] = {"group": {key: first["settings"].get(key) for key in keys}, "runs": len(runs),
                                 "seeds": len({run["seed"] for run in runs}), "data": first["data"],
                                 "num_parameters": first["num_parameters"]}
        for key in METRICS:
            values = [float(run[key]) for run in runs]
            entry[key] = statistics.fmean(values)
            entry[key + "_std"] = statistics.stdev(values) if len(values) > 1 else math.nan
        summary.append(entry)
    return keys, summary


def _rank(key: str, value: Any) -> Tuple[int, Any]:
    """Sort key of a setting's value: merge modes in :data:`MERGE_ORDER`, numbers by value, then text."""
    if key.endswith("merge_mode") and value in MERGE_ORDER:
        return (0, MERGE_ORDER.index(value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, value)
    return (2, str(value))


def _value(value: Any) -> str:
    return "null" if value is None else str(value)


def _spread(mean: float, std: float, scale: float, digits: str) -> str:
    """``mean +- std``; ``mean +- n/a`` where one run gives no spread."""
    return f"{scale * mean:{digits}} +- " + ("n/a" if math.isnan(std) else f"{scale * std:{digits}}")


def markdown_table(keys: Sequence[str], summary: Sequence[Dict[str, Any]]) -> str:
    columns = [*(keys or ["data"]), "seeds", "runs", "params", "test accuracy", "train tokens/s", "infer tokens/s"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for s in summary:
        group = [_value(s["group"][key]) for key in keys] if keys else [s["data"]]
        lines.append(
            "| " + " | ".join(group) + f" | {s['seeds']} | {s['runs']} | {s['num_parameters']:,} | "
            f"{_spread(s['test_accuracy'], s['test_accuracy_std'], 100, '.1f')} | "
            f"{_spread(s['train_tokens_per_s'], s['train_tokens_per_s_std'], 1, ',.0f')} | "
            f"{_spread(s['infer_tokens_per_s'], s['infer_tokens_per_s_std'], 1, ',.0f')} |")
    return "\n".join(lines) + "\n"


def problems_section(failures: Sequence[Dict[str, Any]], skipped: Sequence[Tuple[Path, str]]) -> str:
    text = ""
    if failures:
        text += f"\n## Failed jobs ({len(failures)})\n\n"
        for f in failures:
            overrides = " ".join(f.get("overrides") or [])
            message = " ".join(str(f.get("message", "")).split())
            text += f"- `{f['folder']}` ({overrides}): {f.get('kind')}: {f.get('error')}: {message}\n"
    if skipped:
        text += f"\n## Skipped results ({len(skipped)})\n\n"
        text += "".join(f"- `{path}`: {reason}\n" for path, reason in skipped)
    return text


def labels_overlap(figure: Any) -> bool:
    """Whether any two x tick labels of an axis of ``figure`` overlap (their drawn bounding boxes)."""
    renderer = figure.canvas.get_renderer()
    for axis in figure.axes:
        boxes = [label.get_window_extent(renderer) for label in axis.get_xticklabels() if label.get_text()]
        if any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]):
            return True
    return False


def plot(keys: Sequence[str], summary: Sequence[Dict[str, Any]], path: Path) -> bool:
    """Accuracy and train throughput per group. False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed: no %s", path.name)
        return False
    # Tick labels hold the values only (one line per key); the keys name the x axis once. A "$" would start
    # matplotlib's math mode.
    labels = [("\n".join(_value(s["group"][key]) for key in keys) or s["data"]).replace("$", r"\$") for s in summary]
    widest = max(len(line) for label in labels for line in label.splitlines())
    per_group = max(0.6, 0.075 * widest + 0.25)                # inches: 7-point text is about 0.06 inch a character
    figure, axes = plt.subplots(1, 2, figsize=(max(8.0, 2 * per_group * len(summary) + 2), 4.5))
    xs = range(len(summary))
    for axis, key, scale, title in ((axes[0], "test_accuracy", 100.0, "test accuracy (%)"),
                                    (axes[1], "train_tokens_per_s", 1.0, "training tokens/s")):
        errors = [scale * s[key + "_std"] for s in summary]      # nan (one seed): no error bar drawn
        axis.bar(xs, [scale * s[key] for s in summary], 0.7, yerr=errors, capsize=3)
        axis.set_xticks(list(xs))
        axis.set_xticklabels(labels, fontsize=7)
        axis.set_xlabel(" / ".join(keys) if keys else "data", fontsize=8)
        axis.set_title(title)
    figure.tight_layout()
    try:
        if labels_overlap(figure):                             # still too tight: stand the labels up
            for axis in axes:
                plt.setp(axis.get_xticklabels(), rotation=90)
            figure.tight_layout()
        with atomic_path(path) as temp:
            figure.savefig(temp, dpi=110, format="png")
    finally:
        plt.close(figure)
    return True


def write_report(sweep_dir: Path) -> Dict[str, Path]:
    """Write ``summary.csv``, ``summary.md`` and ``summary.png`` into ``sweep_dir``; returns their paths.

    Raises ``ValueError`` when there is not one usable ``results.json`` (the failed jobs are still listed in
    ``summary.md`` then)."""
    sweep_dir = Path(sweep_dir)
    failures = load_failures(sweep_dir)
    try:
        rows, skipped = load_results(sweep_dir)
    except ValueError:
        rows, skipped = [], []
    outputs = {"csv": sweep_dir / "summary.csv", "md": sweep_dir / "summary.md", "png": sweep_dir / "summary.png"}
    if not rows:
        if failures or skipped:
            write_atomically(outputs["md"], "No finished runs.\n" + problems_section(failures, skipped))
        raise ValueError(f"no usable results.json under {sweep_dir}"
                         + (f" ({len(failures)} failed job(s), {len(skipped)} broken result(s))"
                            if failures or skipped else ": is it a finished sweep folder (multirun/...)?"))
    keys, summary = summarize(rows, swept_keys([row["overrides"] for row in rows]
                                               + [list(f.get("overrides") or []) for f in failures]))
    file = io.StringIO(newline="")
    extra = [key for key in keys if key not in COLUMNS]
    writer = csv.DictWriter(file, fieldnames=[*COLUMNS, *extra], extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        mode = row.get("merge_mode")
        writer.writerow({**row, **{key: row["settings"].get(key) for key in extra},
                         "merge_mode": "/".join(map(str, mode)) if isinstance(mode, list) else mode})
    write_atomically(outputs["csv"], file.getvalue())
    write_atomically(outputs["md"], markdown_table(keys, summary) + problems_section(failures, skipped))
    if not plot(keys, summary, outputs["png"]):
        del outputs["png"]
    return outputs


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency
    Callback = object  # type: ignore[assignment,misc]


class ReportCallback(Callback):  # type: ignore[misc]
    """Hydra callback: writes the report into the sweep folder when a multirun ends."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        global failed_in_last_sweep
        sweep_dir = Path(config.hydra.sweep.dir)
        failures = load_failures(sweep_dir)
        failed_in_last_sweep = len(failures)
        try:
            outputs = write_report(sweep_dir)
        except ValueError as error:
            log.warning("no sweep report: %s", error)
            return
        print(Path(outputs["md"]).read_text())
        print(f"report: {', '.join(str(p) for p in outputs.values())}")
        if failures:
            log.warning("%d of the sweep's jobs failed (listed in %s)", len(failures), outputs["md"])


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
