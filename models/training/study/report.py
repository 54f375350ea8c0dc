"""The merge-mode study's report: ``python -m models.training.study <sweep dir> [--docs docs/study.md]``.

``python train.py -m experiment=study`` trains LSTM and GRU with every merge mode on several tasks and seeds;
when the sweep ends, :class:`StudyCallback` (or this command, for any finished sweep folder) writes into the
sweep folder:

- ``study.json``: per data task x model x merge mode, test accuracy mean +- std over the seeds (and each seed's
  value), parameters, training and inference tokens/s, and every paired comparison of two merge modes;
- ``study.md``: the same as tables, with the machine and the command;
- ``study_accuracy.png`` (accuracy +- std per mode; the axis spans the data, not zero) and ``study_speed.png``
  (accuracy against training tokens/s).

Speed is measured after the sweep (``models/training/study/timing.py``): every trained model re-timed on one
fixed batch per task, interleaved, one thread; not the training loop's tokens/s, which other jobs disturb.
Differences between merge modes are paired by seed (``models/training/study/stats.py`` says which test and why).
``--docs PATH`` also rewrites the generated part of ``docs/study.md`` and copies the figures beside it.
"""

import argparse
import json
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..report import NOT_GROUPED, load_failures, load_results
from .stats import holm, mean_std, paired_t_test

log = logging.getLogger(__name__)

MODE_ORDER = ("concat", "sum", "mul", "ave")
ALPHA = 0.05
"""Holm-adjusted p below this: the difference exceeds the seed-to-seed spread."""
OUTPUTS = ("study.json", "study.md", "study_accuracy.png", "study_speed.png")


def _mode(row: Dict[str, Any]) -> str:
    mode = row.get("merge_mode")
    return "/".join(map(str, mode)) if isinstance(mode, list) else str(mode)


def _or_nan(value: Optional[float]) -> float:
    return float("nan") if value is None else float(value)   # None: a run without a validation split


def _order(value: str) -> Tuple[int, str]:
    return (MODE_ORDER.index(value), "") if value in MODE_ORDER else (len(MODE_ORDER), value)


def _variants(rows: Sequence[Dict[str, Any]]) -> Dict[str, str]:
    """Each run's model variant within its data task: the settings that differ between the task's runs,
    except the merge mode and the seed (normally the preset, ``bilstm`` / ``bigru``)."""
    labels: Dict[str, str] = {}
    for data in {row["data"] for row in rows}:
        runs = [row for row in rows if row["data"] == data]
        keys = sorted({k for row in runs for k in row["settings"]} - set(NOT_GROUPED) - {"model.merge_mode"})
        varying = [k for k in keys if len({json.dumps(r["settings"].get(k), default=str) for r in runs}) > 1]
        if "model.name" in varying and "model.cell" in varying:
            varying.remove("model.cell")               # the preset names its cell
        for row in runs:
            parts = [str(row["settings"].get(k)) if k == "model.name"
                     else f"{k.split('.')[-1]}={row['settings'].get(k)}" for k in varying]
            labels[row["path"]] = " ".join(parts) or str(row.get("model"))
    return labels


def summarize_study(rows: Sequence[Dict[str, Any]], timings: Optional[Dict[str, Dict[str, Any]]] = None
                    ) -> Dict[str, Any]:
    """``{"cells": [...], "comparisons": [...]}`` from ``results.json`` rows (``models.training.report.load_results``)
    and the post-sweep timings (``timing.time_study``; None: the training loop's tokens/s, marked so)."""
    variants = _variants(rows)
    groups: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["data"], variants[row["path"]], _mode(row)), []).append(row)
    cells = []
    for (data, variant, mode), runs in sorted(groups.items(), key=lambda item: (item[0][0], item[0][1],
                                                                                _order(item[0][2]))):
        runs = sorted(runs, key=lambda r: r["seed"])
        speeds = [timings.get(r["path"]) if timings else None for r in runs]
        source = "post-sweep timing" if all(speeds) else "training loop"
        if not all(speeds):
            speeds = [{k: r[k] for k in ("train_tokens_per_s", "infer_tokens_per_s")} for r in runs]
        cell = {"data": data, "model": variant, "merge_mode": mode, "seeds": [r["seed"] for r in runs],
                "test_accuracy_by_seed": {str(r["seed"]): r["test_accuracy"] for r in runs},
                "num_parameters": runs[0]["num_parameters"], "speed_source": source,
                "test_accuracy": mean_std([r["test_accuracy"] for r in runs]),
                "best_val_accuracy": mean_std([_or_nan(r.get("best_val_accuracy")) for r in runs]),
                "train_tokens_per_s": mean_std([s["train_tokens_per_s"] for s in speeds]),
                "infer_tokens_per_s": mean_std([s["infer_tokens_per_s"] for s in speeds]),
                "epochs": mean_std([r.get("epochs", 0) for r in runs])}
        if len(set(cell["seeds"])) != len(cell["seeds"]):
            raise ValueError(f"{data} {variant} {mode}: several runs with one seed ({cell['seeds']}); "
                             f"a study folder must hold each (task, model, merge mode, seed) once")
        cells.append(cell)
    return {"cells": cells, "comparisons": compare_modes(cells)}


def compare_modes(cells: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Every pair of merge modes within one (data, model): the paired t-test over their common seeds, and
    Holm's adjustment over the pairs of that (data, model). ``differs``: adjusted p < :data:`ALPHA`."""
    comparisons: List[Dict[str, Any]] = []
    families: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for cell in cells:
        families.setdefault((cell["data"], cell["model"]), []).append(cell)
    for (data, model), family in families.items():
        start = len(comparisons)
        for i, a in enumerate(family):
            for b in family[i + 1:]:
                seeds = sorted(set(a["test_accuracy_by_seed"]) & set(b["test_accuracy_by_seed"]), key=int)
                if not seeds:
                    continue
                test = paired_t_test([a["test_accuracy_by_seed"][s] for s in seeds],
                                     [b["test_accuracy_by_seed"][s] for s in seeds])
                comparisons.append({"data": data, "model": model, "a": a["merge_mode"], "b": b["merge_mode"],
                                    "seeds": [int(s) for s in seeds], **test})
        adjusted = holm([c["p"] for c in comparisons[start:]])
        for comparison, p in zip(comparisons[start:], adjusted, strict=True):
            comparison["p_holm"] = p
            comparison["differs"] = p is not None and p < ALPHA
    return comparisons


def machine() -> Dict[str, Any]:
    """The CPU (``benchmarks/machine.py`` when the repository's ``benchmarks`` is importable), cores, versions."""
    import torch

    try:
        from benchmarks.machine import _cpu_model
        cpu = _cpu_model()
    except ImportError:
        cpu = platform.processor() or "unknown CPU"
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "load_average": load}


def _pct(stat: Dict[str, float]) -> str:
    """``mean +- std`` in percent; a single seed has no spread to show, so no ``+- 0.0``."""
    return f"{100 * stat['mean']:.1f}" + (f" +- {100 * stat['std']:.1f}" if stat["n"] > 1 else "")


def _speed(stat: Dict[str, float]) -> str:
    return f"{stat['mean']:,.0f}" + (f" +- {stat['std']:,.0f}" if stat["n"] > 1 else "")


def markdown(study: Dict[str, Any]) -> str:
    """The study as Markdown: settings, one table per data task, the comparisons that exceed the spread."""
    lines = [f"Command: `{study['command']}`", "",
             f"Machine: {study['machine']['cpu']}, {study['machine']['cores']} cores, torch "
             f"{study['machine']['torch']}" + (f", GPU {study['machine']['gpu']}" if study["machine"].get("gpu")
                                               else "; no GPU numbers")
             + (f"; load average {study['machine']['load_average'][0]} when the report was written (other "
                f"processes on the machine slow every model alike: compare speeds within a task)"
                if study["machine"].get("load_average") else ""), ""]
    timing = study.get("timing_settings")
    if timing:
        batches = ", ".join(f"{data}: {b['shape'][0]}x{b['shape'][1]}, {b['tokens']} tokens"
                            for data, b in timing.get("batches", {}).items())
        lines += [f"Speed: every trained model re-timed after the sweep on one fixed batch per task ({batches}), "
                  f"interleaved, {timing['rounds']} rounds (median), {timing['threads']} thread(s); a training "
                  f"step is {timing['step']}. Mean +- std over the seeds' models.", ""]
    else:
        lines += ["Speed: the training loop's own tokens/s (no post-sweep timing was run): other jobs disturb it.",
                  ""]
    lines += ["Accuracy: test accuracy (%) of the best-validation checkpoint, mean +- sample std over the seeds.", ""]
    for data in dict.fromkeys(c["data"] for c in study["cells"]):
        lines += [f"### {data}", "", "| model | merge mode | seeds | params | test accuracy | train tokens/s | "
                  "infer tokens/s | epochs |", "|---|---|---|---|---|---|---|---|"]
        for c in (c for c in study["cells"] if c["data"] == data):
            lines.append(f"| {c['model']} | {c['merge_mode']} | {len(c['seeds'])} | {c['num_parameters']:,} | "
                         f"{_pct(c['test_accuracy'])} | {_speed(c['train_tokens_per_s'])} | "
                         f"{_speed(c['infer_tokens_per_s'])} | {c['epochs']['mean']:.1f} |")
        lines.append("")
    comparisons = study["comparisons"]
    flagged = [c for c in comparisons if c["differs"]]
    lines += ["### Merge modes that differ by more than the seed-to-seed spread", "",
              f"Paired t-test over the seeds (the same seed gives both modes the same data and batch order), "
              f"Holm-adjusted over the pairs of merge modes of each task x model (6 for 4 modes); "
              f"a pair differs when the adjusted p < {ALPHA}. {len(flagged)} of {len(comparisons)} pairs do.", ""]
    if comparisons:
        lines += ["| data | model | a - b | seeds | mean diff (points) | std of diffs | p | p (Holm) |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in sorted(comparisons, key=lambda c: (c["p_holm"] is None, c["p_holm"] or 0.0))[:12] if not flagged \
                else flagged:
            p = "n/a" if c["p"] is None else f"{c['p']:.3g}"
            ph = "n/a" if c["p_holm"] is None else f"{c['p_holm']:.3g}"
            spread = f"{100 * c['std_diff']:.2f}" if len(c["seeds"]) > 1 else "n/a"
            lines.append(f"| {c['data']} | {c['model']} | {c['a']} - {c['b']} | {len(c['seeds'])} | "
                         f"{100 * c['mean_diff']:+.2f} | {spread} | {p} | {ph} |")
        lines.append("")
        if not flagged and all(c["p"] is None for c in comparisons):
            lines += ["(One seed per mode: no spread to compare against, so no test; run at least 2 seeds.)", ""]
        elif not flagged:
            lines += ["(None differs: the table lists the smallest p-values.)", ""]
    return "\n".join(lines)


def write_study(sweep_dir: Path, retime: bool = True, rounds: int = 5, batch_size: int = 64, threads: int = 1,
                command: Optional[str] = None) -> Dict[str, Path]:
    """Write ``study.json``, ``study.md`` and the figures into ``sweep_dir``; returns their paths.

    ``retime``: time the trained models now (``timing``); else reuse the timings of an earlier
    ``study.json`` in the folder, or fall back to the training loop's tokens/s (the report says which).
    Raises ``ValueError`` when the folder holds no usable ``results.json``."""
    from .figures import plot_accuracy, plot_speed

    sweep_dir = Path(sweep_dir)
    rows, skipped = load_results(sweep_dir)
    failures = load_failures(sweep_dir)
    previous = sweep_dir / "study.json"
    timings: Optional[Dict[str, Dict[str, Any]]] = None
    if retime:
        from .timing import time_study

        timings = time_study(rows, batch_size=batch_size, rounds=rounds, threads=threads)
    elif previous.is_file():
        timings = json.loads(previous.read_text()).get("timings")
    study = summarize_study(rows, timings)
    old = json.loads(previous.read_text()) if previous.is_file() else {}
    # Without new timings the speeds are the earlier report's, so is the machine (and its load) they describe.
    study.update(command=command or old.get("command") or f"python -m models.training.study {sweep_dir}",
                 machine=old["machine"] if not retime and "machine" in old else machine(),
                 timing_settings=(timings or {}).get("_settings"), timings=timings,
                 runs=len(rows), failed_jobs=[f.get("folder") for f in failures],
                 skipped_results=[str(path) for path, _ in skipped])
    outputs = {name: sweep_dir / name for name in OUTPUTS}
    outputs["study.json"].write_text(json.dumps(study, indent=2, default=str) + "\n")
    text = markdown(study)
    if failures or skipped:
        text += (f"\n{len(failures)} failed job(s) and {len(skipped)} unusable results.json are left out "
                 f"(see summary.md in the sweep folder).\n")
    outputs["study.md"].write_text(text)
    for name, draw in (("study_accuracy.png", plot_accuracy), ("study_speed.png", plot_speed)):
        if not draw(study["cells"], outputs[name]):
            del outputs[name]
    return outputs


def _typed_command() -> str:
    """The sweep's command as a reader would type it: this machine's folders (the data cache, an absolute
    ``hydra.sweep.dir``) become placeholders, since the report lands in docs other people read."""
    cache = "BIRNN_ZOO_CACHE=<data folder> " if os.environ.get("BIRNN_ZOO_CACHE") else ""
    words = [Path(sys.argv[0]).name]
    for word in sys.argv[1:]:
        key, equals, value = word.partition("=")
        words.append(f"{key}=<folder>" if equals and Path(value).is_absolute() else word)
    return cache + "python " + " ".join(words)


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency
    Callback = object  # type: ignore[assignment,misc]


class StudyCallback(Callback):  # type: ignore[misc]
    """Hydra callback (``conf/experiment/study.yaml``): the study report when the multirun ends."""

    def __init__(self, rounds: int = 5, batch_size: int = 64, threads: int = 1) -> None:
        self.rounds, self.batch_size, self.threads = rounds, batch_size, threads

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            outputs = write_study(sweep_dir, rounds=self.rounds, batch_size=self.batch_size, threads=self.threads,
                                  command=_typed_command())
        except ValueError as error:
            log.warning("no study report: %s", error)
            return
        print(outputs["study.md"].read_text())
        print(f"study report: {', '.join(str(p) for p in outputs.values())}; docs: python -m models.training.study "
              f"{sweep_dir} --no-retime --docs docs/study.md")


def main(argv: Sequence[str] = ()) -> None:
    parser = argparse.ArgumentParser(prog="python -m models.training.study", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a finished study sweep folder (multirun/study/<date>/<time>)")
    parser.add_argument("--docs", type=Path, default=None, help="also rewrite the generated part of this file "
                        "(docs/study.md) and copy the figures beside it")
    parser.add_argument("--no-retime", dest="retime", action="store_false",
                        help="reuse the timings in the folder's study.json instead of timing the models again")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per model (median; default 5)")
    parser.add_argument("--batch-size", type=int, default=64, help="rows of the fixed timing batch (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while timing (default 1)")
    parser.add_argument("--command", default=None, help="the command that trained the runs, for the report (default: "
                        "the one an earlier study.json in the folder names, else this command)")
    args = parser.parse_args(list(argv) or None)
    for name in ("rounds", "batch_size", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    try:
        outputs = write_study(args.sweep_dir, retime=args.retime, rounds=args.rounds, batch_size=args.batch_size,
                              threads=args.threads, command=args.command)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    if args.docs is not None:
        from .docs import rewrite_docs

        regenerate = "python -m models.training.study <sweep dir> --no-retime --docs " + str(args.docs)
        figures = [outputs[name] for name in ("study_accuracy.png", "study_speed.png") if name in outputs]
        written = rewrite_docs(args.docs, outputs["study.md"].read_text(), figures, regenerate)
        outputs.update(written)
    print(outputs["study.md"].read_text())
    print("wrote " + ", ".join(str(p) for p in outputs.values()))
