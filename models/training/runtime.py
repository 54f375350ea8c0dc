"""Where and how a run computes: seeds, the device, the autocast dtype, batches moved to the device."""

import random
from typing import Any, Iterable, Tuple

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("trainer.device='cuda' but torch.cuda.is_available() is False; use auto or cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> Any:
    """``"32"`` -> None (no autocast), ``bf16`` -> bfloat16, ``fp16`` -> float16 (cuda only)."""
    if precision == "32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("trainer.precision='fp16' needs a cuda device; use bf16 on cpu")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def to_device(batch: Iterable[torch.Tensor], device: torch.device) -> Tuple[torch.Tensor, ...]:
    """A batch's tensors (tokens (B, T), lengths (B,), labels (B,)) on ``device``."""
    return tuple(t.to(device, non_blocking=True) for t in batch)
