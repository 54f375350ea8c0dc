"""Checkpoints that survive a kill and load without unpickling code.

``save_checkpoint`` writes through :func:`models.atomic.write_atomically` (a temporary file in the target folder,
fsync, ``os.replace`` over the old one, fsync of the folder), so a kill at any moment leaves either the old or the new
checkpoint, never half of one. ``load_checkpoint`` uses ``torch.load(weights_only=True)`` only and turns every way a
file can be wrong (missing, truncated, not a checkpoint, missing keys) into one clear ``ValueError``.

A checkpoint is a plain dict of tensors and Python primitives:
``format, model, optimizer, scheduler, scaler, rng, progress, config``, and (runs since preprocessing was
recorded) ``preprocessing``: the vocabulary, tokenizer settings, class names and input kind the model needs at
inference (``models/data/preprocessing.py``), read back by :func:`read_preprocessing`.

Files are written with :func:`models.atomic.write_atomically`.
"""

import logging
import random
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from ..arguments import PathLike
from ..atomic import write_atomically

log = logging.getLogger(__name__)

FORMAT = "birnn-zoo/checkpoint/v1"
REQUIRED_KEYS = ("format", "model", "optimizer", "scheduler", "scaler", "rng", "progress", "config")


def capture_rng_state() -> Dict[str, Any]:
    """Every RNG a run draws from (torch CPU and CUDA, Python, NumPy) as tensors and primitives."""
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        # NumPy's state holds an ndarray, which weights_only refuses: store the key as a tensor.
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
    }


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, key, *rest = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))


def capture_cpu_path() -> Dict[str, Any]:
    """What the CPU policy decides with (table or this CPU's calibration, thread count, capability): a resume
    pins it, so its kernel-or-PyTorch choices, and so its bits, are the checkpointed run's on any machine."""
    from ..blocks.cpu_kernel import calibrate

    return calibrate.record()


def restore_cpu_path(checkpoint: Dict[str, Any]) -> None:
    """Pin the checkpoint's ``cpu_path`` for this process (older checkpoints hold none: nothing changes)."""
    if checkpoint.get("cpu_path") is not None:
        from ..blocks.cpu_kernel import calibrate

        calibrate.pin(checkpoint["cpu_path"])


def save_checkpoint(checkpoint: Dict[str, Any], path: PathLike) -> Path:
    """Atomically write ``checkpoint`` to ``path`` (temp file in the same folder, fsync, ``os.replace``), with the
    CPU policy's record under ``cpu_path`` (``capture_cpu_path``) unless it holds one."""
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint to save lacks keys {missing}; expected {list(REQUIRED_KEYS)}")
    if "cpu_path" not in checkpoint:
        checkpoint = {**checkpoint, "cpu_path": capture_cpu_path()}
    # torch.save writes through the helper's os.write sink: a full disk is one AtomicWriteError, the old file stays.
    write_atomically(path, lambda file: torch.save(checkpoint, file))
    return path


def resolve_checkpoint_path(resume: PathLike) -> Path:
    """``trainer.resume`` may name a checkpoint file or a run folder (then ``checkpoints/last.pt`` in it)."""
    path = Path(resume).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise ValueError(
            f"trainer.resume={str(resume)!r}: no checkpoint at {path}; give a run folder holding "
            f"checkpoints/last.pt or a .pt checkpoint file"
        )
    return path


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load and check a checkpoint written by :func:`save_checkpoint` (``weights_only=True``, never unpickles)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, wrong magic, disallowed globals, ...
        first = str(error).splitlines()[0] if str(error) else ""
        if "weights_only" in str(error) or "Unpickl" in str(error):   # never relay torch's advice to unpickle
            first = "it holds data a weights-only load refuses"
        raise ValueError(
            f"checkpoint {path} is corrupted, truncated or not a birnn-zoo checkpoint "
            f"({type(error).__name__}: {first})"
        ) from error
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint {path} holds a {type(checkpoint).__name__}, expected a dict")
    if checkpoint.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} has format {checkpoint.get('format')!r}, expected {FORMAT!r}")
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint {path} lacks keys {missing}; expected {list(REQUIRED_KEYS)}")
    return checkpoint


def read_preprocessing(checkpoint: Dict[str, Any], path: PathLike) -> Optional[Any]:
    """The checkpoint's :class:`~models.data.preprocessing.Preprocessing`, validated; None (and one log line) for a
    checkpoint written before runs recorded it. A tampered record raises ``PreprocessingError`` naming ``path``."""
    from ..data.preprocessing import Preprocessing, PreprocessingError

    record = checkpoint.get("preprocessing")
    if record is None:
        log.warning("checkpoint %s has no preprocessing (written before runs recorded it): no vocabulary or class "
                    "names; give token ids and read class indices", path)
        return None
    try:
        return Preprocessing.from_dict(record)
    except PreprocessingError as error:
        raise PreprocessingError(f"checkpoint {path}: {error}") from error
