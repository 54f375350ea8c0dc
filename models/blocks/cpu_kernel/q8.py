"""The int8 inference entry point of the CPU kernel (``csrc/q8_forward.h``, ``csrc/q8_gemm.h``): ``Q8Args``, the
ctypes mirror of its C struct, the weight packing its product reads, and one call for a whole stack.

Kept apart from ``abi.py``'s ``Args`` (the float entry points' struct): the int8 path has its own struct, checked
against the library by ``birnn_q8_args_layout`` when first used, so neither path's signature moves for the other.
Change ``Q8Args`` here and in ``csrc/q8_forward.h`` together.
"""

import ctypes
from typing import List, NamedTuple, Optional

import torch
from torch import Tensor

from .. import cpu_kernel
from .abi import ptr

_P = ctypes.c_void_p
_I32 = ctypes.c_int32

# The int8 path's cell codes (csrc/q8_forward.h, q8::Cell): LSTM and GRU as the float kernel's, the Elman RNNs apart.
CELL_CODES = {"LSTM": 0, "GRU": 1, "RNN_TANH": 3, "RNN_RELU": 4}


class Q8Args(ctypes.Structure):
    """One int8 stack call's sizes and addresses (``csrc/q8_forward.h`` documents the layouts)."""

    _fields_ = [
        ("cell", _I32), ("steps", _I32), ("batch", _I32), ("hidden", _I32), ("layers", _I32), ("threads", _I32),
        ("x", _P), ("lengths", _P), ("h0", _P), ("c0", _P), ("out", _P), ("h_n", _P), ("c_n", _P),
        ("input_sizes", _P), ("merges", _P), ("weights", _P),
    ]


def _declared(library: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the int8 entry points once per loaded library and check ``Q8Args``'s layout (``OSError`` on a
    mismatch: a library and a Python package from different versions)."""
    if getattr(library, "_q8_declared", False):
        return library
    int64 = ctypes.c_int64
    library.birnn_q8_args_layout.argtypes = [ctypes.POINTER(int64), ctypes.POINTER(int64)]
    library.birnn_q8_args_layout.restype = None
    library.birnn_q8_forward_stack.argtypes = [ctypes.POINTER(Q8Args)]
    library.birnn_q8_forward_stack.restype = None
    library.birnn_q8_gemm.argtypes = [ctypes.c_int] * 4 + [_P] * 3
    library.birnn_q8_gemm.restype = None
    library.birnn_q8_vectorized.argtypes = []
    library.birnn_q8_vectorized.restype = ctypes.c_int
    size, last = int64(), int64()
    library.birnn_q8_args_layout(ctypes.byref(size), ctypes.byref(last))
    if size.value != ctypes.sizeof(Q8Args) or last.value != Q8Args.weights.offset:
        raise OSError(f"the CPU kernel's Q8Args is {size.value} bytes (last field at {last.value}) but q8.Q8Args is "
                      f"{ctypes.sizeof(Q8Args)} (at {Q8Args.weights.offset}): csrc/q8_forward.h and q8.py disagree")
    library._q8_declared = True
    return library


def library() -> Optional[ctypes.CDLL]:
    """The loaded kernel with its int8 entry points, or None where the kernel is unavailable (then the int8 blocks
    run their portable PyTorch path, ``models/blocks/quantized.py``)."""
    if not cpu_kernel.available():
        return None
    return _declared(cpu_kernel._kernel())


def padded_gates(gates: int) -> int:
    """Output channels the product computes: ``gates`` rounded up to 16 (two blocks of 8 a tile)."""
    return (gates + 15) // 16 * 16


def pack(weight: Tensor) -> Tensor:
    """int8 ``(2, G, K)`` -> the product's layout ``(2, Gp / 8, ceil(K / 2), 8, 2)`` (``csrc/q8_gemm.h``), zero
    padded to ``Gp`` channels and an even ``K``, the int8 values sign-extended to int16 (what the AVX2 product
    loads: ``csrc/q8_gemm.h`` says why)."""
    directions, gates, inputs = weight.shape
    gp, kp = padded_gates(gates), (inputs + 1) // 2
    full = torch.zeros((directions, gp, 2 * kp), dtype=torch.int16)
    full[:, :gates, :inputs] = weight
    return full.reshape(directions, gp // 8, 8, kp, 2).permute(0, 1, 3, 2, 4).contiguous()


def pad_channels(values: Tensor) -> Tensor:
    """float32 ``(2, G)`` -> ``(2, Gp)``, zero padded."""
    out = values.new_zeros((values.shape[0], padded_gates(values.shape[1])))
    out[:, :values.shape[1]] = values
    return out.contiguous()


def gemm(a: Tensor, w: Tensor, scalar: bool = False) -> Tensor:
    """The kernel's int8 product alone (tests): ``a`` int16 ``(M, 2 Kp)`` and packed int16 ``w`` ``(Gp / 8, Kp, 8, 2)``
    -> int32 ``(M, Gp)``; ``scalar`` forces the portable loop."""
    lib = library()
    if lib is None:
        raise RuntimeError("the CPU kernel is unavailable here; models.blocks.cpu_kernel.available() says why")
    m, gp, kp = a.shape[0], w.shape[0] * 8, w.shape[1]
    c = torch.empty((m, gp), dtype=torch.int32)
    lib.birnn_q8_gemm(int(scalar), m, kp, gp, ptr(a.contiguous()), ptr(w.contiguous()), ptr(c))
    return c


class StackPlan(NamedTuple):
    """What a stack's every call passes unchanged, built once (``plan``): the packed weights (kept alive here), and
    the int32/int64 arrays of input sizes, merge codes and weight addresses the C code reads."""

    weights: List[List[Optional[Tensor]]]
    input_sizes: Tensor
    merges: Tensor
    addresses: Tensor
    wide: bool  # the last merge keeps both directions (concat, None): out (T, B, 2H)


def plan(weights: List[List[Optional[Tensor]]], input_sizes: List[int], merges: List[int]) -> StackPlan:
    """``weights`` per layer ``(w_ih, s_ih, b_ih, w_hh, s_hh, b_hh)`` as packed by ``pack`` / ``pad_channels``;
    merge codes as ``csrc/forward.h``'s ``Merge``."""
    addresses = torch.tensor([ptr(t) or 0 for layer in weights for t in layer], dtype=torch.int64)
    return StackPlan(weights, torch.tensor(input_sizes, dtype=torch.int32), torch.tensor(merges, dtype=torch.int32),
                     addresses, merges[-1] in (0, 4))


def forward_stack(lib: ctypes.CDLL, cell: str, x: Tensor, lengths: Optional[Tensor], h0: Tensor,
                  c0: Optional[Tensor], stack: StackPlan, hidden: int, threads: int) -> List[Tensor]:
    """One call for every layer: ``x (T, B, F)`` float32 contiguous, ``h0``/``c0`` ``(2L, B, H)``; returns
    ``[out, h_n, c_n]`` (``out (T, B, 2H)`` after a last concat/None, else ``(T, B, H)``; ``c_n`` is ``h_n`` but
    for the LSTM)."""
    steps, batch = x.shape[0], x.shape[1]
    layers = stack.input_sizes.shape[0]
    out = x.new_empty((steps, batch, 2 * hidden if stack.wide else hidden))
    h_n = x.new_empty((2 * layers, batch, hidden))
    c_n = x.new_empty((2 * layers, batch, hidden)) if c0 is not None else None
    args = Q8Args(cell=CELL_CODES[cell], steps=steps, batch=batch, hidden=hidden, layers=layers, threads=threads,
                  x=ptr(x), lengths=ptr(lengths), h0=ptr(h0), c0=ptr(c0), out=ptr(out), h_n=ptr(h_n), c_n=ptr(c_n),
                  input_sizes=ptr(stack.input_sizes), merges=ptr(stack.merges), weights=ptr(stack.addresses))
    lib.birnn_q8_forward_stack(ctypes.byref(args))
    return [out, h_n, c_n if c_n is not None else h_n]
