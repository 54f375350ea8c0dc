"""The training loop, top to bottom: ``train(cfg, run_dir) -> results``.

``python train.py`` (Hydra) calls it; so can notebooks and tests with a config from Hydra's compose API.
Five named steps, read in order: :func:`~models.training.config.check_config` (every key, once: the typed,
frozen settings everything after reads), :func:`~models.training.setup.set_up` (run folder, data,
``models.create_model``, optimiser, resume), :func:`train_one_epoch`, :func:`end_of_epoch` (validation, the
epoch's metrics line, checkpoints, early stopping) and :func:`test_and_write` (the best checkpoint on the test
split, ``results.json``). Writes to ``run_dir``: ``metrics.jsonl`` (one line per epoch), ``results.json``,
``checkpoints/last.pt`` and ``best.pt`` (atomic, resumable with ``trainer.resume=<run dir>``), TensorBoard
events when installed.

The run folder belongs to this run (``models/training/run_folder.py``: lock file, no silent reuse); a resume must
match the checkpoint's model, data and optimisation settings (``models/training/resume.py``); SIGINT/SIGTERM and
divergence stop cleanly with the command that continues (``models/training/stopping.py``).

Under ``torchrun`` the same loop runs as one rank of a DistributedDataParallel job: ``ddp.*`` calls shard each
global batch, sum metrics over ranks and let rank 0 alone write (``models/training/distributed.py``); in one process
they do nothing.
"""

import json
import logging
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig
from torch.nn import functional as F
from tqdm import tqdm

from ..atomic import write_atomically
from ..blocks.validation import validate_inputs
from . import distributed as ddp
from .callbacks import Callback
from .checkpoint import load_checkpoint
from .config import check_config
from .evaluation import evaluate
from .progress import ProgressLines
from .run_folder import RunLock
from .runtime import to_device
from .setup import Run, set_up
from .stopping import SignalStop

log = logging.getLogger("train")


def train(cfg: DictConfig, run_dir: Path, callbacks: Sequence[Callback] = ()) -> Dict[str, Any]:
    """Train ``cfg`` (the composed config of ``conf/config.yaml``) into ``run_dir``; returns ``results.json``'s dict.
    ``callbacks``: :class:`~models.training.callbacks.Callback` objects the loop calls at the start and after
    every step.

    Raises ``ConfigError`` (a setting, the run folder or the data cannot be used), ``Interrupted`` (a signal:
    ``last.pt`` written, ``exit_code`` 130/143) or ``TrainingDiverged`` (non-finite losses)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = check_config(cfg)                       # every key and value, once, before any data is touched
    lock = RunLock(run_dir) if ddp.env_rank() == 0 else None   # rank 0 speaks for a torchrun job
    if lock is not None:
        lock.acquire()
    try:
        run = set_up(settings, run_dir)
        run.callbacks = tuple(callbacks)
        for callback in run.callbacks:
            callback.on_train_start(run)
        stop_reason = None
        lines = ProgressLines(run.trainer.log_every_steps, run.trainer.log_every_seconds, run.trainer.max_epochs,
                              run.progress.step)
        # trainer.validate_inputs=false: every forward of the run (training, validation, test) trusts the data's
        # token ids and lengths, so none reads them back from the device to check their range.
        with SignalStop() as signals, validate_inputs(run.trainer.validate_inputs):
            while stop_reason is None and run.progress.epoch < run.trainer.max_epochs:
                train_one_epoch(run, signals, lines)
                stop_reason = end_of_epoch(run, signals)
            # Still inside: a signal during the final test pass lets the (short) test finish and write results.json.
            results = test_and_write(run, stop_reason or "max_epochs")
            if signals.signum is not None:
                log.warning("%s arrived during the final test pass: the test finished and %s is written",
                            signal.Signals(signals.signum).name, run.run_dir / "results.json")
        return results
    finally:
        if lock is not None:
            lock.release()


def train_one_epoch(run: Run, signals: SignalStop, lines: Optional[ProgressLines] = None) -> None:
    """The training batches of epoch ``run.progress.epoch`` (from ``batch_in_epoch`` on, after a mid-epoch resume).

    Raises ``TrainingDiverged`` after ``trainer.max_nonfinite_steps`` non-finite losses in a row and ``Interrupted``
    after the step in which a signal arrived (on any rank)."""
    trainer, progress, data_cfg = run.trainer, run.progress, run.settings.data
    run.model.train()
    loader = run.data.loader("train", data_cfg["batch_size"], shuffle=True, seed=run.settings.seed,
                             epoch=progress.epoch,
                             start_batch=progress.batch_in_epoch, num_workers=data_cfg["num_workers"],
                             bucket=data_cfg["bucket"])
    show_bar = trainer.progress and sys.stderr.isatty() and run.dist.is_main
    bar = tqdm(loader, desc=f"epoch {progress.epoch + 1}/{trainer.max_epochs}", disable=not show_bar, leave=False,
               dynamic_ncols=True)
    # No bar (a log file, a batch job): a line in the log every log_every_steps steps or log_every_seconds.
    lines = None if show_bar or not run.dist.is_main else lines
    steps_per_epoch = len(loader) + progress.batch_in_epoch
    tick = time.perf_counter()
    for batch in bar:
        sums, stop = _step(run, batch, signals)
        if sums is None:                               # a non-finite loss: no update (nor timing) for this batch
            if progress.nonfinite_in_a_row >= trainer.max_nonfinite_steps:
                raise run.diverged()
            if stop:
                raise run.interrupted(signals.signum or signal.SIGTERM)
            continue
        now = time.perf_counter()
        progress.add_step(*sums, seconds=now - tick)
        shown = progress.epoch_metrics()
        bar.set_postfix(loss=f"{shown['train_loss']:.4f}", acc=f"{shown['train_acc']:.3f}",
                        tok_s=f"{shown['tokens_per_s']:,.0f}")
        if lines is not None and lines.due(progress.step):
            log.info("%s", lines.line(progress, steps_per_epoch))
        if run.loggers is not None and progress.step % trainer.log_every_steps == 0:
            run.loggers.log({"train/loss": sums[0] / sums[2]}, progress.step)
        if run.writer is not None and progress.step % trainer.log_every_steps == 0:
            run.writer.add_scalar("train/loss", sums[0] / sums[2], progress.step)
        if stop:
            raise run.interrupted(signals.signum or signal.SIGTERM)
        if trainer.checkpoint_every_steps and progress.step % trainer.checkpoint_every_steps == 0:
            run.checkpoint("last.pt")
        for callback in run.callbacks:
            callback.on_step_end(run, lambda: signals.signum is not None)
        tick = time.perf_counter()                     # the bar, logging and checkpoints are not training time
    bar.close()


def _step(run: Run, batch: Any, signals: SignalStop) -> Tuple[Optional[Tuple[float, int, int, int]], int]:
    """One optimiser step on one global batch. Returns ``((loss_sum, correct, count, tokens), stop)`` with sums
    over the global batch, or ``(None, stop)`` when any rank's loss is not finite (the update is skipped, counted)."""
    progress = run.progress
    batch, weight = ddp.shard(batch)                   # this rank's rows of the global batch (all of it in one process)
    if run.device.type == "cuda":                      # non_blocking copies are only asynchronous from pinned memory
        batch = tuple(t.pin_memory() for t in batch)
    inputs, lengths, labels = to_device(batch, run.device)
    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        logits = run.forward(inputs, lengths)
    loss = F.cross_entropy(logits.float(), labels)
    progress.step += 1
    progress.batch_in_epoch += 1
    # Sums over the global batch (one all-reduce under DDP); every rank skips a non-finite step together, and
    # every rank stops after this step when any of them got a signal.
    # One device-to-host copy for the step's statistics (each .item() would be a sync); lengths sum on the host.
    loss_value, correct_value, finite_value = torch.stack([
        loss.detach(), (logits.argmax(-1) == labels).sum().to(loss.dtype),
        torch.isfinite(loss).to(loss.dtype)]).tolist()
    loss_sum, correct, count, tokens, finite, stop = ddp.sum_over_ranks(
        loss_value * labels.numel(), int(correct_value), labels.numel(),
        int(batch[1].sum()), int(finite_value), signals.requested)
    run.optimizer.zero_grad(set_to_none=True)
    if finite < run.dist.world_size:
        progress.nonfinite_steps += 1
        progress.nonfinite_in_a_row += 1
        return None, stop
    progress.nonfinite_in_a_row = 0
    run.healthy.last_loss = loss_sum / count           # this step's loss, for the health check at last.pt
    run.scaler.scale(loss * weight).backward()         # weight: mean over this rank's rows -> share of the global mean
    grad_clip = run.settings.optim.grad_clip
    if grad_clip and grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update()
    return (loss_sum, correct, count, tokens), stop


def end_of_epoch(run: Run, signals: SignalStop) -> Optional[str]:
    """Validate, write the epoch's ``metrics.jsonl`` line and checkpoints; returns why training stops now
    (early stopping) or None. Raises ``Interrupted`` when a signal arrived during validation. Without a validation
    split (``data.val_fraction=0``) ``val_loss``/``val_acc`` are null and every epoch's weights become ``best.pt``."""
    trainer, progress = run.trainer, run.progress
    val: Dict[str, Optional[float]] = {"loss": None, "accuracy": None}
    if run.data.has_validation:
        run.model.eval()                               # dropout off for validation; model.train() next epoch
        with run.averaged_weights():                   # optim.ema_decay > 0: the moving average is validated
            val = ddp.evaluate(evaluate, run.eval_forward,
                               run.data.loader("val", run.settings.data["eval_batch_size"], shuffle=False,
                                               seed=run.settings.seed),
                               run.device, run.amp_dtype)
    seconds = progress.epoch_seconds
    record = {"epoch": progress.epoch + 1, "step": progress.step, **progress.epoch_metrics(),
              "val_loss": val["loss"], "val_acc": val["accuracy"], "lr": run.scheduler.get_last_lr()[0],
              "seconds": seconds}
    record = {key: record[key] for key in ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc",
                                           "tokens_per_s", "lr", "seconds")}   # the documented column order
    if run.dist.is_main:
        with (run.run_dir / "metrics.jsonl").open("a") as file:
            file.write(json.dumps(record) + "\n")
    if run.writer is not None:
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "tokens_per_s", "lr"):
            if record[key] is not None:
                run.writer.add_scalar(f"epoch/{key}", record[key], record["epoch"])
    if run.loggers is not None:
        run.loggers.log({f"epoch/{key}": record[key] for key in ("epoch", "train_loss", "train_acc", "val_loss",
                                                                  "val_acc", "tokens_per_s", "lr")}, record["step"])
    shown_val = ("no validation split" if val["accuracy"] is None
                 else f"val loss {val['loss']:.4f} acc {val['accuracy']:.4f}")
    log.info("epoch %d: train loss %.4f acc %.4f | %s | %.0f tokens/s | %.1fs",
             record["epoch"], record["train_loss"], record["train_acc"], shown_val, record["tokens_per_s"], seconds)

    if progress.finish_epoch(val["accuracy"]):
        run.checkpoint("best.pt", averaged=True)       # the weights just validated (no val split: the newest)
    run.checkpoint("last.pt")
    if progress.epochs_since_best >= trainer.patience:
        return f"early stopping: no better val accuracy for {trainer.patience} epochs"
    # A signal during validation: stop here, at the epoch's end (last.pt is this state).
    if ddp.sum_over_ranks(signals.requested)[0]:
        raise run.interrupted(signals.signum or signal.SIGTERM)
    return None


def test_and_write(run: Run, stop_reason: str) -> Dict[str, Any]:
    """Test the best checkpoint (else the current weights or their moving average), time inference, write
    ``results.json`` (rank 0)."""
    log.info("training stopped (%s)", stop_reason)
    settings, trainer, progress = run.settings, run.trainer, run.progress
    ddp.barrier()                                      # rank 0 has written best.pt
    best = run.checkpoints / "best.pt"
    try:
        best_weights = load_checkpoint(best, map_location=run.device)["model"] if best.is_file() else None
    except ValueError as error:                        # damaged after the resume's check: test what is in memory
        log.warning("%s; testing the current weights instead", error)
        best_weights = None
    if best_weights is not None:
        run.model.load_state_dict(best_weights)
    else:                                              # a resume at the final step whose source had no best.pt
        log.warning("no %s: testing the current weights%s", best, " (their moving average)" if run.ema else "")
        if run.ema is not None:
            run.model.load_state_dict(run.ema.weights())
    run.model.eval()
    test_loader = run.data.loader("test", settings.data["eval_batch_size"], shuffle=False, seed=settings.seed)
    test = ddp.evaluate(evaluate, run.eval_forward, test_loader, run.device, run.amp_dtype)
    timing = evaluate(run.eval_forward, test_loader, run.device, run.amp_dtype,   # warm now
                      max_batches=trainer.infer_batches)
    results = {
        "model": settings.model.name, "cell": run.model.cell, "merge_mode": run.config["model"]["merge_mode"],
        "pooling": settings.model.arguments["pooling"], "data": run.data.name, "seed": settings.seed,
        "num_parameters": run.num_parameters,
        "best_val_accuracy": progress.best_val_accuracy if run.data.has_validation else None,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"], "majority_test_accuracy": run.data.majority_accuracy("test"),
        "epochs": progress.epoch, "steps": progress.step, "nonfinite_steps": progress.nonfinite_steps,
        "train_tokens_per_s": progress.train_tokens / max(progress.train_seconds, 1e-9),
        "infer_tokens_per_s": timing["tokens_per_s"], "wall_time_s": time.time() - run.started,
        "compile": trainer.compile, "precision": run.precision, "device": str(run.device),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
        "stop_reason": stop_reason, "run_dir": str(run.run_dir), "world_size": run.dist.world_size,
        "resumed_from": run.resume, "init_from": run.init_from, "config": run.config,
    }
    if run.dist.is_main:
        write_atomically(run.run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    ddp.barrier()                                      # results.json exists for every rank (and a sweep's report)
    if run.writer is not None:
        run.writer.close()
    if run.loggers is not None:
        run.loggers.log({"test/accuracy": test["accuracy"], "test/loss": test["loss"],
                         "test/infer_tokens_per_s": timing["tokens_per_s"]}, progress.step)
        run.loggers.close()
    best_val = f"best val {progress.best_val_accuracy:.4f}" if run.data.has_validation else "no validation split"
    log.info("test accuracy %.4f (%s) in %.1fs; results in %s", test["accuracy"], best_val,
             results["wall_time_s"], run.run_dir / "results.json")
    return results
