"""``PackedSequence`` in, ``PackedSequence`` out, on the blocks' variable-length path.

A packed batch is unpacked to a right-padded time-major batch in the caller's order plus ``lengths`` (no
per-step work), run through the blocks' ``lengths`` path (the CPU kernel or two fused calls per layer), and the
output packed back into the input's exact layout: the same ``batch_sizes``, ``sorted_indices`` and
``unsorted_indices``, data ``(N, *)`` where ``*`` is the merged feature shape. All three steps are
differentiable. ``h_n``/``c_n`` come out in the caller's order, as ``nn.LSTM`` returns them.
"""

from typing import Tuple

from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence


def unpack(packed: PackedSequence) -> Tuple[Tensor, Tensor]:
    """``packed`` -> ``(padded (T, B, F) time-major in the caller's order, zero-padded; lengths (B,) int64 on CPU)``."""
    if packed.data.dim() != 2:
        raise ValueError(
            f"a PackedSequence for the blocks must hold data of shape (N, input_size), got {list(packed.data.shape)}"
        )
    return pad_packed_sequence(packed, batch_first=False)


def repack(output: Tensor, lengths: Tensor, like: PackedSequence) -> PackedSequence:
    """``output (T, B, *)`` (caller's order, as ``unpack`` gave it) -> a ``PackedSequence`` laid out as ``like``."""
    if like.sorted_indices is not None:
        output = output.index_select(1, like.sorted_indices)
        lengths = lengths.index_select(0, like.sorted_indices.to(lengths.device))
    data = pack_padded_sequence(output, lengths, enforce_sorted=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)
