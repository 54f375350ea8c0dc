"""``torchrun`` data parallelism: 2 CPU processes (gloo) train like 1 process with the same global batch.

Why the two runs agree only to float rounding, not bit for bit: each rank runs the model on its half of
every global batch, and the reductions are regrouped: the batch-mean loss becomes two half-batch means
weighted and averaged by DDP's gradient all-reduce, the metric sums are added in another order, and the LSTM
and linear kernels block a 16-row batch differently from a 32-row one. Every difference is an fp32 rounding
(~1e-7 relative per operation); over the 14 AdamW steps here the final parameters differ by about 3e-7
(measured; losses by ~5e-8 relative, accuracies not at all), so the test allows 1e-5 absolute on the
parameters and 1e-5 relative on the metrics. A real bug is far outside that: without the loss weight of the
uneven 3 + 4 split of the last batch (so only 2 of the 14 steps are wrong) the parameters differ by 7e-3.
"""

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch
from helpers.composing import TINY
from helpers.testing_aids import KILL_AT_STEP_ENV

from models.data.batching import Batch
from models.training import distributed
from models.training.checkpoint import load_checkpoint
from models.training.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
# 199 examples in batches of 32: 6 full batches and one of 7, which 2 ranks split 3 + 4 (uneven on purpose).
TINY_HERE = [*TINY, "data.num_train=199", "optim.warmup_steps=0", "trainer.checkpoint_every_steps=4"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
PARAM_ATOL = 1e-5
METRIC_RTOL = 1e-5


def command(*overrides: str, processes: int, aids: bool = False) -> List[str]:
    """``aids``: ``tests/helpers/train_with_aids.py``, train.py with the testing aids of the environment."""
    launcher = TORCHRUN if processes == 2 else [sys.executable]
    script = ROOT / "tests" / "helpers" / "train_with_aids.py" if aids else ROOT / "train.py"
    return [*launcher, str(script), *TINY_HERE, *overrides]


def start(*overrides: str, processes: int, cwd: Path = ROOT, env: Optional[Dict[str, str]] = None
          ) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(command(*overrides, processes=processes, aids=bool(env)), cwd=cwd, env=env,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    output, _ = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, output, "")


def metrics(run_dir: Path) -> List[Dict[str, float]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def parameters(run_dir: Path) -> Dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """The same tiny run in 1 process and, at the same time, in 2 torchrun processes (default run folder)."""
    root = tmp_path_factory.mktemp("ddp")
    single = start(f"hydra.run.dir={root / 'single'}", processes=1)
    ddp_cwd = root / "ddp"
    ddp_cwd.mkdir()
    double = start(processes=2, cwd=ddp_cwd)    # no hydra.run.dir: outputs/<date>/<time> from every rank's clock
    done_single, done_double = finish(single), finish(double)
    assert done_single.returncode == 0, done_single.stdout[-3000:]
    assert done_double.returncode == 0, done_double.stdout[-3000:]
    folders = [p for p in (ddp_cwd / "outputs").glob("*/*") if p.is_dir()]
    assert len(folders) == 1, f"the ranks must share one run folder, got {folders}"
    return {"single": root / "single", "ddp": folders[0], "root": root}


def test_two_processes_train_like_one_with_the_same_global_batch(runs: Dict[str, Path]) -> None:
    one, two = metrics(runs["single"]), metrics(runs["ddp"])
    assert [m["step"] for m in two] == [m["step"] for m in one] == [7, 14]     # global batches, not per rank
    for a, b in zip(one, two, strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert b[key] == pytest.approx(a[key], rel=METRIC_RTOL, abs=1e-12), (key, a[key], b[key])
    p1, p2 = parameters(runs["single"]), parameters(runs["ddp"])
    assert p1.keys() == p2.keys()
    worst = max((p1[k] - p2[k]).abs().max().item() for k in p1)
    assert worst <= PARAM_ATOL, f"final parameters differ by {worst:.3g}"
    r1 = json.loads((runs["single"] / "results.json").read_text())
    r2 = json.loads((runs["ddp"] / "results.json").read_text())
    assert (r1["world_size"], r2["world_size"]) == (1, 2)
    assert r2["test_accuracy"] == pytest.approx(r1["test_accuracy"], abs=1e-12)
    assert r2["test_loss"] == pytest.approx(r1["test_loss"], rel=METRIC_RTOL)


def test_only_rank_0_writes_and_ranks_share_one_folder(runs: Dict[str, Path]) -> None:
    folder = runs["ddp"]
    assert (folder / "train.log").read_text().count("epoch 2:") == 1          # rank 0's log only
    assert "epoch 2:" in (folder / "train.rank1.log").read_text()             # rank 1 logs beside it
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 2      # one line per epoch, not per rank
    checkpoint = load_checkpoint(folder / "checkpoints" / "last.pt")
    assert len(checkpoint["rng_ranks"]) == 2 and checkpoint["progress"]["step"] == 14
    assert sorted(p.name for p in (folder / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]


@pytest.mark.slow                                   # two more torchrun launches (~45 s)
def test_a_killed_ddp_run_resumes_to_the_same_weights(runs: Dict[str, Path]) -> None:
    killed_dir = runs["root"] / "killed"
    killed = finish(start(f"hydra.run.dir={killed_dir}", processes=2, env={KILL_AT_STEP_ENV: "10"}))
    assert killed.returncode != 0
    assert load_checkpoint(killed_dir / "checkpoints" / "last.pt")["progress"]["step"] == 8    # mid-epoch 2
    source = runs["root"] / "killed_copy"
    shutil.copytree(killed_dir, source)
    resumed = finish(start(f"hydra.run.dir={killed_dir}", f"trainer.resume={killed_dir}", processes=2))
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    straight, after_kill = parameters(runs["ddp"]), parameters(killed_dir)
    assert all(torch.equal(straight[k], after_kill[k]) for k in straight), "DDP resume must be bit for bit"
    assert [m["epoch"] for m in metrics(killed_dir)] == [1, 2]

    # The example in docs/scaling-out.md: resume into a new timestamped folder; the source folder stays as it was.
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file() and p.name != ".lock"}
    cwd = runs["root"] / "elsewhere"
    cwd.mkdir()
    elsewhere = finish(start(f"trainer.resume={source}", processes=2, cwd=cwd))
    assert elsewhere.returncode == 0, elsewhere.stdout[-3000:]
    (folder,) = [p for p in (cwd / "outputs").glob("*/*") if p.is_dir()]
    assert all(torch.equal(straight[k], parameters(folder)[k]) for k in straight)
    assert (folder / "checkpoints" / "best.pt").is_file() and (folder / "results.json").is_file()
    assert [m["epoch"] for m in metrics(folder)] == [1, 2]
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file() and p.name != ".lock"} == before


# -- the helpers in one process ------------------------------------------------------------------------------------

def test_without_torchrun_everything_is_a_single_process_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init() == distributed.Context() and distributed.is_main()
    batch = Batch(torch.ones(5, 3, dtype=torch.long), torch.full((5,), 3), torch.zeros(5, dtype=torch.long))
    part, weight = distributed.shard(batch)
    assert part is batch and weight == 1.0
    assert distributed.sum_over_ranks(1.5, 2) == (1.5, 2)
    distributed.check_batch_sizes([[0, 1, 2], [3]])


@pytest.mark.parametrize(("rows", "world"), [(32, 2), (7, 2), (10, 4), (5, 3)])
def test_shards_cover_the_batch_and_weights_make_the_global_mean(rows: int, world: int) -> None:
    bounds = [distributed.shard_bounds(rows, rank, world) for rank in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == rows
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    # DDP averages the ranks' gradients: mean over ranks of weight_r * mean_r(loss) == mean over all rows.
    losses = torch.randn(rows, dtype=torch.float64)
    ddp_mean = sum((stop - start) * world / rows * losses[start:stop].mean() for start, stop in bounds) / world
    assert ddp_mean.item() == pytest.approx(losses.mean().item(), rel=1e-12)


def test_a_batch_smaller_than_the_world_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "context", lambda: distributed.Context(rank=0, world_size=4))
    distributed.check_batch_sizes([[0, 1, 2, 3], [4, 5, 6, 7]])
    with pytest.raises(ConfigError, match="has a batch of only 3 example"):
        distributed.check_batch_sizes([[0, 1, 2, 3], [4, 5, 6]])

