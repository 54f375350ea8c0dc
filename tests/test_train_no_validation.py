"""``data.val_fraction=0``: the final fit on every training row. No validation split, so no early stopping; each
epoch's weights become ``best.pt`` and the last epoch's are tested. A small TREC run in this process (seconds)."""

import json
from pathlib import Path

import pytest
import torch
from composing import compose_config

from models.training.checkpoint import load_checkpoint
from models.training.loop import train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not (SHARED / "trec").is_dir(), reason="needs the shared TREC files")


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_a_run_without_validation_trains_every_epoch_and_tests_the_last_weights(tmp_path: Path) -> None:
    cfg = compose_config("data=trec", f"data.root={SHARED}", "data.download=false", "data.val_fraction=0",
                         "model.embed_dim=8", "model.hidden_size=8", "trainer.max_epochs=3", "trainer.patience=1",
                         "trainer.num_threads=1", "trainer.tensorboard=false")
    results = train(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["val_loss"], r["val_acc"]) for r in rows] == [(1, None, None), (2, None, None),
                                                                         (3, None, None)]
    assert rows[-1]["step"] == 3 * 86, "5,452 training rows in batches of 64: 86 steps an epoch"
    assert results["stop_reason"] == "max_epochs", "patience 1 must not stop a run that has nothing to validate"
    assert results["best_val_accuracy"] is None and 0.0 < results["test_accuracy"] <= 1.0
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")["model"]
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model"]
    assert best.keys() == last.keys()
    for name in best:
        torch.testing.assert_close(best[name], last[name], rtol=0, atol=0, msg=f"best.pt is the last epoch: {name}")
