"""A short description of the machine and software a run was measured on."""

import os
import platform
import re
from typing import Any, Dict

import torch


def _cpu_model() -> str:
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return platform.processor() or "unknown CPU"
    match = re.search(r"model name\s*:\s*(.+)", text)
    flags = re.search(r"flags\s*:\s*(.+)", text)
    wanted = ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "avx512_fp16")
    have = [f for f in wanted if flags and f in flags.group(1).split()]
    return f"{match.group(1).strip() if match else 'unknown CPU'} ({', '.join(have) or 'no AVX-512'})"


def describe(device: str, threads: int) -> Dict[str, Any]:
    """CPU/GPU, cores, thread setting, load average and library versions."""
    info: Dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "onednn": torch.backends.mkldnn.is_available(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "python": platform.python_version(),
    }
    try:
        info["load_average_start"] = os.getloadavg()
    except OSError:
        pass
    try:
        import keras

        info["keras"] = keras.__version__
    except Exception:
        info["keras"] = None
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cudnn"] = torch.backends.cudnn.version()
    summary = info.get("gpu") or info["cpu"]
    info["summary"] = (f"{summary}; {info['cores']} cores, {threads} intra-op threads; torch {info['torch']}, "
                       f"keras {info['keras']}; load average at start {info.get('load_average_start')}")
    return info
