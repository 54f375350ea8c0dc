"""An attempt refused because its folder holds another run writes nothing into that folder (issues 31 and 34):
``.hydra/`` and ``train.log`` stay byte for byte as the run left them, and the refusal is one line on stderr."""

import os
import subprocess
import sys
from pathlib import Path

from helpers.composing import TINY

ROOT = Path(__file__).resolve().parents[2]


def train(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "train.py", *TINY, f"hydra.run.dir={run_dir}", *overrides], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_refused_attempt_leaves_the_runs_hydra_files_and_log_as_they_were(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = train(run_dir, "seed=1")
    assert first.returncode == 0, first.stderr[-2000:]
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / ".hydra" / "overrides.yaml").is_file()
    assert "seed=1" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    before = snapshot(run_dir)

    refused = train(run_dir, "seed=2", "model.hidden_size=4")          # other overrides: Hydra would record them
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "config error:" in refused.stderr and "trainer.overwrite=true" in refused.stderr
    assert snapshot(run_dir) == before                                   # not a byte of the folder changed
