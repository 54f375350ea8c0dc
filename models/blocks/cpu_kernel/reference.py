"""The CPU kernel's layer on PyTorch's differentiable kernels: what a graph of the backward is built from.

``models/blocks/cpu_kernel/__init__.py`` runs one bidirectional layer in C++; its reverse loop gives first-order
gradients only. When autograd asks for a graph of the backward (``create_graph=True``: double backward,
``gradgradcheck``, Hessian-vector products), the layer is recomputed here from the same inputs with
``torch._VF.lstm``/``gru`` (packed by ``lengths`` when given, so each backward direction starts at its row's true end,
as in the kernel) and differentiated with a graph: the gradients equal ``nn.LSTM``/``nn.GRU``'s, to every order.
"""

from typing import List, Optional, Sequence, Tuple

import torch
from torch import _VF, Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ...cells import KERNEL_CODES
from ..gru_reset_before import gru_reset_before_direction

_MODES = {code: mode for mode, code in KERNEL_CODES.items()}  # the kernel's cell code -> PyTorch's mode


def reference_layer(cell: int, x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], w_hh: Tensor,
                    b_hh: Optional[Tensor], h0: Tensor, c0: Tensor, lengths: Optional[Tensor]
                    ) -> Tuple[Tensor, Tensor, Tensor]:
    """The kernel's layer in its own layout (``cell`` 0 LSTM, 1 GRU, 2 reset-before GRU): ``x (T, B, F)``,
    ``w_ih (2, G, F)``, ``b_ih (2, G)`` (LSTM and cell 2: both biases folded), ``w_hh (2, G, H)``, ``b_hh (2, G)``
    (GRU only), ``h0``/``c0 (2, B, H)`` -> ``out (T, B, 2, H)``
    (zero at padded steps), ``h_n``, ``c_n (2, B, H)`` (``c_n`` is ``h_n`` for GRU)."""
    steps, batch, _ = x.shape
    hidden = w_hh.shape[2]
    mode = _MODES[cell]
    # reset gate before the recurrent product (Keras reset_after=False): its exact time loop
    if mode == "GRU_RESET_BEFORE":
        directions = [gru_reset_before_direction(x, h0[d], w_ih[d], w_hh[d], None if b_ih is None else b_ih[d], None,
                                                 lengths, reverse=d == 1) for d in range(2)]
        h_n = torch.stack([h for _, h in directions])
        return torch.stack([out for out, _ in directions], 2), h_n, h_n
    has_biases = b_ih is not None or b_hh is not None
    weights: List[Tensor] = []
    for d in range(2):
        weights += [w_ih[d], w_hh[d]]
        if has_biases:
            zeros = w_ih.new_zeros(w_ih.shape[1])
            weights += [b_ih[d] if b_ih is not None else zeros, b_hh[d] if b_hh is not None else zeros]
    if lengths is None:
        if mode == "LSTM":
            out, h_n, c_n = _VF.lstm(x, [h0, c0], weights, has_biases, 1, 0.0, False, True, False)
        else:
            out, h_n = _VF.gru(x, h0, weights, has_biases, 1, 0.0, False, True, False)
            c_n = h_n
        return out.view(steps, batch, 2, hidden), h_n, c_n
    packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
    order = packed.sorted_indices
    if mode == "LSTM":
        data, h_n, c_n = _VF.lstm(packed.data, packed.batch_sizes, [h0[:, order], c0[:, order]], weights,
                                  has_biases, 1, 0.0, False, True)
    else:
        data, h_n = _VF.gru(packed.data, packed.batch_sizes, h0[:, order], weights, has_biases, 1, 0.0, False, True)
        c_n = h_n
    out, _ = pad_packed_sequence(PackedSequence(data, packed.batch_sizes, order, packed.unsorted_indices),
                                 total_length=steps)
    back = packed.unsorted_indices
    return out.view(steps, batch, 2, hidden), h_n[:, back], c_n[:, back]


def reference_gradients(cell: int, inputs: Tuple[Tensor, Tensor, Optional[Tensor], Tensor, Optional[Tensor],
                                                 Tensor, Tensor],
                        lengths: Optional[Tensor], d_out: Tensor, d_hn: Tensor, d_cn: Tensor,
                        needed: Sequence[bool]) -> Tuple[Optional[Tensor], ...]:
    """Gradients of ``(x, w_ih, b_ih, w_hh, b_hh, h0, c0)`` (None where not ``needed`` or absent) for the output
    gradients ``d_out (T, B, 2, H)``, ``d_hn``, ``d_cn (2, B, H)``, as a differentiable graph (create_graph)."""
    with torch.enable_grad():
        out, h_n, c_n = reference_layer(cell, *inputs, lengths)
        wanted = [i for i, t in enumerate(inputs) if t is not None and needed[i] and t.requires_grad]
        lstm = _MODES[cell] == "LSTM"
        outputs = [out, h_n] + ([c_n] if lstm else [])
        seeds = [d_out, d_hn] + ([d_cn] if lstm else [])
        found = torch.autograd.grad(outputs, [inputs[i] for i in wanted], seeds, create_graph=True,
                                    allow_unused=True)
    grads: List[Optional[Tensor]] = [None] * len(inputs)
    for i, g in zip(wanted, found, strict=True):
        grads[i] = g if g is not None else torch.zeros_like(inputs[i])  # type: ignore[arg-type]
    return tuple(grads)
