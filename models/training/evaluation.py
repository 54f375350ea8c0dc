"""Evaluation of a model over a loader: loss, accuracy and inference tokens/s."""

import time
from typing import Any, Callable, Dict, Iterable

import torch
from torch.nn import functional as F

from .runtime import to_device


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
