"""Optional modules in tests: a missing one skips each test that needs it, with the reason, never a whole file at
import (issue 37: no test passes empty, and ``-rs`` lists every test a missing extra left unrun).

    keras, needs_keras = optional_import("keras", "the Keras tests need keras (pip install -e '.[dev]')")
    pytestmark = needs_keras
    layers = keras.layers

The reason starts as ``pytest.importorskip``'s does (``could not import 'keras': ...``), so ``tests/conftest.py``
fails the skip under ``BIRNN_ZOO_CI=1`` when CI should have installed the module.
"""

import functools
import importlib
from typing import Any, Callable, Tuple

import pytest


class Absent:
    """Stands in for a module that is not installed, so the test file's module-level code (``layers.LSTM`` in a
    table, ``@given(...)`` decorators, ``st.DrawFn`` annotations) still runs and every test is still collected,
    then skipped by the mark. Attributes and calls give another ``Absent``; used as a decorator on a function it
    gives back a function of the same name and signature that never runs the original."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> "Absent":
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return Absent(f"{self._name}.{attribute}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and callable(args[0]) and not isinstance(args[0], Absent):
            function: Callable[..., Any] = args[0]

            @functools.wraps(function)
            def never_run(*inner: Any, **inner_kwargs: Any) -> "Absent":
                return Absent(f"{self._name}(...)")

            return never_run
        return Absent(f"{self._name}(...)")

    def __iter__(self) -> Any:
        return iter(())

    def __repr__(self) -> str:
        return f"<{self._name}: not installed>"


def optional_import(name: str, reason: str) -> Tuple[Any, pytest.MarkDecorator]:
    """``(module, mark)``: the module and a mark that skips nothing, or an :class:`Absent` stand-in and a mark that
    skips every test it marks with ``could not import '<name>': <error>; <reason>``."""
    try:
        return importlib.import_module(name), pytest.mark.skipif(False, reason=reason)
    except ImportError as error:
        return Absent(name), pytest.mark.skip(reason=f"could not import {name!r}: {error}; {reason}")
