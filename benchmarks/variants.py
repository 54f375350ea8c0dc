"""Hand-written bidirectional stacks users build instead of the blocks, and the fused baseline.

- ``fused_baseline``: ``nn.LSTM``/``nn.GRU(num_layers=L, bidirectional=True)``, concat only;
- ``FlipBiRNN``: two unidirectional RNNs per layer, the backward one on ``torch.flip``-ed input;
- ``LoopBiRNN``: a Python loop of ``nn.LSTM(bidirectional=True)`` layers with a merge after each;
- ``AtenPath``: a block with the CPU kernel switched off (``models.blocks.cpu_kernel.disabled``): the blocks as they
  ran before the kernel, on PyTorch's fused kernels.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from models.blocks import cpu_kernel
from models.merge import merge_directions, merged_size

_CELLS = {"LSTM": nn.LSTM, "GRU": nn.GRU}


def fused_baseline(cell: str, input_size: int, hidden: int, num_layers: int) -> nn.Module:
    """PyTorch's own fused bidirectional stack (one kernel call for all layers, concat between layers)."""
    return _CELLS[cell](input_size, hidden, num_layers, bidirectional=True)


class FlipBiRNN(nn.Module):
    """Per layer: a forward RNN and a backward RNN run on ``x.flip(0)``, flipped back, then merged."""

    def __init__(self, cell: str, input_size: int, hidden: int, num_layers: int, merge_mode: str) -> None:
        super().__init__()
        self.merge_mode = merge_mode
        self.forward_rnns = nn.ModuleList()
        self.backward_rnns = nn.ModuleList()
        layer_in = input_size
        for _ in range(num_layers):
            self.forward_rnns.append(_CELLS[cell](layer_in, hidden))
            self.backward_rnns.append(_CELLS[cell](layer_in, hidden))
            layer_in = merged_size(merge_mode, hidden)

    def forward(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        for fw, bw in zip(self.forward_rnns, self.backward_rnns, strict=True):
            out_f, _ = fw(x)
            out_b, _ = bw(torch.flip(x, [0]))
            x = merge_directions(out_f, torch.flip(out_b, [0]), self.merge_mode)
        return x, None


class LoopBiRNN(nn.Module):
    """Per layer: one ``nn.LSTM/GRU(bidirectional=True)``, its output split in two halves and merged."""

    def __init__(self, cell: str, input_size: int, hidden: int, num_layers: int, merge_mode: str) -> None:
        super().__init__()
        self.merge_mode = merge_mode
        self.hidden = hidden
        self.layers = nn.ModuleList()
        layer_in = input_size
        for _ in range(num_layers):
            self.layers.append(_CELLS[cell](layer_in, hidden, bidirectional=True))
            layer_in = merged_size(merge_mode, hidden)

    def forward(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        for layer in self.layers:
            out, _ = layer(x)
            x = merge_directions(out[..., : self.hidden], out[..., self.hidden :], self.merge_mode)
        return x, None


class AtenPath(nn.Module):
    """``block`` run inside ``models.blocks.cpu_kernel.disabled()``: PyTorch's fused kernels only."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, *args: Tensor, **kwargs: Tensor) -> Tuple[Tensor, object]:
        with cpu_kernel.disabled():
            return self.block(*args, **kwargs)
