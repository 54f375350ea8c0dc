"""Function-level tests of models/blocks/cpu_kernel/q8.py written for mutation testing (issue 37): the packed
layouts against the element-by-element rule of ``csrc/q8_gemm.h`` written out here, the products offered and the
refusal of the others (on a stand-in library), the int8 declarations and their layout check, and what one stack call
hands the C code (``Q8Args`` recorded through a proxy of the real library)."""

import ctypes
import re
from typing import Any, Dict, List, Optional, Tuple

import pytest
import torch

from models.blocks import cpu_kernel
from models.blocks.cpu_kernel import q8
from models.blocks.cpu_kernel.abi import ptr

needs_kernel = pytest.mark.skipif(not cpu_kernel.available(), reason="CPU kernel not built")


@pytest.mark.parametrize("gates,padded", [(0, 0), (1, 16), (15, 16), (16, 16), (17, 32), (48, 48), (49, 64)])
def test_padded_gates_rounds_up_to_16(gates: int, padded: int) -> None:
    assert q8.padded_gates(gates) == padded


def int8_weight(directions: int = 2, gates: int = 11, inputs: int = 7, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randint(-127, 128, (directions, gates, inputs), generator=g, dtype=torch.int8)
    weight[0, 0, 0], weight[-1, -1, -1] = 127, -127
    return weight


def packed_by_rule(weight: torch.Tensor, unit: int, dtype: torch.dtype, block: int = 8) -> torch.Tensor:
    """``(2, Gp / block, ceil(K / unit), block, unit)``: entry ``[d, j // block, k // unit, j % block, k % unit] =
    w[d, j, k]``, zero past ``G`` and ``K``."""
    directions, gates, inputs = weight.shape
    gp, ku = (gates + 15) // 16 * 16, -(-inputs // unit)
    out = torch.zeros((directions, gp // block, ku, block, unit), dtype=dtype)
    for d in range(directions):
        for j in range(gates):
            for k in range(inputs):
                out[d, j // block, k // unit, j % block, k % unit] = int(weight[d, j, k])
    return out


@pytest.mark.parametrize("product", ["scalar", "avx2"])
def test_the_s16_products_pack_pairs_of_inputs_sign_extended(product: str) -> None:
    weight = int8_weight()
    packed, offsets = q8.pack(weight, product)
    assert offsets is None
    assert packed.dtype == torch.int16 and packed.is_contiguous() and packed.shape == (2, 2, 4, 8, 2)
    assert torch.equal(packed, packed_by_rule(weight, 2, torch.int16))


@pytest.mark.parametrize("product", ["vnni", "amx"])
def test_the_quad_products_pack_16_channel_blocks_and_their_offset_corrections(product: str) -> None:
    weight = int8_weight(gates=19, inputs=9)
    packed, offsets = q8.pack(weight, product)
    assert packed.dtype == torch.int8 and packed.is_contiguous() and packed.shape == (2, 2, 3, 16, 4)
    assert torch.equal(packed, packed_by_rule(weight, 4, torch.int8, block=16))
    assert offsets is not None and offsets.dtype == torch.int32 and offsets.is_contiguous()
    want = torch.zeros((2, 32), dtype=torch.int32)
    want[:, :19] = -128 * weight.to(torch.int32).sum(-1)  # the sums start here: sum (a + 128) w - 128 sum w
    assert torch.equal(offsets, want)


def test_pad_channels_pads_each_direction_with_zeros() -> None:
    values = torch.arange(1.0, 35.0).reshape(2, 17)
    padded = q8.pad_channels(values)
    assert padded.shape == (2, 32) and padded.dtype == torch.float32 and padded.is_contiguous()
    assert torch.equal(padded[:, :17], values) and not padded[:, 17:].any()
    assert torch.equal(q8.pad_channels(values[:, :16].t().contiguous().t()), values[:, :16])  # a transposed input


class Function:
    def __init__(self, body: Any = None) -> None:
        self.argtypes: Any = "undeclared"
        self.restype: Any = "undeclared"
        self.body, self.calls = body, []

    def __call__(self, *args: Any) -> Any:
        self.calls.append(args)
        return self.body(*args) if self.body is not None else None


class FakeLibrary:
    """A stand-in library: the int8 entry points record their declarations; ``best`` is the product code it
    reports, ``layout`` its ``Q8Args`` size and last offset."""

    def __init__(self, best: int = 2, layout: Optional[Tuple[int, int]] = None) -> None:
        size, last = layout or (ctypes.sizeof(q8.Q8Args), q8.Q8Args.weights.offset)

        def args_layout(a: Any, b: Any) -> None:
            a._obj.value, b._obj.value = size, last

        self.birnn_q8_args_layout = Function(args_layout)
        self.birnn_q8_forward_stack = Function()
        self.birnn_q8_gemm = Function()
        self.birnn_q8_best_product = Function(lambda: best)


@pytest.mark.parametrize("best,offered", [(0, ["scalar"]), (1, ["scalar", "avx2"]), (2, ["scalar", "avx2", "vnni"]),
                                         (3, ["scalar", "avx2", "vnni", "amx"])])
def test_the_products_offered_are_those_up_to_the_best(best: int, offered: List[str]) -> None:
    lib = FakeLibrary(best)
    assert q8.best_product(lib) == offered[-1]  # type: ignore[arg-type]
    assert q8.products(lib) == offered  # type: ignore[arg-type]
    for product in offered:
        q8._check_product(lib, product)  # type: ignore[arg-type]


def test_a_product_this_library_lacks_is_refused_naming_the_ones_it_has() -> None:
    lib = FakeLibrary(1)
    message = "product must be one of ['scalar', 'avx2'] (what this kernel has on this CPU), got 'vnni'"
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        q8._check_product(lib, "vnni")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape("got 'vnni'")):
        q8.plan(lib, [], [], [0], "vnni")  # type: ignore[arg-type]


def test_the_int8_entry_points_are_declared_once_as_their_c_signatures() -> None:
    lib = FakeLibrary()
    assert q8._declared(lib) is lib  # type: ignore[arg-type]
    i64, p = ctypes.c_int64, ctypes.c_void_p
    got = {name: (getattr(lib, name).restype, getattr(lib, name).argtypes)
           for name in ("birnn_q8_args_layout", "birnn_q8_forward_stack", "birnn_q8_gemm", "birnn_q8_best_product")}
    assert got == {"birnn_q8_args_layout": (None, [ctypes.POINTER(i64), ctypes.POINTER(i64)]),
                   "birnn_q8_forward_stack": (None, [ctypes.POINTER(q8.Q8Args)]),
                   "birnn_q8_gemm": (None, [ctypes.c_int] * 4 + [p] * 4 + [ctypes.c_int]),
                   "birnn_q8_best_product": (ctypes.c_int, [])}
    assert lib._q8_declared is True  # type: ignore[attr-defined]
    lib.birnn_q8_gemm.argtypes = "changed"
    assert q8._declared(lib) is lib  # type: ignore[arg-type]
    assert lib.birnn_q8_gemm.argtypes == "changed" and len(lib.birnn_q8_args_layout.calls) == 1


@pytest.mark.parametrize("shift", [(8, 0), (0, -8)], ids=["size", "last-field"])
def test_a_library_with_another_q8args_layout_is_refused_naming_both(shift: Tuple[int, int]) -> None:
    size, last = ctypes.sizeof(q8.Q8Args), q8.Q8Args.weights.offset
    lib = FakeLibrary(layout=(size + shift[0], last + shift[1]))
    message = (f"the CPU kernel's Q8Args is {size + shift[0]} bytes (last field at {last + shift[1]}) but q8.Q8Args "
               f"is {size} (at {last}): csrc/q8_forward.h and q8.py disagree")
    with pytest.raises(OSError, match="^" + re.escape(message) + "$"):
        q8._declared(lib)  # type: ignore[arg-type]
    assert not getattr(lib, "_q8_declared", False)


def test_without_the_kernel_there_is_no_library_and_gemm_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_kernel, "available", lambda: False)
    assert q8.library() is None
    with pytest.raises(RuntimeError, match=r"^the CPU kernel is unavailable here; models\.blocks\.cpu_kernel\."
                                           r"available\(\) says why$"):
        q8.gemm(torch.zeros((1, 4), dtype=torch.int16), torch.zeros((16, 4), dtype=torch.int8), "scalar")


@needs_kernel
def test_the_library_is_the_loaded_kernel_declared() -> None:
    lib = q8.library()
    assert lib is cpu_kernel._kernel() and lib._q8_declared is True  # type: ignore[union-attr]


@needs_kernel
def test_gemm_equals_the_integer_product_in_every_product() -> None:
    lib = q8.library()
    assert lib is not None
    g = torch.Generator().manual_seed(4)
    a = torch.randint(-127, 128, (3, 9), generator=g, dtype=torch.int16)
    a[0, 0], a[1, 1] = -127, 127
    weight = int8_weight(1, 19, 9)[0]
    want = torch.zeros((3, 32), dtype=torch.int32)
    want[:, :19] = a.to(torch.int32) @ weight.to(torch.int32).t()
    for product in q8.products(lib):
        assert torch.equal(q8.gemm(a, weight, product), want), product


class Recording:
    """A proxy of the real library whose ``birnn_q8_forward_stack`` records the ``Q8Args`` it is handed."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib, self.args = lib, []

    def birnn_q8_forward_stack(self, pointer: Any) -> None:
        a = pointer._obj
        self.args.append({name: getattr(a, name) for name, _ in q8.Q8Args._fields_})
        self.lib.birnn_q8_forward_stack(pointer)


def stack_weights(gates: int, hidden: int, sizes: List[int], biases: bool) -> List[List[Optional[torch.Tensor]]]:
    layers = []
    for i, f in enumerate(sizes):
        scales = lambda: torch.rand(2, gates * hidden) * 0.01 + 0.001  # noqa: E731
        bias = lambda: torch.randn(2, gates * hidden) if biases else None  # noqa: E731
        layers.append([int8_weight(2, gates * hidden, f, i), scales(), bias(),
                       int8_weight(2, gates * hidden, hidden, 10 + i), scales(), bias()])
    return layers


@needs_kernel
@pytest.mark.parametrize("merges,wide", [([1, 0], True), ([0, 4], True), ([0, 1], False), ([4, 2], False),
                                         ([0, 3], False)])
def test_plan_keeps_the_packed_weights_and_their_addresses(merges: List[int], wide: bool) -> None:
    lib = q8.library()
    assert lib is not None
    hidden, sizes = 5, [6, 10 if merges[0] in (0, 4) else 5]
    weights = stack_weights(3, hidden, sizes, biases=merges[0] != 4)
    plan = q8.plan(lib, weights, sizes, merges)
    assert plan.product == q8.best_product(lib) and plan.wide is wide
    assert plan.input_sizes.dtype == torch.int32 and plan.input_sizes.tolist() == sizes
    assert plan.merges.dtype == torch.int32 and plan.merges.tolist() == merges
    assert len(plan.weights) == 2 and all(len(layer) == 8 for layer in plan.weights)
    for layer, given in zip(plan.weights, weights, strict=True):
        p_ih, k_ih = q8.pack(given[0], plan.product)  # type: ignore[arg-type]
        p_hh, k_hh = q8.pack(given[3], plan.product)  # type: ignore[arg-type]
        assert torch.equal(layer[0], p_ih) and torch.equal(layer[3], p_hh)
        for got, want in ((layer[1], given[1]), (layer[2], given[2]), (layer[4], given[4]), (layer[5], given[5])):
            assert (got is None) == (want is None)
            if want is not None:
                assert got is not None and torch.equal(got, q8.pad_channels(want))
        for got, want in ((layer[6], k_ih), (layer[7], k_hh)):
            assert (got is None) == (want is None) and (want is None or torch.equal(got, want))  # type: ignore
    assert plan.addresses.dtype == torch.int64
    assert plan.addresses.tolist() == [ptr(t) or 0 for layer in plan.weights for t in layer]
    other = q8.products(lib)[0]
    assert q8.plan(lib, weights, sizes, merges, other).product == other


@needs_kernel
@pytest.mark.parametrize("cell,merges", [("LSTM", [0]), ("GRU", [1]), ("RNN_TANH", [4]), ("RNN_RELU", [3])])
def test_one_stack_call_hands_the_kernel_its_sizes_and_addresses(cell: str, merges: List[int]) -> None:
    lib = q8.library()
    assert lib is not None
    gates = {"LSTM": 4, "GRU": 3}.get(cell, 1)
    steps, batch, hidden, features = 4, 3, 5, 6
    plan = q8.plan(lib, stack_weights(gates, hidden, [features], True), [features], merges)
    x = torch.randn(steps, batch, features)
    lengths = torch.tensor([4, 1, 3])
    h0 = torch.randn(2, batch, hidden)
    c0 = torch.randn(2, batch, hidden) if cell == "LSTM" else None
    proxy = Recording(lib)
    out, h_n, c_n = q8.forward_stack(proxy, cell, x, lengths, h0, c0, plan, hidden, 2)  # type: ignore[arg-type]
    assert out.shape == (steps, batch, 2 * hidden if merges[-1] in (0, 4) else hidden) and out.dtype == x.dtype
    assert h_n.shape == (2, batch, hidden)
    assert (c_n is h_n) == (cell != "LSTM") and c_n.shape == (2, batch, hidden)
    (args,) = proxy.args
    addresses = {"x": ptr(x), "lengths": ptr(lengths), "h0": ptr(h0), "c0": ptr(c0), "out": ptr(out),
                 "h_n": ptr(h_n), "c_n": ptr(c_n) if cell == "LSTM" else None,
                 "input_sizes": ptr(plan.input_sizes), "merges": ptr(plan.merges), "weights": ptr(plan.addresses)}
    want: Dict[str, Any] = {"cell": q8.CELL_CODES[cell], "steps": steps, "batch": batch, "hidden": hidden,
                            "layers": 1, "threads": 2, "product": q8.PRODUCTS[plan.product], **addresses}
    assert args == want
    assert torch.isfinite(out).all() and not out[1:, 1].any()  # row 1 ends after one step: zero after it
