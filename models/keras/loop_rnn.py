"""Keras's recurrent loop in PyTorch for the options the fused kernels hard-code: any element-wise
``activation`` / ``recurrent_activation`` (``hard_sigmoid`` as the Keras version that wrote the file defines
it), ``GRU(reset_after=False)`` with them, wrapped in ``Bidirectional`` or not. Exact, step by step, slower.

Masks as Keras: at a masked step the states are kept, and the output is the previous one (zeros with
``zero_output_for_mask``); the backward direction runs on the reversed sequence and mask. Parameters keep
``nn.LSTM``'s names and gate orders (``weight_ih_l0``, ``..._reverse``), so Keras weights map as for the blocks.
"""

import warnings
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from .module import apply_activation

_GATES = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}


class _Weights(nn.Module):
    """``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0`` (and ``_reverse``)."""

    def __init__(self, cell: str, input_size: int, units: int, bias: bool, directions: int) -> None:
        super().__init__()
        width = _GATES[cell] * units
        for index, suffix in enumerate(["", "_reverse"]):
            used = index < directions      # absent ones are None: not in the state dict, typed for TorchScript
            self.register_parameter(f"weight_ih_l0{suffix}",
                                    nn.Parameter(torch.zeros(width, input_size)) if used else None)
            self.register_parameter(f"weight_hh_l0{suffix}", nn.Parameter(torch.zeros(width, units)) if used else None)
            self.register_parameter(f"bias_ih_l0{suffix}", nn.Parameter(torch.zeros(width)) if used and bias else None)
            self.register_parameter(f"bias_hh_l0{suffix}", nn.Parameter(torch.zeros(width)) if used and bias else None)

    @torch.jit.export
    def params(self, reverse: bool) -> List[Optional[Tensor]]:
        """``[weight_ih, weight_hh, bias_ih, bias_hh]`` of one direction (biases None without ``use_bias``)."""
        if reverse:
            return [self.weight_ih_l0_reverse, self.weight_hh_l0_reverse, self.bias_ih_l0_reverse,
                    self.bias_hh_l0_reverse]
        return [self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0]


class LoopRecurrentStage(nn.Module):
    """One Keras recurrent layer (``bidirectional``: a ``Bidirectional`` with ``merge_mode``) on the time loop:
    ``(B, T, F)`` -> ``(B, T, D)`` or ``(B, D)``. The two subclasses below hold the parameters."""

    __constants__ = ["cell", "units", "activation", "recurrent_activation", "reset_after", "return_sequences",
                     "zero_output_for_mask", "bidirectional", "merge_mode", "has_bias"]

    def __init__(self, cell: str, input_size: int, units: int, bias: bool, activation: str,
                 recurrent_activation: str, reset_after: bool, return_sequences: bool, zero_output_for_mask: bool,
                 bidirectional: bool, merge_mode: Optional[str]) -> None:
        super().__init__()
        self.cell, self.units, self.has_bias = cell, units, bias
        self.activation, self.recurrent_activation = activation, recurrent_activation
        self.reset_after, self.return_sequences = reset_after, return_sequences
        self.zero_output_for_mask, self.bidirectional = zero_output_for_mask, bidirectional
        self.merge_mode = merge_mode if merge_mode is not None else "none"
        warnings.warn(f"Keras {cell}(activation={activation!r}, recurrent_activation={recurrent_activation!r}"
                      f"{', reset_after=False' if cell == 'GRU' and not reset_after else ''}) has no fused kernel: "
                      "it runs on an exact PyTorch time loop (slower)", stacklevel=2)

    def _step(self, x_t: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
              b_hh: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        gi = torch.matmul(x_t, w_ih.t())
        if b_ih is not None:
            gi = gi + b_ih
        H = self.units
        if self.cell == "GRU" and not self.reset_after:
            gh = torch.matmul(h, w_hh[: 2 * H].t())
            r = apply_activation(gi[:, :H] + gh[:, :H], self.recurrent_activation)
            z = apply_activation(gi[:, H:2 * H] + gh[:, H:], self.recurrent_activation)
            n = apply_activation(gi[:, 2 * H:] + torch.matmul(r * h, w_hh[2 * H:].t()), self.activation)
            return z * h + (1.0 - z) * n, c
        gh = torch.matmul(h, w_hh.t())
        if b_hh is not None:
            gh = gh + b_hh
        if self.cell == "SimpleRNN":
            return apply_activation(gi + gh, self.activation), c
        if self.cell == "GRU":
            r = apply_activation(gi[:, :H] + gh[:, :H], self.recurrent_activation)
            z = apply_activation(gi[:, H:2 * H] + gh[:, H:2 * H], self.recurrent_activation)
            n = apply_activation(gi[:, 2 * H:] + r * gh[:, 2 * H:], self.activation)
            return z * h + (1.0 - z) * n, c
        gates = gi + gh
        i = apply_activation(gates[:, :H], self.recurrent_activation)
        f = apply_activation(gates[:, H:2 * H], self.recurrent_activation)
        g = apply_activation(gates[:, 2 * H:3 * H], self.activation)
        o = apply_activation(gates[:, 3 * H:], self.recurrent_activation)
        c = f * c + i * g
        return o * apply_activation(c, self.activation), c

    def _direction(self, x: Tensor, mask: Optional[Tensor], params: List[Optional[Tensor]], zero: bool) -> Tensor:
        """Keras's loop over ``x (B, T, F)`` -> outputs ``(B, T, H)``."""
        w_ih, w_hh = params[0], params[1]
        assert w_ih is not None and w_hh is not None
        h = x.new_zeros(x.shape[0], self.units)
        c = x.new_zeros(x.shape[0], self.units)
        out = x.new_zeros(x.shape[0], self.units)
        outputs: List[Tensor] = []
        for t in range(x.shape[1]):
            new_h, new_c = self._step(x[:, t], h, c, w_ih, w_hh, params[2], params[3])
            if mask is None:
                h, c, out = new_h, new_c, new_h
            else:
                keep = mask[:, t].unsqueeze(-1)
                h, c = torch.where(keep, new_h, h), torch.where(keep, new_c, c)
                out = torch.where(keep, new_h, torch.zeros_like(new_h) if zero else out)
            outputs.append(out)
        return torch.stack(outputs, 1)

    def _run(self, x: Tensor, mask: Optional[Tensor], forward_params: List[Optional[Tensor]],
             backward_params: List[Optional[Tensor]]) -> Tuple[Tensor, Optional[Tensor]]:
        zero = self.zero_output_for_mask
        forward = self._direction(x, mask, forward_params, zero)
        if not self.bidirectional:
            if self.return_sequences:
                return forward, mask
            return forward[:, -1], None
        backward = self._direction(x.flip(1), None if mask is None else mask.flip(1), backward_params, zero)
        if self.return_sequences:
            backward = backward.flip(1)
        else:
            forward, backward = forward[:, -1], backward[:, -1]
        if self.merge_mode == "concat":
            y = torch.cat([forward, backward], -1)
        elif self.merge_mode == "sum":
            y = forward + backward
        elif self.merge_mode == "mul":
            y = forward * backward
        elif self.merge_mode == "ave":
            y = (forward + backward) / 2
        else:
            y = torch.stack([forward, backward], -2)
        return y, (mask if self.return_sequences else None)


class LoopBidirectionalStage(LoopRecurrentStage):
    """A ``Bidirectional`` on the time loop (parameters under ``block``, as the fused blocks)."""

    def __init__(self, cell: str, input_size: int, units: int, bias: bool, activation: str,
                 recurrent_activation: str, reset_after: bool, return_sequences: bool, zero_output_for_mask: bool,
                 merge_mode: Optional[str]) -> None:
        super().__init__(cell, input_size, units, bias, activation, recurrent_activation, reset_after,
                         return_sequences, zero_output_for_mask, True, merge_mode)
        self.block = _Weights(cell, input_size, units, bias, 2)

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        return self._run(x, mask, self.block.params(False), self.block.params(True))


class LoopUnidirectionalStage(LoopRecurrentStage):
    """An unwrapped ``LSTM``/``GRU``/``SimpleRNN`` on the time loop (parameters under ``rnn``)."""

    def __init__(self, cell: str, input_size: int, units: int, bias: bool, activation: str,
                 recurrent_activation: str, reset_after: bool, return_sequences: bool,
                 zero_output_for_mask: bool) -> None:
        super().__init__(cell, input_size, units, bias, activation, recurrent_activation, reset_after,
                         return_sequences, zero_output_for_mask, False, "concat")
        self.rnn = _Weights(cell, input_size, units, bias, 1)

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        params = self.rnn.params(False)
        return self._run(x, mask, params, params)
