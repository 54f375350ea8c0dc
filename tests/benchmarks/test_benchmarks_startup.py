"""benchmarks/startup.py: fresh-process runners on the harness, the goal checks, and its table on the results page
(no timing is asserted: that is the benchmark's job, not a test's)."""

import json
import subprocess
from pathlib import Path
from typing import List

import pytest

from benchmarks import harness, results_page, startup


def test_process_runner_counts_the_childs_cpu_time_not_the_parents() -> None:
    """A child that burns ~0.2 s of CPU: its CPU seconds come back, though this process did nothing meanwhile."""
    burn = startup.process_runner(["-c", "import time\nt = time.process_time()\n"
                                         "while time.process_time() - t < 0.2: pass"])
    wall, cpu = burn(1, 0, 0)
    assert cpu >= 0.19 and wall >= cpu * 0.5
    with pytest.raises(subprocess.CalledProcessError):  # a failing case stops the benchmark, not a silent 0 s
        startup.process_runner(["-c", "raise SystemExit(3)"])(1, 0, 0)


def test_measure_reports_each_case_the_excess_and_the_goals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake runners (no processes): per-round differences give the excess; each goal is judged on the wall median."""
    seconds = {"import torch": [1.0, 1.4, 1.2], "import models": [1.2, 1.5, 1.5], "train.py --help": [2.5, 2.4, 2.6]}
    calls = {name: 0 for name in seconds}

    def fake(arguments: List[str], checkout: Path = startup.ROOT) -> harness.Runner:
        name = next(n for n, a in startup.CASES.items() if a == arguments)
        if checkout != startup.ROOT:                  # the baseline: 0.5 s slower a call
            seconds[name + " (baseline)"] = [s + 0.5 for s in seconds[name]]
            calls[name + " (baseline)"] = 0
            name += " (baseline)"

        def run(number: int, warmup: int, index: int) -> tuple:
            if calls[name] == 0:
                calls[name] += 1
                return 9.0, 9.0                       # the untimed first call
            calls[name] += 1
            return seconds[name][index], seconds[name][index] / 2
        return run

    monkeypatch.setattr(startup, "process_runner", fake)
    rows = {row["case"]: row for row in startup.measure(3)["rows"]}
    assert rows["import torch"]["wall_median_s"] == pytest.approx(1.2)
    assert rows["import models over import torch"]["wall_median_s"] == pytest.approx(0.2)   # median of .2 .1 .3
    assert rows["import models over import torch"]["meets_goal"] is True
    assert rows["train.py --help"]["meets_goal"] is False and rows["train.py --help"]["cpu_median_s"] == 1.25
    assert rows["import torch"]["meets_goal"] is None
    rows = {row["case"]: row for row in startup.measure(3, baseline=Path("/elsewhere"))["rows"]}
    assert rows["import models over import torch (baseline)"]["wall_median_s"] == pytest.approx(0.7)
    assert rows["import models over import torch (baseline)"]["meets_goal"] is False
    assert "import torch (baseline)" not in rows and rows["train.py --help (baseline)"]["goal_s"] == 2.0


def test_the_results_page_draws_the_startup_table(tmp_path: Path) -> None:
    rows = [{"case": "import torch", "wall_median_s": 1.5, "wall_best_s": 1.4, "cpu_median_s": 1.3, "rounds": 4,
             "goal_s": None, "meets_goal": None},
            {"case": "train.py --help", "wall_median_s": 1.9, "wall_best_s": 1.8, "cpu_median_s": 1.7, "rounds": 4,
             "goal_s": 2.0, "meets_goal": True}]
    document = {"machine": {"cpu": "Test CPU", "summary": "Test CPU; 2 cores"}, "rows": rows}
    (tmp_path / "startup.json").write_text(json.dumps(document))
    page = results_page.page(tmp_path)
    assert "## Test CPU" in page and "`python -m benchmarks.startup`" in page
    assert "| train.py --help | 1.90 | 1.80 | 1.70 | <= 2 s | yes |" in page
    assert "4 interleaved rounds" in page

