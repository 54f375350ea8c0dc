"""CPU fast path: one bidirectional LSTM/GRU layer with both directions' time loops in a small C++ kernel.

Why: on CPU, PyTorch's fused GRU runs ~10 ATen operator dispatches per time step (its pointwise gate math is
not fused), its LSTM (oneDNN) runs small batches poorly, and both run the two directions one after the other,
each split over all threads, where per-step products of ``(B, H) @ (H, G*H)`` are too small to share.
``models/csrc/birnn_cpu.cpp`` runs each direction's loop on its own thread with one BLAS call and one fused
gate pass per step. Every large product stays in PyTorch: the input projections of all steps before the
loop, and the weight and input gradients after it.

The kernel is compiled with the system C++ compiler (``$CXX`` or ``c++``) on first use (about 7 s) into a
per-user cache, ``$BIRNN_ZOO_CACHE`` or ``~/.cache/birnn-zoo``, and loaded with ``ctypes``. If that fails (no compiler,
another BLAS), or ``BIRNN_ZOO_CPU_KERNEL=0``, ``available()`` is False and the blocks use PyTorch's fused
kernels; the results agree to float32 rounding either way.
"""

import contextlib
import ctypes
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

import torch
from torch import Tensor

_SOURCE = Path(__file__).resolve().parent / "csrc" / "birnn_cpu.cpp"
_CELLS = {"LSTM": 0, "GRU": 1}
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]
_lock = threading.Lock()
_library: Optional[ctypes.CDLL] = None
_tried = False
_switch = threading.local()  # .off: set by disabled() on this thread only


def _cache_dir() -> Path:
    root = os.environ.get("BIRNN_ZOO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "birnn-zoo")
    return Path(root)


def _build(target: Path) -> None:
    """Compile the kernel to ``target`` (atomically: a half-written library is never loaded)."""
    torch_lib = Path(torch.__file__).resolve().parent / "lib"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [os.environ.get("CXX", "c++"), *_FLAGS, str(_SOURCE), "-o", partial, f"-L{torch_lib}", "-ltorch_cpu", f"-Wl,-rpath,{torch_lib}"]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _load() -> Optional[ctypes.CDLL]:
    key = hashlib.sha256(_SOURCE.read_bytes() + " ".join(_FLAGS).encode() + torch.__version__.encode()
                         + sys.version.encode()).hexdigest()[:16]
    target = _cache_dir() / f"birnn_cpu-{key}.so"
    if not target.exists():
        _build(target)
    library = ctypes.CDLL(str(target))
    pointer, integer = ctypes.c_void_p, ctypes.c_int
    for suffix in ("f32", "f64"):
        getattr(library, f"birnn_forward_{suffix}").argtypes = [integer] * 4 + [pointer] * 13 + [integer]
        getattr(library, f"birnn_backward_{suffix}").argtypes = [integer] * 4 + [pointer] * 13 + [integer]
    return library


def available() -> bool:
    """True when the kernel is compiled and loaded (built on the first call); False disables the fast path."""
    global _library, _tried
    if _tried:
        return _library is not None
    with _lock:
        if not _tried:
            if os.environ.get("BIRNN_ZOO_CPU_KERNEL", "1") != "0":
                try:
                    _library = _load()
                except (OSError, subprocess.SubprocessError) as error:
                    detail = getattr(error, "stderr", "") or str(error)
                    warnings.warn(f"birnn-zoo: CPU kernel unavailable, using PyTorch's fused kernels ({detail})",
                                  RuntimeWarning, stacklevel=2)
            _tried = True
    return _library is not None


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within this block (this thread only) the blocks run on PyTorch's fused kernels, as without the kernel."""
    before = getattr(_switch, "off", False)
    _switch.off = True
    try:
        yield
    finally:
        _switch.off = before


def applies(x: Tensor, mode: str) -> bool:
    """Whether ``fused_layer`` can run this input: CPU float32/float64, LSTM or GRU, no autocast, not inside
    ``torch.compile``/``torch.export``/``torch.jit.trace`` (they cannot see into a ctypes call) nor ``disabled()``."""
    return (mode in _CELLS and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing() and not getattr(_switch, "off", False) and available())


def _kernel() -> ctypes.CDLL:
    if not available():
        raise RuntimeError("birnn-zoo's CPU kernel is not available; check models.cpu_kernel.available() first")
    assert _library is not None
    return _library


def _ptr(t: Optional[Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _threads() -> int:
    return max(1, min(2, torch.get_num_threads()))


def _run_forward(cell: int, gi: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], h0: Tensor, c0: Tensor,
                 lengths: Optional[Tensor], stash: bool) -> Tuple[Tensor, ...]:
    """The kernel's loop: ``gi (T, B, 2, G*H)`` -> ``out (T, B, 2, H)``, ``h_n, c_n (2, B, H)`` and the stash."""
    steps, batch, _, _ = gi.shape
    hidden = w_hh.shape[2]
    out = gi.new_empty(steps, batch, 2, hidden)
    h_n = gi.new_empty(2, batch, hidden)
    c_n = gi.new_empty(2, batch, hidden) if cell == 0 else h_n
    h_all = gi.new_empty(steps, batch, 2, hidden) if stash else None
    c_all = gi.new_empty(steps, batch, 2, hidden) if stash and cell == 0 else None
    gates = torch.empty_like(gi) if stash else None
    ghn = gi.new_empty(steps, batch, 2, hidden) if stash and cell == 1 else None
    library = _kernel()
    fn = library.birnn_forward_f32 if gi.dtype == torch.float32 else library.birnn_forward_f64
    fn(cell, steps, batch, hidden, _ptr(gi), _ptr(w_hh), _ptr(b_hh), _ptr(h0), _ptr(c0) if cell == 0 else None,
       _ptr(lengths), _ptr(out), _ptr(h_n), _ptr(c_n) if cell == 0 else None, _ptr(h_all), _ptr(c_all),
       _ptr(gates), _ptr(ghn), _threads())
    return out, h_n, c_n, h_all, c_all, gates, ghn


def _prepare(cell: int, x: Tensor, weights: List[Tensor], has_biases: bool
             ) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """``x (T, B, F)`` and ``[w_ih, w_hh, (b_ih, b_hh)] x 2`` -> ``w_ih (2GH, F)``, ``gi (T, B, 2, GH)``,
    ``w_hh (2, GH, H)``, ``b_hh (2, GH)`` (GRU with bias only; the LSTM's b_hh is folded into gi)."""
    per = 4 if has_biases else 2
    fw, bw = weights[:per], weights[per:]
    w_ih = torch.cat([fw[0], bw[0]], 0)
    w_hh = torch.stack([fw[1], bw[1]], 0).contiguous()
    x2 = x.reshape(-1, x.shape[-1])
    b_hh: Optional[Tensor] = None
    if has_biases:
        bias = torch.cat([fw[2] + fw[3], bw[2] + bw[3]] if cell == 0 else [fw[2], bw[2]], 0)
        gi = torch.addmm(bias, x2, w_ih.t())
        if cell == 1:
            b_hh = torch.stack([fw[3], bw[3]], 0).contiguous()
    else:
        gi = x2 @ w_ih.t()
    return w_ih, gi.view(x.shape[0], x.shape[1], 2, -1), w_hh, b_hh


class _BidirectionalLayer(torch.autograd.Function):
    """Autograd around the kernel; ``backward`` runs the kernel's reverse loop, then the large products."""

    @staticmethod
    def forward(ctx: Any, cell: int, has_biases: bool, x: Tensor, h0: Tensor, c0: Tensor,
                lengths: Optional[Tensor], *weights: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        w_ih, gi, w_hh, b_hh = _prepare(cell, x, list(weights), has_biases)
        out, h_n, c_n, h_all, c_all, gates, ghn = _run_forward(cell, gi, w_hh, b_hh, h0, c0, lengths, True)
        ctx.cell, ctx.has_biases = cell, has_biases
        ctx.save_for_backward(x, h0, c0, lengths, w_ih, w_hh, h_all, c_all, gates, ghn)
        if cell == 1:  # GRU has no cell state: an empty placeholder keeps one output signature
            c_n = h_n.new_empty(0)
            ctx.mark_non_differentiable(c_n)
        return out, h_n, c_n

    @staticmethod
    def backward(ctx: Any, d_out: Optional[Tensor], d_hn: Optional[Tensor], d_cn: Optional[Tensor]
                 ) -> Tuple[Optional[Tensor], ...]:
        x, h0, c0, lengths, w_ih, w_hh, h_all, c_all, gates, ghn = ctx.saved_tensors
        cell = ctx.cell
        steps, batch, _ = x.shape
        hidden = w_hh.shape[2]
        gates_size = w_hh.shape[1]
        d_out = torch.zeros_like(h_all) if d_out is None else d_out.contiguous()
        dh = torch.zeros_like(h0) if d_hn is None else d_hn.clone(memory_format=torch.contiguous_format)
        if cell == 0 and d_cn is not None:
            dc = d_cn.clone(memory_format=torch.contiguous_format)
        else:
            dc = torch.zeros_like(c0)
        d_gi = torch.empty_like(gates)
        d_gh = torch.empty_like(gates) if cell == 1 else d_gi
        library = _kernel()
        fn = library.birnn_backward_f32 if x.dtype == torch.float32 else library.birnn_backward_f64
        fn(cell, steps, batch, hidden, _ptr(d_out), _ptr(w_hh), _ptr(h0), _ptr(c0) if cell == 0 else None,
           _ptr(lengths), _ptr(h_all), _ptr(c_all), _ptr(gates), _ptr(ghn), _ptr(dh),
           _ptr(dc) if cell == 0 else None, _ptr(d_gi), _ptr(d_gh) if cell == 1 else None, _threads())

        d_gi2 = d_gi.view(steps * batch, 2 * gates_size)
        d_x = (d_gi2 @ w_ih).view(steps, batch, -1)
        d_w_ih = d_gi2.t() @ x.reshape(steps * batch, -1)                      # (2GH, F)
        # The state each step read: h0 then h_all shifted by one step in each direction's own time order.
        h_prev = [torch.cat([h0[0:1], h_all[:-1, :, 0]], 0), torch.cat([h_all[1:, :, 1], h0[1:2]], 0)]
        grads: List[Optional[Tensor]] = []
        for d in range(2):
            d_gh_d = d_gh[:, :, d].reshape(steps * batch, gates_size)
            grads.append(d_w_ih[d * gates_size:(d + 1) * gates_size])
            grads.append(d_gh_d.t() @ h_prev[d].reshape(steps * batch, hidden))
            if ctx.has_biases:
                grads.append(d_gi[:, :, d].sum((0, 1)))
                grads.append(d_gh_d.sum(0))
        return (None, None, d_x, dh, dc if cell == 0 else None, None, *grads)


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
    x = x.contiguous()
    h0 = h0.contiguous()
    c0 = c0.contiguous()
    if torch.is_grad_enabled() and (x.requires_grad or h0.requires_grad or c0.requires_grad
                                    or any(w.requires_grad for w in weights)):
        out, h_n, c_n = _BidirectionalLayer.apply(cell, has_biases, x, h0, c0, lengths, *weights)
        return out, h_n, c_n if cell == 0 else h_n
    _, gi, w_hh, b_hh = _prepare(cell, x, weights, has_biases)
    out, h_n, c_n, *_ = _run_forward(cell, gi, w_hh, b_hh, h0, c0, lengths, False)
    return out, h_n, c_n
