"""Shared aids of the CPU kernel's tests: a private calibration cache, and a recorder of the bf16 kernel's calls."""

from pathlib import Path
from typing import Any, Iterator, List

import pytest
from torch import nn

from models.blocks.cpu_kernel import bf16, build, calibrate


def isolate_calibrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Calibrations read and written in ``tmp_path`` (the library itself still loads from the real kernel cache),
    nothing read or pinned before or after: ``yield from`` it in a fixture."""
    real = build.cache_dir()
    monkeypatch.setattr(build, "cache_dir", lambda root=None: tmp_path if root is None else real)
    calibrate.forget()
    calibrate.pin(None)
    yield tmp_path
    calibrate.forget()
    calibrate.pin(None)


def record_bf16_calls(monkeypatch: pytest.MonkeyPatch) -> List[str]:
    """The cells of the calls that run on the bf16 kernel, appended as they happen (``bf16.run`` replaced by a
    recorder that still runs it)."""
    calls: List[str] = []
    original = bf16.run

    def recording(module: nn.Module, mode: str, *args: Any) -> Any:
        calls.append(mode)
        return original(module, mode, *args)

    monkeypatch.setattr(bf16, "run", recording)
    return calls
