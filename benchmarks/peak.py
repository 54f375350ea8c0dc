"""The machine's measured matmul peak: a large square GEMM per dtype, the reference for GFLOP/s."""

from typing import Dict

import torch
from torch.utils.benchmark import Timer


def matmul_peak(device: str, threads: int, quick: bool) -> Dict[str, float]:
    """GFLOP/s of ``n x n @ n x n`` (n = 2048 on CPU, 8192 on CUDA) for float32 and the low-precision dtypes."""
    n = 8192 if device == "cuda" else 2048
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if device == "cuda":
        dtypes["float16"] = torch.float16
    out: Dict[str, float] = {}
    for name, dtype in dtypes.items():
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        timer = Timer(stmt="a @ b", globals={"a": a, "b": b}, num_threads=threads)
        measurement = timer.blocked_autorange(min_run_time=0.5 if quick else 1.0)
        out[name] = 2.0 * n**3 / measurement.median / 1e9
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        a = torch.randn(n, n, device=device)
        timer = Timer(stmt="a @ a", globals={"a": a})
        out["tf32"] = 2.0 * n**3 / timer.blocked_autorange(min_run_time=0.5).median / 1e9
        torch.backends.cuda.matmul.allow_tf32 = False
    return out
