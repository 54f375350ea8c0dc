"""A short description of the machine and software a run was measured on."""

import functools
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch


@functools.cache
def _cpuinfo() -> Optional[str]:
    """The text of ``/proc/cpuinfo`` (read once per process), or None where there is none (macOS, Windows)."""
    try:
        return open("/proc/cpuinfo").read()
    except OSError:
        return None


def _cpu_model() -> str:
    text = _cpuinfo()
    if text is None:
        return platform.processor() or "unknown CPU"
    match = re.search(r"model name\s*:\s*(.+)", text)
    flags = re.search(r"flags\s*:\s*(.+)", text)
    wanted = ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "avx512_fp16")
    have = [f for f in wanted if flags and f in flags.group(1).split()]
    return f"{match.group(1).strip() if match else 'unknown CPU'} ({', '.join(have) or 'no AVX-512'})"


# The instruction-set flags that decide which CPU kernel runs and how fast PyTorch's kernels are.
_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16",
          "amx_int8")


def cpu_flags() -> List[str]:
    """The flags of :data:`_FLAGS` this CPU has (``/proc/cpuinfo``; empty where it cannot be read)."""
    flags = re.search(r"flags\s*:\s*(.+)", _cpuinfo() or "")
    have = set(flags.group(1).split()) if flags else set()
    return [f for f in _FLAGS if f in have]


def _cpu_family_model() -> Optional[str]:
    text = _cpuinfo() or ""
    family = re.search(r"cpu family\s*:\s*(\d+)", text)
    model = re.search(r"^model\s*:\s*(\d+)", text, re.M)
    return f"family {family.group(1)} model {model.group(1)}" if family and model else None


def _commit() -> Optional[str]:
    """The git commit measured (``+dirty`` with uncommitted changes), or None outside a checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "models"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def _kernel_capability() -> Optional[str]:
    try:
        from models.blocks import cpu_kernel

        return cpu_kernel.capability()
    except Exception:  # a benchmark still runs (and says so) where the package or its kernel cannot load
        return None


def _reference_isa() -> Dict[str, str]:
    """The instruction sets PyTorch's own kernels run (ATen's level and the caps set for oneDNN and MKL): an
    AVX-512 CPU with them at AVX2 measures as an AVX2 one would (``calibrate.reference_isa``)."""
    from models.blocks.cpu_kernel.calibrate import reference_isa

    return reference_isa()


def load_average() -> Optional[float]:
    """The 1-minute load average (how busy the machine was while a row was timed), None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def describe(device: str, threads: int) -> Dict[str, Any]:
    """CPU/GPU, cores, thread setting, load average and library versions."""
    info: Dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_family_model": _cpu_family_model(),
        "cpu_flags": cpu_flags(),
        "kernel_capability": _kernel_capability(),
        "commit": _commit(),
        "cores": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "onednn": torch.backends.mkldnn.is_available(),
        "reference_isa": _reference_isa(),
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
    info["summary"] = (f"{summary}; {info['cpu_family_model']}; flags {' '.join(info['cpu_flags']) or '-'}; "
                       f"kernel {info['kernel_capability']}; PyTorch's kernels {info['reference_isa']}; "
                       f"commit {info['commit']}; "
                       f"{info['cores']} cores, {threads} intra-op threads; torch {info['torch']}, "
                       f"keras {info['keras']}; load average at start {info.get('load_average_start')}")
    return info
