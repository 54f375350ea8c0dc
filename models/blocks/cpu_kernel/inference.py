"""Eager inference on the CPU kernel: weights prepared once, one direct kernel call for all the layers.

Why: a single request (B = 1, T = 64, H = 128, 2 layers) spends about as long in fixed costs as in arithmetic
(``benchmarks/archive/RESULTS-2026-12.md``, "Inference against ONNX Runtime"): each call re-stacked both
directions' weights, repacked ``W_hh`` for the step product (35-240 us a direction and layer at H = 128-256),
went through the custom operator's dispatch and autograd glue, and allocated outputs it then concatenated. Without gradients
none of that is needed: ``run_layers`` keeps each layer's stacked weights and packed ``W_ih``, ``W_hh`` (the
input projections then run on the step product's micro-kernel too: 1.2-1.3x MKL's rate) in a plan cached
per module, and makes one call of the kernel's C entry point ``birnn_forward_stack_*``, which runs every layer
and merge in one parallel region and writes ``h_n``/``c_n`` of every layer into one ``(2L, B, H)`` tensor (one
call per layer, with the merges as torch ops between, cost a short request ~145 us more:
``benchmarks/archive/RESULTS-2026-12.md``).

The plan is reused only while every weight is the same tensor object, with the same storage (kept alive by the
plan, so an address cannot be reused) and the same version counter (bumped by every in-place write that
autograd sees: optimiser steps, ``load_state_dict``, ``copy_`` under ``no_grad``); ``train()``/``eval()``/``to()``
drop it, and only modules in eval mode keep one. Writes through ``.data`` (``p.data.copy_(...)``) bypass the
version counter, as they bypass autograd: call ``clear(module)`` (or ``module.eval()``) after them.

Taken only where it changes nothing but speed: eager mode (not tracing, compiling or exporting), no gradient
needed, plain tensors (no subclass, no dispatch or function mode), and where ``models.blocks.cpu_kernel.applies``
already chose the kernel. Outputs, ``h_n`` and ``c_n`` are those of the custom operator's path
(``tests/test_cpu_kernel_inference.py``).
"""

import ctypes
import threading
import weakref
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from ...merge import MERGE_MODES, merged_size
from .. import cpu_kernel
from . import abi
from .policy import inference_threads
from .weights import stack_layer

# The merge code birnn_forward_stack_* reads: its position in MERGE_MODES, None after them.
_MERGE_CODES = {**{mode: code for code, mode in enumerate(MERGE_MODES)}, None: len(MERGE_MODES)}

_plans: "weakref.WeakKeyDictionary[nn.Module, _Plan]" = weakref.WeakKeyDictionary()
_plans_lock = threading.Lock()


class _LayerWeights:
    """One layer's weights as the kernel reads them: ``w_ih (2, G, F)``, ``w_hh (2, G, H)``, the biases
    ``(2, G)`` (LSTM and reset-before GRU: ``b_ih + b_hh`` folded; GRU: ``b_hh`` apart, gated by r) and the
    packed ``W_ih`` and ``W_hh`` (float32 vector builds; else None: ``W_hh`` packed per call, the projections on
    BLAS)."""

    def __init__(self, cell: int, weights: List[Tensor], has_biases: bool) -> None:
        self.w_ih, self.b_ih, self.w_hh, self.b_hh = stack_layer(cpu_kernel.traits(cell), weights, has_biases)
        self.input_size = self.w_ih.shape[2]
        hidden = self.w_hh.shape[2]
        self.packed_ih: Optional[Tensor] = None
        self.packed_hh: Optional[Tensor] = None
        library = cpu_kernel._kernel()
        size_ih = int(library.birnn_packed_ih_floats(cell, hidden, self.input_size))
        size_hh = int(library.birnn_packed_hh_floats(cell, hidden))
        if self.w_hh.dtype == torch.float32 and size_ih > 0 and size_hh > 0:
            self.packed_ih = torch.empty(size_ih, dtype=torch.float32)
            self.packed_hh = torch.empty(size_hh, dtype=torch.float32)
            library.birnn_pack_ih_f32(cell, hidden, self.input_size, self.w_ih.data_ptr(), self.packed_ih.data_ptr())
            library.birnn_pack_hh_f32(cell, hidden, self.w_hh.data_ptr(), self.packed_hh.data_ptr())

    def addresses(self) -> Tuple[Optional[int], ...]:
        """``w_ih, packed_ih, b_ih, w_hh, packed_hh, b_hh`` as ``birnn_forward_stack_*`` reads them (None: absent;
        the packed copies only in float32 vector builds, else packed per call or BLAS)."""
        return (self.w_ih.data_ptr(), _address(self.packed_ih), _address(self.b_ih), self.w_hh.data_ptr(),
                _address(self.packed_hh), _address(self.b_hh))


class _Plan:
    """What a module's weights looked like when prepared, and the prepared layers."""

    def __init__(self, cell: int, weights: List[Tensor], has_biases: bool, num_layers: int) -> None:
        self.cell = cell
        self.weights = list(weights)  # references: their storage stays alive, so no address can be reused
        self.state = _state(weights) if not any(w.is_inference() for w in weights) else None
        per = (4 if has_biases else 2) * 2
        with torch.no_grad():
            self.layers = [_LayerWeights(cell, weights[i * per:(i + 1) * per], has_biases) for i in range(num_layers)]
        # What birnn_forward_stack_* reads: six addresses a layer (0 for an absent one) and each layer's input size.
        self._addresses = (ctypes.c_int64 * (6 * num_layers))(*[
            address or 0 for layer in self.layers for address in layer.addresses()])
        self.input_sizes = [layer.input_size for layer in self.layers]
        self._input_sizes = (ctypes.c_int32 * num_layers)(*self.input_sizes)
        self.addresses_address = ctypes.addressof(self._addresses)
        self.input_sizes_address = ctypes.addressof(self._input_sizes)

    def matches(self, cell: int, weights: List[Tensor]) -> bool:
        if cell != self.cell or len(weights) != len(self.weights):
            return False
        if self.state is None:
            return False
        # One pass, stopping at the first difference: this runs on every inference call (16 weights at 2 layers).
        for w, p, (address, version) in zip(weights, self.weights, self.state, strict=True):
            if w is not p or w._version != version or w.data_ptr() != address:
                return False
        return True


def _state(weights: List[Tensor]) -> Tuple[Tuple[int, int], ...]:
    return tuple((w.data_ptr(), w._version) for w in weights)


def _address(t: Optional[Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def clear(module: nn.Module) -> None:
    """Drop ``module``'s prepared weights (the next inference call prepares them again)."""
    with _plans_lock:
        _plans.pop(module, None)


def usable(x: Tensor, weights: List[Tensor]) -> bool:
    """Whether this call may take the direct path: eager, plain tensors, no dispatch or function mode, no
    gradient needed. (``cpu_kernel.applies`` has already ruled out tracing, exporting, autocast, ``torch.func``
    and ``disabled()``.)"""
    if torch.compiler.is_compiling() or torch._C._is_torch_function_mode_enabled():
        return False
    if torch._C._len_torch_dispatch_stack() > 0:
        return False
    if type(x) is not Tensor or (x.requires_grad and torch.is_grad_enabled()):
        return False
    grad = torch.is_grad_enabled()
    for w in weights:
        if type(w) is not nn.Parameter and type(w) is not Tensor:
            return False
        if grad and w.requires_grad:
            return False
    return True


def _plan_for(module: nn.Module, cell: int, weights: List[Tensor], has_biases: bool, num_layers: int) -> _Plan:
    """The module's cached plan if it still matches its weights, else a new one (cached in eval mode, when
    every weight has a version counter: inference-mode tensors do not)."""
    plan = _plans.get(module)
    if plan is not None and not module.training and plan.matches(cell, weights):  # a cached plan has a state
        return plan
    cacheable = not module.training and not any(w.is_inference() for w in weights)
    plan = _Plan(cell, weights, has_biases, num_layers)
    if cacheable:
        with _plans_lock:
            _plans[module] = plan
    return plan


def run_layers(module: nn.Module, mode: str, x: Tensor, lengths: Optional[Tensor], h0: Tensor, c0: Tensor,
               weights: List[Tensor], has_biases: bool, merge_modes: List[Optional[str]], hidden: int
               ) -> Tuple[Tensor, Tensor, Tensor]:
    """Every layer of a block on time-major ``x (T, B, F)`` (right-padded when ``lengths (B,)``), without
    gradients. ``h0``/``c0`` ``(2L, B, H)`` (``c0`` unused for GRU); ``weights`` in ``nn.LSTM``'s flat order.
    Returns the last layer's merged output ``(T, B, out)`` (zero at padded steps) and ``h_n``, ``c_n``
    ``(2L, B, H)`` (``c_n`` is ``h_n`` for GRU), as ``_run_kernel_layers`` does."""
    cell = cpu_kernel._CELLS[mode]
    num_layers = len(merge_modes)
    plan = _plan_for(module, cell, weights, has_biases, num_layers)
    library = cpu_kernel._kernel()
    steps, batch, _ = x.shape
    if x.dtype != plan.layers[0].w_ih.dtype:
        raise TypeError(f"input is {x.dtype} but the weights are {plan.layers[0].w_ih.dtype}")
    if list(h0.shape) != [2 * num_layers, batch, hidden] or h0.dtype != x.dtype:
        raise ValueError(f"h0 must be {x.dtype} of shape {[2 * num_layers, batch, hidden]}, got {h0.dtype} "
                         f"{list(h0.shape)}")
    cell_state = cpu_kernel.traits(cell).cell_state  # a second state, c
    h0 = h0.contiguous()
    c0 = c0.contiguous() if cell_state else h0
    if cell_state and (c0.shape != h0.shape or c0.dtype != x.dtype):
        raise ValueError(f"c0 must be {x.dtype} of shape {list(h0.shape)}, got {c0.dtype} {list(c0.shape)}")
    length_address: Optional[int] = None
    if lengths is not None:
        lengths = lengths.to(device="cpu", dtype=torch.int64).contiguous()
        if list(lengths.shape) != [batch]:
            raise ValueError(f"lengths must have shape [{batch}], got {list(lengths.shape)}")
        # Steps after the longest sequence change nothing (outputs zero, states kept): run up to it only. A
        # single request padded to a static length (as the exported models take it) skips its padding.
        shortest, longest = (int(v) for v in torch.aminmax(lengths)) if batch > 0 else (steps, steps)
        # Every row full length (a single unpadded request, a batch of equal lengths): the same arithmetic as
        # without lengths (every step valid), without the per-row validity checks of the lengths path.
        length_address = None if shortest >= steps else lengths.data_ptr()
        if 0 < longest < steps:
            out, h_n, c_n = run_layers(module, mode, x[:longest], lengths, h0, c0, weights, has_biases, merge_modes,
                                       hidden)
            padded = out.new_zeros((steps,) + tuple(out.shape[1:]))
            padded[:longest] = out
            return padded, h_n, c_n
    x = x.contiguous()
    if x.shape[2] != plan.layers[0].input_size:
        raise ValueError(f"layer 0 takes {plan.layers[0].input_size} features, got {x.shape[2]}")
    for layer in range(1, num_layers):
        expected = merged_size(merge_modes[layer - 1], hidden)
        if plan.layers[layer].input_size != expected:
            raise ValueError(f"layer {layer} takes {plan.layers[layer].input_size} features but layer {layer - 1} "
                             f"gives {expected} (merge_mode {merge_modes[layer - 1]!r})")
    h_n = x.new_empty(2 * num_layers, batch, hidden)
    c_n = x.new_empty(2 * num_layers, batch, hidden) if cell_state else h_n
    last = merge_modes[-1]
    out = x.new_empty(steps, batch, merged_size(last, hidden))
    merges = (ctypes.c_int32 * num_layers)(*[_MERGE_CODES[merge] for merge in merge_modes])
    stack = library.birnn_forward_stack_f32 if x.dtype == torch.float32 else library.birnn_forward_stack_f64
    threads = inference_threads(steps, batch, hidden, plan.layers[0].w_hh.shape[1], plan.input_sizes,
                                cpu_kernel._threads())
    args = abi.Args(cell=cell, steps=steps, batch=batch, hidden=hidden, layers=num_layers, threads=threads,
                    x=x.data_ptr(), h0=h0.data_ptr(), c0=c0.data_ptr() if cell_state else None, lengths=length_address,
                    out=out.data_ptr(), h_n=h_n.data_ptr(), c_n=c_n.data_ptr() if cell_state else None,
                    input_sizes=plan.input_sizes_address, merges=ctypes.addressof(merges),
                    weights=plan.addresses_address)
    stack(ctypes.byref(args))
    return (out.unflatten(-1, (2, hidden)) if last is None else out), h_n, c_n
