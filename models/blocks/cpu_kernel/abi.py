"""The kernel's C signature on the Python side: ``Args``, the ctypes mirror of ``csrc/args.h``'s ``Args`` (every
entry point of ``birnn_cpu.cpp`` takes a pointer to one), the cells' traits as the C code states them, and the
declaration of every exported function. The layout is checked against the library's own when it is loaded.

Change ``Args`` here and in ``csrc/args.h`` together (field for field, in order), and nowhere else.
"""

import ctypes
from typing import Any, Dict, NamedTuple, Optional

from torch import Tensor

_P = ctypes.c_void_p
_I32 = ctypes.c_int32


class Args(ctypes.Structure):
    """One call's sizes and addresses (``csrc/args.h`` documents every field's layout); unset pointers are null."""

    _fields_ = [
        ("cell", _I32), ("steps", _I32), ("batch", _I32), ("hidden", _I32), ("input_size", _I32),
        ("layers", _I32), ("keep_gates", _I32), ("threads", _I32),
        ("x", _P), ("w_ih", _P), ("packed_ih", _P), ("b_ih", _P), ("w_hh", _P), ("packed_hh", _P), ("b_hh", _P),
        ("h0", _P), ("c0", _P), ("lengths", _P),
        ("gi", _P), ("out", _P), ("h_n", _P), ("c_n", _P), ("h_all", _P), ("c_all", _P), ("ghn", _P),
        ("d_out", _P), ("dh", _P), ("dc", _P), ("d_x", _P), ("d_w_ih", _P),
        ("d_b_ih", _P), ("d_w_hh", _P), ("d_b_hh", _P),
        ("input_sizes", _P), ("merges", _P), ("weights", _P),
    ]


class _Traits(ctypes.Structure):
    _fields_ = [(name, _I32) for name in ("gates", "cell_state", "apart_hh", "second_product", "direct", "foldable")]


class CellTraits(NamedTuple):
    """What the kernel's loops know of a cell (``csrc/cell_base.h``, ``CellBase``)."""

    gates: int            # gate blocks: w_ih (2, gates * H, F)
    cell_state: bool      # a second state c (LSTM): c0, c_n
    apart_hh: bool        # b_hh stays apart from b_ih (GRU reset_after); else the two are folded into b_ih
    second_product: bool  # (r * h) @ W_hn^T, a second step product (reset-before GRU)
    direct: bool          # h_t depends on h_{t-1} outside the product
    foldable: bool        # inference adds projection and bias into the step product's output


def ptr(t: Optional[Tensor]) -> Optional[int]:
    """The address the C code reads; None (a null pointer) for an absent or empty tensor."""
    return None if t is None or t.numel() == 0 else t.data_ptr()


def cell_traits(library: ctypes.CDLL, codes: Dict[str, int]) -> Dict[int, CellTraits]:
    """Every cell code's traits, as the library states them; raises ``ValueError`` for a code the library does not
    know (a cell added in Python but not in ``csrc/cells.h``)."""
    found: Dict[int, CellTraits] = {}
    for mode, code in codes.items():
        raw = _Traits()
        library.birnn_cell_traits(code, ctypes.byref(raw))
        if raw.gates <= 0:
            raise ValueError(f"the CPU kernel has no cell {code} ({mode}); see csrc/cells.h")
        found[code] = CellTraits(raw.gates, *(bool(getattr(raw, name)) for name, _ in _Traits._fields_[1:]))
    return found


def declare(library: ctypes.CDLL) -> None:
    """Declare every exported function's signature, and check ``Args`` against the library's layout (raises
    ``OSError`` on a mismatch: a library and a Python package from different versions)."""
    pointer, integer, int64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64

    def sign(name: str, restype: Any, *argtypes: Any) -> None:
        function = getattr(library, name)
        function.argtypes = list(argtypes)
        function.restype = restype

    for suffix in ("f32", "f64"):
        for entry in ("forward", "forward_stack", "backward"):
            sign(f"birnn_{entry}_{suffix}", None, ctypes.POINTER(Args))
    sign("birnn_args_layout", None, ctypes.POINTER(int64), ctypes.POINTER(int64))
    sign("birnn_cell_traits", None, integer, ctypes.POINTER(_Traits))
    sign("birnn_packed_hh_floats", int64, integer, integer)
    sign("birnn_pack_hh_f32", None, integer, integer, pointer, pointer)
    sign("birnn_packed_ih_floats", int64, integer, integer, integer)
    sign("birnn_pack_ih_f32", None, integer, integer, integer, pointer, pointer)
    for name in ("birnn_sigmoid_f32", "birnn_tanh_f32"):
        sign(name, None, pointer, integer)
    sign("birnn_vector_width", integer)
    size, last = int64(), int64()
    library.birnn_args_layout(ctypes.byref(size), ctypes.byref(last))
    if size.value != ctypes.sizeof(Args) or last.value != Args.weights.offset:
        raise OSError(f"the CPU kernel's Args is {size.value} bytes (last field at {last.value}) but abi.Args is "
                      f"{ctypes.sizeof(Args)} (at {Args.weights.offset}): csrc/args.h and abi.py disagree")
