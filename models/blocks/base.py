"""Merge-aware multi-layer bidirectional LSTM / GRU / RNN blocks.

``BiLSTM(input_size, hidden_size, num_layers, merge_mode="sum")`` is ``nn.LSTM(bidirectional=True)``
plus a Keras merge mode after every layer. Parameters carry ``nn.LSTM``'s names (``weight_ih_l0``,
``weight_hh_l0_reverse``, ...), so with ``merge_mode="concat"`` an ``nn.LSTM`` state_dict loads as is.

How each forward runs (``T`` time steps, ``B`` sequences, time-major inside):
- CPU LSTM/GRU in float32/float64 (eager or ``torch.compile``), both directions at once and padded steps skipped
  per row: without gradients in eager mode, one call of the project's kernel for all the layers and their merges
  (``models/blocks/cpu_kernel/inference.py``); otherwise (training, ``torch.compile``) one call per layer
  (``models/blocks/cpu_kernel/__init__.py``), then the merge.
Otherwise (CUDA, ``BiRNN``, autocast, TorchScript, ``torch.export``, the kernel unavailable or ``disabled()``),
on PyTorch's fused kernels (``models/blocks/fused.py``):
- all layers ``concat`` and no ``lengths``: one fused call for the whole stack, exactly ``nn.LSTM``;
- otherwise one fused bidirectional call per layer, then the merge;
- with ``lengths`` (and a ``PackedSequence``) on CUDA: packed data, as ``nn.LSTM`` runs a ``PackedSequence``
  (``fused._run_layers_packed``): one cuDNN call for an all-``concat`` stack, else one bidirectional call per
  layer with the merge on the packed data;
- with ``lengths`` elsewhere each layer runs two single-direction fused calls on the padded batch: the forward
  direction as is (trailing padding cannot reach valid steps) and the backward direction on each
  sequence reversed within its own length (an index gather), reversed back after. No
  ``PackedSequence`` on the CPU: it takes the LSTM off oneDNN (2.4x-6.1x slower per training step).
cuDNN's train flag is ``torch.is_grad_enabled()`` (backward works in eval mode); dropout is 0 outside training.
``BiGRU(reset_after=False)`` (Keras's original GRU) runs on the CPU kernel's third cell; elsewhere it takes the
paths above with each fused call replaced by ``models/blocks/gru_reset_before.py``'s exact time loop (both
directions in one recurrence, one call per layer with ``lengths``; TorchScript-compiled on CUDA).
"""


import math
import warnings
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..arguments import check_positive_int, check_probability
from ..cells import GATES, GRU_RESET_BEFORE
from ..merge import MergeMode, merge_stacked, merged_size, resolve_merge_modes
from . import cpu_kernel
from .compile_boundary import eager_under_compile, exporting
from .cpu_kernel import bf16 as cpu_kernel_bf16
from .cpu_kernel import inference as cpu_kernel_inference
from .fused import _SATURATE, _FusedPaths
from .packed import repack, unpack
from .row_order import longest_first, reorder
from .validation import check_hidden, check_input, check_lengths, check_not_lengths, check_weights


class _BiRNNBase(_FusedPaths):
    """Shared machinery of ``BiLSTM``, ``BiGRU`` and ``BiRNN`` (see the module docstring)."""

    __constants__ = ["mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                     "all_concat", "gates", "output_size", "saturate", "bidirectional", "proj_size", "reset_after"]
    __jit_unused_properties__ = ["all_weights"]
    saturate = _SATURATE
    reset_after = True  # BiGRU(reset_after=False) sets False: Keras's original GRU (kernel cell 2, or gru_reset_before)
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
        *,
        bidirectional: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            check_positive_int(name, value)
        check_probability("dropout", dropout)
        for name, flag in (("bias", bias), ("batch_first", batch_first)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}: {flag!r}")
        if bidirectional is not True:
            raise ValueError(
                f"bidirectional={bidirectional!r}: {type(self).__name__} is always bidirectional (it exists to "
                f"merge the two directions); use nn.{self.MODE.split('_')[0]} for one direction"
            )
        if dropout > 0 and num_layers == 1:
            # nn.LSTM's own warning, word for word.
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                stacklevel=3,
            )
        self.mode = self.MODE
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = True
        self.proj_size = 0
        self.merge_modes = resolve_merge_modes(merge_mode, num_layers)
        self.all_concat = all(m == "concat" for m in self.merge_modes)
        self.gates = GATES[self.mode]
        self.output_size = merged_size(self.merge_modes[-1], hidden_size)

        factory = {"device": device, "dtype": dtype}
        gate_size = self.gates * hidden_size
        self._flat_weights_names: List[str] = []
        self._all_weights: List[List[str]] = []  # names per (layer, direction), as nn.LSTM keeps them
        layer_input = input_size
        for layer in range(num_layers):
            for suffix in ("", "_reverse"):
                shapes = [("weight_ih", (gate_size, layer_input)), ("weight_hh", (gate_size, hidden_size))]
                if self.bias:
                    shapes += [("bias_ih", (gate_size,)), ("bias_hh", (gate_size,))]
                names = [f"{kind}_l{layer}{suffix}" for kind, _ in shapes]
                for name, (_, shape) in zip(names, shapes, strict=True):
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
            layer_input = merged_size(self.merge_modes[layer], hidden_size)
        self._init_flat_weights()
        self.reset_parameters()
        # The CPU kernel is built (first time on this machine) or loaded by the first forward that can use it
        # (cpu_kernel.can_run), under torch.compile too: constructing a block compiles nothing.

    # -- parameters ---------------------------------------------------------------------------------
    # Eager code (and torch.compile) reads the weights from the module's attributes at every call
    # (_current_weights), so functional_call, parametrizations, pruning, vmap ensembles and assign=True loads
    # all see what they set. TorchScript cannot look attributes up by name: it reads _flat_weights, the
    # list kept in step below (as nn.RNNBase keeps its own).
    def _init_flat_weights(self) -> None:
        try:
            self._flat_weights = [getattr(self, name) for name in self._flat_weights_names]
        except AttributeError:
            return  # a weight is being replaced (pruning, parametrizations): the next assignment refreshes the list
        self.flatten_parameters()

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        if hasattr(self, "_flat_weights_names") and name in self._flat_weights_names:
            self._init_flat_weights()

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        result = super()._apply(fn, recurse)
        self._init_flat_weights()
        cpu_kernel_inference.clear(self)  # the prepared inference weights are of the old tensors
        cpu_kernel_bf16.clear(self)
        return result

    def train(self, mode: bool = True) -> "_BiRNNBase":
        cpu_kernel_inference.clear(self)  # a plan is kept in eval mode only, and eval() re-reads the weights
        cpu_kernel_bf16.clear(self)
        return super().train(mode)

    @torch.jit.unused
    def _current_weights(self) -> List[Tensor]:
        # Registered parameters straight from the dict: 16 trips through nn.Module.__getattr__ cost ~20 us a call
        # (a tenth of a short request's fixed cost). A name that is no parameter now (parametrizations, pruning,
        # weight_norm) through getattr, as always; functional_call swaps the dict's entries, so it is seen too.
        params = self._parameters
        return [params[name] if name in params else getattr(self, name) for name in self._flat_weights_names]

    def _weights_now(self) -> List[Tensor]:
        """The weights in ``nn.LSTM``'s flat order (per layer: forward then backward, each
        ``w_ih, w_hh[, b_ih, b_hh]``), as the module holds them at this call."""
        if torch.jit.is_scripting():
            return self._flat_weights
        return self._current_weights()

    @property
    def all_weights(self) -> List[List[Tensor]]:
        """Weights per ``(layer, direction)``: ``[[w_ih, w_hh, b_ih, b_hh] of layer 0 forward, ... reverse, ...]``,
        as ``nn.LSTM.all_weights`` nests them (without the biases when ``bias=False``)."""
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def cudnn_call_sites(self) -> List[Tuple[List[str], int, int]]:
        """The fused calls a CUDA forward makes, each ``(weight names, input size, number of layers)``: the whole
        stack when every layer is ``concat`` (one call, with or without lengths, as ``nn.LSTM``), else one call per
        layer (each with its own input width). ``flatten_parameters`` keeps one cuDNN weight buffer per site."""
        if self.all_concat:
            return [(list(self._flat_weights_names), self.input_size, self.num_layers)]
        per_layer = 2 * (4 if self.bias else 2)
        sites: List[Tuple[List[str], int, int]] = []
        layer_input = self.input_size
        for layer in range(self.num_layers):
            sites.append((self._flat_weights_names[layer * per_layer:(layer + 1) * per_layer], layer_input, 1))
            layer_input = merged_size(self.merge_modes[layer], self.hidden_size)
        return sites

    def flatten_parameters(self) -> None:
        """On CUDA with cuDNN, lay the weights of each fused call (``cudnn_call_sites``) out in one contiguous
        buffer in cuDNN's order, the parameters becoming views into it, as ``nn.LSTM.flatten_parameters`` does for
        its single call: cuDNN then reads the weights in place (no per-call copy, no "not part of single contiguous
        chunk of memory" warning). Runs by itself after construction, ``.to()``/``.cuda()`` and every weight
        assignment (``load_state_dict`` copies into the views, so they stay flat). Elsewhere (CPU, weights of
        mixed dtypes or shared storage, ``reset_after=False`` which never calls cuDNN) it does nothing."""
        weights = getattr(self, "_flat_weights", [])
        names = getattr(self, "_flat_weights_names", [])
        if not names or len(weights) != len(names) or not self.reset_after:
            return
        first = weights[0]
        for weight in weights:
            if (not isinstance(weight, Tensor) or not weight.is_cuda or weight.dtype != first.dtype
                    or not torch.backends.cudnn.is_acceptable(weight)):
                return
        if len({weight.data_ptr() for weight in weights}) != len(weights):
            return  # aliased weights: cuDNN copies them per call, as for nn.LSTM
        from torch.backends.cudnn import rnn as cudnn_rnn

        with torch.cuda.device_of(first), torch.no_grad():
            if not torch._use_cudnn_rnn_flatten_weight():
                return
            for site_names, input_size, layers in self.cudnn_call_sites():
                # In place: each parameter becomes a view into the site's new buffer (same Parameter objects).
                torch._cudnn_rnn_flatten_weight(
                    [getattr(self, name) for name in site_names], 4 if self.bias else 2, input_size,
                    cudnn_rnn.get_cudnn_mode(self.mode), self.hidden_size, 0, layers, self.batch_first, True)

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

    def _layer_weights(self, weights: List[Tensor], layer: int, direction: int) -> List[Tensor]:
        """Weights of one layer: ``direction`` 0 forward, 1 backward, 2 both (fused bidirectional order)."""
        per = 4 if self.bias else 2
        start = layer * 2 * per
        if direction == 2:
            return weights[start:start + 2 * per]
        start += direction * per
        return weights[start:start + per]

    # -- TorchScript ----------------------------------------------------------------------------------
    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` compiles a twin whose ``forward`` takes ``lengths`` as an ordinary third argument
        (TorchScript has no keyword-only arguments) and a plain tensor input (no ``PackedSequence``). The twin
        shares this module's ``__dict__``: parameters, buffers, ``training``, everything."""
        twin_class = _SCRIPTABLE.get(type(self))
        if twin_class is None:
            return self  # already a twin, or a user's subclass with its own forward
        twin = twin_class.__new__(twin_class)
        twin.__dict__ = self.__dict__
        cpu_kernel_inference.share(self, twin)  # torch.jit.script(parent) keeps the twin: it reads the same plans
        cpu_kernel_bf16.share(self, twin)
        return twin

    # -- forward --------------------------------------------------------------------------------------
    def run(
        self, input: Tensor, h0: Optional[Tensor] = None, c0: Optional[Tensor] = None,
        lengths: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """The forward on a tensor with one return type for all three blocks (scriptable):
        ``(output, h_n, c_n)``, with ``c_n`` equal to ``h_n`` for ``BiGRU``/``BiRNN`` (which take no ``c0``).
        Shapes, ``lengths`` and checks as ``forward``."""
        if self.mode != "LSTM" and c0 is not None:
            raise ValueError(f"c0 is the LSTM's cell state; {self.mode} blocks take h0 only")
        return self._run(input, h0, c0, lengths, self.batch_first, "h0", "c0")

    def _run(
        self, input: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], lengths: Optional[Tensor],
        batch_first: bool, h_name: str, c_name: str,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Checked input -> ``(output, h_n, c_n)``; output ``(T, B, out)`` (``(B, T, out)`` when ``batch_first``,
        ``(T, out)`` unbatched), states ``(2L, B, H)`` (``(2L, H)`` unbatched). Every check comes before compute."""
        weights = self._weights_now()
        check_input(input, self.input_size, batch_first)
        check_not_lengths(h0, h_name)
        if torch.jit.is_scripting() or not self._autocasting():
            check_weights(input, weights[0])
        batched = input.dim() == 3
        batch_axis = 0 if batch_first else 1
        if not batched:
            input = input.unsqueeze(batch_axis)  # batch_first does not apply to unbatched input (as nn.LSTM)
            if lengths is not None:
                if lengths.numel() != 1 or lengths.dim() > 1:
                    raise ValueError(f"lengths for unbatched input must hold one length (shape () or (1,)), got "
                                     f"shape {list(lengths.shape)}")
                lengths = lengths.reshape(1)
        x = input.transpose(0, 1) if batch_first else input
        seq_len, batch = x.shape[0], x.shape[1]
        # An empty batch runs on the fused kernels, which return outputs and states of the right shapes (a trace
        # records sizes as tensors: it takes the general path).
        empty = not torch.jit.is_tracing() and batch == 0
        packed = False
        if lengths is not None:
            if not torch.jit.is_scripting() and not empty and self._packed_path(x):
                # The packed call needs lengths on the host: one copy (one sync for CUDA lengths), checked there.
                packed = True
                lengths = check_lengths(lengths.cpu(), batch, seq_len)
            else:
                lengths = check_lengths(lengths, batch, seq_len).to(x.device)
        shape = [2 * self.num_layers, batch, self.hidden_size]
        given = shape if batched else [2 * self.num_layers, self.hidden_size]
        if h0 is None:
            h0 = x.new_zeros(shape)
        else:
            check_hidden(h0, given, h_name, x)
            h0 = h0 if batched else h0.unsqueeze(1)
        if c0 is None:
            c0 = h0 if self.mode != "LSTM" else x.new_zeros(shape)
        else:
            check_hidden(c0, given, c_name, x)
            c0 = c0 if batched else c0.unsqueeze(1)
        if empty:
            lengths = None

        if packed and lengths is not None:
            out, h_n, c_n = self._run_lengths_packed(x, lengths, h0, c0, weights)
        elif not torch.jit.is_scripting() and not empty and self._bf16_applies(x, weights):
            out, h_n, c_n = cpu_kernel_bf16.run(self, self._kernel_cell(), x, lengths, h0, c0, weights, self.bias,
                                                self.merge_modes, self.hidden_size)
        elif not torch.jit.is_scripting() and not empty and self._kernel_applies(x, lengths, weights):
            out, h_n, c_n = self._run_kernel_layers(x, lengths, h0, c0, weights)
        elif lengths is None and self.all_concat:
            # The whole stack in one fused call: exactly nn.LSTM(bidirectional=True).
            out, h_n, c_n = self._fused(x, h0, c0, weights, self.num_layers, self.dropout, True)
        elif lengths is None:
            out, h_n, c_n = self._run_layers(x, h0, c0, weights)
        else:
            out, h_n, c_n = self._run_layers_with_lengths(x, lengths, h0, c0, weights)
        if batch_first:
            out = out.transpose(0, 1)
        if not batched:
            out, h_n, c_n = out.squeeze(batch_axis), h_n.squeeze(1), c_n.squeeze(1)
        return out, h_n, c_n

    @torch.jit.unused
    def _autocasting(self) -> bool:
        return torch._C._is_any_autocast_enabled()

    @torch.jit.unused
    def _run_packed(
        self, packed: PackedSequence, h0: Optional[Tensor], c0: Optional[Tensor], lengths: Optional[Tensor],
        h_name: str, c_name: str,
    ) -> Tuple[PackedSequence, Tensor, Tensor]:
        """``PackedSequence`` in and out, on the ``lengths`` path (see ``models/blocks/packed.py``)."""
        if lengths is not None:
            raise ValueError("pass either a PackedSequence or lengths, not both: a PackedSequence carries its own "
                             "lengths")
        if self._packed_path(packed.data):
            return self._run_packed_data(packed, h0, c0, h_name, c_name)
        padded, packed_lengths = unpack(packed)
        out, h_n, c_n = self._run(padded, h0, c0, packed_lengths, False, h_name, c_name)
        return repack(out, packed_lengths, packed), h_n, c_n

    @torch.jit.unused
    def _packed_path(self, x: Tensor) -> bool:
        """Whether ``lengths`` and ``PackedSequence`` run on packed data (``fused._run_layers_packed``): on CUDA,
        where cuDNN takes variable lengths natively (both directions in one call). Not for ``reset_after=False``
        (no fused kernel) nor under a trace or ``torch.export`` (packing has data-dependent sizes); on CPU packed
        input would take the LSTM off oneDNN, so the CPU keeps the padded path."""
        return x.is_cuda and self.reset_after and not torch.jit.is_tracing() and not exporting()

    @torch.jit.unused
    def _run_lengths_packed(
        self, x: Tensor, lengths: Tensor, h0: Tensor, c0: Tensor, weights: List[Tensor]
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Right-padded ``x (T, B, F)`` with checked host ``lengths (B,)``: packed, run on the packed path, padded
        back to ``T`` (zeros at padded steps); states in the caller's order. Padding never enters the packed data,
        so NaN there cannot reach outputs or gradients."""
        return _eager(self._lengths_packed, x, lengths, h0, c0, weights)

    @torch.jit.unused
    def _lengths_packed(
        self, x: Tensor, lengths: Tensor, h0: Tensor, c0: Tensor, weights: List[Tensor]
    ) -> Tuple[Tensor, Tensor, Tensor]:
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        order, unorder = packed.sorted_indices, packed.unsorted_indices
        data, h_n, c_n = self._run_layers_packed(packed.data, packed.batch_sizes, h0.index_select(1, order),
                                                 c0.index_select(1, order), weights)
        out, _ = pad_packed_sequence(PackedSequence(data, packed.batch_sizes, order, unorder),
                                     total_length=x.shape[0])
        h_n = h_n.index_select(1, unorder)
        return out, h_n, c_n.index_select(1, unorder) if self.mode == "LSTM" else h_n

    @torch.jit.unused
    def _run_packed_data(
        self, packed: PackedSequence, h0: Optional[Tensor], c0: Optional[Tensor], h_name: str, c_name: str,
    ) -> Tuple[PackedSequence, Tensor, Tensor]:
        """A ``PackedSequence`` straight onto the packed path: no unpacking, output laid out as the input."""
        return _eager(self._packed_data, packed, h0, c0, h_name, c_name)

    @torch.jit.unused
    def _packed_data(
        self, packed: PackedSequence, h0: Optional[Tensor], c0: Optional[Tensor], h_name: str, c_name: str,
    ) -> Tuple[PackedSequence, Tensor, Tensor]:
        data = packed.data
        if data.dim() != 2:
            raise ValueError(
                f"a PackedSequence for the blocks must hold data of shape (N, input_size), got {list(data.shape)}"
            )
        weights = self._weights_now()
        check_input(data, self.input_size, False)
        if not self._autocasting():
            check_weights(data, weights[0])
        shape = [2 * self.num_layers, int(packed.batch_sizes[0]), self.hidden_size]
        states: List[Tensor] = []
        for state, name in ((h0, h_name), (c0, c_name)):
            if state is None:
                states.append(data.new_zeros(shape))
                continue
            check_not_lengths(state, name)
            check_hidden(state, shape, name, data)
            states.append(state if packed.sorted_indices is None else state.index_select(1, packed.sorted_indices))
        if self.mode != "LSTM":
            states[1] = states[0]
        out, h_n, c_n = self._run_layers_packed(data, packed.batch_sizes, states[0], states[1], weights)
        if packed.unsorted_indices is not None:
            h_n = h_n.index_select(1, packed.unsorted_indices)
            c_n = c_n.index_select(1, packed.unsorted_indices) if self.mode == "LSTM" else h_n
        return PackedSequence(out, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices), h_n, c_n

    @torch.jit.unused
    def _kernel_applies(self, x: Tensor, lengths: Optional[Tensor], weights: List[Tensor]) -> bool:
        """The CPU kernel or PyTorch's kernels: ``models/blocks/cpu_kernel/policy.py`` decides (training = gradients).
        A reset_after=False BiGRU is the kernel's third cell, ``GRU_RESET_BEFORE``."""
        training = torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights))
        return cpu_kernel.applies(x, self._kernel_cell(), self.hidden_size, lengths is not None, training)

    @torch.jit.unused
    def _bf16_applies(self, x: Tensor, weights: List[Tensor]) -> bool:
        """bf16 inference on the CPU kernel (``models/blocks/cpu_kernel/bf16.py`` says when): not with dropout to
        apply."""
        return not (self.training and self.dropout > 0.0) and cpu_kernel_bf16.applies(x, self._kernel_cell(), weights)

    @torch.jit.unused
    def _kernel_cell(self) -> str:
        return self.mode if self.reset_after else GRU_RESET_BEFORE.mode

    @torch.jit.unused
    def _run_kernel_layers(
        self, x: Tensor, lengths: Optional[Tensor], h0: Tensor, c0: Tensor, weights: List[Tensor]
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """CPU: one call of ``models/blocks/cpu_kernel/csrc``'s kernel per layer (both directions at once), then the
        merge. Without gradients (and without dropout to apply), ``cpu_kernel/inference.py``'s direct path: one call
        for all the layers."""
        if (not (self.training and self.dropout > 0.0)
                and cpu_kernel_inference.usable(x, weights)):
            return cpu_kernel_inference.run_layers(self, self._kernel_cell(), x, lengths, h0, c0, weights, self.bias,
                                                   self.merge_modes, self.hidden_size)
        rows: Optional[Tuple[Tensor, Tensor]] = None  # (order, inverse) when the batch runs longest first
        if lengths is not None:
            # Padded inputs may hold anything (NaN included): zero them so no gradient can pick them up.
            steps = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
            x = x.masked_fill((steps >= lengths.unsqueeze(0)).unsqueeze(-1), 0.0)
            if x.shape[1] > 1:
                # Longest first: the kernel's products and gradient sums then skip the rows padded at each step
                # (csrc/args.h, StepRows). Rows never interact, so only their order changes, undone below.
                rows = order, back = longest_first(lengths)
                x, lengths = reorder(x, 1, order, back), lengths.index_select(0, order)
                h0, c0 = reorder(h0, 1, order, back), reorder(c0, 1, order, back)
        hs: List[Tensor] = []
        cs: List[Tensor] = []
        for layer in range(self.num_layers):
            first = 2 * layer
            out, h, c = cpu_kernel.fused_layer(self._kernel_cell(), x, h0[first:first + 2], c0[first:first + 2],
                                               lengths, self._layer_weights(weights, layer, 2), self.bias)
            x = self._between_layers(merge_stacked(out.flatten(2), self.merge_modes[layer], self.hidden_size),
                                     layer == self.num_layers - 1)
            hs.append(h)
            cs.append(c)
        h_n, c_n = torch.cat(hs, 0), torch.cat(cs, 0)
        if rows is not None:
            x, h_n, c_n = (reorder(t, 1, rows[1], rows[0]) for t in (x, h_n, c_n))
        return x, h_n, c_n


# Packing has data-dependent sizes: torch.compile leaves the packed paths to eager PyTorch (one graph break each)
# rather than tracing into pack_padded_sequence.
_eager = eager_under_compile("packed_paths", lambda fn, *args: fn(*args))

# Filled by models/blocks/scriptable.py: public class -> its TorchScript twin.
_SCRIPTABLE: Dict[type, type] = {}
