"""Masks and pooling over the valid steps of padded batches (batch-first, ``(B, T, ...)``).

Shared by the zoo's classifier and the Keras import: one definition of "valid step".
"""

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..merge import merge_directions


def lengths_to_mask(lengths: Tensor, seq_len: int) -> Tensor:
    """``lengths (B,)`` -> right-padded validity mask ``(B, T)`` (True at valid steps)."""
    steps = torch.arange(seq_len, device=lengths.device)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


def compact_valid_steps(x: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
    """Move the valid steps of every row to the front, keeping their order; zero what follows.

    ``x (B, T, ...)``, ``mask (B, T)`` bool -> ``(x_right_padded (B, T, ...), lengths (B,))``. Left padding,
    right padding and masked steps in the middle (Keras skips those) all become right padding, which the
    blocks' ``lengths`` path expects. Rows with no valid step keep length 1 (their first step) so every
    length is in ``[1, T]``; callers that care must check for empty rows themselves.
    """
    seq_len = mask.shape[1]
    # Sort the unique keys "is padding" * T + position: valid steps first, each group in its own order. A plain
    # argsort of unique keys is stable by construction and, unlike sort(stable=True), exports to ONNX.
    positions = torch.arange(seq_len, device=mask.device)
    order = torch.argsort((~mask).long() * seq_len + positions.unsqueeze(0), dim=1)    # (B, T)
    lengths = mask.sum(1).clamp(min=1)
    keep = lengths_to_mask(lengths, seq_len)
    for _ in range(x.dim() - 2):
        order = order.unsqueeze(-1)
        keep = keep.unsqueeze(-1)
    compact = x.gather(1, order.expand(x.shape))
    return compact.masked_fill(~keep, 0), lengths


def last_state(h_n: Tensor, merge_mode: Optional[str], valid_rows: Optional[Tensor] = None) -> Tensor:
    """What Keras's ``Bidirectional(return_sequences=False)`` returns, from a block's ``h_n (2L, B, H)``: the last
    layer's forward state (at each row's last valid step) and backward state (after step 0) merged with
    ``merge_mode`` -> ``(B, H)``, ``(B, 2H)`` for ``concat``, ``(B, 2, H)`` for ``None``. Rows whose
    ``valid_rows (B,)`` is False (no valid step) are zero."""
    last = merge_directions(h_n[-2], h_n[-1], merge_mode)
    if valid_rows is not None:
        keep = valid_rows
        while keep.dim() < last.dim():
            keep = keep.unsqueeze(-1)
        last = last.masked_fill(~keep, 0.0)
    return last


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over valid steps: ``x (B, T, D)``, ``mask (B, T)`` -> ``(B, D)``."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """Max over valid steps: ``x (B, T, D)``, ``mask (B, T)`` -> ``(B, D)``."""
    return x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)


class AdditiveAttentionPool(nn.Module):
    """Learned additive attention over valid steps (Bahdanau-style scoring, one query).

    ``score_t = v . tanh(W x_t + b)``; softmax over valid steps; returns the weighted sum ``(B, D)``.
    """

    def __init__(self, input_size: int, attention_size: int = 64) -> None:
        super().__init__()
        self.project = nn.Linear(input_size, attention_size)
        self.score = nn.Linear(attention_size, 1, bias=False)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x (B, T, D)``, ``mask (B, T)`` -> ``(B, D)``."""
        scores = self.score(torch.tanh(self.project(x))).squeeze(-1)               # (B, T)
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1).unsqueeze(-1)
        return (weights * x).sum(1)
