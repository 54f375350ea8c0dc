"""``data=text_files``: text classification from your own CSV, TSV or JSON Lines files.

``data.train`` (and ``data.validation`` / ``data.test``, or the fractions of ``models/data/splits.py``) name the
files; ``data.format`` is ``auto`` (from the extension: ``.csv``, ``.tsv``/``.tab``, ``.jsonl``/``.ndjson``),
``csv``, ``tsv`` or ``jsonl``. CSV and TSV files start with a header row naming the columns and quote as Python's
``csv`` module (and pandas) write them; a JSON Lines file holds one object per line. ``data.text_column``,
``data.label_column`` and the optional ``data.text_pair_column`` (a second text, joined to the first with ``<sep>``)
name the fields. Labels are class names or integer ids (``models/data/splits.py``); in CSV/TSV a label written as
an integer (``0``, ``3``) is an id. The vocabulary and tokenizer keys are those of the built-in text datasets.

Every bad row is one error naming ``file:line`` and the key (a missing field, an empty text, a label that is no
class, a byte that is not ``data.encoding``, a row with the wrong number of fields, a line that is not JSON), or
with ``data.skip_malformed=true`` a skipped row, counted in the bundle's ``info`` and reported in the log.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from . import splits, text
from .splits import Rows, row_error

log = logging.getLogger(__name__)

FORMATS = ("auto", "csv", "tsv", "jsonl")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_INTEGER = re.compile(r"[+-]?\d+")


def resolve(c: dict[str, Any]) -> None:
    """Check (in place) the keys of ``data=text_files`` beyond the split and tokenizer keys."""
    if c["format"] not in FORMATS:
        raise ValueError(f"data.format={c['format']!r}: expected one of {list(FORMATS)}")
    try:
        "".encode(c["encoding"])
    except (LookupError, TypeError):
        raise ValueError(f"data.encoding={c['encoding']!r}: not a text encoding Python knows (e.g. utf-8, "
                         f"latin-1)") from None
    check_columns(c)
    for key in ("train", "validation", "test"):
        if c[key] is not None:
            file_format(c, key)


def check_columns(c: dict[str, Any]) -> None:
    """``text_column``/``label_column`` non-empty strings, ``text_pair_column`` one or null, all distinct."""
    for key in ("text_column", "label_column", "text_pair_column"):
        value = c[key]
        if value is None and key == "text_pair_column":
            continue
        if not isinstance(value, str) or not value:
            raise ValueError(f"data.{key}={value!r}: expected a column name")
    used = [c[k] for k in ("text_column", "label_column", "text_pair_column") if c[k] is not None]
    if len(set(used)) != len(used):
        raise ValueError(f"data.text_column, data.label_column and data.text_pair_column must differ, got {used}")


def file_format(c: dict[str, Any], key: str) -> str:
    """The format of ``data.<key>``'s file: ``data.format``, or its extension's."""
    if c["format"] != "auto":
        return c["format"]
    suffix = Path(c[key]).suffix.lower()
    if suffix not in EXTENSIONS:
        raise ValueError(f"data.{key}={c[key]!r}: cannot tell the format from {suffix or 'no extension'!r}; name "
                         f"it with data.format=csv|tsv|jsonl (extensions known: {sorted(EXTENSIONS)})")
    return EXTENSIONS[suffix]


def read(c: dict[str, Any], key: str) -> Rows:
    """The rows of ``data.<key>``'s file: items ``(text, pair or None)`` with their labels and ``file:line``."""
    path = Path(c[key]).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data.{key}={c[key]!r}: no such file" + (" (it is a folder)" if path.is_dir()
                                                                           else ""))
    fmt = file_format(c, key)
    rows = Rows(str(path))
    records = _jsonl(path, c, rows) if fmt == "jsonl" else _table(path, c, rows, "\t" if fmt == "tsv" else ",")
    return collect(rows, ((f"{path}:{lineno}", record) for lineno, record in records), c, fmt)


def collect(rows: Rows, records: Iterable[tuple[str, Any]], c: dict[str, Any], fmt: str) -> Rows:
    """Adds each ``(where, record)``'s fields to ``rows``; with ``data.skip_malformed`` a malformed record is
    counted (and the count logged once) instead of raising its error naming ``where``."""
    for where, record in records:
        fields = _fields(record, where, c, fmt)
        if fields is None:
            rows.skipped += 1
            continue
        rows.add(fields[:2], fields[2], where)
    if rows.skipped:
        log.warning("%s: skipped %d malformed row(s) (data.skip_malformed=true)", rows.source, rows.skipped)
    return rows


def _lines(path: Path, c: dict[str, Any], rows: Rows) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of the file; a line that does not decode is an error (or skipped)."""
    for lineno, line in enumerate(text._read_lines(path, c["encoding"]), start=1):
        if isinstance(line, UnicodeDecodeError):
            bad = line.object[line.start:line.end]
            row_error(f"{path}:{lineno}", f"byte {bad!r} at column {line.start + 1} is not valid "
                      f"data.encoding={c['encoding']!r}", c["skip_malformed"], rows)
            continue
        yield lineno, line[1:] if lineno == 1 and line.startswith("\ufeff") else line   # a byte order mark


def _table(path: Path, c: dict[str, Any], rows: Rows, delimiter: str) -> Iterator[tuple[int, dict[str, str]]]:
    """CSV/TSV records as ``{column: value}`` with the line each starts on; the header names the columns."""
    last = [0]

    def feed() -> Iterator[str]:
        for lineno, line in _lines(path, c, rows):
            last[0] = lineno
            yield line + "\n"

    reader = csv.reader(feed(), delimiter=delimiter, strict=True)
    fmt = "tsv" if delimiter == "\t" else "csv"
    try:
        header = next(reader)
    except StopIteration:
        raise text.DataFormatError(f"{path}:1: the file is empty; expected a header row naming "
                                   f"data.text_column={c['text_column']!r} and data.label_column="
                                   f"{c['label_column']!r}") from None
    except csv.Error as error:
        raise text.DataFormatError(f"{path}:{last[0]}: the header row is not valid {fmt} ({error}) "
                                   f"(data.format={c['format']!r})") from None
    for key in ("text_column", "label_column", "text_pair_column"):
        if c[key] is not None and c[key] not in header:
            raise text.DataFormatError(f"{path}:{last[0]}: data.{key}={c[key]!r} is not a column of the header; "
                                       f"columns: {header}")
    previous = last[0]
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            row_error(f"{path}:{previous + 1}", f"not a valid {fmt} row ({error}) (data.format={c['format']!r})",
                      c["skip_malformed"], rows)
            previous = last[0]
            continue
        start, previous = previous + 1, last[0]
        if not fields:                                 # a blank line
            continue
        if len(fields) != len(header):
            row_error(f"{path}:{start}", f"{len(fields)} field(s) where the header has {len(header)} "
                      f"(data.format={fmt!r}; a text with the delimiter in it must be quoted)",
                      c["skip_malformed"], rows)
            continue
        yield start, dict(zip(header, fields, strict=True))


def _jsonl(path: Path, c: dict[str, Any], rows: Rows) -> Iterator[tuple[int, dict[str, Any]]]:
    """JSON Lines records with their line numbers; blank lines are skipped."""
    for lineno, line in _lines(path, c, rows):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            row_error(f"{path}:{lineno}", f"not valid JSON ({error.msg} at column {error.colno}) "
                      f"(data.format='jsonl': one object per line)", c["skip_malformed"], rows)
            continue
        if not isinstance(record, dict):
            row_error(f"{path}:{lineno}", f"a JSON {type(record).__name__}, not an object (data.format='jsonl': "
                      f"one object per line)", c["skip_malformed"], rows)
            continue
        yield lineno, record


def _fields(record: dict[str, Any], where: str, c: dict[str, Any], fmt: str) -> tuple[str, str | None, Any] | None:
    """``(text, pair, label)`` of one record; a problem raises (or returns None with ``data.skip_malformed``)."""
    values: dict[str, Any] = {}
    for key in ("text_column", "text_pair_column", "label_column"):
        column = c[key]
        if column is None:
            values[key] = None
            continue
        if column not in record:
            row_error(where, f"data.{key}={column!r} is missing; the row has {sorted(record)}", c["skip_malformed"])
            return None
        value = record[column]
        if key == "label_column":
            value = _label(value, fmt)
            if value is None:
                row_error(where, f"data.{key}={column!r}: {record[column]!r} is not a label (a class name or an "
                          f"integer id)", c["skip_malformed"])
                return None
        elif not isinstance(value, str) or not value.strip():
            problem = "is empty" if isinstance(value, str) or value is None else f"is a {type(value).__name__}"
            row_error(where, f"data.{key}={column!r} {problem}; expected a text", c["skip_malformed"])
            return None
        values[key] = value
    return values["text_column"], values["text_pair_column"], values["label_column"]


def _label(value: Any, fmt: str) -> str | int | None:
    """A label as read: an integer id, a class name, or None (empty, a float, a list, ...)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip()
    return int(value) if fmt != "jsonl" and _INTEGER.fullmatch(value) else value


def build_parts(c: dict[str, Any], parts: dict[str, Rows], sources: dict[str, str],
                skipped: dict[str, int], label_key: str = "label_column") -> dict[str, Any]:
    """The :class:`~models.data.bundle.DataBundle` fields of a text dataset from its split rows (items
    ``(text, pair)``): classes, the vocabulary of the training texts (``<sep>`` reserved with a pair column) and
    every split encoded with :func:`models.data.text.encode_example`."""
    names, ids, dropped = splits.class_ids(parts, c, label_key)
    pair = c["text_pair_column"] is not None
    train_texts = (t for text_, p in parts["train"].items for t in (text_, p) if t is not None)
    vocab = text.Vocab.build((text.tokenize(t, c["lowercase"]) for t in train_texts), min_freq=c["min_freq"],
                             max_size=c["max_vocab"], unk_shapes=c["unk_shapes"], subword_types=c["subword_types"],
                             reserved=[text.SEP] if pair else ())
    datasets = {}
    for split, rows in parts.items():
        seqs = [text.encode_example(t, p, vocab, lowercase=c["lowercase"], max_len=c["max_len"])
                for t, p in rows.items]
        datasets[split] = text.ListDataset(seqs, ids[split])
    info = {"files": sources, "skipped_malformed": sum(skipped.values()) + dropped,
            "skipped_by_file": skipped, "skipped_labels": dropped}
    return {"vocab_size": len(vocab), "num_classes": len(names), "class_names": names, "splits": datasets,
            "config": c, "vocab": vocab, "info": info}


def split_rows(c: dict[str, Any]) -> tuple[dict[str, Rows], dict[str, str], dict[str, int]]:
    """``(parts, sources, skipped)``: the raw rows of each split (items ``(text, pair)``) as ``build`` splits them,
    the file of each source key and the malformed rows skipped per file (``c`` resolved)."""
    return splits.read_splits(c, read)


def build(c: dict[str, Any]) -> dict[str, Any]:
    """The :class:`~models.data.bundle.DataBundle` fields of ``data=text_files`` (``c`` resolved)."""
    parts, sources, skipped = split_rows(c)
    return {"name": "text_files", **build_parts(c, parts, sources, skipped)}
