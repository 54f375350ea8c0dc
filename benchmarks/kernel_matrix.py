"""``python -m benchmarks.kernel_matrix [--threads 1 2] [--cells LSTM GRU] [--modes infer train] [--quick]``.

The measurements behind ``models/blocks/cpu_kernel/policy.py``: for each cell, thread count, inference or training step,
B in {1, 16, 64, 256}, H in {64, 128, 256, 512}, T in {64, 512} (one bidirectional layer, input size H; a training
step's input is data, or with ``--input-grad`` gets its gradient too, as every layer of a stack after the first), four
variants timed side by side in interleaved rounds:

- ``nn``: ``nn.LSTM``/``nn.GRU(bidirectional=True)``, no lengths (what the block must never be slower than);
- ``kernel``: the block (``concat``) on the CPU kernel, no lengths;
- ``kernel_len`` / ``aten_len``: the block with ``lengths`` (one row full length, the rest uniform in [1, T]) on
  the kernel / on PyTorch's kernels.

Configurations whose forward pass exceeds ``--max-gflop`` are skipped (on 2 cores the largest would take
minutes a step); the JSON says which. Results go to ``benchmarks/results/kernel_matrix-<capability>.json``, one
row per configuration, appended as they finish, each with the path the blocks' policy takes there (this CPU's
calibration where one is cached, else the fixed table), with the machine (CPU model and flags) and the policy's
record per thread count at the top. The report lists every cell above ``LIMIT`` (1.02x ``nn.*``) under it.

An AVX2 CPU on an AVX-512 one: ``BIRNN_ZOO_CPU_CAPABILITY=avx2`` alone sets the kernel's library against PyTorch's
AVX-512 kernels; capping those too (``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``,
calibrated under the same variables) runs both sides as an AVX2 CPU would. The file's ``machine.reference_isa`` says
which.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no OpenMP spin-waiting on a shared machine

import argparse
import contextlib
import json
import statistics
import subprocess
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from models import BiGRU, BiLSTM
from models.blocks import cpu_kernel
from models.blocks.cpu_kernel import calibrate

from .harness import Column, grid, in_process, interleaved, log, table, write_results
from .machine import describe

RESULTS = Path(__file__).resolve().parent / "results"
BATCHES, HIDDEN, STEPS = (1, 16, 64, 256), (64, 128, 256, 512), (64, 512)
LIMIT = 1.02  # the most a block may cost relative to nn.* under the policy (noise of a shared machine included)


def gflop(cell: str, batch: int, hidden: int, steps: int) -> float:
    """Forward GFLOP of one bidirectional layer with input size H: (x and h) @ W for G = 4H | 3H, both ways."""
    gates = (4 if cell == "LSTM" else 3) * hidden
    return 2 * 2 * steps * batch * (2 * hidden) * gates / 1e9


def cpu_flags() -> str:
    """``lscpu``'s model name and the vector flags that matter here."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "lscpu unavailable"
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("Flags")), [])
    wanted = [f for f in flags if f in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_bf16")]
    return f"{model}; {' '.join(wanted)}"


def variants(cell: str, batch: int, hidden: int, steps: int, train: bool, input_grad: bool = False
             ) -> Dict[str, Callable[[], None]]:
    """The four timed calls of one configuration; ``input_grad``: training steps also compute the input's gradient."""
    reference = getattr(nn, cell)(hidden, hidden, bidirectional=True)
    block = (BiLSTM if cell == "LSTM" else BiGRU)(hidden, hidden)
    block.load_state_dict(reference.state_dict())
    if not train:  # inference is eval mode: the kernel's prepared weights are cached only there
        reference.eval()
        block.eval()
    x = torch.randn(steps, batch, hidden, requires_grad=train and input_grad)
    lengths = torch.randint(1, steps + 1, (batch,))
    lengths[0] = steps

    def step(module: nn.Module, switch: Optional[Callable[[], Any]], **kwargs: Any) -> Callable[[], None]:
        def run() -> None:
            with switch() if switch else contextlib.nullcontext():
                if train:
                    module(x, **kwargs)[0].sum().backward()
                else:
                    with torch.no_grad():
                        module(x, **kwargs)
        return run

    return {"nn": step(reference, None), "kernel": step(block, cpu_kernel.forced),
            "kernel_len": step(block, cpu_kernel.forced, lengths=lengths),
            "aten_len": step(block, cpu_kernel.disabled, lengths=lengths)}


def timed_rounds(items: Dict[str, Callable[[], None]], threads: int, rounds: int, clock: str
                 ) -> Dict[str, List[float]]:
    """Seconds per call of each item, ``rounds`` interleaved rounds in rotating order, each sample at least
    ~50 ms of calls. ``clock="process"`` (one thread) counts this process's CPU time: on a machine shared with
    other jobs it does not count the time the core spent on them, where wall time would."""
    torch.set_num_threads(threads)
    series = interleaved({key: in_process(fn) for key, fn in items.items()}, clock="cpu" if clock == "process" else
                         "wall", min_time=0.05, first_calls=2, min_rounds=rounds, floor_s=1e-4)
    return {key: s.samples for key, s in series.items()}


def policy_choice(cell: str, batch: int, hidden: int, steps: int, threads: int, train: bool) -> Dict[str, Any]:
    """What the blocks' policy (``cpu_kernel.kernel_chosen``: this CPU's calibration where there is one, else the
    fixed table) takes for this configuration, without and with ``lengths``, and what it decided with."""
    source = calibrate.record(threads, cpu_kernel.capability())["source"]
    return {"source": source, **{key: cpu_kernel.kernel_chosen(cell, batch, hidden, steps, lengths, train,
                                                               threads=threads)
                                 for key, lengths in (("kernel", False), ("kernel_len", True))}}


def _takes_kernel(row: Dict[str, Any], lengths: bool, capability: str) -> bool:
    """The path the row's policy took (recorded with the row), or the fixed table's for rows measured before the
    policy was recorded."""
    from models.blocks.cpu_kernel.policy import kernel_wins

    if "policy" in row:
        return bool(row["policy"]["kernel_len" if lengths else "kernel"])
    return kernel_wins(row["cell"], row["B"], row["H"], row["T"], lengths, row["threads"], capability,
                       row["mode"] == "train")


def under_policy(row: Dict[str, Any], capability: str) -> Dict[str, Tuple[float, float]]:
    """The block's cost relative to ``nn.*`` on the path its policy takes and on the other one:
    ``{"no lengths": (taken, other), "lengths": (taken, other)}`` (PyTorch's path without lengths is ``nn.*``)."""
    plain, padded = (row["kernel/nn"], 1.0), (row["kernel_len/nn"], row["aten_len/nn"])
    return {"no lengths": plain if _takes_kernel(row, False, capability) else plain[::-1],
            "lengths": padded if _takes_kernel(row, True, capability) else padded[::-1]}


def report(document: Dict[str, Any]) -> str:
    """Markdown: per cell, step kind and thread count, a (T, B) x H table of what the block costs relative to
    ``nn.*`` under the policy (the one recorded with each row: this CPU's calibration or the fixed table of
    ``models/blocks/cpu_kernel/policy.py``): ``no lengths · lengths``, with the path the policy takes (``k``
    kernel, ``p`` PyTorch's kernels) and the other path's ratio in brackets where they differ; then every cell
    above ``LIMIT``."""
    capability = document["machine"]["capability"]
    rows = [r for r in document["rows"] if "seconds" in r]
    sources = sorted({r["policy"]["source"] if "policy" in r else "table (not recorded)" for r in rows})
    isa = document["machine"].get("reference_isa")  # absent in files written before it was recorded
    pytorch = f", PyTorch's kernels {', '.join(f'{k}={v}' for k, v in isa.items())}" if isa else ""
    lines = [f"Machine: {document['machine']['lscpu']}, capability `{capability}`{pytorch}, "
             f"torch {document['machine']['torch']}; policy: {', '.join(sources)}."]
    groups = sorted({(r["cell"], r["mode"], r["threads"]) for r in rows})
    for cell, mode, threads in groups:
        here = {(r["T"], r["B"], r["H"]): r for r in rows if (r["cell"], r["mode"], r["threads"]) == (cell, mode,
                                                                                                      threads)}
        sizes = sorted({h for _, _, h in here})
        table_rows = []
        for steps, batch in sorted({(t, b) for t, b, _ in here}):
            entries: Dict[Any, Any] = {"T": steps, "B": batch}
            for h in sizes:
                r = here.get((steps, batch, h))
                if r is None:
                    entries[h] = "-"
                    continue
                parts = []
                for lengths, kernel_key, other in ((False, "kernel/nn", 1.0),
                                                   (True, "kernel_len/nn", r["aten_len/nn"])):
                    take = _takes_kernel(r, lengths, capability)
                    chosen, alternative = (r[kernel_key], other) if take else (other, r[kernel_key])
                    parts.append(f"{chosen:.2f}{'k' if take else 'p'}" + ("" if take else f" (k {alternative:.2f})"))
                entries[h] = " · ".join(parts)
            table_rows.append(entries)
        columns: List[Column] = [("T", lambda e: e["T"]), ("B", lambda e: e["B"])]
        columns += [(f"H={h}", lambda e, h=h: e[h]) for h in sizes]
        step = "inference" if mode != "train" else "training step" + (
            " with the input's gradient" if any(r.get("input_grad") for r in here.values()) else "")
        lines += ["", f"**{cell} {step}, {threads} thread(s)**", ""]
        lines += table(columns, table_rows, "ll" + "r" * len(sizes))
    over = [f"{r['cell']} {r['mode']} {r['threads']} thread(s) T={r['T']} B={r['B']} H={r['H']} {key}: "
            f"{taken:.2f} (the other path {other:.2f})"
            for r in rows for key, (taken, other) in under_policy(r, capability).items() if taken > LIMIT]
    lines += ["", f"Cells above {LIMIT:.2f}x `nn.*` under the policy: {len(over)} of {2 * len(rows)}"
              + (":" if over else "."), ""] + [f"- {line}" for line in over]
    return "\n".join(lines).rstrip()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cells", nargs="+", default=["LSTM", "GRU"])
    parser.add_argument("--modes", nargs="+", default=["infer", "train"])
    parser.add_argument("--max-gflop", type=float, default=40.0, help="skip configurations above this forward cost")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clock", choices=("auto", "wall", "process"), default="auto",
                        help="auto: process CPU time at 1 thread (robust to other jobs), wall time otherwise")
    parser.add_argument("--quick", action="store_true", help="B in {1, 16}, H in {64, 128}, T 64, 3 rounds")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="B values instead of the matrix's")
    parser.add_argument("--hidden", type=int, nargs="+", default=None, help="H values instead of the matrix's")
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="T values instead of the matrix's")
    parser.add_argument("--input-grad", action="store_true",
                        help="training steps also compute the input's gradient, as every layer of a stack after the "
                             "first does and as the calibration measures (default: the input is data)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--report", default=None, metavar="JSON", help="print the Markdown tables of a results file")
    args = parser.parse_args(argv)
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return
    if not cpu_kernel.available():
        raise SystemExit("the CPU kernel is not available here: nothing to compare")
    capability = cpu_kernel.capability()
    out = Path(args.out) if args.out else RESULTS / f"kernel_matrix-{capability}.json"
    batches, hidden_sizes, steps_list = ((1, 16), (64, 128), (64,)) if args.quick else (BATCHES, HIDDEN, STEPS)
    batches, hidden_sizes, steps_list = args.batches or batches, args.hidden or hidden_sizes, args.steps or steps_list
    rounds = 3 if args.quick else args.rounds
    machine = describe("cpu", max(args.threads))
    machine.update(lscpu=cpu_flags(), capability=capability)
    log(f"{machine['lscpu']} | capability {capability} | load {machine.get('load_average_start')}")
    document: Dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"rows": []}
    document["machine"] = machine
    # what the policy decided with at each thread count: the calibration itself, so the file says why
    document.setdefault("policy", {}).update({str(t): calibrate.record(t, capability) for t in args.threads})
    done = {(r["cell"], r["threads"], r["mode"], r["B"], r["H"], r["T"]) for r in document["rows"]}
    for case in grid(cell=args.cells, threads=args.threads, mode=args.modes, T=steps_list, B=batches,
                     H=hidden_sizes):  # the matrix's cases, in this order
        cell, threads, mode, steps, batch, hidden = case.values()
        key = (cell, threads, mode, batch, hidden, steps)
        if key in done:
            continue
        row: Dict[str, Any] = dict(zip(("cell", "threads", "mode", "B", "H", "T"), key, strict=True))
        cost = gflop(cell, batch, hidden, steps) * (3 if mode == "train" else 1)
        if cost > args.max_gflop:
            row["skipped"] = f"{cost:.0f} GFLOP per call > --max-gflop {args.max_gflop:g}"
        else:
            torch.manual_seed(0)
            items = variants(cell, batch, hidden, steps, mode == "train", args.input_grad)
            clock = args.clock if args.clock != "auto" else ("process" if threads == 1 else "wall")
            series = timed_rounds(items, threads, rounds, clock)
            row["clock"] = clock
            if mode == "train" and args.input_grad:
                row["input_grad"] = True
            row["policy"] = policy_choice(cell, batch, hidden, steps, threads, mode == "train")
            row["seconds"] = {k: statistics.median(v) for k, v in series.items()}
            for name in ("kernel", "kernel_len", "aten_len"):  # per-round ratios, then their median
                ratios = [a / b for a, b in zip(series[name], series["nn"], strict=True)]
                row[f"{name}/nn"] = round(statistics.median(ratios), 3)
            log(f"{cell} {mode} thr={threads} T={steps} B={batch} H={hidden}: kernel/nn {row['kernel/nn']:.2f} "
                f"kernel_len/nn {row['kernel_len/nn']:.2f} aten_len/nn {row['aten_len/nn']:.2f}")
        document["rows"].append(row)
        write_results(out, document)
    torch.set_num_threads(max(args.threads))


if __name__ == "__main__":
    main()
