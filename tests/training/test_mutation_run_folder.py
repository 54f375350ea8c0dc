"""``models/training/run_folder.py`` function by function, sharp enough that mutation testing (issue 37) finds no
change a user would not notice: which files make a folder a run's, what ``trainer.overwrite`` deletes, every
branch of the lock, and the command that continues a run. Files in ``tmp_path``; no training."""

import json
import logging
import os
import re
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Any, List

import pytest
from omegaconf import OmegaConf

from models.training import run_folder
from models.training.config import ConfigError
from models.training.run_folder import (
    RunLock,
    _alive,
    _quote_value,
    _setting,
    _user_overrides,
    clean_orphans,
    clear_run,
    continue_command,
    record_hydra_files,
    refuse_a_used_folder,
    run_files,
)

HOST = socket.gethostname()


def touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def a_run(folder: Path) -> List[str]:
    """Every kind of file a run writes, and files it does not; returns the run's, as run_files lists them."""
    for name in ("last.pt", "best.pt", "recover.pt", "best.pt.damaged", ".last.pt.abc123.tmp"):
        touch(folder / "checkpoints" / name)
    for name in ("results.json", "metrics.jsonl", "job_error.json", "metrics.csv", "mlflow.db",
                 ".results.json.x1.tmp"):
        touch(folder / name)
    touch(folder / "tensorboard" / "events.out.tfevents.1.host")
    (folder / "tensorboard" / "events.out.tfevents.folder").mkdir()   # not a file: not the run's
    for name in ("notes.txt", "train.log", ".hydra/config.yaml", "checkpoints/mine.pt", "checkpoints/.x.tmp/a"):
        touch(folder / name)
    return [".results.json.x1.tmp", "checkpoints/.last.pt.abc123.tmp", "checkpoints/best.pt",
            "checkpoints/best.pt.damaged", "checkpoints/last.pt", "checkpoints/recover.pt", "job_error.json",
            "metrics.csv", "metrics.jsonl", "mlflow.db", "results.json", "tensorboard/events.out.tfevents.1.host"]


# -- run_files / clear_run / clean_orphans ----------------------------------------------------------------------
def test_run_files_lists_exactly_what_a_run_wrote(tmp_path: Path) -> None:
    assert run_files(tmp_path / "none") == [] and run_files(tmp_path) == []
    expected = a_run(tmp_path)
    assert run_files(tmp_path) == expected
    assert run_files(str(tmp_path)) == expected


def test_clear_run_deletes_the_runs_files_and_only_those(tmp_path: Path) -> None:
    expected = a_run(tmp_path)
    assert clear_run(tmp_path) == expected
    assert run_files(tmp_path) == []
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == [".hydra/config.yaml", "checkpoints/.x.tmp/a", "checkpoints/mine.pt", "notes.txt", "train.log"]
    assert (tmp_path / "tensorboard").is_dir(), "a folder still holding something stays"
    # emptied folders go
    other = tmp_path / "other"
    touch(other / "tensorboard" / "events.out.tfevents.2.host"), touch(other / "checkpoints" / "last.pt")
    assert clear_run(other) == ["checkpoints/last.pt", "tensorboard/events.out.tfevents.2.host"]
    assert list(other.iterdir()) == []


def test_clear_run_takes_a_file_that_vanished_meanwhile_in_its_stride(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_folder, "run_files", lambda folder: ["results.json"])
    assert clear_run(tmp_path) == ["results.json"]


def test_clean_orphans_removes_temporaries_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="models.training.run_folder"):
        assert clean_orphans(tmp_path) == []
        assert caplog.records == []
        touch(tmp_path / "checkpoints" / ".last.pt.a.tmp"), touch(tmp_path / ".metrics.jsonl.b.tmp")
        touch(tmp_path / "checkpoints" / "last.pt")
        assert clean_orphans(tmp_path) == ["checkpoints/.last.pt.a.tmp", ".metrics.jsonl.b.tmp"]
    assert [r.getMessage() for r in caplog.records] == [
        f"removed 2 temporary file(s) a killed write left in {tmp_path}: checkpoints/.last.pt.a.tmp, "
        f".metrics.jsonl.b.tmp"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["checkpoints", "last.pt"]


# -- refuse_a_used_folder ---------------------------------------------------------------------------------------
def test_a_fresh_folder_is_fine(tmp_path: Path) -> None:
    touch(tmp_path / "notes.txt")
    assert refuse_a_used_folder(tmp_path, overwrite=False) is None
    assert (tmp_path / "notes.txt").is_file()


def test_a_used_folder_with_a_checkpoint_offers_to_resume_or_overwrite(tmp_path: Path) -> None:
    run = tmp_path / "my run"
    a_run(run)
    with pytest.raises(ConfigError) as error:
        refuse_a_used_folder(run, overwrite=False)
    assert str(error.value) == (
        f"run folder {run} already holds a run (.results.json.x1.tmp, checkpoints/.last.pt.abc123.tmp, "
        f"checkpoints/best.pt, checkpoints/best.pt.damaged and 8 more); continue it with "
        f"trainer.resume='{run}', or start over in it with trainer.overwrite=true (or choose another "
        f"hydra.run.dir)")


def test_a_folder_of_a_run_killed_before_its_first_checkpoint_cannot_be_resumed(tmp_path: Path) -> None:
    for name in ("metrics.jsonl", "results.json", "job_error.json", "metrics.csv"):
        touch(tmp_path / name)
    with pytest.raises(ConfigError) as error:
        refuse_a_used_folder(tmp_path, overwrite=False)
    assert str(error.value) == (
        f"run folder {tmp_path} already holds a run (job_error.json, metrics.csv, metrics.jsonl, results.json); "
        f"it stopped before its first checkpoint, so it cannot be resumed; start over in it with "
        f"trainer.overwrite=true (or choose another hydra.run.dir)")


def test_overwrite_deletes_the_old_runs_files_and_lists_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    touch(tmp_path / "metrics.jsonl"), touch(tmp_path / "checkpoints" / "last.pt"), touch(tmp_path / "notes.txt")
    with caplog.at_level(logging.WARNING, logger="models.training.run_folder"):
        assert refuse_a_used_folder(tmp_path, overwrite=True) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"trainer.overwrite=true: deleted the previous run's 2 file(s) in {tmp_path}: checkpoints/last.pt, "
        f"metrics.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# -- the lock ---------------------------------------------------------------------------------------------------
def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def write_lock(folder: Path, host: Any, pid: Any) -> str:
    text = json.dumps({"host": host, "pid": pid})
    (folder / ".lock").write_text(text)
    return text


def test_alive_tells_a_running_process_from_a_gone_one(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _alive(os.getpid()) is True
    assert _alive(dead_pid()) is False

    def refuse(pid: int, signal: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", refuse)
    assert _alive(12345) is True, "a process of another user exists"


def test_a_new_lock_holds_this_process_and_is_removed_on_release(tmp_path: Path) -> None:
    lock = RunLock(tmp_path)
    assert (lock.path, lock.owner, lock.held) == (tmp_path / ".lock", {"host": HOST, "pid": os.getpid()}, False)
    assert lock.acquire() is lock and lock.held is True
    assert json.loads((tmp_path / ".lock").read_text()) == {"host": HOST, "pid": os.getpid()}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / ".lock").stat().st_mode) == 0o644 & ~umask
    lock.release()
    assert not (tmp_path / ".lock").exists() and lock.held is False
    with RunLock(str(tmp_path)) as entered:
        assert entered.held and (tmp_path / ".lock").exists()
    assert not (tmp_path / ".lock").exists()


def test_a_second_lock_in_this_process_is_refused(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        with pytest.raises(ConfigError) as error:
            RunLock(tmp_path).acquire()
    assert str(error.value) == f"run folder {tmp_path} is already in use by this process"


def test_a_lock_of_a_live_process_is_refused_naming_it(tmp_path: Path) -> None:
    holder = subprocess.Popen(["sleep", "60"])
    try:
        text = write_lock(tmp_path, HOST, holder.pid)
        with pytest.raises(ConfigError) as error:
            RunLock(tmp_path).acquire()
        assert str(error.value) == (
            f"run folder {tmp_path} is in use by process {holder.pid} on {HOST} (lock file {tmp_path / '.lock'}); "
            f"wait for it to finish, choose another hydra.run.dir, or delete the lock file if that process is gone")
        assert (tmp_path / ".lock").read_text() == text
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_holder_is_taken_over_with_a_note(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pid = dead_pid()
    write_lock(tmp_path, HOST, pid)
    with caplog.at_level(logging.WARNING, logger="models.training.run_folder"):
        lock = RunLock(tmp_path).acquire()
    assert lock.held and json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert [r.getMessage() for r in caplog.records] == [
        f"taking over the stale lock {tmp_path / '.lock'} of process {pid}, which no longer runs"]


@pytest.mark.parametrize("pid", [0, -1, "123", None])
def test_a_lock_naming_no_real_pid_is_never_taken_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       pid: Any) -> None:
    """Even if every process looked dead: only a positive integer pid can be known dead."""
    monkeypatch.setattr(run_folder, "_alive", lambda pid: False)
    text = write_lock(tmp_path, HOST, pid)
    with pytest.raises(ConfigError, match=r"is in use by process"):
        RunLock(tmp_path).acquire()
    assert (tmp_path / ".lock").read_text() == text


def test_a_lock_with_this_pid_on_another_host_is_not_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_folder, "_alive", lambda pid: False)
    write_lock(tmp_path, HOST + "-b", os.getpid())
    with pytest.raises(ConfigError, match=rf"in use by process {os.getpid()} on {HOST}-b "):
        RunLock(tmp_path).acquire()


class Clock:
    """Stands in for the ``time`` module of ``run_folder``: a fixed now, and sleeps recorded (not slept)."""

    def __init__(self, now: float, on_sleep: Any = None) -> None:
        self.now, self.sleeps, self.on_sleep = now, [], on_sleep

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.on_sleep:
            self.on_sleep(len(self.sleeps))


def test_a_fresh_unreadable_lock_is_waited_for_then_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock_file = tmp_path / ".lock"
    lock_file.write_text("")
    os.utime(lock_file, (1000.0, 1000.0))
    clock = Clock(now=1000.0 + run_folder.STALE_EMPTY_LOCK_SECONDS)    # exactly the limit: not yet stale
    monkeypatch.setattr(run_folder, "time", clock)
    with pytest.raises(ConfigError) as error:
        RunLock(tmp_path).acquire()
    assert str(error.value) == (
        f"run folder {tmp_path} holds an unreadable lock file {lock_file} written moments ago; wait and retry, or "
        f"delete it if no run uses the folder")
    assert clock.sleeps == [0.05] * 10 and lock_file.read_text() == ""


def test_a_lock_written_while_waiting_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock_file = tmp_path / ".lock"
    lock_file.write_text("{")
    clock = Clock(now=time.time(), on_sleep=lambda n: n == 3 and write_lock(tmp_path, HOST + "-b", 7))
    monkeypatch.setattr(run_folder, "time", clock)
    with pytest.raises(ConfigError, match=rf"in use by process 7 on {HOST}-b "):
        RunLock(tmp_path).acquire()
    assert clock.sleeps == [0.05] * 3


def test_an_old_unreadable_lock_is_removed_and_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    lock_file = tmp_path / ".lock"
    lock_file.write_text("")
    os.utime(lock_file, (1000.0, 1000.0))
    monkeypatch.setattr(run_folder, "time", Clock(now=1000.0 + run_folder.STALE_EMPTY_LOCK_SECONDS + 0.01))
    with caplog.at_level(logging.WARNING, logger="models.training.run_folder"):
        lock = RunLock(tmp_path).acquire()
    assert lock.held and json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert [r.getMessage() for r in caplog.records] == [
        f"removing the lock file {lock_file}: it is empty or unreadable and 5 s old (its process was killed before "
        f"writing it)"]


def test_a_lock_file_that_vanishes_is_not_stale(tmp_path: Path) -> None:
    assert RunLock(tmp_path)._stale_unreadable() is False
    assert RunLock(tmp_path)._holder() is None


def test_a_lock_others_keep_taking_is_given_up_after_three_tries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    lock_file = tmp_path / ".lock"
    real_open = os.open

    def racing_open(path: Any, *args: Any) -> int:
        if Path(path) == lock_file:                    # a dead process's lock is back each time we look
            write_lock(tmp_path, HOST, 4_000_000)
            raise FileExistsError(17, "File exists")
        return real_open(path, *args)

    monkeypatch.setattr(run_folder, "_alive", lambda pid: False)
    monkeypatch.setattr(os, "open", racing_open)
    with caplog.at_level(logging.WARNING, logger="models.training.run_folder"):
        with pytest.raises(ConfigError) as error:
            RunLock(tmp_path).acquire()
    assert str(error.value) == f"could not take the lock {lock_file}: other processes keep taking it"
    assert len(caplog.records) == 3


def test_release_only_removes_a_lock_this_object_holds(tmp_path: Path) -> None:
    held = RunLock(tmp_path).acquire()
    never_acquired = RunLock(tmp_path)                  # same host and pid: only `held` tells them apart
    never_acquired.release()
    assert (tmp_path / ".lock").exists() and never_acquired.held is False
    held.release()
    assert not (tmp_path / ".lock").exists()


# -- the command that continues a run ---------------------------------------------------------------------------
def test_values_are_quoted_as_hydra_reads_them_back() -> None:
    assert _quote_value("/runs/a-b_c.d:1") == "/runs/a-b_c.d:1"
    assert _quote_value("") == ""
    assert _quote_value("my run") == "'my run'"
    assert _quote_value("it's ${x}") == "'it\\'s \\${x}'"
    assert _setting("trainer.resume=/a b") == "trainer.resume='/a b'"
    assert _setting("+extra") == "+extra"
    assert _setting("k=v=w") == "k='v=w'"


def test_continue_command_replaces_the_keys_it_sets_and_drops_the_start_keys() -> None:
    overrides = ["model=bigru", "+optim.lr=0.1", "~seed", "trainer.resume=/old", "trainer.init_from=x",
                 "trainer.overwrite=true", "hydra.run.dir=/old", "data.root=/my data"]
    assert continue_command(Path("/runs/r 1"), ["optim.lr=0.01", "trainer.init_from=/runs/r 1"],
                            overrides=overrides) == (
        "python train.py model=bigru '~seed' 'data.root=/my data' optim.lr=0.01 "
        "'trainer.init_from='\"'\"'/runs/r 1'\"'\"'' 'hydra.run.dir='\"'\"'/runs/r 1'\"'\"''")
    assert continue_command(Path("/r"), ["trainer.resume=/r"], world_size=1, overrides=[]) == \
        "python train.py trainer.resume=/r hydra.run.dir=/r"
    assert continue_command(Path("/r"), ["trainer.resume=/r"], world_size=2, overrides=["seed=1"]) == \
        "torchrun --standalone --nproc_per_node=2 train.py seed=1 trainer.resume=/r hydra.run.dir=/r"


def test_outside_hydra_there_are_no_overrides_and_no_hydra_files(tmp_path: Path) -> None:
    assert _user_overrides() == []
    assert continue_command(Path("/r"), []) == "python train.py hydra.run.dir=/r"
    record_hydra_files(tmp_path, OmegaConf.create({"seed": 1}))
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def in_hydra(monkeypatch: pytest.MonkeyPatch) -> Any:
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = OmegaConf.create({"overrides": {"task": ["seed=3", "model=bigru"]}, "run": {"dir": "/r"}})
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: hydra_cfg))
    return hydra_cfg


def test_inside_hydra_the_jobs_overrides_are_kept(in_hydra: Any) -> None:
    assert _user_overrides() == ["seed=3", "model=bigru"]
    assert continue_command(Path("/r"), ["seed=4"]) == "python train.py model=bigru seed=4 hydra.run.dir=/r"


def test_inside_hydra_its_files_are_written_into_the_run_folder(tmp_path: Path, in_hydra: Any) -> None:
    cfg = OmegaConf.create({"seed": 3, "model": {"name": "bigru"}})
    record_hydra_files(tmp_path, cfg)
    hydra = tmp_path / ".hydra"
    assert sorted(p.name for p in hydra.iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert OmegaConf.load(hydra / "config.yaml") == cfg
    assert OmegaConf.load(hydra / "hydra.yaml") == {"hydra": in_hydra}
    assert OmegaConf.to_container(OmegaConf.load(hydra / "overrides.yaml")) == ["seed=3", "model=bigru"]
    assert re.fullmatch(r"seed: 3\nmodel:\n  name: bigru\n", (hydra / "config.yaml").read_text())


def test_continue_command_reads_a_settings_key_as_the_word_before_its_first_equals_sign_without_plus_or_tilde() -> None:
    # "+key=v" and "key=v" name the same key; a value may hold "=" itself; only a leading "+"/"~" is dropped.
    overrides = ["optim.lr=0.1", "data.root=/old", "data.root=/old=dir", "y=1", "Xz=1"]
    assert continue_command(Path("/r"), ["+optim.lr=0.01", "data.root=/a=b", "+Xy=3", "z=2"], overrides=overrides) == (
        "python train.py y=1 Xz=1 +optim.lr=0.01 'data.root='\"'\"'/a=b'\"'\"'' +Xy=3 z=2 hydra.run.dir=/r")


def test_a_folder_with_five_files_of_a_run_names_four_and_one_more(tmp_path: Path) -> None:
    for name in ("metrics.jsonl", "results.json", "job_error.json", "metrics.csv", "mlflow.db"):
        touch(tmp_path / name)
    with pytest.raises(ConfigError, match=r"\(job_error\.json, metrics\.csv, metrics\.jsonl, mlflow\.db and 1 more\)"):
        refuse_a_used_folder(tmp_path, overwrite=False)


def test_release_does_not_fail_when_the_lock_file_vanishes_just_before_it_is_deleted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = RunLock(tmp_path).acquire()
    read_holder = RunLock._holder

    def read_then_vanish(self: RunLock) -> Any:   # someone deletes the file right after release() read it
        holder = read_holder(self)
        self.path.unlink()
        return holder

    monkeypatch.setattr(RunLock, "_holder", read_then_vanish)
    lock.release()
    assert not lock.held and not (tmp_path / ".lock").exists()


def test_alive_only_asks_whether_a_process_runs_and_never_signals_it() -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert _alive(child.pid) is True
        with pytest.raises(subprocess.TimeoutExpired):   # still running: no signal (SIGHUP would end it) was sent
            child.wait(timeout=0.5)
    finally:
        child.kill()
        child.wait()


def test_a_readable_lock_is_refused_at_once_without_waiting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_lock(tmp_path, HOST + "-b", 7)
    clock = Clock(now=time.time())
    monkeypatch.setattr(run_folder, "time", clock)
    with pytest.raises(ConfigError, match=rf"in use by process 7 on {HOST}-b "):
        RunLock(tmp_path).acquire()
    assert clock.sleeps == []


def test_an_old_unreadable_lock_another_process_removes_first_is_taken(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    lock_file = tmp_path / ".lock"
    lock_file.write_text("")
    os.utime(lock_file, (1000.0, 1000.0))
    monkeypatch.setattr(run_folder, "time", Clock(now=1000.0 + run_folder.STALE_EMPTY_LOCK_SECONDS + 0.01))
    stale_unreadable = RunLock._stale_unreadable

    def stale_then_removed_by_another(self: RunLock) -> bool:   # a second run cleans up the same stale file
        stale = stale_unreadable(self)
        self.path.unlink()
        return stale

    monkeypatch.setattr(RunLock, "_stale_unreadable", stale_then_removed_by_another)
    lock = RunLock(tmp_path).acquire()
    assert lock.held and json.loads(lock_file.read_text())["pid"] == os.getpid()


def test_a_dead_processs_lock_another_process_removes_first_is_taken(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    lock_file = tmp_path / ".lock"
    write_lock(tmp_path, HOST, 4_000_000)

    def gone_and_removed_by_another(pid: int) -> bool:   # a second run takes over the same stale lock first
        lock_file.unlink()
        return False

    monkeypatch.setattr(run_folder, "_alive", gone_and_removed_by_another)
    lock = RunLock(tmp_path).acquire()
    assert lock.held and json.loads(lock_file.read_text())["pid"] == os.getpid()
