"""Batching: length-bucketed, seeded batch orders, padding collate and a resumable loader.

The order of batches is a pure function of ``(lengths, batch_size, shuffle, bucket, seed, epoch)``:
it is drawn with a NumPy ``Generator`` seeded from ``SeedSequence([seed, epoch])`` (never the global
RNG), so a resumed run sees the same order on any machine and for any ``num_workers``, and
``start_batch`` can skip batches without loading them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple, Protocol

import numpy as np
import torch

#: Batches per bucket pool: each pool of ``pool_batches * batch_size`` shuffled examples is sorted by
#: length and cut into batches, so padding drops while batches stay random across the epoch.
DEFAULT_POOL_BATCHES = 50


class Batch(NamedTuple):
    """One padded batch.

    tokens: LongTensor (B, T), right-padded with 0, T = max(lengths); for feature data (``data=arrays``) a
        FloatTensor (B, T, F), right-padded with zeros.
    lengths: LongTensor (B,), every entry >= 1.
    labels: LongTensor (B,).
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor


class SequenceDataset(Protocol):
    """What the loader needs: ``len()``, ``ds[i] -> (ids, label)`` and ``lengths`` (N,) without loading."""

    lengths: np.ndarray

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[list[int], int]: ...


class ListDataset:
    """In-memory examples: ``ds[i] -> (token ids list[int], label int)``; ``lengths`` (N,) int64."""

    def __init__(self, sequences: Sequence[Sequence[int]], labels: Sequence[int]) -> None:
        if len(sequences) != len(labels):
            raise ValueError(f"{len(sequences)} sequences but {len(labels)} labels")
        self.sequences = [np.asarray(s, dtype=np.int64) for s in sequences]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.lengths = np.asarray([len(s) for s in self.sequences], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> tuple[list[int], int]:
        return self.sequences[index].tolist(), int(self.labels[index])


class FeatureDataset:
    """In-memory feature sequences: ``ds[i] -> (np.ndarray float32 (T_i, F), label int)``; ``lengths`` (N,)."""

    def __init__(self, sequences: Sequence[np.ndarray], labels: Sequence[int]) -> None:
        if len(sequences) != len(labels):
            raise ValueError(f"{len(sequences)} sequences but {len(labels)} labels")
        self.sequences = [np.asarray(s, dtype=np.float32) for s in sequences]
        if any(s.ndim != 2 for s in self.sequences):
            raise ValueError("every feature sequence must have shape (T, F)")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.lengths = np.asarray([len(s) for s in self.sequences], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.sequences[index], int(self.labels[index])


def collate(items: Sequence[tuple[Sequence[int], int]], pad_id: int = 0) -> Batch:
    """Pad ``B`` examples ``(ids, label)`` on the right into a :class:`Batch` (tokens (B, T)); examples
    ``(np.ndarray (T, F) float, label)`` into float features (B, T, F) padded with zeros."""
    lengths = [len(ids) for ids, _ in items]
    if any(n < 1 for n in lengths):
        raise ValueError("collate: every example needs at least one token")
    first = items[0][0] if items else None
    if isinstance(first, np.ndarray) and first.ndim == 2:
        features = torch.zeros((len(items), max(lengths), first.shape[1]), dtype=torch.float32)
        for row, (steps, _) in enumerate(items):
            features[row, : len(steps)] = torch.from_numpy(np.asarray(steps, dtype=np.float32))
        return Batch(tokens=features, lengths=torch.as_tensor(lengths, dtype=torch.long),
                     labels=torch.as_tensor([int(label) for _, label in items], dtype=torch.long))
    tokens = torch.full((len(items), max(lengths)), pad_id, dtype=torch.long)
    for row, (ids, _) in enumerate(items):
        tokens[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    return Batch(
        tokens=tokens,
        lengths=torch.as_tensor(lengths, dtype=torch.long),
        labels=torch.as_tensor([int(label) for _, label in items], dtype=torch.long),
    )


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """A NumPy generator determined by ``(seed, epoch)`` alone (same stream on every machine)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]))


def batch_order(
    lengths: Sequence[int] | np.ndarray,
    batch_size: int,
    *,
    shuffle: bool,
    bucket: bool,
    seed: int = 0,
    epoch: int = 0,
    pool_batches: int = DEFAULT_POOL_BATCHES,
) -> list[list[int]]:
    """Split example indices ``0..N-1`` into batches of at most ``batch_size``.

    - ``shuffle and bucket``: shuffle, cut into pools of ``pool_batches`` batches, sort each pool by
      length (stable), cut into batches, then shuffle the batch order.
    - ``shuffle`` only: a random permutation cut into batches.
    - ``bucket`` only: indices sorted by length (stable), cut into batches (minimal padding).
    - neither: dataset order.
    Returns a list of index lists; every index appears exactly once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lens = np.asarray(lengths, dtype=np.int64)
    n = len(lens)
    rng = epoch_rng(seed, epoch)
    order = rng.permutation(n) if shuffle else np.arange(n)
    if bucket:
        if shuffle:
            pool = batch_size * max(1, pool_batches)
            chunks = [order[i : i + pool] for i in range(0, n, pool)]
            order = np.concatenate([c[np.argsort(lens[c], kind="stable")] for c in chunks]) if n else order
        else:
            order = order[np.argsort(lens[order], kind="stable")]
    batches = [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]
    if shuffle and bucket:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def padding_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[int] | np.ndarray) -> float:
    """Fraction of padded slots: pad tokens / (sum over batches of B * max length)."""
    lens = np.asarray(lengths, dtype=np.int64)
    total = real = 0
    for idx in batches:
        b = lens[np.asarray(idx, dtype=np.int64)]
        total += len(b) * int(b.max())
        real += int(b.sum())
    return 0.0 if total == 0 else 1.0 - real / total


class _Collate:
    """Picklable collate callable (for worker processes)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: Sequence[tuple[Sequence[int], int]]) -> Batch:
        return collate(items, self.pad_id)


class BatchLoader:
    """Iterable of :class:`Batch` over one split in a fixed, seeded order; ``len()`` = batches yielded.

    ``start_batch=k`` drops the first ``k`` batches of the epoch's order before any loading; the
    remaining batches are identical to those of an uninterrupted epoch. With ``num_workers > 0`` the
    batches are loaded by a ``torch.utils.data.DataLoader`` with a fixed batch sampler (same order).
    """

    def __init__(
        self,
        dataset: SequenceDataset,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        epoch: int = 0,
        start_batch: int = 0,
        num_workers: int = 0,
        bucket: bool = True,
        pad_id: int = 0,
    ) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        self.dataset = dataset
        self.num_workers = num_workers
        self.pad_id = pad_id
        self.all_batches = batch_order(
            dataset.lengths, batch_size, shuffle=shuffle, bucket=bucket, seed=seed, epoch=epoch
        )
        if start_batch > len(self.all_batches):
            raise ValueError(f"start_batch={start_batch} but the epoch has only {len(self.all_batches)} batches")
        self.batches = self.all_batches[start_batch:]

    @property
    def num_batches_total(self) -> int:
        """Batches in the whole epoch, including those skipped by ``start_batch``."""
        return len(self.all_batches)

    def __len__(self) -> int:
        return len(self.batches)

    def padding_fraction(self) -> float:
        """Fraction of pad tokens in the batches this loader yields."""
        return padding_fraction(self.batches, self.dataset.lengths)

    def __iter__(self) -> Iterator[Batch]:
        fn = _Collate(self.pad_id)
        if self.num_workers == 0:
            for idx in self.batches:
                yield fn([self.dataset[i] for i in idx])
            return
        loader = torch.utils.data.DataLoader(
            self.dataset,  # type: ignore[arg-type]
            batch_sampler=self.batches,
            collate_fn=fn,
            num_workers=self.num_workers,
        )
        yield from loader
