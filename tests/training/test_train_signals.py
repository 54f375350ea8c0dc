"""A real ``python train.py`` stopped by SIGTERM / SIGINT, and one that diverges: each stops cleanly and prints the
exact command that continues it, and that command works (issue 19).

Only the process that is stopped runs as a subprocess (an import of ``train.py`` costs seconds); the reference
run and the printed command run in this process, through Hydra's compose API with the command's overrides.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.composing import TINY, compose_config
from helpers.testing_aids import PAUSE_AT_STEP_ENV

from models.training.checkpoint import load_checkpoint
from models.training.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
# 100 steps per epoch: a signal sent a moment after epoch 1 ends lands in the middle of epoch 2.
LONGER = [*TINY, "data.num_train=3200", "trainer.tensorboard=false", "model.dropout=0.3", "model.head_dropout=0.3"]


def command(*overrides: str) -> list:
    return [sys.executable, str(ROOT / "train.py"), *overrides]


def run(words: list) -> subprocess.CompletedProcess:
    return subprocess.run(words, cwd=ROOT, capture_output=True, text=True, timeout=300)


def the_exact_command(stderr: str, kind: str) -> list:
    """The overrides of the ``python train.py ...`` command a message prints."""
    found = re.findall(rf"{kind}: (python train\.py .*)$", stderr, flags=re.MULTILINE)
    assert found, stderr[-3000:]
    words = shlex.split(found[-1])
    assert words[:2] == ["python", "train.py"]
    return words[2:]


def wait_for_line(process: subprocess.Popen, wanted: str) -> str:
    """Read ``process``'s stderr until a line containing ``wanted``; returns what was read. Fails if the process
    ends first."""
    read = []
    for line in process.stderr:
        read.append(line)
        if wanted in line:
            return "".join(read)
    process.wait(timeout=60)
    pytest.fail(f"the run ended (status {process.returncode}) before {wanted!r}:\n{''.join(read)[-3000:]}")


def train_in_process(overrides: list) -> dict:
    """``python train.py <overrides>`` in this process (``hydra.run.dir=`` is the run folder)."""
    from models.training.loop import train

    run_dir = Path(next(o for o in overrides if o.startswith("hydra.run.dir=")).split("=", 1)[1])
    threads = torch.get_num_threads()
    try:
        return train(compose_config(*overrides), run_dir)     # hydra.* overrides are the process's, dropped
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> dict:
    run_dir = tmp_path_factory.mktemp("straight")
    train_in_process([*LONGER, f"hydra.run.dir={run_dir}"])
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143),
                                               pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)])
def test_a_signal_writes_last_pt_at_the_step_and_the_printed_command_continues_bit_for_bit(
        tmp_path: Path, straight: dict, signum: int, status: int) -> None:
    run_dir = tmp_path / "run"
    # The run waits after step 130 (epoch 2 of 100 steps each) until the signal: mid-epoch on any machine.
    process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "helpers" / "train_with_aids.py"), *LONGER,
                                f"hydra.run.dir={run_dir}"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, PAUSE_AT_STEP_ENV: "130"})
    before = wait_for_line(process, f"paused at step 130 ({PAUSE_AT_STEP_ENV})")
    # A second run started in the same folder meanwhile is kept out by the lock (the first is unharmed).
    with pytest.raises(ConfigError, match=rf"run folder {run_dir} is in use by process {process.pid} "):
        train_in_process([*LONGER, f"hydra.run.dir={run_dir}"])
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    stderr = before + stderr
    assert process.returncode == status, stderr[-3000:]
    assert "Traceback" not in stderr

    step = int(re.search(r"interrupted at step (\d+); continue with:", stderr).group(1))
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")["progress"]
    assert step == 131, "the step in which the signal arrived is finished, then the run stops"
    assert saved["step"] == step, "last.pt is written at the interrupted step"
    assert saved["batch_in_epoch"] == 31, "mid-epoch"
    assert f"interrupted at step {step}; continue with: python train.py" in (run_dir / "train.log").read_text()

    again = the_exact_command(stderr, "continue with")
    assert f"trainer.resume={run_dir}" in again and f"hydra.run.dir={run_dir}" in again
    train_in_process(again)
    after = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    weights = straight["model"]
    assert all(torch.equal(weights[name], after[name]) for name in weights), "continued run must be bit for bit"
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    assert json.loads((run_dir / "results.json").read_text())["steps"] == 200


def test_divergence_names_healthy_weights_and_the_command_with_a_lower_lr_works(tmp_path: Path) -> None:
    # lr * weight_decay = 19: AdamW's decoupled decay multiplies the weights by -18 per step until they overflow;
    # a tenth of the lr multiplies them by -0.9, which is stable.
    run_dir = tmp_path / "diverged"
    overrides = [*(o for o in LONGER if o != "data.num_train=3200"), "trainer.max_epochs=8", "optim.lr=190",
                 "optim.weight_decay=0.1", "optim.warmup_steps=0", "optim.scheduler=none", "model.dropout=0.0"]
    result = run(command(*overrides, f"hydra.run.dir={run_dir}"))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "non-finite losses in a row" in result.stderr and "recover.pt" in result.stderr
    recover = load_checkpoint(run_dir / "checkpoints" / "recover.pt")
    assert all(torch.isfinite(w).all() and w.abs().max() < 100 for w in recover["model"].values())

    again = the_exact_command(result.stderr, "continue from them with a lower learning rate")
    assert "optim.lr=19" in again and f"trainer.init_from={run_dir / 'checkpoints' / 'recover.pt'}" in again
    assert set(overrides) - {"optim.lr=190"} <= set(again), "the command keeps the run's own settings"
    results = train_in_process(again)
    assert results["nonfinite_steps"] == 0 and results["steps"] == 8 * 6, "a fresh step count"
    assert results["init_from"].endswith("recover.pt")


def test_the_testing_aids_refuse_a_malformed_step_and_the_pause_ends_on_a_signal() -> None:
    from helpers.testing_aids import TestingAids

    with pytest.raises(ValueError, match=rf"{PAUSE_AT_STEP_ENV}='13x' must be a positive integer"):
        TestingAids.from_environment({PAUSE_AT_STEP_ENV: "13x"})
    aids = TestingAids.from_environment({PAUSE_AT_STEP_ENV: "3"})
    asked = []
    aids.after_step(2, lambda: asked.append(1) or True)
    assert asked == [], "other steps do not pause"
    aids.after_step(3, lambda: asked.append(1) or len(asked) >= 3)
    assert asked == [1, 1, 1], "the pause polls until a signal has arrived, then returns"
