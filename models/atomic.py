"""``write_atomically(path, write)``: the one way the project writes a file (checkpoints, exports and their JSON,
``save_pretrained`` folders, predictions, evaluation results)."""

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from .arguments import PathLike


def write_atomically(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` through ``write(file)`` into a temp file in the same folder, fsync, ``os.replace``: a kill at
    any moment leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    # Make the rename itself durable.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path
