"""``benchmarks/device_session.sh`` on a machine without a GPU: its preflight runs, it stops with a clear "no GPU"
status (exit code 2, ``status.json``), and with ``DRY_RUN=1`` its GPU plan runs a tiny CPU plan first, each row
written as it goes. On a machine with a GPU these are skipped: there the script is the real session."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the script would run the real "
                                                                  "session (minutes); run it as the session instead")


def session(out: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "device_session.sh")], cwd=ROOT, timeout=240,
                          capture_output=True, text=True,
                          env={**os.environ, "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
                               "BIRNN_ZOO_CPU_KERNEL": "0", **env})   # no kernel build: only the GPU path matters


def read(out: Path, name: str) -> Dict:
    return json.loads((out / name).read_text())


def test_without_a_gpu_the_session_stops_after_the_preflight_with_a_no_gpu_status(tmp_path: Path) -> None:
    result = session(tmp_path)
    log = (tmp_path / "session.log").read_text()
    assert result.returncode == 2, log[-3000:]
    assert read(tmp_path, "status.json")["state"] == "no-gpu"
    preflight = read(tmp_path, "preflight.json")
    assert preflight["torch"] == torch.__version__ and preflight["cuda_available"] is False
    assert preflight["block_forward"] == [5, 3, 8] and "cudnn.allow_tf32" in preflight["flags"]
    assert "NO GPU" in log and "preflight rc=2" in (tmp_path / "steps.txt").read_text()
    assert not (tmp_path / "gpu_plan.json").exists() and not (tmp_path / "cuda_tests.log").exists()


@pytest.mark.slow
def test_dry_run_times_a_tiny_plan_on_the_cpu_and_still_says_no_gpu(tmp_path: Path) -> None:
    result = session(tmp_path, DRY_RUN="1", DRY_RUN_BUDGET="1")
    log = (tmp_path / "session.log").read_text()
    assert result.returncode == 2, log[-3000:]
    status = read(tmp_path, "status.json")
    assert status["state"] == "no-gpu" and status["dry_run_rows"] >= 1
    plan = read(tmp_path, "gpu_plan.json")
    assert plan["dry_run"] is True and plan["rows"] and plan["left_out"] >= 0
    row = plan["rows"][0]
    assert row["block_ms"] > 0 and row["baseline_ms"] > 0 and "error" not in row
    assert row["ratio"] == pytest.approx(row["block_ms"] / row["baseline_ms"], rel=1.0)


def test_the_gpu_path_steps_are_capped_at_five_minutes_in_all() -> None:
    """Issue 36: the session takes at most 5 minutes. Every `step NAME SECONDS` on the GPU path (all but the CPU
    dry run) counts, the kernel loop once per thread count."""
    import re

    script = (ROOT / "benchmarks" / "device_session.sh").read_text()
    caps = {name: int(seconds) for name, seconds in re.findall(r'^\s*step ([\w"${}-]+) (\d+) ', script, re.M)}
    kernel = re.search(r'step "kernel-\$\{threads\}t" '
                       r'\$\(\(threads == 4 \? (\d+) : \(threads == 8 \? (\d+) : (\d+)\)\)\)', script)
    assert kernel, "the kernel loop's per-thread-count limits"
    assert set(caps) == {"preflight", "dry-run", "gpu-plan", "cuda-tests"}, caps
    total = caps["preflight"] + caps["gpu-plan"] + caps["cuda-tests"] + sum(map(int, kernel.groups()))
    assert total <= 300, f"the GPU path's step limits add up to {total} s"
