"""Function-level tests of models/blocks/cpu_kernel/inference.py's serving fast path written for mutation testing
(issue 37): which shape it asks the policy about (a wrong question changes only which path runs, so the tests look
at the path taken), and its zero initial state when the batch size changes, in float64 too. Round 2: the rest of the
survivors (the gates ``usable`` and ``fast_forward``'s refusals, the kernel's ``Args``, the prepared plan,
``run_layers``' errors and recursion); docs/contributing.md's row lists the 14 left as equivalent."""

from typing import Any, List, Tuple

import pytest
import torch
from helpers.kernel_aids import StackSpy, needs_serving_call
from torch import Tensor, nn

from models import BiGRU, BiLSTM
from models.blocks import cpu_kernel
from models.blocks.cpu_kernel import calibrate, inference
from models.blocks.cpu_kernel.policy import SPLIT_MIN_MFLOP

needs_kernel = needs_serving_call  # most tests here warm a block up to its serving call


def warmed(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A one-layer BiLSTM (F = 6, H = 9) in eval mode with its plan cached (prepared on the kernel, forced)."""
    torch.manual_seed(0)
    block = BiLSTM(6, 9, 1, dtype=dtype).eval()
    with torch.no_grad(), cpu_kernel.forced():
        block(torch.zeros(2, 1, 6, dtype=dtype))
    assert inference._plans[block].fast is not None
    return block


@needs_kernel
def test_the_fast_path_asks_the_policy_about_the_calls_own_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    block = warmed()
    asked: List[Tuple[Any, ...]] = []
    answer = [True]

    def policy(*args: Any) -> bool:
        asked.append(args)
        return answer[0]
    monkeypatch.setattr(cpu_kernel, "kernel_chosen", policy)
    x = torch.randn(5, 3, 6)
    lengths = torch.tensor([5, 1, 3])  # a row of one step is valid input for the fast path
    with torch.no_grad():
        assert inference.fast_forward(block, x, lengths) is not None
        assert asked == [("LSTM", 3, 9, 5, True, False, torch.get_num_threads())]
        assert inference.fast_forward(block, x, None) is not None
        assert asked[-1] == ("LSTM", 3, 9, 5, False, False, torch.get_num_threads())
        assert inference.fast_forward(block, x, None) is not None and len(asked) == 2  # remembered
        assert inference.fast_forward(block, x[:4], None) is not None
        assert asked[-1] == ("LSTM", 3, 9, 4, False, False, torch.get_num_threads())
        # The policy sends this shape to PyTorch, as a new calibration or pinned record would (each of which tells
        # the fast path to ask again, as forget() does): the general path runs it.
        answer[0] = False
        calibrate.forget()
        assert inference.fast_forward(block, x, lengths) is None
        assert inference.fast_forward(block, x, None) is None
        asked.clear()
        with cpu_kernel.forced():  # forced onto the kernel: the policy is not asked
            assert inference.fast_forward(block, x, None) is not None
        assert asked == []


@needs_kernel
def test_the_remembered_answers_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server sees many (B, T) pairs: at most _CHOSEN_MAX answers are kept, then all are asked again."""
    block = warmed()
    asked: List[int] = []
    monkeypatch.setattr(cpu_kernel, "kernel_chosen", lambda *args: asked.append(args[3]) or True)
    monkeypatch.setattr(inference, "_CHOSEN_MAX", 2)
    x = torch.randn(5, 1, 6)
    with torch.no_grad():
        for steps in (1, 2, 3, 1):
            assert inference.fast_forward(block, x[:steps], None) is not None
    assert asked == [1, 2, 3, 1]  # the third question emptied what was kept, so T = 1 was asked again
    assert len(inference._plans[block].fast.chosen) <= 2


@needs_kernel
def test_float64_is_never_weighed_by_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    block = warmed(torch.float64)
    monkeypatch.setattr(cpu_kernel, "kernel_chosen", lambda *args: False)
    with torch.no_grad():
        assert inference.fast_forward(block, torch.randn(5, 3, 6, dtype=torch.float64), None) is not None


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_new_batch_size_gets_a_zero_state_of_the_weights_dtype(dtype: torch.dtype) -> None:
    block = warmed(dtype)
    with torch.no_grad(), cpu_kernel.forced():
        for batch in (3, 9, 2):
            x = torch.randn(4, batch, 6, dtype=dtype)
            fast = inference.fast_forward(block, x, None)
            assert fast is not None
            out, h_n, c_n = block.run(x, None, None, None)
            assert torch.equal(fast[0], out) and torch.equal(fast[1], h_n) and torch.equal(fast[2], c_n)


# --- Round 2 (issue 37): the rest of inference.py's survivors. Most change only which correct path runs or what
# the kernel is handed, so these tests record the kernel's ``Args`` (a proxy around the C library) or call the
# gates directly, and compare outputs bit for bit with the block's general path where the result can differ.


class _Recorder:
    """What each all-layers call handed the C code: ``calls`` lists ``(entry name, Args copy)``."""

    def __init__(self) -> None:
        self.calls: List[Tuple[str, Any]] = []

    def record(self, name: str, args: Any) -> None:
        self.calls.append((name, args))


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> _Recorder:
    seen = _Recorder()
    library = StackSpy(cpu_kernel._kernel(), seen.record)
    monkeypatch.setattr(cpu_kernel, "_kernel", lambda: library)
    return seen


def warmed_block(block: torch.nn.Module, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """``block`` in eval mode with its plan cached by one forced call."""
    block = block.eval()
    with torch.no_grad(), cpu_kernel.forced():
        block(torch.zeros(2, 1, block.input_size, dtype=dtype))
    assert inference._plans[block].fast is not None
    return block


def general(block: torch.nn.Module, x: Tensor, lengths: Any = None) -> Tuple[Tensor, Tensor, Tensor]:
    """The block's ``run`` (``run_layers``, not the serving fast path), forced onto the kernel."""
    with torch.no_grad(), cpu_kernel.forced():
        return block.run(x, None, None, lengths)


def same(a: Tuple[Tensor, ...], b: Tuple[Tensor, ...]) -> None:
    for left, right in zip(a, b, strict=True):
        assert left.shape == right.shape and left.dtype == right.dtype
        assert torch.equal(left, right)


# ---- usable: each refusal on its own (a wrong answer only sends the call down the other, equal path).


class _FunctionMode(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return func(*args, **(kwargs or {}))


class _DispatchMode(torch.utils._python_dispatch.TorchDispatchMode):
    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return func(*args, **(kwargs or {}))


class _Sub(Tensor):
    pass


@needs_kernel
def test_usable_refuses_each_condition_on_its_own() -> None:
    x = torch.zeros(2, 1, 3)
    weights = [torch.zeros(4, 3), nn.Parameter(torch.zeros(4))]  # plain tensors and parameters: both taken
    with torch.no_grad():
        assert inference.usable(x, weights)
        assert inference.usable(x.requires_grad_(), weights)  # needs no gradient under no_grad
        with _FunctionMode():
            assert not inference.usable(torch.zeros(2, 1, 3), weights)
        with _DispatchMode():
            assert not inference.usable(torch.zeros(2, 1, 3), weights)
        assert not inference.usable(torch.zeros(2, 1, 3).as_subclass(_Sub), weights)
        assert not inference.usable(torch.zeros(2, 1, 3), [weights[0].as_subclass(_Sub)])
    assert inference.usable(torch.zeros(2, 1, 3), [torch.zeros(4, 3)])  # grad on, nothing requires it
    assert not inference.usable(torch.zeros(2, 1, 3, requires_grad=True), [torch.zeros(4, 3)])
    assert not inference.usable(torch.zeros(2, 1, 3), [nn.Parameter(torch.zeros(4, 3))])


# ---- the plan: what it packs, the addresses it hands the kernel, when it is reused.


@needs_kernel
def test_the_plan_packs_float32_only_in_float32_and_hands_the_packed_addresses() -> None:
    library = cpu_kernel._kernel()
    vector = int(library.birnn_packed_hh_floats(0, 9)) > 0  # a vector build packs; else BLAS and per-call packing
    for dtype in (torch.float32, torch.float64):
        block = warmed(dtype)
        plan = inference._plans[block]
        assert len(plan.addresses_array) == 6  # six a layer, as birnn_forward_stack_* reads them
        layer = plan.layers[0]
        if dtype == torch.float32 and vector:
            assert layer.packed_ih is not None and layer.packed_hh is not None
            assert layer.packed_ih.dtype == torch.float32 and layer.packed_hh.dtype == torch.float32
            assert list(plan.addresses_array)[1] == layer.packed_ih.data_ptr()
            assert list(plan.addresses_array)[4] == layer.packed_hh.data_ptr()
        else:
            assert layer.packed_ih is None and layer.packed_hh is None
            assert list(plan.addresses_array)[1] == 0 and list(plan.addresses_array)[4] == 0


@needs_kernel
def test_packed_weights_are_float32_whatever_the_default_dtype() -> None:
    if int(cpu_kernel._kernel().birnn_packed_hh_floats(0, 9)) == 0:
        pytest.skip("no packing in this build")
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        block = warmed()
    finally:
        torch.set_default_dtype(saved)
    layer = inference._plans[block].layers[0]
    assert layer.packed_ih.dtype == torch.float32 and layer.packed_hh.dtype == torch.float32


@needs_kernel
def test_a_build_without_packing_keeps_no_packed_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    library = StackSpy(cpu_kernel._kernel(), lambda name, args: None)
    monkeypatch.setattr(cpu_kernel, "_kernel", lambda: library)
    for ih, hh in ((0, 1000), (1000, 0)):
        monkeypatch.setattr(library, "birnn_packed_ih_floats", lambda *a, n=ih: n, raising=False)
        monkeypatch.setattr(library, "birnn_packed_hh_floats", lambda *a, n=hh: n, raising=False)
        layer = inference._LayerWeights(cpu_kernel._CELLS["LSTM"], list(BiLSTM(6, 9, 1)._flat_weights), True)
        assert layer.packed_ih is None and layer.packed_hh is None


@needs_kernel
def test_plan_matches_only_its_cell_and_versioned_weights() -> None:
    block = warmed()
    plan = inference._plans[block]
    weights = list(block._flat_weights)
    assert plan.matches(plan.cell, weights)
    assert not plan.matches(cpu_kernel._CELLS["GRU"], weights)  # same weights, another cell
    assert not plan.matches(plan.cell, weights[:-1])
    with torch.inference_mode():
        frozen = [w.clone() for w in weights]
    stateless = inference._Plan(plan.cell, frozen, True, 1)  # inference tensors: no version counter
    assert stateless.state is None and not stateless.matches(plan.cell, frozen)


# ---- run_layers: its errors, the path it takes (recursion on trailing padding), what it hands the kernel.


def call(block: torch.nn.Module, x: Tensor, lengths: Any = None, h0: Any = None, c0: Any = None,
         merge_modes: Any = None) -> Tuple[Tensor, Tensor, Tensor]:
    """``run_layers`` on time-major ``x`` with zero states unless given."""
    layers = 2 * block.num_layers
    batch = x.shape[1]
    h0 = torch.zeros(layers, batch, block.hidden_size, dtype=x.dtype) if h0 is None else h0
    c0 = torch.zeros(layers, batch, block.hidden_size, dtype=x.dtype) if c0 is None else c0
    with torch.no_grad():
        return inference.run_layers(block, block._kernel_cell(), x, lengths, h0, c0, list(block._flat_weights),
                                    block.bias, list(merge_modes or block.merge_modes), block.hidden_size)


@needs_kernel
def test_run_layers_errors_name_value_and_expectation() -> None:
    block = BiLSTM(6, 9, 1).eval()
    x = torch.zeros(3, 2, 6)
    with pytest.raises(TypeError, match=r"^input is torch.float64 but the weights are torch.float32$"):
        call(block, x.double())
    shape = r"of shape \[2, 2, 9\], got torch.float"
    with pytest.raises(ValueError, match=r"^h0 must be torch.float32 " + shape + r"32 \[2, 9\]$"):
        call(block, x, h0=torch.zeros(2, 9))
    with pytest.raises(ValueError, match=r"^h0 must be torch.float32 of shape \[2, 2, 9\], got torch.float64 "):
        call(block, x, h0=torch.zeros(2, 2, 9, dtype=torch.float64))  # right shape, wrong dtype
    with pytest.raises(ValueError, match=r"^c0 must be torch.float32 " + shape + r"32 \[2, 9\]$"):
        call(block, x, c0=torch.zeros(2, 9))
    with pytest.raises(ValueError, match=r"^c0 must be torch.float32 of shape \[2, 2, 9\], got torch.float64 "):
        call(block, x, c0=torch.zeros(2, 2, 9, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^lengths must have shape \[2\], got \[3\]$"):
        call(block, x, lengths=torch.tensor([3, 3, 3]))
    with pytest.raises(ValueError, match=r"^layer 0 takes 6 features, got 5$"):
        call(block, torch.zeros(3, 2, 5))
    deep = BiLSTM(6, 9, 2, merge_mode="concat").eval()  # layer 1 takes 18 features
    with pytest.raises(ValueError, match=r"^layer 1 takes 18 features but layer 0 gives 9 \(merge_mode 'sum'\)$"):
        call(deep, x, merge_modes=["sum", "concat"])


@needs_kernel
def test_run_layers_recurses_only_on_trailing_padding(monkeypatch: pytest.MonkeyPatch) -> None:
    block = warmed()
    calls: List[int] = []
    original = inference.run_layers

    def counting(module: Any, mode: Any, x: Tensor, *args: Any) -> Any:
        calls.append(x.shape[0])
        return original(module, mode, x, *args)
    monkeypatch.setattr(inference, "run_layers", counting)
    x = torch.randn(4, 2, 6)
    reference = call(block, x[:1])
    calls.clear()
    with torch.no_grad():
        out, h_n, c_n = inference.run_layers(block, block._kernel_cell(), x, torch.tensor([1, 1], dtype=torch.int32),
                                             torch.zeros(2, 2, 9), torch.zeros(2, 2, 9), list(block._flat_weights),
                                             True, list(block.merge_modes), 9)
    assert calls == [4, 1]  # the call, then its recursion on the first step only
    assert torch.equal(out[:1], reference[0]) and torch.equal(out[1:], torch.zeros_like(out[1:]))
    assert torch.equal(h_n, reference[1]) and torch.equal(c_n, reference[2])
    calls.clear()
    with torch.no_grad():
        inference.run_layers(block, block._kernel_cell(), x, torch.tensor([0, 0]), torch.zeros(2, 2, 9),
                             torch.zeros(2, 2, 9), list(block._flat_weights), True, list(block.merge_modes), 9)
    assert calls == [4]  # no valid step at all: one call with lengths, no recursion on zero steps


@needs_kernel
def test_run_layers_without_a_cached_plan_keeps_the_biases_through_the_recursion() -> None:
    torch.manual_seed(1)
    block = BiLSTM(6, 9, 1)  # training mode: no plan cached, each call prepares one
    with torch.no_grad():
        block.bias_ih_l0.add_(1.0)
    x = torch.randn(5, 2, 6)
    lengths = torch.tensor([3, 2])
    out, h_n, c_n = call(block, x, lengths)
    reference = call(block.eval(), x[:3], lengths)
    assert torch.equal(out[:3], reference[0]) and torch.equal(h_n, reference[1]) and torch.equal(c_n, reference[2])


@needs_kernel
def test_run_layers_on_an_empty_batch_with_lengths() -> None:
    block = BiLSTM(6, 9, 1).eval()
    out, h_n, c_n = call(block, torch.zeros(3, 0, 6), torch.zeros(0, dtype=torch.int64))
    assert out.shape == (3, 0, 18) and h_n.shape == (2, 0, 9) and c_n.shape == (2, 0, 9)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_run_layers_hands_the_kernel_the_right_entry_point_threads_and_states(
        recorder: _Recorder, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype) -> None:
    asked: List[Tuple[Any, ...]] = []
    real = inference.inference_threads

    def threads(*args: Any) -> int:
        asked.append(args)
        return real(*args)
    monkeypatch.setattr(inference, "inference_threads", threads)
    torch.manual_seed(2)
    for block in (BiLSTM(6, 9, 2, merge_mode="sum", dtype=dtype).eval(), BiGRU(6, 9, 1, dtype=dtype).eval()):
        x = torch.randn(4, 3, 6, dtype=dtype)
        lengths = torch.tensor([4, 2, 3], dtype=torch.int32)  # int32 is read as int64 by the kernel: converted
        recorder.calls.clear()
        asked.clear()
        out, h_n, c_n = call(block, x, lengths)
        name, args = recorder.calls[-1]
        assert name == ("birnn_forward_stack_f32" if dtype == torch.float32 else "birnn_forward_stack_f64")
        gates = (4 if block.mode == "LSTM" else 3) * 9
        assert asked == [(4, 3, 9, gates, [6] + [9] * (block.num_layers - 1), torch.get_num_threads())]
        assert args.threads == real(*asked[0]) and args.hidden == 9 and args.steps == 4 and args.batch == 3
        if block.mode == "LSTM":
            assert args.c0 and args.c_n
        else:
            assert not args.c0 and not args.c_n and c_n is h_n  # GRU: no cell state handed over
        with torch.no_grad(), cpu_kernel.disabled():
            reference = block.run(x, None, None, lengths.long())
        out_shape = (4, 3, 9) if block.merge_modes[-1] == "sum" else (4, 3, 18)
        assert out.shape == out_shape and h_n.shape == c_n.shape == (2 * block.num_layers, 3, 9)
        torch.testing.assert_close(out.reshape(reference[0].shape), reference[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(h_n, reference[1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c_n, reference[2], atol=1e-5, rtol=1e-5)


# ---- fast_forward: each refusal, the memory it hands the kernel, its thread count at the policy's threshold.


class _Probe(nn.Module):
    def __init__(self, probe: Any) -> None:
        super().__init__()
        self.probe = probe

    def forward(self, t: Tensor) -> Tensor:
        return self.probe(t)


@needs_kernel
@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
def test_fast_forward_refuses_each_condition_on_its_own() -> None:
    block = warmed()
    x = torch.randn(4, 3, 6)
    with torch.no_grad(), cpu_kernel.forced():
        assert inference.fast_forward(block, x, None) is not None
        assert inference.fast_forward(block, torch.randn(4, 6), None) is None  # not (T, B, F)
        assert inference.fast_forward(block, x, torch.tensor([4, 2, 3], dtype=torch.int32)) is None
        assert inference.fast_forward(block, x, torch.tensor([[4], [2], [3]])) is None
        assert inference.fast_forward(block, x, torch.tensor([4, 2, 3]).as_subclass(_Sub)) is None
        with _FunctionMode():
            assert inference.fast_forward(block, x, None) is None
        with _DispatchMode():
            assert inference.fast_forward(block, x, None) is None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert inference.fast_forward(block, x, None) is None
        seen: List[Any] = []

        def probe(t: Tensor) -> Tensor:
            seen.append(inference.fast_forward(block, t, None))
            return t * 1

        torch.jit.trace(probe, (x,), check_trace=False)
        torch.func.vmap(probe, in_dims=1, out_dims=1)(torch.randn(4, 2, 3, 6))  # (T, B, F) per vmapped slice
        torch.export.export(_Probe(probe), (x,), strict=False)  # fake tensors under dispatch modes
        assert seen == [None, None, None]
        assert inference.fast_forward(block, x.to(torch.float64), None) is None
        assert inference.fast_forward(block, x.to_sparse(), None) is None
        assert inference.fast_forward(block, x[:, :, :5], None) is None  # F != input_size
        assert inference.fast_forward(block, x[:0], None) is None
        assert inference.fast_forward(block, x[:, :0], None) is None
        assert inference.fast_forward(block, x, torch.tensor([4, 0, 3])) is None  # a length out of [1, T]
        assert inference.fast_forward(block, x, torch.tensor([5, 2, 3])) is None
        assert inference.fast_forward(block, x, torch.tensor([4, 2])) is None  # not (B,)
        block.merge_modes = ["sum"]  # the plan was made for concat
        try:
            assert inference.fast_forward(block, x, None) is None
        finally:
            block.merge_modes = ["concat"]
        block.requires_grad_(False)
        with torch.enable_grad():
            assert inference.fast_forward(block, x, None) is not None  # grad mode on, but nothing needs one
            assert inference.fast_forward(block, x.clone().requires_grad_(), None) is None
            block.weight_hh_l0.requires_grad_(True)
            assert inference.fast_forward(block, x, None) is None
        block.training = True  # set directly: train() would drop the plan
        try:
            assert inference.fast_forward(block, x, None) is None
        finally:
            block.training = False


@needs_kernel
def test_fast_forward_hands_the_input_in_place_and_lengths_only_when_rows_differ(recorder: _Recorder) -> None:
    block = warmed_block(BiLSTM(6, 9, 1))
    x = torch.randn(4, 3, 6)
    with torch.no_grad(), cpu_kernel.forced():
        assert inference.fast_forward(block, x, torch.tensor([4, 4, 4])) is not None
        args = recorder.calls[-1][1]
        assert args.x == x.data_ptr() and not args.lengths  # contiguous: read in place; equal rows: no lengths
        assert inference.fast_forward(block, x, torch.tensor([4, 2, 4])) is not None
        assert recorder.calls[-1][1].lengths


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_forward_outputs_take_the_weights_dtype_whatever_the_default(dtype: torch.dtype) -> None:
    block = warmed(dtype)
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == torch.float32 else torch.float32)
    try:
        with torch.no_grad(), cpu_kernel.forced():
            fast = inference.fast_forward(block, torch.randn(4, 3, 6, dtype=dtype), None)
    finally:
        torch.set_default_dtype(saved)
    assert fast is not None and {t.dtype for t in fast} == {dtype}


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(4, 1), (4, 2), (4, 3), (4, 9)])
@pytest.mark.parametrize("batch_first", [False, True])
def test_fast_forward_first_calls_equal_the_general_path(dtype: torch.dtype, shape: Tuple[int, int],
                                                         batch_first: bool) -> None:
    torch.manual_seed(3)
    steps, batch = shape
    for block in (BiLSTM(6, 9, 2, merge_mode="sum", batch_first=batch_first, dtype=dtype),
                  BiGRU(6, 9, 1, batch_first=batch_first, dtype=dtype)):
        block = warmed_block(block, dtype)  # the cached zero state is (2L, 1, H): batch 1 and batch H = 9 read it
        x = torch.randn(batch, steps, 6, dtype=dtype) if batch_first else torch.randn(steps, batch, 6, dtype=dtype)
        with torch.no_grad(), cpu_kernel.forced():
            fast = inference.fast_forward(block, x, None)
            assert fast is not None
            same(fast, general(block, x))
            if not batch_first:  # a non-contiguous (T, B, F) view
                strided = torch.randn(batch, steps, 6, dtype=dtype).transpose(0, 1)
                fast = inference.fast_forward(block, strided, None)
                assert fast is not None
                same(fast, general(block, strided))


def _threads_at(recorder: _Recorder, block: torch.nn.Module, steps: int, batch: int) -> int:
    with torch.no_grad(), cpu_kernel.forced():
        assert inference.fast_forward(block, torch.zeros(steps, batch, 5), None) is not None
    return recorder.calls[-1][1].threads


@needs_kernel
def test_fast_forward_splits_threads_at_the_policys_threshold(recorder: _Recorder) -> None:
    block = warmed_block(BiLSTM(5, 10, 1))
    per_row_step = 2 * 2 * 40 * (5 + 10)  # 2400 flop per (step, row): 60 MFLOP at T x B = 25000
    assert SPLIT_MIN_MFLOP * 1e6 == 25000 * per_row_step
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert _threads_at(recorder, block, 100, 250) == 2  # exactly the threshold: split
        assert _threads_at(recorder, block, 100, 240) == 1  # 4% under it: one thread
        assert _threads_at(recorder, block, 100, 250) == inference.inference_threads(100, 250, 10, 40, [5], 2)
    finally:
        torch.set_num_threads(saved)
