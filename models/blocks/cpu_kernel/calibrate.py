"""``python -m models.blocks.cpu_kernel.calibrate [--threads 1 2] [--show]``: measure, once per CPU, where the
kernel beats PyTorch's fused kernels, and let the policy use that instead of its fixed table.

Why: ``policy.kernel_wins`` is a table measured on two CPUs (an AVX2 EPYC, an AVX-512 Xeon); on any other CPU it is a
prediction, and on an AMD Zen 4 it missed (one-thread LSTM training 1.08-1.10x ``nn.LSTM``). A calibration times the
blocks both ways (``cpu_kernel.forced()`` against ``cpu_kernel.disabled()``, interleaved) on a small grid: LSTM and GRU,
inference and training steps, ``B`` in (1, 16, 64), ``H`` in (64, 256), ``T = 24``, one layer (the policy decides per
layer), without ``lengths`` (a batch with lengths takes the kernel: ``LENGTHS`` says why): 24 cells, and for inference
near a loss at the grid's largest cell two more past it (``LARGER``, ``EXTEND``). Each cell is timed adaptively
(``ratio``): pairs of samples until every pair's ratio lies clearly on one side of 1 or the cell's budget is spent, so
the clear cells (most) cost three pairs (with lengths measured too, 48 cells: about 450 calls, 8-9 s of CPU time per
thread count on an AMD Zen 4; the first version timed every cell alike: 672 calls, 14 s there, 183 s on a loaded Zen 1).
The policy then asks the nearest measured cell (``B`` and ``H`` on a log scale) and takes the kernel where it ran
clearly faster than ``nn.*`` (``ratio <= THRESHOLD``, 0.95); more than one doubling above the grid (``B`` = 256, ``H`` =
1024) the nearest cell's loss stands and its win goes to the table. Keras's ``reset_after=False`` GRU always takes the
kernel (its other path is a Python time loop), as in the table.

Where it is kept: ``calibration-<key>.json`` in the kernel cache folder (``$BIRNN_ZOO_KERNEL_CACHE`` or
``~/.cache/birnn-zoo-kernels``), written atomically, ``key`` a hash of what the measurement depends on: the CPU model
string, the kernel's capability (avx2/avx512), the thread count, torch's version, the kernel's source and the
instruction sets PyTorch's own kernels run (``reference_isa``). A new torch, kernel or CPU finds no calibration and uses
the table until calibrated again.

When it is used (``$BIRNN_ZOO_CPU_POLICY``):
- ``calibrated`` (default): a calibration made earlier for this CPU, capability, thread count, torch and kernel
  is used where one exists, else the table. Nothing is ever measured unless asked: the choice is a pure function
  of the cached file, read once per process and thread count.
- ``table``: the fixed table only (what the tests run: ``tests/conftest.py``).
- ``calibrate``: as ``calibrated``, but a missing calibration is measured (a few seconds, once) the first time
  the policy is asked in a process, and cached.

Deterministic runs: a training run records what its policy used (``record()``: the source, thread count,
capability and the whole calibration) in every checkpoint, and a resume pins it (``pin(record)``), so the
resumed run, even on another machine with another calibration or none, makes the same choices at every shape
(``tests/kernel/test_cpu_kernel_calibrate.py`` checks a resume stays bit-exact).
"""

import argparse
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

POLICY_ENV = "BIRNN_ZOO_CPU_POLICY"
POLICIES = ("calibrated", "table", "calibrate")
FORMAT = 1
# The grid: small enough to measure in a few seconds, wide enough to cover the table's exceptions' sides.
CELLS = ("LSTM", "GRU")
BATCHES = (1, 16, 64)
HIDDENS = (64, 256)
STEPS = 24
# Batches with lengths are not measured: the kernel skips their padded rows (csrc/args.h, StepRows), and across
# 372 measured configurations of two capabilities (2026-12-06) it never ran slower than PyTorch's lengths path, so
# the policy takes it for them (the fixed table's answer). (False, True) measures them apart again.
LENGTHS = (False,)
# Measuring one cell (``ratio``): pairs of samples of at least SAMPLE_S each (at most MAX_NUMBER calls a sample),
# MIN_PAIRS to MAX_PAIRS pairs, stopping early once every pair's ratio is CLEAR of 1 on the same side or the cell
# has used CELL_BUDGET_S. Most cells are decided in MIN_PAIRS; the budget bounds the near-1 ones.
SAMPLE_S = 0.002
MAX_NUMBER = 16
MIN_PAIRS, MAX_PAIRS = 3, 8
CLEAR = 0.05
CELL_BUDGET_S = 0.4
# The ratio at or below which a cell takes the kernel: the other path is ``nn.*`` itself (1.0 by definition), and the
# calibration's short sequences (T = 24) read the kernel 0.03-0.10 faster than T = 64-512 do (docs/benchmarks.md),
# so a near tie goes to ``nn.*``.
THRESHOLD = 0.95
# Past the grid, inference only: where the grid's largest inference cell (the largest B and H) was a win, but a narrow
# one (ratio in (EXTEND, THRESHOLD]), the cells LARGER (B, H), one step past it, are measured too, and count only as
# clear losses (ratio above 1 + CLEAR; a row marked "past"). The libraries' GEMMs win first where the products are
# large, and one doubling turned such a win into a loss (the AVX2 library on an AVX-512 Xeon, two threads, LSTM
# inference, 2026-12-06: 0.95x ``nn.LSTM`` at B = 64, H = 256, 1.40x at H = 512, 1.22x at B = 256); a near tie there
# at T = 24 is weaker evidence than the grid's win (on the same Xeon's AVX-512 library, one thread, B = 256, H = 256
# read 0.97 at T = 24 and 0.89 at T = 64). Not training (a step there costs three times an inference call), not after
# a loss (one already stands past the grid) nor a clear win.
EXTEND = 0.7
LARGER = ((64, 512), (256, 256))
# How far above its grid a calibration answers (doublings of B or H); beyond, only its losses stand (the table decides
# the rest).
REACH = 1.0
MAX_CALLS = 2 + 2 * MAX_PAIRS * MAX_NUMBER  # per cell


class Calibration:
    """One measured grid: ``rows`` of ``{"cell", "batch", "hidden", "lengths", "training", "ratio"}`` (kernel time
    over PyTorch's, same run, interleaved) with the ``identity`` it was measured under."""

    def __init__(self, data: Dict[str, Any]) -> None:
        if not isinstance(data, dict):  # valid JSON of another shape: refused as damaged, not an AttributeError
            raise ValueError(f"not a calibration of format {FORMAT}: a {type(data).__name__}, not an object")
        if data.get("format") != FORMAT or not isinstance(data.get("rows"), list):
            raise ValueError(f"not a calibration of format {FORMAT}: keys {sorted(data)}")
        self.data = data
        self._by: Dict[Tuple[str, bool, bool], List[Tuple[int, int, float]]] = {}
        # kernel_wins' answers: the rows are read here once, and serving asks the same shapes at every call
        self._answers: Dict[Tuple[str, int, int, bool, bool], Optional[bool]] = {}
        for row in data["rows"]:
            if row.get("past") and float(row["ratio"]) <= 1 + CLEAR:  # past the grid only a clear loss counts
                continue
            key = (str(row["cell"]), bool(row["lengths"]), bool(row["training"]))
            self._by.setdefault(key, []).append((int(row["batch"]), int(row["hidden"]), float(row["ratio"])))

    def kernel_wins(self, cell: str, batch: int, hidden: int, has_lengths: bool, training: bool) -> Optional[bool]:
        """The nearest measured cell's answer (``B`` and ``H`` on a log2 scale, ties to the smaller), or None
        (the table decides) where this cell, ``lengths`` and ``training`` were not measured. Where ``B`` or ``H``
        lies more than ``REACH`` doublings above the measured range, only a loss carries over: the nearest cell's
        "PyTorch's kernels" stands (larger products favour the libraries' GEMMs: the AVX2 kernel on an AVX-512
        Xeon lost one-thread LSTM inference by 1.2-1.5x at B = 64 and by 1.2-1.4x at B = 256), its "the kernel"
        goes to the table (a one-thread GRU training step at B = 256 is not a B = 64 one: measured on a Zen 4,
        kernel 1.17x ``nn.GRU`` at H = 128, 0.64-0.93x at B = 64). Below the range the smallest cells answer
        (per-call costs dominate there as in them)."""
        key = (cell, batch, hidden, has_lengths, training)
        if key not in self._answers:
            if len(self._answers) >= 4096:  # bounded, whatever shapes a long-lived server sees
                self._answers.clear()
            self._answers[key] = self._nearest_answer(*key)
        return self._answers[key]

    def _nearest_answer(self, cell: str, batch: int, hidden: int, has_lengths: bool, training: bool) -> Optional[bool]:
        rows = self._by.get((cell, has_lengths, training))
        if not rows:
            return None
        b, h = math.log2(max(batch, 1)), math.log2(max(hidden, 1))
        nearest = min(rows, key=lambda r: (abs(math.log2(r[0]) - b) + abs(math.log2(r[1]) - h), r[0], r[1]))
        for value, measured in ((b, [math.log2(r[0]) for r in rows]), (h, [math.log2(r[1]) for r in rows])):
            if value > max(measured) + REACH:
                return False if nearest[2] > THRESHOLD else None
        return nearest[2] <= THRESHOLD


_lock = threading.RLock()  # reentrant: cached() holds it while save() (the calibrate mode) takes it again
_loaded: Dict[Tuple[int, str], Optional[Calibration]] = {}  # (threads, capability) -> what this process uses
_pinned: Optional[Dict[str, Any]] = None  # a checkpoint's record(), set by pin()
_pinned_calibration: Optional[Calibration] = None
# Bumped whenever what the policy decides with changes: a calibration forgotten or saved, a record pinned or unpinned.
# The serving path (inference.py) remembers the policy's answers and forgets them when this moves. A first read of a
# calibration changes nothing remembered: answers for a thread count exist only after its calibration was read.
policy_version = 0


def policy_mode() -> str:
    """``$BIRNN_ZOO_CPU_POLICY``, checked: ``calibrated`` (default), ``table`` or ``calibrate``."""
    mode = os.environ.get(POLICY_ENV, "calibrated").strip().lower() or "calibrated"
    if mode not in POLICIES:
        raise ValueError(f"{POLICY_ENV}={mode!r}; expected one of {', '.join(POLICIES)}")
    return mode


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _kernel_source() -> str:
    from . import build

    digest = hashlib.sha256()
    for source in build.SOURCES:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


# What caps the instruction sets of PyTorch's own kernels (ATen's, oneDNN's, MKL's) below the CPU's: with all three
# at AVX2 on an AVX-512 CPU, and ``BIRNN_ZOO_CPU_CAPABILITY=avx2``, both sides of a measurement run as on an AVX2 CPU.
REFERENCE_ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def reference_isa() -> Dict[str, str]:
    """The instruction sets PyTorch's kernels run here: ATen's dispatch level (``torch.backends.cpu``) and each of
    ``REFERENCE_ISA_ENV`` that is set (oneDNN and MKL read theirs at first use, so the environment is the record)."""
    return {"aten": torch.backends.cpu.get_cpu_capability(),
            **{name: os.environ[name] for name in REFERENCE_ISA_ENV if os.environ.get(name)}}


def identity(threads: int, capability: str) -> Dict[str, Any]:
    """What a calibration depends on; its hash names the cached file. Both sides of each ratio count: the
    kernel's capability and source, and the instruction sets PyTorch's kernels run (``reference_isa``)."""
    return {"cpu": _cpu_model(), "capability": capability, "threads": threads, "torch": str(torch.__version__),
            "kernel_source": _kernel_source(), "reference_isa": reference_isa()}


def cache_path(threads: int, capability: str, folder: Optional[Path] = None) -> Path:
    """``<kernel cache>/calibration-<key>.json`` for this CPU, capability, thread count, torch and kernel."""
    from . import build

    key = hashlib.sha256(json.dumps(identity(threads, capability), sort_keys=True).encode()).hexdigest()[:16]
    return (folder or build.cache_dir()) / f"calibration-{key}.json"


def _read(path: Path) -> Optional[Calibration]:
    try:
        return Calibration(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        import warnings

        warnings.warn(f"birnn-zoo: ignoring the CPU policy calibration {path} ({error}); using the fixed table. "
                      f"Run python -m models.blocks.cpu_kernel.calibrate to measure it again", RuntimeWarning,
                      stacklevel=3)
        return None


def cached(threads: int, capability: str) -> Optional[Calibration]:
    """The calibration this process uses at ``threads`` and ``capability`` (read once; under ``calibrate``,
    measured once where missing), or None: the table. Under ``torch.compile`` only what is already read."""
    key = (threads, capability)
    if key in _loaded:
        return _loaded[key]
    if torch.compiler.is_compiling():
        return None
    with _lock:
        if key not in _loaded:
            mode = policy_mode()
            found = None if mode == "table" else _read(cache_path(threads, capability))
            if found is None and mode == "calibrate":
                found = Calibration(save(measure(threads, capability)))
            _loaded[key] = found
    return _loaded[key]


def forget() -> None:
    """Drop what this process has read (the next question reads the cache again)."""
    global policy_version
    with _lock:
        _loaded.clear()
        policy_version += 1


def active(threads: int, capability: str) -> Tuple[Optional[Calibration], int, str]:
    """What the policy decides with: ``(calibration or None for the table, threads, capability)``; a pinned
    record replaces all three (a resumed run decides as the run that wrote its checkpoint)."""
    if _pinned is not None:
        return _pinned_calibration, int(_pinned["threads"]), str(_pinned["capability"])
    return cached(threads, capability), threads, capability


def record(threads: Optional[int] = None, capability: Optional[str] = None) -> Dict[str, Any]:
    """What the policy uses now, for a checkpoint: ``{"format", "source": "table" | "calibration", "threads",
    "capability", "calibration": the whole measured grid or None}``; the pinned record while one is pinned."""
    if _pinned is not None:
        return dict(_pinned)
    from .. import cpu_kernel

    threads = torch.get_num_threads() if threads is None else threads
    capability = capability or cpu_kernel.capability() or "avx2"
    calibration = cached(threads, capability)
    return {"format": FORMAT, "source": "table" if calibration is None else "calibration", "threads": threads,
            "capability": capability, "calibration": None if calibration is None else calibration.data}


def pin(recorded: Optional[Dict[str, Any]]) -> None:
    """Decide as ``recorded`` (a ``record()``, e.g. from a checkpoint) says, whatever this machine's calibration,
    thread count or capability; None unpins. Raises ``ValueError`` for a record it cannot read."""
    global _pinned, _pinned_calibration, policy_version
    if recorded is None:
        _pinned, _pinned_calibration = None, None
        policy_version += 1
        return
    if not isinstance(recorded, dict) or recorded.get("source") not in ("table", "calibration"):
        raise ValueError(f"a CPU policy record has source 'table' or 'calibration', got {recorded!r:.200}")
    calibration = Calibration(recorded["calibration"]) if recorded["source"] == "calibration" else None
    _pinned_calibration, _pinned = calibration, dict(recorded)
    policy_version += 1


def pinned() -> Optional[Dict[str, Any]]:
    """The pinned record, or None."""
    return _pinned


# -- measuring ------------------------------------------------------------------------------------------------------
def _case(cell: str, batch: int, hidden: int, lengths: bool, training: bool) -> Callable[[], Any]:
    from ..modules import BiGRU, BiLSTM

    torch.manual_seed(0)
    block = (BiLSTM if cell == "LSTM" else BiGRU)(hidden, hidden, 1)
    x = torch.randn(STEPS, batch, hidden)
    lengths_tensor = torch.randint(STEPS // 2, STEPS + 1, (batch,)) if lengths else None
    if lengths_tensor is not None:
        lengths_tensor[0] = STEPS
    if training:
        block.train()
        x.requires_grad_(True)

        def step() -> None:
            out = block(x, lengths=lengths_tensor)[0]
            out.sum().backward()
        return step
    block.eval()

    def infer() -> None:
        with torch.no_grad():
            block(x, lengths=lengths_tensor)
    return infer


def _clock(threads: int) -> Callable[[], float]:
    """Process CPU time on one thread (other jobs' time on a shared core is not counted), wall time on more."""
    return time.process_time if threads == 1 else time.perf_counter


def ratio(kernel: Callable[[], Any], reference: Callable[[], Any], clock: Callable[[], float]) -> Tuple[float, int]:
    """``(kernel time / reference time, calls made)`` for one grid cell, measured adaptively.

    One untimed-for-the-result first call each (allocations, prepared weights) sizes a sample: ``n`` calls, as
    many as make ``SAMPLE_S`` (at most ``MAX_NUMBER``). Then pairs of samples, the order alternating, each pair
    giving one ratio: after ``MIN_PAIRS`` pairs it stops once every ratio lies on the same side of 1 by more
    than ``CLEAR`` (the answer cannot change), or once the cell has used ``CELL_BUDGET_S`` of ``clock``; never
    more than ``MAX_PAIRS``. The ratio is the median of the pairs'. At most ``MAX_CALLS`` calls."""
    def timed(fn: Callable[[], Any], number: int) -> float:
        started = clock()
        for _ in range(number):
            fn()
        return clock() - started

    started = clock()
    once = max(timed(kernel, 1), timed(reference, 1), 1e-6)
    number = max(1, min(MAX_NUMBER, math.ceil(SAMPLE_S / once)))
    calls, ratios = 2, []
    for pair in range(MAX_PAIRS):
        if pair % 2 == 0:
            k, r = timed(kernel, number), timed(reference, number)
        else:
            r, k = timed(reference, number), timed(kernel, number)
        calls += 2 * number
        ratios.append(k / max(r, 1e-9))
        if len(ratios) >= MIN_PAIRS and (max(ratios) < 1 - CLEAR or min(ratios) > 1 + CLEAR
                                         or clock() - started > CELL_BUDGET_S):
            break
    return statistics.median(ratios), calls


def measure(threads: int, capability: str, progress: Optional[Callable[[str], None]] = None,
            case: Optional[Callable[[str, int, int, bool, bool], Callable[[], Any]]] = None,
            clock: Optional[Callable[[], float]] = None) -> Dict[str, Any]:
    """Time every grid cell on the kernel (``cpu_kernel.forced()``) and on PyTorch's kernels
    (``cpu_kernel.disabled()``) at ``threads``, interleaved (``ratio``). Returns the calibration's data (not yet
    saved), with the calls it made. ``case`` (the cell's step, default ``_case``) and ``clock`` (default
    ``_clock(threads)``) are there for tests."""
    from .. import cpu_kernel

    if not cpu_kernel.available():
        raise RuntimeError("the CPU kernel is not available here: nothing to calibrate")
    case = case or _case
    clock = clock or _clock(threads)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    started, cpu_started = time.perf_counter(), time.process_time()
    def one(cell: str, batch: int, hidden: int, lengths: bool, training: bool, past: bool = False) -> float:
        fn = case(cell, batch, hidden, lengths, training)

        def on_kernel() -> None:
            with cpu_kernel.forced():
                fn()

        def on_torch() -> None:
            with cpu_kernel.disabled():
                fn()
        measured, calls = ratio(on_kernel, on_torch, clock)
        rows.append({"cell": cell, "batch": batch, "hidden": hidden, "lengths": lengths, "training": training,
                     "ratio": round(measured, 4), "calls": calls, **({"past": True} if past else {})})
        if progress is not None:
            progress(f"{cell} B={batch} H={hidden} lengths={lengths} training={training}: {measured:.2f}x "
                     f"({calls} calls)")
        return measured

    try:
        for cell in CELLS:
            for training in (False, True):
                for lengths in LENGTHS:
                    corner = [one(cell, b, h, lengths, training) for b in BATCHES for h in HIDDENS][-1]
                    if not training and EXTEND < corner <= THRESHOLD:
                        for batch, hidden in LARGER:
                            one(cell, batch, hidden, lengths, training, past=True)
    finally:
        torch.set_num_threads(previous)
    return {"format": FORMAT, "identity": identity(threads, capability), "steps": STEPS,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round(time.process_time() - cpu_started, 1), "calls": sum(row["calls"] for row in rows),
            "rows": rows}


def save(data: Dict[str, Any], folder: Optional[Path] = None) -> Dict[str, Any]:
    """Write ``data`` (``measure()``'s) atomically to its cache path; the process uses it from now on."""
    global policy_version
    from ...atomic import write_atomically

    ident = data["identity"]
    path = cache_path(int(ident["threads"]), str(ident["capability"]), folder)
    write_atomically(path, json.dumps(data, indent=1) + "\n")
    with _lock:
        _loaded[(int(ident["threads"]), str(ident["capability"]))] = Calibration(data)
        policy_version += 1
    return data


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()],
                        help="thread counts to calibrate (default: torch's current, %(default)s)")
    parser.add_argument("--show", action="store_true", help="print the cached calibrations; measure nothing")
    args = parser.parse_args(argv)
    from .. import cpu_kernel

    capability = cpu_kernel.capability()
    if capability is None:
        raise SystemExit("the CPU kernel is not available here (see models.blocks.cpu_kernel.available()): "
                         "the blocks use PyTorch's kernels, nothing to calibrate")
    for threads in args.threads:
        if threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {threads}")
        path = cache_path(threads, capability)
        if args.show:
            found = _read(path)
            print(f"{threads} thread(s): {path if found else 'none (the fixed table)'}")
            for row in (found.data["rows"] if found else []):
                print(f"  {row['cell']:4} B={row['batch']:<3} H={row['hidden']:<3} lengths={row['lengths']!s:5} "
                      f"training={row['training']!s:5} kernel/torch {row['ratio']:.2f}x")
            continue
        print(f"calibrating {capability} on {threads} thread(s) ({_cpu_model()})", file=sys.stderr)
        data = save(measure(threads, capability, progress=lambda line: print("  " + line, file=sys.stderr)))
        wins = sum(row["ratio"] <= THRESHOLD for row in data["rows"])
        print(f"{threads} thread(s): {wins}/{len(data['rows'])} cells on the kernel, measured in {data['seconds']} s "
              f"({data['cpu_seconds']} s of CPU time, {data['calls']} calls); written {path}")


if __name__ == "__main__":
    # Run as a script this file is `__main__`; the policy reads models.blocks.cpu_kernel.calibrate: one module,
    # one cache and one pin, so run that module's main.
    from models.blocks.cpu_kernel import calibrate as package_module

    package_module.main()
