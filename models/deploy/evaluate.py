"""``evaluate_run(run, data_cfg, split)``: a saved model on any split of any data config (``python eval.py``).

Text data is read as raw rows and encoded with the *run's* preprocessing (its vocabulary, not one rebuilt from
the data evaluated), so another dataset, another split seed or another file of the same kind is scored as the
model would see it in deployment. The rows of a split are those ``build_data`` makes for the same data config
(the same files, seeded stratified splits and ``val_fraction``): ``data=text_files``, ``data=hf`` and
``data=arrays`` rows come from those sources' own readers (``split_rows``), texts (and ``(text, pair)`` pairs)
encoded with the run's vocabulary and feature sequences standardised with the run's training-split mean and std.
Only data without any recorded preprocessing (the synthetic tasks) goes through ``build_data``'s own encoding.
Labels are matched by class name (integer labels by class id).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch.nn import functional as F

from ..arguments import PathLike
from ..data import build_data, download, resolve_config, text
from .predictor import Predictor, load_run


def text_rows(c: Dict[str, Any], split: str) -> List[Tuple[str, str]]:
    """The raw ``(label, text)`` rows of ``split`` of a resolved text data config, as ``build_data`` splits them."""
    name = c["name"]
    paths = download.ensure_files(name, c["root"], download=c["download"], verify=c["verify_checksum"])
    reader = {"trec": text.read_trec, "sst2": text.read_sst2, "sms_spam": text.read_sms}[name]

    def read(part: str) -> List[Tuple[str, str]]:
        return reader(paths[part], c["skip_malformed"])[0]

    if name == "sst2":
        return read(split)
    if name == "trec":
        if split == "test":
            return read("test")
        full = read("train")
        parts = text.stratified_split([r[0] for r in full], [c["val_fraction"]], c["split_seed"])
        return [full[i] for i in parts[("train", "val").index(split)]]
    full = read("all")
    parts = text.stratified_split([r[0] for r in full], [c["val_fraction"], c["test_fraction"]], c["split_seed"])
    return [full[i] for i in parts[("train", "val", "test").index(split)]]


RAW_SOURCES = ("text_files", "hf", "arrays")


def source_rows(c: Dict[str, Any], split: str) -> Tuple[List[Any], List[Any]]:
    """``(inputs, labels)`` of ``split`` of a resolved ``text_files`` / ``hf`` / ``arrays`` config, read by that
    source's own reader and split as ``build_data`` splits it: texts, ``(text, pair)`` tuples or raw ``(T, F)``
    arrays (not standardised), and each label as read (a class name or an integer id)."""
    from ..data import arrays, hf, text_files

    reader = {"text_files": text_files, "hf": hf, "arrays": arrays}[c["name"]]
    parts = reader.split_rows(dict(c))[0]
    if split not in parts:
        raise ValueError(f"split={split!r}: data {c['name']!r} has splits {sorted(parts)} with this config")
    rows = parts[split]
    if c["name"] == "arrays":
        return list(rows.items), list(rows.labels)
    return [t if p is None else (t, p) for t, p in rows.items], list(rows.labels)


def _label_names(labels: List[Any], names: List[str]) -> List[str]:
    """Labels as read -> class names: integer ids index the run's classes (as ``class_ids`` numbered them)."""
    out = []
    for label in labels:
        if isinstance(label, str):
            out.append(label)
        elif 0 <= int(label) < len(names):
            out.append(names[int(label)])
        else:
            raise ValueError(f"label {int(label)} is outside the model's class ids [0, {len(names)})")
    return out


def _check_split(c: Dict[str, Any], split: str) -> None:
    splits = ["train", "test"] + ([] if c.get("val_fraction") == 0 else ["val"])
    if split not in splits:
        raise ValueError(f"split={split!r}: data {c['name']!r} has splits {sorted(splits)}")


def evaluate_run(run: PathLike | Predictor, data_cfg: Optional[Dict[str, Any]] = None, split: str = "test", *,
                 seed: Optional[int] = None) -> Dict[str, Any]:
    """Accuracy, loss and confusion matrix of a run's model (``load_run``'s, or a :class:`Predictor`) on ``split``
    of ``data_cfg`` (default: the run's own data config). ``seed`` (default the run's) seeds synthetic data."""
    predictor = run if isinstance(run, Predictor) else load_run(run)
    run_config = predictor.config or {}
    raw = data_cfg if data_cfg is not None else run_config.get("data")
    if raw is None:
        raise ValueError("no data config: the checkpoint has none, give data=...")
    c = resolve_config(raw)
    if c["name"] not in RAW_SOURCES:
        _check_split(c, split)
    seed = int(run_config.get("seed", 0)) if seed is None else seed
    names = predictor.class_names
    prep = predictor.preprocessing
    if prep is not None and prep.has_tokenizer and c["name"] in ("trec", "sst2", "sms_spam"):
        rows = text_rows(c, split)
        logits = predictor.logits([t for _, t in rows])
        label_names = [label for label, _ in rows]
    elif prep is not None and c["name"] in RAW_SOURCES and (prep.has_tokenizer or prep.input_kind == "features"):
        inputs, labels = source_rows(c, split)
        if c["name"] != "arrays" and prep.text_pair != (c.get("text_pair_column") is not None):
            raise ValueError(f"data.text_pair_column={c.get('text_pair_column')!r} but the model was trained "
                             f"{'with' if prep.text_pair else 'without'} a text pair column")
        logits = predictor.logits(inputs)
        label_names = _label_names(labels, names)
    else:
        data = build_data(c, seed=seed)
        dataset = data.splits[split]
        logits = predictor.logits([dataset[i][0] for i in range(len(dataset))])
        label_names = [data.class_names[int(y)] for y in dataset.labels]
    unknown = sorted(set(label_names) - set(names))
    if unknown:
        raise ValueError(f"data {c['name']!r} has labels {unknown} the model does not know; its classes: {names}")
    labels = torch.tensor([names.index(label) for label in label_names], dtype=torch.int64)
    predicted = logits.argmax(-1)
    confusion = torch.zeros(len(names), len(names), dtype=torch.int64)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    return {
        "checkpoint": predictor.source, "data": c["name"], "split": split, "rows": len(labels),
        "accuracy": int((predicted == labels).sum()) / max(len(labels), 1),
        "loss": float(F.cross_entropy(logits, labels)) if len(labels) else 0.0,
        "class_names": names, "confusion": confusion.tolist(),
        "data_config": {k: v for k, v in c.items()},
    }
