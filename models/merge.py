"""Keras merge modes for the two directions of a bidirectional layer.

This is the only place the Keras words ``concat``, ``sum``, ``mul``, ``ave`` (and ``None``) are
spelled: everything else asks this module.

| mode     | merged output ``(T, B, ·)``       | next layer reads |
|----------|-----------------------------------|------------------|
| concat   | ``[fw, bw]`` on the last axis, 2H | 2H               |
| sum      | ``fw + bw``, H                    | H                |
| mul      | ``fw * bw``, H                    | H                |
| ave      | ``(fw + bw) / 2``, H              | H                |
| None     | ``stack([fw, bw], -2)``, (2, H)   | last layer only  |
"""


from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor

MERGE_MODES = ("concat", "sum", "mul", "ave")
"""Modes allowed after every layer; ``None`` is allowed after the last layer only."""

MergeMode = Union[Optional[str], Sequence[Optional[str]]]


class MergeModes(List[Optional[str]]):
    """One merge mode per layer, already checked: what :func:`resolve_merge_modes` returns. Passed back to it
    (a classifier hands its modes to its block; the training app checks ``model.merge_mode`` once and builds
    with the result), it is used as it is, not checked again. A plain list to everything else (TorchScript,
    ``repr``, ``==``)."""


def resolve_merge_modes(merge_mode: MergeMode, num_layers: int) -> List[Optional[str]]:
    """Expand ``merge_mode`` (one mode, or a list with one per layer) to a :class:`MergeModes` of ``num_layers``
    modes; a :class:`MergeModes` of ``num_layers`` modes comes back as it is.

    Raises ``ValueError`` naming the argument, the value and the choices for an unknown mode, a list of
    the wrong length, or ``None`` before the last layer.
    """
    if isinstance(merge_mode, MergeModes) and len(merge_mode) == num_layers:
        return merge_mode
    return MergeModes(check_merge_modes(merge_mode, num_layers))


def check_merge_modes(merge_mode: MergeMode, num_layers: int) -> List[Optional[str]]:
    """The one check of a ``merge_mode`` argument (see :func:`resolve_merge_modes`): its ``num_layers`` modes."""
    if merge_mode is None or isinstance(merge_mode, str):
        modes: List[Optional[str]] = [merge_mode] * num_layers
        given_as_list = False
    elif isinstance(merge_mode, (list, tuple)) or hasattr(merge_mode, "__iter__"):
        modes = list(merge_mode)
        given_as_list = True
        if len(modes) != num_layers:
            raise ValueError(
                f"merge_mode={list(merge_mode)!r} has {len(modes)} entries but num_layers={num_layers}; "
                f"give one mode per layer or a single mode from {list(MERGE_MODES)}"
            )
    else:
        raise TypeError(
            f"merge_mode must be a string, None or a list of them, got {type(merge_mode).__name__}: "
            f"{merge_mode!r}"
        )
    for layer, mode in enumerate(modes):
        if mode is None:
            if layer != num_layers - 1:
                where = f"merge_mode[{layer}]" if given_as_list else "merge_mode"
                raise ValueError(
                    f"{where}=None is only allowed for the last layer (layer {num_layers - 1}); layer "
                    f"{layer} feeds the next layer, so choose one of {list(MERGE_MODES)}"
                )
        elif not isinstance(mode, str) or mode not in MERGE_MODES:
            where = f"merge_mode[{layer}]" if given_as_list else "merge_mode"
            raise ValueError(f"{where}={mode!r} is not a merge mode; choose one of {list(MERGE_MODES)} or None")
    return modes


def merged_size(mode: Optional[str], hidden_size: int) -> int:
    """Feature size of a merged output: ``2 * hidden_size`` for ``concat`` and ``None``, else ``hidden_size``."""
    if mode is None or mode == "concat":
        return 2 * hidden_size
    return hidden_size


def merge_directions(forward: Tensor, backward: Tensor, mode: Optional[str]) -> Tensor:
    """Merge two ``(..., H)`` direction outputs: ``(..., 2H)`` for concat, ``(..., 2, H)`` for None, else
    ``(..., H)``."""
    # None first: TorchScript refines Optional[str] to str only after an explicit None check.
    if mode is None:
        return torch.stack([forward, backward], -2)
    if mode == "concat":
        return torch.cat([forward, backward], -1)
    if mode == "sum":
        return forward + backward
    if mode == "mul":
        return forward * backward
    if mode == "ave":
        return (forward + backward) / 2
    raise ValueError("merge mode must be one of 'concat', 'sum', 'mul', 'ave' or None, got " + mode)


def merge_stacked(output: Tensor, mode: Optional[str], hidden_size: int) -> Tensor:
    """Merge a fused bidirectional output ``(T, B, 2H)`` (forward in ``[..., :H]``) without copying for concat."""
    if mode is None:
        return output.unflatten(-1, (2, hidden_size))
    if mode == "concat":
        return output
    return merge_directions(output[..., :hidden_size], output[..., hidden_size:], mode)
