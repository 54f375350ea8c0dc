"""A kernel layer's outputs that the loss does not reach (the stash for the reverse loop, often ``h_n``/``c_n``,
sometimes ``out``) get no gradient at all: the backward neither zero-fills gradients for the stash (``(T, B, 2, G)``
and more per layer) nor differs from ``nn.LSTM``/``nn.GRU`` when only some outputs are used."""

from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from models import BiGRU, BiLSTM
from models.blocks import cpu_kernel

needs_kernel = pytest.mark.skipif(not cpu_kernel.available(), reason="CPU kernel not built (see test_kernel_builds)")

STEPS, BATCH, FEATURES, HIDDEN = 9, 4, 5, 6
FILLS = {"fill_", "zero_", "zeros", "new_zeros", "zeros_like", "full", "new_full"}


class ZeroFills(TorchDispatchMode):
    """Records the element count of every tensor made or filled with a constant while active."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: List[int] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Tuple[Any, ...] = (),
                           kwargs: Optional[Dict[str, Any]] = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in FILLS and isinstance(out, Tensor):
            self.sizes.append(out.numel())
        return out


def pair(cell: str) -> Tuple[nn.Module, nn.Module]:
    """A float64 block and the ``nn`` module with its weights."""
    reference = getattr(nn, cell)(FEATURES, HIDDEN, 2, bidirectional=True).double()
    block = (BiLSTM if cell == "LSTM" else BiGRU)(FEATURES, HIDDEN, 2).double()
    block.load_state_dict(reference.state_dict())
    return block, reference


LOSSES: Dict[str, Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]] = {
    "out only": lambda out, h_n, c_n: (out * out.cos()).sum(),
    "h_n only": lambda out, h_n, c_n: (h_n * h_n.sin()).sum(),
    "c_n only": lambda out, h_n, c_n: (c_n * c_n.sin()).sum() if c_n is not None else h_n.sum(),
    "all": lambda out, h_n, c_n: out.square().sum() + h_n.sum() + (c_n.sum() if c_n is not None else 0.0),
}


@needs_kernel
@pytest.mark.parametrize("cell,loss_name", [(cell, name) for cell in ("LSTM", "GRU") for name in sorted(LOSSES)
                                            if not (cell == "GRU" and name == "c_n only")])  # a GRU has no c_n
@pytest.mark.parametrize("with_lengths", [False, True])
def test_gradients_with_some_outputs_unused_match_the_nn_module(cell: str, loss_name: str,
                                                                 with_lengths: bool) -> None:
    """float64, to 1e-10: whichever outputs the loss reads, the gradients of input, states and weights are
    ``nn.LSTM``/``nn.GRU``'s."""
    torch.manual_seed(5)
    block, reference = pair(cell)
    x = torch.randn(STEPS, BATCH, FEATURES, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, BATCH, HIDDEN, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, BATCH, HIDDEN, dtype=torch.float64, requires_grad=True)
    hx: Any = (h0, c0) if cell == "LSTM" else h0
    lengths = torch.tensor([STEPS, 3, 7, 1]) if with_lengths else None
    loss = LOSSES[loss_name]
    inputs = [x, h0] + ([c0] if cell == "LSTM" else [])

    with cpu_kernel.forced():
        out, state = block(x, hx, lengths=lengths)
    h_n, c_n = state if cell == "LSTM" else (state, None)
    got = torch.autograd.grad(loss(out, h_n, c_n), inputs + list(block.parameters()))

    packed_in = x if lengths is None else nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    want_out, want_state = reference(packed_in, hx)
    if lengths is not None:
        want_out, _ = nn.utils.rnn.pad_packed_sequence(want_out, total_length=STEPS)
    want_h, want_c = want_state if cell == "LSTM" else (want_state, None)
    want = torch.autograd.grad(loss(want_out, want_h, want_c), inputs + list(reference.parameters()),
                               allow_unused=True)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, torch.zeros_like(g) if w is None else w, rtol=1e-10, atol=1e-10)


@needs_kernel
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_the_backward_zero_fills_nothing_the_size_of_the_stash(cell: str) -> None:
    """A loss on ``out`` alone: the backward may make zero gradients for ``h_n``/``c_n`` (a state's size), never one
    the size of a layer's stashed gates ``(T, B, 2, G)`` or states ``(T, B, 2, H)``."""
    torch.manual_seed(6)
    block, _ = pair(cell)
    x = torch.randn(STEPS, BATCH, FEATURES, dtype=torch.float64, requires_grad=True)
    with cpu_kernel.forced():
        out, _ = block(x)
    loss = out.sum()
    with ZeroFills() as fills:
        loss.backward()
    stashed_states = STEPS * BATCH * 2 * HIDDEN
    assert fills.sizes == [] or max(fills.sizes) < stashed_states, fills.sizes
