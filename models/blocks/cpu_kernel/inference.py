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
(``tests/kernel/test_cpu_kernel_inference.py``).
"""

import ctypes
import operator
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ...merge import MERGE_MODES, merged_size
from .. import cpu_kernel
from ..compile_boundary import exporting
from . import abi
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
        self._addresses = (ctypes.c_int64 * (6 * num_layers))(*[
            address or 0 for layer in self.layers for address in layer.addresses()])
        self.input_sizes = [layer.input_size for layer in self.layers]
        self._input_sizes = (ctypes.c_int32 * num_layers)(*self.input_sizes)
        self.addresses_address = ctypes.addressof(self._addresses)
        self.input_sizes_address = ctypes.addressof(self._input_sizes)
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
    """What ``fast_forward`` reuses on every call of a cached plan: the constant part of the kernel's ``Args``,
    the entry point, the output's trailing shape, the weights' identity (objects, versions, addresses as lists
    compared in one C-level pass each) and a zero initial state (the kernel only reads ``h0``/``c0``)."""

    def __init__(self, plan: "_Plan", merge_modes: List[Optional[str]], hidden: int) -> None:
        library = cpu_kernel._kernel()
        first = plan.layers[0].w_hh
        self.dtype = first.dtype
        self.mode = cpu_kernel._CELL_NAMES[plan.cell]
        self.hidden = hidden
        self.layers = len(merge_modes)
        self.input_size = plan.input_sizes[0]
        self.merge_modes = list(merge_modes)
        self.cell_state = cpu_kernel.traits(plan.cell).cell_state
        last = merge_modes[-1]
        self.out_tail: Tuple[int, ...] = (2, hidden) if last is None else (merged_size(last, hidden),)
        self.stack = library.birnn_forward_stack_f32 if self.dtype == torch.float32 else \
            library.birnn_forward_stack_f64
        # multiply-adds x 2, both directions, every layer, per (step, row): inference_threads' count
        self.flop_per_row_step = sum(2 * 2 * first.shape[1] * (size + hidden) for size in plan.input_sizes)
        self._merges = (ctypes.c_int32 * self.layers)(*[_MERGE_CODES[merge] for merge in merge_modes])
        self.template = abi.Args(cell=plan.cell, hidden=hidden, layers=self.layers,
                                 input_sizes=plan.input_sizes_address, merges=ctypes.addressof(self._merges),
                                 weights=plan.addresses_address)
        self.weights = plan.weights
        self.versions = [version for _, version in plan.state or ()]
        self.addresses = [address for address, _ in plan.state or ()]
        self.states = 2 * self.layers
        self.zeros = torch.zeros(self.states, 1, hidden, dtype=self.dtype)
        from . import calibrate  # imported here, as cpu_kernel.kernel_chosen does (a plan is made after any runpy)

        self._calibrate = calibrate
        self._chosen: Dict[Tuple[int, int, bool, int], bool] = {}
        self._chosen_under = calibrate.policy_version

    def empty(self, *sizes: int) -> Tensor:
        """``torch.empty(*sizes)`` of the weights' dtype."""
        return torch.empty(sizes, dtype=self.dtype)

    def zero_state(self, batch: int) -> Tensor:
        zeros = self.zeros  # one read: another thread may swap in a wider one meanwhile
        if zeros.shape[1] != batch:
            zeros = torch.zeros(2 * self.layers, batch, self.hidden, dtype=self.dtype)
            self.zeros = zeros
        return zeros

    def kernel_chosen(self, batch: int, steps: int, has_lengths: bool, threads: int) -> bool:
        """``cpu_kernel.kernel_chosen`` for this module's inference calls, remembered per ``(B, T, lengths,
        threads)`` until the policy's inputs change (``calibrate.policy_version``). Asking the policy costs a
        request 6-9 us when the caches are cold (as after every request that streams its weights through L2); a
        remembered answer about 1 us. At most ``_CHOSEN_MAX`` answers are kept (then forgotten and asked again)."""
        version = self._calibrate.policy_version
        chosen = self._chosen  # one read: another thread may swap in a fresh one meanwhile
        if self._chosen_under != version or len(chosen) >= _CHOSEN_MAX:
            chosen = self._chosen = {}
            self._chosen_under = version
        key = (batch, steps, has_lengths, threads)
        answer = chosen.get(key)
        if answer is None:
            answer = chosen[key] = cpu_kernel.kernel_chosen(self.mode, batch, self.hidden, steps, has_lengths, False,
                                                            threads)
        return answer

    def matches(self, weights: List[Optional[Tensor]]) -> bool:
        """The module holds the very weights prepared, unchanged (no in-place write, no new storage)."""
        return (all(map(operator.is_, weights, self.weights)) and list(map(_VERSION, weights)) == self.versions
                and list(map(Tensor.data_ptr, weights)) == self.addresses)


_CHOSEN_MAX = 4096  # remembered policy answers a module keeps: a server's (B, T) pairs, bounded
_VERSION = operator.attrgetter("_version")
_REQUIRES_GRAD = operator.attrgetter("requires_grad")


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
        plan.fast = _FastCall(plan, merge_modes, hidden)
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


_any_autocast = torch._C._is_any_autocast_enabled
_tracing = torch._C._is_tracing
_function_mode = torch._C._is_torch_function_mode_enabled
_dispatch_depth = torch._C._len_torch_dispatch_stack
_functorch_stack = torch._C._functorch.peek_interpreter_stack


def fast_forward(module: nn.Module, input: Tensor, lengths: Optional[Tensor]
                 ) -> Optional[Tuple[Tensor, Tensor, Tensor]]:
    """A block's whole forward for the serving case, or None where any condition below fails: the general path
    then runs (``_BiRNNBase._run``) with its checks and clear errors, so validation of the caller's input stays.

    The case: eval mode with the module's plan cached and its weights unchanged (same objects, versions,
    storage), no ``h0``/``c0``; ``input`` a plain CPU tensor ``(T, B, F)`` (``(B, T, F)`` when ``batch_first``) of
    the weights' dtype with ``F = input_size`` and ``T, B >= 1``; ``lengths`` None or a CPU int64 ``(B,)`` tensor
    with values in ``[1, T]``; no gradient needed; eager (no trace, compile, export, autocast, ``torch.func``
    transform, torch function or dispatch mode, not inside ``cpu_kernel.disabled()``); and the policy choosing
    the kernel. Returns ``(output, h_n, c_n)`` as ``_run`` does, bit for bit (the same C call with the same
    arguments: ``run_layers``).

    Why: a TREC-length request (B = 1, T ~ 10, H = 128, 2 layers) costs the kernel ~0.1-0.2 ms, and the general
    path's Python around it (two zero states, transposes, re-validating the plan and the merges, a ctypes
    ``Args`` built field by field) cost a third to a half of that. Here every check is one C-level call,
    the weights are compared in three ``map`` passes, the zero state is cached, a batch-first single request
    is read and written in place (``(1, T, F)`` and ``(T, 1, F)`` share one memory layout) and the ``Args``
    is a copy of a prepared template with the call's ten fields set.
    """
    if torch.compiler.is_compiling():  # first: under torch.compile the rest is never traced
        return None
    plan = _plans.get(module)
    if plan is None or plan.fast is None or module.training:
        return None
    fast = plan.fast
    if type(input) is not Tensor or input.dtype is not fast.dtype or input.dim() != 3 or not input.is_cpu:
        return None
    if (_any_autocast() or _tracing() or exporting() or _function_mode() or _dispatch_depth()
            or _functorch_stack() is not None or cpu_kernel._switch.off):
        return None
    params = module._parameters
    weights = list(map(params.get, module._flat_weights_names))
    if torch.is_grad_enabled() and (input.requires_grad or any(map(_REQUIRES_GRAD, weights))):
        return None
    if not fast.matches(weights) or module.merge_modes != fast.merge_modes:
        return None
    batch_first = module.batch_first
    if batch_first:
        batch, steps, features = input.shape
    else:
        steps, batch, features = input.shape
    if features != fast.input_size or steps == 0 or batch == 0:
        return None
    run_steps = steps
    length_address: Optional[int] = None
    if lengths is not None:
        if (type(lengths) is not Tensor or lengths.dtype is not torch.int64 or not lengths.is_cpu
                or lengths.dim() != 1 or lengths.shape[0] != batch):
            return None
        values = lengths.tolist()
        shortest, longest = min(values), max(values)
        if shortest < 1 or longest > steps:
            return None  # the general path raises
        # As run_layers: steps after the longest row are not run (zeros), and rows all as long as the run take
        # the call without lengths.
        run_steps = longest
        if shortest < longest:
            lengths = lengths.contiguous()
            length_address = lengths.data_ptr()
    threads = max(1, torch.get_num_threads())
    if not cpu_kernel._switch.forced and fast.dtype is torch.float32 and not fast.kernel_chosen(
            batch, steps, lengths is not None, threads):
        return None
    # torch.empty(*sizes) without a dtype is the cheapest allocation from Python (a shape tuple and a dtype
    # keyword cost ~2x its time to parse): taken when the default dtype is the weights'.
    empty = torch.empty if torch.get_default_dtype() is fast.dtype else fast.empty
    if batch_first and batch > 1:
        x = input.transpose(0, 1)[:run_steps].contiguous()
        out = empty(steps, batch, *fast.out_tail)
        result = out.transpose(0, 1)
    else:
        x = input if input.is_contiguous() else input.contiguous()  # (T, B, F) or (1, T, F): time-major memory
        out = empty(batch, steps, *fast.out_tail) if batch_first else empty(steps, batch, *fast.out_tail)
        result = out
    if run_steps < steps:
        (out[0, run_steps:] if batch_first and batch == 1 else out[run_steps:]).zero_()
    if run_steps * batch * fast.flop_per_row_step < SPLIT_MIN_MFLOP * 1e6:  # policy.inference_threads
        threads = 1
    h_n = empty(fast.states, batch, fast.hidden)
    c_n = empty(fast.states, batch, fast.hidden) if fast.cell_state else h_n
    zeros = fast.zero_state(batch)
    args = abi.Args.from_buffer_copy(fast.template)
    args.steps, args.batch, args.threads = run_steps, batch, threads
    args.x, args.lengths, args.out, args.h_n = x.data_ptr(), length_address, out.data_ptr(), h_n.data_ptr()
    args.h0 = zeros.data_ptr()
    if fast.cell_state:
        args.c0, args.c_n = args.h0, c_n.data_ptr()
    fast.stack(ctypes.byref(args))
    return result, h_n, c_n
