"""The run-folder lock on storage shared by several nodes (SLURM sweeps on NFS/Lustre): a lock is only taken over
when its holder is known dead, which only its own host can tell, and a process only ever deletes its own lock
(issue 37). Through ``RunLock``'s public acquire/release; no training."""

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from models.training.config import ConfigError
from models.training.run_folder import RunLock

OTHER_HOST = socket.gethostname() + "-another-node"


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped): no process of this host runs under it now."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def write_lock(run_dir: Path, host: str, pid: int) -> str:
    text = json.dumps({"host": host, "pid": pid})
    (run_dir / ".lock").write_text(text)
    return text


def test_a_lock_of_another_host_is_never_taken_over_even_if_its_pid_is_dead_here(tmp_path: Path) -> None:
    """This host cannot see the other node's processes: a pid dead here may be a live job there."""
    text = write_lock(tmp_path, OTHER_HOST, dead_pid())
    with pytest.raises(ConfigError, match=rf"is in use by process \d+ on {OTHER_HOST}"):
        RunLock(tmp_path).acquire()
    assert (tmp_path / ".lock").read_text() == text, "the other node's lock is left as it was"


def test_a_lock_of_another_host_with_this_processs_pid_is_another_process(tmp_path: Path) -> None:
    text = write_lock(tmp_path, OTHER_HOST, os.getpid())
    with pytest.raises(ConfigError, match=rf"in use by process {os.getpid()} on {OTHER_HOST}"):
        RunLock(tmp_path).acquire()
    assert (tmp_path / ".lock").read_text() == text


def test_a_dead_holder_on_this_host_is_taken_over(tmp_path: Path) -> None:
    write_lock(tmp_path, socket.gethostname(), dead_pid())
    lock = RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / ".lock").read_text()) == {"host": socket.gethostname(), "pid": os.getpid()}
    lock.release()
    assert not (tmp_path / ".lock").exists()


def test_release_never_deletes_a_lock_another_process_now_holds(tmp_path: Path) -> None:
    """Our lock was taken over meanwhile (deleted by hand, then taken by a new run): releasing ours must not let
    a third process in."""
    holder = subprocess.Popen(["sleep", "60"])
    try:
        lock = RunLock(tmp_path).acquire()
        text = write_lock(tmp_path, socket.gethostname(), holder.pid)
        lock.release()
        assert (tmp_path / ".lock").read_text() == text
        with pytest.raises(ConfigError, match=rf"in use by process {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()


def test_release_keeps_the_lock_of_a_process_on_another_host_with_the_same_pid(tmp_path: Path) -> None:
    lock = RunLock(tmp_path).acquire()
    text = write_lock(tmp_path, OTHER_HOST, os.getpid())
    lock.release()
    assert (tmp_path / ".lock").read_text() == text


def test_release_is_idempotent_and_a_second_release_keeps_a_newer_lock(tmp_path: Path) -> None:
    with RunLock(tmp_path) as lock:
        assert (tmp_path / ".lock").exists()
    assert not (tmp_path / ".lock").exists()
    newer = RunLock(tmp_path).acquire()
    lock.release()                                     # the first lock again: not its file any more
    assert (tmp_path / ".lock").exists()
    newer.release()
    assert not (tmp_path / ".lock").exists()
