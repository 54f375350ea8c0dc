"""Keras's original GRU (``reset_after=False``): an exact time-loop reference, scriptable, with ``lengths``.

PyTorch's fused GRU (cuDNN, oneDNN, ``nn.GRU``) applies the reset gate after the recurrent product
(Keras ``reset_after=True``). Keras's original formula applies it before::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)       # reset_after=True: ... + r * (W_hn h + b_hn)
    h' = (1 - z) * n + z * h

Parameter layout: exactly ``nn.GRU``'s (``weight_ih (3H, F)``, ``weight_hh (3H, H)``, ``bias_ih (3H,)``,
``bias_hh (3H,)``, gate blocks in the order r, z, n). ``b_hn`` lies outside the reset product, so both biases
only add to the pre-activations: Keras's single ``bias (3H,)`` maps to ``bias_ih`` (reordered z, r, h -> r, z,
n) with ``bias_hh`` zero. Only the input projection is one matrix product for all steps; each step then
does two recurrent products (``h @ W_h{r,z}`` and ``(r * h) @ W_hn``), so this is slower than the fused kernel.

With ``lengths`` (right padding) padded steps do not update the state and output zeros, the backward
direction starts at each row's true end, and ``h_n`` is the state there, as the blocks' other paths.
"""

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..arguments import check_positive_int


def _cell_loop(
    gates_x: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Optional[Tensor], valid: Optional[Tensor], reverse: bool
) -> Tuple[Tensor, Tensor]:
    """Recurrence over precomputed ``gates_x (T, B, 3H)`` (input projection + ``bias_ih``), from ``h (B, H)``.

    ``valid (T, B)`` bool or None; ``reverse`` walks ``t = T-1 .. 0``. Returns ``out (T, B, H)``, ``h_n (B, H)``.
    """
    hidden = h.shape[1]
    w_rz, w_n = weight_hh[: 2 * hidden], weight_hh[2 * hidden:]
    b_rz: Optional[Tensor] = None
    b_n: Optional[Tensor] = None
    if bias_hh is not None:
        b_rz, b_n = bias_hh[: 2 * hidden], bias_hh[2 * hidden:]
    seq_len = gates_x.shape[0]
    outputs: List[Tensor] = []
    for step in range(seq_len):
        t = seq_len - 1 - step if reverse else step
        g = gates_x[t]
        rz = torch.mm(h, w_rz.t())
        if b_rz is not None:
            rz = rz + b_rz
        rz = torch.sigmoid(g[:, : 2 * hidden] + rz)
        r, z = rz[:, :hidden], rz[:, hidden:]
        n = torch.mm(r * h, w_n.t())
        if b_n is not None:
            n = n + b_n
        n = torch.tanh(g[:, 2 * hidden:] + n)
        h_new = n + z * (h - n)                       # (1 - z) * n + z * h
        if valid is not None:
            keep = valid[t].unsqueeze(1)
            h = torch.where(keep, h_new, h)
            outputs.append(h_new.masked_fill(~keep, 0.0))
        else:
            h = h_new
            outputs.append(h_new)
    if reverse:
        outputs.reverse()
    return torch.stack(outputs, 0), h


def gru_reset_before_direction(
    x: Tensor,
    h0: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Optional[Tensor] = None,
    bias_hh: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    reverse: bool = False,
) -> Tuple[Tensor, Tensor]:
    """One direction of a ``reset_after=False`` GRU layer on time-major ``x (T, B, F)`` from ``h0 (B, H)``.

    ``lengths (B,)`` int64 in ``[1, T]`` (right padding; checked by the caller) or None. ``reverse`` runs the
    backward direction: from each row's true end down to ``t = 0``. Returns ``out (T, B, H)`` (zero at padded
    steps) and ``h_n (B, H)`` (the state at each row's true end, or after ``t = 0`` when reversed).
    """
    valid: Optional[Tensor] = None
    index: Optional[Tensor] = None
    if lengths is not None:
        steps = torch.arange(x.shape[0], device=x.device).unsqueeze(1)            # (T, 1)
        valid = steps < lengths.to(x.device).unsqueeze(0)                          # (T, B)
        # Padded inputs may hold anything (NaN included): zero them so no gradient can pick them up.
        x = x.masked_fill(~valid.unsqueeze(-1), 0.0)
        if reverse:
            # Reverse each row within its own length (padded steps stay put); the map is its own inverse.
            index = torch.where(valid, lengths.to(x.device).unsqueeze(0) - 1 - steps, steps).unsqueeze(-1)
            x = x.gather(0, index.expand(x.shape))
    gates_x = torch.matmul(x, weight_ih.t())
    if bias_ih is not None:
        gates_x = gates_x + bias_ih
    out, h_n = _cell_loop(gates_x, h0, weight_hh, bias_hh, valid, reverse and index is None)
    if index is not None:
        out = out.gather(0, index.expand(out.shape))
    return out, h_n


def _bidirectional_loop(
    gates_x: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Optional[Tensor], valid: Optional[Tensor]
) -> Tuple[Tensor, Tensor]:
    """Both directions in one recurrence: ``gates_x (2, T, B, 3H)`` with direction 1 already reversed in time (so
    both walk ``t = 0 .. T-1``), ``h (2, B, H)``, ``weight_hh (2, 3H, H)``, ``bias_hh (2, 3H)`` or None, ``valid
    (T, B)`` or None (the same mask fits both: padding trails in either). Each step is two batched products
    (``bmm``) for both directions and the elementwise gates: half the launches of two loops, and on CUDA this runs
    as a TorchScript function (no Python per step; the profiling executor fuses the elementwise ops). The
    arithmetic per element is ``_cell_loop``'s. Returns ``out (2, T, B, H)`` (zero at padded steps), ``h_n (2, B, H)``.
    """
    hidden = h.shape[2]
    w_rz = weight_hh[:, : 2 * hidden].transpose(1, 2)           # (2, H, 2H)
    w_n = weight_hh[:, 2 * hidden:].transpose(1, 2)             # (2, H, H)
    b_rz: Optional[Tensor] = None
    b_n: Optional[Tensor] = None
    if bias_hh is not None:
        b_rz, b_n = bias_hh[:, : 2 * hidden].unsqueeze(1), bias_hh[:, 2 * hidden:].unsqueeze(1)
    outputs: List[Tensor] = []
    for t in range(gates_x.shape[1]):
        g = gates_x[:, t]
        rz = torch.bmm(h, w_rz)
        if b_rz is not None:
            rz = rz + b_rz
        rz = torch.sigmoid(g[:, :, : 2 * hidden] + rz)
        r, z = rz[:, :, :hidden], rz[:, :, hidden:]
        n = torch.bmm(r * h, w_n)
        if b_n is not None:
            n = n + b_n
        n = torch.tanh(g[:, :, 2 * hidden:] + n)
        h_new = n + z * (h - n)                                 # (1 - z) * n + z * h
        if valid is not None:
            keep = valid[t].unsqueeze(-1)                       # (B, 1), broadcast over (2, B, H)
            h = torch.where(keep, h_new, h)
            outputs.append(h_new.masked_fill(~keep, 0.0))
        else:
            h = h_new
            outputs.append(h_new)
    return torch.stack(outputs, 1), h


_SCRIPTED_LOOP: List[object] = []  # filled at the first CUDA call: torch.jit.script(_bidirectional_loop)


@torch.jit.unused
def _scripted_loop(
    gates_x: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Optional[Tensor], valid: Optional[Tensor]
) -> Tuple[Tensor, Tensor]:
    if not _SCRIPTED_LOOP:
        _SCRIPTED_LOOP.append(torch.jit.script(_bidirectional_loop))
    return _SCRIPTED_LOOP[0](gates_x, h, weight_hh, bias_hh, valid)  # type: ignore[operator]


def gru_reset_before_bidirectional(
    x: Tensor, h0: Tensor, weights: List[Tensor], has_biases: bool, lengths: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor]:
    """One bidirectional ``reset_after=False`` layer on ``x (T, B, F)`` from ``h0 (2, B, H)``, ``weights`` in
    ``torch._VF.gru``'s order for one layer (forward then backward, each ``w_ih, w_hh[, b_ih, b_hh]``), ``lengths
    (B,)`` or None. Returns ``out (T, B, 2H)`` (forward, backward; zero at padded steps) and ``h_n (2, B, H)``:
    ``gru_reset_before_direction`` for both directions, in one recurrence (``_bidirectional_loop``)."""
    per = 4 if has_biases else 2
    forward, backward = weights[:per], weights[per:2 * per]
    valid: Optional[Tensor] = None
    index: Optional[Tensor] = None
    if lengths is not None:
        steps = torch.arange(x.shape[0], device=x.device).unsqueeze(1)            # (T, 1)
        lengths = lengths.to(x.device)
        valid = steps < lengths.unsqueeze(0)                                       # (T, B)
        x = x.masked_fill(~valid.unsqueeze(-1), 0.0)                               # padding may hold NaN
        index = torch.where(valid, lengths.unsqueeze(0) - 1 - steps, steps).unsqueeze(-1)
        x_reversed = x.gather(0, index.expand(x.shape))
    else:
        x_reversed = x.flip(0)
    gates_x = torch.stack([torch.matmul(x, forward[0].t()), torch.matmul(x_reversed, backward[0].t())], 0)
    bias_hh: Optional[Tensor] = None
    if has_biases:
        gates_x = gates_x + torch.stack([forward[2], backward[2]], 0).view(2, 1, 1, -1)
        bias_hh = torch.stack([forward[3], backward[3]], 0)
    weight_hh = torch.stack([forward[1], backward[1]], 0)
    if not torch.jit.is_scripting() and x.is_cuda:
        out, h_n = _scripted_loop(gates_x, h0, weight_hh, bias_hh, valid)
    else:
        out, h_n = _bidirectional_loop(gates_x, h0, weight_hh, bias_hh, valid)
    out_backward = out[1].gather(0, index.expand(out[1].shape)) if index is not None else out[1].flip(0)
    return torch.cat([out[0], out_backward], -1), h_n


def gru_reset_before(
    x: Tensor,
    hx: Tensor,
    weights: List[Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    lengths: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Drop-in for ``torch._VF.gru`` (time-major, same flat weight order) with Keras's ``reset_after=False``.

    ``x (T, B, F)``, ``hx (D * num_layers, B, H)`` with ``D = 2 if bidirectional else 1``, ``weights`` per layer
    and direction ``[weight_ih, weight_hh, (bias_ih, bias_hh)]``. Bidirectional layers concatenate both
    directions; ``dropout`` (when ``train``) applies between layers. Returns ``out (T, B, D * H)`` and
    ``h_n (D * num_layers, B, H)``.
    """
    per = 4 if has_biases else 2
    states: List[Tensor] = []
    for layer in range(num_layers):
        if bidirectional:
            # Both directions in one recurrence (``gru_reset_before_bidirectional``): weights and ``hx`` rows of
            # this layer's two directions.
            start = layer * 2 * per
            x, h = gru_reset_before_bidirectional(x, hx[2 * layer:2 * layer + 2], weights[start:start + 2 * per],
                                                  has_biases, lengths)
            states.append(h[0])
            states.append(h[1])
        else:
            # One direction per layer, always forward: ``hx`` row and weights of layer ``layer`` alone.
            w = weights[layer * per:(layer + 1) * per]
            b_ih: Optional[Tensor] = None
            b_hh: Optional[Tensor] = None
            if has_biases:
                b_ih, b_hh = w[2], w[3]
            x, h = gru_reset_before_direction(x, hx[layer], w[0], w[1], b_ih, b_hh, lengths)
            states.append(h)
        if dropout > 0.0 and train and layer < num_layers - 1:
            x = torch.nn.functional.dropout(x, dropout, True)
    return x, torch.stack(states, 0)


class GRUResetBefore(nn.Module):
    """Single-layer, single-direction ``reset_after=False`` GRU with ``nn.GRU``'s parameter names, for an
    unwrapped Keras ``GRU(reset_after=False)``. ``x (B, T, F)`` (``batch_first``) or ``(T, B, F)`` ->
    ``(out, h_n)`` as ``nn.GRU``: ``out`` with ``H`` features, ``h_n (1, B, H)``."""

    __constants__ = ["input_size", "hidden_size", "bias", "batch_first"]
    bias_ih_l0: Optional[Tensor]
    bias_hh_l0: Optional[Tensor]

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, batch_first: bool = False) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        self.input_size, self.hidden_size = input_size, hidden_size
        self.bias, self.batch_first = bool(bias), batch_first
        self.weight_ih_l0 = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh_l0 = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        for name in ("bias_ih_l0", "bias_hh_l0"):
            self.register_parameter(name, nn.Parameter(torch.empty(3 * hidden_size)) if self.bias else None)
        bound = hidden_size ** -0.5
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}, batch_first={self.batch_first}, " \
               "reset_after=False"

    def forward(self, x: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"input must be 3-D with {self.input_size} features, got shape {list(x.shape)}")
        if self.batch_first:
            x = x.transpose(0, 1)
        if hx is None:
            h0 = x.new_zeros(x.shape[1], self.hidden_size)
        else:
            if list(hx.shape) != [1, x.shape[1], self.hidden_size] or hx.dtype != x.dtype:
                raise ValueError(f"hx must be (1, B, hidden_size) = {[1, x.shape[1], self.hidden_size]} of the "
                                 f"input's dtype {x.dtype}, got shape {list(hx.shape)} and dtype {hx.dtype}")
            h0 = hx[0]
        out, h_n = gru_reset_before_direction(x, h0, self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0,
                                              self.bias_hh_l0)
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, h_n.unsqueeze(0)
