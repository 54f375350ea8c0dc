"""Sweeps through Hydra launcher plugins: joblib (parallel jobs here, run end to end) and submitit (SLURM).

SLURM itself cannot run here, so the SLURM test goes as far as a real submission would without a cluster:
it composes ``hydra/launcher=slurm``, instantiates the plugin's launcher and lets it build its submitit
executor (a stub ``srun`` on PATH satisfies submitit's cluster check), then stops at ``map_array``, where
``sbatch`` would be called, and checks the job array and the ``#SBATCH`` lines it would submit.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.composing import TINY, compose_config
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[2]
TINY_HERE = [*TINY, "trainer.max_epochs=1"]


def composed(*overrides: str):
    return compose_config(*overrides, hydra=True)


def test_a_joblib_sweep_runs_two_jobs_in_parallel_and_writes_the_report(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher",
                        reason="could not import 'hydra_plugins.hydra_joblib_launcher' (pip install -e '.[dev]')")
    command = [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2",
               f"hydra.sweep.dir={tmp_path}", "model.merge_mode=concat,mul", *TINY_HERE]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr           # the joblib launcher ran them
    results = sorted(tmp_path.glob("*/results.json"))
    assert [p.parent.name for p in results] == ["0", "1"]
    summary = (tmp_path / "summary.md").read_text()                              # ReportCallback, after both
    assert "| model.merge_mode | seeds | runs |" in summary                             # grouped by what differs
    assert "| concat | 1 | 1 |" in summary and "| mul | 1 | 1 |" in summary
    assert (tmp_path / "summary.csv").read_text().count("\n") == 3


def test_the_parallel_launcher_config_composes() -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher",
                        reason="could not import 'hydra_plugins.hydra_joblib_launcher' (pip install -e '.[dev]')")
    launcher = composed("hydra/launcher=parallel").hydra.launcher
    assert launcher._target_.endswith("JoblibLauncher") and launcher.prefer == "processes"


class Submitted(Exception):
    """Raised where the launcher would call sbatch."""


def test_the_slurm_launcher_config_composes_and_builds_the_sbatch_job(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="the SLURM launcher is the sweep extra's (pip install -e '.[sweep]')")
    submitit = pytest.importorskip("submitit", reason="submitit comes with the sweep extra (pip install -e '.[sweep]')")
    cfg = composed("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}")
    params = cfg.hydra.launcher
    assert params._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (params.partition, params.tasks_per_node, params.gpus_per_node, params.nodes) == ("gpu", 1, 1, 1)
    assert params.submitit_folder == f"{tmp_path / 'sweep'}/.submitit/%j"
    with pytest.raises(Exception, match="partiton"):                           # typos fail at compose time
        composed("hydra/launcher=slurm", "hydra.launcher.partiton=gpu")

    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "srun").write_text("#!/bin/sh\nexit 1\n")
    (stub / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub}{os.pathsep}{os.environ['PATH']}")
    captured = {}

    def map_array(executor, function, *arguments):
        captured["jobs"] = list(zip(*arguments, strict=True))
        captured["sbatch"] = executor._executor._make_submission_file_text("python -u -m submitit.core._submit", "x")
        raise Submitted

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    launcher = instantiate(params)
    launcher.setup(hydra_context=None, task_function=lambda cfg: None, config=cfg)
    with pytest.raises(Submitted):
        launcher.launch([["model.merge_mode=sum"], ["model.merge_mode=mul"]], initial_job_idx=0)
    assert [job[0] for job in captured["jobs"]] == [["model.merge_mode=sum"], ["model.merge_mode=mul"]]
    sbatch = captured["sbatch"]
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16GB",
                 "#SBATCH --nodes=1"):
        assert line in sbatch, (line, sbatch)
