"""``data=arrays``: numeric sequences (T, F) with a class label each, for the zoo's feature models (``input_size=F``).

Each source (``data.train``, ``data.validation``, ``data.test``, or the fractions of ``models/data/splits.py``) is
an ``.npz`` file (``numpy.savez``; read with ``allow_pickle=False``) holding:

- ``data.features_key`` (``x``): float ``(N, T, F)``, padded after each row's length, or ``(sum of lengths, F)``:
  the rows one after another;
- ``data.labels_key`` (``y``): ``(N,)`` integer class ids or class names (strings);
- ``data.lengths_key`` (``lengths``): ``(N,)`` steps per row, each >= 1; required for the ``(sum, F)`` layout,
  optional for ``(N, T, F)`` (absent: every row has ``T`` steps);

or a ``.parquet`` table (pyarrow) whose ``data.features_key`` column holds each row's steps as a list of lists
of F numbers and whose ``data.labels_key`` column holds the labels.

``data.standardize`` (true) subtracts each feature's mean and divides by its standard deviation, both over the
valid steps of the training split only (a constant feature keeps std 1); the bundle keeps them
(``feature_mean``/``feature_std``) so a predictor applies the same to new data. The training app sets
``model.input_size`` to ``F`` from the data. Rows are ``(np.ndarray float32 (T_i, F), label)``; batches hold
float ``(B, T, F)`` padded with zeros and ``lengths``. A bad row (a non-finite value, a length out of range, a
label that is no class) names ``file[row]`` and the key.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from . import splits
from .batching import FeatureDataset
from .splits import Rows, row_error
from .text import DataFormatError

log = logging.getLogger(__name__)

EXTENSIONS = (".npz", ".parquet")


def resolve(c: dict[str, Any]) -> None:
    """Check (in place) the keys of ``data=arrays`` beyond the split keys."""
    for key in ("features_key", "labels_key", "lengths_key"):
        if not isinstance(c[key], str) or not c[key]:
            raise ValueError(f"data.{key}={c[key]!r}: expected the name of an array in the .npz files")
    if not isinstance(c["standardize"], bool):
        raise ValueError(f"data.standardize={c['standardize']!r}: expected true or false")
    for key in ("train", "validation", "test"):
        if c[key] is not None and Path(c[key]).suffix.lower() not in EXTENSIONS:
            raise ValueError(f"data.{key}={c[key]!r}: expected an .npz file (numpy.savez) or a .parquet table of "
                             f"data.features_key={c['features_key']!r}, data.labels_key={c['labels_key']!r} and "
                             f"optionally data.lengths_key={c['lengths_key']!r}")


def _arrays(path: Path, key: str, c: dict[str, Any]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"data.{key}={str(path)!r}: no such file")
    if path.suffix.lower() == ".parquet":
        return _parquet(path, key, c)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise DataFormatError(f"{path}: not an .npz of plain arrays (data.{key}): {error}") from None


def _parquet(path: Path, key: str, c: dict[str, Any]) -> dict[str, np.ndarray]:
    """A Parquet table as the ``(sum of lengths, F)`` layout: ``data.features_key`` a list column (a row: a list of
    steps, each a list of F numbers), ``data.labels_key`` a column of ids or names."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"data.{key}={str(path)!r}: a .parquet file needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
    except Exception as error:                         # pyarrow's own errors: not a Parquet file, a broken one
        raise DataFormatError(f"{path}: not a readable Parquet file (data.{key}): {error}") from None
    found: dict[str, np.ndarray] = {}
    if c["labels_key"] in table.column_names:
        found[c["labels_key"]] = np.asarray(table.column(c["labels_key"]).to_pylist())
    if c["features_key"] in table.column_names:
        steps = []
        for index, row in enumerate(table.column(c["features_key"]).to_pylist()):
            try:
                seq = np.asarray(row if row else np.zeros((0, 0)), dtype=np.float64)
            except (TypeError, ValueError):
                seq = None
            if seq is None or seq.ndim != 2 or (steps and len(seq) and seq.shape[1] != steps[0].shape[1]):
                raise DataFormatError(f"{path}[{index}]: data.features_key={c['features_key']!r}: expected a list "
                                      f"of steps, each a list of the same number of features")
            steps.append(seq)
        width = max((s.shape[1] for s in steps), default=0)
        found[c["features_key"]] = np.concatenate([s.reshape(len(s), width) for s in steps]) if steps else \
            np.zeros((0, 0))
        found[c["lengths_key"]] = np.asarray([len(s) for s in steps], dtype=np.int64)
    return found


def read(c: dict[str, Any], key: str) -> Rows:
    """The rows of ``data.<key>``'s file: float32 ``(T_i, F)`` arrays with their labels and ``file[row]``."""
    path = Path(c[key]).expanduser()
    arrays = _arrays(path, key, c)
    for name in ("features_key", "labels_key"):
        if c[name] not in arrays:
            raise DataFormatError(f"{path}: data.{name}={c[name]!r} is not an array of the file; arrays: "
                                  f"{sorted(arrays)}")
    x, y = arrays[c["features_key"]], arrays[c["labels_key"]]
    lengths = arrays.get(c["lengths_key"])
    where_x = f"{path}: data.features_key={c['features_key']!r}"
    if x.dtype.kind not in "fiu":
        raise DataFormatError(f"{where_x} has dtype {x.dtype}; expected numbers")
    if y.ndim != 1 or y.dtype.kind not in "iuU":
        raise DataFormatError(f"{path}: data.labels_key={c['labels_key']!r} has shape {y.shape} and dtype {y.dtype}; "
                              f"expected (N,) integer ids or strings")
    if lengths is not None and (lengths.ndim != 1 or lengths.dtype.kind not in "iu" or len(lengths) != len(y)):
        raise DataFormatError(f"{path}: data.lengths_key={c['lengths_key']!r} has shape {lengths.shape} and dtype "
                              f"{lengths.dtype}; expected ({len(y)},) integers, one per label")
    if x.ndim == 3:
        if len(x) != len(y):
            raise DataFormatError(f"{where_x} has {len(x)} rows but data.labels_key={c['labels_key']!r} {len(y)}")
        steps = np.full(len(y), x.shape[1]) if lengths is None else lengths
        starts = None
    elif x.ndim == 2:
        if lengths is None:
            raise DataFormatError(f"{where_x} has shape {x.shape}: rows one after another need "
                                  f"data.lengths_key={c['lengths_key']!r} in the file (or give x as (N, T, F))")
        if int(lengths.sum()) != len(x):
            raise DataFormatError(f"{path}: data.lengths_key={c['lengths_key']!r} sums to {int(lengths.sum())} but "
                                  f"data.features_key={c['features_key']!r} has {len(x)} steps")
        steps, starts = lengths, np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    else:
        raise DataFormatError(f"{where_x} has shape {x.shape}; expected (N, T, F) or (sum of lengths, F)")
    rows = Rows(str(path))
    limit = x.shape[1] if x.ndim == 3 else None
    for i in range(len(y)):
        where, n = f"{path}[{i}]", int(steps[i])
        if n < 1 or (limit is not None and n > limit):
            row_error(where, f"data.lengths_key={c['lengths_key']!r}: length {n} outside [1, "
                      f"{limit if limit is not None else 'inf'}]", c["skip_malformed"], rows)
            continue
        seq = x[i, :n] if starts is None else x[starts[i]:starts[i] + n]
        seq = np.asarray(seq, dtype=np.float32)
        if not np.isfinite(seq).all():
            step = int(np.argwhere(~np.isfinite(seq))[0][0])
            row_error(where, f"data.features_key={c['features_key']!r}: a non-finite value at step {step}",
                      c["skip_malformed"], rows)
            continue
        label = y[i].item()
        rows.add(seq, str(label) if y.dtype.kind == "U" else int(label), where)
    if rows.skipped:
        log.warning("%s: skipped %d malformed row(s) (data.skip_malformed=true)", path, rows.skipped)
    return rows


def split_rows(c: dict[str, Any]) -> tuple[dict[str, Rows], dict[str, str], dict[str, int]]:
    """``(parts, sources, skipped)``: the raw (not standardised) ``(T, F)`` rows of each split as ``build`` splits
    them, the file of each source key and the malformed rows skipped per file (``c`` resolved)."""
    return splits.read_splits(c, read)


def build(c: dict[str, Any]) -> dict[str, Any]:
    """The :class:`~models.data.bundle.DataBundle` fields of ``data=arrays`` (``c`` resolved)."""
    parts, sources, skipped = split_rows(c)
    widths = {split: {int(item.shape[1]) for item in rows.items} for split, rows in parts.items()}
    features = widths["train"].pop() if len(widths["train"]) == 1 else None
    for split, found in widths.items():
        if found - {features}:
            raise DataFormatError(f"data.{splits.SOURCE_KEYS[split]}: rows with {sorted(found)} features where "
                                  f"data.train has {features} (data.features_key={c['features_key']!r})")
    names, ids, dropped = splits.class_ids(parts, c, "labels_key")
    mean = std = None
    if c["standardize"]:
        steps = np.concatenate(parts["train"].items).astype(np.float64)
        mean, std = steps.mean(axis=0), steps.std(axis=0)
        std[std == 0] = 1.0                            # a constant feature: centred, not blown up
    datasets = {}
    for split, rows in parts.items():
        items = rows.items if mean is None else [((a - mean) / std).astype(np.float32) for a in rows.items]
        datasets[split] = FeatureDataset(items, ids[split])
    info = {"files": sources, "skipped_malformed": sum(skipped.values()) + dropped, "skipped_by_file": skipped,
            "skipped_labels": dropped}
    return {"name": "arrays", "vocab_size": 0, "num_classes": len(names), "class_names": names,
            "splits": datasets, "config": c, "info": info, "input_kind": "features", "num_features": features,
            "feature_mean": None if mean is None else mean.tolist(),
            "feature_std": None if std is None else std.tolist()}
