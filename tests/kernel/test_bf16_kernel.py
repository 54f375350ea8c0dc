"""bf16 inference on the CPU kernel (models/blocks/cpu_kernel/bf16.py, csrc/bf16_forward.h): against "the same math
in PyTorch" (tests/helpers/bf16_reference.py: float64 products of the same bf16-rounded weights, inputs and states),
against the float32 blocks within the documented error, taken exactly where documented (bf16 autocast and bf16
modules, every cell; never with gradients), and with the layout the C code reads. Skipped, with the reason, on
CPUs without AVX512_BF16 (or a kernel built for AVX2)."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Optional

import helpers.bf16_reference as bf16_reference_module
import pytest
import torch
from helpers.bf16_reference import bf16_reference
from helpers.kernel_aids import record_bf16_calls
from torch import Tensor, nn

from models import BiGRU, BiLSTM, BiRNN
from models.blocks import cpu_kernel
from models.blocks.cpu_kernel import bf16

ROOT = Path(__file__).resolve().parents[2]
CELLS = ["LSTM", "GRU", "GRU_RESET_BEFORE", "RNN_TANH", "RNN_RELU"]
# The kernel against the reference: the same products and roundings, float32 sums in another order, so a state
# rounded to bf16 may rarely land on the other side of a rounding boundary (one bf16 step, 2^-8..2^-7 relative)
# and carry that on. Over 360 random small stacks (T = 9, B = 5, H = 7..32, 1-2 layers): at most 3.8% of the bf16
# outputs differ from the reference (one rounding left out of the reference: 17% or more), mean error 0 (median)
# to 1.2e-5 (PyTorch's own bf16 paths: 9e-5..2e-3).
MAX_DIFFERING = 0.08
MEAN_TOL = 3e-5
MAX_ULPS, MAX_ABS = 2.0 ** -6, 2.0 ** -10
# Documented error against the float32 blocks (docs/blocks.md, "bf16 inference"), at PyTorch's default init:
# max over every output element, mean of the absolute error.
F32_MAX, F32_MEAN = 3e-2, 3e-3


@pytest.fixture(autouse=True)
def needs_bf16() -> None:
    """Skip without a bf16 kernel; else a fixed seed: the same-math checks have rare heavy tails (a flipped bf16
    rounding of a state carried through a tanh RNN: 2 of 300 random stacks had 4.5-7.5% of the outputs differing,
    mean error up to 9e-5), so fresh random inputs would make them flaky."""
    if not bf16.supported():
        pytest.skip(f"no bf16 kernel here (CPU kernel capability {cpu_kernel.capability()}, AVX512_BF16 needed)")
    torch.manual_seed(0)


def block_of(mode: str, features: int, hidden: int, layers: int, **kwargs: Any) -> nn.Module:
    if mode == "LSTM":
        return BiLSTM(features, hidden, layers, **kwargs)
    if mode.startswith("GRU"):
        return BiGRU(features, hidden, layers, reset_after=mode == "GRU", **kwargs)
    return BiRNN(features, hidden, layers, nonlinearity="relu" if mode == "RNN_RELU" else "tanh", **kwargs)


def assert_same_math(got: Tensor, want: Tensor) -> None:
    assert got.dtype == want.dtype
    error = (got.double() - want.double()).abs()
    # float32 outputs (the GRUs under autocast) carry float32 rounding of the float64 reference's values
    slack = 0.0 if got.dtype == torch.bfloat16 else 1e-5 * want.double().abs() + 1e-6
    differing = float((error > slack).double().mean())
    assert differing <= MAX_DIFFERING, f"{differing:.1%} of the elements differ (> {MAX_DIFFERING:.0%})"
    assert float(error.mean()) <= MEAN_TOL, f"mean error {float(error.mean()):.2e} > {MEAN_TOL}"
    bound = MAX_ULPS * want.double().abs() + MAX_ABS
    assert bool((error <= bound).all()), f"max error {float(error.max()):.2e} beyond a few bf16 steps"


def states(result: Any) -> List[Tensor]:
    h = result[1]
    return list(h) if isinstance(h, tuple) else [h]


@pytest.mark.parametrize("mode", CELLS)
@pytest.mark.parametrize(("hidden", "merges", "with_lengths"), [
    (20, ["sum", "concat"], True),     # H not a multiple of 16: padded gate blocks
    (32, ["mul", "ave"], False),
    (7, [None], True),                 # one layer, both directions apart
])
def test_bf16_module_is_the_same_math_as_pytorch(mode: str, hidden: int, merges: List[Optional[str]],
                                                 with_lengths: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bf16 module on bf16 input: every cell, merge, lengths, a given initial state, against the reference."""
    calls = record_bf16_calls(monkeypatch)
    block = block_of(mode, 11, hidden, len(merges), merge_mode=merges).eval().to(torch.bfloat16)
    steps, batch = 9, 5
    x = torch.randn(steps, batch, 11).bfloat16()
    if with_lengths:
        x[7:, 1] = float("nan")  # padding may hold anything
    lengths = torch.tensor([9, 7, 3, 1, 9]) if with_lengths else None
    h0 = (0.5 * torch.randn(2 * len(merges), batch, hidden)).bfloat16()
    c0 = (0.5 * torch.randn(2 * len(merges), batch, hidden)).bfloat16() if mode == "LSTM" else None
    with torch.no_grad():
        out, h_n, c_n = block.run(x, h0, c0, lengths)
    assert calls == [block._kernel_cell()]
    want = bf16_reference(block._kernel_cell(), x, block._weights_now(), True, block.merge_modes, lengths, h0, c0)
    for got, expected in zip((out, h_n, c_n), want, strict=True):
        assert_same_math(got, expected)


@pytest.mark.parametrize("mode", ["LSTM", "GRU_RESET_BEFORE"])
def test_one_rounding_left_out_fails_the_check(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: against the reference without its bf16 roundings of inputs and states (the weights
    still rounded: they are bf16 already), the kernel is beyond it."""
    block = block_of(mode, 11, 20, 2, merge_mode="sum").eval().to(torch.bfloat16)
    x = torch.randn(9, 5, 11).bfloat16()
    with torch.no_grad():
        out = block(x)[0]
    monkeypatch.setattr(bf16_reference_module, "_bf", lambda t: t.double())
    unrounded = bf16_reference(block._kernel_cell(), x, block._weights_now(), True, block.merge_modes)[0]
    with pytest.raises(AssertionError):
        assert_same_math(out, unrounded)


@pytest.mark.parametrize("mode", CELLS)
def test_autocast_takes_the_kernel_in_the_dtypes_of_nn_modules(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under CPU bf16 autocast a block runs on the bf16 kernel and returns what nn.LSTM/nn.RNN (bf16) and nn.GRU
    (float32, its products in bf16) return there. A block that ignored autocast would fail the same-math check (and
    for LSTM/RNN the dtype check)."""
    calls = record_bf16_calls(monkeypatch)
    block = block_of(mode, 10, 24, 2, merge_mode="sum", batch_first=True).eval()
    x = torch.randn(3, 8, 10)
    kind = {"LSTM": nn.LSTM, "RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN}.get(mode, nn.GRU)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        result = block(x)
        reference = kind(10, 24, bidirectional=True)(x)
    assert calls == [block._kernel_cell()]
    assert result[0].dtype == reference[0].dtype == bf16.AUTOCAST_DTYPES[mode]
    assert all(s.dtype == result[0].dtype for s in states(result))
    want = bf16_reference(block._kernel_cell(), x.transpose(0, 1), block._weights_now(), True, block.merge_modes,
                          dtype=result[0].dtype)
    assert_same_math(result[0].transpose(0, 1), want[0])
    got_states = states(result)
    for got, expected in zip(got_states, want[1:1 + len(got_states)], strict=True):
        assert_same_math(got, expected)


def test_not_taken_with_gradients_dropout_or_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training under autocast keeps today's path (oneDNN's bf16 LSTM and its autograd); so do dropout to apply,
    cpu_kernel.disabled() and a float32 module outside autocast."""
    calls = record_bf16_calls(monkeypatch)
    block = block_of("LSTM", 6, 16, 2, dropout=0.5)
    x = torch.randn(5, 2, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)[0]
        out.float().sum().backward()
        with torch.no_grad():
            block(x)  # training mode, dropout to apply
            block.eval()
            with cpu_kernel.disabled():
                block(x)
    with torch.no_grad():
        block(x)
    assert calls == []
    assert block.weight_ih_l0.grad is not None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        block(x)
    assert calls == ["LSTM"]


def test_the_lstm_leaves_big_two_thread_calls_to_onednn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where oneDNN's bf16 LSTM measured faster than the vdpbf16ps kernel (bf16.onednn_wins: without AMX two threads,
    B >= 64; on an AMX CPU B >= 16) the block takes it, unless forced; the GRU has no oneDNN path and keeps the
    kernel. (The kernel on AMX tiles keeps the LSTM: test_bf16_amx.py.)"""
    calls = record_bf16_calls(monkeypatch)
    x = torch.randn(2, 64, 4)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), bf16.without_amx():
            assert block_of("LSTM", 4, 8, 1).eval()(x)[0].dtype == torch.bfloat16
            with cpu_kernel.forced():
                block_of("LSTM", 4, 8, 1).eval()(x)
            block_of("GRU", 4, 8, 1).eval()(x)
    finally:
        torch.set_num_threads(threads)
    assert calls == ["LSTM", "GRU"]
    assert bf16.onednn_wins(64, 128, 2) and bf16.onednn_wins(16, 512, 2)
    assert not bf16.onednn_wins(64, 512, 1) and not bf16.onednn_wins(16, 256, 2)
    # a CPU with AMX, the kernel off its tiles: oneDNN (on tiles) from B = 16, at any thread count
    assert bf16.onednn_wins(16, 128, 1, amx_cpu=True) and not bf16.onednn_wins(15, 512, 2, amx_cpu=True)


@pytest.mark.parametrize("mode", CELLS)
def test_error_against_float32_is_within_the_documented_bound(mode: str) -> None:
    """bf16 against the float32 block (same weights): within F32_MAX / F32_MEAN (docs/blocks.md); not equal."""
    block = block_of(mode, 32, 64, 2, merge_mode="concat").eval()
    x = torch.randn(32, 4, 32)
    with torch.no_grad():
        full = block(x)[0]
        low = block.to(torch.bfloat16)(x.bfloat16())[0].float()
    error = (low - full).abs()
    assert float(error.max()) <= F32_MAX and float(error.mean()) <= F32_MEAN
    assert float(error.max()) > 0.0


def test_packed_weights_are_reused_until_a_weight_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    block = block_of("GRU", 5, 16, 1).eval().to(torch.bfloat16)
    x = torch.randn(4, 3, 5).bfloat16()
    with torch.no_grad():
        first = block(x)[0]
        plan = bf16._plans[block]
        assert torch.equal(block(x)[0], first) and bf16._plans[block] is plan
        block.weight_hh_l0.mul_(0.5)
        changed = block(x)[0]
    assert bf16._plans[block] is not plan
    want = bf16_reference("GRU", x, block._weights_now(), True, block.merge_modes)[0]
    assert_same_math(changed, want)
    block.train()
    assert block not in bf16._plans


def test_pack_puts_channel_pairs_where_the_product_reads_them() -> None:
    """Block nb, pair p, lane c: [w(16 nb + c, 2p), w(16 nb + c, 2p + 1)], each gate block padded to 16 channels."""
    gates, hidden, inputs = 3, 5, 7
    weight = torch.arange(2 * gates * hidden * inputs, dtype=torch.float32).reshape(2, gates * hidden, inputs)
    packed = bf16.pack(weight, gates).view(torch.bfloat16).float()
    assert list(packed.shape) == [2, 3, 4, 16, 2]
    for d, gate, unit, k in [(0, 0, 0, 0), (1, 2, 4, 6), (0, 1, 3, 5)]:
        assert packed[d, gate, k // 2, unit, k % 2] == weight[d, gate * hidden + unit, k].bfloat16().float()
    assert packed[0, 0, :, hidden:].abs().sum() == 0 and packed[0, 0, 3, :, 1].abs().sum() == 0


@pytest.mark.slow
def test_forcing_avx2_keeps_pytorchs_bf16_path() -> None:
    """BIRNN_ZOO_CPU_CAPABILITY=avx2 (or a CPU without AVX512_BF16): no bf16 kernel, the bf16 module still runs."""
    code = ("import torch; from models import BiLSTM; from models.blocks.cpu_kernel import bf16; "
            "b = BiLSTM(4, 8).eval().to(torch.bfloat16); y = b(torch.randn(3, 2, 4).bfloat16())[0]; "
            "print(bf16.supported(), y.dtype)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "BIRNN_ZOO_CPU_CAPABILITY": "avx2"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["False", "torch.bfloat16"]
