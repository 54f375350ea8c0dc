"""Function-level tests of models/blocks/cpu_kernel/__init__.py written for mutation testing (issue 37): the first
load (``available``) on stubbed build steps, each gate of ``can_run`` and ``applies`` asked on its own, the question
``kernel_chosen`` puts to the calibration and the table, every refusal of ``_check_layer`` word for word (a tensor on
``device="meta"`` stands in for another device), and what ``fused_layer`` hands the custom op (``stash``, lengths
read through a non-contiguous view). Fast: tiny shapes, the kernel loaded once."""

import re
import warnings
from typing import Any, List, Optional, Tuple

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.blocks import cpu_kernel
from models.blocks.cpu_kernel import abi, calibrate

needs_kernel = pytest.mark.skipif(not cpu_kernel.available(), reason="CPU kernel not built")


# -- available(): the first load, on stubbed build steps ---------------------------------------------------------

class Steps:
    """Stand-ins for ``build.choose_capability``/``build.load``/``abi.cell_traits`` that record their calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, wanted: Optional[str] = "avx2",
                 error: Optional[Exception] = None) -> None:
        self.calls: List[Tuple[str, Any]] = []
        self.library = object()
        monkeypatch.setattr(cpu_kernel, "_tried", False)
        monkeypatch.setattr(cpu_kernel, "_library", None)
        monkeypatch.setattr(cpu_kernel, "_capability", None)
        monkeypatch.setattr(cpu_kernel, "_traits", {})
        monkeypatch.delenv("BIRNN_ZOO_CPU_KERNEL", raising=False)

        def load(capability: str) -> object:
            self.calls.append(("load", capability))
            if error is not None:
                raise error
            return self.library

        def traits(library: object, codes: dict) -> dict:
            self.calls.append(("traits", (library, codes)))
            return {code: mode for mode, code in codes.items()}

        def choose() -> Optional[str]:
            self.calls.append(("choose", None))
            return wanted

        monkeypatch.setattr(cpu_kernel.cpu_kernel_build, "choose_capability", choose)
        monkeypatch.setattr(cpu_kernel.cpu_kernel_build, "load", load)
        monkeypatch.setattr(abi, "cell_traits", traits)


def test_the_first_call_loads_the_chosen_capability_once_and_keeps_its_traits(monkeypatch: pytest.MonkeyPatch
                                                                              ) -> None:
    steps = Steps(monkeypatch)
    assert cpu_kernel.available() is True
    assert cpu_kernel.available() is True  # the second call asks nothing
    assert steps.calls == [("choose", None), ("load", "avx2"), ("traits", (steps.library, cpu_kernel._CELLS))]
    assert cpu_kernel._library is steps.library and cpu_kernel.capability() == "avx2"
    assert cpu_kernel._traits == {0: "LSTM", 1: "GRU", 2: "GRU_RESET_BEFORE"}
    assert cpu_kernel._kernel() is steps.library


@pytest.mark.parametrize("value,loads", [("0", False), ("1", True), ("", True)])
def test_birnn_zoo_cpu_kernel_0_switches_it_off_without_a_warning(monkeypatch: pytest.MonkeyPatch, value: str,
                                                                 loads: bool) -> None:
    steps = Steps(monkeypatch)
    monkeypatch.setenv("BIRNN_ZOO_CPU_KERNEL", value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpu_kernel.available() is loads
    assert [name for name, _ in steps.calls] == (["choose", "load", "traits"] if loads else [])
    assert cpu_kernel.capability() == ("avx2" if loads else None)


def test_no_capability_means_no_load_and_no_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = Steps(monkeypatch, wanted=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpu_kernel.available() is False
    assert steps.calls == [("choose", None)]
    with pytest.raises(RuntimeError, match=r"^birnn-zoo's CPU kernel is not available; check "
                                           r"models\.blocks\.cpu_kernel\.available\(\) first$"):
        cpu_kernel._kernel()


@pytest.mark.parametrize("error", [OSError("no lib"), ValueError("no cell 7"),
                                   cpu_kernel.cpu_kernel_build.KernelUnavailable("no compiler")],
                         ids=["OSError", "ValueError", "KernelUnavailable"])
def test_a_failed_load_warns_once_and_is_not_retried(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    steps = Steps(monkeypatch, error=error)
    with pytest.warns(RuntimeWarning) as caught:
        assert cpu_kernel.available() is False
    assert [str(w.message) for w in caught] == [
        f"birnn-zoo: CPU kernel unavailable, using PyTorch's fused kernels ({error})"]
    assert cpu_kernel.available() is False and cpu_kernel.capability() is None
    assert [name for name, _ in steps.calls] == ["choose", "load"]  # tried once


# -- the gates ----------------------------------------------------------------------------------------------------

@needs_kernel
def test_the_switches_set_their_own_flag_and_restore_it() -> None:
    assert not cpu_kernel._switch.off and not cpu_kernel._switch.forced
    with cpu_kernel.disabled():
        assert cpu_kernel._switch.off and not cpu_kernel._switch.forced
        with cpu_kernel.forced():
            assert cpu_kernel._switch.off and cpu_kernel._switch.forced
        assert not cpu_kernel._switch.forced
    assert not cpu_kernel._switch.off


def test_a_functorch_transform_is_seen_only_inside_it() -> None:
    assert cpu_kernel._in_functorch_transform() is False
    seen = []
    torch.func.vmap(lambda t: seen.append(cpu_kernel._in_functorch_transform()) or t)(torch.zeros(2, 1))
    assert seen == [True]


@needs_kernel
def test_can_run_refuses_each_case_on_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.zeros(3, 2, 4)
    assert cpu_kernel.can_run(x, "LSTM") and cpu_kernel.can_run(x, "GRU") and cpu_kernel.can_run(x.double(), "GRU")
    assert cpu_kernel.can_run(x, "GRU_RESET_BEFORE")
    assert not cpu_kernel.can_run(x, "RNN_TANH")
    assert not cpu_kernel.can_run(torch.zeros(3, 2, 4, device="meta"), "LSTM")
    for dtype in (torch.bfloat16, torch.float16):
        assert not cpu_kernel.can_run(x.to(dtype), "LSTM")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not cpu_kernel.can_run(x, "LSTM")
    with cpu_kernel.disabled():
        assert not cpu_kernel.can_run(x, "LSTM")
    monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)
    assert not cpu_kernel.can_run(x, "LSTM")
    monkeypatch.undo()
    monkeypatch.setattr(cpu_kernel, "exporting", lambda: True)
    assert not cpu_kernel.can_run(x, "LSTM")
    monkeypatch.undo()
    assert cpu_kernel.can_run(x, "LSTM")


@needs_kernel
def test_under_compile_can_run_asks_only_the_traced_availability(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([False, True])
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(cpu_kernel, "_available_while_tracing", lambda: next(answers))
    monkeypatch.setattr(cpu_kernel, "_in_functorch_transform", lambda: True)  # not asked under compile
    x = torch.zeros(3, 2, 4)
    with cpu_kernel.disabled():  # neither is the switch: a compiled graph keeps the kernel as one op
        assert cpu_kernel.can_run(x, "LSTM") is False
        assert cpu_kernel.can_run(x, "LSTM") is True


@needs_kernel
def test_inside_a_transform_can_run_says_no(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_kernel, "_in_functorch_transform", lambda: True)
    assert not cpu_kernel.can_run(torch.zeros(3, 2, 4), "LSTM")


class Asked:
    """A stand-in for ``kernel_chosen`` recording each question, answering ``answer``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answer: bool = False) -> None:
        self.questions: List[Tuple[Any, ...]] = []
        self.answer = answer
        monkeypatch.setattr(cpu_kernel, "kernel_chosen", self)

    def __call__(self, *args: Any) -> bool:
        self.questions.append(args)
        return self.answer


@needs_kernel
def test_applies_asks_the_policy_about_the_calls_own_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = Asked(monkeypatch)
    assert cpu_kernel.applies(torch.zeros(7, 3, 4), "GRU", 1, True, True) is False
    assert cpu_kernel.applies(torch.zeros(6, 4), "LSTM", 5) is False  # unbatched: batch 1
    asked.answer = True
    assert cpu_kernel.applies(torch.zeros(2, 9, 4), "LSTM", 8, False, False) is True
    assert asked.questions == [("GRU", 3, 1, 7, True, True), ("LSTM", 1, 5, 6, False, False),
                               ("LSTM", 9, 8, 2, False, False)]


@needs_kernel
def test_applies_asks_nothing_for_no_hidden_size_forced_or_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = Asked(monkeypatch)
    x = torch.zeros(7, 3, 4)
    assert cpu_kernel.applies(x, "LSTM") is True
    assert cpu_kernel.applies(x, "LSTM", 0) is True
    assert cpu_kernel.applies(x.double(), "LSTM", 16) is True
    with cpu_kernel.forced():
        assert cpu_kernel.applies(x, "LSTM", 16) is True
    assert asked.questions == []
    with cpu_kernel.disabled():
        assert cpu_kernel.applies(x, "LSTM") is False
        assert cpu_kernel.applies(x.double(), "LSTM", 16) is False
    assert not cpu_kernel.applies(x, "RNN_TANH")


class Calibration:
    def __init__(self, answer: Optional[bool]) -> None:
        self.answer, self.asked = answer, []

    def kernel_wins(self, *args: Any) -> Optional[bool]:
        self.asked.append(args)
        return self.answer


def test_kernel_chosen_asks_a_calibration_first_then_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    table: List[Tuple[Any, ...]] = []
    active: List[Tuple[Any, ...]] = []
    monkeypatch.setattr(cpu_kernel, "kernel_wins", lambda *args: table.append(args) or "table")
    monkeypatch.setattr(cpu_kernel, "_capability", "avx512")
    measured = Calibration(True)
    monkeypatch.setattr(calibrate, "active", lambda t, c: active.append((t, c)) or (measured, t + 10, c + "!"))
    assert cpu_kernel.kernel_chosen("GRU", 3, 8, 5, False, False, threads=2) is True
    assert measured.asked == [("GRU", 3, 8, False, False)] and table == [] and active == [(2, "avx512")]
    # with lengths the calibration is not asked (calibrate.LENGTHS): the table
    assert cpu_kernel.kernel_chosen("GRU", 3, 8, 5, True, False, threads=2) == "table"
    assert len(measured.asked) == 1 and table.pop() == ("GRU", 3, 8, 5, True, 12, "avx512!", False)
    measured.answer = None  # a cell the calibration has no rows for: the table, with the calibration's settings
    assert cpu_kernel.kernel_chosen("LSTM", 4, 16, 9, False, True, threads=1) == "table"
    assert table == [("LSTM", 4, 16, 9, False, 11, "avx512!", True)]
    measured.answer = True  # a mode outside calibrate.CELLS is never looked up
    assert cpu_kernel.kernel_chosen("GRU_RESET_BEFORE", 4, 16, 9, False, True, threads=3) == "table"
    assert measured.asked[-1] == ("LSTM", 4, 16, False, True)
    monkeypatch.setattr(calibrate, "active", lambda t, c: active.append((t, c)) or (None, t, c))
    monkeypatch.setattr(cpu_kernel, "_capability", None)
    monkeypatch.setattr(cpu_kernel, "_thread_count", lambda: 7)
    assert cpu_kernel.kernel_chosen("GRU", 2, 4, 3, True, True) == "table"
    assert active[-1] == (7, "avx2") and table[-1] == ("GRU", 2, 4, 3, True, 7, "avx2", True)


def test_threads_is_torchs_count_at_least_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for count, expected in ((1, 1), (3, 3), (0, 1)):
        monkeypatch.setattr(torch, "get_num_threads", lambda count=count: count)
        assert cpu_kernel._threads() == expected


@needs_kernel
def test_traits_are_the_loaded_librarys() -> None:
    assert cpu_kernel.traits(0) == abi.CellTraits(4, True, False, False, False, True)
    assert cpu_kernel.traits(1).apart_hh and not cpu_kernel.traits(2).apart_hh


# -- _check_layer: every refusal, word for word ----------------------------------------------------------------

def layer(cell: int = 0, dtype: torch.dtype = torch.float32, steps: int = 4, batch: int = 2) -> List[Any]:
    """``x, w_ih, b_ih, w_hh, b_hh, h0, c0, lengths, cell`` of a valid call (F = 5, H = 3)."""
    gates = (4 if cell == 0 else 3) * 3
    make = lambda *shape: torch.zeros(*shape, dtype=dtype)  # noqa: E731
    return [make(steps, batch, 5), make(2, gates, 5), make(2, gates), make(2, gates, 3),
            make(2, gates) if cell == 1 else None, make(2, batch, 3), make(2, batch, 3), None, cell]


def refused(error: type, message: str, *changes: Tuple[int, Any], cell: int = 0) -> None:
    args = layer(cell)
    for position, value in changes:
        args[position] = value
    with pytest.raises(error, match="^" + re.escape(message) + "$"):
        cpu_kernel._check_layer(*args)


@needs_kernel
def test_a_valid_call_passes_the_checks() -> None:
    for cell in (0, 1, 2):
        cpu_kernel._check_layer(*layer(cell))
        args = layer(cell, torch.float64)
        args[7] = torch.tensor([4, 0])  # a row of length 0 and one of the whole length
        cpu_kernel._check_layer(*args)
    args = layer(1)
    args[6] = torch.zeros(1)  # a GRU's c0 is never read, so never checked
    cpu_kernel._check_layer(*args)
    empty = layer(0, batch=0)
    empty[7] = torch.zeros(0, dtype=torch.int64)  # an empty batch has no lengths to bound
    cpu_kernel._check_layer(*empty)


@needs_kernel
def test_the_cell_the_rank_and_the_dtype_of_x_are_refused_naming_them() -> None:
    refused(ValueError, "cell must be 0 (LSTM), 1 (GRU) or 2 (GRU, reset gate before the product), got 3", (8, 3))
    refused(ValueError, "x must be (T, B, F), got shape [4, 5]", (0, torch.zeros(4, 5)))
    refused(TypeError, "x must be float32 or float64, got torch.float16", (0, torch.zeros(4, 2, 5).half()))


@needs_kernel
def test_w_hh_must_be_two_directions_of_three_dimensions() -> None:
    refused(ValueError, "w_hh must be (2, G, H), got shape [12, 3]", (3, torch.zeros(12, 3)))
    refused(ValueError, "w_hh must be (2, G, H), got shape [1, 12, 3]", (3, torch.zeros(1, 12, 3)))
    refused(ValueError, "w_hh must be (2, G, H), got shape [3, 12, 3]", (3, torch.zeros(3, 12, 3)))


@needs_kernel
@pytest.mark.parametrize("position,name,shape,want,cell", [
    (1, "w_ih", [2, 12, 4], [2, 12, 5], 0), (1, "w_ih", [2, 11, 5], [2, 12, 5], 0),
    (3, "w_hh", [2, 9, 3], [2, 12, 3], 0),  # (its last size is H: it sets what the others must be)
    (5, "h0", [2, 3, 3], [2, 2, 3], 0), (5, "h0", [2, 2, 3, 1], [2, 2, 3], 1),
    (6, "c0", [2, 2, 4], [2, 2, 3], 0), (2, "b_ih", [2, 11], [2, 12], 0), (2, "b_ih", [2, 12], [2, 9], 1),
    (4, "b_hh", [2, 10], [2, 9], 1),
])
def test_each_shape_is_refused_naming_the_tensor_and_both_shapes(position: int, name: str, shape: List[int],
                                                                  want: List[int], cell: int) -> None:
    refused(ValueError, f"{name} must have shape {want} for x of shape [4, 2, 5], got {shape}",
            (position, torch.zeros(*shape)), cell=cell)


@needs_kernel
@pytest.mark.parametrize("position,name", [(1, "w_ih"), (3, "w_hh"), (5, "h0"), (6, "c0"), (2, "b_ih")])
def test_another_dtype_or_device_is_refused_naming_both(position: int, name: str) -> None:
    shape = list(layer()[position].shape)
    end = "; the kernel needs one dtype and the CPU for all of them"
    refused(TypeError, f"{name} is torch.float64 on cpu but x is torch.float32 on cpu{end}",
            (position, torch.zeros(*shape, dtype=torch.float64)))
    refused(TypeError, f"{name} is torch.float32 on meta but x is torch.float32 on cpu{end}",
            (position, torch.zeros(*shape, device="meta")))


@needs_kernel
def test_b_hh_of_a_gru_is_checked_too() -> None:
    refused(TypeError, "b_hh is torch.float64 on cpu but x is torch.float32 on cpu; the kernel needs one dtype and "
            "the CPU for all of them", (4, torch.zeros(2, 9, dtype=torch.float64)), cell=1)


@needs_kernel
@pytest.mark.parametrize("lengths,described", [
    (torch.tensor([4, 2], dtype=torch.int32), "torch.int32 on cpu of shape [2]"),
    (torch.tensor([4, 2], device="meta"), "torch.int64 on meta of shape [2]"),
    (torch.tensor([4, 2, 1]), "torch.int64 on cpu of shape [3]"),
    (torch.tensor([[4, 2]]), "torch.int64 on cpu of shape [1, 2]"),
])
def test_lengths_of_another_kind_are_refused_describing_them(lengths: Tensor, described: str) -> None:
    refused(TypeError, f"lengths must be a CPU int64 tensor of shape [2], got {described}", (7, lengths))


@needs_kernel
@pytest.mark.parametrize("values,low,high", [([-1, 3], -1, 3), ([5, 2], 2, 5), ([0, -2], -2, 0)])
def test_lengths_outside_the_steps_are_refused_with_their_range(values: List[int], low: int, high: int) -> None:
    refused(ValueError, f"lengths must lie in [0, 4], got values from {low} to {high}", (7, torch.tensor(values)))


# -- autograd context and fused_layer ------------------------------------------------------------------------------

class Context:
    """A stand-in for autograd's ``ctx``."""

    def save_for_backward(self, *tensors: Any) -> None:
        self.saved = tensors

    def set_materialize_grads(self, value: bool) -> None:
        self.materialize = value


def test_save_for_backward_keeps_what_the_reverse_loop_reads() -> None:
    t = [torch.full((1,), float(i)) for i in range(16)]
    ctx = Context()
    inputs = (t[0], t[1], t[2], t[3], None, t[5], t[6], t[7], 1, True)
    cpu_kernel._save_for_backward(ctx, inputs, (t[8], t[9], t[10], t[11], t[12], t[13], t[14]))
    assert (ctx.cell, ctx.has_b_ih, ctx.has_b_hh) == (1, True, False)
    assert ctx.saved == (t[0], t[1], t[3], t[5], t[6], t[7], t[11], t[12], t[13], t[14], t[2], None)
    assert ctx.materialize is False  # no zero-filled gradients for the stash (test_cpu_kernel_unused_outputs.py)
    ctx = Context()
    cpu_kernel._save_for_backward(ctx, (t[0], t[1], None, t[3], t[4], t[5], t[6], None, 0, True), tuple(t[8:15]))
    assert (ctx.cell, ctx.has_b_ih, ctx.has_b_hh) == (0, False, True)
    with pytest.raises(RuntimeError, match=r"^birnn_zoo::bidirectional_layer ran with stash=False but a gradient is "
                                           r"needed$"):
        cpu_kernel._save_for_backward(Context(), inputs[:-1] + (False,), tuple(t[8:15]))


def flat_module(mode: str, bias: bool = True) -> nn.RNNBase:
    torch.manual_seed(2)
    return getattr(nn, mode)(3, 4, bidirectional=True, bias=bias).double()


def reference(module: nn.RNNBase, x: Tensor, h0: Tensor, c0: Tensor, lengths: Optional[Tensor]
              ) -> Tuple[Tensor, Tensor, Tensor]:
    hx = (h0, c0) if isinstance(module, nn.LSTM) else h0
    source = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, state = module(source, hx)
    if lengths is not None:
        out = pad_packed_sequence(out, total_length=x.shape[0])[0]
    h_n, c_n = state if isinstance(module, nn.LSTM) else (state, state)
    return out.view(x.shape[0], x.shape[1], 2, -1), h_n, c_n


@needs_kernel
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_lengths_are_read_as_cpu_int64_whatever_their_dtype_and_strides(mode: str) -> None:
    module = flat_module(mode)
    x, h0, c0 = torch.randn(5, 3, 3, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64), \
        torch.randn(2, 3, 4, dtype=torch.float64)
    lengths = torch.tensor([[2, 9], [5, 9], [3, 9]])[:, 0]  # a strided view: every other int64
    assert not lengths.is_contiguous()
    want = reference(module, x, h0, c0, lengths)
    for given in (lengths, lengths.to(torch.int32)):
        got = cpu_kernel.fused_layer(mode, x, h0, c0, given, list(module._flat_weights), True)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
        if mode == "GRU":
            assert got[2] is got[1]  # c_n is h_n for a GRU


@needs_kernel
def test_the_op_stashes_only_when_a_gradient_can_be_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    stashes: List[bool] = []
    real = cpu_kernel._layer
    monkeypatch.setattr(cpu_kernel, "_layer", lambda *args: stashes.append(args[-1]) or real(*args))
    module = flat_module("LSTM")
    weights = [w.detach() for w in module._flat_weights]
    x, h0, c0 = torch.randn(4, 2, 3, dtype=torch.float64), torch.zeros(2, 2, 4, dtype=torch.float64), \
        torch.zeros(2, 2, 4, dtype=torch.float64)
    cpu_kernel.fused_layer("LSTM", x, h0, c0, None, weights, True)             # nothing requires a gradient
    with torch.no_grad():
        cpu_kernel.fused_layer("LSTM", x, h0, c0, None, list(module._flat_weights), True)
    for i, needs in enumerate([x, h0, c0]):
        given = [x, h0, c0]
        given[i] = needs.clone().requires_grad_()
        out, h_n, c_n = cpu_kernel.fused_layer("LSTM", *given, None, weights, True)
        (out.sum() + h_n.sum() + c_n.sum()).backward()  # a gradient for one input alone works
        assert given[i].grad is not None
    cpu_kernel.fused_layer("LSTM", x, h0, c0, None, weights[:3] + [weights[3].requires_grad_()] + weights[4:], True)
    assert stashes == [False, False, True, True, True, True]


@needs_kernel
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_first_order_gradients_of_some_inputs_only_equal_torchs(mode: str) -> None:
    """Only ``x`` and ``h0`` need a gradient (the weights are frozen), without biases: the kernel's reverse loop
    returns those two and nothing for the others."""
    module = flat_module(mode, bias=False)
    weights = [w.detach() for w in module._flat_weights]
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 2, 4, dtype=torch.float64)
    lengths = torch.tensor([3, 5])
    out, h_n, c_n = cpu_kernel.fused_layer(mode, x, h0, c0, lengths, weights, False)
    got = torch.autograd.grad((out.tanh().sum() + h_n.sum() * 2 + c_n.sum() * 3), (x, h0))
    for p in module.parameters():
        p.requires_grad_(False)
    out, h_n, c_n = reference(module, x, h0, c0, lengths)
    want = torch.autograd.grad((out.tanh().sum() + h_n.sum() * 2 + c_n.sum() * 3), (x, h0))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@needs_kernel
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_a_graph_of_the_backward_equals_torchs_second_derivatives(mode: str) -> None:
    """``create_graph=True`` takes ``_gradients``' recomputation: with ``lengths``, seeds on every output (``c_n``
    of the LSTM too), the second derivatives of every input equal those through ``nn.LSTM``/``nn.GRU``."""
    module = flat_module(mode)
    torch.manual_seed(4)
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([2, 5, 3])
    weights = list(module._flat_weights)
    inputs = [x, h0] + ([c0] if mode == "LSTM" else []) + weights

    def second(run: Any) -> List[Tensor]:
        out, h_n, c_n = run()
        loss = out.sin().sum() + (h_n * h_n).sum() + (c_n.pow(3).sum() if mode == "LSTM" else 0)
        first = torch.autograd.grad(loss, inputs, create_graph=True)
        return list(torch.autograd.grad(sum((g * g).sum() for g in first), inputs))

    got = second(lambda: cpu_kernel.fused_layer(mode, x, h0, c0, lengths, weights, True))
    want = second(lambda: reference(module, x, h0, c0, lengths))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


@needs_kernel
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_first_order_gradients_of_every_input_biases_included_equal_torchs(mode: str) -> None:
    """Every input needs a gradient, the biases too (the LSTM's folded into one, the GRU's two apart); a GRU's ``c0``
    (never read) gets none, not an empty one."""
    module = flat_module(mode)
    weights = list(module._flat_weights)
    torch.manual_seed(6)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([3, 5])

    def grads(run: Any) -> List[Optional[Tensor]]:
        out, h_n, c_n = run()
        loss = out.tanh().sum() + (h_n * 2).sum() + (c_n * 3).sum()
        return list(torch.autograd.grad(loss, [x, h0, c0] + weights, allow_unused=True))

    got = grads(lambda: cpu_kernel.fused_layer(mode, x, h0, c0, lengths, weights, True))
    want = grads(lambda: reference(module, x, h0, c0, lengths))
    assert (got[2] is None) == (mode == "GRU")
    for a, b in zip(got, want, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


class LengthsOnAnotherDevice:
    """Stands for ``lengths`` on another device (a GPU): records what ``.to`` is asked, answers the host copy."""

    def __init__(self, values: Tensor) -> None:
        self.values, self.asked = values, []

    def to(self, *args: Any, **kwargs: Any) -> Tensor:
        self.asked.append((args, kwargs))
        device = kwargs.get("device", args[0] if args else None)
        return self.values.to(torch.int64) if device in ("cpu", torch.device("cpu")) else self.values.to("meta")


@needs_kernel
def test_lengths_are_copied_to_the_host_before_the_kernel_reads_them() -> None:
    module = flat_module("GRU")
    x, h0 = torch.randn(4, 2, 3, dtype=torch.float64), torch.zeros(2, 2, 4, dtype=torch.float64)
    lengths = LengthsOnAnotherDevice(torch.tensor([4, 2], dtype=torch.int32))
    out, h_n, _ = cpu_kernel.fused_layer("GRU", x, h0, h0, lengths, list(module._flat_weights), True)  # type: ignore
    assert lengths.asked == [((), {"device": "cpu", "dtype": torch.int64})]
    want = reference(module, x, h0, h0, torch.tensor([4, 2]))
    torch.testing.assert_close(out, want[0], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(h_n, want[1], atol=1e-12, rtol=1e-12)


def test_a_failed_load_warns_at_the_line_that_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """``available`` warns with ``stacklevel=2``: at its caller (here, this test)."""
    if "mutants" in cpu_kernel.__file__.split("/"):
        pytest.skip("under mutmut each function is wrapped in a trampoline: more frames")
    import inspect
    Steps(monkeypatch, error=OSError("no lib"))
    with pytest.warns(RuntimeWarning) as caught:
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        cpu_kernel.available()
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, line)]
