"""Batching: padding collate, seeded bucket order, resumable start_batch, workers, padding savings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.data import Batch, ListDataset, batch_order, build_data, collate, padding_fraction


def _bundle():
    return build_data({"name": "synthetic", "task": "first_last", "num_train": 640, "num_val": 64,
                       "num_test": 64, "min_len": 5, "max_len": 60}, seed=0)


def test_collate_pads_right_with_zero() -> None:
    b = collate([([5, 6, 7], 1), ([8], 0)])
    assert isinstance(b, Batch)
    assert b.tokens.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b.lengths.tolist() == [3, 1] and b.labels.tolist() == [1, 0]
    assert b.tokens.dtype == b.lengths.dtype == b.labels.dtype == torch.long


@pytest.mark.parametrize(("shuffle", "bucket"), [(True, True), (True, False), (False, True), (False, False)])
def test_every_example_once_and_order_depends_on_seed_epoch(shuffle: bool, bucket: bool) -> None:
    lens = np.random.default_rng(0).integers(1, 50, size=1000)
    a = batch_order(lens, 32, shuffle=shuffle, bucket=bucket, seed=1, epoch=2)
    assert sorted(i for b in a for i in b) == list(range(1000))
    assert all(len(b) <= 32 for b in a) and len(a) == 32
    assert a == batch_order(lens, 32, shuffle=shuffle, bucket=bucket, seed=1, epoch=2)
    if shuffle:
        assert a != batch_order(lens, 32, shuffle=shuffle, bucket=bucket, seed=1, epoch=3)
        assert a != batch_order(lens, 32, shuffle=shuffle, bucket=bucket, seed=2, epoch=2)


def test_order_ignores_global_rng() -> None:
    lens = np.arange(1, 301)
    torch.manual_seed(0)
    np.random.seed(0)
    a = batch_order(lens, 16, shuffle=True, bucket=True, seed=5, epoch=0)
    torch.manual_seed(1)
    np.random.seed(1)
    assert a == batch_order(lens, 16, shuffle=True, bucket=True, seed=5, epoch=0)


def test_bucketing_reduces_padding() -> None:
    """640 lengths uniform in [5, 60], batch 64: random batches measured 45.6% padding, bucketed 8.1%
    (ratio 0.18: ten batches each span ~5.5 lengths)."""
    bundle = _bundle()
    lens = bundle.splits["train"].lengths
    rnd = np.mean([padding_fraction(batch_order(lens, 64, shuffle=True, bucket=False, seed=0, epoch=e), lens)
                   for e in range(5)])
    bkt = np.mean([padding_fraction(batch_order(lens, 64, shuffle=True, bucket=True, seed=0, epoch=e), lens)
                   for e in range(5)])
    assert rnd > 0.3
    assert bkt / rnd < 0.25, (bkt, rnd)
    loader = bundle.loader("train", 64, shuffle=True, seed=0, epoch=0)
    assert loader.padding_fraction() == pytest.approx(
        padding_fraction(batch_order(lens, 64, shuffle=True, bucket=True, seed=0, epoch=0), lens))


def test_loader_batches_and_resume() -> None:
    bundle = _bundle()
    full = list(bundle.loader("train", 64, shuffle=True, seed=3, epoch=1))
    assert len(full) == len(bundle.loader("train", 64, shuffle=True, seed=3, epoch=1)) == 10
    for b in full:
        assert b.tokens.shape == (len(b.lengths), int(b.lengths.max()))
        assert int(b.lengths.min()) >= 1
        mask = torch.arange(b.tokens.shape[1]) < b.lengths[:, None]
        assert bool((b.tokens[~mask] == 0).all()) and bool((b.tokens[mask] != 0).all())
    resumed = bundle.loader("train", 64, shuffle=True, seed=3, epoch=1, start_batch=4)
    assert len(resumed) == 6 and resumed.num_batches_total == 10
    for x, y in zip(full[4:], resumed, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(x, y, strict=True))
    with pytest.raises(ValueError, match="start_batch=11"):
        bundle.loader("train", 64, shuffle=True, seed=3, start_batch=11)


class _CountingDataset(ListDataset):
    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.loaded: list[int] = []

    def __getitem__(self, index: int) -> tuple[list[int], int]:
        self.loaded.append(index)
        return super().__getitem__(index)


def test_start_batch_does_not_load_skipped_batches() -> None:
    from models.data import BatchLoader

    ds = _CountingDataset([[1] * (i % 7 + 1) for i in range(100)], [i % 2 for i in range(100)])
    loader = BatchLoader(ds, 10, shuffle=True, seed=0, start_batch=8)
    list(loader)
    assert sorted(ds.loaded) == sorted(i for b in loader.all_batches[8:] for i in b)


def test_workers_give_the_same_batches() -> None:
    bundle = _bundle()
    a = list(bundle.loader("val", 16, shuffle=True, seed=0, epoch=0))
    b = list(bundle.loader("val", 16, shuffle=True, seed=0, epoch=0, num_workers=1))
    assert len(a) == len(b) == 4
    for x, y in zip(a, b, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(x, y, strict=True))


def test_unknown_split() -> None:
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        _bundle().loader("dev", 8, shuffle=False, seed=0)
