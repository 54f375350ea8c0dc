"""``python -m benchmarks.run [--device cpu|cuda] [--quick] [--threads N] [--budget-scale S] [--only TEXT]``.

Times every configuration of ``configs.plan`` (inference and a training step per variant, interleaved
rounds until the configuration's time budget is spent, medians), the machine's matmul peak, and writes
``benchmarks/results/<device>[-quick].json`` and ``.md``.
"""

import os

# Before torch is imported: no OpenMP spin-waiting (a shared 2-core machine), Keras on torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("KERAS_BACKEND", "torch")

import argparse
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .cases import build_cases
from .configs import plan
from .harness import log, write_results
from .machine import describe
from .peak import matmul_peak
from .report import KINDS, check_targets, markdown, rows
from .timing import interleaved

RESULTS = Path(__file__).resolve().parent / "results"


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes, few rounds (a minute or two)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (torch.set_num_threads)")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="scale every config's timing budget")
    parser.add_argument("--max-rounds", type=int, default=15, help="most timed rounds per config")
    parser.add_argument("--only", default="", help="run only configurations whose name contains this text")
    parser.add_argument("--out", default=None, help="output stem (default results/<device>[-quick])")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    min_time = 0.1
    started = time.perf_counter()
    machine = describe(args.device, args.threads)
    log(machine["summary"])

    peak = matmul_peak(args.device, args.threads, args.quick)
    log("matmul peak GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in peak.items()))
    configs = [c for c in plan(args.quick) if not args.only or args.only in c.name]
    inductor_warmup = None
    if any("compile" in c.families for c in configs):
        warm = time.perf_counter()
        torch.compile(lambda a: a * 2 + 1)(torch.ones(4, device=args.device))
        inductor_warmup = time.perf_counter() - warm
        log(f"inductor warm-up (first compile in the process, not in the compile times): {inductor_warmup:.1f}s")

    blocks: List[Dict[str, Any]] = []
    targets: List[Dict[str, Any]] = []
    for config in configs:
        log(f"{config.name}: building")
        cases = build_cases(config, args.device, args.threads, log)
        items = {f"{case.name}|{kind}": getattr(case, kind if kind == "train" else "infer")
                 for case in cases for kind in KINDS}
        budget = config.budget_s * args.budget_scale
        log(f"{config.name}: timing {len(cases)} variants x {len(KINDS)} kinds, warm-up + rounds for {budget:.0f}s")
        timings = interleaved(items, args.threads, min_time, budget, config.min_rounds, args.max_rounds, log)
        results = rows(config, cases, timings, peak)
        for r in results:
            log(f"  {r['name']:28s} inf {r['inference']['ratio_to_fused']:.2f}x  "
                f"train {r['train']['ratio_to_fused']:.2f}x")
        blocks.append({"config": config.as_dict(), "results": results})
        targets += check_targets(config, results)
        del cases, items, timings

    try:
        machine["load_average_end"] = os.getloadavg()
    except OSError:
        pass
    payload = {
        "device": args.device,
        "quick": args.quick,
        "budget_scale": args.budget_scale,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine,
        "matmul_peak_gflops": peak,
        "inductor_warmup_s": inductor_warmup,
        "wall_s": time.perf_counter() - started,
        "configs": blocks,
        "targets": targets,
    }
    stem = RESULTS / (args.out or (args.device + ("-quick" if args.quick else "")))
    write_results(stem.with_suffix(".json"), payload, stem.with_suffix(".md"), markdown(payload))
    log(f"wrote {stem}.json and .md in {payload['wall_s']:.0f}s")
    return payload


if __name__ == "__main__":
    main()
