"""Keras normalisation and reshaping layers: ``BatchNormalization`` (inference: moving statistics) and
``LayerNormalization`` over the last axis pass the mask on, as in Keras; ``Flatten``, ``Reshape``, ``Permute``
and ``RepeatVector`` do not support masking in Keras and end it.
"""

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn


class NormStage(nn.Module):
    """``BatchNormalization`` (``batch``: moving mean and variance) or ``LayerNormalization`` over the last axis:
    ``(x - mean) * rsqrt(var + epsilon) * gamma + beta`` (``gamma``/``beta`` absent without scale/center)."""

    __constants__ = ["batch", "epsilon", "scale", "center"]

    def __init__(self, features: int, batch: bool, epsilon: float, scale: bool, center: bool) -> None:
        super().__init__()
        self.batch, self.epsilon, self.scale, self.center = batch, epsilon, scale, center
        self.gamma = nn.Parameter(torch.ones(features)) if scale else None
        self.beta = nn.Parameter(torch.zeros(features)) if center else None
        if batch:
            self.register_buffer("moving_mean", torch.zeros(features))
            self.register_buffer("moving_variance", torch.ones(features))
        else:
            self.moving_mean, self.moving_variance = None, None

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        if self.moving_mean is not None and self.moving_variance is not None:
            mean, var = self.moving_mean, self.moving_variance
        else:
            mean = x.mean(-1, keepdim=True)
            var = (x - mean).square().mean(-1, keepdim=True)
        y = (x - mean) * torch.rsqrt(var + self.epsilon)
        if self.gamma is not None:
            y = y * self.gamma
        if self.beta is not None:
            y = y + self.beta
        return y, mask


class ShapeStage(nn.Module):
    """``Flatten`` (``(B, ...)`` -> ``(B, -1)``), ``Reshape`` (``(B, *shape)``), ``Permute`` (``dims``, 1-based as
    Keras), ``RepeatVector`` (``(B, F)`` -> ``(B, n, F)``); the mask ends."""

    __constants__ = ["op", "n"]
    shape: List[int]

    def __init__(self, op: str, shape: List[int], n: int) -> None:
        super().__init__()
        self.op, self.n = op, n
        self.shape = list(shape)

    def extra_repr(self) -> str:
        return f"{self.op}, {self.shape if self.op != 'repeat' else self.n}"

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        if self.op == "flatten":
            return x.reshape(x.shape[0], -1), None
        if self.op == "reshape":
            return x.reshape([x.shape[0]] + self.shape), None
        if self.op == "permute":
            return x.permute([0] + self.shape), None
        return x.unsqueeze(1).expand(x.shape[0], self.n, x.shape[1]), None
