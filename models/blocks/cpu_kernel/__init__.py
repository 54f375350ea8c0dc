"""CPU fast path: one bidirectional LSTM/GRU layer with both directions' time loops in a small C++ kernel.

Why: on CPU, PyTorch's fused GRU runs ~10 ATen operator dispatches per time step (its pointwise gate math is
not fused), its LSTM (oneDNN) runs small batches poorly, and both run the two directions one after the other.
``models/blocks/cpu_kernel/csrc/birnn_cpu.cpp`` runs each direction on its own thread: that direction's input
projections (GEMMs), then its time loop with one product by the packed ``W_hh`` (the project's FMA micro-kernel,
``step_gemm.h``, in float32 on AVX2/AVX-512; BLAS otherwise) and one fused, vectorised gate pass per step; in
training, the reverse loop and that direction's weight and bias gradients (GEMMs), then the input gradient split
between the threads.

Which path a block takes is decided in one place, ``models/blocks/cpu_kernel/policy.py`` (measured: the kernel only
where it is faster than ``nn.LSTM``/``nn.GRU`` at the same thread count). The library is built once per
machine, compiler and instruction set by ``models/blocks/cpu_kernel/build.py`` (AVX-512 or AVX2 + FMA, chosen at run
time; ``BIRNN_ZOO_CPU_CAPABILITY=avx512|avx2|none`` forces one) into a private cache folder,
``$BIRNN_ZOO_KERNEL_CACHE`` or ``~/.cache/birnn-zoo-kernels``. If it cannot be built (no compiler, a torch without MKL,
not x86-64), or ``BIRNN_ZOO_CPU_KERNEL=0``, ``capability()`` is None and the blocks use PyTorch's fused kernels;
the results agree to float32 rounding either way (NaN and Inf included).

Autograd: first-order gradients run the kernel's reverse loop. A graph of the backward (``create_graph=True``:
double backward, Hessian-vector products) recomputes the layer on PyTorch's differentiable kernels, and
``torch.func`` transforms (``grad``, ``vmap``, ``jvp``) never reach the kernel (``applies`` is False inside them).
"""

import contextlib
import ctypes
import os
import threading
import warnings
from typing import Any, ContextManager, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from ...cells import KERNEL_CODES
from ..compile_boundary import constant_when_traced, exporting
from . import abi
from . import build as cpu_kernel_build
from .policy import kernel_wins
from .reference import reference_gradients
from .weights import stack_layer

# mode -> the C code's cell: {"LSTM": 0, "GRU": 1, "GRU_RESET_BEFORE": 2 (Keras reset_after=False)}
_CELLS = KERNEL_CODES
_CELL_NAMES = {code: mode for mode, code in _CELLS.items()}
_lock = threading.Lock()
_library: Optional[ctypes.CDLL] = None
_capability: Optional[str] = None
_traits: Dict[int, abi.CellTraits] = {}  # cell code -> what the loaded library says of that cell
_tried = False


class _Switches(threading.local):
    """This thread's switches (class defaults: reading an unset one costs no AttributeError on the hot path)."""

    off = False     # disabled(): PyTorch's fused kernels
    forced = False  # forced(): the kernel wherever it can run


_switch = _Switches()


def available() -> bool:
    """True when the kernel is compiled and loaded (built on the first call); False disables the fast path."""
    global _library, _capability, _tried
    if _tried:
        return _library is not None
    with _lock:
        if not _tried:
            try:
                wanted = None if os.environ.get("BIRNN_ZOO_CPU_KERNEL", "1") == "0" else \
                    cpu_kernel_build.choose_capability()
                if wanted is not None:
                    library = cpu_kernel_build.load(wanted)
                    _traits.update(abi.cell_traits(library, _CELLS))
                    _library, _capability = library, wanted
            except (OSError, ValueError, cpu_kernel_build.KernelUnavailable) as error:
                warnings.warn(f"birnn-zoo: CPU kernel unavailable, using PyTorch's fused kernels ({error})",
                              RuntimeWarning, stacklevel=2)
            finally:
                _tried = True
    return _library is not None


# Dynamo calls this once per trace and keeps the answer as a constant: the build (or load) runs as plain Python,
# not traced, and no graph break.
@constant_when_traced
def _available_while_tracing() -> bool:
    return available()


def capability() -> Optional[str]:
    """The kernel's instruction set in use: ``"avx512"``, ``"avx2"``, or None (PyTorch's kernels only)."""
    return _capability if available() else None


@contextlib.contextmanager
def _switched_on(flag: str) -> Iterator[None]:
    """Set ``_switch.<flag>`` for this thread within the block, then restore it (blocks nest)."""
    before = getattr(_switch, flag, False)
    setattr(_switch, flag, True)
    try:
        yield
    finally:
        setattr(_switch, flag, before)


def disabled() -> ContextManager[None]:
    """Within this block (this thread only) the blocks run on PyTorch's fused kernels, as without the kernel."""
    return _switched_on("off")


def forced() -> ContextManager[None]:
    """Within this block (this thread only) the blocks take the kernel wherever it can run, whatever the policy
    says: for benchmarks that compare the two paths and tests that cover both."""
    return _switched_on("forced")


def _in_functorch_transform() -> bool:
    """Inside ``torch.func.grad``/``vmap``/``jvp``: the kernel has no batching or forward-mode rule."""
    return torch._C._functorch.peek_interpreter_stack() is not None


def can_run(x: Tensor, mode: str) -> bool:
    """Whether the kernel *can* run this input: CPU float32/float64, LSTM or GRU, no autocast, no ``torch.func``
    transform, not inside ``torch.export`` (an exported program must load without this project) or
    ``torch.jit.trace`` (it cannot see into the kernel), not inside ``disabled()``. The first call that gets this
    far builds or loads the kernel (``available``); under ``torch.compile`` that happens while tracing, and the
    trace holds the kernel as one op."""
    if mode not in _CELLS or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    if torch.is_autocast_enabled("cpu") or torch.jit.is_tracing() or exporting():
        return False
    if torch.compiler.is_compiling():
        return _available_while_tracing()
    if _in_functorch_transform():
        return False
    return not _switch.off and available()


def applies(x: Tensor, mode: str, hidden_size: int = 0, has_lengths: bool = False, training: bool = False) -> bool:
    """Whether a block runs this input on the kernel: it ``can_run`` and the policy says it is faster there
    (``models/blocks/cpu_kernel/policy.kernel_wins``) for this cell, batch, hidden size, lengths, thread count,
    capability and training (gradients needed) or inference. ``hidden_size=0`` or ``forced()`` asks only
    ``can_run``."""
    if not can_run(x, mode):
        return False
    if hidden_size <= 0 or _switch.forced or x.dtype == torch.float64:  # float64 (tests, gradcheck): no speed to weigh
        return True
    batch = x.shape[1] if x.dim() == 3 else 1
    return kernel_chosen(mode, batch, hidden_size, x.shape[0], has_lengths, training)


def kernel_chosen(mode: str, batch: int, hidden_size: int, steps: int, has_lengths: bool, training: bool,
                  threads: Optional[int] = None) -> bool:
    """The policy's answer for one layer's ``B``, ``H``, ``T`` at ``threads`` (default ``torch.get_num_threads()``)
    and this capability (float32; ``applies`` asks it after ``can_run``): without lengths this CPU's calibration
    where there is one (``models/blocks/cpu_kernel/calibrate.py``; a checkpoint's pinned record on a resume), else
    (and with lengths) the fixed table ``policy.kernel_wins``."""
    # Imported here, not with the package: `python -m models.blocks.cpu_kernel.calibrate` then runs the one
    # calibrate module the policy reads (imported with the package, runpy would run a second copy and warn).
    from . import calibrate

    calibration, threads, capability = calibrate.active(_thread_count() if threads is None else threads,
                                                        _capability or "avx2")
    if calibration is not None and mode in calibrate.CELLS and not has_lengths:  # lengths: calibrate.LENGTHS
        measured = calibration.kernel_wins(mode, batch, hidden_size, has_lengths, training)
        if measured is not None:
            return measured
    return kernel_wins(mode, batch, hidden_size, steps, has_lengths, threads, capability, training)


# torch.compile cannot put torch.get_num_threads() (an int) in a graph: read it once while tracing instead of
# breaking the graph. A compiled graph keeps the path chosen for the thread count it was traced with.
@constant_when_traced
def _thread_count() -> int:
    return torch.get_num_threads()


def _kernel() -> ctypes.CDLL:
    if not available():
        raise RuntimeError("birnn-zoo's CPU kernel is not available; check models.blocks.cpu_kernel.available() first")
    assert _library is not None
    return _library


_ptr = abi.ptr


def traits(cell: int) -> abi.CellTraits:
    """What the loaded kernel knows of cell code ``cell`` (gates, states, bias folding): ``abi.CellTraits``."""
    _kernel()
    return _traits[cell]


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _check_layer(x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], w_hh: Tensor, b_hh: Optional[Tensor], h0: Tensor,
                 c0: Tensor, lengths: Optional[Tensor], cell: int) -> None:
    """The kernel reads raw memory: refuse anything it would misread, before it reads a byte (a second line of
    defence behind the blocks' own checks)."""
    if cell not in _CELLS.values():
        raise ValueError(f"cell must be 0 (LSTM), 1 (GRU) or 2 (GRU, reset gate before the product), got {cell!r}")
    if x.dim() != 3:
        raise ValueError(f"x must be (T, B, F), got shape {list(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    steps, batch, features = x.shape
    if w_hh.dim() != 3 or w_hh.shape[0] != 2:
        raise ValueError(f"w_hh must be (2, G, H), got shape {list(w_hh.shape)}")
    hidden = w_hh.shape[2]
    kind = traits(cell)
    gates = kind.gates * hidden
    expected = {"w_ih": (w_ih, [2, gates, features]), "w_hh": (w_hh, [2, gates, hidden]),
                "h0": (h0, [2, batch, hidden])}
    if kind.cell_state:
        expected["c0"] = (c0, [2, batch, hidden])
    for name, bias in (("b_ih", b_ih), ("b_hh", b_hh)):
        if bias is not None:
            expected[name] = (bias, [2, gates])
    for name, (tensor, shape) in expected.items():
        if tensor.dtype != x.dtype or tensor.device != x.device:
            raise TypeError(f"{name} is {tensor.dtype} on {tensor.device} but x is {x.dtype} on {x.device}; "
                            "the kernel needs one dtype and the CPU for all of them")
        if list(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} for x of shape {list(x.shape)}, got "
                             f"{list(tensor.shape)}")
    if lengths is not None:
        if lengths.dtype != torch.int64 or lengths.device.type != "cpu" or list(lengths.shape) != [batch]:
            raise TypeError(f"lengths must be a CPU int64 tensor of shape [{batch}], got {lengths.dtype} on "
                            f"{lengths.device} of shape {list(lengths.shape)}")
        if batch and not (0 <= int(lengths.min()) and int(lengths.max()) <= steps):
            raise ValueError(f"lengths must lie in [0, {steps}], got values from {int(lengths.min())} to "
                             f"{int(lengths.max())}")


# The layer and its reverse loop are two custom operators: eager PyTorch calls them like any op, and
# torch.compile traces each as one opaque node (shapes from the fake implementations) instead of breaking
# the graph. Outputs may not alias each other: what the GRU lacks (c_n, c_all) is an empty tensor.
_Outputs = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


@torch.library.custom_op("birnn_zoo::bidirectional_layer", mutates_args=(), device_types="cpu")
def _layer(x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], w_hh: Tensor, b_hh: Optional[Tensor], h0: Tensor,
           c0: Tensor, lengths: Optional[Tensor], cell: int, stash: bool) -> _Outputs:
    """``x (T, B, F)`` -> ``out (T, B, 2, H)``, ``h_n``, ``c_n (2, B, H)``; when ``stash``, also what the reverse
    loop reads: ``h_all``, ``c_all (T, B, 2, H)``, ``gates (T, B, 2, G)``, ``ghn (T, B, 2, H)``."""
    _check_layer(x, w_ih, b_ih, w_hh, b_hh, h0, c0, lengths, cell)
    out, h_n, c_n, h_all, c_all, gates, ghn = _layer_outputs(x, w_ih, b_ih, w_hh, b_hh, h0, c0, lengths, cell, stash)
    steps, batch, input_size = x.shape
    x, w_ih, w_hh, h0, c0 = x.contiguous(), w_ih.contiguous(), w_hh.contiguous(), h0.contiguous(), c0.contiguous()
    b_ih = None if b_ih is None else b_ih.contiguous()
    b_hh = None if b_hh is None else b_hh.contiguous()
    library = _kernel()
    fn = library.birnn_forward_f32 if x.dtype == torch.float32 else library.birnn_forward_f64
    # no packed W_ih, W_hh here (inference.py caches them): W_hh packed per call
    args = abi.Args(cell=cell, steps=steps, batch=batch, hidden=w_hh.shape[2], input_size=input_size,
                    keep_gates=int(stash), threads=_threads(), x=_ptr(x), w_ih=_ptr(w_ih), b_ih=_ptr(b_ih),
                    w_hh=_ptr(w_hh), b_hh=_ptr(b_hh), h0=_ptr(h0), c0=_ptr(c0) if traits(cell).cell_state else None,
                    lengths=_ptr(lengths), gi=_ptr(gates), out=_ptr(out), h_n=_ptr(h_n), c_n=_ptr(c_n),
                    h_all=_ptr(h_all), c_all=_ptr(c_all), ghn=_ptr(ghn))
    fn(ctypes.byref(args))
    return out, h_n, c_n, h_all, c_all, gates, ghn


@_layer.register_fake
def _layer_outputs(x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], w_hh: Tensor, b_hh: Optional[Tensor],
                   h0: Tensor, c0: Tensor, lengths: Optional[Tensor], cell: int, stash: bool) -> _Outputs:
    steps, batch, _ = x.shape
    hidden = w_hh.shape[2]
    kind = traits(cell)

    def state(wanted: bool, *shape: int) -> Tensor:
        return x.new_empty(shape if wanted else (0,))

    return (x.new_empty(steps, batch, 2, hidden), x.new_empty(2, batch, hidden),
            state(kind.cell_state, 2, batch, hidden), state(stash, steps, batch, 2, hidden),
            state(stash and kind.cell_state, steps, batch, 2, hidden), state(stash, steps, batch, 2, w_hh.shape[1]),
            state(stash and kind.apart_hh, steps, batch, 2, hidden))


_Gradients = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


@torch.library.custom_op("birnn_zoo::bidirectional_layer_backward", mutates_args=(), device_types="cpu")
def _layer_backward(d_out: Tensor, d_hn: Tensor, d_cn: Tensor, x: Tensor, w_ih: Tensor, w_hh: Tensor, h0: Tensor,
                    c0: Tensor, lengths: Optional[Tensor], h_all: Tensor, c_all: Tensor, gates: Tensor, ghn: Tensor,
                    cell: int, want_dx: bool, has_b_ih: bool, has_b_hh: bool) -> _Gradients:
    """The reverse loops, then every gradient: ``d_x`` (empty unless ``want_dx``), ``d_w_ih``, ``d_b_ih``,
    ``d_w_hh``, ``d_b_hh`` (empty where there is no such bias), ``d_h0``, ``d_c0`` (empty for GRU)."""
    _check_layer(x, w_ih, None, w_hh, None, h0, c0, lengths, cell)
    steps, batch, _ = x.shape
    for name, tensor, shape in (("d_out", d_out, [steps, batch, 2, w_hh.shape[2]]),
                                ("gates", gates, [steps, batch, 2, w_hh.shape[1]])):
        if tensor.dtype != x.dtype or list(tensor.shape) != shape:
            raise ValueError(f"{name} must be {x.dtype} of shape {shape}, got {tensor.dtype} {list(tensor.shape)}")
    grads = _layer_backward_outputs(d_out, d_hn, d_cn, x, w_ih, w_hh, h0, c0, lengths, h_all, c_all, gates, ghn,
                                    cell, want_dx, has_b_ih, has_b_hh)
    d_x, d_w_ih, d_b_ih, d_w_hh, d_b_hh, dh, dc = grads
    kind = traits(cell)
    dh.copy_(d_hn)  # in: the gradients of h_n / c_n; the kernel turns them into those of h0 / c0
    if kind.cell_state:
        dc.copy_(d_cn)
    library = _kernel()
    fn = library.birnn_backward_f32 if gates.dtype == torch.float32 else library.birnn_backward_f64
    steps, batch, input_size = x.shape
    d_out, x, w_ih, w_hh = d_out.contiguous(), x.contiguous(), w_ih.contiguous(), w_hh.contiguous()
    h0, c0 = h0.contiguous(), c0.contiguous()
    args = abi.Args(cell=cell, steps=steps, batch=batch, hidden=w_hh.shape[2], input_size=input_size,
                    threads=_threads(), x=_ptr(x), w_ih=_ptr(w_ih), w_hh=_ptr(w_hh), h0=_ptr(h0),
                    c0=_ptr(c0) if kind.cell_state else None, lengths=_ptr(lengths), gi=_ptr(gates),
                    h_all=_ptr(h_all), c_all=_ptr(c_all), ghn=_ptr(ghn), d_out=_ptr(d_out), dh=_ptr(dh),
                    dc=_ptr(dc), d_x=_ptr(d_x), d_w_ih=_ptr(d_w_ih), d_b_ih=_ptr(d_b_ih), d_w_hh=_ptr(d_w_hh),
                    d_b_hh=_ptr(d_b_hh))
    fn(ctypes.byref(args))
    return grads


@_layer_backward.register_fake
def _layer_backward_outputs(d_out: Tensor, d_hn: Tensor, d_cn: Tensor, x: Tensor, w_ih: Tensor, w_hh: Tensor,
                            h0: Tensor, c0: Tensor, lengths: Optional[Tensor], h_all: Tensor, c_all: Tensor,
                            gates: Tensor, ghn: Tensor, cell: int, want_dx: bool, has_b_ih: bool, has_b_hh: bool
                            ) -> _Gradients:
    def grad_of(t: Tensor, wanted: bool) -> Tensor:
        return torch.empty_like(t, memory_format=torch.contiguous_format) if wanted else x.new_empty(0)

    two_gates = w_hh.new_empty(2, w_hh.shape[1])
    return (grad_of(x, want_dx), grad_of(w_ih, True), grad_of(two_gates, has_b_ih), grad_of(w_hh, True),
            grad_of(two_gates, has_b_hh), grad_of(h0, True), grad_of(c0, traits(cell).cell_state))


def _save_for_backward(ctx: Any, inputs: Tuple[Any, ...], output: _Outputs) -> None:
    x, w_ih, b_ih, w_hh, b_hh, h0, c0, lengths, cell, stash = inputs
    _, _, _, h_all, c_all, gates, ghn = output
    if not stash:
        raise RuntimeError("birnn_zoo::bidirectional_layer ran with stash=False but a gradient is needed")
    ctx.cell, ctx.has_b_ih, ctx.has_b_hh = cell, b_ih is not None, b_hh is not None
    # Outputs the loss does not reach (the stash, often h_n / c_n) get None, not zeros: materialized, the stash's
    # gradients alone were a zero fill of (T, B, 2, G + 2H) floats per layer and step, read by nothing.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, w_ih, w_hh, h0, c0, lengths, h_all, c_all, gates, ghn, b_ih, b_hh)


def _gradients(ctx: Any, d_out: Optional[Tensor], d_hn: Optional[Tensor], d_cn: Optional[Tensor], *_: Optional[Tensor]
               ) -> Tuple[Optional[Tensor], ...]:
    x, w_ih, w_hh, h0, c0, lengths, h_all, c_all, gates, ghn, b_ih, b_hh = ctx.saved_tensors
    cell = ctx.cell
    cell_state = traits(cell).cell_state
    steps, batch, hidden = x.shape[0], x.shape[1], w_hh.shape[2]
    d_out = x.new_zeros(steps, batch, 2, hidden) if d_out is None else d_out
    d_hn = x.new_zeros(2, batch, hidden) if d_hn is None else d_hn
    d_cn = x.new_zeros(2, batch, hidden) if d_cn is None else d_cn
    if torch.is_grad_enabled():
        # create_graph=True: the backward itself must be differentiable, and the kernel's reverse loop is not.
        # Recompute the layer on PyTorch's differentiable kernels and differentiate that, with a graph.
        return reference_gradients(cell, (x, w_ih, b_ih, w_hh, b_hh, h0, c0), lengths, d_out, d_hn, d_cn,
                                   ctx.needs_input_grad[:7]) + (None, None, None)
    d_x, d_w_ih, d_b_ih, d_w_hh, d_b_hh, d_h0, d_c0 = _layer_backward(
        d_out, d_hn, d_cn if cell_state else d_hn, x, w_ih, w_hh, h0, c0, lengths, h_all, c_all, gates, ghn, cell,
        ctx.needs_input_grad[0], ctx.has_b_ih, ctx.has_b_hh)
    return (d_x if ctx.needs_input_grad[0] else None, d_w_ih, d_b_ih if ctx.has_b_ih else None, d_w_hh,
            d_b_hh if ctx.has_b_hh else None, d_h0, d_c0 if cell_state else None, None, None, None)


_layer.register_autograd(_gradients, setup_context=_save_for_backward)


def fused_layer(mode: str, x: Tensor, h0: Tensor, c0: Tensor, lengths: Optional[Tensor], weights: List[Tensor],
                has_biases: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """One bidirectional layer on time-major ``x (T, B, F)`` (right-padded when ``lengths (B,)`` is given).

    ``weights`` are ``[w_ih, w_hh, b_ih, b_hh]`` (without the biases when ``has_biases`` is False) of the
    forward then the backward direction, as ``nn.LSTM`` orders them; ``h0``/``c0`` are ``(2, B, H)``.
    Returns ``out (T, B, 2, H)`` (forward in ``[:, :, 0]``, zero at padded steps) and ``h_n``, ``c_n``
    ``(2, B, H)``, the states at each sequence's last valid step (``c_n`` is ``h_n`` for GRU).
    """
    cell = _CELLS[mode]
    if lengths is not None:
        lengths = lengths.to(device="cpu", dtype=torch.int64).contiguous()
    w_ih, b_ih, w_hh, b_hh = stack_layer(traits(cell), weights, has_biases)
    inputs = [x, w_ih, w_hh, h0, c0] + [b for b in (b_ih, b_hh) if b is not None]
    stash = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    out, h_n, c_n, *_ = _layer(x, w_ih, b_ih, w_hh, b_hh, h0, c0, lengths, cell, stash)
    return out, h_n, c_n if traits(cell).cell_state else h_n
