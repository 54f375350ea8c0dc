"""Argument conventions shared by every layer of the package: one path type, one check per kind of value.

Each check raises ``ValueError`` naming the argument (or config key), the value and what is expected, before any
compute. The package checks arguments and config keys with these functions only.
"""

import os
from typing import Iterable, Type, Union

PathLike = Union[str, "os.PathLike[str]"]
"""A file or folder argument: a ``str`` or any ``os.PathLike`` (``pathlib.Path``)."""


def check_positive_int(name: str, value: object) -> None:
    """``value`` must be an ``int`` >= 1 (``bool`` is not an int here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_probability(name: str, value: object) -> None:
    """``value`` must be an ``int`` or ``float`` in ``[0, 1]`` (a dropout rate)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a float in [0, 1], got {value!r}")


# A config key (``data.batch_size``, ``model.cell``): the same checks, in the words of the YAML files (true/false,
# null). ``error``: the ValueError subclass to raise (the training app's ``ConfigError``).

def check_choice(name: str, value: object, choices: Iterable[object], error: Type[ValueError] = ValueError) -> None:
    """``value`` must be one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise error(f"{name}={value!r} is not allowed; choose one of {choices}")


def check_int(name: str, value: object, minimum: int, nullable: bool = False) -> None:
    """``value`` must be an ``int`` >= ``minimum`` (``bool`` is not an int here); ``nullable``: or None."""
    if value is None and nullable:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r}: expected an integer >= {minimum}" + (" or null" if nullable else ""))


def check_bool(name: str, value: object) -> None:
    """``value`` must be ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: expected true or false")


def check_fraction(name: str, value: object, allow_zero: bool = False) -> None:
    """``value`` must be a number in ``(0, 1)``; ``allow_zero``: in ``[0, 1)`` (0: no validation split)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0 or (
            value == 0 and not allow_zero):
        expected = "a number in [0, 1) (0: no validation split)" if allow_zero else "a number strictly between 0 and 1"
        raise ValueError(f"{name}={value!r}: expected {expected}")


def plain(node: object) -> object:
    """An OmegaConf node as plain, resolved Python containers; any other value as it is.

    omegaconf is imported only for its own nodes, so the library's non-Hydra paths never load it."""
    if type(node).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(node, resolve=True)  # type: ignore[arg-type]
    return node
