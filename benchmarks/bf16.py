"""``python -m benchmarks.bf16 [--batches 1 16 64] [--hidden 128 256 512] [--threads 1 2] [--out FILE]``: bf16
inference on the CPU kernel (``models/blocks/cpu_kernel/bf16.py``: ``vdpbf16ps``, and AMX tiles where the CPU has
them) against the float32 kernel and oneDNN's bf16 ``nn.LSTM`` under ``torch.autocast("cpu", dtype=torch.bfloat16)``,
on the same weights and input (issue 35).

Columns: ``bf16`` is the kernel on ``vdpbf16ps`` alone (``bf16.without_amx()``); on a CPU where ``bf16.amx_supported()``
a fourth runtime, ``bf16_amx``, is the kernel as it runs by default there (AMX tiles for the products that fill them),
timed in the same rounds, with its ratios to the other three.

Each row: ``BiLSTM``, 2 layers, ``concat`` (what ``nn.LSTM(bidirectional=True)`` computes), input size H, T = 64,
time-major, inference (``torch.inference_mode``). The three runtimes run in this one process (all three are PyTorch
with one thread setting), timed in interleaved rounds (order rotating) on the wall clock; ratios are medians over
rounds of bf16 kernel / other within the round. Error: max and mean of ``|output - float32 block's output|`` for
the bf16 kernel and for oneDNN's bf16 LSTM.

Prediction, written before the first full run (AMD EPYC Zen 4, family 25 model 17, AVX512_BF16, no AMX): ``vdpbf16ps``
does 32 multiply-adds an instruction against 16 for a float32 FMA, at the same rate on Zen 4, and the gate math is
unchanged, so bf16 / float32 kernel about 0.5-0.6 at B >= 16 (the goal: <= 0.5), 0.6-0.8 at B = 1 (fixed costs and
the weights' memory traffic, half in bf16); against oneDNN's bf16 LSTM 0.5-0.7 at B = 1 (its per-call setup),
about 0.9-1.1 at B = 16 and 1.0-1.3 at B = 64 (its large GEMMs are better blocked than the kernel's 4 x 64 tile).
Error against float32: max 1e-2..3e-2, mean 1e-3..3e-3, the same order for both (bf16 keeps 8 significant bits).
Measured: ``benchmarks/RESULTS.md``. The AMX prediction (a 2-core AMX Xeon) is ``PREDICTION_AMX``, recorded in its
result file.

Results: ``benchmarks/results/bf16.json`` and a Markdown table on stdout.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no OpenMP spinning between turns

import argparse
import statistics
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from .harness import Column, error_column, grid, in_process, interleaved, log, number_column, table, write_results
from .machine import describe, load_average

RESULTS = Path(__file__).resolve().parent / "results"
BATCHES, HIDDEN, THREADS, STEPS, LAYERS = (1, 16, 64), (128, 256, 512), (1, 2), 64, 2
RUNTIMES = ("float32", "bf16", "onednn_bf16")
AMX = "bf16_amx"


def runners(batch: int, hidden: int, amx: bool) -> Dict[str, Callable[[], torch.Tensor]]:
    """The runtimes of one row on seeded weights and input (``bf16_amx`` too when ``amx``)."""
    from models import BiLSTM
    from models.blocks import cpu_kernel
    from models.blocks.cpu_kernel import bf16 as bf16_kernel

    torch.manual_seed(hidden)
    block = BiLSTM(hidden, hidden, LAYERS, merge_mode="concat").eval()
    reference = nn.LSTM(hidden, hidden, LAYERS, bidirectional=True).eval()
    reference.load_state_dict(block.state_dict())
    x = torch.randn(STEPS, batch, hidden, generator=torch.Generator().manual_seed(batch * 1000 + hidden))

    def float32() -> torch.Tensor:
        with torch.inference_mode(), cpu_kernel.forced():
            return block(x)[0]

    def bf16() -> torch.Tensor:  # forced: the kernel even where bf16.onednn_wins would send it to oneDNN
        with (torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16), cpu_kernel.forced(),
              bf16_kernel.without_amx()):
            return block(x)[0]

    def bf16_amx() -> torch.Tensor:
        if not bf16_kernel.amx_used():
            raise RuntimeError("the bf16 kernel would not use AMX tiles here (BIRNN_ZOO_BF16_AMX=0?)")
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16), cpu_kernel.forced():
            return block(x)[0]

    def onednn_bf16() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return reference(x)[0]

    fns = {"float32": float32, "bf16": bf16, "onednn_bf16": onednn_bf16}
    if amx:
        fns[AMX] = bf16_amx
    return fns


def run_row(batch: int, hidden: int, threads: int, budget_s: float, amx: bool = False) -> Dict[str, Any]:
    torch.set_num_threads(threads)
    fns = runners(batch, hidden, amx)
    full = fns["float32"]().float()
    errors: Dict[str, float] = {}
    for key in [k for k in fns if k != "float32"]:
        low = fns[key]()
        if low.dtype != torch.bfloat16:
            raise RuntimeError(f"{key} returned {low.dtype}: autocast was not taken")
        diff = (low.float() - full).abs()
        errors[f"{key}_max_abs_error"] = float(diff.max())
        errors[f"{key}_mean_abs_error"] = float(diff.mean())
    series = interleaved({key: in_process(fn) for key, fn in fns.items()}, budget_s=budget_s, max_rounds=50)
    rounds = len(series["bf16"].samples)

    def ratio(key: str, over: str = "bf16") -> float:
        return statistics.median(series[over].samples[i] / series[key].samples[i] for i in range(rounds))

    row = {
        "cell": "LSTM", "layers": LAYERS, "merge": "concat", "T": STEPS, "B": batch, "H": hidden,
        "threads": threads, "clock": "wall", "rounds": rounds,
        **{f"{key}_ms": 1e3 * series[key].median for key in fns},
        "bf16_over_float32": ratio("float32"), "bf16_over_onednn_bf16": ratio("onednn_bf16"),
        **errors, "load_average": load_average(),
    }
    if amx:
        row.update({f"{AMX}_over_{key}": ratio(key, AMX) for key in RUNTIMES})
    return row


COLUMNS_AMX: List[Column] = [
    ("H", lambda r: r["H"]), ("B", lambda r: r["B"]), ("threads", lambda r: r["threads"]),
    number_column("float32 kernel ms", "float32_ms"), number_column("vdpbf16ps ms", "bf16_ms"),
    number_column("AMX ms", "bf16_amx_ms"), number_column("oneDNN bf16 ms", "onednn_bf16_ms"),
    number_column("AMX / float32", "bf16_amx_over_float32", bold=True),
    number_column("AMX / oneDNN bf16", "bf16_amx_over_onednn_bf16", bold=True),
    number_column("AMX / vdpbf16ps", "bf16_amx_over_bf16"),
    number_column("vdpbf16ps / float32", "bf16_over_float32"),
    error_column("err max / mean (AMX)", "bf16_amx"),
    error_column("err max / mean (oneDNN)", "onednn_bf16"),
    ("load", lambda r: "-" if r.get("load_average") is None else f"{r['load_average']:.1f}"),
]

COLUMNS: List[Column] = [
    ("H", lambda r: r["H"]), ("B", lambda r: r["B"]), ("threads", lambda r: r["threads"]),
    number_column("float32 kernel ms", "float32_ms"), number_column("bf16 kernel ms", "bf16_ms"),
    number_column("oneDNN bf16 ms", "onednn_bf16_ms"),
    number_column("bf16 / float32", "bf16_over_float32", bold=True),
    number_column("bf16 / oneDNN bf16", "bf16_over_onednn_bf16", bold=True),
    error_column("err max / mean (kernel)", "bf16"),
    error_column("err max / mean (oneDNN)", "onednn_bf16"),
]


# Written before the first full run (the module docstring says why).
PREDICTION = ("Prediction (before measuring): bf16 / float32 kernel 0.5-0.6 at B >= 16, 0.6-0.8 at B = 1; bf16 / "
              "oneDNN bf16 0.5-0.7 at B = 1, 0.9-1.1 at B = 16, 1.0-1.3 at B = 64; error against float32 max "
              "1e-2..3e-2, mean 1e-3..3e-3 for both.")


# Written before the interleaved run of the AMX path on a 2-core AMX Xeon (KVM's family 6 model 167), after the
# "before" run of this benchmark there (vdpbf16ps alone) and one exploratory timing of the new path (best of 5,
# load average 3.6-4.3): its numbers are in this prediction's ranges.
PREDICTION_AMX = ("Prediction (written before this run, after one exploratory timing on the loaded machine): AMX / "
                  "float32 kernel 0.15-0.35 at B >= 16 (goal <= 0.5) and 0.2-0.65 at B = 1 (there only the input "
                  "products fill tiles); AMX / oneDNN bf16 0.3-0.5 at B = 1, 0.4-1.0 at B >= 16 with one thread, "
                  "up to 1.1 at two threads and B = 64 (oneDNN splits its GEMMs over both threads, the kernel runs "
                  "one direction a thread); AMX / vdpbf16ps 0.1-0.3 at B >= 16; error against float32 as "
                  "vdpbf16ps's (max about 1e-3, mean about 1.3e-4).")


def markdown(document: Dict[str, Any]) -> str:
    rows = document["rows"]
    amx = bool(rows) and all(f"{AMX}_ms" in r for r in rows)
    head = (f"BiLSTM, {LAYERS} layers concat, T={STEPS}, input size H, inference; one process, interleaved rounds, "
            "wall clock; ratios: medians over rounds; err: |output - float32 block's output|"
            + ("; vdpbf16ps: the bf16 kernel without AMX (`bf16.without_amx()`), AMX: as it runs by default here; "
               "load: the 1-minute load average after the row." if amx else "."))
    summary = (document.get("machine") or {}).get("summary")
    machine = [f"Machine: {summary}.", ""] if summary else []
    note = [document["note"], ""] if document.get("note") else []  # the measurement against the prediction
    return "\n".join([head, "", *machine, document.get("prediction", PREDICTION), "", *note,
                      *table(COLUMNS_AMX if amx else COLUMNS, rows)])


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=list(THREADS))
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--hidden", type=int, nargs="+", default=list(HIDDEN))
    parser.add_argument("--budget", type=float, default=1.5, help="seconds of interleaved rounds per row (>= 3 rounds)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bf16.json", help="JSON file")
    args = parser.parse_args(argv)
    from models.blocks.cpu_kernel import bf16

    if not bf16.supported():
        raise SystemExit("no bf16 kernel here (needs the CPU kernel's avx512 build and a CPU with AVX512_BF16)")
    amx = bf16.amx_used()
    machine = describe("cpu", max(args.threads))
    document: Dict[str, Any] = {"machine": machine, "rows": []}
    if amx:
        document["prediction"] = PREDICTION_AMX
    for case in grid(threads=args.threads, H=args.hidden, B=args.batches):
        row = run_row(case["B"], case["H"], case["threads"], args.budget, amx)
        document["rows"].append(row)
        log(f"H={row['H']} B={row['B']} threads={row['threads']}: bf16/float32 {row['bf16_over_float32']:.2f}, "
            f"bf16/oneDNN {row['bf16_over_onednn_bf16']:.2f}, err {row['bf16_max_abs_error']:.1e}"
            + (f"; AMX/float32 {row['bf16_amx_over_float32']:.2f}, AMX/oneDNN {row['bf16_amx_over_onednn_bf16']:.2f}"
               if amx else ""))
        write_results(args.out, document)
    print(f"Machine: {machine['summary']}; kernel {machine['kernel_capability']}")
    print(markdown(document))


if __name__ == "__main__":
    main()
