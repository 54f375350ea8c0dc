"""``data=hf``: text classification from a Hugging Face dataset (the optional extra: ``pip install -e '.[hf]'``).

``data.path`` is one of:

- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``: read with ``datasets.load_from_disk``
  (offline);
- a packaged builder with local files: ``data.path=csv`` (or ``json``, ``parquet``) and ``data.data_files`` (a file,
  or ``{train: ..., test: ...}``), read with ``datasets.load_dataset`` (offline);
- a dataset name on the Hub (``data.path=stanfordnlp/sst2``, ``data.config_name``): ``datasets.load_dataset`` where
  a network is available.

``data.train`` (default ``train``), ``data.validation`` and ``data.test`` name the dataset's splits (or the
fractions of ``models/data/splits.py`` apply); ``data.text_column``, ``data.label_column``,
``data.text_pair_column`` and the vocabulary keys are those of ``data=text_files``. A ``ClassLabel`` label column
gives the class names (unless ``data.class_names`` does). A bad row names the dataset, split and row index
(``<path>[<split>][<row>]``) and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import splits, text_files
from .splits import Rows
from .text import DataFormatError


def resolve(c: dict[str, Any]) -> None:
    """Check (in place) the keys of ``data=hf`` beyond the split and tokenizer keys."""
    for key in ("path", "config_name"):
        if c[key] is not None and (not isinstance(c[key], str) or not c[key]):
            raise ValueError(f"data.{key}={c[key]!r}: expected a string or null")
    files = c["data_files"]
    if files is not None and not isinstance(files, (str, list, dict)):
        raise ValueError(f"data.data_files={files!r}: expected a file, a list of files or {{split: file}}")
    text_files.check_columns(c)


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise ValueError("data=hf needs the Hugging Face datasets package: pip install -e '.[hf]' (or pip install "
                         "datasets)") from None
    return datasets


def load(c: dict[str, Any]) -> Any:
    """The dataset ``data.path`` names: a ``DatasetDict`` (or one ``Dataset``)."""
    if c["path"] is None:
        raise ValueError("data.path is not set: give a save_to_disk folder, csv/json/parquet with data.data_files, "
                         "or a dataset name for data=hf")
    datasets = _datasets()
    folder = Path(c["path"]).expanduser()
    if folder.is_dir() and any((folder / f).is_file() for f in ("dataset_dict.json", "state.json")):
        return datasets.load_from_disk(str(folder))
    try:
        return datasets.load_dataset(c["path"], c["config_name"], data_files=c["data_files"])
    except (FileNotFoundError, ValueError, ConnectionError) as error:
        raise ValueError(f"data.path={c['path']!r} (data.config_name={c['config_name']!r}, data.data_files="
                         f"{c['data_files']!r}) could not be loaded: {error}") from None


def split_rows(c: dict[str, Any]) -> tuple[dict[str, Rows], dict[str, str], dict[str, int]]:
    """``(parts, sources, skipped)``: the raw rows of each split (items ``(text, pair)``) as ``build`` splits them,
    the name of each source split and the malformed rows skipped per source (``c`` resolved; a ``ClassLabel``
    column's names are set as its ``class_names``, so pass a copy)."""
    splits.require_train(c)
    dataset = load(c)
    available = list(dataset.keys()) if hasattr(dataset, "keys") else None
    sources: dict[str, str] = {}
    skipped: dict[str, int] = {}

    def read_source(key: str, name: str) -> Rows:
        if available is None:                          # one Dataset: it is the training data
            if key != "train":
                raise ValueError(f"data.{key}={name!r}: data.path={c['path']!r} holds one dataset, not named "
                                 f"splits; set data.{key}=null (a fraction of train)")
            part = dataset
        elif name not in available:
            raise ValueError(f"data.{key}={name!r} is not a split of data.path={c['path']!r}; splits: {available}")
        else:
            part = dataset[name]
        rows = read(c, key, name, part)
        sources[key], skipped[rows.source] = rows.source, rows.skipped
        return rows

    return splits.split(c, read_source), sources, skipped


def build(c: dict[str, Any]) -> dict[str, Any]:
    """The :class:`~models.data.bundle.DataBundle` fields of ``data=hf`` (``c`` resolved)."""
    c = dict(c)
    parts, sources, skipped = split_rows(c)
    return {"name": "hf", **text_files.build_parts(c, parts, sources, skipped)}


def read(c: dict[str, Any], key: str, name: str, part: Any) -> Rows:
    """The rows of one split: items ``(text, pair or None)``, labels and ``path[split][row]``."""
    source = f"{c['path']}[{name}]"
    columns = list(part.column_names)
    for column_key in ("text_column", "label_column", "text_pair_column"):
        if c[column_key] is not None and c[column_key] not in columns:
            raise DataFormatError(f"{source}: data.{column_key}={c[column_key]!r} is not a column (data.{key}="
                                  f"{name!r}); columns: {columns}")
    feature = part.features[c["label_column"]]
    names = getattr(feature, "names", None)            # a ClassLabel: ids with names
    if names and c["class_names"] is None and key == "train":
        c["class_names"] = list(names)
    rows = Rows(source)
    wanted = [c[k] for k in ("text_column", "text_pair_column", "label_column") if c[k] is not None]
    records = ((f"{source}[{index}]", record) for index, record in enumerate(part.select_columns(wanted)))
    return text_files.collect(rows, records, c, "jsonl")
