"""bf16 inference on AMX tiles (models/blocks/cpu_kernel/bf16.py, csrc/bf16_forward.h's amx_gemm): the tile path and
the vdpbf16ps path side by side on one CPU, both against the same reference as the vdpbf16ps kernel
(tests/helpers/bf16_reference.py: bf16-rounded weights, inputs and states, float64 sums), every cell, merge modes,
lengths, batches below and above AMX_MIN_BATCH and the shapes that leave rows or pairs past a 16-row or 16-pair tile
to vdpbf16ps. Skipped, with the reason, on CPUs without AMX-BF16 (or where Linux refuses the tile state).

Tolerance: the same as test_bf16_kernel.py's (assert_same_math: at most 8% of the bf16 outputs one rounding away from
the reference, mean error <= 3e-5, every element within a few bf16 steps). Why it is enough and needed: a tile adds
its 16 pairs to the float32 sums in pair order, as vdpbf16ps does, but rounds inside a pair differently in a few
sums (measured: 0 to 0.7% of the outputs of LSTM stacks, H = 64..128, B = 16..64, differ from the vdpbf16ps kernel's,
by one bf16 step); a state rounded to bf16 then lands on the other side of a rounding boundary as it does for
vdpbf16ps against the float64 reference, which is what the shared tolerance was measured for."""

import ctypes
from typing import Any, Iterator, List, Optional

import pytest
import torch
from helpers.bf16_reference import bf16_reference
from test_bf16_kernel import CELLS, assert_same_math, block_of

from models.blocks import cpu_kernel
from models.blocks.cpu_kernel import bf16


@pytest.fixture(autouse=True)
def needs_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip without AMX tiles; else a fixed seed (as test_bf16_kernel.py: the same-math checks have rare tails) and
    BIRNN_ZOO_BF16_AMX unset (these tests say where the tiles run: a session's BIRNN_ZOO_BF16_AMX=0 would turn them
    off)."""
    monkeypatch.delenv(bf16.AMX_ENV, raising=False)
    if not bf16.amx_supported():
        pytest.skip("no AMX tiles for the bf16 kernel here (needs AVX512_BF16, AMX-TILE, AMX-BF16 and Linux's grant "
                    f"of the tile state; CPU kernel capability {cpu_kernel.capability()})")
    torch.manual_seed(0)


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> Iterator[List[int]]:
    """The amx_min_batch of every bf16 stack call (what bf16.run asks the C code for)."""
    seen: List[int] = []
    lib = bf16.library()
    original = lib.birnn_bf16_forward_stack

    def spying(args: Any) -> None:
        seen.append(ctypes.cast(args, ctypes.POINTER(bf16.Bf16Args)).contents.amx_min_batch)
        original(args)

    monkeypatch.setattr(lib, "birnn_bf16_forward_stack", spying)
    yield seen


def run_block(mode: str, features: int, hidden: int, batch: int, merges: List[Optional[str]], with_lengths: bool,
              amx: bool, steps: int = 9) -> None:
    """A bf16 module on bf16 input with a given initial state, tiles on or off, against the reference."""
    block = block_of(mode, features, hidden, len(merges), merge_mode=merges).eval().to(torch.bfloat16)
    x = torch.randn(steps, batch, features).bfloat16()
    lengths = None
    if with_lengths:
        lengths = torch.randint(1, steps + 1, (batch,))
        lengths[0] = steps
        x[steps - 1:, lengths < steps] = float("nan")  # padding may hold anything
    h0 = (0.5 * torch.randn(2 * len(merges), batch, hidden)).bfloat16()
    c0 = (0.5 * torch.randn(2 * len(merges), batch, hidden)).bfloat16() if mode == "LSTM" else None
    with torch.no_grad(), cpu_kernel.forced():  # forced: off the tiles the LSTM would go to oneDNN (onednn_wins)
        if amx:
            out, h_n, c_n = block.run(x, h0, c0, lengths)
        else:
            with bf16.without_amx():
                out, h_n, c_n = block.run(x, h0, c0, lengths)
    want = bf16_reference(block._kernel_cell(), x, block._weights_now(), True, block.merge_modes, lengths, h0, c0)
    for got, expected in zip((out, h_n, c_n), want, strict=True):
        assert_same_math(got, expected)


@pytest.mark.parametrize("amx", [True, False], ids=["amx", "vdpbf16ps"])
@pytest.mark.parametrize("mode", CELLS)
@pytest.mark.parametrize(("features", "hidden", "batch", "merges", "with_lengths"), [
    (37, 40, 21, ["sum", "concat"], True),  # 16 rows on tiles + 5 on vdpbf16ps; 16 pairs + 4 (h) / 3 (x) after them
    (32, 32, 16, ["mul", "ave"], False),    # exactly one tile of rows and of pairs
    (37, 40, 5, [None], True),              # below AMX_MIN_BATCH: steps on vdpbf16ps, the input product (45 rows) not
    (64, 64, 48, ["concat"], False),        # three row tiles: a pair of them, then one
])
def test_tiles_are_the_same_math_as_pytorch(mode: str, features: int, hidden: int, batch: int,
                                            merges: List[Optional[str]], with_lengths: bool, amx: bool,
                                            requests: List[int]) -> None:
    run_block(mode, features, hidden, batch, merges, with_lengths, amx)
    assert requests == [bf16.AMX_MIN_BATCH if amx else 0]


def test_two_threads_each_configure_their_tiles(requests: List[int]) -> None:
    """One direction a thread: each OpenMP thread loads its own tile configuration (a thread that did not would fault
    or read the other's garbage)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for mode in ("LSTM", "GRU_RESET_BEFORE"):
            run_block(mode, 48, 48, 32, ["concat", "sum"], True, amx=True)
    finally:
        torch.set_num_threads(threads)
    assert requests == [bf16.AMX_MIN_BATCH] * 2


def test_the_tiles_ran() -> None:
    """The tile path is not the vdpbf16ps path under another name: on this fixed input its sums round differently in
    a few places (both within the reference's tolerance, test above), and without_amx() gives the other result."""
    block = block_of("LSTM", 128, 128, 2, merge_mode="concat").eval().to(torch.bfloat16)
    x = torch.randn(16, 32, 128).bfloat16()
    with torch.no_grad(), cpu_kernel.forced():
        tiles = block(x)[0]
        with bf16.without_amx():
            plain = block(x)[0]
        again = block(x)[0]
    assert torch.equal(tiles, again)  # deterministic: the same path twice
    differing = float((tiles != plain).double().mean())
    assert 0.0 < differing < 0.02, f"{differing:.2%} of the outputs differ between tiles and vdpbf16ps"


def test_the_environment_switch_keeps_vdpbf16ps(monkeypatch: pytest.MonkeyPatch, requests: List[int]) -> None:
    """BIRNN_ZOO_BF16_AMX=0 keeps every call on vdpbf16ps (read at each call); 1 or unset: tiles; anything else is
    refused naming the variable."""
    block = block_of("GRU", 8, 16, 1).eval().to(torch.bfloat16)
    x = torch.randn(4, 16, 8).bfloat16()
    with torch.no_grad():
        monkeypatch.setenv(bf16.AMX_ENV, "0")
        assert not bf16.amx_used()
        block(x)
        monkeypatch.setenv(bf16.AMX_ENV, "1")
        assert bf16.amx_used()
        block(x)
        monkeypatch.delenv(bf16.AMX_ENV)
        block(x)
        with bf16.without_amx():
            assert not bf16.amx_used()
            block(x)
        assert bf16.amx_used()
        monkeypatch.setenv(bf16.AMX_ENV, "yes")
        with pytest.raises(ValueError, match=r"BIRNN_ZOO_BF16_AMX='yes'.*expected 0"):
            block(x)
    assert requests == [0, bf16.AMX_MIN_BATCH, bf16.AMX_MIN_BATCH, 0]


def test_the_lstm_keeps_the_kernel_on_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """On AMX tiles the kernel measured level with or faster than oneDNN's bf16 LSTM at every size (bf16.onednn_wins
    is False with amx): a big two-thread LSTM call stays on the kernel, where off the tiles it goes to oneDNN."""
    calls: List[str] = []
    original = bf16.run
    monkeypatch.setattr(bf16, "run", lambda module, mode, *args: calls.append(mode) or original(module, mode, *args))
    x = torch.randn(2, 64, 4)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            block = block_of("LSTM", 4, 8, 1).eval()
            assert block(x)[0].dtype == torch.bfloat16
            with bf16.without_amx():
                block(x)
    finally:
        torch.set_num_threads(threads)
    assert calls == ["LSTM"]
    assert bf16.cpu_has_amx()
    assert not any(bf16.onednn_wins(b, h, t, amx=True, amx_cpu=True) for b in (1, 16, 64, 256) for h in (128, 512)
                   for t in (1, 2))


def test_onednn_tiles_between_calls_change_nothing() -> None:
    """oneDNN's bf16 LSTM runs on AMX too, with its own tile configuration, in the same threads: each tile product
    loads the kernel's configuration first (and each direction releases the tiles after), so a oneDNN call between
    two kernel calls leaves the second exactly equal to the first."""
    block = block_of("LSTM", 64, 64, 2, merge_mode="concat").eval()
    reference = torch.nn.LSTM(64, 96, 2, bidirectional=True).eval()
    x = torch.randn(8, 32, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), cpu_kernel.forced():
        first = block(x)[0]
        between = reference(x)[0]
        second = block(x)[0]
    assert between.dtype == torch.bfloat16 and torch.equal(first, second)
