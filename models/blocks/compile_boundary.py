"""What ``torch.compile`` must not trace into, marked without importing ``torch._dynamo`` when ``models`` is imported.

``torch.compiler.disable`` and ``torch.compiler.assume_constant_result`` import ``torch._dynamo`` (about a second
on a fast CPU, several on a busy one) the moment they are applied, so applying them at module level would make
every ``import models`` pay for a compiler most programs never call. Here:

- ``constant_when_traced(fn)`` marks ``fn`` as ``assume_constant_result`` does: Dynamo calls it once while it
  traces and puts its result in the graph as a constant. That decorator only sets the attribute set here
  (``tests/blocks/test_import_side_effects.py`` checks that it still does).
- ``exporting()`` is ``torch.compiler.is_exporting()`` read for real while Dynamo traces: torch 2.11's Dynamo
  folds that call to True under every ``torch.compile`` trace (torch 2.13 reads the flag), which would take a
  ``torch.compile`` for a ``torch.export``.
- ``eager_under_compile(fn)`` is ``fn`` in eager code; while Dynamo traces, it calls
  ``torch.compiler.disable(fn)`` (one graph break, ``fn`` runs as eager PyTorch), made on the first trace by a
  ``constant_when_traced`` function, so the first trace breaks the graph exactly where later ones do.
"""

from typing import Any, Callable, Dict, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "_dynamo_marked_constant"  # what torch._dynamo.assume_constant_result sets (torch 2.13)
_eager: Dict[str, Callable[..., Any]] = {}     # name -> the function
_disabled: Dict[str, Callable[..., Any]] = {}  # name -> torch.compiler.disable(that function), made while tracing


def constant_when_traced(fn: F) -> F:
    """``torch.compiler.assume_constant_result(fn)`` without importing ``torch._dynamo`` now."""
    setattr(fn, _MARK, True)
    return fn


@constant_when_traced
def exporting() -> bool:
    """True inside ``torch.export`` only (not ``torch.compile``), on every supported torch."""
    return torch.compiler.is_exporting()


@constant_when_traced
def _disable(name: str) -> bool:
    """Make ``_disabled[name]`` (Dynamo runs this as a constant while tracing: no graph break of its own)."""
    if name not in _disabled:
        _disabled[name] = torch.compiler.disable(_eager[name])
    return True


def eager_under_compile(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, left to eager PyTorch under ``torch.compile`` (one graph break per call); ``name`` is unique."""
    if name in _eager:
        raise ValueError(f"eager_under_compile: the name {name!r} is taken")
    _eager[name] = fn

    def call(*args: Any) -> Any:
        if torch.compiler.is_compiling() and _disable(name):
            return _disabled[name](*args)
        return fn(*args)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = fn.__doc__
    return call
