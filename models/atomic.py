"""Atomic, durable writes: every file the project writes goes through here.

A write goes to a temporary file in the target's folder (``.<name>.<random>.tmp``), which is fsynced, renamed
over the target (atomic on POSIX) and made durable by an fsync of the folder. A kill at any moment leaves the
old file or the new one, never half of one; a failed write (a full disk, a closed pipe) removes the temporary,
leaves the previous file as it was and raises one :class:`AtomicWriteError` (an ``OSError``) whose message is
one line naming the target.

- :func:`write_atomically` writes bytes, text, or whatever a ``writer(file)`` callable writes to a file-like
  object (``torch.save``, ``json.dump``, ...). Bytes reach the disk through ``os.write`` only, so a test can
  make the disk "full" at the N-th byte by wrapping ``os.write``.
- :func:`atomic_path` is for writers that only take a path (``onnx_program.save``): the block writes the
  temporary path it is given; on a normal exit that file becomes the target.
- :func:`remove_orphans` deletes the temporaries a killed write left behind (call it while holding the folder).
"""

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, List, Union

TEMP_SUFFIX = ".tmp"


class AtomicWriteError(OSError):
    """A write that did not happen; the previous file (if any) is intact and no temporary is left."""


def _one_line(error: BaseException) -> str:
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return " ".join(str(text).split()) or type(error).__name__


class _Sink:
    """A write-only file-like object over a descriptor, writing with ``os.write``. After the first failure it
    keeps the error and swallows what follows: a writer implemented in C++ (``torch.save``) must not see an
    exception in the middle of its own write, or it may abort the process."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.error: Union[OSError, None] = None
        self.written = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                offset = 0
                while offset < len(view):
                    count = os.write(self.fd, view[offset:])
                    if count <= 0:
                        raise OSError(errno.EIO, "write made no progress")
                    offset += count
                self.written += offset
            except OSError as error:
                self.error = error
        return len(view)

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.written


def fsync_folder(folder: Union[str, os.PathLike]) -> None:
    """Make a rename in ``folder`` durable (ignored where folders cannot be opened, e.g. Windows)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _temporary(path: Path) -> tuple:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)


def _fail(path: Path, error: BaseException) -> AtomicWriteError:
    code = error.errno if isinstance(error, OSError) and error.errno else errno.EIO
    return AtomicWriteError(code, f"could not write {path}: {_one_line(error)}; the previous file (if any) is "
                                  f"unchanged")


def _umask() -> int:
    """This process's umask without changing it (``os.umask`` sets it, racing other threads); 0o022 if unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _publish(temp: Path, path: Path, mode: int) -> None:
    os.chmod(temp, mode & ~_umask())                   # as open() would create it: the user's umask applies
    os.replace(temp, path)
    fsync_folder(path.parent)


def write_atomically(path: Union[str, os.PathLike], content: Union[bytes, str, Callable[[Any], None]],
                     mode: int = 0o644) -> Path:
    """Write ``content`` (bytes, UTF-8 text, or a ``writer(file)`` callable) to ``path`` atomically and durably.

    Raises :class:`AtomicWriteError` (one line) when the write fails; the previous ``path`` is then intact."""
    path = Path(path)
    try:
        handle, name = _temporary(path)
    except OSError as error:
        raise _fail(path, error) from error
    temp = Path(name)
    try:
        sink = _Sink(handle)
        if isinstance(content, str):
            sink.write(content.encode("utf-8"))
        elif isinstance(content, (bytes, bytearray, memoryview)):
            sink.write(content)
        else:
            content(sink)
        if sink.error is not None:
            raise sink.error
        os.fsync(handle)
        os.close(handle)
        handle = -1
        _publish(temp, path, mode)
    except BaseException as error:
        if handle >= 0:
            os.close(handle)
        temp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _fail(path, error) from error
        raise
    return path


@contextmanager
def atomic_path(path: Union[str, os.PathLike], mode: int = 0o644) -> Iterator[Path]:
    """``with atomic_path(target) as temp: writer(temp)``: ``temp`` (same folder) becomes ``target`` on a normal
    exit, fsynced; on an exception it is removed and ``target`` is left as it was."""
    path = Path(path)
    try:
        handle, name = _temporary(path)
        os.close(handle)
    except OSError as error:
        raise _fail(path, error) from error
    temp = Path(name)
    try:
        yield temp
        handle = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
        _publish(temp, path, mode)
    except BaseException as error:
        temp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _fail(path, error) from error
        raise


def orphans(folder: Union[str, os.PathLike]) -> List[Path]:
    """Temporaries of this module's writes left in ``folder`` (not recursive)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f".*{TEMP_SUFFIX}") if p.is_file() and not p.is_symlink())


def remove_orphans(folder: Union[str, os.PathLike]) -> List[Path]:
    """Delete the temporaries a killed write left in ``folder``; returns what was deleted. Only call it while
    no other process can be writing there (the run folder's lock held)."""
    removed = []
    for path in orphans(folder):
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


__all__ = ["AtomicWriteError", "atomic_path", "fsync_folder", "orphans", "remove_orphans", "write_atomically"]
