"""Which bf16 path a call takes (models/blocks/cpu_kernel/bf16.py): supported() and amx_supported() against what
/proc/cpuinfo reports (not skipped when they are False where the CPU has the instructions, unlike the math tests,
which skip on them), amx_used()'s settings, and bf16.applies' choice between the kernel and oneDNN's bf16 LSTM for
each of onednn_wins' rules (the AMX-CPU rule measured on this Xeon, the rule without AMX measured on Zen 4), with
the CPU's answers replaced where a rule belongs to another CPU."""

import types
from typing import Any, Iterator, List

import pytest
import torch
from helpers.kernel_aids import record_bf16_calls

from models import BiLSTM
from models.blocks import cpu_kernel
from models.blocks.cpu_kernel import bf16, build


def kernel_has_bf16_here() -> bool:
    """What supported() must say: the avx512 build loaded on a CPU whose flags include avx512_bf16."""
    return cpu_kernel.available() and cpu_kernel.capability() == "avx512" and "avx512_bf16" in build._cpu_flags()


def test_supported_says_what_the_cpu_reports() -> None:
    assert bf16.supported() is kernel_has_bf16_here()


def test_amx_supported_says_what_the_cpu_reports() -> None:
    """On a CPU with amx_bf16 and the bf16 kernel, Linux (5.16 and later) grants the tile state: amx_supported() is
    True; without AMX or without the bf16 kernel it is False."""
    if kernel_has_bf16_here() and "amx_bf16" in build._cpu_flags():
        assert bf16.amx_supported() is True and bf16.cpu_has_amx() is True
    else:
        assert bf16.amx_supported() is False


def test_amx_supported_is_false_without_the_library_or_its_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bf16, "library", lambda: None)
    assert bf16.amx_supported() is False
    monkeypatch.setattr(bf16, "library", lambda: types.SimpleNamespace(_bf16_amx=False))
    assert bf16.amx_supported() is False
    monkeypatch.setattr(bf16, "library", lambda: types.SimpleNamespace(_bf16_amx=True))
    assert bf16.amx_supported() is True


@pytest.mark.parametrize(("setting", "used"), [("", True), ("1", True), (" 1 ", True), ("0", False)])
def test_amx_used_settings(setting: str, used: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bf16, "amx_supported", lambda: True)
    monkeypatch.setenv(bf16.AMX_ENV, setting)
    assert bf16.amx_used() is used
    with bf16.without_amx():
        assert bf16.amx_used() is False
        with bf16.without_amx():
            assert bf16.amx_used() is False
        assert bf16.amx_used() is False
    assert bf16.amx_used() is used


def test_amx_used_refuses_other_settings_naming_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bf16, "amx_supported", lambda: True)
    monkeypatch.setenv(bf16.AMX_ENV, "true")
    with pytest.raises(ValueError) as raised:
        bf16.amx_used()
    assert str(raised.value) == ("BIRNN_ZOO_BF16_AMX='true' is not a setting; expected 0 (vdpbf16ps alone) or 1 "
                                 "(AMX where the CPU has it)")


# -- applies: the kernel or oneDNN for the LSTM, per rule ---------------------------------------------------------

@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[List[str]]:
    """The cells of the calls that run on the bf16 kernel (bf16.run replaced by a recorder that still runs it)."""
    if not bf16.supported():
        pytest.skip(f"no bf16 kernel here (CPU kernel capability {cpu_kernel.capability()}, AVX512_BF16 needed)")
    yield record_bf16_calls(monkeypatch)


def lstm_under_autocast(x: torch.Tensor, threads: int, hidden: int = 8) -> None:
    block = BiLSTM(x.shape[-1], hidden, 1).eval()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert block(x)[0].dtype == torch.bfloat16
    finally:
        torch.set_num_threads(before)


def test_without_amx_on_an_amx_cpu_the_lstm_goes_to_onednn_from_16_rows(calls: List[str],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An AMX CPU, the kernel off its tiles: B = 16 on one thread goes to oneDNN (the rule without AMX would keep it),
    B = 15 and an unbatched sequence (one row, however many features) stay on the kernel."""
    monkeypatch.setattr(bf16, "cpu_has_amx", lambda: True)
    with bf16.without_amx():
        lstm_under_autocast(torch.randn(3, 16, 4), threads=1)
        lstm_under_autocast(torch.randn(3, 15, 4), threads=1)
        lstm_under_autocast(torch.randn(3, 20), threads=1)  # unbatched: the block makes it (T, 1, F)
        # applies itself on a 2-D (T, F) sequence, as a direct caller may pass it: one row, not F = 20
        weights = BiLSTM(20, 8, 1).eval()._weights_now()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert bf16.applies(torch.randn(3, 20), "LSTM", weights)
            assert not bf16.applies(torch.randn(3, 16, 20), "LSTM", weights)
    assert calls == ["LSTM", "LSTM"]


def test_without_amx_elsewhere_the_zen4_rule_reads_hidden_and_threads(calls: List[str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """No AMX: at B = 16 oneDNN only with two threads and H >= 512, so the rule reads both."""
    monkeypatch.setattr(bf16, "cpu_has_amx", lambda: False)
    with bf16.without_amx():
        lstm_under_autocast(torch.randn(2, 16, 4), threads=2, hidden=512)  # oneDNN
        lstm_under_autocast(torch.randn(2, 16, 4), threads=2, hidden=8)    # kernel
        lstm_under_autocast(torch.randn(2, 16, 4), threads=1, hidden=512)  # kernel
    assert calls == ["LSTM", "LSTM"]


def test_nothing_applies_without_the_library(calls: List[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bf16, "library", lambda: None)
    with bf16.without_amx():
        lstm_under_autocast(torch.randn(3, 2, 4), threads=1)
    assert calls == []


# -- run's own checks, for a direct caller (the blocks check their arguments before) ------------------------------

def direct_call(mode: str = "LSTM", *, features: int = 5, batch: int = 3, hidden: int = 8, x_features: int = 5,
                h0_shape: Any = None, c0_shape: Any = None, lengths: Any = None) -> Any:
    """bf16.run on a 2-layer concat block in bf16, arguments shaped as the block would pass them unless given."""
    from test_bf16_kernel import block_of

    block = block_of(mode, features, hidden, 2, merge_mode="concat").eval().to(torch.bfloat16)
    x = torch.randn(4, batch, x_features).bfloat16()
    h0 = torch.zeros(h0_shape or (4, batch, hidden), dtype=torch.bfloat16)
    c0 = torch.zeros(c0_shape or (4, batch, hidden), dtype=torch.bfloat16)
    with torch.no_grad():
        return bf16.run(block, block._kernel_cell(), x, lengths, h0, c0, block._weights_now(), True,
                        block.merge_modes, hidden)


def test_run_refuses_without_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bf16, "library", lambda: None)
    with pytest.raises(RuntimeError) as raised:
        direct_call()
    assert str(raised.value) == ("bf16 inference needs the CPU kernel's avx512 build on a CPU with AVX512_BF16; "
                                 "models.blocks.cpu_kernel.bf16.supported() is False here")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"x_features": 4}, "layer 0 takes 5 features, got 4"),
    ({"h0_shape": (2, 3, 8)}, "h0 must have shape [4, 3, 8], got [2, 3, 8]"),
    ({"c0_shape": (4, 3, 7)}, "c0 must have shape [4, 3, 8], got [4, 3, 7]"),
    ({"lengths": torch.tensor([4, 2])}, "lengths must have shape [3], got [2]"),
])
def test_run_refuses_misshapen_arguments_naming_them(kwargs: Any, message: str, calls: List[str]) -> None:
    with pytest.raises(ValueError) as raised:
        direct_call(**kwargs)
    assert str(raised.value) == message


def test_run_takes_int32_lengths_and_any_default_dtype(calls: List[str]) -> None:
    """The C code reads int64 lengths and float32 buffers: run converts and allocates them so, whatever the caller's
    lengths dtype or torch's default dtype."""
    from test_bf16_kernel import block_of

    block = block_of("GRU", 5, 8, 2, merge_mode="concat").eval().to(torch.bfloat16)
    x = torch.randn(4, 3, 5).bfloat16()
    h0 = torch.zeros(4, 3, 8, dtype=torch.bfloat16)

    def call(lengths: torch.Tensor) -> Any:
        with torch.no_grad():
            return bf16.run(block, "GRU", x, lengths, h0, h0, block._weights_now(), True, block.merge_modes, 8)

    want = call(torch.tensor([4, 2, 1]))
    got = call(torch.tensor([4, 2, 1], dtype=torch.int32))
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        bf16.clear(block)  # the weights packed again, under the float64 default
        wide = call(torch.tensor([4, 2, 1]))
    finally:
        torch.set_default_dtype(default)
    for a, b, c in zip(want, got, wide, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert float(want[0][1:, 2].abs().sum()) == 0.0  # row 2 (length 1) is zero past its length


def test_padded_rounds_up_to_whole_16_channel_blocks() -> None:
    assert [bf16.padded(h) for h in (1, 15, 16, 17, 31, 32, 33, 250, 256)] == [16, 16, 16, 32, 32, 32, 48, 256, 256]


def test_a_block_without_biases_is_the_same_math(calls: List[str]) -> None:
    """bias=False: two weights a direction, no bias addresses (0 for the C code)."""
    from helpers.bf16_reference import bf16_reference
    from test_bf16_kernel import assert_same_math, block_of

    for mode in ("LSTM", "GRU"):
        block = block_of(mode, 6, 20, 2, merge_mode="sum", bias=False).eval().to(torch.bfloat16)
        x = torch.randn(5, 17, 6).bfloat16()
        with torch.no_grad(), cpu_kernel.forced():  # forced: off the tiles the LSTM at B = 17 goes to oneDNN
            out = block(x)[0]
        assert_same_math(out, bf16_reference(mode, x, block._weights_now(), False, block.merge_modes)[0])
    assert calls == ["LSTM", "GRU"]


def test_inference_tensor_weights_are_packed_each_call(calls: List[str]) -> None:
    """Weights made under torch.inference_mode() have no version counter to tell a change by: no plan is kept."""
    from test_bf16_kernel import block_of

    with torch.inference_mode():
        block = block_of("GRU", 4, 8, 1).eval().to(torch.bfloat16)
        block(torch.randn(3, 2, 4).bfloat16())
    assert calls == ["GRU"] and block not in bf16._plans


def test_library_is_none_where_the_cpu_lacks_avx512_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    if not bf16.supported():
        pytest.skip("no bf16 kernel here")
    monkeypatch.setattr(cpu_kernel._kernel(), "_bf16_supported", False)
    assert bf16.library() is None and not bf16.supported()


def bf16_weights(requires_grad: bool = False) -> List[torch.Tensor]:
    weights = BiLSTM(4, 8, 1).eval().to(torch.bfloat16)._weights_now()
    return [w.detach().requires_grad_(requires_grad) for w in weights]


def test_applies_refuses_each_guarded_case(calls: List[str]) -> None:
    """Each guard of applies on its own: everything else as in a call that takes the kernel."""
    x = torch.randn(3, 2, 4).bfloat16()
    weights = bf16_weights()
    float_weights = [w.float() for w in weights]
    with torch.no_grad():
        assert bf16.applies(x, "LSTM", weights)                            # the call that takes it
        assert not bf16.applies(x, "LSTM_PROJ", weights)                   # no such cell
        assert not bf16.applies(x.to("meta"), "LSTM", weights)             # not on the CPU
        assert not bf16.applies(x.float(), "LSTM", weights)                # float32 input, bf16 weights
        assert not bf16.applies(x, "LSTM", float_weights)                  # float32 weights, no autocast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert bf16.applies(x.float(), "LSTM", float_weights)
            assert not bf16.applies(x.double(), "LSTM", float_weights)     # float64 input under autocast
            assert not bf16.applies(x.float(), "LSTM", weights)            # bf16 weights under autocast
        with torch.autocast("cpu", dtype=torch.float16):
            assert not bf16.applies(x.float(), "LSTM", float_weights)      # another autocast dtype
        with cpu_kernel.disabled():
            assert not bf16.applies(x, "LSTM", weights)
    with torch.enable_grad():
        assert not bf16.applies(x, "LSTM", bf16_weights(requires_grad=True))  # a gradient to compute


def test_not_taken_while_tracing(calls: List[str]) -> None:
    """A trace records PyTorch's ops (the kernel's ctypes call would not be in it)."""
    block = BiLSTM(4, 8, 1).eval().to(torch.bfloat16)
    x = torch.randn(3, 2, 4).bfloat16()
    with torch.no_grad():
        traced = torch.jit.trace(block, (x,), check_trace=False)
    assert calls == []
    with torch.no_grad():
        assert traced(x)[0].dtype == torch.bfloat16


class _Entry:
    """A stand-in for one ctypes function of the library (argtypes/restype settable, called like it)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


@pytest.mark.parametrize("wrong", ["size", "offset"])
def test_a_library_with_another_args_layout_is_refused(wrong: str) -> None:
    """A library built from another bf16_forward.h than this bf16.py: refused with both layouts named, whichever of
    the size and the last field's offset differs."""
    size, offset = bf16.ctypes.sizeof(bf16.Bf16Args), bf16.Bf16Args.amx_min_batch.offset

    def layout(size_out: Any, offset_out: Any) -> None:
        size_out._obj.value = size + 8 if wrong == "size" else size
        offset_out._obj.value = offset + 4 if wrong == "offset" else offset

    lib = types.SimpleNamespace(birnn_bf16_args_layout=_Entry(layout), birnn_bf16_supported=_Entry(lambda: 1),
                                birnn_bf16_amx_supported=_Entry(lambda: 1), birnn_bf16_forward_stack=_Entry(None))
    with pytest.raises(OSError) as raised:
        bf16._declared(lib)
    got_size, got_offset = (size + 8, offset) if wrong == "size" else (size, offset + 4)
    assert str(raised.value) == (f"the CPU kernel's Bf16Args is {got_size} bytes (last field at {got_offset}) but "
                                 f"bf16.Bf16Args is {size} (at {offset}): csrc/bf16_forward.h and bf16.py disagree")


def test_run_on_an_empty_batch_with_lengths(calls: List[str]) -> None:
    """B = 0 with (empty) lengths: empty results, no reduction over the empty lengths."""
    out, h_n, c_n = direct_call("LSTM", batch=0, lengths=torch.zeros(0, dtype=torch.int64))
    assert list(out.shape) == [4, 0, 16] and list(h_n.shape) == list(c_n.shape) == [4, 0, 8]
