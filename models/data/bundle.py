"""``build_data(cfg, seed)``: validate a ``data`` config node and build a :class:`DataBundle`.

Config keys (unknown keys raise ``ValueError``; their types and defaults: ``models/data/schema.py``):

- all: ``name`` (``synthetic`` | ``trec`` | ``sst2`` | ``sms_spam``), ``batch_size`` (64),
  ``eval_batch_size`` (256), ``num_workers`` (0), ``bucket`` (true).
- synthetic: ``task`` (see :mod:`models.data.synthetic`), ``num_train``, ``num_val``, ``num_test``,
  ``min_len``, ``max_len``, ``vocab_size`` (including pad 0), ``seed`` (null: use the ``seed``
  argument), plus the task's own keys (``ends_sum``: ``num_classes``; ``adding``: ``num_classes``, ``window``;
  ``negation``: ``window``).
- text: ``root`` (null: ``$BIRNN_ZOO_CACHE`` or ``~/.cache/birnn-zoo``), ``download`` (true),
  ``verify_checksum`` (true), ``min_freq`` (1), ``max_vocab`` (null = no cap; counts pad and unk),
  ``max_len`` (null = no truncation), ``lowercase`` (true), ``unk_shapes`` (false: unknown words -> ``<unk>``;
  true: -> the token of their shape, number / CAPS / Capital / lower / other), ``subword_types`` (0; n > 0: a word
  below ``min_freq`` or unseen is spelt with word pieces found in at least n training words, ``text.Vocab.spell``),
  ``skip_malformed`` (false);
  ``trec`` adds ``split_seed`` (0), ``val_fraction`` (0.1: TREC has no validation file);
  ``sms_spam`` adds ``split_seed`` (0), ``val_fraction`` (0.1), ``test_fraction`` (0.2).
  ``val_fraction: 0`` builds no ``val`` split (:attr:`DataBundle.has_validation` is false): the final fit on every
  training row, once the settings were chosen with a validation split.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..arguments import check_bool, check_fraction, check_int, plain
from . import download, schema, splits, synthetic, text
from .batching import BatchLoader, ListDataset

NAMES = ("synthetic", *schema.TEXT_SCHEMAS, *schema.FILE_SCHEMAS)


@dataclass
class DataBundle:
    """Splits plus metadata. ``splits[s][i] -> (token ids list[int], label int)``; pad id is 0.

    ``input_kind="features"`` (``data=arrays``): ``splits[s][i] -> (np.ndarray float32 (T, F), label int)``,
    already standardised with ``feature_mean``/``feature_std`` (each of length ``F = num_features``; None when
    ``data.standardize=false``), batches hold float ``(B, T, F)``; ``vocab_size`` is 0 and ``vocab`` None.
    ``class_names[i]`` names label id ``i``; ``config`` is the resolved ``data`` config (a text pair column:
    ``config["text_pair_column"]``).
    """

    name: str
    vocab_size: int
    num_classes: int
    class_names: list[str]
    splits: dict[str, ListDataset]
    config: dict[str, Any] = field(default_factory=dict)
    vocab: text.Vocab | None = None
    info: dict[str, Any] = field(default_factory=dict)
    pad_id: int = 0
    input_kind: str = "tokens"                        # "tokens" | "features"
    num_features: int | None = None                   # F of feature sequences (B, T, F)
    feature_mean: list[float] | None = None           # per feature, of the training steps (standardisation)
    feature_std: list[float] | None = None

    def loader(
        self, split: str, batch_size: int, *, shuffle: bool, seed: int, epoch: int = 0,
        start_batch: int = 0, num_workers: int = 0, bucket: bool = True,
    ) -> BatchLoader:
        """Iterable of :class:`~models.data.batching.Batch` (tokens (B, T), lengths (B,), labels (B,)).

        The order depends only on ``(seed, epoch)`` (and the flags); ``start_batch`` skips batches of
        that order without loading them; ``len()`` is the number of batches yielded.
        """
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(self.splits)}")
        return BatchLoader(self.splits[split], batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                           start_batch=start_batch, num_workers=num_workers, bucket=bucket, pad_id=self.pad_id)

    @property
    def has_validation(self) -> bool:
        """False when the data has no ``val`` split (``data.val_fraction=0``): the loop then keeps and tests the
        last epoch's weights."""
        return "val" in self.splits

    def check(self, world_size: int = 1) -> None:
        """Refuse degenerate data with a ``ValueError`` naming the config key to change: a split without rows,
        a training split with fewer rows than processes (one batch per process needs a row each), labels
        outside ``[0, num_classes)``."""
        for split, dataset in self.splits.items():
            if len(dataset) == 0:
                raise ValueError(f"{split_key(self.config, split)}: the {split} split of {self.name} has no rows; "
                                 f"sizes {({s: len(d) for s, d in self.splits.items()})}")
            labels = dataset.labels
            if labels.min() < 0 or labels.max() >= self.num_classes:
                key = "data.num_classes" if "num_classes" in self.config else f"data.name={self.name}"
                raise ValueError(f"{key}: the {split} split of {self.name} has labels from {int(labels.min())} to "
                                 f"{int(labels.max())}, outside the {self.num_classes} classes [0, "
                                 f"{self.num_classes})")
        if len(self.splits["train"]) < world_size:
            raise ValueError(f"{split_key(self.config, 'train')}: the train split of {self.name} has "
                             f"{len(self.splits['train'])} row(s), fewer than the {world_size} processes (one "
                             f"batch per process needs a row each)")

    def majority_accuracy(self, split: str = "test") -> float:
        """Accuracy of always predicting the most frequent training class on ``split``."""
        major = int(np.bincount(self.splits["train"].labels, minlength=self.num_classes).argmax())
        return float(np.mean(self.splits[split].labels == major))


def split_key(c: Mapping[str, Any], split: str) -> str:
    """The config key (with its value) that sets the size of ``split``, for error messages."""
    if c.get("name") == "synthetic":
        return f"data.num_{split}={c.get(f'num_{split}')!r}"
    if "train" in c:                                   # your own data: a source, or a fraction of train
        key = splits.SOURCE_KEYS[split]
        if c[key] is not None or split == "train":
            return f"data.{key}={c[key]!r}"
        fraction = "val_fraction" if split == "val" else "test_fraction"
        return f"data.{fraction}={c[fraction]!r} of data.train={c['train']!r}"
    keys = [k for k in ("val_fraction", "test_fraction") if k in c]
    if keys and (split != "test" or "test_fraction" in c):
        return ", ".join(f"data.{k}={c[k]!r}" for k in keys)
    return f"data.root={c.get('root')!r} (the {split} file)"


def _plain(cfg: Any) -> dict[str, Any]:
    c = plain(cfg)
    if not isinstance(c, Mapping):
        raise ValueError(f"data config must be a mapping, got {type(cfg).__name__}")
    return dict(c)


def _existing_folder(root: str | None, name: str) -> None:
    """``data.root`` names a folder that exists (a typo must not fall through to a download into a new folder)."""
    if root is None or Path(root).expanduser().is_dir():
        return
    what = "is a file, not a folder" if Path(root).expanduser().exists() else "does not exist"
    raise ValueError(f"data.root={root!r} {what}; set data.root to the folder holding {name}/ (e.g. "
                     f"data.root=/path/to/data), or data.root=null for the cache (${download.CACHE_ENV} or "
                     f"~/.cache/birnn-zoo, where missing files are downloaded)")


def resolve_config(cfg: Any) -> dict[str, Any]:
    """Validate ``cfg`` and return it completed with defaults (no data is touched)."""
    c = _plain(cfg)
    name = c.get("name")
    defaults = schema.defaults(schema.schema_for(name, c.get("task", "ends_sum")))
    unknown = sorted(set(c) - set(defaults))
    if unknown:
        raise ValueError(f"unknown data config key(s) {unknown} for data.name={name!r}; allowed keys: "
                         f"{sorted(defaults)}")
    c = {**defaults, **c}
    for key in ("batch_size", "eval_batch_size"):
        check_int(f"data.{key}", c[key], 1)
    check_int("data.num_workers", c["num_workers"], 0)
    check_bool("data.bucket", c["bucket"])
    if name == "synthetic":
        _resolve_synthetic(c)
    elif name in schema.FILE_SCHEMAS:
        _resolve_own_data(c)
    else:
        check_int("data.min_freq", c["min_freq"], 1)
        check_int("data.subword_types", c["subword_types"], 0)
        check_int("data.max_len", c["max_len"], 1, nullable=True)
        for key in ("download", "verify_checksum", "lowercase", "unk_shapes", "skip_malformed"):
            check_bool(f"data.{key}", c[key])
        # room for the specials
        check_int("data.max_vocab", c["max_vocab"], 2 + len(text.UNK_SHAPES) * c["unk_shapes"], nullable=True)
        if c["root"] is not None and not isinstance(c["root"], str):
            raise ValueError(f"data.root={c['root']!r}: expected a folder path or null")
        _existing_folder(c["root"], name)
        if "split_seed" in c:
            check_int("data.split_seed", c["split_seed"], 0)
        for key in ("val_fraction", "test_fraction"):
            if key in c:
                check_fraction(f"data.{key}", c[key], allow_zero=key == "val_fraction")
        if c.get("val_fraction", 0) + c.get("test_fraction", 0) >= 1:
            raise ValueError("data.val_fraction + data.test_fraction must be < 1")
    return c


def _resolve_tokenizer(c: dict[str, Any]) -> None:
    check_int("data.min_freq", c["min_freq"], 1)
    check_int("data.subword_types", c["subword_types"], 0)
    check_int("data.max_len", c["max_len"], 1, nullable=True)
    for key in ("lowercase", "unk_shapes"):
        check_bool(f"data.{key}", c[key])
    check_int("data.max_vocab", c["max_vocab"],
              2 + len(text.UNK_SHAPES) * c["unk_shapes"] + (c.get("text_pair_column") is not None),
         nullable=True)


def _resolve_own_data(c: dict[str, Any]) -> None:
    """``data=text_files | hf | arrays``: the split keys, then each kind's own."""
    check_bool("data.skip_malformed", c["skip_malformed"])
    splits.resolve(c)
    if c["name"] != "arrays":
        _resolve_tokenizer(c)
    importlib.import_module(f"{__package__}.{c['name']}").resolve(c)


def _resolve_synthetic(c: dict[str, Any]) -> None:
    spec = synthetic.TASKS[c["task"]]
    for key in ("num_train", "num_val", "num_test"):
        check_int(f"data.{key}", c[key], 1)
    check_int("data.min_len", c["min_len"], spec.min_len)
    check_int("data.max_len", c["max_len"], c["min_len"])
    check_int("data.vocab_size", c["vocab_size"], spec.min_vocab)
    check_int("data.seed", c["seed"], 0, nullable=True)
    if "num_classes" in c:
        check_int("data.num_classes", c["num_classes"], 2)
        digits = c["vocab_size"] - 1 if c["task"] == "ends_sum" else (c["vocab_size"] - 1) // 2
        if min(map(len, synthetic._adding_bins(digits, c["num_classes"]))) == 0:
            raise ValueError(f"data.num_classes={c['num_classes']}: too many sum bins for the "
                             f"{2 * digits - 1} possible sums with data.vocab_size={c['vocab_size']}")
    if "window" in c:
        check_int("data.window", c["window"], 1)


def build_data(cfg: Any, seed: int = 0) -> DataBundle:
    """Build the dataset described by the ``data`` config node (plain dict or OmegaConf)."""
    c = resolve_config(cfg)
    if c["name"] == "synthetic":
        return _build_synthetic(c, seed)
    if c["name"] in schema.FILE_SCHEMAS:
        module = importlib.import_module(f"{__package__}.{c['name']}")   # text_files | hf | arrays
        return DataBundle(**module.build(c))
    return _build_text(c)


def _build_synthetic(c: dict[str, Any], seed: int) -> DataBundle:
    task = synthetic.TASKS[c["task"]]
    params = {k: c[k] for k in task.params}
    data_seed = seed if c["seed"] is None else c["seed"]
    splits = {
        s: synthetic.generate_split(c["task"], s, c[f"num_{s}"], seed=data_seed, min_len=c["min_len"],
                                    max_len=c["max_len"], vocab_size=c["vocab_size"], **params)
        for s in synthetic.SPLITS
    }
    names = task.class_names({**params, "vocab_size": c["vocab_size"]})
    return DataBundle(name=f"synthetic-{c['task']}", vocab_size=c["vocab_size"], num_classes=len(names),
                      class_names=names, splits=splits, config=c, info={"data_seed": data_seed})


def _build_text(c: dict[str, Any]) -> DataBundle:
    name = c["name"]
    paths = download.ensure_files(name, c["root"], download=c["download"], verify=c["verify_checksum"])
    skip = c["skip_malformed"]
    skipped: dict[str, int] = {}

    def read(part: str) -> list[tuple[str, str]]:
        reader = {"trec": text.read_trec, "sst2": text.read_sst2, "sms_spam": text.read_sms}[name]
        rows, skipped[str(paths[part])] = reader(paths[part], skip)
        return rows

    if name == "sst2":
        classes = text.SST2_CLASSES
        rows = {s: read(s) for s in ("train", "val", "test")}
    elif name == "trec":
        classes = text.TREC_CLASSES
        full, test = read("train"), read("test")
        train_idx, val_idx = text.stratified_split([r[0] for r in full], [c["val_fraction"]], c["split_seed"])
        rows = {"train": [full[i] for i in train_idx], "val": [full[i] for i in val_idx], "test": test}
    else:
        classes = text.SMS_CLASSES
        full = read("all")
        parts = text.stratified_split([r[0] for r in full], [c["val_fraction"], c["test_fraction"]],
                                      c["split_seed"])
        rows = {s: [full[i] for i in idx] for s, idx in zip(("train", "val", "test"), parts, strict=True)}
    if c.get("val_fraction") == 0:                   # the final fit on all training rows: no validation split
        del rows["val"]
    vocab = text.Vocab.build((text.tokenize(t, c["lowercase"]) for _, t in rows["train"]),
                             min_freq=c["min_freq"], max_size=c["max_vocab"], unk_shapes=c["unk_shapes"],
                             subword_types=c["subword_types"])
    splits = {s: text.encode_rows(r, vocab, classes, lowercase=c["lowercase"], max_len=c["max_len"])
              for s, r in rows.items()}
    info = {"files": {k: str(p) for k, p in paths.items()}, "skipped_malformed": sum(skipped.values()),
            "skipped_by_file": skipped}
    return DataBundle(name=name, vocab_size=len(vocab), num_classes=len(classes), class_names=list(classes),
                      splits=splits, config={**c, "text_pair_column": None}, vocab=vocab, info=info)
