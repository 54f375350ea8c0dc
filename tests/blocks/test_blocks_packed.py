"""``models/blocks/packed.py`` on its own: ``unpack`` gives the caller's order with lengths, ``repack`` lays an
output out exactly as the input was packed (sorted or not), and a ``PackedSequence`` of other data is refused
word for word (issue 37's mutation testing)."""

import re

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pack_sequence

from models import BiGRU
from models.blocks.packed import repack, unpack


def sequences() -> list:
    """Three sequences of lengths 2, 4, 3 (unsorted) with 2 features, every value distinct."""
    return [torch.arange(n * 2, dtype=torch.float32).view(n, 2) + 10 * i for i, n in enumerate([2, 4, 3])]


@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_unpack_gives_the_callers_order_and_lengths(enforce_sorted: bool) -> None:
    seqs = sequences()
    if enforce_sorted:
        seqs = sorted(seqs, key=len, reverse=True)
    padded, lengths = unpack(pack_sequence(seqs, enforce_sorted=enforce_sorted))
    assert lengths.tolist() == [len(s) for s in seqs] and lengths.dtype == torch.int64
    assert padded.shape == (4, 3, 2)
    for b, seq in enumerate(seqs):
        torch.testing.assert_close(padded[:len(seq), b], seq, rtol=0, atol=0)
        assert (padded[len(seq):, b] == 0).all()


@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_repack_lays_an_output_out_as_the_input(enforce_sorted: bool) -> None:
    seqs = sequences()
    if enforce_sorted:
        seqs = sorted(seqs, key=len, reverse=True)
    packed = pack_sequence(seqs, enforce_sorted=enforce_sorted)
    padded, lengths = unpack(packed)
    output = torch.cat([padded, -padded], -1)                      # (T, B, 4): any per-step function of the input
    again = repack(output, lengths, packed)
    assert isinstance(again, PackedSequence)
    torch.testing.assert_close(again.data, torch.cat([packed.data, -packed.data], -1), rtol=0, atol=0)
    assert again.batch_sizes.tolist() == packed.batch_sizes.tolist()
    for ours, theirs in ((again.sorted_indices, packed.sorted_indices),
                         (again.unsorted_indices, packed.unsorted_indices)):
        assert (ours is None) == (theirs is None)
        assert ours is None or ours.tolist() == theirs.tolist()


def test_repack_keeps_extra_feature_axes() -> None:
    packed = pack_sequence(sequences(), enforce_sorted=False)
    padded, lengths = unpack(packed)
    output = torch.stack([padded, 2 * padded], -2)                 # (T, B, 2, F): merge_mode=None
    again = repack(output, lengths, packed)
    torch.testing.assert_close(again.data, torch.stack([packed.data, 2 * packed.data], -2), rtol=0, atol=0)


def test_packed_data_of_another_rank_is_refused_word_for_word() -> None:
    x = torch.randn(4, 3, 2, 2)
    packed = pack_padded_sequence(x, torch.tensor([4, 2, 3]), enforce_sorted=False)
    message = "a PackedSequence for the blocks must hold data of shape (N, input_size), got [9, 2, 2]"
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        unpack(packed)
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        BiGRU(2, 3)(packed)
