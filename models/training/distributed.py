"""Data-parallel training under ``torchrun``: process group, batch shards, metric sums, one shared run folder.

``torchrun --standalone --nproc_per_node=N train.py ...`` starts N copies of ``train.py`` with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; ``models.training.loop.train`` then runs as N ranks of one
``DistributedDataParallel`` job (``gloo`` on CPU; ``cuda:nccl`` plus ``cpu:gloo`` on GPU machines, one GPU
per rank). Without those variables (or with ``WORLD_SIZE=1``) every function here is a no-op, so the
one-process loop is unchanged.

How the pieces keep a run of N ranks equal to one process with the same global batch:

- **Data**: every rank builds the same seeded, length-bucketed batch order from ``(seed, epoch)``
  (``models.data.batching.batch_order``), so there is no sampler to keep in step. Each global batch of
  ``data.batch_size`` examples is collated once and :func:`shard` gives rank ``r`` rows
  ``[r*B//N, (r+1)*B//N)``: slicing after collation keeps the batch's padded length ``T`` exactly as in
  one process (the classifier reads only the first ``lengths`` steps, so the extra padding is harmless).
- **Gradients**: each rank's mean loss is weighted by ``local rows * N / B`` before ``backward``;
  DDP averages over N ranks, so the update is the gradient of the global-batch mean for *any* split,
  including a batch size not divisible by N and the short last batch of an epoch. Only a batch with fewer
  rows than ranks cannot be split; :func:`check_batch_sizes` refuses that before training.
- **Metrics**: loss sums, correct counts, example and token counts are summed over ranks each step
  (:func:`sum_over_ranks`, float64); evaluation shards each batch the same way (:func:`evaluate`).
- **Randomness**: ranks initialise the model from the same seed (DDP also broadcasts rank 0's weights);
  ranks > 0 then re-seed torch from ``(seed, rank)`` so their dropout masks differ from rank 0's.
  Checkpoints store every rank's RNG state (``rng_ranks``), so a resumed DDP run continues bit for bit.
- **Writing**: only rank 0 writes ``metrics.jsonl``, checkpoints, ``results.json`` and TensorBoard events.
- **Run folder**: :class:`SharedRunDir` (a Hydra callback that ``train.py`` adds under ``torchrun``) makes
  every rank resolve ``${now:...}`` with rank 0's clock, so all ranks use one ``hydra.run.dir`` /
  ``hydra.sweep.dir``; ranks > 0 write no ``.hydra/`` and log to ``train.rank<r>.log`` beside ``train.log``.
"""

import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf, read_write
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.batching import Batch
from ..deploy.compile import compile_model
from .config import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def launched_by_torchrun() -> bool:
    """``WORLD_SIZE`` > 1 in the environment (``torchrun``/``torch.distributed.run`` sets it)."""
    return _env_int("WORLD_SIZE", 1) > 1


def env_rank() -> int:
    """This process's rank as ``torchrun`` announces it (``RANK``), readable before the process group exists."""
    return _env_int("RANK", 0) if launched_by_torchrun() else 0


def context() -> Context:
    """The current process group's rank and size; one process when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    return Context()


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that writes files and reports."""
    return context().is_main


def init(device_type: Optional[str] = None) -> Context:
    """Join the process group ``torchrun`` describes (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, ``MASTER_ADDR``/
    ``MASTER_PORT``); idempotent, and a no-op without ``torchrun``. ``device_type`` is where training runs
    (None: ``cuda`` when available): ``cpu`` -> backend ``gloo``; ``cuda`` -> ``cpu:gloo,cuda:nccl`` (NCCL for
    CUDA tensors, gloo for CPU ones) and rank ``r`` uses GPU ``LOCAL_RANK``."""
    if dist.is_available() and dist.is_initialized():
        return context()
    if not launched_by_torchrun():
        return Context()
    local_rank = _env_int("LOCAL_RANK", 0)
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices: start "
                               f"at most that many processes per node (torchrun --nproc_per_node), or train on "
                               f"trainer.device=cpu")
        torch.cuda.set_device(local_rank)
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)
    ctx = context()
    log.info("process group: rank %d of %d (local rank %d), backend %s", ctx.rank, ctx.world_size,
             ctx.local_rank, backend)
    return ctx


def shutdown() -> None:
    """Leave the process group (no-op when none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if context().enabled:
        dist.barrier()


def sum_over_ranks(*values: float) -> Tuple[Any, ...]:
    """Sum each value over all ranks (one float64 all-reduce); ints come back as ints. Identity in one process."""
    if not context().enabled:
        return values
    summed = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(summed)
    return tuple(round(s) if isinstance(v, int) else s for v, s in zip(values, summed.tolist(), strict=True))


def gather_objects(obj: Any) -> List[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` in one process)."""
    ctx = context()
    if not ctx.enabled:
        return [obj]
    gathered: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


# -- model --------------------------------------------------------------------------------------------------------

def prepare_model(model: nn.Module, mode: str, device: torch.device) -> Tuple[Callable[..., torch.Tensor],
                                                                             Callable[..., torch.Tensor]]:
    """``(train_forward, eval_forward)`` for ``model`` compiled with ``trainer.compile=mode``.

    One process: both are ``compile_model(model, mode)``. Under DDP, training goes through
    ``DistributedDataParallel`` (its gradient hooks average over ranks) and evaluation through the bare
    (compiled) model, which runs no collective and so may skip an empty shard:

    - ``none``: ``DDP(model)``.
    - ``aot_eager`` / ``inductor``: ``torch.compile(DDP(model))``, the order PyTorch documents (Dynamo's
      DDPOptimizer splits the graph at DDP's gradient buckets so communication overlaps the backward pass).
    - ``script``: TorchScript cannot script the DDP wrapper, so the model is scripted first and DDP wraps the
      scripted module (it shares the model's parameters; DDP's hooks sit on those parameters).
    """
    if not context().enabled:
        forward = compile_model(model, mode)
        return forward, forward
    options: Dict[str, Any] = {}
    if device.type == "cuda":
        options["device_ids"] = [device.index if device.index is not None else torch.cuda.current_device()]
    if mode == "script":
        scripted = compile_model(model, "script")
        return DistributedDataParallel(scripted, **options), scripted
    wrapped = DistributedDataParallel(model, **options)
    if mode in ("aot_eager", "inductor"):
        return compile_model(wrapped, mode), compile_model(model, mode)
    return wrapped, model


def seed_rank_streams(seed: int) -> None:
    """Ranks > 0 re-seed torch from ``(seed, rank)`` (own dropout masks); rank 0 keeps the one-process stream."""
    ctx = context()
    if ctx.rank > 0:
        torch.manual_seed(int(np.random.SeedSequence([int(seed), ctx.rank]).generate_state(1)[0]))


def rng_state_for_rank(checkpoint: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The RNG state this rank resumes from: its own from ``rng_ranks`` when the world size matches the
    checkpoint's; otherwise rank 0 takes ``rng`` and other ranks keep their freshly seeded streams (None)."""
    ctx = context()
    states = checkpoint.get("rng_ranks") or [checkpoint["rng"]]
    if len(states) == ctx.world_size:
        return states[ctx.rank]
    if ctx.rank == 0:
        log.warning("checkpoint written by %d process(es), resumed by %d: only rank 0 restores its RNG state",
                    len(states), ctx.world_size)
        return checkpoint["rng"]
    return None


# -- data ---------------------------------------------------------------------------------------------------------

def check_batch_sizes(batches: Sequence[Sequence[int]], name: str = "train") -> None:
    """Refuse a batch order with a batch smaller than the world size (some rank would get no rows)."""
    ctx = context()
    if not ctx.enabled or not batches:
        return
    smallest = min(len(batch) for batch in batches)
    if smallest < ctx.world_size:
        raise ConfigError(
            f"{ctx.world_size} processes but the {name} split has a batch of only {smallest} example(s) (the last "
            f"batch holds the remainder of the split): every rank needs at least one row of every global batch; "
            f"choose data.batch_size and the split size so that no batch is smaller than {ctx.world_size}")


def shard_bounds(rows: int, rank: int, world_size: int) -> Tuple[int, int]:
    """Rows ``[start, stop)`` of a ``rows``-row global batch that ``rank`` takes (sizes differ by at most 1)."""
    return rows * rank // world_size, rows * (rank + 1) // world_size


def shard(batch: Batch) -> Tuple[Batch, float]:
    """This rank's slice of a collated global batch and its loss weight ``local rows * world_size / rows``.

    Slices after collation: every rank keeps the global batch's padded length ``T``. With the weight, DDP's
    average of the ranks' gradients equals the gradient of the global batch's mean loss for any split."""
    ctx = context()
    if not ctx.enabled:
        return batch, 1.0
    rows = int(batch.labels.shape[0])
    start, stop = shard_bounds(rows, ctx.rank, ctx.world_size)
    part = Batch(*(tensor[start:stop] for tensor in batch))
    return part, (stop - start) * ctx.world_size / rows


class _Shards:
    """This rank's slices of a loader's batches, empty ones skipped; counts rows and tokens it yields."""

    def __init__(self, loader: Any) -> None:
        self.loader, self.count = loader, 0

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            part, _ = shard(batch)
            if part.labels.numel():
                self.count += part.labels.numel()
                yield part


def evaluate(evaluate_fn: Callable[..., Dict[str, float]], forward: Callable[..., torch.Tensor], loader: Any,
             device: torch.device, amp_dtype: Any = None) -> Dict[str, float]:
    """``evaluate_fn(forward, loader, device, amp_dtype)`` over the whole split, each batch sharded across
    ranks and loss/accuracy summed over them (``tokens_per_s`` is this rank's). Plain call in one process."""
    if not context().enabled:
        return evaluate_fn(forward, loader, device, amp_dtype)
    shards = _Shards(loader)
    local = evaluate_fn(forward, shards, device, amp_dtype)
    loss_sum, correct, count = sum_over_ranks(local["loss"] * shards.count,
                                              round(local["accuracy"] * shards.count), shards.count)
    return {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1),
            "tokens_per_s": local["tokens_per_s"]}


# -- one run folder for all ranks (Hydra) ----------------------------------------------------------------------

try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency
    Callback = object  # type: ignore[assignment,misc]

HYDRA_CALLBACK_OVERRIDE = "+hydra.callbacks.shared_run_dir._target_=models.training.distributed.SharedRunDir"
"""What ``train.py`` appends to its command line under ``torchrun``."""


def agreed_time(device_type: Optional[str] = None) -> datetime:
    """Rank 0's ``datetime.now()``, broadcast to every rank (a CPU tensor, so gloo carries it on any backend)."""
    ctx = init(device_type)
    stamp = torch.tensor([datetime.now().timestamp() if ctx.is_main else 0.0], dtype=torch.float64)
    if ctx.enabled:
        dist.broadcast(stamp, src=0)
    return datetime.fromtimestamp(stamp.item())


class SharedRunDir(Callback):  # type: ignore[misc]
    """Hydra callback: every rank resolves ``hydra.run.dir`` / ``hydra.sweep.dir`` with rank 0's clock.

    Each rank runs Hydra on its own and ``${now:%H-%M-%S}`` may straddle a second between them. OmegaConf
    caches ``now`` per config (Hydra relies on that cache to keep one timestamp per run and copies it into
    every sweep job); before Hydra creates the folder, this empties the ``now`` cache and resolves the folder
    again with a ``now`` resolver that returns :func:`agreed_time`, so the cache, and the folder, agree. Ranks > 0 also
    skip ``.hydra/``
    and log to ``<job name>.rank<r>.log`` (warnings only on the console)."""

    def _agree(self, config: DictConfig, key: str) -> None:
        device = OmegaConf.select(config, "trainer.device", default="auto")
        agreed = agreed_time("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
        OmegaConf.register_new_resolver("now", lambda pattern: agreed.strftime(pattern), use_cache=True,
                                        replace=True)
        cache = OmegaConf.get_cache(config)
        cache.pop("now", None)             # Hydra has already resolved ${now:...} once, with this rank's clock
        OmegaConf.set_cache(config, cache)
        OmegaConf.select(config, key)      # refills the config's resolver cache with the agreed values
        if not is_main():
            with read_write(config.hydra):
                config.hydra.output_subdir = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._agree(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._agree(config, "hydra.sweep.dir")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        rank = context().rank
        if rank == 0:
            return
        root = logging.getLogger()
        for handler in list(root.handlers):
            if isinstance(handler, logging.FileHandler):
                root.removeHandler(handler)
                handler.close()
                path = Path(handler.baseFilename)
                own = logging.FileHandler(path.with_name(f"{path.stem}.rank{rank}{path.suffix}"))
                own.setFormatter(handler.formatter)
                root.addHandler(own)
            else:
                handler.setLevel(logging.WARNING)
