"""Shared aids of the CPU kernel's tests: a private calibration cache, a recorder of the bf16 kernel's calls, and spies
on the float kernel's all-layers calls (the library's entry points, and a plan's serving call)."""

import ctypes
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest
from torch import nn

from models.blocks import cpu_kernel
from models.blocks.cpu_kernel import abi, bf16, build, calibrate, inference


def serving_call_available() -> bool:
    """The kernel and its serving call (``birnn_fast_call``: a C++ compiler and Python's C headers) are built here;
    building them the first time this is asked."""
    return cpu_kernel.available() and inference._fast_call_module() is not None


needs_serving_call = pytest.mark.skipif(not serving_call_available(), reason="the CPU kernel or its serving call "
                                        "is not built here (tests/kernel/test_cpu_kernel.py and "
                                        "test_the_serving_call_builds_where_pythons_headers_are say why)")


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


class StackSpy:
    """The kernel library with its all-layers entry points (``birnn_forward_stack_f32``/``_f64``) replaced by
    C-callable functions that hand ``record`` the entry's name and a copy of the call's ``abi.Args``, then run the
    real entry. C-callable because a plan's serving call (``csrc/fast_call.cpp``) calls the entry through its
    address, taken when the plan is made: install the spy (``cpu_kernel._kernel``) before the block's first call."""

    _PROTOTYPE = ctypes.CFUNCTYPE(None, ctypes.POINTER(abi.Args))

    def __init__(self, library: Any, record: Callable[[str, abi.Args], Any]) -> None:
        self._library = library
        self._record = record
        self._entries: Dict[str, Any] = {}  # kept alive: the C code holds their addresses

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._library, name)
        if not name.startswith("birnn_forward_stack_"):
            return target
        if name not in self._entries:
            def entry(args: Any) -> None:
                self._record(name, abi.Args.from_buffer_copy(args.contents))
                target(args)
            self._entries[name] = self._PROTOTYPE(entry)
        return self._entries[name]


def count_serving_calls(fast: Any) -> List[int]:
    """Wrap ``fast.call`` (a cached plan's serving call, ``inference._FastCall``) to count the calls that ran the
    kernel (returned outputs rather than None); the list grows by one per such call."""
    calls: List[int] = []
    original = fast.call

    def counting(*args: Any) -> Optional[Any]:
        result = original(*args)
        if result is not None:
            calls.append(1)
        return result

    fast.call = counting
    return calls
