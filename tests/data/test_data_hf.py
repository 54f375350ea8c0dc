"""``data=hf``: a Hugging Face dataset saved to disk (or local files through ``load_dataset``), no network: the
same bundle as the same rows through ``data=text_files``; ClassLabel names; bad rows named; trains from the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.optional import optional_import

datasets, needs_datasets = optional_import("datasets", "data=hf needs the optional extra: pip install -e '.[hf]'")
pytestmark = needs_datasets

from helpers.text_rows import example_rows, write_csv  # noqa: E402

from models.data import DataFormatError, build_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network, and load_dataset's cache in the test's folder (not the user's)."""
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def save(folder: Path, n: int = 60) -> Path:
    """A DatasetDict with a ClassLabel label column: train (``n`` rows) and test (20 rows)."""
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    parts = {}
    for split, rows in (("train", example_rows(n)), ("test", example_rows(20, seed=1))):
        parts[split] = datasets.Dataset.from_dict({"text": [t for t, _ in rows],
                                                   "label": [int(y == "pos") for _, y in rows]}, features=features)
    datasets.DatasetDict(parts).save_to_disk(str(folder))
    return folder


def test_a_saved_dataset_is_the_same_bundle_as_its_rows_in_a_csv(tmp_path: Path) -> None:
    folder = save(tmp_path / "saved")
    b = build_data({"name": "hf", "path": str(folder), "test": "test"})
    assert b.name == "hf" and b.class_names == ["neg", "pos"] and b.config["class_names"] == ["neg", "pos"]
    csv = build_data({"name": "text_files", "train": str(write_csv(tmp_path / "train.csv", 60)),
                      "test": str(write_csv(tmp_path / "test.csv", 20, seed=1))})
    assert b.vocab.itos == csv.vocab.itos
    for split in ("train", "val", "test"):
        assert b.splits[split].labels.tolist() == csv.splits[split].labels.tolist()
        assert [s.tolist() for s in b.splits[split].sequences] == [s.tolist() for s in csv.splits[split].sequences]


def test_local_files_through_load_dataset(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", 40)
    b = build_data({"name": "hf", "path": "csv", "data_files": {"train": str(train)}, "val_fraction": 0})
    assert b.class_names == ["neg", "pos"] and {s: len(d) for s, d in b.splits.items()} == {"train": 32, "test": 8}


def test_errors_name_the_split_the_row_and_the_key(tmp_path: Path) -> None:
    folder = save(tmp_path / "saved")
    with pytest.raises(ValueError, match=r"data\.test='valid' is not a split of .*; splits: \['train', 'test'\]"):
        build_data({"name": "hf", "path": str(folder), "test": "valid"})
    with pytest.raises(DataFormatError, match=r"\[train\]: data\.text_column='sentence' is not a column"):
        build_data({"name": "hf", "path": str(folder), "text_column": "sentence"})
    empty = tmp_path / "empty"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["good", " ", "bad"], "label": [1, 0, 0]})}
                         ).save_to_disk(str(empty))
    with pytest.raises(DataFormatError, match=r"empty\[train\]\[1\]: data\.text_column='text' is empty"):
        build_data({"name": "hf", "path": str(empty)})
    with pytest.raises(ValueError, match=r"data\.path is not set"):
        build_data({"name": "hf"})


@pytest.mark.slow  # a train.py subprocess (12-21 s); fast: test_predict_sources trains data=hf in process
def test_a_saved_dataset_trains_from_the_command_line(tmp_path: Path) -> None:
    folder = save(tmp_path / "saved", n=96)
    command = [sys.executable, str(ROOT / "train.py"), "data=hf", f"data.path={folder}", "data.test=test",
               "data.batch_size=16", "model.embed_dim=8", "model.hidden_size=8", "trainer.max_epochs=2",
               "trainer.num_threads=1", "trainer.tensorboard=false", "trainer.infer_batches=1",
               f"hydra.run.dir={tmp_path / 'run'}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, **OFFLINE})
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["data"] == "hf" and results["config"]["data"]["path"] == str(folder)
