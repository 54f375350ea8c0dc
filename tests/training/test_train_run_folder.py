"""A run folder belongs to one run; resume checks what it resumes; init_from; resume into any folder; degenerate
data (issue 19). Tiny synthetic runs through ``models.training.loop.train`` in this process (about a second each)."""

import hashlib
import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.composing import TINY, compose_config

from models.data import DataBundle, ListDataset
from models.training.checkpoint import load_checkpoint, save_checkpoint
from models.training.config import ConfigError
from models.training.loop import train

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
TINY_HERE = [*TINY, "trainer.tensorboard=false"]


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(run_dir: Path, *overrides: str, base: tuple = tuple(TINY_HERE)) -> dict:
    return train(compose_config(*base, *overrides), run_dir)


def fingerprint(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished 2-epoch run, never modified by the tests (they copy or only read it)."""
    run_dir = tmp_path_factory.mktemp("finished")
    threads = torch.get_num_threads()
    run(run_dir)
    torch.set_num_threads(threads)
    return run_dir


# -- a run folder belongs to one run ----------------------------------------------------------------------------
@pytest.mark.parametrize("resume", [None, "trainer.resume=", "trainer.resume=null"])
def test_a_fresh_run_refuses_a_folder_that_holds_a_killed_run(tmp_path: Path, resume: str) -> None:
    run_dir = tmp_path / "run"
    run(run_dir, "trainer.max_epochs=1")
    (run_dir / "results.json").unlink()                # as if killed after epoch 1: last.pt and best.pt remain
    before = fingerprint(run_dir)
    with pytest.raises(ConfigError) as error:
        run(run_dir, *([resume] if resume else []))
    message = str(error.value)
    assert "\n" not in message and str(run_dir) in message
    assert f"trainer.resume={run_dir}" in message and "trainer.overwrite=true" in message
    assert fingerprint(run_dir) == before, "nothing in the folder is touched"
    assert not (run_dir / ".lock").exists()


def test_overwrite_true_starts_over_in_the_folder(tmp_path: Path, finished: Path) -> None:
    run_dir = tmp_path / "run"
    run(run_dir, "trainer.max_epochs=3")
    results = run(run_dir, "trainer.overwrite=true")
    assert [json.loads(x)["epoch"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert results["steps"] == 12 and load_checkpoint(run_dir / "checkpoints" / "last.pt")["progress"]["step"] == 12


def test_a_second_process_is_kept_out_and_a_stale_lock_is_taken_over(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    import socket

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    other = subprocess.Popen(["sleep", "60"])
    try:
        (run_dir / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid}))
        with pytest.raises(ConfigError, match=rf"run folder {run_dir} is in use by process {other.pid}"):
            run(run_dir)
        assert not (run_dir / "metrics.jsonl").exists()
    finally:
        other.kill()
        other.wait()
    with caplog.at_level(logging.WARNING):
        results = run(run_dir)                          # the holder is dead now
    assert f"taking over the stale lock {run_dir / '.lock'} of process {other.pid}" in caplog.text
    assert results["steps"] == 12 and not (run_dir / ".lock").exists()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2


# -- resume checks what it resumes ------------------------------------------------------------------------------
def test_resume_with_other_model_or_optimisation_settings_lists_every_difference(finished: Path) -> None:
    before = fingerprint(finished)
    with pytest.raises(ConfigError) as error:
        run(finished, f"trainer.resume={finished}", "model.merge_mode=mul", "optim.lr=1e-5", "seed=3")
    message = str(error.value)
    assert "\n" not in message
    for part in ("model.merge_mode: 'concat' in the checkpoint, 'mul' now", "optim.lr: 0.003 in the checkpoint, "
                 "1e-05 now", "seed: 0 in the checkpoint, 3 now", "trainer.init_from="):
        assert part in message
    with pytest.raises(ConfigError, match=r"model.cell: 'lstm' in the checkpoint, 'gru' now.*model.name: 'bilstm' "
                                          r"in the checkpoint, 'bigru' now"):
        run(finished, f"trainer.resume={finished}", "model=bigru", "model.hidden_size=8", "model.embed_dim=8")
    with pytest.raises(ConfigError, match=r"model.hidden_size: 8 in the checkpoint, 12 now"):
        run(finished, f"trainer.resume={finished}", "model.hidden_size=12")
    assert fingerprint(finished) == before


def test_resume_may_extend_and_observe_differently_into_another_folder(tmp_path: Path, finished: Path) -> None:
    before = fingerprint(finished)
    target = tmp_path / "continued"
    results = run(target, f"trainer.resume={finished}", "trainer.max_epochs=3", "trainer.patience=1",
                  "trainer.num_threads=2", "trainer.device=cpu", "trainer.progress=false",
                  "trainer.checkpoint_every_steps=4", "trainer.precision=32", "data.num_workers=0")
    assert fingerprint(finished) == before, "the source folder is left as it was"
    assert (target / "checkpoints" / "best.pt").is_file() and (target / "results.json").is_file()
    assert results["steps"] == 18 and results["resumed_from"] == str(finished)
    epochs = [json.loads(x)["epoch"] for x in (target / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3], "the continued run's folder holds the whole history"
    with pytest.raises(ConfigError, match=r"already holds a run"):   # resuming into a folder with another run
        run(target, f"trainer.resume={finished}", "trainer.max_epochs=3")


def test_resume_into_another_folder_when_validation_does_not_improve(tmp_path: Path, finished: Path) -> None:
    # A source whose best val accuracy nothing can beat: the continued run writes no best.pt of its own and
    # tests the source's best.pt, copied into its folder.
    source = tmp_path / "source"
    shutil.copytree(finished, source)
    state = load_checkpoint(source / "checkpoints" / "last.pt")
    state["progress"]["best_val_accuracy"] = 1.5
    save_checkpoint(state, source / "checkpoints" / "last.pt")
    target = tmp_path / "continued"
    results = run(target, f"trainer.resume={source}", "trainer.max_epochs=3")
    copied = load_checkpoint(target / "checkpoints" / "best.pt")["model"]
    best = load_checkpoint(source / "checkpoints" / "best.pt")["model"]
    assert all(torch.equal(best[k], copied[k]) for k in best)
    assert results["best_val_accuracy"] == 1.5 and (target / "results.json").is_file()


def test_init_from_loads_weights_only_and_checks_the_architecture(tmp_path: Path, finished: Path) -> None:
    source = load_checkpoint(finished / "checkpoints" / "last.pt")["model"]
    with pytest.raises(ConfigError, match=r"does not fit this model's architecture \(.*\[32, 8\] in the "
                                          r"checkpoint, \[48, 8\] in this model"):
        run(tmp_path / "bigger", f"trainer.init_from={finished / 'checkpoints' / 'last.pt'}", "model.hidden_size=12")
    with pytest.raises(ConfigError, match=r"trainer.resume=.*and trainer.init_from=.*choose one"):
        run(tmp_path / "both", f"trainer.init_from={finished}", f"trainer.resume={finished}")
    results = run(tmp_path / "fresh", f"trainer.init_from={finished / 'checkpoints' / 'last.pt'}", "optim.lr=1e-12",
                  "trainer.max_epochs=1", "optim.warmup_steps=0", "optim.scheduler=none", "optim.weight_decay=0")
    assert results["steps"] == 6, "a fresh step count"
    state = load_checkpoint(tmp_path / "fresh" / "checkpoints" / "last.pt")
    assert state["optimizer"]["param_groups"][0]["lr"] == 1e-12, "a fresh optimiser with the new lr"
    for name, value in source.items():                  # started from the source's weights (lr 1e-12: unchanged)
        torch.testing.assert_close(state["model"][name], value, rtol=0, atol=1e-6)


# -- degenerate data --------------------------------------------------------------------------------------------
@pytest.mark.skipif(not (SHARED / "trec").is_dir(), reason="needs the shared TREC files")
def test_a_validation_fraction_that_leaves_no_training_rows_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.val_fraction=0.9999: the train split of trec has no rows"):
        run(tmp_path, "data=trec", f"data.root={SHARED}", "data.download=false", "data.val_fraction=0.9999",
            base=("trainer.num_threads=1",))
    assert not (tmp_path / "metrics.jsonl").exists()


def tiny_bundle(train_labels: list, num_classes: int = 3) -> DataBundle:
    def split(labels: list) -> ListDataset:
        return ListDataset([[1, 2]] * len(labels), labels)

    return DataBundle(name="synthetic-tiny", vocab_size=5, num_classes=num_classes, class_names=["a", "b", "c"],
                      splits={"train": split(train_labels), "val": split([0]), "test": split([1])},
                      config={"name": "synthetic", "num_train": len(train_labels), "num_classes": num_classes})


def test_degenerate_splits_and_labels_name_the_key() -> None:
    tiny_bundle([0, 1, 2]).check(world_size=2)
    with pytest.raises(ValueError, match=r"data.num_train=3: the train split .* has 3 row\(s\), fewer than the 4 "
                                         r"processes"):
        tiny_bundle([0, 1, 2]).check(world_size=4)
    with pytest.raises(ValueError, match=r"data.num_train=0: the train split .* has no rows"):
        tiny_bundle([]).check()
    with pytest.raises(ValueError, match=r"data.num_classes: the train split .* has labels from 0 to 3, outside "
                                         r"the 3 classes \[0, 3\)"):
        tiny_bundle([0, 3]).check()
    assert np.array_equal(tiny_bundle([2, 0]).splits["train"].labels, [2, 0])


def test_resume_from_weights_only_is_refused_and_a_cut_metrics_line_is_dropped(tmp_path: Path,
                                                                              finished: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(finished, source)
    state = load_checkpoint(source / "checkpoints" / "last.pt")
    save_checkpoint({**state, "optimizer": {}, "progress": {"step": 0, "weights_only": True}},
                    source / "checkpoints" / "recover.pt")
    with pytest.raises(ConfigError, match=r"holds model weights only.*trainer.init_from="):
        run(tmp_path / "x", f"trainer.resume={source / 'checkpoints' / 'recover.pt'}")
    with (source / "metrics.jsonl").open("a") as file:
        file.write('{"epoch": 3, "st')                  # killed while writing a line
    run(tmp_path / "y", f"trainer.resume={source}", "trainer.max_epochs=3")
    assert [json.loads(x)["epoch"] for x in (tmp_path / "y" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_overwrite_never_deletes_the_checkpoint_init_from_names(tmp_path: Path, finished: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    before = fingerprint(run_dir)
    with pytest.raises(ConfigError, match=r"lies in the run folder .* that trainer.overwrite=true would delete"):
        run(run_dir, f"trainer.init_from={run_dir}", "trainer.overwrite=true")
    assert fingerprint(run_dir) == before
