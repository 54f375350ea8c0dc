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

import numpy as np
import pytest
import torch

from models.atomic import AtomicWriteError, atomic_path, remove_orphans, write_atomically

ROOT = Path(__file__).resolve().parents[2]


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


# -- 3. a run folder is in use as soon as anything of a run is in it --------------------------------------------------
def _train(run_dir: Path, *overrides: str) -> dict:
    from helpers.composing import TINY, compose_config

    from models.training.loop import train

    threads = torch.get_num_threads()
    try:
        return train(compose_config(*TINY, "trainer.tensorboard=false", *overrides), run_dir)
    finally:
        torch.set_num_threads(threads)


def _epochs(run_dir: Path) -> list:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _fingerprint(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_full_disk_before_the_first_checkpoint_never_mixes_two_runs(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 3: the folder held metrics.jsonl and no checkpoint; the next fresh run appended (epoch 1 twice)."""
    from models.training.config import ConfigError

    run_dir = tmp_path / "run"
    full_disk(monkeypatch, run_dir / "checkpoints", 1000)    # metrics.jsonl is written, last.pt is not
    with pytest.raises(OSError, match="No space"):
        _train(run_dir)
    monkeypatch.undo()
    assert _epochs(run_dir) == [1] and not list((run_dir / "checkpoints").iterdir())
    before = _fingerprint(run_dir)
    for attempt in ([], [f"trainer.resume={run_dir}"]):
        with pytest.raises(ConfigError) as error:
            _train(run_dir, *attempt)
        message = str(error.value)
        assert "trainer.overwrite=true" in message and "trainer.resume=" not in message.replace(
            f"trainer.resume={run_dir}:", ""), message            # never suggests the resume that cannot work
        assert _fingerprint(run_dir) == before and not (run_dir / ".lock").exists()
    _train(run_dir, "trainer.overwrite=true")
    assert _epochs(run_dir) == [1, 2]


def test_an_orphan_temporary_marks_the_folder_in_use_and_is_removed_at_the_next_start(tmp_path: Path) -> None:
    from models.training.config import ConfigError

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    orphan = run_dir / "checkpoints" / ".last.pt.k1ll3d.tmp"  # what a SIGKILL during the first last.pt leaves
    orphan.write_bytes(b"\0" * 4096)
    with pytest.raises(ConfigError, match=r"trainer\.overwrite=true"):
        _train(run_dir)
    assert orphan.exists()                                 # a refused attempt changes nothing
    _train(run_dir, "trainer.max_epochs=1", "trainer.overwrite=true")
    orphan.write_bytes(b"\0" * 4096)                       # killed again while writing last.pt: resume cleans it
    _train(run_dir, f"trainer.resume={run_dir}")
    assert not orphan.exists() and temporaries(run_dir) == [] and _epochs(run_dir) == [1, 2]


def test_overwrite_removes_only_the_runs_own_files_and_lists_them(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    run_dir = tmp_path / "run"
    _train(run_dir, "trainer.max_epochs=1")
    (run_dir / "notes.txt").write_text("mine")
    (run_dir / "tensorboard").mkdir()
    (run_dir / "tensorboard" / "my_plot.png").write_bytes(b"png")
    with caplog.at_level("WARNING"):
        _train(run_dir, "trainer.max_epochs=1", "trainer.overwrite=true")
    assert (run_dir / "notes.txt").read_text() == "mine" and (run_dir / "tensorboard" / "my_plot.png").exists()
    listed = " ".join(r.getMessage() for r in caplog.records if "overwrite" in r.getMessage())
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "metrics.jsonl", "results.json"):
        assert name in listed, listed


def test_an_empty_lock_left_by_a_kill_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from models.training.config import ConfigError
    from models.training.run_folder import RunLock

    (tmp_path / ".lock").write_text("")
    with pytest.raises(ConfigError) as error:              # written a moment ago: maybe being written, refused
        RunLock(tmp_path).acquire()
    assert "process -1" not in str(error.value) and "unreadable lock" in str(error.value)
    old = os.stat(tmp_path / ".lock").st_mtime - 60
    os.utime(tmp_path / ".lock", (old, old))
    with caplog.at_level("WARNING"):
        lock = RunLock(tmp_path).acquire()
    assert lock.held and "empty or unreadable" in caplog.text
    lock.release()
    assert not (tmp_path / ".lock").exists()


@pytest.mark.parametrize("name", ["run;rm -rf x", "run $(id)", "run ${oops}", "it's, a=b"])
def test_the_printed_command_parses_back_for_odd_folder_names(tmp_path: Path, name: str) -> None:
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from models.training.run_folder import continue_command

    run_dir = tmp_path / name
    words = shlex.split(continue_command(run_dir, [f"trainer.resume={run_dir}"], overrides=["model=bigru"]))
    parsed = OverridesParser.create().parse_overrides(words[2:])
    values = {o.key_or_group: o.value() for o in parsed}
    from omegaconf import OmegaConf

    resolved = OmegaConf.create({"v": values["trainer.resume"]}).v    # a ${...} left in would be interpolated
    assert resolved == str(run_dir) and values["hydra.run.dir"] == values["trainer.resume"]


# -- 4. a resume checks every file before the first step; a damaged best.pt is recoverable ---------------------------
@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("one_epoch") / "run"
    _train(run_dir, "trainer.max_epochs=1")
    return run_dir


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else os.urandom(len(data)))


@pytest.mark.parametrize("how", ["truncated", "random"])
def test_a_damaged_best_pt_is_found_before_training_and_the_run_recovers(tmp_path: Path, one_epoch: Path,
                                                                          caplog: pytest.LogCaptureFixture,
                                                                          how: str) -> None:
    """Defect 4: a damaged best.pt was found only at the test step, after training, on every rerun."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(one_epoch, run_dir)
    _damage(run_dir / "checkpoints" / "best.pt", how)
    with caplog.at_level("INFO", logger="train"):
        results = _train(run_dir, f"trainer.resume={run_dir}")
    messages = [r.getMessage() for r in caplog.records]
    warned = next(i for i, m in enumerate(messages) if "best.pt is damaged" in m)
    first_epoch = next(i for i, m in enumerate(messages) if m.startswith("epoch 2:"))
    assert warned < first_epoch and "will likely succeed" not in messages[warned]
    assert results["epochs"] == 2 and json.loads((run_dir / "results.json").read_text())["epochs"] == 2
    assert (run_dir / "checkpoints" / "best.pt.damaged").exists()


def test_a_damaged_source_best_pt_into_another_folder_is_not_copied(tmp_path: Path, one_epoch: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    source = tmp_path / "source"
    shutil.copytree(one_epoch, source)
    _damage(source / "checkpoints" / "best.pt", "random")
    before = _fingerprint(source)
    with caplog.at_level("WARNING", logger="train"):
        _train(tmp_path / "other", f"trainer.resume={source}")
    assert "best.pt is damaged" in caplog.text and "will likely succeed" not in caplog.text
    assert _fingerprint(source) == before                 # the source is only read


def test_a_damaged_last_pt_is_named_before_anything_runs(tmp_path: Path, one_epoch: Path) -> None:
    import shutil

    from models.training.config import ConfigError

    run_dir = tmp_path / "run"
    shutil.copytree(one_epoch, run_dir)
    _damage(run_dir / "checkpoints" / "last.pt", "random")
    with pytest.raises(ConfigError, match=r"last\.pt") as error:
        _train(run_dir, f"trainer.resume={run_dir}")
    assert "will likely succeed" not in str(error.value)


def test_sigterm_during_the_final_test_pass_finishes_it_and_writes_results(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    import signal

    from models.training import loop

    calls = []
    real = loop.evaluate

    def evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:                                # validation of epoch 1, then the test pass
            signal.raise_signal(signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", evaluate)
    got = []
    previous = signal.signal(signal.SIGTERM, lambda *_: got.append(1))   # the test process must survive old code
    try:
        with caplog.at_level("WARNING", logger="train"):
            _train(tmp_path / "run", "trainer.max_epochs=1")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not got and "SIGTERM arrived during the final test pass" in caplog.text
    assert json.loads((tmp_path / "run" / "results.json").read_text())["epochs"] == 1


# -- 5. the kernel library is verified before it is loaded ----------------------------------------------------------
def _kernel():
    from models.blocks import cpu_kernel

    if not cpu_kernel.available():
        pytest.skip("CPU kernel not built here")
    return cpu_kernel


@pytest.fixture
def fake_kernel_compile(monkeypatch: pytest.MonkeyPatch) -> list:
    """Compiling copies the library this process loaded (the folder logic is under test, not the compiler)."""
    import shutil

    from models.blocks.cpu_kernel import build

    built = Path(_kernel()._library._name)
    targets: list = []

    def copy(cxx: list, capability: str, target: Path) -> None:
        targets.append(target)
        shutil.copy(built, target)

    monkeypatch.setattr(build, "_compile", copy)
    return targets


_LOAD_TWICE = """
import os, shutil, sys, warnings
warnings.simplefilter("always")
from models.blocks.cpu_kernel import build
build._compile = lambda cxx, capability, target: shutil.copy(sys.argv[1], target)
library = build.load(sys.argv[2])
print("width", library.birnn_vector_width(), library._name)
"""


@pytest.mark.parametrize("how", ["truncated", "random", pytest.param("truncated, in a new process",
                                                                   marks=pytest.mark.slow)])
def test_a_damaged_kernel_library_is_rebuilt_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            fake_kernel_compile: list, how: str) -> None:
    """Defect 5: a truncated library at the cache name killed every process with SIGBUS; random bytes only
    warned, at every start. (In this process a regression would kill the test run by SIGBUS; the slow variant
    loads it in a new process, as a user's next start would.)"""
    import subprocess
    import sys

    from models.blocks.cpu_kernel import build

    cpu_kernel = _kernel()
    monkeypatch.setenv("BIRNN_ZOO_KERNEL_CACHE", str(tmp_path / "cache"))
    library = Path(build.load(cpu_kernel.capability())._name)
    assert library.parent == tmp_path / "cache"
    data = library.read_bytes()
    library.unlink()                                       # a new file: a mapped library is never rewritten
    library.write_bytes(data[: len(data) // 3] if how.startswith("truncated") else os.urandom(len(data)))
    if how.endswith("process"):
        command = [sys.executable, "-c", _LOAD_TWICE, cpu_kernel._library._name, cpu_kernel.capability()]
        second = subprocess.run(command, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 0, (second.returncode, second.stderr[-2000:])
        stderr, loaded = second.stderr, "width" in second.stdout
    else:
        with pytest.warns(RuntimeWarning) as caught:
            loaded = build.load(cpu_kernel.capability()).birnn_vector_width() > 0
        stderr = " ".join(str(w.message) for w in caught)
    assert "is damaged" in stderr and "rebuilding" in stderr and loaded
    assert library.read_bytes() == data


def test_the_kernel_cache_has_its_own_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               fake_kernel_compile: list) -> None:
    from models.blocks.cpu_kernel import build

    monkeypatch.setenv("BIRNN_ZOO_CACHE", str(tmp_path / "data"))
    monkeypatch.setenv("BIRNN_ZOO_KERNEL_CACHE", str(tmp_path / "kernels"))
    assert Path(build.load(_kernel().capability())._name).parent == tmp_path / "kernels"
    assert not (tmp_path / "data").exists()
    monkeypatch.delenv("BIRNN_ZOO_KERNEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build.default_cache_dir() == tmp_path / "xdg" / "birnn-zoo-kernels"


def test_a_world_writable_cache_falls_back_to_one_reused_private_folder(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        fake_kernel_compile: list) -> None:
    import tempfile
    import warnings

    from models.blocks.cpu_kernel import build

    cache = tmp_path / "shared"
    cache.mkdir()
    cache.chmod(0o777)
    monkeypatch.setenv("BIRNN_ZOO_KERNEL_CACHE", str(cache))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        used = {Path(build.load(_kernel().capability())._name).parent for _ in range(3)}   # three "processes"
    assert len(used) == 1 and len(fake_kernel_compile) == 1 and used.pop().parent == tmp_path / "tmp"
    assert not list(cache.iterdir())


def test_a_read_only_cache_holding_a_good_library_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          fake_kernel_compile: list) -> None:
    import builtins
    import warnings

    from models.blocks.cpu_kernel import build

    monkeypatch.setenv("BIRNN_ZOO_KERNEL_CACHE", str(tmp_path / "cache"))
    first = Path(build.load(_kernel().capability())._name)
    for lock in (tmp_path / "cache").glob("*.lock"):
        lock.unlink()

    def read_only(path, mode="r", *args, **kwargs):        # as on a read-only mount (works as root too)
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(build, "open", read_only, raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                     # no "refusing the cache", no rebuild elsewhere
        assert Path(build.load(_kernel().capability())._name) == first
    assert len(fake_kernel_compile) == 1


def test_a_compiler_that_writes_nothing_is_not_installed(tmp_path: Path) -> None:
    from models.blocks.cpu_kernel import build

    target = tmp_path / "birnn_cpu-test.so"
    with pytest.raises(build.KernelUnavailable, match="produced no library"):
        build._compile(["true"], "avx2", target)           # CXX=true: exit 0, empty output
    assert not target.exists() and not list(tmp_path.iterdir())


def test_a_cxx_with_an_unbalanced_quote_is_a_kernel_problem_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    from models.blocks.cpu_kernel import build

    monkeypatch.setenv("CXX", "g++ '-O2")
    with pytest.raises(build.KernelUnavailable, match="CXX="):
        build._compiler()


# -- bad settings ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, key", [("model.hidden_size=10000000", "model.hidden_size"),
                                           ("model.hidden_size=30000", "model.hidden_size"),
                                           ("model.embed_dim=100000000", "model.embed_dim"),
                                           ("optim.lr=inf", "optim.lr")])
def test_settings_that_cannot_work_are_config_errors_naming_the_key(override: str, key: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers.composing import TINY, compose_config

    from models.training import config
    from models.training.config import ConfigError, check_config

    monkeypatch.setattr(config, "_memory_bytes", lambda: 64 * 2**30)   # the same answer on any machine
    with pytest.raises(ConfigError) as error:
        check_config(compose_config(*TINY, override))
    assert str(error.value).startswith(f"{key}=") and "\n" not in str(error.value)


def test_a_model_that_fits_is_not_refused() -> None:
    from models.training.config import check_fits_in_memory

    check_fits_in_memory({"hidden_size": 512, "num_layers": 2}, 10_000_000, {"batch_size": 64, "max_len": 400},
                         memory=8 * 2**30)


def test_a_huge_text_line_is_truncated_with_a_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import resource

    from models.data import text

    path = tmp_path / "train.txt"
    with open(path, "wb") as file:
        file.write(b"DESC:def what is it ?\n")
        file.write(b"NUM:count " + b"seven " * 2_000_000 + b"?\n")   # 12 MB of one line
        file.write(b"HUM:ind who is it ?\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with caplog.at_level("WARNING"):
        rows, _ = text.read_trec(path)
    assert [label for label, _ in rows] == ["DESC", "NUM", "HUM"] and rows[2][1] == "who is it ?"
    assert len(rows[1][1]) <= text.MAX_LINE_BYTES and "1 line(s) longer than" in caplog.text
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024   # KiB: no GBs of growth


# -- hostile Keras files ---------------------------------------------------------------------------------------------
def _max_rss_kib() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_a_zip_bomb_is_refused_before_memory_grows(tmp_path: Path, keras_layers) -> None:
    import zipfile

    from models.keras import KerasImportError, from_keras

    keras = keras_layers
    good = tmp_path / "good.keras"
    keras.Sequential([keras.Input((None, 3)), keras.layers.Bidirectional(keras.layers.LSTM(4))]).save(good)
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", source.read("config.json"))
        with archive.open("model.weights.h5", "w") as member:
            for _ in range(96):                            # 96 MiB of zeros, about 100 KB compressed
                member.write(bytes(2**20))
    before = _max_rss_kib()
    with pytest.raises(KerasImportError, match="zip bomb"):
        from_keras(str(bomb))
    assert _max_rss_kib() - before < 32 * 1024


def test_a_declared_but_unstored_weight_is_refused_unread(tmp_path: Path, keras_layers) -> None:
    """A small file whose config declares a 2^27 x 2 embedding: refused before 1 GiB of fill values is read."""
    import io
    import zipfile

    import h5py

    from models.keras import KerasImportError, from_keras

    keras = keras_layers
    path = tmp_path / "m.keras"
    keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(10, 2),
                      keras.layers.Bidirectional(keras.layers.LSTM(4))]).save(path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    config["config"]["layers"][1]["config"]["input_dim"] = 2**27
    members["config.json"] = json.dumps(config).encode()
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "r+") as h5:
        del h5["layers/embedding/vars/0"]
        h5.create_dataset("layers/embedding/vars/0", shape=(2**27, 2), dtype="<f4")   # never written
        del h5["layers/bidirectional/forward_layer/cell/vars/0"]                      # and the next layer is wrong
        h5.create_dataset("layers/bidirectional/forward_layer/cell/vars/0", data=np.zeros((3, 16), "<f4"))
    members["model.weights.h5"] = buffer.getvalue()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    assert path.stat().st_size < 200_000
    before = _max_rss_kib()
    with pytest.raises(KerasImportError):
        from_keras(str(path))
    assert _max_rss_kib() - before < 256 * 1024


@pytest.mark.parametrize("specs", ["[", "[" * 100_000 + "]" * 100_000, "{}", "[{}]", "[1]", "null", '"x"',
                                   '[{"kind": "dense", "class_name": "Dense", "name": "d", "path": "d", '
                                   '"in_features": 4, "options": {}}]',
                                   '[{"kind": "dense", "class_name": "Dense", "name": "d", "path": "d", '
                                   '"in_features": 4, "options": {"units": 10000000000}}]',
                                   '[{"kind": "recurrent", "class_name": "LSTM", "name": "r", "path": "r", '
                                   '"in_features": -1, "options": {"units": 3}}]'])
def test_module_from_specs_raises_only_keras_import_error(specs: str) -> None:
    from models.keras import KerasImportError, module_from_specs

    with pytest.raises(KerasImportError):
        module_from_specs(specs)


# -- blocks ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["BiLSTM", "BiGRU", "BiRNN"])
def test_lengths_on_the_meta_device_give_shapes(cell: str) -> None:
    import models

    block = getattr(models, cell)(3, 4, num_layers=2, merge_mode="sum").to("meta")
    out, _ = block(torch.empty(5, 2, 3, device="meta"), lengths=torch.empty(2, dtype=torch.long, device="meta"))
    assert out.shape == (5, 2, 4) and out.device.type == "meta"


# -- sweeps ------------------------------------------------------------------------------------------------------------
def test_a_job_of_a_finished_sweep_is_recognised_as_done(one_epoch: Path) -> None:
    """Re-running a finished sweep listed its finished jobs as failed (rc 1): ``train.py`` now reports them done."""
    from helpers.composing import TINY, compose_config

    import train

    same = compose_config(*TINY, "trainer.tensorboard=false", "trainer.max_epochs=1")
    assert train.finished_already(same, one_epoch)["epochs"] == 1
    for other in ("trainer.max_epochs=2", "model.hidden_size=12", "trainer.overwrite=true"):
        assert train.finished_already(compose_config(*TINY, "trainer.tensorboard=false", "trainer.max_epochs=1",
                                                     other), one_epoch) is None


@pytest.mark.slow
def test_running_a_finished_sweep_again_succeeds(tmp_path: Path) -> None:
    import subprocess
    import sys

    command = [sys.executable, "train.py", "-m", "experiment=tiny", "trainer.max_epochs=1", "model.merge_mode=sum,ave",
               f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "config error" not in again.stderr, again.stderr[-2000:]
    assert not list((tmp_path / "sweep").rglob("job_error.json"))


def test_the_report_over_an_older_run_resolves_its_preset_values(tmp_path: Path) -> None:
    """An older run's results.json has no ``config``: the report reads ``.hydra/config.yaml``, whose model keys
    are ``${zoo_preset:...}`` interpolations; they showed unresolved and the plot failed."""
    pytest.importorskip("matplotlib", reason="the report's plot")
    from models.training.report import write_report
    from models.zoo.config_group import preset_value

    hidden = preset_value("bilstm", "hidden_size")
    for number, merge in enumerate(("sum", "ave")):           # an older run, then a newer one of the same preset
        folder = tmp_path / str(number)
        (folder / ".hydra").mkdir(parents=True)
        row = {"data": "synthetic-ends_sum", "model": "bilstm", "merge_mode": merge, "seed": 0,
               "num_parameters": 100, "test_accuracy": 0.5 + number / 10, "train_tokens_per_s": 1000.0,
               "infer_tokens_per_s": 2000.0}
        if number:
            row["config"] = {"model": {"name": "bilstm", "hidden_size": hidden, "merge_mode": merge}, "seed": 0}
        (folder / "results.json").write_text(json.dumps(row))
        (folder / ".hydra" / "config.yaml").write_text(
            "model:\n  name: bilstm\n  hidden_size: ${zoo_preset:${.name},hidden_size}\n"
            f"  merge_mode: {merge}\nseed: 0\n")
    outputs = write_report(tmp_path)
    assert "hidden_size" not in outputs["md"].read_text()       # the same value in both: not a varying key
    table = outputs["md"].read_text()
    assert "${" not in table and "png" in outputs and outputs["png"].stat().st_size > 0
    assert temporaries(tmp_path) == []


def test_overwrite_also_removes_the_default_logger_files(tmp_path: Path) -> None:
    """``logger=csv`` and ``logger=mlflow`` write ``metrics.csv`` and ``mlflow.db`` into the run folder: they are
    the run's, so they mark the folder in use and ``trainer.overwrite=true`` removes them (a user's file stays)."""
    from models.training.run_folder import clear_run, run_files

    for name in ("metrics.csv", "mlflow.db", "notes.txt"):
        (tmp_path / name).write_text(name)
    assert run_files(tmp_path) == ["metrics.csv", "mlflow.db"]
    assert clear_run(tmp_path) == ["metrics.csv", "mlflow.db"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
