"""``python -m benchmarks.startup [--rounds 10]``: what starting the library and the training app costs.

Three cases, each a fresh interpreter per call: ``python -c "import torch"`` (the floor), ``python -c "import
models"`` and ``python train.py --help``, in interleaved rounds (``benchmarks/harness.py``, order rotating), one
call per case per round after one untimed call each (Python's bytecode caches written). Per case: the median and
best wall seconds, and the median CPU seconds of the child (user + system: what the start-up cost, without the
wait for a core on a busy machine). ``import models`` is also reported as its excess over ``import torch``, the
median of the per-round differences.

``--baseline CHECKOUT`` adds ``import models`` and ``train.py --help`` of another checkout of the project (say,
the commit before a change) to the same rounds, so a before/after comparison shares the machine's load.

Goals: ``import models`` at most 0.3 s above ``import torch``; ``train.py --help`` under 2 s. Results:
``benchmarks/results/startup.json`` and a Markdown table on stdout (``python -m benchmarks.results_page`` adds it
to ``RESULTS.md``). About a minute on an idle 2-core machine at the default 10 rounds.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .harness import Column, Runner, interleaved, log, table, write_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CASES: Dict[str, List[str]] = {
    "import torch": ["-c", "import torch"],
    "import models": ["-c", "import models"],
    "train.py --help": ["train.py", "--help"],
}
GOALS = {"import models over import torch": 0.3, "train.py --help": 2.0}  # seconds, wall


def process_runner(arguments: Sequence[str], checkout: Path = ROOT) -> Runner:
    """A harness runner: each call is ``python <arguments>`` in a new process in ``checkout`` (its ``models``
    and ``train.py``); returns the wall seconds and the child's CPU seconds (user + system) of the ``number``
    timed calls."""
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}

    def once() -> None:
        subprocess.run([sys.executable, *arguments], cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=600)

    def run(number: int, warmup: int = 0, index: int = 0) -> Tuple[float, float]:
        for _ in range(warmup):
            once()
        before = os.times()
        wall = time.perf_counter()
        for _ in range(number):
            once()
        wall = time.perf_counter() - wall
        after = os.times()
        cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
        return wall, cpu

    return run


def measure(rounds: int, baseline: Optional[Path] = None) -> Dict[str, Any]:
    """Time every case over ``rounds`` interleaved rounds (with ``baseline``: its ``import models`` and
    ``train.py --help`` too, named ``... (baseline)``); the per-case summary and the goal checks."""
    runners = {name: process_runner(arguments) for name, arguments in CASES.items()}
    if baseline is not None:
        runners.update({f"{name} (baseline)": process_runner(arguments, baseline)
                        for name, arguments in CASES.items() if name != "import torch"})
    series = interleaved(runners, number=1, first_calls=1, min_rounds=rounds,
                         on_round=lambda r, s: log(f"round {r}/{rounds}: {s:.1f} s"))
    rows = [{"case": name, "wall_median_s": s.median, "wall_best_s": s.best,
             "cpu_median_s": statistics.median(s.cpu), "rounds": len(s.wall)} for name, s in series.items()]
    floor = series["import torch"]
    for suffix in ("", " (baseline)"):
        models = series.get("import models" + suffix)
        if models is None:
            continue
        rows.append({"case": "import models over import torch" + suffix, "wall_best_s": None, "rounds": len(floor.wall),
                     "wall_median_s": statistics.median(m - t for m, t in zip(models.wall, floor.wall, strict=True)),
                     "cpu_median_s": statistics.median(m - t for m, t in zip(models.cpu, floor.cpu, strict=True))})
    for row in rows:
        goal = GOALS.get(row["case"].removesuffix(" (baseline)"))
        row["goal_s"] = goal
        row["meets_goal"] = None if goal is None else bool(row["wall_median_s"] <= goal)
    return {"rows": rows, "samples": {name: {"wall": s.wall, "cpu": s.cpu} for name, s in series.items()}}


def _seconds(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


COLUMNS: List[Column] = [
    ("case (fresh process)", lambda r: r["case"]), ("wall median s", lambda r: _seconds(r["wall_median_s"])),
    ("wall best s", lambda r: _seconds(r["wall_best_s"])), ("CPU median s", lambda r: _seconds(r["cpu_median_s"])),
    ("goal (wall)", lambda r: "-" if r["goal_s"] is None else f"<= {r['goal_s']:g} s"),
    ("met", lambda r: {None: "-", True: "yes", False: "no"}[r["meets_goal"]]),
]


def _commit(checkout: Path) -> Optional[str]:
    try:
        return subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def markdown(results: Dict[str, Any]) -> str:
    m = results["machine"]
    baseline = results.get("baseline")
    against = f"; baseline: commit {baseline['commit']}" if baseline else ""
    lines = ["# Start-up", "",
             f"Machine: {m['summary']}; {results['rows'][0]['rounds']} interleaved rounds{against}.", ""]
    return "\n".join(lines + table(COLUMNS, results["rows"], align="lrrrll"))


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (one call per case each)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout of the project, timed in the same rounds (before/after)")
    parser.add_argument("--out", type=Path, default=RESULTS / "startup.json")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.baseline is not None and not (args.baseline / "train.py").is_file():
        parser.error(f"--baseline must be a checkout of the project (holding train.py), got {args.baseline}")
    results = measure(args.rounds, args.baseline)
    if args.baseline is not None:
        results["baseline"] = {"checkout": str(args.baseline), "commit": _commit(args.baseline)}
    from .machine import describe  # after the timing: it imports torch and Keras, and loads the CPU kernel

    results = {"machine": describe("cpu", 1), **results}
    write_results(args.out, results)
    print(markdown(results))
    log(f"written {args.out}")


if __name__ == "__main__":
    main()
