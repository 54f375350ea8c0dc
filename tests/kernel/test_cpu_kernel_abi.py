"""The kernel's C signature and cell traits as Python sees them (models/blocks/cpu_kernel/abi.py, csrc/args.h,
csrc/cells.h)."""

import ctypes

import pytest

from models.blocks import cpu_kernel
from models.blocks.cpu_kernel import abi
from models.cells import KERNEL_CODES

needs_kernel = pytest.mark.skipif(not cpu_kernel.available(), reason="CPU kernel not built")


@needs_kernel
def test_args_mirror_matches_the_library_layout() -> None:
    size, last = ctypes.c_int64(), ctypes.c_int64()
    cpu_kernel._kernel().birnn_args_layout(ctypes.byref(size), ctypes.byref(last))
    assert size.value == ctypes.sizeof(abi.Args) and last.value == abi.Args.weights.offset


@needs_kernel
def test_each_cell_states_its_traits() -> None:
    expected = {"LSTM": abi.CellTraits(4, True, False, False, False, True),
                "GRU": abi.CellTraits(3, False, True, False, True, False),
                "GRU_RESET_BEFORE": abi.CellTraits(3, False, False, True, True, False)}
    assert {mode: cpu_kernel.traits(code) for mode, code in KERNEL_CODES.items()} == expected


@needs_kernel
def test_a_code_the_library_does_not_know_is_refused() -> None:
    with pytest.raises(ValueError, match="no cell 7"):
        abi.cell_traits(cpu_kernel._kernel(), {"RNN_TANH": 7})
