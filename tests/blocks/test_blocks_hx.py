"""Initial states ``hx`` given to a multi-layer block whose merge mode is not ``concat`` (issue 37): layer ``l``
starts from rows ``2l`` (forward) and ``2l + 1`` (backward) of ``h_0``/``c_0``, as ``nn.LSTM``'s layout says, on
PyTorch's path and on the kernel's, with and without ``lengths``."""

from typing import Iterator

import pytest
import torch
from torch import nn

from models import BiGRU, BiLSTM
from models.blocks import cpu_kernel

BLOCKS = {"lstm": (BiLSTM, nn.LSTM), "gru": (BiGRU, nn.GRU)}
MERGES = {"sum": lambda f, b: f + b, "mul": lambda f, b: f * b, "ave": lambda f, b: (f + b) / 2,
          "concat": lambda f, b: torch.cat([f, b], -1)}
TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(params=["aten", "cpu-kernel"])
def cpu_path(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "aten":
        with cpu_kernel.disabled():
            yield request.param
        return
    if not cpu_kernel.available():
        pytest.skip("CPU kernel not built (tests/kernel/test_cpu_kernel.py says why)")
    with cpu_kernel.forced():
        yield request.param


def one_layer(block: nn.Module, cell: str, layer: int) -> nn.Module:
    """A one-layer bidirectional nn.LSTM/nn.GRU holding ``block``'s weights of ``layer``."""
    reference = BLOCKS[cell][1](getattr(block, f"weight_ih_l{layer}").shape[1], block.hidden_size, bidirectional=True)
    with torch.no_grad():
        for suffix in ("", "_reverse"):
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(reference, f"{kind}_l0{suffix}").copy_(getattr(block, f"{kind}_l{layer}{suffix}"))
    return reference


@pytest.mark.parametrize("cell", BLOCKS)
@pytest.mark.parametrize("modes", [["sum", "sum", "sum"], ["ave", "mul", "sum"], ["mul", "concat", "ave"]],
                         ids=lambda m: "-".join(m))
@pytest.mark.parametrize("with_lengths", [False, True])
def test_each_layer_starts_from_its_own_rows_of_hx(cpu_path: str, cell: str, modes: list,
                                                   with_lengths: bool) -> None:
    layers, hidden, batch, steps = 3, 5, 4, 6
    block = BLOCKS[cell][0](3, hidden, num_layers=layers, merge_mode=modes)
    x = torch.randn(steps, batch, 3)
    h0 = torch.randn(2 * layers, batch, hidden)
    c0 = torch.randn(2 * layers, batch, hidden)
    hx = (h0, c0) if cell == "lstm" else h0
    lengths = torch.tensor([6, 2, 5, 1]) if with_lengths else None
    out, state = block(x, hx, lengths=lengths) if with_lengths else block(x, hx)

    expected, finals = x, []
    for layer, mode in enumerate(modes):
        rows = slice(2 * layer, 2 * layer + 2)
        start = (h0[rows], c0[rows]) if cell == "lstm" else h0[rows]
        reference = one_layer(block, cell, layer)
        if with_lengths:
            packed = nn.utils.rnn.pack_padded_sequence(expected, lengths, enforce_sorted=False)
            full, final = reference(packed, start)
            full = nn.utils.rnn.pad_packed_sequence(full, total_length=steps)[0]
        else:
            full, final = reference(expected, start)
        expected = MERGES[mode](full[..., :hidden], full[..., hidden:])
        finals.append(final)
    if with_lengths:                                   # padded steps of the output are zeros, as pad_packed gives
        valid = (torch.arange(steps)[:, None] < lengths[None, :])[..., None]
        out, expected = out * valid, expected * valid
    torch.testing.assert_close(out, expected, **TOL)
    if cell == "lstm":
        torch.testing.assert_close(state[0], torch.cat([f[0] for f in finals]), **TOL)
        torch.testing.assert_close(state[1], torch.cat([f[1] for f in finals]), **TOL)
    else:
        torch.testing.assert_close(state, torch.cat(finals), **TOL)
