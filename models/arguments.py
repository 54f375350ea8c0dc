"""Argument conventions shared by every layer of the package: one path type, one check per kind of number.

Each check raises ``ValueError`` naming the argument, the value and what is expected, before any compute.
"""

import os
from typing import Union

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
