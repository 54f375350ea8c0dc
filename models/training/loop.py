"""The training loop, top to bottom: ``train(cfg, run_dir) -> results``.

``python train.py`` (Hydra) calls it; so can notebooks and tests with a config from Hydra's compose API.
Config -> checks -> data -> ``models.create_model`` -> loop -> best checkpoint on the test split. Writes to
``run_dir``: ``metrics.jsonl`` (one line per epoch), ``results.json``, ``checkpoints/last.pt`` and ``best.pt``
(atomic, resumable with ``trainer.resume=<run dir>``), TensorBoard events when installed.

The run folder belongs to this run (``models/training/run_folder.py``: lock file, no silent reuse); a resume must
match the checkpoint's model, data and optimisation settings (``models/training/resume.py``); SIGINT/SIGTERM and
divergence stop cleanly with the command that continues (``models/training/stopping.py``).

Under ``torchrun`` the same loop runs as one rank of a DistributedDataParallel job: ``ddp.*`` calls shard each
global batch, sum metrics over ranks and let rank 0 alone write (``models/training/distributed.py``); in one process
they do nothing.
"""

import json
import logging
import math
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

from ..data import ChecksumError, DataFormatError, build_data
from ..zoo.registry import create_model
from . import distributed as ddp
from .checkpoint import (
    FORMAT,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .config import ConfigError, check_config, normalize_precision, optional_path
from .resume import adopt_history, load_for_resume, load_init_weights, load_weights, resolve_init_from, same_folder
from .run_folder import RunLock, continue_command, refuse_a_used_folder
from .steps import (
    autocast_dtype,
    build_optimizer,
    build_scheduler,
    evaluate,
    resolve_device,
    seed_everything,
    to_device,
)
from .stopping import Interrupted, SignalStop, TrainingDiverged

log = logging.getLogger("train")



def train(cfg: DictConfig, run_dir: Path) -> Dict[str, Any]:
    """Train ``cfg`` (the composed config of ``conf/config.yaml``) into ``run_dir``; returns ``results.json``'s dict.

    Raises ``ConfigError`` (a setting, the run folder or the data cannot be used), ``Interrupted`` (a signal:
    ``last.pt`` written, ``exit_code`` 130/143) or ``TrainingDiverged`` (non-finite losses)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_config(cfg)                                  # every key and value, before any data is touched
    lock = RunLock(run_dir) if ddp.env_rank() == 0 else None   # rank 0 speaks for a torchrun job
    if lock is not None:
        lock.acquire()
    try:
        return _train(cfg, run_dir)
    finally:
        if lock is not None:
            lock.release()


def _finite(weights: Dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in weights.values() if t.is_floating_point())


def _train(cfg: DictConfig, run_dir: Path) -> Dict[str, Any]:
    started = time.time()
    data_cfg = check_config(cfg)
    trainer, optim = cfg.trainer, cfg.optim
    config = OmegaConf.to_container(cfg, resolve=True)
    resume, init_from = optional_path(trainer.resume), optional_path(trainer.init_from)
    is_main = ddp.env_rank() == 0

    # -- the run folder and what it continues: settled before any data is read ---------------------------------
    state = None
    if resume:
        state = load_for_resume(resume, config, torch.device("cpu"))
        source_path: Path = state["path"]
        source_dir = source_path.parent.parent if source_path.parent.name == "checkpoints" else source_path.parent
        if is_main and not same_folder(source_dir, run_dir):
            refuse_a_used_folder(run_dir, trainer.overwrite)
    else:
        if init_from:                                   # exists: fail now, not after the data is read
            source = resolve_init_from(init_from).resolve()
            if trainer.overwrite and run_dir.resolve() in source.parents:
                raise ConfigError(f"trainer.init_from={init_from} lies in the run folder {run_dir} that "
                                  f"trainer.overwrite=true would delete; choose another hydra.run.dir")
        if is_main:
            refuse_a_used_folder(run_dir, trainer.overwrite)

    if trainer.num_threads:
        torch.set_num_threads(trainer.num_threads)
    seed_everything(cfg.seed)
    device = resolve_device(trainer.device)
    dist = ddp.init(device.type)                       # this process's rank and the world size (1 without torchrun)
    precision = normalize_precision(trainer.precision)
    amp_dtype = autocast_dtype(precision, device)

    # -- data and model --------------------------------------------------------------------------
    try:
        data = build_data(data_cfg, seed=cfg.seed)
        data.check(dist.world_size)
    except (DataFormatError, ChecksumError, FileNotFoundError, ValueError) as error:
        raise ConfigError(str(error)) from error        # a file to fix or a data setting to change: one line
    model_kwargs = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "name"}
    model = create_model(cfg.model.name, vocab_size=data.vocab_size, num_classes=data.num_classes, **model_kwargs)
    model.to(device)
    if init_from:
        path = load_init_weights(model, init_from, device)
        log.info("model weights from %s (trainer.init_from); new optimiser, schedule and step count", path)
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
    if state is not None:
        load_weights(model, state["model"], f"trainer.resume={state['path']}")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        progress.update(state["progress"])
        rng = ddp.rng_state_for_rank(state)
        if trainer.restore_rng and rng is not None:
            restore_rng_state(rng)
        if dist.is_main:
            adopt_history(source_dir, run_dir, progress)
        log.info("resumed from %s at epoch %d, step %d%s", state["path"], progress["epoch"], progress["step"],
                 "" if same_folder(source_dir, run_dir) else f"; the continued run is written to {run_dir}")
        state = None                                   # free the loaded tensors

    # The last healthy weights (the start, then each last.pt written while the weights are finite and the
    # training loss is not far above chance level, ln C): what a diverged run restarts from. Huge finite
    # weights (1e37 after a too-high learning rate) are not healthy: they only diverge again.
    good = {"model": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
            "step": progress["step"], "loss": math.nan}
    healthy_loss = 2.0 * math.log(max(data.num_classes, 2)) + 1.0

    def checkpoint(name: str) -> None:
        rng = ddp.gather_objects(capture_rng_state())  # every rank's (all ranks call checkpoint at the same step)
        if dist.is_main:
            save_checkpoint({"format": FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                             "rng": rng[0], "progress": dict(progress), "config": config,
                             **({"rng_ranks": rng} if dist.enabled else {})}, checkpoints / name)
        if name == "last.pt" and good["loss"] <= healthy_loss:
            weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            if _finite(weights):
                good.update(model=weights, step=progress["step"])

    def diverged() -> TrainingDiverged:
        """Write the last finite weights to ``recover.pt``; the error names it and the command to continue."""
        path = checkpoints / "recover.pt"
        if dist.is_main:
            save_checkpoint({"format": FORMAT, "model": good["model"], "optimizer": {}, "scheduler": {},
                             "scaler": {}, "rng": capture_rng_state(), "config": config,
                             "progress": {"step": good["step"], "weights_only": True}}, path)
        lr = f"{float(optim.lr) / 10:g}"
        command = continue_command(run_dir.parent / f"{run_dir.name}-lr{lr}",
                                   [f"trainer.init_from={path}", f"optim.lr={lr}"], dist.world_size)
        return TrainingDiverged(
            f"{progress['nonfinite_in_a_row']} non-finite losses in a row at step {progress['step']} with "
            f"optim.lr={optim.lr}; stopped. The last healthy model weights (step {good['step']}) are in {path}; "
            f"continue from them with a lower learning rate: {command}")

    def interrupted(signum: int) -> Interrupted:
        """Called after a finished step when a signal arrived: ``last.pt`` at this step, and the command."""
        checkpoint("last.pt")
        command = continue_command(run_dir, [f"trainer.resume={run_dir}"], dist.world_size)
        log.warning("interrupted at step %d; continue with: %s", progress["step"], command)
        return Interrupted(signum, progress["step"], command)

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
    with SignalStop() as signals:
        for epoch in range(progress["epoch"], trainer.max_epochs):
            model.train()
            loader = data.loader("train", data_cfg["batch_size"], shuffle=True, seed=cfg.seed, epoch=epoch,
                                 start_batch=progress["batch_in_epoch"], num_workers=data_cfg["num_workers"],
                                 bucket=data_cfg["bucket"])
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{trainer.max_epochs}", disable=not show_progress,
                       leave=False, dynamic_ncols=True)
            tick = time.perf_counter()
            for batch in bar:
                batch, weight = ddp.shard(batch)       # this rank's rows of the global batch (all of it in one process)
                inputs, lengths, labels = to_device(batch, device)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = forward(inputs, lengths)
                loss = F.cross_entropy(logits.float(), labels)
                progress["step"] += 1
                progress["batch_in_epoch"] += 1
                # Sums over the global batch (one all-reduce under DDP); every rank skips a non-finite step
                # together, and every rank stops after this step when any of them got a signal.
                loss_sum, correct, count, tokens, finite, stop = ddp.sum_over_ranks(
                    loss.item() * labels.numel(), int((logits.argmax(-1) == labels).sum()), labels.numel(),
                    int(lengths.sum()), int(torch.isfinite(loss)), signals.requested)
                if finite < dist.world_size:
                    # Skip the update, count it; several in a row mean the run has diverged.
                    progress["nonfinite_steps"] += 1
                    progress["nonfinite_in_a_row"] += 1
                    optimizer.zero_grad(set_to_none=True)
                    if progress["nonfinite_in_a_row"] >= trainer.max_nonfinite_steps:
                        raise diverged()
                    if stop:
                        raise interrupted(signals.signum or signal.SIGTERM)
                    continue
                progress["nonfinite_in_a_row"] = 0
                good["loss"] = loss_sum / count         # this step's loss, for the health check at last.pt
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss * weight).backward()  # weight: mean over this rank's rows -> share of the global mean
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
                if stop:
                    raise interrupted(signals.signum or signal.SIGTERM)
                if trainer.checkpoint_every_steps and progress["step"] % trainer.checkpoint_every_steps == 0:
                    checkpoint("last.pt")
                if trainer.kill_at_step is not None and progress["step"] == trainer.kill_at_step:
                    os.kill(os.getpid(), signal.SIGKILL)  # testing aid: a hard kill, nothing gets to clean up
                tick = time.perf_counter()
            bar.close()

            model.eval()                                # dropout off for validation; model.train() next epoch
            val = ddp.evaluate(evaluate, eval_forward,
                               data.loader("val", data_cfg["eval_batch_size"], shuffle=False, seed=cfg.seed),
                               device, amp_dtype)
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
            # A signal during validation: stop here, at the epoch's end (last.pt is this state).
            if ddp.sum_over_ranks(signals.requested)[0]:
                raise interrupted(signals.signum or signal.SIGTERM)
    log.info("training stopped (%s)", stop_reason)

    # -- test the best checkpoint ------------------------------------------------------------------------------
    ddp.barrier()                                      # rank 0 has written best.pt
    best = checkpoints / "best.pt"
    if best.is_file():
        model.load_state_dict(load_checkpoint(best, map_location=device)["model"])
    else:                                               # a resume at the final step whose source had no best.pt
        log.warning("no %s: testing the current weights", best)
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
        "compile": trainer.compile, "precision": precision, "device": str(device),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
        "stop_reason": stop_reason, "run_dir": str(run_dir), "world_size": dist.world_size,
        "resumed_from": str(resume) if resume else None, "init_from": str(init_from) if init_from else None,
        "config": config,
    }
    if dist.is_main:
        (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    ddp.barrier()                                      # results.json exists for every rank (and a sweep's report)
    if writer is not None:
        writer.close()
    log.info("test accuracy %.4f (best val %.4f) in %.1fs; results in %s", test["accuracy"],
             progress["best_val_accuracy"], results["wall_time_s"], run_dir / "results.json")
    return results
