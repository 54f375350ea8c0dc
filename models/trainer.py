"""The training loop, top to bottom: ``train(cfg, run_dir) -> results``.

``python train.py`` (Hydra) calls it; so can notebooks and tests with a config from Hydra's compose API.
Config -> checks -> data -> ``models.create_model`` -> loop -> best checkpoint on the test split. Writes to
``run_dir``: ``metrics.jsonl`` (one line per epoch), ``results.json``, ``checkpoints/last.pt`` and ``best.pt``
(atomic, resumable with ``trainer.resume=<run dir>``), TensorBoard events when installed.

Under ``torchrun`` the same loop runs as one rank of a DistributedDataParallel job: ``ddp.*`` calls shard each
global batch, sum metrics over ranks and let rank 0 alone write (``models/distributed.py``); in one process
they do nothing.
"""

import json
import logging
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict

import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn import functional as F
from tqdm import tqdm

from . import distributed as ddp
from .checkpoint import (
    FORMAT,
    capture_rng_state,
    load_checkpoint,
    resolve_checkpoint_path,
    restore_rng_state,
    save_checkpoint,
)
from .config import check_config
from .data import build_data
from .registry import create_model
from .training import (
    autocast_dtype,
    build_optimizer,
    build_scheduler,
    evaluate,
    resolve_device,
    seed_everything,
    to_device,
)

log = logging.getLogger("train")



def train(cfg: DictConfig, run_dir: Path) -> Dict[str, Any]:
    """Train ``cfg`` (the composed config of ``conf/config.yaml``) into ``run_dir``; returns ``results.json``'s dict."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    data_cfg = check_config(cfg)                       # every key and value, before any data is touched
    trainer, optim = cfg.trainer, cfg.optim
    config = OmegaConf.to_container(cfg, resolve=True)
    if trainer.num_threads:
        torch.set_num_threads(trainer.num_threads)
    seed_everything(cfg.seed)
    device = resolve_device(trainer.device)
    dist = ddp.init(device.type)                       # this process's rank and the world size (1 without torchrun)
    amp_dtype = autocast_dtype(str(trainer.precision), device)

    # -- data and model --------------------------------------------------------------------------
    data = build_data(data_cfg, seed=cfg.seed)
    model_kwargs = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "name"}
    model = create_model(cfg.model.name, vocab_size=data.vocab_size, num_classes=data.num_classes, **model_kwargs)
    model.to(device)
    ddp.seed_rank_streams(cfg.seed)                    # ranks > 0: own dropout masks, same initial weights
    # Both share the model's parameters; under DDP ``forward`` also averages gradients over ranks.
    forward, eval_forward = ddp.prepare_model(model, trainer.compile, device)
    num_parameters = sum(p.numel() for p in model.parameters())
    log.info("model %s (%s params) on %s, data %s: %s", cfg.model.name, f"{num_parameters:,}", device, data.name,
             {s: len(d) for s, d in data.splits.items()})

    train_order = data.loader("train", data_cfg["batch_size"], shuffle=True, seed=cfg.seed)
    ddp.check_batch_sizes(train_order.all_batches)     # every rank needs a row of every global batch
    batches_per_epoch = len(train_order)
    optimizer = build_optimizer(model, optim)
    scheduler = build_scheduler(optimizer, optim, trainer.max_epochs * batches_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    # -- state, and resume ---------------------------------------------------------------------------
    progress = {"epoch": 0, "step": 0, "batch_in_epoch": 0, "best_val_accuracy": -1.0, "epochs_since_best": 0,
                "nonfinite_steps": 0, "nonfinite_in_a_row": 0, "epoch_loss_sum": 0.0, "epoch_correct": 0,
                "epoch_count": 0, "epoch_tokens": 0, "epoch_seconds": 0.0, "train_seconds": 0.0, "train_tokens": 0}
    checkpoints = run_dir / "checkpoints"
    if trainer.resume:
        path = resolve_checkpoint_path(trainer.resume)
        state = load_checkpoint(path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        progress.update(state["progress"])
        rng = ddp.rng_state_for_rank(state)
        if trainer.restore_rng and rng is not None:
            restore_rng_state(rng)
        log.info("resumed from %s at epoch %d, step %d", path, progress["epoch"], progress["step"])

    def checkpoint(name: str) -> None:
        rng = ddp.gather_objects(capture_rng_state())  # every rank's (all ranks call checkpoint at the same step)
        if dist.is_main:
            save_checkpoint({"format": FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                             "rng": rng[0], "progress": dict(progress), "config": config,
                             **({"rng_ranks": rng} if dist.enabled else {})}, checkpoints / name)

    writer = None
    if trainer.tensorboard and dist.is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            log.info("tensorboard not installed (pip install -e '.[tensorboard]'): no TensorBoard events")

    # -- the loop ----------------------------------------------------------------------------------------------
    metrics_file = run_dir / "metrics.jsonl"
    show_progress = trainer.progress and sys.stderr.isatty() and dist.is_main
    stop_reason = "max_epochs"
    for epoch in range(progress["epoch"], trainer.max_epochs):
        model.train()
        loader = data.loader("train", data_cfg["batch_size"], shuffle=True, seed=cfg.seed, epoch=epoch,
                             start_batch=progress["batch_in_epoch"], num_workers=data_cfg["num_workers"],
                             bucket=data_cfg["bucket"])
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{trainer.max_epochs}", disable=not show_progress,
                   leave=False, dynamic_ncols=True)
        tick = time.perf_counter()
        for batch in bar:
            batch, weight = ddp.shard(batch)           # this rank's rows of the global batch (all of it in one process)
            inputs, lengths, labels = to_device(batch, device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = forward(inputs, lengths)
            loss = F.cross_entropy(logits.float(), labels)
            progress["step"] += 1
            progress["batch_in_epoch"] += 1
            # Sums over the global batch (one all-reduce under DDP); every rank skips a non-finite step together.
            loss_sum, correct, count, tokens, finite = ddp.sum_over_ranks(
                loss.item() * labels.numel(), int((logits.argmax(-1) == labels).sum()), labels.numel(),
                int(lengths.sum()), int(torch.isfinite(loss)))
            if finite < dist.world_size:
                # Skip the update, count it; several in a row mean the run has diverged.
                progress["nonfinite_steps"] += 1
                progress["nonfinite_in_a_row"] += 1
                optimizer.zero_grad(set_to_none=True)
                if progress["nonfinite_in_a_row"] >= trainer.max_nonfinite_steps:
                    checkpoint("emergency.pt")
                    raise RuntimeError(
                        f"{progress['nonfinite_in_a_row']} non-finite losses in a row at step {progress['step']}; "
                        f"stopped. State saved to {checkpoints / 'emergency.pt'}; lower optim.lr or check the data")
                continue
            progress["nonfinite_in_a_row"] = 0
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss * weight).backward()     # weight: mean over this rank's rows -> share of the global mean
            if optim.grad_clip and optim.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()

            now = time.perf_counter()
            progress["epoch_seconds"] += now - tick
            tick = now
            progress["epoch_loss_sum"] += loss_sum
            progress["epoch_correct"] += correct
            progress["epoch_count"] += count
            progress["epoch_tokens"] += tokens
            bar.set_postfix(loss=f"{progress['epoch_loss_sum'] / progress['epoch_count']:.4f}",
                            acc=f"{progress['epoch_correct'] / progress['epoch_count']:.3f}",
                            tok_s=f"{progress['epoch_tokens'] / max(progress['epoch_seconds'], 1e-9):,.0f}")
            if writer is not None and progress["step"] % trainer.log_every_steps == 0:
                writer.add_scalar("train/loss", loss_sum / count, progress["step"])
            if trainer.checkpoint_every_steps and progress["step"] % trainer.checkpoint_every_steps == 0:
                checkpoint("last.pt")
            if trainer.kill_at_step is not None and progress["step"] == trainer.kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)    # testing aid: a hard kill, nothing gets to clean up
            tick = time.perf_counter()
        bar.close()

        model.eval()                                    # dropout off for validation; model.train() next epoch
        val = ddp.evaluate(evaluate, eval_forward,
                           data.loader("val", data_cfg["eval_batch_size"], shuffle=False, seed=cfg.seed), device,
                           amp_dtype)
        seconds = progress["epoch_seconds"]
        record = {"epoch": epoch + 1, "step": progress["step"],
                  "train_loss": progress["epoch_loss_sum"] / max(progress["epoch_count"], 1),
                  "train_acc": progress["epoch_correct"] / max(progress["epoch_count"], 1),
                  "val_loss": val["loss"], "val_acc": val["accuracy"],
                  "tokens_per_s": progress["epoch_tokens"] / max(seconds, 1e-9),
                  "lr": scheduler.get_last_lr()[0], "seconds": seconds}
        if dist.is_main:
            with metrics_file.open("a") as file:
                file.write(json.dumps(record) + "\n")
        if writer is not None:
            for key in ("train_loss", "train_acc", "val_loss", "val_acc", "tokens_per_s", "lr"):
                writer.add_scalar(f"epoch/{key}", record[key], epoch + 1)
        log.info("epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.0f tokens/s | %.1fs",
                 epoch + 1, record["train_loss"], record["train_acc"], val["loss"], val["accuracy"],
                 record["tokens_per_s"], seconds)

        progress["train_seconds"] += seconds
        progress["train_tokens"] += progress["epoch_tokens"]
        improved = val["accuracy"] > progress["best_val_accuracy"]
        if improved:
            progress["best_val_accuracy"] = val["accuracy"]
            progress["epochs_since_best"] = 0
        else:
            progress["epochs_since_best"] += 1
        progress.update(epoch=epoch + 1, batch_in_epoch=0, epoch_loss_sum=0.0, epoch_correct=0, epoch_count=0,
                        epoch_tokens=0, epoch_seconds=0.0)
        if improved:
            checkpoint("best.pt")
        checkpoint("last.pt")
        if progress["epochs_since_best"] >= trainer.patience:
            stop_reason = f"early stopping: no better val accuracy for {trainer.patience} epochs"
            break
    log.info("training stopped (%s)", stop_reason)

    # -- test the best checkpoint ------------------------------------------------------------------------------
    ddp.barrier()                                      # rank 0 has written best.pt
    model.load_state_dict(load_checkpoint(checkpoints / "best.pt", map_location=device)["model"])
    model.eval()
    test_loader = data.loader("test", data_cfg["eval_batch_size"], shuffle=False, seed=cfg.seed)
    test = ddp.evaluate(evaluate, eval_forward, test_loader, device, amp_dtype)
    timing = evaluate(eval_forward, test_loader, device, amp_dtype, max_batches=trainer.infer_batches)  # warm now
    results = {
        "model": cfg.model.name, "cell": model.cell, "merge_mode": OmegaConf.to_container(cfg.model)["merge_mode"],
        "pooling": cfg.model.pooling, "data": data.name, "seed": cfg.seed, "num_parameters": num_parameters,
        "best_val_accuracy": progress["best_val_accuracy"], "test_accuracy": test["accuracy"],
        "test_loss": test["loss"], "majority_test_accuracy": data.majority_accuracy("test"),
        "epochs": progress["epoch"], "steps": progress["step"], "nonfinite_steps": progress["nonfinite_steps"],
        "train_tokens_per_s": progress["train_tokens"] / max(progress["train_seconds"], 1e-9),
        "infer_tokens_per_s": timing["tokens_per_s"], "wall_time_s": time.time() - started,
        "compile": trainer.compile, "precision": str(trainer.precision), "device": str(device),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
        "stop_reason": stop_reason, "run_dir": str(run_dir), "world_size": dist.world_size,
    }
    if dist.is_main:
        (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    ddp.barrier()                                      # results.json exists for every rank (and a sweep's report)
    if writer is not None:
        writer.close()
    log.info("test accuracy %.4f (best val %.4f) in %.1fs; results in %s", test["accuracy"],
             progress["best_val_accuracy"], results["wall_time_s"], run_dir / "results.json")
    return results
