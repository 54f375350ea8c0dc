"""Your own data's splits and labels, shared by ``data=text_files``, ``data=hf`` and ``data=arrays``.

A dataset has a ``train`` source and, for validation and test, either its own source (``data.validation``,
``data.test``) or a seeded stratified fraction of train (``data.val_fraction``, default 0.1; ``data.test_fraction``,
default 0.2; :func:`models.data.text.stratified_split`). ``data.val_fraction: 0`` builds no validation split.

Labels are class names (strings) or integer class ids, the kind the training rows have. Names: the classes are
``data.class_names`` in that order, else the training labels sorted. Ids: ``0..K-1`` with ``K`` the length of
``data.class_names`` (their names), else the largest training id + 1 (names ``"0"``, ``"1"``, ...). A label that
is not a class (a name seen only in validation or test, an id out of range, a name where ids are expected) is an
error naming the row's place (``file:line``) and ``data.label_column``, or with ``data.skip_malformed`` a skipped
row, counted and reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .text import DataFormatError, stratified_split

log = logging.getLogger(__name__)

#: The bundle's split names and the config keys of their sources.
SOURCE_KEYS = {"train": "train", "val": "validation", "test": "test"}
DEFAULT_FRACTIONS = {"val_fraction": 0.1, "test_fraction": 0.2}
SKIP_HINT = "Fix the row, or set data.skip_malformed=true to skip (and count) such rows"


@dataclass
class Rows:
    """The rows of one source: ``items[i]`` (a text pair, a feature array, ...), its label (a name or an id as
    read) and where it came from (``"file:line"``, for messages)."""

    source: str
    items: list[Any] = field(default_factory=list)
    labels: list[Any] = field(default_factory=list)
    where: list[str] = field(default_factory=list)
    skipped: int = 0

    def add(self, item: Any, label: Any, where: str) -> None:
        self.items.append(item)
        self.labels.append(label)
        self.where.append(where)

    def take(self, index: Any) -> Rows:
        index = [int(i) for i in index]
        return Rows(self.source, [self.items[i] for i in index], [self.labels[i] for i in index],
                    [self.where[i] for i in index])

    def __len__(self) -> int:
        return len(self.items)


def row_error(where: str, message: str, skip: bool, rows: Rows | None = None) -> None:
    """A bad row: raise :class:`DataFormatError` ``"<where>: <message>. <hint>"``, or with ``skip`` count it in
    ``rows.skipped``."""
    if not skip:
        raise DataFormatError(f"{where}: {message}. {SKIP_HINT}")
    if rows is not None:
        rows.skipped += 1


def resolve(c: dict[str, Any]) -> None:
    """Check (in place) the split keys: ``train`` set, each source a string or null, a fraction only where its
    source is not given (defaults filled in), ``class_names`` distinct non-empty strings."""
    for key in ("train", "validation", "test"):
        value = c[key]
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"data.{key}={value!r}: expected a path (a string) or null")
    for key, source in (("val_fraction", "validation"), ("test_fraction", "test")):
        value = c[key]
        if value is None:
            c[key] = 0.0 if c[source] is not None else DEFAULT_FRACTIONS[key]
            continue
        if c[source] is not None and value != 0:
            raise ValueError(f"data.{key}={value!r} and data.{source}={c[source]!r} both given: the {source} split "
                             f"comes from its own source or from a fraction of train, not both")
        needed = key == "test_fraction" and c[source] is None      # the test split comes from this fraction
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1
                or (needed and value == 0)):
            expected = ("a number in [0, 1) (0: no validation split)" if key == "val_fraction"
                        else "a number strictly between 0 and 1 (a test split is needed)")
            raise ValueError(f"data.{key}={value!r}: expected {expected}")
    if c["val_fraction"] + c["test_fraction"] >= 1:
        raise ValueError(f"data.val_fraction={c['val_fraction']!r} + data.test_fraction={c['test_fraction']!r} "
                         f"must be < 1 (rows must remain for training)")
    seed = c["split_seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"data.split_seed={seed!r}: expected an integer >= 0")
    names = c["class_names"]
    if names is not None:
        names = list(names) if isinstance(names, (list, tuple)) else names
        if (not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) and n for n in names)
                or len(set(names)) != len(names)):
            raise ValueError(f"data.class_names={names!r}: expected a list of at least two distinct non-empty "
                             f"strings (class id i is the i-th), or null")
        c["class_names"] = names


def require_train(c: Mapping[str, Any]) -> None:
    """``data.train`` is required; the shipped ``conf/data/<name>.yaml`` leaves it null (checked when the data is
    built, so the config composes and checks without it)."""
    if c["train"] is None:
        raise ValueError(f"data.train is not set: give the training data (data.train=<path>) for data.name={c['name']}")


def read_splits(c: Mapping[str, Any], read: Callable[[Mapping[str, Any], str], Rows]
                ) -> tuple[dict[str, Rows], dict[str, str], dict[str, int]]:
    """``(parts, sources, skipped)`` for file sources: the rows of each split as :func:`split` makes them from
    ``read(c, source_key)``, the file of each source key and the malformed rows skipped per file."""
    skipped: dict[str, int] = {}
    sources: dict[str, str] = {}

    def read_source(key: str, _: str) -> Rows:
        rows = read(c, key)
        skipped[rows.source], sources[key] = rows.skipped, rows.source
        return rows

    return split(c, read_source), sources, skipped


def split(c: Mapping[str, Any], read: Callable[[str, str], Rows]) -> dict[str, Rows]:
    """``{"train", "val", "test"}`` -> :class:`Rows`: each read with ``read(key, source)`` where given, else a
    seeded stratified fraction of train (by the labels as read). No ``val`` with ``data.val_fraction=0``."""
    require_train(c)
    sources = {split: read(key, c[key]) for split, key in SOURCE_KEYS.items() if c[key] is not None}
    full = sources["train"]
    fractions = [c[k] for k, s in (("val_fraction", "val"), ("test_fraction", "test")) if s not in sources]
    carved = [s for s in ("val", "test") if s not in sources]
    if not len(full):
        raise ValueError(f"data.train={c['train']!r}: no training rows")
    if carved and any(fractions):
        parts = stratified_split([str(label) for label in full.labels], fractions, c["split_seed"])
        sources["train"] = full.take(parts[0])
        for name, index in zip(carved, parts[1:], strict=True):
            sources[name] = full.take(index)
    if c["val_fraction"] == 0 and c["validation"] is None:
        sources.pop("val", None)
    return {s: sources[s] for s in ("train", "val", "test") if s in sources}


def _kind(label: Any) -> str:
    return "id" if isinstance(label, (int, np.integer)) and not isinstance(label, bool) else "name"


def class_ids(parts: dict[str, Rows], c: Mapping[str, Any], label_key: str
              ) -> tuple[list[str], dict[str, list[int]], int]:
    """The class names, each split's label ids and the number of rows dropped: a row whose label is no class
    raises, or with ``data.skip_malformed`` is dropped from ``parts`` and counted."""
    train = parts["train"]
    kind = _kind(train.labels[0])
    given = c["class_names"]
    labelled = f"{label_key}={c.get(label_key)!r}" if label_key in c else label_key
    if kind == "id":
        ids_seen = [int(v) for v in train.labels if _kind(v) == "id"]
        count = len(given) if given is not None else max(ids_seen) + 1
        names = list(given) if given is not None else [str(i) for i in range(count)]
        index: dict[Any, int] = {}
    else:
        names = list(given) if given is not None else sorted({v for v in train.labels if _kind(v) == "name"})
        index = {n: i for i, n in enumerate(names)}
    ids: dict[str, list[int]] = {}
    dropped = 0
    for split, rows in parts.items():
        keep, found = [], []
        for i, (label, where) in enumerate(zip(rows.labels, rows.where, strict=True)):
            problem = None
            if _kind(label) != kind:
                problem = (f"label {label!r} is {'an integer id' if kind == 'name' else 'a class name'}, but the "
                           f"training labels are {'class names' if kind == 'name' else 'integer ids'}")
            elif kind == "id" and not 0 <= int(label) < len(names):
                problem = (f"label {int(label)} is outside the class ids [0, {len(names)})"
                           + (" of data.class_names" if given is not None else " (largest training id + 1); "
                              "give data.class_names to set the classes"))
            elif kind == "name" and label not in index:
                problem = (f"label {label!r} is not one of data.class_names {names}" if given is not None else
                           f"label {label!r} does not occur in the training data (classes {names}); a class "
                           f"seen only in the {split} split cannot be learnt")
            if problem is not None:
                row_error(where, f"data.{labelled}: {problem}", c["skip_malformed"], rows)
                continue
            keep.append(i)
            found.append(int(label) if kind == "id" else index[label])
        if len(keep) != len(rows):
            dropped += len(rows) - len(keep)
            parts[split] = rows.take(keep)
            log.warning("%s: skipped %d row(s) whose label is no class (data.skip_malformed=true)",
                        rows.source, len(rows) - len(keep))
        ids[split] = found
    empty = sorted(set(range(len(names))) - set(ids["train"]))
    if empty:
        log.warning("class(es) %s have no training rows", [names[i] for i in empty])
    return names, ids, dropped
