"""The bf16 kernel's math in plain PyTorch, in float64 (``models/blocks/cpu_kernel/csrc/bf16_forward.h`` states it):
weights, each step's input rows and ``h_{t-1}`` (the reset-before GRU: also ``r * h_{t-1}``) rounded to bf16 before
their products, biases float32 (``b_ih + b_hh`` added in float32 but for the GRU), everything else unrounded; the
returned output and states rounded to bf16 once, as the kernel returns them."""

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from models.merge import merge_directions


def _bf(t: Tensor) -> Tensor:
    """float32 -> bf16 (round to nearest even) -> float64: what the kernel feeds its products."""
    return t.float().to(torch.bfloat16).double()


def _step(mode: str, x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
          b_hh: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """One step of rows ``x (B, F)`` from ``h``, ``c (B, H)`` (float64) -> ``h', c'``."""
    hidden = h.shape[1]
    gx = _bf(x) @ w_ih.T
    gh = _bf(h) @ w_hh.T
    if mode == "GRU":
        gx = gx + (b_ih if b_ih is not None else 0.0)
        gh = gh + (b_hh if b_hh is not None else 0.0)
        r = torch.sigmoid(gx[:, :hidden] + gh[:, :hidden])
        z = torch.sigmoid(gx[:, hidden:2 * hidden] + gh[:, hidden:2 * hidden])
        n = torch.tanh(gx[:, 2 * hidden:] + r * gh[:, 2 * hidden:])
        return n + z * (h - n), c
    bias = b_ih if b_ih is not None else 0.0
    if mode == "GRU_RESET_BEFORE":
        g = gx + bias
        r = torch.sigmoid(g[:, :hidden] + gh[:, :hidden])
        z = torch.sigmoid(g[:, hidden:2 * hidden] + gh[:, hidden:2 * hidden])
        n = torch.tanh(g[:, 2 * hidden:] + _bf(r * h) @ w_hh[2 * hidden:].T)
        return n + z * (h - n), c
    g = gx + gh + bias
    if mode == "LSTM":
        i, f, gg, o = g.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
        return torch.sigmoid(o) * torch.tanh(c), c
    return (torch.tanh(g) if mode == "RNN_TANH" else torch.relu(g)), c


@torch.no_grad()
def bf16_reference(mode: str, x: Tensor, weights: List[Tensor], has_biases: bool, merge_modes: List[Optional[str]],
                   lengths: Optional[Tensor] = None, h0: Optional[Tensor] = None, c0: Optional[Tensor] = None,
                   dtype: torch.dtype = torch.bfloat16) -> Tuple[Tensor, Tensor, Tensor]:
    """Time-major ``x (T, B, F)``, ``weights`` in ``nn.LSTM``'s flat order -> ``out (T, B, out)``, ``h_n``,
    ``c_n (2L, B, H)`` in ``dtype`` (``c_n`` is ``h_n`` but for the LSTM). Right-padded rows (``lengths``) keep
    their state and give zeros at padded steps."""
    steps, batch, _ = x.shape
    per = 4 if has_biases else 2
    hidden = weights[1].shape[1]
    layer_in = x.double()
    hs, cs = [], []
    for layer, merge in enumerate(merge_modes):
        outs = []
        for d in range(2):
            w = weights[(2 * layer + d) * per:(2 * layer + d + 1) * per]
            w_ih, w_hh = _bf(w[0]), _bf(w[1])
            b_ih = b_hh = None
            if has_biases:
                if mode == "GRU":
                    b_ih, b_hh = w[2].float().double(), w[3].float().double()
                else:
                    b_ih = (w[2].float() + w[3].float()).double()
            k = 2 * layer + d
            h = h0[k].double() if h0 is not None else torch.zeros(batch, hidden, dtype=torch.float64)
            c = c0[k].double() if c0 is not None else torch.zeros(batch, hidden, dtype=torch.float64)
            out = torch.zeros(steps, batch, hidden, dtype=torch.float64)
            for s in range(steps):
                t = s if d == 0 else steps - 1 - s
                h_new, c_new = _step(mode, layer_in[t], h, c, w_ih, w_hh, b_ih, b_hh)
                valid = (torch.ones(batch, dtype=torch.bool) if lengths is None else t < lengths).unsqueeze(1)
                h = torch.where(valid, h_new, h)
                c = torch.where(valid, c_new, c)
                out[t] = torch.where(valid, h_new, 0.0)
            outs.append(out)
            hs.append(h)
            cs.append(c)
        layer_in = merge_directions(outs[0], outs[1], merge)
    h_n = torch.stack(hs).float().to(dtype)
    return layer_in.float().to(dtype), h_n, torch.stack(cs).float().to(dtype) if mode == "LSTM" else h_n
