"""Keras ``Conv1D`` and ``MaxPooling1D`` / ``AveragePooling1D`` on ``(B, T, F)`` channels-last inputs.

Keras's padding rules: ``valid`` none; ``same`` a total of ``max((ceil(T / s) - 1) * s + k_eff - T, 0)``, the
odd step on the right (zeros for a convolution, excluded from a max or an average); ``causal`` ``k_eff - 1``
zeros on the left. Neither layer supports masking in Keras: the values at masked steps enter the result as
they are, and the mask ends here (both return ``None``).
"""

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .module import apply_activation


def same_padding(length: int, kernel: int, stride: int, dilation: int) -> Tuple[int, int]:
    """Keras ``same`` padding ``(left, right)`` for a time axis of ``length``."""
    effective = (kernel - 1) * dilation + 1
    out = (length + stride - 1) // stride
    total = max((out - 1) * stride + effective - length, 0)
    return total // 2, total - total // 2


class ConvStage(nn.Module):
    """Keras ``Conv1D``: ``(B, T, F)`` -> ``(B, T', filters)`` plus its activation; the mask ends."""

    __constants__ = ["padding", "stride", "dilation", "kernel", "activation"]

    def __init__(self, in_features: int, filters: int, kernel: int, stride: int, padding: str, dilation: int,
                 groups: int, bias: bool, activation: str) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_features, filters, kernel, stride=stride, dilation=dilation, groups=groups,
                              bias=bias)
        self.padding, self.stride, self.dilation, self.kernel = padding, stride, dilation, kernel
        self.activation = "silu" if activation == "swish" else activation

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        x = x.transpose(1, 2)
        if self.padding == "causal":
            x = nn.functional.pad(x, [(self.kernel - 1) * self.dilation, 0])
        elif self.padding == "same":
            left, right = same_padding(x.shape[-1], self.kernel, self.stride, self.dilation)
            x = nn.functional.pad(x, [left, right])
        return apply_activation(self.conv(x).transpose(1, 2), self.activation), None


class Pool1DStage(nn.Module):
    """Keras ``MaxPooling1D`` / ``AveragePooling1D`` over time; ``same`` padding is never part of a window's max
    or average (``-inf`` / excluded from the count); the mask ends."""

    __constants__ = ["mode", "size", "stride", "same"]

    def __init__(self, mode: str, size: int, stride: int, same: bool) -> None:
        super().__init__()
        self.mode, self.size, self.stride, self.same = mode, size, stride, same

    def extra_repr(self) -> str:
        return f"{self.mode}, size={self.size}, stride={self.stride}, same={self.same}"

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        x = x.transpose(1, 2)
        if self.same:
            left, right = same_padding(x.shape[-1], self.size, self.stride, 1)
            if self.mode == "max":
                x = nn.functional.pad(x, [left, right], value=float("-inf"))
                y = nn.functional.max_pool1d(x, self.size, self.stride)
            else:
                ones = torch.ones_like(x[:1, :1])
                total = nn.functional.avg_pool1d(nn.functional.pad(x, [left, right]), self.size, self.stride)
                count = nn.functional.avg_pool1d(nn.functional.pad(ones, [left, right]), self.size, self.stride)
                y = total / count
        elif self.mode == "max":
            y = nn.functional.max_pool1d(x, self.size, self.stride)
        else:
            y = nn.functional.avg_pool1d(x, self.size, self.stride)
        return y.transpose(1, 2), None
