"""Padded token-id batches shared by the zoo tests."""

from typing import Sequence

import torch


def padded_tokens(seq_len: int, lengths: Sequence[int], vocab: int, left: bool = False) -> torch.Tensor:
    """Random ids in ``[1, vocab)``, shape ``(len(lengths), seq_len)``; each row padded with id 0 after its
    length (before it with ``left``, as Keras's ``pad_sequences``)."""
    ids = torch.randint(1, vocab, (len(lengths), seq_len))
    for row, length in enumerate(lengths):
        if left:
            ids[row, : seq_len - length] = 0
        else:
            ids[row, length:] = 0
    return ids


def mixed_lengths(batch: int, seq_len: int) -> list:
    """A full-length row, a length-1 row, then random lengths: ``batch`` lengths in ``[1, seq_len]``."""
    return [seq_len, 1, *torch.randint(2, seq_len + 1, (max(batch - 2, 0),)).tolist()][:batch]
