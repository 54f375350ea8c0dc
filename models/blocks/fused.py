"""The blocks' paths on PyTorch's fused kernels (``_VF.lstm``/``gru``/``rnn_*``, or the ``reset_after=False`` GRU's
time loop): the whole stack in one call, one bidirectional call per layer, or two single-direction calls per layer
with ``lengths``; which one runs, and why, is in ``models/blocks/base.py``'s docstring.

``_FusedPaths`` is the base class of ``_BiRNNBase``, which holds the parameters and every attribute these methods
read (``mode``, ``hidden_size``, ``merge_modes``, ``dropout``, ``bias``, ``reset_after``, ``saturate``).
"""

from typing import List, Optional, Tuple

import torch
from torch import _VF, Tensor, nn

from ..merge import merge_directions, merge_stacked
from .compile_boundary import eager_under_compile
from .gru_reset_before import gru_reset_before

# Pre-activation pushed onto the input and forget gates at padded steps of the LSTM lengths path:
# sigmoid(+1e4) == 1.0 and sigmoid(-1e4) == 0.0 exactly (float32, bfloat16, float16), so the cell state
# passes through padding unchanged and the fused kernel's final c is the state at each true end.
_SATURATE = 1.0e4


def _fused_kernels(
    mode: str,
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    weights: List[Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    """One fused RNN call on time-major ``x (T, B, F)``; returns ``(output, h_n, c_n)`` (``c_n = h_n`` unless LSTM).
    The arguments are ``torch._VF.lstm``'s (and ``gru_reset_before``'s, its drop-in), in their order."""
    if mode == "LSTM":
        out, h, c = _VF.lstm(x, [h0, c0], weights, has_biases, num_layers, dropout, train, bidirectional, False)
        return out, h, c
    if mode == "GRU":
        out, h = _VF.gru(x, h0, weights, has_biases, num_layers, dropout, train, bidirectional, False)
    elif mode == "GRU_RESET_BEFORE":  # Keras reset_after=False: no fused kernel computes it, a time loop does
        out, h = gru_reset_before(x, h0, weights, has_biases, num_layers, dropout, train, bidirectional)
    elif mode == "RNN_TANH":
        out, h = _VF.rnn_tanh(x, h0, weights, has_biases, num_layers, dropout, train, bidirectional, False)
    else:
        out, h = _VF.rnn_relu(x, h0, weights, has_biases, num_layers, dropout, train, bidirectional, False)
    return out, h, h


def _autocast_runs_fp32(x: Tensor) -> bool:
    """Whether this fused call must leave autocast and run in the weights' dtype: CUDA under bf16 autocast.

    PyTorch's autocast casts a cuDNN RNN to float16 whatever dtype autocast was asked for (aten's
    ``_cudnn_rnn_cast_reflatten``), so "bf16" would silently train the RNN in fp16 without loss scaling. The blocks
    run it in float32 instead (the merge and everything around it still follow autocast). float16 autocast keeps
    cuDNN's fp16 RNN (the trainer then always uses a GradScaler); the CPU's bf16 autocast is real bf16 (oneDNN)."""
    return (x.is_cuda and torch.is_autocast_enabled("cuda")
            and torch.get_autocast_dtype("cuda") == torch.bfloat16)


def _fused_eager(
    mode: str, x: Tensor, h0: Tensor, c0: Tensor, weights: List[Tensor], has_biases: bool, num_layers: int,
    dropout: float, train: bool, bidirectional: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    """``_fused_kernels`` outside TorchScript, with the bf16-autocast rule of ``_autocast_runs_fp32``."""
    if _autocast_runs_fp32(x):
        dtype = weights[0].dtype
        with torch.autocast(x.device.type, enabled=False):
            return _fused_kernels(mode, x.to(dtype), h0.to(dtype), c0.to(dtype), weights, has_biases, num_layers,
                                  dropout, train, bidirectional)
    return _fused_kernels(mode, x, h0, c0, weights, has_biases, num_layers, dropout, train, bidirectional)


def _packed_kernels(
    mode: str, data: Tensor, batch_sizes: Tensor, h0: Tensor, c0: Tensor, weights: List[Tensor], has_biases: bool,
    num_layers: int, dropout: float, train: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    """One fused bidirectional call on packed ``data (N, F)`` with ``batch_sizes (T,)`` (CPU int64, as
    ``PackedSequence`` holds it) and states ``(2 * num_layers, B, H)`` in the packed (sorted) batch order: cuDNN's
    variable-length RNN, exactly what ``nn.LSTM`` runs on a ``PackedSequence``. Returns ``(out (N, 2H), h_n, c_n)``;
    ``h_n`` is each row's state at its true end (forward) and after step 0 (backward)."""
    if _autocast_runs_fp32(data):
        dtype = weights[0].dtype
        with torch.autocast(data.device.type, enabled=False):
            return _packed_kernels(mode, data.to(dtype), batch_sizes, h0.to(dtype), c0.to(dtype), weights,
                                   has_biases, num_layers, dropout, train)
    if mode == "LSTM":
        out, h, c = _VF.lstm(data, batch_sizes, [h0, c0], weights, has_biases, num_layers, dropout, train, True)
        return out, h, c
    if mode == "GRU":
        out, h = _VF.gru(data, batch_sizes, h0, weights, has_biases, num_layers, dropout, train, True)
    elif mode == "RNN_TANH":
        out, h = _VF.rnn_tanh(data, batch_sizes, h0, weights, has_biases, num_layers, dropout, train, True)
    else:
        out, h = _VF.rnn_relu(data, batch_sizes, h0, weights, has_biases, num_layers, dropout, train, True)
    return out, h, h


# torch.compile leaves the fused call to eager PyTorch (one graph break) so the fused oneDNN/cuDNN kernel and its
# autograd run as they are; dynamo would otherwise unroll the recurrence per time step. TorchScript cannot see
# through this wrapper and calls _fused_kernels directly.
_fused_call = eager_under_compile("fused_call", _fused_eager)
_packed_call = eager_under_compile("packed_call", _packed_kernels)


class _FusedPaths(nn.Module):
    """The fused-kernel paths of the blocks (see the module docstring); every attribute is ``_BiRNNBase``'s."""

    def _fused(
        self, x: Tensor, h0: Tensor, c0: Tensor, weights: List[Tensor], num_layers: int, dropout: float,
        bidirectional: bool,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        # Not _kernel_cell() nor cells.GRU_RESET_BEFORE.mode: TorchScript runs this and reads neither; the literal is
        # that mode's name in models/cells.py (tests/blocks/test_cells.py checks they agree).
        mode = self.mode if self.reset_after else "GRU_RESET_BEFORE"
        # cuDNN's train flag means "keep what backward needs", so it follows whether grad is enabled (a module in
        # eval() can be differentiated, as in Keras); dropout follows self.training and is 0 outside training.
        if not self.training:
            dropout = 0.0
        # ... and is also on for dropout without grad (a no_grad forward in training mode): cuDNN and ATen apply
        # dropout only when train is set.
        train = torch.is_grad_enabled() or dropout > 0.0
        if torch.jit.is_scripting():
            return _fused_kernels(mode, x, h0, c0, weights, self.bias, num_layers, dropout, train, bidirectional)
        return _fused_call(mode, x, h0, c0, weights, self.bias, num_layers, dropout, train, bidirectional)

    def _between_layers(self, out: Tensor, is_last: bool) -> Tensor:
        if self.dropout > 0.0 and not is_last:
            out = torch.nn.functional.dropout(out, self.dropout, self.training)
        return out

    # The per-layer work lives in its own method: torch.compile cannot compile a loop body that contains a graph
    # break, but it compiles each call of a method (merges, gathers and masks) around the fused calls in it.
    def _run_layers(self, x: Tensor, h0: Tensor, c0: Tensor, weights: List[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """One fused bidirectional call per layer, then that layer's merge."""
        hs: List[Tensor] = []
        cs: List[Tensor] = []
        for layer in range(self.num_layers):
            first = 2 * layer
            x, h, c = self._layer(x, h0[first:first + 2], c0[first:first + 2], self._layer_weights(weights, layer, 2),
                                  self.merge_modes[layer], layer == self.num_layers - 1)
            hs.append(h)
            cs.append(c)
        return x, torch.cat(hs, 0), torch.cat(cs, 0)

    def _layer(self, x: Tensor, h0: Tensor, c0: Tensor, weights: List[Tensor], mode: Optional[str],
               is_last: bool) -> Tuple[Tensor, Tensor, Tensor]:
        out, h, c = self._fused(x, h0, c0, weights, 1, 0.0, True)
        return self._between_layers(merge_stacked(out, mode, self.hidden_size), is_last), h, c

    @torch.jit.unused
    def _run_layers_packed(
        self, data: Tensor, batch_sizes: Tensor, h0: Tensor, c0: Tensor, weights: List[Tensor]
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Variable lengths as ``nn.LSTM`` runs a ``PackedSequence``: packed ``data (N, F)``, ``batch_sizes (T,)``
        (CPU int64) and states ``(2L, B, H)`` in the packed (sorted) order. An all-``concat`` stack is one fused call
        (between-layer dropout inside it, as ``nn.LSTM``); otherwise one bidirectional call per layer and the merge
        on the packed data. Returns ``(out (N, *), h_n, c_n)``, ``*`` the merged feature shape, states still sorted.
        """
        dropout = self.dropout if self.training else 0.0
        train = torch.is_grad_enabled() or dropout > 0.0       # as _fused: cuDNN's flag, and dropout needs it
        if self.all_concat:
            return _packed_call(self.mode, data, batch_sizes, h0, c0, weights, self.bias, self.num_layers, dropout,
                                train)
        hs: List[Tensor] = []
        cs: List[Tensor] = []
        for layer in range(self.num_layers):
            first = 2 * layer
            out, h, c = _packed_call(self.mode, data, batch_sizes, h0[first:first + 2], c0[first:first + 2],
                                     self._layer_weights(weights, layer, 2), self.bias, 1, 0.0, train)
            data = self._between_layers(merge_stacked(out, self.merge_modes[layer], self.hidden_size),
                                        layer == self.num_layers - 1)
            hs.append(h)
            cs.append(c)
        return data, torch.cat(hs, 0), torch.cat(cs, 0)

    def _run_layers_with_lengths(
        self, x: Tensor, lengths: Tensor, h0: Tensor, c0: Tensor, weights: List[Tensor]
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Right-padded batch with ``lengths (B,)``: two single-direction fused calls per layer (``reset_after=False``:
        one bidirectional time loop per layer, which takes ``lengths`` itself)."""
        if not self.reset_after:
            return self._run_reset_before_with_lengths(x, lengths, h0, weights)
        seq_len, batch = x.shape[0], x.shape[1]
        steps = torch.arange(seq_len, device=x.device).unsqueeze(1)           # (T, 1)
        valid = steps < lengths.unsqueeze(0)                                   # (T, B)
        pad = (~valid).unsqueeze(-1)                                           # (T, B, 1)
        # Reverse each sequence within its own length; padded steps stay where they are. The map is
        # its own inverse, so the same index reverses the backward output back.
        reverse_index = torch.where(valid, lengths.unsqueeze(0) - 1 - steps, steps).unsqueeze(-1)  # (T, B, 1)
        last_index = (lengths - 1).view(1, batch, 1).expand(1, batch, self.hidden_size)
        # Padded inputs may hold anything (NaN included): zero them so no gradient can pick them up.
        x = x.masked_fill(pad, 0.0)
        hs: List[Tensor] = []
        cs: List[Tensor] = []
        for layer in range(self.num_layers):
            first = 2 * layer
            x, h, c = self._layer_with_lengths(
                x, pad, reverse_index, last_index, h0[first:first + 2], c0[first:first + 2],
                self._layer_weights(weights, layer, 0), self._layer_weights(weights, layer, 1), self.merge_modes[layer],
                layer == self.num_layers - 1)
            hs.append(h)
            cs.append(c)
        h_n = torch.cat(hs, 0)
        return x, h_n, torch.cat(cs, 0) if self.mode == "LSTM" else h_n

    def _run_reset_before_with_lengths(
        self, x: Tensor, lengths: Tensor, h0: Tensor, weights: List[Tensor]
    ) -> Tuple[Tensor, Tensor, Tensor]:
        hs: List[Tensor] = []
        for layer in range(self.num_layers):
            first = 2 * layer
            out, h = gru_reset_before(x, h0[first:first + 2], self._layer_weights(weights, layer, 2), self.bias, 1,
                                      0.0, torch.is_grad_enabled(), True, lengths)
            x = self._between_layers(merge_stacked(out, self.merge_modes[layer], self.hidden_size),
                                     layer == self.num_layers - 1)
            hs.append(h)
        h_n = torch.cat(hs, 0)
        return x, h_n, h_n

    def _layer_with_lengths(
        self, x: Tensor, pad: Tensor, reverse_index: Tensor, last_index: Tensor, h0: Tensor, c0: Tensor,
        forward_weights: List[Tensor], backward_weights: List[Tensor], mode: Optional[str], is_last: bool,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """One layer on a right-padded ``x (T, B, F)``; returns the merged output and ``h, c`` each ``(2, B, H)``."""
        if self.mode == "LSTM":
            x = torch.cat([x, pad.to(x.dtype)], -1)
            forward_weights = [self._saturating_input_weight(forward_weights[0])] + forward_weights[1:]
            backward_weights = [self._saturating_input_weight(backward_weights[0])] + backward_weights[1:]
        x_reversed = x.gather(0, reverse_index.expand(x.shape))
        out_f, _, c_f = self._fused(x, h0[0:1], c0[0:1], forward_weights, 1, 0.0, False)
        out_b, _, c_b = self._fused(x_reversed, h0[1:2], c0[1:2], backward_weights, 1, 0.0, False)
        # h_n is the output at each sequence's last valid step: the kernel's own final h has run on through
        # padding. The LSTM's c did not move at padded steps (see _SATURATE).
        h = torch.cat([out_f.gather(0, last_index), out_b.gather(0, last_index)], 0)
        out_b = out_b.gather(0, reverse_index.expand(out_b.shape))
        merged = merge_directions(out_f.masked_fill(pad, 0.0), out_b.masked_fill(pad, 0.0), mode)
        return self._between_layers(merged, is_last), h, torch.cat([c_f, c_b], 0)

    def _saturating_input_weight(self, weight_ih: Tensor) -> Tensor:
        """``(4H, F)`` -> ``(4H, F + 1)``: an extra input column (1 at padded steps) that pins i=0, f=1."""
        hidden = self.hidden_size
        column = weight_ih.new_zeros(4 * hidden, 1)
        column[:hidden] = -self.saturate
        column[hidden:2 * hidden] = self.saturate
        return torch.cat([weight_ih, column], 1)
