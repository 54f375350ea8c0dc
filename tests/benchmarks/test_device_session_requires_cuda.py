"""The device session cannot pass with CUDA tests left out: with ``BIRNN_ZOO_REQUIRE_CUDA=1`` (which
``benchmarks/device_session.sh`` sets) a CUDA test on a machine without a visible GPU fails instead of skipping,
and the script also counts any skip in its test log as a failure. Checked here, where no GPU is visible."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
ONE_TEST = "tests/test_cuda.py::test_backward_in_eval_mode_on_cuda"


def run_one_cuda_test(**env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "BIRNN_ZOO_REQUIRE_CUDA"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", ONE_TEST],
                          cwd=ROOT, capture_output=True, text=True, timeout=240, env={**environment, **env})


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the CUDA tests run for real here")
def test_a_cuda_test_skips_without_the_switch_and_fails_with_it() -> None:
    skipped = run_one_cuda_test()
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout[-2000:]
    required = run_one_cuda_test(BIRNN_ZOO_REQUIRE_CUDA="1")
    assert required.returncode == 1 and "1 error" in required.stdout, required.stdout[-2000:]   # the fixture fails
    assert "BIRNN_ZOO_REQUIRE_CUDA=1 but torch.cuda.is_available() is False" in required.stdout


def test_the_session_sets_the_switch_and_counts_a_skip_as_a_failure() -> None:
    script = (ROOT / "benchmarks" / "device_session.sh").read_text()
    tests_at = script.index("-m pytest")
    assert script.rindex("export BIRNN_ZOO_REQUIRE_CUDA=1", 0, tests_at) > 0
    assert 'grep -q "SKIPPED"' in script[tests_at:] and "tests_rc=1" in script[tests_at:]
