"""The int8 inference entry point of the CPU kernel (``csrc/q8_forward.h``, ``csrc/q8_gemm.h``): ``Q8Args``, the
ctypes mirror of its C struct, the weight packing its products read, and one call for a whole stack.

The products (``PRODUCTS``; ``csrc/q8_gemm.h`` says how each stays exact): ``"amx"`` (AMX-INT8 tiles for whole 16-row
tiles, ``vpdpbusd`` for the rest, the avx512 library on a CPU with AMX where Linux grants the tile state), ``"vnni"``
(``vpdpbusd`` on u8 x s8: AVX-512 VNNI in the avx512 library, AVX-VNNI in the avx2 one, on a CPU that has it),
``"avx2"`` (``vpmaddwd`` on s16) and ``"scalar"`` (the portable loop). All give the same integers, so the same outputs
bit for bit. The library picks the fastest it has at run time (``best_product``); ``BIRNN_ZOO_CPU_CAPABILITY=avx2`` (a
library without AVX-512) leaves ``"vnni"`` (on AVX-VNNI), ``"avx2"`` and ``"scalar"``.

Kept apart from ``abi.py``'s ``Args`` (the float entry points' struct): the int8 path has its own struct, checked
against the library by ``birnn_q8_args_layout`` when first used, so neither path's signature moves for the other.
Change ``Q8Args`` here and in ``csrc/q8_forward.h`` together.
"""

import ctypes
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .. import cpu_kernel
from .abi import ptr

_P = ctypes.c_void_p
_I32 = ctypes.c_int32

# The int8 path's cell codes (csrc/q8_forward.h, q8::Cell): LSTM and GRU as the float kernel's, the Elman RNNs apart.
CELL_CODES = {"LSTM": 0, "GRU": 1, "RNN_TANH": 3, "RNN_RELU": 4}
# The int8 products, fastest last (csrc/q8_gemm.h, q8::Product), and the inputs each packs into 4 bytes.
PRODUCTS = {"scalar": 0, "avx2": 1, "vnni": 2, "amx": 3}
_UNIT = {"scalar": 2, "avx2": 2, "vnni": 4, "amx": 4}  # inputs in 4 bytes: s16 pairs or u8/s8 quads
_BLOCK = {"scalar": 8, "avx2": 8, "vnni": 16, "amx": 16}  # output channels a packed block holds
_VNNI_OFFSET = 128  # the quad products' activations are stored + 128 (u8)


class Q8Args(ctypes.Structure):
    """One int8 stack call's sizes and addresses (``csrc/q8_forward.h`` documents the layouts)."""

    _fields_ = [
        ("cell", _I32), ("steps", _I32), ("batch", _I32), ("hidden", _I32), ("layers", _I32), ("threads", _I32),
        ("product", _I32),
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
    library.birnn_q8_gemm.argtypes = [ctypes.c_int] * 4 + [_P] * 4 + [ctypes.c_int]
    library.birnn_q8_gemm.restype = None
    library.birnn_q8_best_product.argtypes = []
    library.birnn_q8_best_product.restype = ctypes.c_int
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


def best_product(lib: ctypes.CDLL) -> str:
    """The fastest product ``lib`` runs on this CPU: ``"amx"``, ``"vnni"``, ``"avx2"`` or ``"scalar"``."""
    code = lib.birnn_q8_best_product()
    return next(name for name, value in PRODUCTS.items() if value == code)


def products(lib: ctypes.CDLL) -> List[str]:
    """Every product ``lib`` runs on this CPU, slowest first (the tests compare them all)."""
    best = PRODUCTS[best_product(lib)]
    return [name for name, value in PRODUCTS.items() if value <= best]


def _check_product(lib: ctypes.CDLL, product: str) -> None:
    if product not in products(lib):
        raise ValueError(f"product must be one of {products(lib)} (what this kernel has on this CPU), got "
                         f"{product!r}")


def padded_gates(gates: int) -> int:
    """Output channels the product computes: ``gates`` rounded up to 16 (one block of the quad layouts, two of the
    s16 one)."""
    return (gates + 15) // 16 * 16


def pack(weight: Tensor, product: str) -> Tuple[Tensor, Optional[Tensor]]:
    """int8 ``(2, G, K)`` -> ``product``'s layout (``csrc/q8_gemm.h``), zero padded to ``Gp`` channels and a whole
    number of units, and its offset corrections. ``"vnni"`` and ``"amx"``: int8 ``(2, Gp / 16, ceil(K / 4), 16, 4)``
    and int32 ``(2, Gp)`` ``-128 * sum_k w[j, k]`` (the sums' start); otherwise int16 ``(2, Gp / 8, ceil(K / 2), 8,
    2)`` (the int8 values sign-extended: what the AVX2 product loads) and None."""
    directions, gates, inputs = weight.shape
    unit, block = _UNIT[product], _BLOCK[product]
    gp, ku = padded_gates(gates), (inputs + unit - 1) // unit
    quads = unit == 4
    full = torch.zeros((directions, gp, unit * ku), dtype=torch.int8 if quads else torch.int16)
    full[:, :gates, :inputs] = weight
    packed = full.reshape(directions, gp // block, block, ku, unit).permute(0, 1, 3, 2, 4).contiguous()
    if not quads:
        return packed, None
    return packed, (-_VNNI_OFFSET * full.sum(-1, dtype=torch.int32)).contiguous()


def pad_channels(values: Tensor) -> Tensor:
    """float32 ``(2, G)`` -> ``(2, Gp)``, zero padded."""
    out = values.new_zeros((values.shape[0], padded_gates(values.shape[1])))
    out[:, :values.shape[1]] = values
    return out.contiguous()


VECTOR_BITS = (0, 256, 512)  # the VNNI vectors: the kernel's choice for this CPU, or either width


def vector_bits_of(lib: ctypes.CDLL) -> Tuple[int, ...]:
    """The ``vector_bits`` ``gemm`` takes with ``lib``: ``VECTOR_BITS`` in the avx512 library, 0 and 256 in the avx2
    one (AVX-VNNI has ymm only)."""
    return VECTOR_BITS if lib.birnn_vector_width() >= 16 else VECTOR_BITS[:2]


def gemm(a: Tensor, weight: Tensor, product: str, vector_bits: int = 0, lib: Optional[ctypes.CDLL] = None) -> Tensor:
    """The kernel's int8 product alone (tests): integer ``a (M, K)`` and int8 ``weight (G, K)``, values in
    [-127, 127] -> int32 ``(M, Gp)`` = ``a @ weight.T`` (channels past ``G``: 0), by ``product``; ``vector_bits``:
    the ``vpdpbusd`` vectors of ``"vnni"`` and ``"amx"`` (0: what the kernel picks for this CPU, 256 or 512; the
    avx2 library has 256 only); ``lib``: a loaded kernel (default: this process's, ``library()``)."""
    lib = library() if lib is None else _declared(lib)
    if lib is None:
        raise RuntimeError("the CPU kernel is unavailable here; models.blocks.cpu_kernel.available() says why")
    _check_product(lib, product)
    if vector_bits not in VECTOR_BITS:
        raise ValueError(f"vector_bits must be one of {VECTOR_BITS}, got {vector_bits!r}")
    if vector_bits not in vector_bits_of(lib):
        raise ValueError(f"vector_bits={vector_bits} needs the avx512 library; this one has {vector_bits_of(lib)}")
    packed, comp = pack(weight.unsqueeze(0), product)
    unit = _UNIT[product]
    rows, inputs = a.shape
    ku, gp = packed.shape[2], padded_gates(weight.shape[0])
    if unit == 4:
        rows_of_a = torch.full((rows, unit * ku), _VNNI_OFFSET, dtype=torch.uint8)
        rows_of_a[:, :inputs] = (a.to(torch.int16) + _VNNI_OFFSET).to(torch.uint8)
    else:
        rows_of_a = torch.zeros((rows, unit * ku), dtype=torch.int16)
        rows_of_a[:, :inputs] = a
    c = torch.empty((rows, gp), dtype=torch.int32)
    lib.birnn_q8_gemm(PRODUCTS[product], rows, ku, gp, ptr(rows_of_a), ptr(packed[0]),
                      ptr(comp[0].contiguous()) if comp is not None else None, ptr(c), vector_bits)
    return c


class StackPlan(NamedTuple):
    """What a stack's every call passes unchanged, built once (``plan``): the packed weights (kept alive here), and
    the int32/int64 arrays of input sizes, merge codes and weight addresses the C code reads."""

    weights: List[List[Optional[Tensor]]]
    input_sizes: Tensor
    merges: Tensor
    addresses: Tensor
    wide: bool  # the last merge keeps both directions (concat, None): out (T, B, 2H)
    product: str


def plan(lib: ctypes.CDLL, weights: List[List[Optional[Tensor]]], input_sizes: List[int], merges: List[int],
         product: Optional[str] = None) -> StackPlan:
    """``weights`` per layer ``[w_ih (2, G, F) int8, s_ih (2, G), b_ih (2, G) or None, w_hh (2, G, H) int8, s_hh,
    b_hh or None]`` (``QuantizedBiRNN.layer_weights``), packed for ``product`` (default: ``best_product(lib)``);
    merge codes as ``csrc/forward.h``'s ``Merge``."""
    product = best_product(lib) if product is None else product
    _check_product(lib, product)
    packed: List[List[Optional[Tensor]]] = []
    for w_ih, s_ih, b_ih, w_hh, s_hh, b_hh in weights:
        pad = lambda t: None if t is None else pad_channels(t.float())  # noqa: E731
        (p_ih, k_ih), (p_hh, k_hh) = pack(w_ih, product), pack(w_hh, product)
        packed.append([p_ih, pad(s_ih), pad(b_ih), p_hh, pad(s_hh), pad(b_hh), k_ih, k_hh])
    addresses = torch.tensor([ptr(t) or 0 for layer in packed for t in layer], dtype=torch.int64)
    return StackPlan(packed, torch.tensor(input_sizes, dtype=torch.int32), torch.tensor(merges, dtype=torch.int32),
                     addresses, merges[-1] in (0, 4), product)


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
                  product=PRODUCTS[stack.product],
                  x=ptr(x), lengths=ptr(lengths), h0=ptr(h0), c0=ptr(c0), out=ptr(out), h_n=ptr(h_n), c_n=ptr(c_n),
                  input_sizes=ptr(stack.input_sizes), merges=ptr(stack.merges), weights=ptr(stack.addresses))
    lib.birnn_q8_forward_stack(ctypes.byref(args))
    return [out, h_n, c_n if c_n is not None else h_n]
