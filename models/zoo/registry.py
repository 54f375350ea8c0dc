"""A model registry in the style of timm: ``@register_model`` factories, ``create_model``, ``list_models``.

A factory is a function ``name(**kwargs) -> nn.Module`` whose keyword arguments are the model's constructor
arguments (``SequenceClassifier``'s for the zoo); the first line of its docstring is the description that
``list_models`` shows::

    @register_model
    def bilstm(**kwargs) -> SequenceClassifier:
        \"\"\"2-layer BiLSTM, hidden 128, concat, last states (Keras return_sequences=False).\"\"\"
        ...

``list_models()`` returns the names, sorted, as a ``ModelList``: a plain ``list`` of ``str`` (compare it,
index it, pass its items to ``create_model``) whose printed form adds each model's description.
``describe_models()`` gives the same as a ``{name: description}`` dict.
"""

import fnmatch
import inspect
from typing import Any, Callable, Dict, List, Optional, Sequence

from torch import nn

__all__ = ["ModelList", "create_model", "describe_models", "list_models", "register_model"]

_ENTRYPOINTS: Dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: Dict[str, str] = {}
_ALLOWED: Dict[str, Optional[Sequence[str]]] = {}


class ModelList(list):
    """A list of model names whose ``repr`` shows each one's description (one model per line)."""

    def __repr__(self) -> str:
        if not self:
            return "[]"
        width = max(len(repr(name)) for name in self) + 1
        lines = [f"{repr(name) + ',':<{width}}  # {_DESCRIPTIONS.get(name, '')}" for name in self]
        return "[" + "\n ".join(lines) + "\n]"

    __str__ = __repr__


def _description(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


def register_model(
    fn: Optional[Callable[..., nn.Module]] = None, *, allowed_kwargs: Optional[Sequence[str]] = None
) -> Any:
    """Register a model factory under its function name (as timm's ``@register_model``).

    Use as ``@register_model`` or ``@register_model(allowed_kwargs=[...])``. ``allowed_kwargs`` names the
    overrides ``create_model`` accepts; by default they are the keyword parameters of the class the factory
    is annotated to return (``-> SequenceClassifier``), else anything. Registering a name twice raises
    ``ValueError``; a factory without a docstring raises ``ValueError`` (``list_models`` shows its first line).
    """

    def register(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = factory.__name__
        if name in _ENTRYPOINTS:
            raise ValueError(f"a model named {name!r} is already registered")
        description = _description(factory)
        if not description:
            raise ValueError(f"model factory {name!r} needs a docstring: its first line describes the model")
        allowed = allowed_kwargs
        if allowed is None:
            allowed = _constructor_kwargs(factory)
        _ENTRYPOINTS[name] = factory
        _DESCRIPTIONS[name] = description
        _ALLOWED[name] = None if allowed is None else tuple(allowed)
        return factory

    if fn is not None:
        return register(fn)
    return register


def _constructor_kwargs(factory: Callable[..., Any]) -> Optional[List[str]]:
    """Keyword parameters of the class the factory returns (from its return annotation), or None if unknown."""
    try:
        returned = inspect.signature(factory, eval_str=True).return_annotation
    except (NameError, TypeError, ValueError):
        return None
    if not inspect.isclass(returned) or returned is nn.Module:
        return None
    params = inspect.signature(returned.__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def list_models(pattern: str = "") -> ModelList:
    """Registered model names, sorted, optionally filtered by a shell-style ``pattern`` (``"bilstm*"``).

    The result is a list of ``str``; printing it shows each model's one-line description.
    """
    names = sorted(_ENTRYPOINTS)
    if pattern:
        names = [name for name in names if fnmatch.fnmatch(name, pattern)]
    return ModelList(names)


def describe_models(pattern: str = "") -> Dict[str, str]:
    """``{name: description}`` for the registered models (filtered as ``list_models``)."""
    return {name: _DESCRIPTIONS[name] for name in list_models(pattern)}


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the registered model ``name``; ``overrides`` replace its preset arguments.

    Raises ``ValueError`` for an unknown name (listing the known ones) and ``TypeError`` for an override the
    model does not take (naming it and listing the allowed ones). Invalid values raise the model's own
    ``ValueError``.
    """
    if name not in _ENTRYPOINTS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(_ENTRYPOINTS))}")
    allowed = _ALLOWED[name]
    if allowed is not None:
        unknown = [key for key in overrides if key not in allowed]
        if unknown:
            raise TypeError(
                f"create_model({name!r}) got unknown override(s) {', '.join(repr(k) for k in unknown)}; "
                f"allowed: {', '.join(allowed)}"
            )
    return _ENTRYPOINTS[name](**overrides)
