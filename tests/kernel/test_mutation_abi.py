"""Function-level tests of models/blocks/cpu_kernel/abi.py written for mutation testing (issue 37): ``ptr``'s null
pointers, ``cell_traits`` and ``declare`` on a recording stand-in for the C library (every declaration against the C
signatures of ``csrc/birnn_cpu.cpp``, the layout check's refusal word for word), and the declarations at work on the
real library where it is built."""

import ctypes
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import torch

from models.blocks import cpu_kernel
from models.blocks.cpu_kernel import abi

needs_kernel = pytest.mark.skipif(not cpu_kernel.available(), reason="CPU kernel not built")


class Function:
    """One exported function of the stand-in library: records its declaration, runs ``body`` when called."""

    def __init__(self, body: Optional[Callable[..., Any]] = None) -> None:
        self.argtypes: Any = "undeclared"
        self.restype: Any = "undeclared"
        self.body = body
        self.calls: List[Tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> Any:
        self.calls.append(args)
        return self.body(*args) if self.body is not None else None


class FakeLibrary:
    """A stand-in for the loaded ``ctypes.CDLL``: any exported name is a recording ``Function``; ``layout`` is what
    ``birnn_args_layout`` reports, ``gates`` what ``birnn_cell_traits`` fills in per cell code."""

    def __init__(self, layout: Tuple[int, int], traits: Optional[Dict[int, Tuple[int, ...]]] = None) -> None:
        self.functions: Dict[str, Function] = {}

        def args_layout(size: Any, last: Any) -> None:
            size._obj.value, last._obj.value = layout

        def cell_traits(code: int, out: Any) -> None:
            for (name, _), value in zip(out._obj._fields_, (traits or {}).get(code, (0,) * 6), strict=True):
                setattr(out._obj, name, value)

        self.functions["birnn_args_layout"] = Function(args_layout)
        self.functions["birnn_cell_traits"] = Function(cell_traits)

    def __getattr__(self, name: str) -> Function:
        if not name.startswith("birnn_"):
            raise AttributeError(name)
        return self.functions.setdefault(name, Function())


REAL_LAYOUT = (ctypes.sizeof(abi.Args), abi.Args.weights.offset)


def test_ptr_is_null_for_none_and_empty_tensors_and_the_address_otherwise() -> None:
    assert abi.ptr(None) is None
    assert abi.ptr(torch.empty(0)) is None and abi.ptr(torch.empty(3, 0)) is None
    one, many = torch.zeros(1), torch.zeros(2, 3)
    assert abi.ptr(one) == one.data_ptr() and abi.ptr(many) == many.data_ptr()
    assert abi.ptr(many[1]) == many.data_ptr() + 3 * 4  # a view's own address, not its storage's


def test_every_exported_function_is_declared_as_its_c_signature() -> None:
    library = FakeLibrary(REAL_LAYOUT)
    abi.declare(library)  # type: ignore[arg-type]
    p, i, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    args = ctypes.POINTER(abi.Args)
    expected: Dict[str, Tuple[Any, List[Any]]] = {
        **{f"birnn_{e}_{s}": (None, [args]) for s in ("f32", "f64") for e in ("forward", "forward_stack", "backward")},
        "birnn_args_layout": (None, [ctypes.POINTER(i64), ctypes.POINTER(i64)]),
        "birnn_cell_traits": (None, [i, ctypes.POINTER(abi._Traits)]),
        "birnn_packed_hh_floats": (i64, [i, i]),
        "birnn_pack_hh_f32": (None, [i, i, p, p]),
        "birnn_packed_ih_floats": (i64, [i, i, i]),
        "birnn_pack_ih_f32": (None, [i, i, i, p, p]),
        "birnn_sigmoid_f32": (None, [p, i]),
        "birnn_tanh_f32": (None, [p, i]),
        "birnn_vector_width": (i, []),
    }
    got = {name: (f.restype, f.argtypes) for name, f in library.functions.items()}
    assert got == expected
    assert len(library.functions["birnn_args_layout"].calls) == 1  # the layout asked once, after the declarations


@pytest.mark.parametrize("layout", [(REAL_LAYOUT[0] + 8, REAL_LAYOUT[1]), (REAL_LAYOUT[0], REAL_LAYOUT[1] - 8)],
                         ids=["size", "last-field"])
def test_a_library_with_another_args_layout_is_refused_naming_both(layout: Tuple[int, int]) -> None:
    size, last = REAL_LAYOUT
    message = (f"the CPU kernel's Args is {layout[0]} bytes (last field at {layout[1]}) but abi.Args is {size} "
               f"(at {last}): csrc/args.h and abi.py disagree")
    with pytest.raises(OSError, match=f"^{re.escape(message)}$"):
        abi.declare(FakeLibrary(layout))  # type: ignore[arg-type]


def test_cell_traits_reads_each_field_in_order_and_refuses_an_unknown_code() -> None:
    library = FakeLibrary(REAL_LAYOUT, {0: (4, 1, 0, 1, 0, 1), 5: (2, 0, 1, 0, 1, 0), 6: (1, 0, 0, 0, 0, 0)})
    found = abi.cell_traits(library, {"A": 0, "B": 5, "C": 6})  # type: ignore[arg-type]
    assert found == {0: abi.CellTraits(4, True, False, True, False, True),
                     5: abi.CellTraits(2, False, True, False, True, False),
                     6: abi.CellTraits(1, False, False, False, False, False)}
    assert all(type(flag) is bool for traits in found.values() for flag in traits[1:])
    assert [call[0] for call in library.functions["birnn_cell_traits"].calls] == [0, 5, 6]
    with pytest.raises(ValueError, match=r"^the CPU kernel has no cell 9 \(RNN_TANH\); see csrc/cells\.h$"):
        abi.cell_traits(library, {"RNN_TANH": 9})  # type: ignore[arg-type]


@needs_kernel
def test_the_real_librarys_declared_functions_answer_as_declared() -> None:
    library = cpu_kernel._kernel()
    assert library.birnn_vector_width() == {"avx512": 16, "avx2": 8}[cpu_kernel.capability() or ""]
    packed = library.birnn_packed_hh_floats(0, 8)
    assert isinstance(packed, int) and packed >= 0
    x = torch.tensor([-1.0, 0.0, 2.0])
    library.birnn_tanh_f32(abi.ptr(x), 3)
    torch.testing.assert_close(x, torch.tanh(torch.tensor([-1.0, 0.0, 2.0])), atol=2e-7, rtol=0)
