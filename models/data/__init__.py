"""Datasets for birnn-zoo: synthetic both-ends tasks, real text (TREC-6, SST-2, SMS spam) and your own data
(``text_files``: CSV/TSV/JSON Lines; ``hf``: Hugging Face datasets; ``arrays``: numeric (T, F) sequences).

``build_data(cfg, seed)`` turns the ``data`` config node into a :class:`DataBundle`, whose
``loader(split, batch_size, shuffle=..., seed=..., epoch=..., start_batch=...)`` yields
:class:`Batch` tuples ``(tokens (B, T) right-padded with 0, lengths (B,), labels (B,))``.
"""

from .batching import Batch, BatchLoader, FeatureDataset, ListDataset, batch_order, collate, padding_fraction
from .bundle import DataBundle, build_data, resolve_config
from .download import ChecksumError, DownloadError, cache_dir, download_file, ensure_files, sha256_file
from .synthetic import TASKS
from .text import DataFormatError, Vocab, encode_example, tokenize

__all__ = [
    "Batch", "BatchLoader", "ChecksumError", "DataBundle", "DownloadError", "DataFormatError", "FeatureDataset",
    "ListDataset", "TASKS", "Vocab",
    "batch_order", "build_data", "cache_dir", "collate", "download_file", "encode_example", "ensure_files",
    "padding_fraction",
    "resolve_config", "sha256_file", "tokenize",
]
