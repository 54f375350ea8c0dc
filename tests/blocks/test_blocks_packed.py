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



class _Elsewhere(torch.Tensor):
    """A host tensor standing for one on another device (a GPU's): an operation mixing it with a host tensor of one
    or more dimensions raises, as PyTorch does across devices, except ``_pack_padded_sequence``, which takes host
    lengths with data anywhere; ``.to(device)`` and ``.cpu()`` bring it to the host, ``.to(None)`` leaves it."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is torch.Tensor.cpu or (func is torch.Tensor.to and (
                any(isinstance(a, (str, torch.device)) for a in args[1:]) or kwargs.get("device") is not None)):
            return args[0].as_subclass(torch.Tensor).to(*args[1:], **kwargs)
        flat = [a for arg in list(args) + list(kwargs.values()) for a in (arg if isinstance(arg, (list, tuple))
                                                                            else [arg])]
        if getattr(func, "__name__", "") != "_pack_padded_sequence" and any(
                type(a) is torch.Tensor and a.dim() > 0 for a in flat):
            raise RuntimeError(f"{func.__name__}: expected all tensors to be on the same device, found the host "
                               "and another")
        return super().__torch_function__(func, types, args, kwargs)


def test_repack_sorts_host_lengths_with_indices_from_another_device() -> None:
    """On CUDA a ``PackedSequence``'s data and ``sorted_indices`` live on the GPU while ``unpack``'s lengths stay on
    the host, where ``pack_padded_sequence`` wants them: ``repack`` must bring the indices to the lengths. Without a
    GPU, the output and the indices are ``_Elsewhere`` (host tensors that refuse to mix with host tensors as a GPU's
    would): the output is packed as the input was."""
    packed = pack_sequence(sequences(), enforce_sorted=False)
    padded, lengths = unpack(packed)
    like = PackedSequence(packed.data, packed.batch_sizes, packed.sorted_indices.as_subclass(_Elsewhere),
                          packed.unsorted_indices.as_subclass(_Elsewhere))
    with pytest.raises(RuntimeError, match="expected all tensors to be on the same device"):
        lengths.index_select(0, like.sorted_indices)                 # the stand-in refuses to mix, as CUDA does
    output = torch.cat([padded, -padded], -1).as_subclass(_Elsewhere)
    again = repack(output, lengths, like)
    assert type(again.data) is _Elsewhere
    torch.testing.assert_close(again.data.as_subclass(torch.Tensor), torch.cat([packed.data, -packed.data], -1),
                               rtol=0, atol=0)
    assert again.batch_sizes.tolist() == packed.batch_sizes.tolist()
    assert again.sorted_indices is like.sorted_indices and again.unsorted_indices is like.unsorted_indices
