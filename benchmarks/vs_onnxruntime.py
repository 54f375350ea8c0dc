"""``python -m benchmarks.vs_onnxruntime [--threads 1 2] [--cells LSTM GRU] [--quick]``: the blocks' eager
inference against ONNX Runtime's fused ``LSTM``/``GRU`` operators on the same weights (issue 18).

Each row: 2 layers, bidirectional ``concat``, batch-first, float32, input size H, inference
(``torch.inference_mode``), with or without ``lengths`` (one row full length, the others uniform in [T/2, T]);
ONNX Runtime runs ``benchmarks/onnx_rnn.py``'s graph (``sequence_lens`` for ``lengths``).

Every runtime (the block, ONNX Runtime and, without lengths, ``nn.LSTM``/``nn.GRU``) runs in its own worker
process (``benchmarks/process_timing.py``, ``spawn``) with the row's thread count: ``torch.set_num_threads``, or
ONNX Runtime's ``intra_op_num_threads`` with ``inter_op_num_threads=1`` and its default spin-waiting pool (what a
deployment gets; the parent pauses 50 ms before each turn so that a pool spinning after its run has parked). In
one process, ONNX Runtime's pool took the block's second core at two threads. The parent writes the seeded
weights and inputs once per row (a ``torch.save`` of plain tensors and the ``.onnx`` file) and keeps the
interleaving: in each round it asks each worker in turn (rotating the order) to run its call N times and report
the seconds, one worker at a time. Workers live across the rows of a thread count. The ratio is the median over
rounds of block / ONNX Runtime within the round (paired, so load that drifts hits both); "best / best" divides
the fastest rounds (the closest estimate of an idle machine). One thread: the worker's process CPU time, so
other processes on a shared machine do not count; two threads: wall time. Outputs, ``h_n`` and ``c_n`` are
checked equal first (max abs difference in the JSON, ``outputs_equal`` within 1e-5).

Results: ``benchmarks/results/vs_onnxruntime-<capability>.json`` (rows appended as they finish, the machine at the
top) and a Markdown table on stdout.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (the workers inherit it): no OpenMP spinning

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from . import onnx_rnn
from .harness import Column, grid, log, table, write_results
from .machine import describe, load_average
from .process_timing import Factory, WorkerPool, interleaved

RESULTS = Path(__file__).resolve().parent / "results"
BATCHES, STEPS, HIDDEN = (1, 16, 64), (64, 512), (128, 256)
TOLERANCE = 1e-5  # max abs difference of block and ONNX Runtime outputs (float32; measured 1e-7 to 6e-7)


def make_lengths(batch: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """One row of full length, the rest uniform in [T/2, T]."""
    lengths = torch.randint(steps // 2, steps + 1, (batch,), generator=generator)
    lengths[0] = steps
    return lengths


def write_row(cell: str, batch: int, steps: int, hidden: int, with_lengths: bool, folder: Path) -> Dict[str, Any]:
    """Seeded weights and inputs of one row, written once for the workers: ``<row>.pt`` (state_dict, ``x``,
    ``lengths``: plain tensors, read back with ``weights_only=True``) and ``<row>.onnx`` (the same weights as ONNX
    Runtime's graph). Returns the workers' spec, less ``threads``."""
    stem = folder / f"{cell}-T{steps}-H{hidden}-B{batch}-{'lengths' if with_lengths else 'full'}"
    spec = {"cell": cell, "hidden": hidden, "tensors": str(stem.with_suffix(".pt")),
            "onnx": str(stem.with_suffix(".onnx"))}
    if stem.with_suffix(".pt").exists():  # the same row at another thread count
        return spec
    generator = torch.Generator().manual_seed(batch * 1000 + steps + hidden)
    torch.manual_seed(steps + hidden)
    reference = (nn.LSTM if cell == "LSTM" else nn.GRU)(hidden, hidden, 2, batch_first=True,
                                                         bidirectional=True).eval()
    tensors = {"state_dict": reference.state_dict(), "x": torch.randn(batch, steps, hidden, generator=generator)}
    if with_lengths:
        tensors["lengths"] = make_lengths(batch, steps, generator)
    torch.save(tensors, spec["tensors"])
    stem.with_suffix(".onnx").write_bytes(onnx_rnn.build(reference, with_lengths))
    return spec


# The three runtimes, each built inside its own worker from a row's spec (benchmarks/process_timing.py).

def block_runner(spec: Dict[str, Any]) -> Tuple[Callable[[], Any], Dict[str, Any]]:
    """The block's inference call, and whether its CPU kernel applies at the worker's thread count."""
    # Imported here, not at the top: every worker re-imports this module (spawn), and only this one needs
    # models (whose import, torch._dynamo included, takes seconds).
    from models import BiGRU, BiLSTM
    from models.blocks import cpu_kernel

    saved = torch.load(spec["tensors"], weights_only=True)
    cell, hidden, x, lengths = spec["cell"], spec["hidden"], saved["x"], saved.get("lengths")
    block = (BiLSTM if cell == "LSTM" else BiGRU)(hidden, hidden, 2, batch_first=True, merge_mode="concat").eval()
    block.load_state_dict(saved["state_dict"])

    def run() -> Any:
        with torch.inference_mode():
            return block(x, lengths=lengths) if lengths is not None else block(x)

    return run, {"kernel": cpu_kernel.applies(x.transpose(0, 1), cell, hidden, lengths is not None, False)}


def ort_runner(spec: Dict[str, Any]) -> Tuple[Callable[[], Any], Dict[str, Any]]:
    """ONNX Runtime's session on the row's graph with its defaults (spin-waiting pool included)."""
    saved = torch.load(spec["tensors"], weights_only=True)
    feeds = {"x": saved["x"].numpy()}
    if "lengths" in saved:
        feeds["lengths"] = saved["lengths"].numpy().astype(np.int32)
    session = onnx_rnn.session(spec["onnx"], spec["threads"])
    return (lambda: session.run(None, feeds)), {}


def nn_runner(spec: Dict[str, Any]) -> Tuple[Callable[[], Any], Dict[str, Any]]:
    """``nn.LSTM``/``nn.GRU`` with the same weights (rows without lengths)."""
    saved = torch.load(spec["tensors"], weights_only=True)
    hidden, x = spec["hidden"], saved["x"]
    reference = (nn.LSTM if spec["cell"] == "LSTM" else nn.GRU)(hidden, hidden, 2, batch_first=True,
                                                                 bidirectional=True).eval()
    reference.load_state_dict(saved["state_dict"])

    def run() -> Any:
        with torch.inference_mode():
            return reference(x)

    return run, {}


def run_row(pool: WorkerPool, folder: Path, cell: str, batch: int, steps: int, hidden: int, with_lengths: bool,
            threads: int, budget_s: float, with_nn: bool = True, min_time: float = 0.05) -> Dict[str, Any]:
    """One row: outputs checked equal, then interleaved rounds over the block's, ONNX Runtime's and (without
    lengths) ``nn.*``'s workers of ``pool`` at ``threads`` threads."""
    spec = {**write_row(cell, batch, steps, hidden, with_lengths, folder), "threads": threads}
    runners: Dict[str, Factory] = {"block": block_runner, "ort": ort_runner}
    if not with_lengths and with_nn:
        runners["nn"] = nn_runner
    workers = {key: pool.get(key, threads) for key in runners}  # all started before the first load: imports overlap
    infos = {key: workers[key].call("load", runner, spec) for key, runner in runners.items()}
    ours, theirs = workers["block"].call("output"), workers["ort"].call("output")
    diff = max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs, strict=True))
    if not diff <= TOLERANCE:
        log(f"{cell} T={steps} H={hidden} B={batch}: block and ONNX Runtime differ by {diff:.1e} (> {TOLERANCE})")
    # One thread: process CPU time, so other processes on a shared machine do not count (ONNX Runtime with one
    # intra-op thread runs on the calling thread, the kernel too); more threads: wall time.
    samples = interleaved(workers, threads == 1, budget_s, min_time=min_time)
    rounds = len(samples["block"])
    ratios = [samples["block"][i] / samples["ort"][i] for i in range(rounds)]
    row: Dict[str, Any] = {
        "cell": cell, "B": batch, "T": steps, "H": hidden, "lengths": with_lengths, "threads": threads,
        "clock": "process_cpu" if threads == 1 else "wall", "rounds": rounds,
        "block_ms": 1e3 * statistics.median(samples["block"]), "ort_ms": 1e3 * statistics.median(samples["ort"]),
        "block_over_ort": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        # fastest round of each: the closest estimate of an idle machine when other jobs share the cores
        "best_block_over_best_ort": min(samples["block"]) / min(samples["ort"]),
        "max_abs_diff": diff, "outputs_equal": diff <= TOLERANCE, "kernel": infos["block"]["kernel"],
    }
    if "nn" in samples:
        row["nn_ms"] = 1e3 * statistics.median(samples["nn"])
        row["block_over_nn"] = statistics.median(
            [samples["block"][i] / samples["nn"][i] for i in range(rounds)])
    row["load_average"] = load_average()
    return row


COLUMNS: List[Column] = [
    ("cell", lambda r: r["cell"]), ("T", lambda r: r["T"]), ("H", lambda r: r["H"]), ("B", lambda r: r["B"]),
    ("lengths", lambda r: "yes" if r["lengths"] else "no"), ("threads", lambda r: r["threads"]),
    ("block ms", lambda r: f"{r['block_ms']:.2f}"), ("ORT ms", lambda r: f"{r['ort_ms']:.2f}"),
    ("block / ORT (min-max)", lambda r: f"**{r['block_over_ort']:.2f}** ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"),
    ("best / best", lambda r: f"{r['best_block_over_best_ort']:.2f}"),
    ("block / nn.*", lambda r: f"{r['block_over_nn']:.2f}" if "block_over_nn" in r else "-"),
    ("max abs diff", lambda r: f"{r['max_abs_diff']:.1e}")]


def markdown(rows: List[Dict[str, Any]]) -> str:
    return "\n".join(table(COLUMNS, rows))


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=(
        "Each runtime (block, ONNX Runtime, nn.*) runs in its own worker process with the given thread count; "
        "the workers are timed one at a time in interleaved rounds, and a row's ratio is the median over rounds of "
        "block / ONNX Runtime. One thread: process CPU time; more threads: wall time."))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="thread counts (each runtime's worker processes are started once per count)")
    parser.add_argument("--cells", nargs="+", default=["LSTM", "GRU"], choices=["LSTM", "GRU"])
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    parser.add_argument("--hidden", type=int, nargs="+", default=list(HIDDEN))
    parser.add_argument("--lengths", nargs="+", default=["no", "yes"], choices=["no", "yes"])
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of interleaved rounds per row (>= 3 rounds)")
    parser.add_argument("--no-nn", action="store_true", help="skip timing nn.LSTM/nn.GRU (a third of the time)")
    parser.add_argument("--quick", action="store_true", help="B=1 and 16, T=64, H=128: about a minute")
    parser.add_argument("--omp-wait-policy", choices=["PASSIVE", "ACTIVE", "default"], default=None,
                        help="OpenMP wait policy of the workers (the block's and nn.*'s; ONNX Runtime has its own "
                             "pool). Default: the environment's, PASSIVE if unset; 'default': libgomp's own, which "
                             "spins ~300,000 iterations before sleeping (what a deployment that sets nothing gets)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default results/vs_onnxruntime-<cap>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.steps, args.hidden = [1, 16], [64], [128]
    import onnxruntime

    from models.blocks import cpu_kernel  # only the parent and the block's worker import models (see block_runner)

    if not cpu_kernel.available():
        log("the CPU kernel is not available: the blocks run on PyTorch's kernels")
    out = args.out or RESULTS / f"vs_onnxruntime-{cpu_kernel.capability() or 'none'}.json"
    machine = describe("cpu", max(args.threads))
    machine["onnxruntime"] = onnxruntime.__version__
    machine["capability"] = cpu_kernel.capability()
    machine["processes"] = "one worker process per runtime"  # earlier files: all runtimes in one process
    if args.omp_wait_policy == "default":  # the workers are spawned with this environment
        os.environ.pop("OMP_WAIT_POLICY", None)
    elif args.omp_wait_policy:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    machine["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "unset (libgomp's default)")
    torch.set_num_threads(1)  # the parent only writes inputs; it waits on a pipe while a worker is timed
    rows: List[Dict[str, Any]] = []
    # The pool is listed last so that it closes (its workers exit) before the folder they read is removed.
    with tempfile.TemporaryDirectory(prefix="vs_onnxruntime-") as folder, WorkerPool() as pool:
        for case in grid(cell=args.cells, T=args.steps, H=args.hidden, B=args.batches, lengths=args.lengths,
                         threads=args.threads):  # the rows, in this order
            cell, steps, hidden, batch, lengths, threads = case.values()
            row = run_row(pool, Path(folder), cell, batch, steps, hidden, lengths == "yes", threads, args.budget,
                          not args.no_nn)
            rows.append(row)
            log(f"{cell} T={steps} H={hidden} B={batch} lengths={lengths} threads={threads}: block "
                f"{row['block_ms']:.2f} ms, ORT {row['ort_ms']:.2f} ms, ratio {row['block_over_ort']:.2f} "
                f"(diff {row['max_abs_diff']:.1e})")
            write_results(out, {"machine": machine, "rows": rows})
    print(f"Machine: {machine['summary']}; onnxruntime {machine['onnxruntime']}; kernel {machine['capability']}")
    print(markdown(rows))


if __name__ == "__main__":
    main()
