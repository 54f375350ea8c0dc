"""The TorchScript twins (``models/blocks/scriptable.py``) of all three blocks, scripted and eager: a scripted
parent runs each block as the block does (with ``hx``, with ``lengths``), and the twin it leaves behind is still the
public block when called eagerly (``hx``, ``lengths``, ``PackedSequence``) under the public name (issue 37's mutation
testing: an argument dropped or ``None`` in either branch fails here). float32, 1e-5 as the drop-in tests."""

import pytest
import torch
from helpers.dropin_pairs import CELLS, assert_same, flat, initial_state
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class _Parent(nn.Module):
    """Calls its block with every argument: TorchScript compiles the twin's forward(input, hx, lengths)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor, hx: object, lengths: torch.Tensor) -> object:
        return self.block(x, hx, lengths)


class _LstmParent(_Parent):
    def forward(self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor],  # type: ignore[override]
                lengths: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        return self.block(x, hx, lengths)


class _OneStateParent(_Parent):
    def forward(self, x: torch.Tensor, hx: torch.Tensor,  # type: ignore[override]
                lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.block(x, hx, lengths)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_scripted_and_eager_twins_are_the_block(cell: str) -> None:
    torch.manual_seed(0)
    block_cls = CELLS[cell][0]
    block = block_cls(3, 4, 2, merge_mode="sum", batch_first=True)
    x, lengths = torch.randn(3, 5, 3), torch.tensor([5, 2, 4])
    hx = initial_state(cell, 2, 3, 4)
    want = flat(block(x, hx, lengths=lengths))
    want_no_lengths = flat(block(x, hx))
    parent = (_LstmParent if cell == "lstm" else _OneStateParent)(block)
    scripted = torch.jit.script(parent)
    assert_same(flat(scripted(x, hx, lengths)), want)
    twin = parent.block
    assert twin is not block and isinstance(twin, block_cls)
    assert repr(twin) == repr(block) and twin._get_name() == block_cls.__name__
    assert_same(flat(twin(x, hx, lengths=lengths)), want)
    assert_same(flat(twin(x, hx)), want_no_lengths)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, state = twin(packed, hx)
    assert_same([pad_packed_sequence(out, batch_first=True)[0], *flat((out, state))[1:]], want)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_a_scripted_block_names_the_state_it_refuses(cell: str) -> None:
    """Under TorchScript the refusals name ``hx`` as in eager code: ``hx[0]``/``hx[1]`` for the LSTM's pair."""
    block = CELLS[cell][0](3, 4, 1)
    scripted = torch.jit.script((_LstmParent if cell == "lstm" else _OneStateParent)(block))
    x, lengths, good, bad = torch.randn(5, 2, 3), torch.tensor([5, 3]), torch.zeros(2, 2, 4), torch.zeros(2, 3, 4)
    shape = r" must have shape \(2 \* num_layers, B, hidden_size\) = \[2, 2, 4\], got \[2, 3, 4\]"
    if cell != "lstm":
        with pytest.raises(torch.jit.Error, match=r"(^|\s)hx" + shape):
            scripted(x, bad, lengths)
        return
    with pytest.raises(torch.jit.Error, match=r"(^|\s)hx\[0\]" + shape):
        scripted(x, (bad, good), lengths)
    with pytest.raises(torch.jit.Error, match=r"(^|\s)hx\[1\]" + shape):
        scripted(x, (good, bad), lengths)
