"""A batch reordered by its rows and back: the CPU kernel's training path runs a batch with ``lengths`` longest first
(``cpu_kernel/csrc/args.h``, ``StepRows``: its products and gradient sums then skip the rows already padded)."""

from typing import Any, Optional, Tuple

import torch
from torch import Tensor


class _Reorder(torch.autograd.Function):
    """``x.index_select(dim, order)`` for a permutation ``order`` whose inverse is ``inverse``: the gradient is the
    inverse gather, not ``index_select``'s zero fill and scatter-add."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, dim: int, order: Tensor, inverse: Tensor) -> Tensor:
        ctx.dim = dim
        ctx.save_for_backward(inverse)
        return x.index_select(dim, order)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], None, None, None]:
        (inverse,) = ctx.saved_tensors
        return grad.index_select(ctx.dim, inverse), None, None, None


def longest_first(lengths: Tensor) -> Tuple[Tensor, Tensor]:
    """``order, inverse (B,)``: ``lengths[order]`` is sorted longest first (ties in their given order), and
    ``inverse`` undoes ``order``."""
    order = torch.argsort(lengths, descending=True, stable=True)
    return order, torch.argsort(order)


def reorder(x: Tensor, dim: int, order: Tensor, inverse: Tensor) -> Tensor:
    """``x``'s rows along ``dim`` in the permutation ``order`` (``inverse`` is its inverse); differentiable, and
    twice differentiable."""
    return _Reorder.apply(x, dim, order, inverse)
