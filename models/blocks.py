"""Merge-aware multi-layer bidirectional LSTM / GRU / RNN blocks.

``BiLSTM(input_size, hidden_size, num_layers, merge_mode="sum")`` is ``nn.LSTM(bidirectional=True)``
plus a Keras merge mode after every layer. Parameters carry ``nn.LSTM``'s names (``weight_ih_l0``,
``weight_hh_l0_reverse``, ...), so with ``merge_mode="concat"`` an ``nn.LSTM`` state_dict loads as is.

How each forward runs (``T`` time steps, ``B`` sequences, time-major inside):
- CPU LSTM/GRU in float32/float64 (eager or ``torch.compile``): one call of the project's kernel per layer,
  both directions at once, padded steps skipped per row (``models/cpu_kernel.py``), then the merge.
Otherwise (CUDA, ``BiRNN``, autocast, TorchScript, ``torch.export``, the kernel unavailable or ``disabled()``),
on PyTorch's fused kernels:
- all layers ``concat`` and no ``lengths``: one fused call for the whole stack, exactly ``nn.LSTM``;
- otherwise one fused bidirectional call per layer, then the merge;
- with ``lengths`` each layer runs two single-direction fused calls on the padded batch: the forward
  direction as is (trailing padding cannot reach valid steps) and the backward direction on each
  sequence reversed within its own length (an index gather), reversed back after. No
  ``PackedSequence``: it takes the CPU LSTM off oneDNN (2.4x-6.1x slower per training step).
"""


import math
from typing import List, Optional, Tuple

import torch
from torch import _VF, Tensor, nn

from . import cpu_kernel
from .merge import MergeMode, merge_directions, merge_stacked, merged_size, resolve_merge_modes
from .validation import check_hidden, check_input, check_lengths

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}

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
    """One fused RNN call on time-major ``x (T, B, F)``; returns ``(output, h_n, c_n)`` (``c_n = h_n`` unless LSTM)."""
    if mode == "LSTM":
        out, h, c = _VF.lstm(x, [h0, c0], weights, has_biases, num_layers, dropout, train, bidirectional, False)
        return out, h, c
    if mode == "GRU":
        out, h = _VF.gru(x, h0, weights, has_biases, num_layers, dropout, train, bidirectional, False)
    elif mode == "RNN_TANH":
        out, h = _VF.rnn_tanh(x, h0, weights, has_biases, num_layers, dropout, train, bidirectional, False)
    else:
        out, h = _VF.rnn_relu(x, h0, weights, has_biases, num_layers, dropout, train, bidirectional, False)
    return out, h, h


# torch.compile leaves the fused call to eager PyTorch (one graph break) so the fused oneDNN/cuDNN kernel and its
# autograd run as they are; dynamo would otherwise unroll the recurrence per time step. TorchScript cannot see
# through this wrapper and calls _fused_kernels directly.
_fused_call = torch.compiler.disable(_fused_kernels)


class _BiRNNBase(nn.Module):
    """Shared machinery of ``BiLSTM``, ``BiGRU`` and ``BiRNN`` (see the module docstring)."""

    __constants__ = ["mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                     "all_concat", "gates", "output_size", "saturate"]
    saturate = _SATURATE
    merge_modes: List[Optional[str]]
    _flat_weights: List[Tensor]

    MODE = "LSTM"  # the kernel family, set by each subclass

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        merge_mode: MergeMode = "concat",
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be a float in [0, 1], got {dropout!r}")
        self.mode = self.MODE
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.merge_modes = resolve_merge_modes(merge_mode, num_layers)
        self.all_concat = all(m == "concat" for m in self.merge_modes)
        self.gates = _GATES[self.mode]
        self.output_size = merged_size(self.merge_modes[-1], hidden_size)

        factory = {"device": device, "dtype": dtype}
        gate_size = self.gates * hidden_size
        self._flat_weights_names: List[str] = []
        layer_input = input_size
        for layer in range(num_layers):
            for suffix in ("", "_reverse"):
                shapes = [("weight_ih", (gate_size, layer_input)), ("weight_hh", (gate_size, hidden_size))]
                if self.bias:
                    shapes += [("bias_ih", (gate_size,)), ("bias_hh", (gate_size,))]
                for kind, shape in shapes:
                    name = f"{kind}_l{layer}{suffix}"
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
                    self._flat_weights_names.append(name)
            layer_input = merged_size(self.merge_modes[layer], hidden_size)
        self._init_flat_weights()
        self.reset_parameters()
        if device is None or torch.device(device).type == "cpu":
            # Build (first time on this machine, ~7 s) or load the CPU kernel now, not at the first forward:
            # torch.compile can only trace a kernel that is already loaded.
            cpu_kernel.available()

    # -- parameters ---------------------------------------------------------------------------------
    def _init_flat_weights(self) -> None:
        self._flat_weights = [getattr(self, name) for name in self._flat_weights_names]

    def __setattr__(self, name: str, value: object) -> None:
        # Keep the flat list in step when a weight is replaced (as nn.RNNBase does).
        super().__setattr__(name, value)
        if hasattr(self, "_flat_weights_names") and name in self._flat_weights_names:
            self._init_flat_weights()

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        result = super()._apply(fn, recurse)
        self._init_flat_weights()
        return result

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(H), 1/sqrt(H)) for every weight and bias, as ``nn.LSTM`` does."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, merge_mode={self.merge_modes}"
        if not self.bias:
            text += ", bias=False"
        if self.batch_first:
            text += ", batch_first=True"
        if self.dropout:
            text += f", dropout={self.dropout}"
        return text

    def _layer_weights(self, layer: int, direction: int) -> List[Tensor]:
        """Weights of one layer: ``direction`` 0 forward, 1 backward, 2 both (fused bidirectional order)."""
        per = 4 if self.bias else 2
        start = layer * 2 * per
        if direction == 2:
            return self._flat_weights[start:start + 2 * per]
        start += direction * per
        return self._flat_weights[start:start + per]

    # -- forward --------------------------------------------------------------------------------------
    def _run(
        self, input: Tensor, lengths: Optional[Tensor], h0: Optional[Tensor], c0: Optional[Tensor]
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Validated input -> ``(output, h_n, c_n)``; output ``(T, B, out)`` or batch-first, states ``(2L, B, H)``."""
        check_input(input, self.input_size, self.batch_first)
        x = input.transpose(0, 1) if self.batch_first else input
        seq_len, batch = x.shape[0], x.shape[1]
        if lengths is not None:
            lengths = check_lengths(lengths, batch, seq_len).to(x.device)
        shape = [2 * self.num_layers, batch, self.hidden_size]
        if h0 is None:
            h0 = x.new_zeros(shape)
        else:
            check_hidden(h0, shape, "hx" if self.mode != "LSTM" else "hx[0]", x)
        if c0 is None:
            c0 = h0 if self.mode != "LSTM" else x.new_zeros(shape)
        else:
            check_hidden(c0, shape, "hx[1]", x)

        if not torch.jit.is_scripting() and self._kernel_applies(x):
            out, h_n, c_n = self._run_kernel_layers(x, lengths, h0, c0)
        elif lengths is None and self.all_concat:
            # The whole stack in one fused call: exactly nn.LSTM(bidirectional=True).
            out, h_n, c_n = self._fused(x, h0, c0, self._flat_weights, self.num_layers, self.dropout, True)
        elif lengths is None:
            out, h_n, c_n = self._run_layers(x, h0, c0)
        else:
            out, h_n, c_n = self._run_layers_with_lengths(x, lengths, h0, c0)
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, h_n, c_n

    @torch.jit.unused
    def _kernel_applies(self, x: Tensor) -> bool:
        return cpu_kernel.applies(x, self.mode)

    @torch.jit.unused
    def _run_kernel_layers(
        self, x: Tensor, lengths: Optional[Tensor], h0: Tensor, c0: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """CPU: one call of ``models/csrc``'s kernel per layer (both directions at once), then the merge."""
        if lengths is not None:
            # Padded inputs may hold anything (NaN included): zero them so no gradient can pick them up.
            steps = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
            x = x.masked_fill((steps >= lengths.unsqueeze(0)).unsqueeze(-1), 0.0)
        hs: List[Tensor] = []
        cs: List[Tensor] = []
        for layer in range(self.num_layers):
            first = 2 * layer
            out, h, c = cpu_kernel.fused_layer(self.mode, x, h0[first:first + 2], c0[first:first + 2], lengths,
                                               self._layer_weights(layer, 2), self.bias)
            x = self._between_layers(merge_stacked(out.flatten(2), self.merge_modes[layer], self.hidden_size),
                                     layer == self.num_layers - 1)
            hs.append(h)
            cs.append(c)
        return x, torch.cat(hs, 0), torch.cat(cs, 0)

    def _fused(
        self, x: Tensor, h0: Tensor, c0: Tensor, weights: List[Tensor], num_layers: int, dropout: float,
        bidirectional: bool,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        if torch.jit.is_scripting():
            return _fused_kernels(self.mode, x, h0, c0, weights, self.bias, num_layers, dropout, self.training,
                                  bidirectional)
        return _fused_call(self.mode, x, h0, c0, weights, self.bias, num_layers, dropout, self.training,
                           bidirectional)

    def _between_layers(self, out: Tensor, is_last: bool) -> Tensor:
        if self.dropout > 0.0 and not is_last:
            out = torch.nn.functional.dropout(out, self.dropout, self.training)
        return out

    # The per-layer work lives in its own method: torch.compile cannot compile a loop body that contains a graph
    # break, but it compiles each call of a method (merges, gathers and masks) around the fused calls in it.
    def _run_layers(self, x: Tensor, h0: Tensor, c0: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """One fused bidirectional call per layer, then that layer's merge."""
        hs: List[Tensor] = []
        cs: List[Tensor] = []
        for layer in range(self.num_layers):
            first = 2 * layer
            x, h, c = self._layer(x, h0[first:first + 2], c0[first:first + 2], self._layer_weights(layer, 2),
                                  self.merge_modes[layer], layer == self.num_layers - 1)
            hs.append(h)
            cs.append(c)
        return x, torch.cat(hs, 0), torch.cat(cs, 0)

    def _layer(self, x: Tensor, h0: Tensor, c0: Tensor, weights: List[Tensor], mode: Optional[str],
               is_last: bool) -> Tuple[Tensor, Tensor, Tensor]:
        out, h, c = self._fused(x, h0, c0, weights, 1, 0.0, True)
        return self._between_layers(merge_stacked(out, mode, self.hidden_size), is_last), h, c

    def _run_layers_with_lengths(
        self, x: Tensor, lengths: Tensor, h0: Tensor, c0: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Right-padded batch with ``lengths (B,)``: two single-direction fused calls per layer."""
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
                self._layer_weights(layer, 0), self._layer_weights(layer, 1), self.merge_modes[layer],
                layer == self.num_layers - 1)
            hs.append(h)
            cs.append(c)
        h_n = torch.cat(hs, 0)
        return x, h_n, torch.cat(cs, 0) if self.mode == "LSTM" else h_n

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


class BiLSTM(_BiRNNBase):
    """Multi-layer bidirectional LSTM with a Keras merge mode after every layer.

    Args: as ``nn.LSTM`` (``input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0``) plus ``merge_mode``: one of ``"concat" | "sum" | "mul" | "ave"`` for every layer, or a
    list with one per layer; ``None`` (last layer only) keeps both directions, output ``(T, B, 2, H)``.

    Forward: ``input (T, B, input_size)`` (``(B, T, input_size)`` with batch_first), optional
    ``lengths (B,)`` int64 in ``[1, T]`` for right-padded batches (any order), optional
    ``hx = (h_0, c_0)`` each ``(2 * num_layers, B, H)``. Returns ``output, (h_n, c_n)``: output
    ``(T, B, 2H)`` for concat, ``(T, B, H)`` for sum/mul/ave, zero at padded steps; ``h_n``/``c_n``
    ``(2 * num_layers, B, H)`` in ``nn.LSTM``'s order (layer 0 forward, layer 0 backward, ...), the states
    at each sequence's true end.
    """

    MODE = "LSTM"

    def forward(
        self, input: Tensor, lengths: Optional[Tensor] = None, hx: Optional[Tuple[Tensor, Tensor]] = None
    ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        h0: Optional[Tensor] = None
        c0: Optional[Tensor] = None
        if hx is not None:
            h0, c0 = hx
        out, h_n, c_n = self._run(input, lengths, h0, c0)
        return out, (h_n, c_n)


class BiGRU(_BiRNNBase):
    """Multi-layer bidirectional GRU (PyTorch's formula, i.e. Keras ``reset_after=True``) with a merge mode
    after every layer. Arguments and shapes as ``BiLSTM``; ``hx`` is ``h_0 (2 * num_layers, B, H)`` and the
    forward returns ``output, h_n``.
    """

    MODE = "GRU"

    def forward(
        self, input: Tensor, lengths: Optional[Tensor] = None, hx: Optional[Tensor] = None
    ) -> Tuple[Tensor, Tensor]:
        out, h_n, _ = self._run(input, lengths, hx, None)
        return out, h_n


class BiRNN(_BiRNNBase):
    """Multi-layer bidirectional Elman RNN (``nonlinearity="tanh" | "relu"``, Keras ``SimpleRNN``) with a merge
    mode after every layer. Arguments and shapes as ``BiGRU``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        merge_mode: MergeMode = "concat",
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.MODE = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"  # read by the base constructor
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, merge_mode, device, dtype)
        self.nonlinearity = nonlinearity

    def forward(
        self, input: Tensor, lengths: Optional[Tensor] = None, hx: Optional[Tensor] = None
    ) -> Tuple[Tensor, Tensor]:
        out, h_n, _ = self._run(input, lengths, hx, None)
        return out, h_n
