"""Eager inference on the CPU kernel: weights prepared once, one direct kernel call for all the layers.

Why: a single request (B = 1, T = 64, H = 128, 2 layers) spends about as long in fixed costs as in arithmetic
(``benchmarks/archive/RESULTS-2026-12.md``, "Inference against ONNX Runtime"): each call re-stacked both
directions' weights, repacked ``W_hh`` for the step product (35-240 us a direction and layer at H = 128-256),
went through the custom operator's dispatch and autograd glue, and allocated outputs it then concatenated. Without
gradients none of that is needed: ``run_layers`` keeps each layer's stacked weights and packed ``W_ih``, ``W_hh`` (the
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
(``tests/kernel/test_cpu_kernel_inference.py``). A block's forward without ``hx`` first tries ``fast_forward``: the
same call with its checks, outputs and kernel call in C++ (``csrc/fast_call.cpp``, bound to the cached plan).
"""

import ctypes
import functools
import threading
import warnings
from types import ModuleType
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ...merge import MERGE_MODES, merged_size
from .. import cpu_kernel
from . import abi
from . import build as cpu_kernel_build
from .plans import ModulePlans
from .policy import SPLIT_MIN_MFLOP, inference_threads
from .weights import stack_layer

# The merge code birnn_forward_stack_* reads: its position in MERGE_MODES, None after them.
_MERGE_CODES = {**{mode: code for code, mode in enumerate(MERGE_MODES)}, None: len(MERGE_MODES)}

_plans = ModulePlans()  # {module: _Plan}


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
        self.addresses_array = (ctypes.c_int64 * (6 * num_layers))(*[
            address or 0 for layer in self.layers for address in layer.addresses()])
        self.input_sizes = [layer.input_size for layer in self.layers]
        self.input_sizes_array = (ctypes.c_int32 * num_layers)(*self.input_sizes)
        self.addresses_address = ctypes.addressof(self.addresses_array)
        self.input_sizes_address = ctypes.addressof(self.input_sizes_array)
        self.fast: Optional[_FastCall] = None  # set by _plan_for for a cached plan: what fast_forward reuses

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


class _FastCall:
    """A cached plan's serving call: ``call(module, input, lengths)``, the extension ``birnn_fast_call``
    (``csrc/fast_call.cpp``) bound to this plan's kernel entry point, ``Args`` template, weights (objects, versions,
    addresses), merge modes and sizes, and to what it reads on every call: this thread's switches
    (``cpu_kernel._switch``) and the policy's version (``calibrate.policy_version``). It returns ``(output, h_n,
    c_n)`` or None, as ``fast_forward`` documents. ``chosen`` holds the policy's answers per ``(B, T, lengths,
    threads)``, kept until the policy's version changes: asking the policy costs a request 6-9 us when the caches
    are cold, a remembered answer a dictionary lookup. At most ``_CHOSEN_MAX`` answers are kept (then forgotten and
    asked again)."""

    def __init__(self, plan: "_Plan", names: List[str], merge_modes: List[Optional[str]], hidden: int,
                 native: ModuleType) -> None:
        library = cpu_kernel._kernel()
        first = plan.layers[0].w_hh
        layers = len(merge_modes)
        mode = cpu_kernel._CELL_NAMES[plan.cell]
        cell_state = cpu_kernel.traits(plan.cell).cell_state
        last = merge_modes[-1]
        out_tail = (2, hidden) if last is None else (merged_size(last, hidden),)
        entry = library.birnn_forward_stack_f32 if first.dtype == torch.float32 else library.birnn_forward_stack_f64
        # multiply-adds x 2, both directions, every layer, per (step, row): policy.inference_threads' count
        flop_per_row_step = sum(2 * 2 * first.shape[1] * (size + hidden) for size in plan.input_sizes)
        merges = (ctypes.c_int32 * layers)(*[_MERGE_CODES[merge] for merge in merge_modes])
        template = abi.Args(cell=plan.cell, hidden=hidden, layers=layers, input_sizes=plan.input_sizes_address,
                            merges=ctypes.addressof(merges), weights=plan.addresses_address)
        # What the template's addresses point into, held by the call itself (not through this object: no cycle).
        keep = (plan.addresses_array, plan.input_sizes_array, merges, *[
            t for layer in plan.layers for t in (layer.w_ih, layer.packed_ih, layer.b_ih, layer.w_hh,
                                                 layer.packed_hh, layer.b_hh) if t is not None])
        from . import calibrate  # imported here, as cpu_kernel.kernel_chosen does (a plan is made after any runpy)

        self.chosen: Dict[Tuple[int, int, bool, int], bool] = {}
        self.call = native.bind(
            first.dtype == torch.float64, ctypes.cast(entry, ctypes.c_void_p).value, bytes(template), _OFFSETS,
            tuple(names), tuple(plan.weights), list(merge_modes), keep, self.chosen,
            functools.partial(_ask_policy, mode, hidden), calibrate, cpu_kernel._switch, plan.input_sizes[0], hidden,
            2 * layers, out_tail, cell_state, float(flop_per_row_step), SPLIT_MIN_MFLOP * 1e6)


# The Args fields a serving call sets (the rest is the plan's template): their byte offsets, from abi.Args.
_OFFSETS = {name: getattr(abi.Args, name).offset
            for name in ("steps", "batch", "threads", "x", "lengths", "out", "h_n", "h0", "c0", "c_n")}
_CHOSEN_MAX = 4096  # remembered policy answers a module keeps: a server's (B, T) pairs, bounded


def _ask_policy(mode: str, hidden: int, chosen: Dict[Tuple[int, int, bool, int], bool],
                key: Tuple[int, int, bool, int]) -> bool:
    """``cpu_kernel.kernel_chosen`` for an inference call of ``key = (B, T, has_lengths, threads)``, remembered in
    ``chosen`` (emptied first when it holds ``_CHOSEN_MAX`` answers)."""
    if len(chosen) >= _CHOSEN_MAX:
        chosen.clear()
    batch, steps, has_lengths, threads = key
    answer = chosen[key] = cpu_kernel.kernel_chosen(mode, batch, hidden, steps, has_lengths, False, threads)
    return answer


_native: List[Optional[ModuleType]] = []  # the serving call's extension once tried: [module] or [None]
_native_lock = threading.Lock()


def _fast_call_module() -> Optional[ModuleType]:
    """``birnn_fast_call``, built on first use (``build.load_fast_call``); None where it cannot be built (one
    warning: every call then takes the general path, the same results a little slower)."""
    if not _native:
        with _native_lock:
            if not _native:
                try:
                    _native.append(cpu_kernel_build.load_fast_call())
                except (OSError, ImportError, cpu_kernel_build.KernelUnavailable) as error:
                    warnings.warn(f"birnn-zoo: the kernel's serving call is unavailable, inference calls take the "
                                  f"general path ({error})", RuntimeWarning, stacklevel=2)
                    _native.append(None)
    return _native[0]


def _state(weights: List[Tensor]) -> Tuple[Tuple[int, int], ...]:
    return tuple((w.data_ptr(), w._version) for w in weights)


def _address(t: Optional[Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def share(module: nn.Module, twin: nn.Module) -> None:
    """Let ``twin``, ``module``'s TorchScript twin (the same ``__dict__``), read ``module``'s prepared weights."""
    _plans.share(module, twin)


def clear(module: nn.Module) -> None:
    """Drop ``module``'s prepared weights (the next inference call prepares them again), and its twins'."""
    _plans.drop(module)


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


def _plan_for(module: nn.Module, cell: int, weights: List[Tensor], has_biases: bool,
              merge_modes: List[Optional[str]], hidden: int) -> _Plan:
    """The module's cached plan if it still matches its weights, else a new one (cached in eval mode, when
    every weight has a version counter: inference-mode tensors do not)."""
    plan = _plans.get(module)
    if plan is not None and not module.training and plan.matches(cell, weights):  # a cached plan has a state
        return plan
    cacheable = not module.training and not any(w.is_inference() for w in weights)
    plan = _Plan(cell, weights, has_biases, len(merge_modes))
    if cacheable:
        native = _fast_call_module()
        if native is not None:
            plan.fast = _FastCall(plan, list(module._flat_weights_names), merge_modes, hidden, native)
        _plans.put(module, plan)
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
    plan = _plan_for(module, cell, weights, has_biases, merge_modes, hidden)
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


def fast_forward(module: nn.Module, input: Tensor, lengths: Optional[Tensor]
                 ) -> Optional[Tuple[Tensor, Tensor, Tensor]]:
    """A block's whole forward for the serving case, or None where any condition below fails: the general path
    then runs (``_BiRNNBase._run``) with its checks and clear errors, so validation of the caller's input stays.

    The case: eval mode with the module's plan cached and its weights unchanged (same objects, versions,
    storage) and its merge modes too, no ``h0``/``c0``; ``input`` a plain CPU strided tensor ``(T, B, F)``
    (``(B, T, F)`` when ``batch_first``) of the weights' dtype with ``F = input_size`` and ``T, B >= 1``;
    ``lengths`` None or a plain CPU int64 ``(B,)`` tensor with values in ``[1, T]``; no gradient needed; eager (no
    trace, compile, autocast, ``torch.func`` transform, torch function or dispatch mode, not inside
    ``cpu_kernel.disabled()``; ``torch.export`` traces with Dynamo or under fake-tensor dispatch modes, so an
    export never gets here); and the policy choosing the kernel (float32; not asked under
    ``cpu_kernel.forced()``). Returns ``(output, h_n, c_n)`` as ``_run`` does, bit for bit (the same C call with
    the same arguments as ``run_layers``): steps after the longest row are not run (their outputs are zero), a
    batch whose rows are all as long as the run takes the call without lengths, and a call under
    ``SPLIT_MIN_MFLOP`` runs on one thread.

    Why: a TREC-length request (B = 1, T ~ 10, H = 128, 2 layers) costs the kernel 0.1-0.25 ms, and Python around
    it (a dozen checks through torch's bindings, three ``torch.empty``, a ctypes call) cost another 0.1 ms once the
    caches are cold. Here the checks, allocations and call are one C++ function (``csrc/fast_call.cpp``); only
    whether Dynamo is tracing is asked in Python (Dynamo reads it as a constant and never traces the call).
    """
    if torch.compiler.is_compiling():
        return None
    plan = _plans.get(module)
    return None if plan is None or plan.fast is None else plan.fast.call(module, input, lengths)
