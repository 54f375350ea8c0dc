"""The optimiser and its learning-rate schedule, from the ``optim`` config group."""

import math
from typing import Any, Mapping

import torch
from torch import nn


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
