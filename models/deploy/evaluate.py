"""``evaluate_run(run, data_cfg, split)``: a saved model on any split of any data config (``python eval.py``).

Text data is read as raw rows and encoded with the *run's* preprocessing (its vocabulary, not one rebuilt from
the data evaluated), so another dataset, another split seed or another file of the same kind is scored as the
model would see it in deployment. The rows of a split are those ``build_data`` makes for the same data config
(the same files, seeded stratified splits and ``val_fraction``). Data without a tokenizer (the synthetic tasks,
feature sequences) goes through ``build_data``'s own encoding. Labels are matched by class name.
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
    _check_split(c, split)
    seed = int(run_config.get("seed", 0)) if seed is None else seed
    names = predictor.class_names
    prep = predictor.preprocessing
    if prep is not None and prep.has_tokenizer and c["name"] in ("trec", "sst2", "sms_spam"):
        rows = text_rows(c, split)
        logits = predictor.logits([t for _, t in rows])
        label_names = [label for label, _ in rows]
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
