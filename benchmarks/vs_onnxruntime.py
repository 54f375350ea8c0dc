"""``python -m benchmarks.vs_onnxruntime [--threads 1 2] [--cells LSTM GRU] [--quick]``: the blocks' eager
inference against ONNX Runtime's fused ``LSTM``/``GRU`` operators on the same weights (issue 18).

Each row: 2 layers, bidirectional ``concat``, batch-first, float32, input size H, inference
(``torch.inference_mode``), with or without ``lengths`` (one row full length, the others uniform in [T/2, T]);
ONNX Runtime runs ``benchmarks/onnx_rnn.py``'s graph (``sequence_lens`` for ``lengths``). Per row the block,
ONNX Runtime and (without lengths) ``nn.LSTM``/``nn.GRU`` are timed in interleaved rounds, rotating the order;
the ratio is the median over rounds of block / ONNX Runtime within the round (paired, so load that drifts hits
both); "best / best" divides the fastest rounds (the closest estimate of an idle machine: with two threads on a
shared 2-core machine, scheduling delays dominate the medians). One thread: process CPU time (ONNX Runtime with ``intra_op_num_threads=1`` runs on the calling thread,
the blocks' kernel too), so other processes on a shared machine do not count; two threads: wall time. Outputs,
``h_n`` and ``c_n`` are checked equal (max abs difference in the JSON) before timing.

Results: ``benchmarks/results/vs_onnxruntime-<capability>.json`` (rows appended as they finish, the machine at the
top) and a Markdown table on stdout.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no OpenMP spin-waiting on a shared machine

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from models import BiGRU, BiLSTM, cpu_kernel

from . import onnx_rnn
from .machine import describe

RESULTS = Path(__file__).resolve().parent / "results"
BATCHES, STEPS, HIDDEN = (1, 16, 64), (64, 512), (128, 256)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_lengths(batch: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """One row of full length, the rest uniform in [T/2, T]."""
    lengths = torch.randint(steps // 2, steps + 1, (batch,), generator=generator)
    lengths[0] = steps
    return lengths


def timed_rounds(fns: Dict[str, Callable[[], Any]], threads: int, budget_s: float, min_rounds: int = 3,
                 max_rounds: int = 21, min_time: float = 0.05) -> Dict[str, List[float]]:
    """Seconds per call of each callable, one sample per round, rounds interleaved with a rotating order."""
    clock = time.process_time if threads == 1 else time.perf_counter
    numbers = {}
    for key, fn in fns.items():
        fn()  # warm-up (first-call allocation, the block's prepared weights)
        start = clock()
        fn()
        once = max(clock() - start, 1e-6)
        numbers[key] = max(1, int(min_time / once + 0.999))
    samples: Dict[str, List[float]] = {key: [] for key in fns}
    keys = list(fns)
    started = time.perf_counter()
    for r in range(max_rounds):
        if r >= min_rounds and time.perf_counter() - started > budget_s:
            break
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            fn, number = fns[key], numbers[key]
            start = clock()
            for _ in range(number):
                fn()
            samples[key].append((clock() - start) / number)
    return samples


def run_row(cell: str, batch: int, steps: int, hidden: int, with_lengths: bool, threads: int,
            budget_s: float, with_nn: bool = True) -> Dict[str, Any]:
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(batch * 1000 + steps + hidden)
    torch.manual_seed(steps + hidden)
    reference = (nn.LSTM if cell == "LSTM" else nn.GRU)(hidden, hidden, 2, batch_first=True,
                                                         bidirectional=True).eval()
    block = (BiLSTM if cell == "LSTM" else BiGRU)(hidden, hidden, 2, batch_first=True, merge_mode="concat").eval()
    block.load_state_dict(reference.state_dict())
    x = torch.randn(batch, steps, hidden, generator=generator)
    lengths = make_lengths(batch, steps, generator) if with_lengths else None
    session = onnx_rnn.session(onnx_rnn.build(reference, with_lengths), threads)
    feeds = {"x": x.numpy()}
    if lengths is not None:
        feeds["lengths"] = lengths.numpy().astype(np.int32)

    def run_block() -> Any:
        with torch.inference_mode():
            return block(x, lengths=lengths) if lengths is not None else block(x)

    def run_ort() -> Any:
        return session.run(None, feeds)

    def run_nn() -> Any:
        with torch.inference_mode():
            return reference(x)

    out, state = run_block()
    ours = [out, *(state if cell == "LSTM" else (state,))]
    theirs = [torch.from_numpy(a) for a in run_ort()]
    diff = max(float((a - b).abs().max()) for a, b in zip(ours, theirs, strict=True))
    fns: Dict[str, Callable[[], Any]] = {"block": run_block, "ort": run_ort}
    if lengths is None and with_nn:
        fns["nn"] = run_nn
    samples = timed_rounds(fns, threads, budget_s)
    rounds = len(samples["block"])
    ratios = [samples["block"][i] / samples["ort"][i] for i in range(rounds)]
    row: Dict[str, Any] = {
        "cell": cell, "B": batch, "T": steps, "H": hidden, "lengths": with_lengths, "threads": threads,
        "clock": "process_cpu" if threads == 1 else "wall", "rounds": rounds,
        "block_ms": 1e3 * statistics.median(samples["block"]), "ort_ms": 1e3 * statistics.median(samples["ort"]),
        "block_over_ort": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        # fastest round of each: the closest estimate of an idle machine when other jobs share the cores
        "best_block_over_best_ort": min(samples["block"]) / min(samples["ort"]),
        "max_abs_diff": diff, "kernel": cpu_kernel.applies(x.transpose(0, 1), cell, hidden, with_lengths, False),
    }
    if "nn" in samples:
        row["nn_ms"] = 1e3 * statistics.median(samples["nn"])
        row["block_over_nn"] = statistics.median(
            [samples["block"][i] / samples["nn"][i] for i in range(rounds)])
    try:
        row["load_average"] = os.getloadavg()[0]
    except OSError:
        pass
    return row


def markdown(rows: List[Dict[str, Any]]) -> str:
    lines = ["| cell | T | H | B | lengths | threads | block ms | ORT ms | block / ORT (min-max) | best / best | "
             "block / nn.* | max abs diff |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        nn_ratio = f"{r['block_over_nn']:.2f}" if "block_over_nn" in r else "-"
        lines.append(f"| {r['cell']} | {r['T']} | {r['H']} | {r['B']} | {'yes' if r['lengths'] else 'no'} | "
                     f"{r['threads']} | {r['block_ms']:.2f} | {r['ort_ms']:.2f} | **{r['block_over_ort']:.2f}** "
                     f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | {r['best_block_over_best_ort']:.2f} | {nn_ratio} | "
                     f"{r['max_abs_diff']:.1e} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cells", nargs="+", default=["LSTM", "GRU"], choices=["LSTM", "GRU"])
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    parser.add_argument("--hidden", type=int, nargs="+", default=list(HIDDEN))
    parser.add_argument("--lengths", nargs="+", default=["no", "yes"], choices=["no", "yes"])
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of interleaved rounds per row (>= 3 rounds)")
    parser.add_argument("--no-nn", action="store_true", help="skip timing nn.LSTM/nn.GRU (a third of the time)")
    parser.add_argument("--quick", action="store_true", help="B=1 and 16, T=64, H=128: a minute")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default results/vs_onnxruntime-<cap>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.steps, args.hidden = [1, 16], [64], [128]
    if not cpu_kernel.available():
        log("the CPU kernel is not available: the blocks run on PyTorch's kernels")
    out = args.out or RESULTS / f"vs_onnxruntime-{cpu_kernel.capability() or 'none'}.json"
    import onnxruntime

    machine = describe("cpu", max(args.threads))
    machine["onnxruntime"] = onnxruntime.__version__
    machine["capability"] = cpu_kernel.capability()
    rows: List[Dict[str, Any]] = []
    for cell, steps, hidden, batch, lengths, threads in itertools.product(
            args.cells, args.steps, args.hidden, args.batches, args.lengths, args.threads):
        row = run_row(cell, batch, steps, hidden, lengths == "yes", threads, args.budget, not args.no_nn)
        rows.append(row)
        log(f"{cell} T={steps} H={hidden} B={batch} lengths={lengths} threads={threads}: block "
            f"{row['block_ms']:.2f} ms, ORT {row['ort_ms']:.2f} ms, ratio {row['block_over_ort']:.2f} "
            f"(diff {row['max_abs_diff']:.1e})")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    print(f"Machine: {machine['summary']}; onnxruntime {machine['onnxruntime']}; kernel {machine['capability']}")
    print(markdown(rows))


if __name__ == "__main__":
    main()
