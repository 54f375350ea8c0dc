"""The ``data`` config's keys, types and defaults: one dataclass per kind of dataset, the one source of them.

``resolve_config`` completes a ``data`` node with these defaults and refuses keys they do not name;
``train.py`` registers them in Hydra's ConfigStore (``models/training/schema.py``), and each
``conf/data/<option>.yaml`` names its schema first, so the composed config holds every key with its default
here, type-checked. The YAML files only choose the dataset and what differs (``conf/data/tiny.yaml``: fewer,
shorter sequences); ``python train.py data=<option> --cfg job`` prints every key. A synthetic task's own keys
(``num_classes``, ``window``) come from its :class:`~models.data.synthetic.Task` ``params``, its vocabulary size
from :data:`TASK_VOCAB_SIZES`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cache
from typing import Any, List, Optional

from . import synthetic


@dataclass
class DataConfig:
    """Keys of every dataset: how batches are formed and loaded."""

    name: str = "synthetic"
    batch_size: int = 64
    eval_batch_size: int = 256                        # validation and test batches
    num_workers: int = 0                              # DataLoader worker processes; 0: load in the training process
    bucket: bool = True                               # batches of similar lengths (less padding)


@dataclass
class SyntheticDataConfig(DataConfig):
    """A generated task (``models/data/synthetic.py``)."""

    task: str = "ends_sum"
    num_train: int = 10000
    num_val: int = 2000
    num_test: int = 2000
    min_len: int = 20
    max_len: int = 60
    vocab_size: int = 32                              # including the padding id 0 (per task: TASK_VOCAB_SIZES)
    seed: Optional[int] = None                        # None: the run's seed; an integer pins the data independently


@dataclass
class TextDataConfig(DataConfig):
    """A real text dataset read from ``root`` (or the cache, where missing files are downloaded)."""

    root: Optional[str] = None                        # the files' folder; None: $BIRNN_ZOO_CACHE or ~/.cache/birnn-zoo
    download: bool = True                             # fetch missing files from their public source (SHA-256 verified)
    verify_checksum: bool = True
    min_freq: int = 1                                 # vocabulary from the training split: tokens seen this often
    max_vocab: Optional[int] = None                   # counts <pad> and <unk>; None: no cap
    max_len: Optional[int] = None                     # truncate longer texts to this many tokens; None: keep all
    lowercase: bool = True
    unk_shapes: bool = False                          # unknown words -> <unk:number|CAPS|Capital|lower|other>
    # > 0: rare/unseen words spelt with pieces shared by >= this many words
    subword_types: int = 0
    skip_malformed: bool = False                      # skip (count, report) malformed lines instead of failing


@dataclass
class TrecDataConfig(TextDataConfig):
    name: str = "trec"
    split_seed: int = 0
    val_fraction: float = 0.1                         # no validation file: a seeded stratified 10% of train; 0: none


@dataclass
class Sst2DataConfig(TextDataConfig):
    name: str = "sst2"


@dataclass
class SmsSpamDataConfig(TextDataConfig):
    name: str = "sms_spam"
    split_seed: int = 0
    val_fraction: float = 0.1                         # 0: no validation split (train on all, test the last epoch)
    test_fraction: float = 0.2


TEXT_SCHEMAS: dict[str, type] = {"trec": TrecDataConfig, "sst2": Sst2DataConfig, "sms_spam": SmsSpamDataConfig}


@dataclass
class SplitsConfig(DataConfig):
    """Your own data (``models/data/splits.py``): a train source, and validation/test sources or seeded stratified
    fractions of train; labels as class names or integer ids."""

    train: Optional[str] = None                       # required: the training file (.csv, .npz, ...) or split
    validation: Optional[str] = None                  # null: val_fraction of train
    test: Optional[str] = None                        # null: test_fraction of train
    val_fraction: Optional[float] = None              # null: 0.1 without a validation source; 0: no validation split
    test_fraction: Optional[float] = None             # null: 0.2 without a test source
    split_seed: int = 0
    class_names: Optional[List[str]] = None           # null: sorted training labels (names), or "0".."K-1" (ids)
    skip_malformed: bool = False


@dataclass
class TokenizerConfig:
    """The vocabulary and tokenizer keys, as the built-in text datasets have them (:class:`TextDataConfig`)."""

    min_freq: int = 1
    max_vocab: Optional[int] = None
    max_len: Optional[int] = None
    lowercase: bool = True
    unk_shapes: bool = False
    subword_types: int = 0


@dataclass
class TextFilesDataConfig(TokenizerConfig, SplitsConfig):
    """Texts and labels in CSV, TSV or JSON Lines files (``models/data/text_files.py``)."""

    name: str = "text_files"
    format: str = "auto"                              # auto (from the extension) | csv | tsv | jsonl
    encoding: str = "utf-8"
    text_column: str = "text"
    label_column: str = "label"                       # class names (strings) or integer ids 0..K-1
    text_pair_column: Optional[str] = None            # a second text per row, joined with <sep>


@dataclass
class HfDataConfig(TokenizerConfig, SplitsConfig):
    """A Hugging Face dataset (``models/data/hf.py``): ``train``/``validation``/``test`` name its splits."""

    name: str = "hf"
    # a dataset name, a save_to_disk folder, or csv/json with data_files
    path: Optional[str] = None
    config_name: Optional[str] = None                 # the dataset's configuration (load_dataset's second argument)
    data_files: Optional[Any] = None                  # for path=csv|json|parquet: a file, a list or {split: file}
    train: Optional[str] = "train"                    # split names; validation/test None: fractions of train
    text_column: str = "text"
    label_column: str = "label"                       # a ClassLabel column names its classes
    text_pair_column: Optional[str] = None


@dataclass
class ArraysDataConfig(SplitsConfig):
    """Numeric sequences (T, F) with a label each, from ``.npz`` files (``models/data/arrays.py``)."""

    name: str = "arrays"
    features_key: str = "x"                           # (N, T, F) padded, or (sum of lengths, F) end to end
    labels_key: str = "y"                             # (N,) integer ids or strings
    lengths_key: str = "lengths"                      # (N,); absent: every row has T steps
    standardize: bool = True                          # per-feature mean/std of the training steps


FILE_SCHEMAS: dict[str, type] = {"text_files": TextFilesDataConfig, "hf": HfDataConfig, "arrays": ArraysDataConfig}


TASK_VOCAB_SIZES: dict[str, int] = {"ends_sum": 11, "adding": 21}
"""A synthetic task's ``vocab_size`` where it is not :class:`SyntheticDataConfig`'s: ``ends_sum`` pad 0 + digits
0..9 as ids 1..10; ``adding`` 10 digits and their 10 marked twins."""


@cache
def synthetic_schema(task: str) -> type:
    """The schema of synthetic ``task``: :class:`SyntheticDataConfig` with the task's vocabulary size, plus the
    task's own integer keys."""
    params = synthetic.TASKS[task].params
    own = [(key, int, field(default=value)) for key, value in params.items()]
    vocab = TASK_VOCAB_SIZES.get(task, SyntheticDataConfig.vocab_size)
    name = "".join(part.title() for part in task.split("_")) + "DataConfig"
    return dataclasses.make_dataclass(name,
                                      [("task", str, field(default=task)), ("vocab_size", int, field(default=vocab)),
                                             *own], bases=(SyntheticDataConfig,))


def schema_for(name: Any, task: Any = None) -> type:
    """The schema of ``data.name`` (and ``data.task`` for synthetic data); ValueError for an unknown one."""
    if name == "synthetic":
        if task not in synthetic.TASKS:
            raise ValueError(f"data.task={task!r}: expected one of {sorted(synthetic.TASKS)}")
        return synthetic_schema(task)
    if name in FILE_SCHEMAS:
        return FILE_SCHEMAS[name]
    if name not in TEXT_SCHEMAS:
        raise ValueError(f"data.name={name!r}: expected one of {['synthetic', *TEXT_SCHEMAS, *FILE_SCHEMAS]}")
    return TEXT_SCHEMAS[name]


def defaults(schema: type) -> dict[str, Any]:
    """``{key: default}`` of a schema dataclass."""
    return {f.name: f.default for f in dataclasses.fields(schema)}
