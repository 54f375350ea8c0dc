"""Download code with file:// URLs (never the network): progress, checksum, atomic write, refusal."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from models.data import ChecksumError, DownloadError, build_data, cache_dir, download_file, ensure_files, sha256_file
from models.data.download import SOURCES, FileSpec

PAYLOAD = b"NUM:dist How far is it from Denver to Aspen ?\n" * 2000


def _src(tmp_path: Path) -> tuple[Path, str]:
    src = tmp_path / "src" / "file.label"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    return src, hashlib.sha256(PAYLOAD).hexdigest()


def test_download_verifies_and_reports_progress(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src, digest = _src(tmp_path)
    dest = download_file(src.as_uri(), tmp_path / "cache" / "trec" / "x.label", digest, chunk_size=4096)
    assert dest.read_bytes() == PAYLOAD and sha256_file(dest) == digest
    err = capsys.readouterr().err
    assert "download x.label" in err and "100%" in err
    assert [p.name for p in dest.parent.iterdir()] == ["x.label"]  # no temp file left


def test_checksum_mismatch_refuses_and_keeps_old_file(tmp_path: Path) -> None:
    src, _ = _src(tmp_path)
    dest = tmp_path / "cache" / "x.label"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    with pytest.raises(ChecksumError, match=r"expected 0+, got [0-9a-f]{64}; refusing"):
        download_file(src.as_uri(), dest, "0" * 64, progress=False)
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["x.label"]


def test_write_is_atomic_via_os_replace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, digest = _src(tmp_path)
    calls: list[tuple[str, str]] = []
    real = os.replace

    def spy(a: str, b: str) -> None:
        calls.append((str(a), str(b)))
        assert not Path(b).exists() and Path(a).read_bytes() == PAYLOAD
        real(a, b)

    monkeypatch.setattr(os, "replace", spy)
    dest = download_file(src.as_uri(), tmp_path / "out" / "y.tsv", digest, progress=False)
    assert len(calls) == 1 and calls[0][1] == str(dest)
    assert Path(calls[0][0]).parent == dest.parent and calls[0][0].endswith(".part")


def test_failed_download_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        download_file((tmp_path / "nope.txt").as_uri(), tmp_path / "out" / "z", None, progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_ensure_files_downloads_into_cache_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, digest = _src(tmp_path)
    monkeypatch.setenv("BIRNN_ZOO_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    sources = {"toy": {"train": FileSpec("toy/train.label", src.as_uri(), digest)}}
    paths = ensure_files("toy", None, download=True, progress=False, sources=sources)
    assert paths["train"] == tmp_path / "cache" / "toy" / "train.label"
    assert paths["train"].read_bytes() == PAYLOAD
    # second call: present and verified, no download (source gone)
    src.unlink()
    assert ensure_files("toy", None, download=True, sources=sources) == paths
    # a wrong file in the cache is refused
    paths["train"].write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match=r"train\.label"):
        ensure_files("toy", None, download=False, sources=sources)


def test_bad_download_through_ensure_files_is_refused(tmp_path: Path) -> None:
    src, _ = _src(tmp_path)
    sources = {"toy": {"all": FileSpec("toy/a.tsv", src.as_uri(), "f" * 64)}}
    with pytest.raises(ChecksumError):
        ensure_files("toy", tmp_path / "root", download=True, progress=False, sources=sources)
    assert not (tmp_path / "root" / "toy" / "a.tsv").exists()


def test_sources_use_the_shared_layout_and_public_urls() -> None:
    rel = sorted(s.relpath for parts in SOURCES.values() for s in parts.values())
    assert rel == ["sms_spam/sms.tsv", "sst2/stsa.binary.dev", "sst2/stsa.binary.test",
                   "sst2/stsa.binary.train", "trec/TREC_10.label", "trec/train_5500.label"]
    assert all(s.url.startswith("https://") and len(s.sha256) == 64
               for parts in SOURCES.values() for s in parts.values())
    shared = Path(__file__).resolve().parents[3] / "shared" / "data"
    if shared.is_dir():
        for parts in SOURCES.values():
            for s in parts.values():
                assert sha256_file(shared / s.relpath) == s.sha256


# A port nothing listens on, on this machine: the connection is refused at once, as without a network.
UNREACHABLE = "http://127.0.0.1:9/birnn-zoo/a.tsv"


@pytest.mark.parametrize("root", ["folder", None])
def test_an_unreachable_source_is_one_line_naming_dataset_url_and_root(tmp_path: Path, root: str | None,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIRNN_ZOO_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "root"
    folder.mkdir()
    sources = {"toy": {"all": FileSpec("toy/a.tsv", UNREACHABLE, "f" * 64)}}
    with pytest.raises(DownloadError) as error:
        ensure_files("toy", folder if root else None, download=True, progress=False, sources=sources)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"toy: cannot download {UNREACHABLE} into data.root=")
    assert (f"data.root={folder}" if root else f"data.root=null (the cache {tmp_path / 'cache'})") in message
    assert "data.download=false" in message
    assert not list((folder if root else tmp_path / "cache").rglob("*.part")), "no partial file is left"


@pytest.mark.parametrize("name", ["trec", "sst2", "sms_spam"])
def test_a_data_root_that_does_not_exist_is_a_config_error_not_a_download(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "no_such_folder"
    with pytest.raises(ValueError, match=rf"data.root='{missing}' does not exist; set data.root to the folder "
                                         rf"holding {name}/"):
        build_data({"name": name, "root": str(missing)})            # download is true: still refused
    assert not missing.exists(), "nothing is created"
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match=r"data.root='.*a_file' is a file, not a folder"):
        build_data({"name": name, "root": str(tmp_path / "a_file")})
