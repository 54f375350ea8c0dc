"""Faults at the worst moment (issue 31): a full disk at the N-th byte, a kill before the first checkpoint, damaged
checkpoints and kernel libraries, look-alike Keras layers, absurd sizes. Each test names the guarantee it holds;
docs/training-and-sweeps.md lists them in one table.

The full disk is an ``os.write`` wrapper (every project write goes through ``models.atomic``, which writes with
``os.write``) that fails with ENOSPC once a given number of bytes has gone to files under the test's folder."""

import errno
import json
import os
from pathlib import Path
from typing import Callable

import pytest
import torch

from models.atomic import AtomicWriteError, atomic_path, remove_orphans, write_atomically

ROOT = Path(__file__).resolve().parents[1]


def full_disk(monkeypatch: pytest.MonkeyPatch, folder: Path, after_bytes: int) -> None:
    """From now on, writes to files under ``folder`` fail with ENOSPC after ``after_bytes`` bytes in all."""
    real_write: Callable[[int, bytes], int] = os.write
    budget = [after_bytes]

    def write(fd: int, data: bytes) -> int:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if not target.startswith(str(folder)):
            return real_write(fd, data)
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        count = real_write(fd, bytes(memoryview(data)[: budget[0]]))
        budget[0] -= count
        return count

    monkeypatch.setattr(os, "write", write)


def temporaries(folder: Path) -> list:
    return sorted(p.name for p in folder.rglob("*.tmp"))


# -- 1. every write is atomic: a full disk leaves the previous file ------------------------------------------------
@pytest.mark.parametrize("after_bytes", [0, 10, 5000])
def test_a_full_disk_leaves_the_previous_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               after_bytes: int) -> None:
    target = tmp_path / "file.bin"
    write_atomically(target, b"old" * 10)
    full_disk(monkeypatch, tmp_path, after_bytes)
    with pytest.raises(AtomicWriteError) as error:
        write_atomically(target, lambda file: torch.save({"x": torch.zeros(4096)}, file))
    assert "\n" not in str(error.value) and str(target) in str(error.value) and "No space" in str(error.value)
    assert target.read_bytes() == b"old" * 10 and temporaries(tmp_path) == []


def test_a_checkpoint_on_a_full_disk_keeps_the_old_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from models.training.checkpoint import FORMAT, REQUIRED_KEYS, load_checkpoint, save_checkpoint

    state = {key: {} for key in REQUIRED_KEYS} | {"format": FORMAT, "model": {"w": torch.ones(1000)}}
    path = save_checkpoint(state, tmp_path / "last.pt")
    full_disk(monkeypatch, tmp_path, 2000)
    with pytest.raises(OSError):
        save_checkpoint(state | {"model": {"w": torch.zeros(1000)}}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(1000)) and temporaries(tmp_path) == []


@pytest.mark.parametrize("format, name", [("torchscript", "model.pt"),
                                          pytest.param("pt2", "model.pt2", marks=pytest.mark.slow)])   # 45 s export
def test_a_failed_export_keeps_the_working_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, format: str,
                                                name: str) -> None:
    """Defect 1: re-exporting over a working file on a full disk aborted the process and destroyed the file."""
    from models import create_model
    from models.deploy.exporters import export, load_exported

    torch.manual_seed(0)
    model = create_model("bilstm", vocab_size=20, num_classes=3, hidden_size=4, embed_dim=4).eval()
    kwargs = {"max_len": 6} if format == "pt2" else {}
    path = export(model, tmp_path / name, format, **kwargs)
    before = Path(path).read_bytes()
    full_disk(monkeypatch, tmp_path, 1000)
    with pytest.raises(AtomicWriteError) as error:
        export(model, path, format, **kwargs)
    assert "\n" not in str(error.value)
    monkeypatch.undo()
    assert Path(path).read_bytes() == before and temporaries(tmp_path) == []
    tokens = torch.randint(1, 20, (2, 6))
    torch.testing.assert_close(load_exported(path)(tokens), model(tokens), rtol=1e-5, atol=1e-5)


def test_atomic_path_removes_its_temporary_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"good")
    with pytest.raises(RuntimeError), atomic_path(target) as temp:
        temp.write_bytes(b"half")
        raise RuntimeError("exporter failed")
    assert target.read_bytes() == b"good" and temporaries(tmp_path) == []


def test_orphan_temporaries_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"x" * 100)
    (tmp_path / "notes.tmp").write_bytes(b"mine")       # not one of ours: no leading dot
    assert [p.name for p in remove_orphans(tmp_path)] == [".last.pt.abc123.tmp"]
    assert (tmp_path / "notes.tmp").exists()


# -- 2. a Keras layer is matched by its full identity ---------------------------------------------------------------
@pytest.fixture
def keras_layers():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras", reason="the Keras importer's refusals are checked against real Keras files")
    return keras


def _keras_member(path: Path, edit) -> None:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def test_a_registered_lookalike_layer_is_refused_naming_it(tmp_path: Path, keras_layers) -> None:
    """Defect 2: ``class Dense(layers.Dense)`` registered in package ``mypkg`` imported as Keras's Dense."""
    from models.keras import KerasImportError, from_keras

    keras = keras_layers

    @keras.saving.register_keras_serializable(package="mypkg_faults")
    class Dense(keras.layers.Dense):
        def call(self, inputs):
            return super().call(inputs) * 2.0

    path = tmp_path / "m.keras"
    keras.Sequential([keras.Input((None, 3)), keras.layers.Bidirectional(keras.layers.LSTM(4)), Dense(2)]).save(path)
    with pytest.raises(KerasImportError, match=r"'mypkg_faults>Dense'.*custom object"):
        from_keras(str(path))


@pytest.mark.parametrize("key, value", [("registered_name", "os>system"), ("module", "__main__"),
                                        ("module", "keras_lookalike.layers")])
def test_a_bidirectional_with_a_foreign_identity_is_refused(tmp_path: Path, keras_layers, key: str,
                                                            value: str) -> None:
    from models.keras import KerasImportError, from_keras

    keras = keras_layers
    path = tmp_path / "m.keras"
    keras.Sequential([keras.Input((None, 3)), keras.layers.Bidirectional(keras.layers.LSTM(4))]).save(path)

    def edit(config: dict) -> None:
        config["config"]["layers"][1][key] = value

    _keras_member(path, edit)
    with pytest.raises(KerasImportError, match=f"{value!r}"):
        from_keras(str(path))
