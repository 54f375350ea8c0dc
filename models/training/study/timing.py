"""Speed of a study's trained models, measured after the sweep, side by side (not inside the busy training loop).

For each data task, every trained model of the study (its ``checkpoints/best.pt``) is loaded and timed on one
fixed batch of that task's test split (the first ``batch_size`` test rows, the same batch for every model):

- training: forward, cross-entropy, backward and a plain SGD update (no optimiser state, so two dozen models
  fit in memory at once; AdamW's element-wise update adds a few percent on top);
- inference: forward in ``eval()`` mode under ``torch.no_grad()``.

The models are interleaved: round ``r`` times every model once, starting at model ``r`` of the list, so a
burst of load from another process on the machine hits every model alike instead of one model's whole
measurement. One warm-up round is not counted; each model's tokens/s is the median over the timed rounds.
"""

import logging
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ...data import build_data
from ...zoo.registry import create_model
from ..checkpoint import load_checkpoint

log = logging.getLogger(__name__)


def fixed_batch(data_config: Dict[str, Any], seed: int, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor]:
    """``(tokens (B, T), lengths (B,), labels (B,))``: the first ``batch_size`` rows of the test split, in file
    order (no bucketing), right-padded."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    data = build_data(data_config, seed=seed)
    batch = next(iter(data.loader("test", batch_size, shuffle=False, seed=seed, bucket=False)))
    return batch.tokens, batch.lengths, batch.labels


def load_trained_model(run: Dict[str, Any]) -> Tuple[nn.Module, bool]:
    """The run's model with its ``best.pt`` weights (``(model, True)``), or freshly initialised weights of the
    same shape when the checkpoint is gone (``(model, False)``; the speed is the same, and the report says so).
    The data sizes come from ``results.json``'s config and the weights' shapes, not from rebuilding the data."""
    config = run["config"]
    model_kwargs = {k: v for k, v in config["model"].items() if k != "name"}
    best = Path(run["path"]).parent / "checkpoints" / "best.pt"
    state = load_checkpoint(best)["model"] if best.is_file() else None
    if state is not None:
        vocab_size, num_classes = state["embed.weight"].shape[0], state["head.weight"].shape[0]
    else:
        vocab_size, num_classes = run["vocab_size"], run["num_classes"]
    model = create_model(config["model"]["name"], vocab_size=vocab_size, num_classes=num_classes, **model_kwargs)
    if state is not None:
        model.load_state_dict(state)
    return model, state is not None


def _train_step_seconds(model: nn.Module, tokens: torch.Tensor, lengths: torch.Tensor,
                        labels: torch.Tensor) -> float:
    model.train()
    start = time.perf_counter()
    loss = F.cross_entropy(model(tokens, lengths), labels)
    loss.backward()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter.add_(parameter.grad, alpha=-1e-6)   # a tiny step: the weights stay the trained ones
                parameter.grad = None
    return time.perf_counter() - start


def _infer_seconds(model: nn.Module, tokens: torch.Tensor, lengths: torch.Tensor) -> float:
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        model(tokens, lengths)
    return time.perf_counter() - start


def time_models(models: Sequence[nn.Module], batch: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                rounds: int = 5) -> List[Dict[str, float]]:
    """Interleaved timing of ``models`` on one batch; per model ``train_tokens_per_s`` and
    ``infer_tokens_per_s`` (medians over ``rounds`` rounds after one warm-up round)."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    tokens, lengths, labels = batch
    count = float(lengths.sum())
    train: List[List[float]] = [[] for _ in models]
    infer: List[List[float]] = [[] for _ in models]
    for round_index in range(rounds + 1):
        order = [(round_index + k) % len(models) for k in range(len(models))]
        for k in order:
            seconds_train = _train_step_seconds(models[k], tokens, lengths, labels)
            seconds_infer = _infer_seconds(models[k], tokens, lengths)
            if round_index > 0:                        # round 0 warms caches, the kernel and the allocator
                train[k].append(seconds_train)
                infer[k].append(seconds_infer)
    return [{"train_tokens_per_s": count / statistics.median(t), "infer_tokens_per_s": count / statistics.median(i)}
            for t, i in zip(train, infer, strict=True)]


def time_study(runs: Sequence[Dict[str, Any]], batch_size: int = 64, rounds: int = 5,
               threads: int = 1) -> Dict[str, Dict[str, Any]]:
    """Time every run's trained model, one data task at a time (``runs`` as ``models.training.report.load_results``
    gives them). Returns ``{run path: {"train_tokens_per_s", "infer_tokens_per_s", "trained_weights"}}`` plus
    the settings under ``"_settings"``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    timings: Dict[str, Dict[str, Any]] = {"_settings": {"batch_size": batch_size, "rounds": rounds,
                                                        "threads": threads, "step": "forward+backward+SGD"}}
    try:
        by_data: Dict[str, List[Dict[str, Any]]] = {}
        for run in runs:
            by_data.setdefault(run["data"], []).append(run)
        for data_name, group in by_data.items():
            first = group[0]["config"]
            batch = fixed_batch(first["data"], first["seed"], batch_size)
            loaded = [load_trained_model(run) for run in group]
            log.info("timing %d models on %s (batch %s, %d rounds, %d thread(s))", len(group), data_name,
                     list(batch[0].shape), rounds, threads)
            timings["_settings"].setdefault("batches", {})[data_name] = {
                "shape": list(batch[0].shape), "tokens": int(batch[1].sum())}
            speeds = time_models([model for model, _ in loaded], batch, rounds)
            for run, (_, trained), speed in zip(group, loaded, speeds, strict=True):
                timings[run["path"]] = {**speed, "trained_weights": trained}
            del loaded
    finally:
        torch.set_num_threads(previous)
    return timings
