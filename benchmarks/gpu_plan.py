"""``python -m benchmarks.gpu_plan --out DIR [--preflight-only] [--dry-run] [--budget S]``: the GPU plan of
``benchmarks/device_session.sh``.

Preflight (``DIR/preflight.json``): torch, CUDA and cuDNN versions, the TF32 / fp32-precision flags, ``import
models``, one block forward on the device. Exit code 2 and ``"state": "no-gpu"`` in ``DIR/status.json`` where no
GPU is visible (``--dry-run`` then times a tiny plan on the CPU so the code path is exercised).

The plan (``DIR/gpu_plan.json``, rewritten atomically after every row, so a timeout keeps what was measured):
B=64, T=128, F=H, at (H=256, 2 layers), (H=256, 4 layers), (H=128, 2 layers); LSTM and GRU; every merge mode
(``concat``, ``sum``, ``mul``, ``ave``, ``None``) with and without ``lengths``; inference (eval mode, no grad) and
a training step (forward + backward). Baselines, timed beside each row: ``nn.LSTM``/``nn.GRU`` on the padded
batch (rows without lengths) and on a ``PackedSequence`` (``lengths`` rows: pack, run, pad back, what a user of
``nn.LSTM`` does with a padded batch); ``PackedSequence`` in and out for ``concat``; ``BiGRU(reset_after=False)``
against cuDNN's GRU. Times are medians of CUDA-event timed calls after warm-up; ratios are block / baseline.
Goals (issue 36): lengths rows <= 1.1x, rows without lengths <= 1.05x, ``reset_after=False`` <= 3x.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

MERGES: List[Optional[str]] = ["concat", "sum", "mul", "ave", None]
SIZES = [(256, 2), (256, 4), (128, 2)]                    # (H, layers)
GOALS = {"lengths": 1.1, "padded": 1.05, "reset_after=False": 3.0}


def write_json(path: Path, document: Dict[str, Any]) -> None:
    """Atomically: a temp file in the same folder, fsync, rename."""
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "w") as handle:
        json.dump(document, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def status(out: Path, state: str, **extra: Any) -> None:
    write_json(out / "status.json", {"state": state, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                     **extra})


def flags() -> Dict[str, Any]:
    found: Dict[str, Any] = {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                             "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    rnn = getattr(torch.backends.cudnn, "rnn", None)
    if rnn is not None and hasattr(rnn, "fp32_precision"):
        found["cudnn.rnn.fp32_precision"] = rnn.fp32_precision
        found["cuda.matmul.fp32_precision"] = torch.backends.cuda.matmul.fp32_precision
    return found


def preflight(out: Path, device: str) -> Dict[str, Any]:
    """Versions, flags, ``import models`` and one block forward on ``device``; raises on any failure."""
    info: Dict[str, Any] = {
        "python": sys.version.split()[0], "torch": torch.__version__, "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "device": device,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "flags": flags(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    import models

    block = models.BiLSTM(8, 8, num_layers=2, merge_mode="sum", device=device)
    output, _ = block(torch.randn(5, 3, 8, device=device), lengths=torch.tensor([5, 2, 4], device=device))
    info["block_forward"] = list(output.shape)
    write_json(out / "preflight.json", info)
    return info


def timer(device: str) -> Callable[[Callable[[], Any], int, int], float]:
    """Median seconds of ``fn`` over ``repeats`` calls after ``warmup``: CUDA events on the GPU, perf_counter else."""
    def run(fn: Callable[[], Any], warmup: int, repeats: int) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1000.0)
            else:
                started = time.perf_counter()
                fn()
                times.append(time.perf_counter() - started)
        return statistics.median(times)
    return run


def _step(module: nn.Module, make_input: Callable[[], Any], train: bool) -> Callable[[], Any]:
    """One inference call (eval, no grad) or one training step (train mode, forward + backward)."""
    def infer() -> Any:
        with torch.no_grad():
            return module(*make_input())

    def step() -> Any:
        module.zero_grad(set_to_none=True)
        out = module(*make_input())
        out = out[0] if isinstance(out, tuple) else out
        data = out.data if hasattr(out, "batch_sizes") else out
        data.float().square().mean().backward()
        return out

    module.train(train)
    return step if train else infer


class _PackedBaseline(nn.Module):
    """``nn.LSTM``/``nn.GRU`` on a padded batch with lengths: pack, run, pad back (what its users write)."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
        out, _ = self.rnn(packed)
        return pad_packed_sequence(out, total_length=x.shape[0])[0]


class _Lengths(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.block(x, lengths=lengths)[0]


def plan_rows(device: str, batch: int, steps: int, sizes: List[Any],
              merges: List[Optional[str]]) -> List[Dict[str, Any]]:
    rows: List[Dict[str, Any]] = []
    for hidden, layers in sizes:
        for cell in ("LSTM", "GRU"):
            for lengths in (False, True):
                for kind in ("infer", "train"):
                    for merge in merges:
                        rows.append({"cell": cell, "H": hidden, "layers": layers, "B": batch, "T": steps,
                                     "merge": merge, "lengths": lengths, "kind": kind, "input": "padded"})
                    if lengths:
                        rows.append({"cell": cell, "H": hidden, "layers": layers, "B": batch, "T": steps,
                                     "merge": "concat", "lengths": True, "kind": kind, "input": "PackedSequence"})
        for kind in ("infer", "train"):
            rows.append({"cell": "GRU", "H": hidden, "layers": layers, "B": batch, "T": steps, "merge": "concat",
                         "lengths": True, "kind": kind, "input": "padded", "reset_after": False})
    return rows


def measure(row: Dict[str, Any], device: str, warmup: int, repeats: int) -> Dict[str, Any]:
    import models

    torch.manual_seed(0)
    hidden, layers, batch, steps = row["H"], row["layers"], row["B"], row["T"]
    block_type = models.BiLSTM if row["cell"] == "LSTM" else models.BiGRU
    extra = {"reset_after": False} if row.get("reset_after") is False else {}
    block = block_type(hidden, hidden, num_layers=layers, merge_mode=row["merge"], **extra).to(device)
    rnn = getattr(nn, row["cell"])(hidden, hidden, num_layers=layers, bidirectional=True).to(device)
    x = torch.randn(steps, batch, hidden, device=device)
    generator = torch.Generator().manual_seed(1)
    lengths = torch.randint(steps // 2, steps + 1, (batch,), generator=generator)
    lengths[0] = steps
    train = row["kind"] == "train"
    if row["input"] == "PackedSequence":
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        candidate = _step(block, lambda: (packed,), train)
        baseline = _step(rnn, lambda: (packed,), train)
    elif row["lengths"]:
        lengths_dev = lengths.to(device)
        candidate = _step(_Lengths(block), lambda: (x, lengths_dev), train)
        baseline = _step(_PackedBaseline(rnn), lambda: (x, lengths_dev), train)
    else:
        candidate = _step(block, lambda: (x,), train)
        baseline = _step(rnn, lambda: (x,), train)
    time_it = timer(device)
    # Interleaved: baseline, candidate, baseline, candidate; each pair's ratio, then the median.
    pairs = [(time_it(baseline, warmup, repeats), time_it(candidate, warmup, repeats)) for _ in range(2)]
    base = statistics.median(p[0] for p in pairs)
    mine = statistics.median(p[1] for p in pairs)
    goal = GOALS["reset_after=False"] if "reset_after" in row else GOALS["lengths" if row["lengths"] else "padded"]
    ratio = statistics.median(p[1] / p[0] for p in pairs)
    return {**row, "block_ms": round(mine * 1e3, 4), "baseline_ms": round(base * 1e3, 4),
            "baseline": ("nn." + row["cell"]) + (" on PackedSequence" if row["lengths"] else ""),
            "ratio": round(ratio, 3), "goal": goal, "meets_goal": ratio <= goal}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for preflight.json, gpu_plan.json, status.json")
    parser.add_argument("--preflight-only", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="without a GPU: a tiny plan on the CPU")
    parser.add_argument("--budget", type=float, default=70.0, help="seconds for the plan; rows beyond are left out")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    status(out, "preflight")
    try:
        info = preflight(out, device)
    except Exception as error:  # any failure here ends the session with its message
        status(out, "preflight-failed", error=f"{type(error).__name__}: {error}")
        print(f"preflight FAILED: {type(error).__name__}: {error}", flush=True)
        return 1
    print(f"preflight: torch {info['torch']} cuda {info['cuda_build']} cudnn {info['cudnn']} "
          f"gpu {info.get('gpu', '-')} flags {info['flags']} block forward {info['block_forward']}", flush=True)
    if not gpu and not args.dry_run:
        status(out, "no-gpu", message="no GPU visible (torch.cuda.is_available() is False): nothing GPU to run")
        print("no GPU: torch.cuda.is_available() is False", flush=True)
        return 2
    if args.preflight_only:
        status(out, "preflight-ok")
        return 0
    if gpu:
        rows, warmup, repeats = plan_rows("cuda", 64, 128, SIZES, MERGES), 2, 5
    else:
        rows, warmup, repeats = plan_rows("cpu", 2, 6, [(8, 2)], ["concat", "sum"]), 1, 2
    document: Dict[str, Any] = {"preflight": info, "rows": [], "planned": len(rows), "left_out": 0,
                                "dry_run": not gpu}
    started = time.perf_counter()
    for index, row in enumerate(rows):
        if time.perf_counter() - started > args.budget:
            document["left_out"] = len(rows) - index
            break
        status(out, "plan", row=index, of=len(rows))
        try:
            result = measure(row, device, warmup, repeats)
        except Exception as error:  # a failing row is recorded, the plan goes on
            result = {**row, "error": f"{type(error).__name__}: {error}"}
        document["rows"].append(result)
        write_json(out / "gpu_plan.json", document)
        print(json.dumps(result), flush=True)
    failed = [r for r in document["rows"] if "error" in r]
    status(out, "no-gpu-dry-run" if not gpu else "plan-done", rows=len(document["rows"]), errors=len(failed))
    return 2 if not gpu else (1 if failed else 0)


if __name__ == "__main__":
    raise SystemExit(main())
