"""The per-CPU policy calibration (models/blocks/cpu_kernel/calibrate.py): the nearest measured cell decides, a
cached calibration is used only where the policy mode allows, a pinned record overrides this machine's, and a
checkpoint records what its run used so a resume on another machine takes the same paths, bit for bit."""

import json
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch
from helpers.composing import TINY, compose_config
from helpers.kernel_aids import count_serving_calls, isolate_calibrations, needs_serving_call

from models import BiGRU
from models.blocks import cpu_kernel
from models.blocks.cpu_kernel import calibrate
from models.blocks.cpu_kernel import inference as cpu_kernel_inference
from models.training.checkpoint import load_checkpoint
from models.training.loop import train

needs_kernel = pytest.mark.skipif(not cpu_kernel.available(), reason="CPU kernel not built")


def calibration(ratio: float, capability: str = "avx2", threads: int = 1) -> dict:
    """A made-up calibration of the whole grid, every cell at ``ratio`` (kernel time / PyTorch time)."""
    rows = [{"cell": cell, "batch": b, "hidden": h, "lengths": lengths, "training": training, "ratio": ratio}
            for cell in calibrate.CELLS for b in calibrate.BATCHES for h in calibrate.HIDDENS
            for lengths in (False, True) for training in (False, True)]
    return {"format": calibrate.FORMAT, "identity": calibrate.identity(threads, capability), "rows": rows}


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private kernel cache for calibrations (the library itself still loads from the real one), nothing read
    or pinned before or after."""
    yield from isolate_calibrations(tmp_path, monkeypatch)


def test_the_nearest_measured_cell_decides() -> None:
    data = calibration(0.5)
    for row in data["rows"]:
        if row["cell"] == "LSTM" and row["training"] and not row["lengths"] and row["batch"] == 16:
            row["ratio"] = 1.2  # PyTorch's kernels at B = 16, both H
    table = calibrate.Calibration(data)
    assert table.kernel_wins("LSTM", 16, 128, False, True) is False
    assert table.kernel_wins("LSTM", 11, 64, False, True) is False      # log2 11 is nearer 16 than 1
    assert table.kernel_wins("LSTM", 3, 64, False, True) is True        # nearer 1
    assert table.kernel_wins("LSTM", 16, 128, True, True) is True       # with lengths: measured apart
    assert table.kernel_wins("LSTM", 16, 128, False, False) is True     # inference: measured apart
    assert table.kernel_wins("GRU_RESET_BEFORE", 16, 128, False, True) is None
    near = calibrate.Calibration(calibration(0.97))  # a near tie goes to nn.* itself (THRESHOLD 0.95)
    assert near.kernel_wins("LSTM", 16, 64, False, True) is False
    # one doubling above the grid (B 1..64, H 64..256) the nearest cell still answers; further, its losses
    # only (the table decides the rest);
    # below it, the smallest cells
    assert table.kernel_wins("LSTM", 128, 512, False, True) is True
    assert table.kernel_wins("LSTM", 4, 32, False, True) is True
    assert table.kernel_wins("LSTM", 256, 64, False, True) is None
    assert table.kernel_wins("LSTM", 16, 1024, False, True) is False   # beyond the grid a measured loss stands
    assert table.kernel_wins("LSTM", 1, 1024, False, True) is None     # a measured win goes to the table
    assert table.kernel_wins("LSTM", 16, 8, False, True) is False
    with pytest.raises(ValueError, match="format"):
        calibrate.Calibration({"rows": []})


@needs_kernel
@pytest.mark.parametrize("mode", ["calibrated", "table"])
def test_a_cached_calibration_is_used_unless_the_table_is_asked_for(mode: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    capability = cpu_kernel.capability()
    calibrate.save(calibration(3.0, capability))  # PyTorch's kernels everywhere
    calibrate.forget()
    monkeypatch.setenv(calibrate.POLICY_ENV, mode)
    chosen = cpu_kernel.kernel_chosen("GRU", 1, 64, 20, False, False, threads=1)
    assert chosen is (mode == "table")  # the table: the kernel for every one-thread GRU inference
    # a batch with lengths takes the kernel whatever the calibration says (calibrate.LENGTHS)
    assert cpu_kernel.kernel_chosen("LSTM", 64, 64, 20, True, True, threads=1)
    assert cpu_kernel.kernel_chosen("GRU_RESET_BEFORE", 1, 64, 20, False, False, threads=1)  # always the kernel
    assert calibrate.record(1, capability)["source"] == ("calibration" if mode == "calibrated" else "table")
    # the blocks follow it: nn.GRU's path (bits of torch's GRU), or the kernel
    block = cpu_kernel_block()
    x = torch.randn(20, 1, 64)
    with torch.no_grad():
        got = block(x)[0]
        with cpu_kernel.disabled():
            torch_path = block(x)[0]
    assert torch.equal(got, torch_path) is (mode == "calibrated")


def cpu_kernel_block() -> torch.nn.Module:
    from models import BiGRU

    torch.manual_seed(0)
    return BiGRU(64, 64, 1).eval()


def test_a_bad_policy_mode_and_a_damaged_calibration(monkeypatch: pytest.MonkeyPatch, isolated: Path) -> None:
    monkeypatch.setenv(calibrate.POLICY_ENV, "fastest")
    with pytest.raises(ValueError, match="BIRNN_ZOO_CPU_POLICY='fastest'"):
        calibrate.cached(1, "avx2")
    monkeypatch.setenv(calibrate.POLICY_ENV, "calibrated")
    calibrate.cache_path(1, "avx2").write_text("{not json")
    with pytest.warns(RuntimeWarning, match="ignoring the CPU policy calibration"):
        assert calibrate.cached(1, "avx2") is None


def test_the_cache_file_is_keyed_by_what_the_measurement_depends_on() -> None:
    paths = {calibrate.cache_path(1, "avx2"), calibrate.cache_path(2, "avx2"), calibrate.cache_path(1, "avx512")}
    assert len(paths) == 3
    saved = calibrate.save(calibration(0.5, "avx2", 2))
    assert json.loads(calibrate.cache_path(2, "avx2").read_text()) == saved
    assert not list(calibrate.cache_path(2, "avx2").parent.glob("*.partial"))


def test_the_cache_file_is_keyed_by_the_instruction_sets_of_pytorchs_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ratio has two sides: PyTorch's kernels capped at AVX2 (as when emulating an AVX2 CPU) are another
    measurement than the same CPU's AVX-512 ones, so another file."""
    for name in calibrate.REFERENCE_ISA_ENV:
        monkeypatch.delenv(name, raising=False)
    native = calibrate.cache_path(1, "avx2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    capped = calibrate.cache_path(1, "avx2")
    assert capped != native and calibrate.reference_isa()["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert calibrate.reference_isa()["aten"] == "DEFAULT" and calibrate.cache_path(1, "avx2") not in (native, capped)


@needs_kernel
def test_a_pinned_record_decides_whatever_this_machine_has(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(calibrate.POLICY_ENV, "calibrated")
    recorded = {"format": 1, "source": "calibration", "threads": 1, "capability": "avx2",
                "calibration": calibration(3.0)}
    calibrate.pin(recorded)
    assert calibrate.record() == recorded
    for threads in (1, 2, 8):  # the record's thread count, not this process's
        assert not cpu_kernel.kernel_chosen("GRU", 1, 64, 20, False, False, threads=threads)
    calibrate.pin({"format": 1, "source": "table", "threads": 1, "capability": "avx2", "calibration": None})
    assert cpu_kernel.kernel_chosen("GRU", 1, 64, 20, False, False, threads=8)  # the table at 1 thread
    with pytest.raises(ValueError, match="source"):
        calibrate.pin({"source": "guess"})


@needs_kernel
def test_a_resume_on_another_machine_takes_the_recorded_paths_bit_exactly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's machine has a calibration that sends the tiny LSTM's training steps to PyTorch's kernels (the
    table sends them to the kernel: the two differ in float rounding). A run of 2 epochs, and a run of 1 epoch
    resumed for the second on "another machine" without that calibration, end with the same weights, bit for
    bit: the checkpoint's record was pinned."""
    monkeypatch.setenv(calibrate.POLICY_ENV, "calibrated")
    calibrate.save(calibration(3.0, cpu_kernel.capability()))
    overrides = [*TINY, "trainer.tensorboard=false"]
    threads = torch.get_num_threads()
    try:
        train(compose_config(*overrides), tmp_path / "whole")
        train(compose_config(*overrides, "trainer.max_epochs=1"), tmp_path / "first")
        recorded = load_checkpoint(tmp_path / "first" / "checkpoints" / "last.pt")["cpu_path"]
        assert recorded["source"] == "calibration" and recorded["calibration"]["rows"][0]["ratio"] == 3.0
        # another machine: no calibration, the table
        calibrate.forget()
        monkeypatch.setenv(calibrate.POLICY_ENV, "table")
        assert cpu_kernel.kernel_chosen("LSTM", 32, 8, 12, False, False, threads=1)  # the table: the kernel
        train(compose_config(*overrides, f"trainer.resume={tmp_path / 'first'}"), tmp_path / "continued")
        assert calibrate.pinned() == recorded
        assert not cpu_kernel.kernel_chosen("LSTM", 32, 8, 12, False, False, threads=1)
    finally:
        torch.set_num_threads(threads)
    whole = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    continued = load_checkpoint(tmp_path / "continued" / "checkpoints" / "last.pt")
    assert continued["cpu_path"] == recorded
    assert whole["model"].keys() == continued["model"].keys()
    for name, tensor in whole["model"].items():
        assert torch.equal(tensor, continued["model"][name]), name


@needs_serving_call
def test_the_serving_path_asks_again_after_a_pin_a_save_or_a_forget(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path (inference.py) remembers the policy's answer per (B, T, lengths, threads): a record pinned or
    unpinned, a calibration saved or forgotten must change where the next call runs, as in the general path."""
    monkeypatch.setenv(calibrate.POLICY_ENV, "calibrated")
    threads, capability = torch.get_num_threads(), cpu_kernel.capability()
    table = {"format": 1, "source": "table", "threads": threads, "capability": capability, "calibration": None}
    torch_everywhere = {"format": 1, "source": "calibration", "threads": threads, "capability": capability,
                        "calibration": calibration(3.0, capability, threads)}
    block = BiGRU(6, 9, 1).eval()  # GRU inference at B = 1: the table's kernel
    x = torch.randn(4, 1, 6)
    calibrate.pin(table)
    with torch.no_grad():
        block(x)  # the plan, made by the general path
    calls = count_serving_calls(cpu_kernel_inference._plans[block].fast)

    def runs_fast() -> bool:
        before = len(calls)
        with torch.no_grad():
            block(x)
        return len(calls) > before

    assert runs_fast() and runs_fast()  # the second answer remembered
    calibrate.pin(torch_everywhere)
    assert not runs_fast()
    calibrate.pin(None)
    assert runs_fast()  # no calibration in this test's cache: the table
    calibrate.save(calibration(3.0, capability, threads))  # this machine's calibration: PyTorch's kernels
    assert not runs_fast()
    calibrate.forget()
    monkeypatch.setenv(calibrate.POLICY_ENV, "table")  # read again: the table
    assert runs_fast()
    calibrate.pin(torch_everywhere)
    assert not runs_fast()
    calibrate.pin(table)
    assert runs_fast()


class FakeClock:
    """A clock that only the fake steps move: each call of a step costs its stated seconds."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls = 0

    def step(self, seconds: float) -> Callable[[], None]:
        def run() -> None:
            self.now += seconds
            self.calls += 1
        return run

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("kernel_s, torch_s, ratio, calls", [
    (0.002, 0.001, 2.0, 2 + 3 * 2),                          # clearly slower: decided after MIN_PAIRS pairs
    (0.0005, 0.001, 0.5, 2 + 3 * 2 * 2),                     # clearly faster; samples of 2 calls make SAMPLE_S
    (0.001, 0.001, 1.0, 2 + calibrate.MAX_PAIRS * 2 * 2),    # a tie: every pair, up to MAX_PAIRS
    (0.1, 0.1, 1.0, 2 + 3 * 2),                              # a tie, but the cell's budget is spent: stops
])
def test_a_cell_is_measured_only_until_its_answer_is_clear(kernel_s: float, torch_s: float, ratio: float,
                                                           calls: int) -> None:
    clock = FakeClock()
    got, made = calibrate.ratio(clock.step(kernel_s), clock.step(torch_s), clock)
    assert got == pytest.approx(ratio)
    assert made == clock.calls == calls <= calibrate.MAX_CALLS


@needs_kernel
def test_a_calibration_costs_a_bounded_number_of_calls() -> None:
    """The worst case (every cell a tie, cheap calls: the most pairs and calls a sample) stays within
    ``MAX_CALLS`` a cell and decides every cell of the grid; a realistic grid (most cells clear) far less."""
    clock = FakeClock()
    grid = len(calibrate.CELLS) * 2 * len(calibrate.LENGTHS) * len(calibrate.BATCHES) * len(calibrate.HIDDENS)

    def tie(cell: str, batch: int, hidden: int, lengths: bool, training: bool) -> Callable[[], None]:
        return clock.step(1e-5)
    data = calibrate.measure(1, "avx2", case=tie, clock=clock)
    assert len(data["rows"]) == grid == 24  # a tie at the largest inference cell: nothing past it
    assert data["calls"] == clock.calls <= grid * calibrate.MAX_CALLS
    assert all(row["calls"] <= calibrate.MAX_CALLS and row["ratio"] == 1.0 for row in data["rows"])

    clock.calls = 0

    def costs(cell: str, batch: int, hidden: int, lengths: bool, training: bool) -> Callable[[], None]:
        # the kernel's path is the one forced on (cpu_kernel.forced); PyTorch's takes twice as long per call
        def run() -> None:
            clock.step(1e-3 if cpu_kernel._switch.forced else 2e-3)()
        return run
    data = calibrate.measure(1, "avx2", case=costs, clock=clock)
    assert data["calls"] == clock.calls == grid * (2 + 3 * 2)
    assert all(row["ratio"] == 0.5 for row in data["rows"])


def test_the_documented_command_runs_the_one_calibrate_module_without_a_warning() -> None:
    """``python -m models.blocks.cpu_kernel.calibrate``: the package does not import ``calibrate`` itself, so runpy
    neither warns nor runs a second copy beside the one the policy reads (warnings are errors here)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}  # the kernel cache of the other tests: no compile here
    done = subprocess.run([sys.executable, "-W", "error", "-m", "models.blocks.cpu_kernel.calibrate", "--show",
                           "--threads", "1"], capture_output=True, text=True, env=env, cwd=root, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "found in sys.modules" not in done.stderr
    assert done.stdout.startswith("1 thread(s): "), done.stdout
