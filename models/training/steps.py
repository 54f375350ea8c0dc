"""Pieces of the training app that are not the loop itself: seeding, devices, optimiser, schedule, evaluation."""

import math
import random
import time
from typing import Any, Callable, Dict, Iterable, Mapping, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


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


def build_optimizer(model: nn.Module, optim: Mapping[str, Any]) -> torch.optim.Optimizer:
    """AdamW / Adam / SGD from the ``optim`` config; weight decay on matrices only (not on biases)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": optim["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    if optim["name"] == "sgd":
        return torch.optim.SGD(groups, lr=optim["lr"], momentum=optim.get("momentum") or 0.0)
    cls = torch.optim.AdamW if optim["name"] == "adamw" else torch.optim.Adam
    return cls(groups, lr=optim["lr"], betas=tuple(optim.get("betas") or (0.9, 0.999)))


def build_scheduler(optimizer: torch.optim.Optimizer, optim: Mapping[str, Any],
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then constant (``none``), cosine or linear decay to zero at ``total_steps``."""
    warmup = max(0, int(optim.get("warmup_steps", 0)))
    kind = optim.get("scheduler", "none")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "none":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def to_device(batch: Iterable[torch.Tensor], device: torch.device) -> Tuple[torch.Tensor, ...]:
    return tuple(t.to(device, non_blocking=True) for t in batch)


@torch.no_grad()  # not inference_mode: a scripted model would cache inference tensors it later trains on
def evaluate(forward: Callable[..., torch.Tensor], loader: Iterable, device: torch.device,
             amp_dtype: Any = None, max_batches: int = 0) -> Dict[str, float]:
    """Loss, accuracy and inference tokens/s of ``forward(tokens, lengths)`` over ``loader`` (all batches, or the
    first ``max_batches``)."""
    loss_sum, correct, count, tokens, seconds = 0.0, 0, 0, 0, 0.0
    for index, batch in enumerate(loader):
        if max_batches and index >= max_batches:
            break
        inputs, lengths, labels = to_device(batch, device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = forward(inputs, lengths)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - start
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").item()
        correct += (logits.argmax(-1) == labels).sum().item()
        count += labels.numel()
        tokens += int(lengths.sum())
    return {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1),
            "tokens_per_s": tokens / seconds if seconds > 0 else 0.0}
