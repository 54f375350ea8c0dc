"""``data=arrays``: numeric sequences (T, F) from ``.npz`` files, variable lengths, standardisation fitted on train
only, float batches, bad rows named by file, row and key; a feature model trains from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.data import DataFormatError, build_data
from models.data.batching import collate

ROOT = Path(__file__).resolve().parents[2]


def sequences(n: int, features: int = 3, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` sequences of 4-12 steps; the class is the sign of feature 0's mean (offset, so not centred)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    seqs = []
    for label in labels:
        steps = rng.normal(size=(int(rng.integers(4, 13)), features)) + np.array([5.0, -2.0, 0.0][:features])
        steps[:, 0] += 1.5 if label else -1.5
        seqs.append(steps.astype(np.float32))
    return seqs, labels


def save_padded(path: Path, seqs: list[np.ndarray], labels: np.ndarray, **extra: np.ndarray) -> Path:
    lengths = np.array([len(s) for s in seqs])
    x = np.zeros((len(seqs), lengths.max(), seqs[0].shape[1]), dtype=np.float32)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
    np.savez(path, x=x, y=labels, lengths=lengths, **extra)
    return path


def cfg(train: Path, **keys: object) -> dict:
    return {"name": "arrays", "train": str(train), **keys}


def test_padded_and_end_to_end_layouts_give_the_same_standardised_rows(tmp_path: Path) -> None:
    seqs, labels = sequences(50)
    padded = save_padded(tmp_path / "padded.npz", seqs, labels)
    np.savez(tmp_path / "flat.npz", x=np.concatenate(seqs), y=labels, lengths=[len(s) for s in seqs])
    a, b = build_data(cfg(padded)), build_data(cfg(tmp_path / "flat.npz"))
    assert a.input_kind == "features" and a.num_features == 3 and a.vocab is None and a.class_names == ["0", "1"]
    assert {s: len(d) for s, d in a.splits.items()} == {"train": 36, "val": 4, "test": 10}   # round(2.5) = 2 per class
    for split in a.splits:
        assert a.splits[split].lengths.tolist() == b.splits[split].lengths.tolist()
        for p, q in zip(a.splits[split].sequences, b.splits[split].sequences, strict=True):
            np.testing.assert_array_equal(p, q)
    train_steps = np.concatenate(a.splits["train"].sequences)
    np.testing.assert_allclose(train_steps.mean(0), 0.0, atol=1e-5)      # fitted on the training steps only
    np.testing.assert_allclose(train_steps.std(0), 1.0, atol=1e-5)
    assert np.abs(np.concatenate(a.splits["test"].sequences).mean(0)).max() > 1e-3
    raw = build_data(cfg(padded, standardize=False))
    assert raw.feature_mean is None and raw.feature_std is None
    mean, std = np.array(a.feature_mean), np.array(a.feature_std)
    np.testing.assert_allclose((raw.splits["test"].sequences[0] - mean) / std, a.splits["test"].sequences[0],
                               rtol=1e-5, atol=1e-6)
    batch = collate([a.splits["train"][i] for i in range(4)])
    assert batch.tokens.dtype == torch.float32 and batch.tokens.shape == (4, int(batch.lengths.max()), 3)
    assert batch.tokens[0, int(batch.lengths[0]):].abs().sum() == 0


def test_string_labels_and_class_names(tmp_path: Path) -> None:
    seqs, labels = sequences(20)
    path = save_padded(tmp_path / "d.npz", seqs, np.array(["up", "down"])[labels])
    b = build_data(cfg(path, val_fraction=0, test_fraction=0.5))
    assert b.class_names == ["down", "up"]
    c = build_data(cfg(path, val_fraction=0, test_fraction=0.5, class_names=["up", "down"]))
    assert (c.splits["train"].labels == 1 - b.splits["train"].labels).all()


def test_bad_rows_name_the_file_the_row_and_the_key(tmp_path: Path) -> None:
    seqs, labels = sequences(20)
    seqs[7][2, 1] = np.nan
    path = save_padded(tmp_path / "nan.npz", seqs, labels)
    with pytest.raises(DataFormatError, match=r"nan\.npz\[7\]: data\.features_key='x': a non-finite value at "
                                              r"step 2"):
        build_data(cfg(path))
    assert build_data(cfg(path, skip_malformed=True)).info["skipped_malformed"] == 1
    np.savez(tmp_path / "long.npz", x=np.zeros((2, 5, 3)), y=[0, 1], lengths=[5, 6])
    with pytest.raises(DataFormatError, match=r"long\.npz\[1\]: data\.lengths_key='lengths': length 6 outside"):
        build_data(cfg(tmp_path / "long.npz"))
    np.savez(tmp_path / "keys.npz", features=np.zeros((2, 5, 3)), y=[0, 1])
    with pytest.raises(DataFormatError, match=r"keys\.npz: data\.features_key='x' is not an array of the file"):
        build_data(cfg(tmp_path / "keys.npz"))
    np.savez(tmp_path / "wide.npz", x=np.zeros((4, 5, 4)), y=[0, 1, 0, 1])
    with pytest.raises(DataFormatError, match=r"data\.test: rows with \[4\] features where data\.train has 3"):
        build_data(cfg(tmp_path / "nan.npz", skip_malformed=True, test=str(tmp_path / "wide.npz")))
    with pytest.raises(ValueError, match=r"data\.train='x\.csv': expected an \.npz file"):
        build_data(cfg(Path("x.csv")))


@pytest.mark.slow  # a train.py subprocess (10-23 s); fast: test_predict_sources trains data=arrays in process
def test_a_feature_model_trains_from_the_command_line(tmp_path: Path) -> None:
    seqs, labels = sequences(160)
    path = save_padded(tmp_path / "train.npz", seqs, labels)
    command = [sys.executable, str(ROOT / "train.py"), "data=arrays", f"data.train={path}", "data.batch_size=16",
               "model=bigru", "model.embed_dim=8", "model.hidden_size=8", "optim.lr=0.03", "trainer.max_epochs=3",
               "trainer.num_threads=1", "trainer.tensorboard=false", "trainer.infer_batches=1",
               f"hydra.run.dir={tmp_path / 'run'}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["data"] == "arrays" and results["cell"] == "gru"
    assert results["test_accuracy"] >= 0.8, results   # the class is in feature 0's mean: easy for 3 epochs
    state = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert state["embed.weight"].shape == (8, 3), "model.input_size came from the data (F = 3)"


def _train_command(path: Path, run_dir: Path, *extra: str) -> list[str]:
    return [str(ROOT / "train.py"), "data=arrays", f"data.train={path}", "data.batch_size=16", "model.embed_dim=8",
            "model.hidden_size=8", "optim.warmup_steps=0", "trainer.max_epochs=2", "trainer.num_threads=1",
            "trainer.tensorboard=false", "trainer.infer_batches=1", "trainer.checkpoint_every_steps=4",
            f"hydra.run.dir={run_dir}", *extra]


def _last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


@pytest.mark.slow                                       # three more train.py launches, one of them torchrun (~1 min)
def test_feature_data_shards_over_ddp_and_resumes_to_the_same_weights(tmp_path: Path) -> None:
    import os
    import signal

    from helpers.testing_aids import KILL_AT_STEP_ENV

    seqs, labels = sequences(150)
    path = save_padded(tmp_path / "train.npz", seqs, labels)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, *_train_command(path, tmp_path / "one")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    double = subprocess.run([*torchrun, *_train_command(path, tmp_path / "two")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert double.returncode == 0, double.stdout[-3000:] + double.stderr[-3000:]
    one, two = _last_weights(tmp_path / "one"), _last_weights(tmp_path / "two")
    assert max((one[k] - two[k]).abs().max().item() for k in one) <= 1e-5, "2 ranks train like 1 process"
    assert json.loads((tmp_path / "two" / "results.json").read_text())["world_size"] == 2

    # train.py with the testing aids
    aided = [sys.executable, str(ROOT / "tests" / "helpers" / "train_with_aids.py"),
             *_train_command(path, tmp_path / "resumed")[1:]]
    killed = subprocess.run(aided, cwd=ROOT,
                            env={**env, KILL_AT_STEP_ENV: "10"}, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL
    resumed = subprocess.run([sys.executable, *_train_command(path, tmp_path / "resumed",
                                                              f"trainer.resume={tmp_path / 'resumed'}")],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = _last_weights(tmp_path / "resumed")
    assert max((one[k] - again[k]).abs().max().item() for k in one) <= 1e-6, "the resumed run ends where one run does"


def test_a_parquet_list_column_is_the_same_data_as_an_npz(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow", reason="Parquet input needs pyarrow")
    import pyarrow.parquet as pq

    seqs, labels = sequences(30)
    names = np.array(["down", "up"])[labels]
    pq.write_table(pa.table({"x": [s.tolist() for s in seqs], "y": names.tolist()}), tmp_path / "d.parquet")
    a = build_data(cfg(tmp_path / "d.parquet"))
    b = build_data(cfg(save_padded(tmp_path / "d.npz", seqs, names)))
    assert a.class_names == b.class_names == ["down", "up"] and a.num_features == 3
    for split in b.splits:
        assert a.splits[split].labels.tolist() == b.splits[split].labels.tolist()
        for p, q in zip(a.splits[split].sequences, b.splits[split].sequences, strict=True):
            np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-6)
    pq.write_table(pa.table({"x": [[[1.0, 2.0]], [[1.0], [2.0, 3.0]]], "y": [0, 1]}), tmp_path / "ragged.parquet")
    with pytest.raises(DataFormatError, match=r"ragged\.parquet\[1\]: data\.features_key='x': expected a list"):
        build_data(cfg(tmp_path / "ragged.parquet"))
