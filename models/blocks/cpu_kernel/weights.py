"""One layer's ``nn.LSTM``-ordered weights as the kernel reads them: both directions stacked, the biases folded
where the cell allows. Written once for the autograd path (``fused_layer``) and the inference plan
(``inference.py``)."""

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .abi import CellTraits


def stack_layer(cell: CellTraits, weights: Sequence[Tensor], has_biases: bool
                ) -> Tuple[Tensor, Optional[Tensor], Tensor, Optional[Tensor]]:
    """``weights``: ``[w_ih, w_hh, b_ih, b_hh]`` (without the biases when ``has_biases`` is False) of the forward
    then the backward direction. Returns ``w_ih (2, G, F)``, ``b_ih (2, G)``, ``w_hh (2, G, H)``, ``b_hh (2, G)``
    (contiguous; differentiable). ``b_ih`` is ``b_ih + b_hh`` for a cell that adds both to the same
    pre-activations (LSTM, reset-before GRU), and ``b_hh`` then None; a cell that keeps ``W_hh h + b_hh`` apart
    (GRU: ``r`` gates ``b_hn``) gets both as they are. Both None without biases."""
    per = 4 if has_biases else 2
    fw, bw = weights[:per], weights[per:]
    w_ih = torch.stack([fw[0], bw[0]])
    w_hh = torch.stack([fw[1], bw[1]])
    if not has_biases:
        return w_ih, None, w_hh, None
    if cell.apart_hh:
        return w_ih, torch.stack([fw[2], bw[2]]), w_hh, torch.stack([fw[3], bw[3]])
    return w_ih, torch.stack([fw[2] + fw[3], bw[2] + bw[3]]), w_hh, None
