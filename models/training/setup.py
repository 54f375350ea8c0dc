"""Set-up of a training run: everything the loop needs, in one :class:`Run`, built by :func:`set_up`.

In order: the run folder and what the run continues (settled before any data is read), threads, seeds and the
device, the data, the model (and ``trainer.init_from``'s weights), the optimiser and schedule, then a resume's
state (weights, optimiser, schedule, scaler, progress, RNG). :class:`Run` also writes the run's checkpoints and
builds the two ways a run stops early (a divergence, a signal), since both need the whole state.
"""

import dataclasses
import functools
import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, Mapping, Optional, Sequence

import torch
from torch import nn

from ..data import ChecksumError, DataBundle, DataFormatError, build_data
from ..data.preprocessing import Preprocessing
from . import distributed as ddp
from .callbacks import Callback
from .checkpoint import FORMAT, capture_rng_state, restore_cpu_path, restore_rng_state, save_checkpoint
from .config import ConfigError, ModelSettings, TrainConfig
from .loggers import MetricLoggers
from .optimizer import build_optimizer, build_scheduler
from .progress import HealthyWeights, Progress
from .resume import adopt_history, load_for_resume, load_init_weights, load_weights, resolve_init_from, same_folder
from .run_folder import clean_orphans, continue_command, record_hydra_files, refuse_a_used_folder
from .runtime import autocast_dtype, resolve_device, seed_everything
from .schema import TrainerConfig
from .stopping import Interrupted, TrainingDiverged
from .weight_average import WeightAverage, weight_average

log = logging.getLogger("train")


@dataclass
class Run:
    """One run's settings, data, model, optimiser and progress, as :func:`set_up` built them."""

    settings: TrainConfig                              # the checked config (``settings.trainer``, ``.optim``, ...)
    config: Dict[str, Any]                             # the composed config, plain and resolved: saved in checkpoints
    run_dir: Path
    dist: ddp.Context                                  # rank and world size (1 without torchrun)
    device: torch.device
    precision: str                                     # "32" | "bf16" | "fp16"
    amp_dtype: Optional[torch.dtype]                   # None: no autocast
    data: DataBundle
    model: nn.Module
    forward: Callable[..., torch.Tensor]               # training forward (DDP-wrapped and/or compiled)
    eval_forward: Callable[..., torch.Tensor]          # the same parameters, for validation and test
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    progress: Progress
    healthy: HealthyWeights
    ema: Optional[WeightAverage] = None                # optim.ema_decay > 0: the weights' moving average
    resume: Optional[str] = None                       # trainer.resume as given, None for a fresh run
    init_from: Optional[str] = None
    writer: Any = None                                 # a TensorBoard SummaryWriter (rank 0, when installed)
    preprocessing: Optional[Dict[str, Any]] = None     # raw input -> model input, in every checkpoint (JSON data)
    loggers: Optional[MetricLoggers] = None            # logger=csv|tensorboard|wandb|mlflow (rank 0)
    callbacks: Sequence[Callback] = ()                 # train(..., callbacks=...): called by the loop
    started: float = field(default_factory=time.time)

    @property
    def trainer(self) -> TrainerConfig:
        return self.settings.trainer

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def averaged_weights(self) -> ContextManager[None]:
        """Inside: the model holds the moving average of its weights (``optim.ema_decay`` > 0), else its own."""
        return self.ema.swapped_in() if self.ema is not None else nullcontext()

    def checkpoint(self, name: str, averaged: bool = False) -> None:
        """Write ``checkpoints/<name>`` (rank 0); at ``last.pt`` also offer the weights as healthy ones. ``model``:
        the training weights, or with ``averaged`` (``best.pt``) the weights that were validated, the moving average
        when there is one; ``ema``: the average's state, so a resume continues it."""
        rng = ddp.gather_objects(capture_rng_state())  # every rank's (all ranks call this at the same step)
        if self.dist.is_main:
            weights = self.ema.weights() if averaged and self.ema is not None else self.model.state_dict()
            save_checkpoint({"format": FORMAT, "model": weights,
                             "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                             "scaler": self.scaler.state_dict(), "rng": rng[0], "progress": self.progress.as_dict(),
                             "config": self.config, **({"rng_ranks": rng} if self.dist.enabled else {}),
                             **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
                             **({"preprocessing": self.preprocessing} if self.preprocessing is not None else {})},
                            self.checkpoints / name)
        if name == "last.pt":
            self.healthy.offer(self.model, self.progress.step)

    def diverged(self) -> TrainingDiverged:
        """Write the last healthy weights to ``recover.pt``; the error names it and the command to continue."""
        path = self.checkpoints / "recover.pt"
        if self.dist.is_main:
            save_checkpoint({"format": FORMAT, "model": self.healthy.weights, "optimizer": {}, "scheduler": {},
                             "scaler": {}, "rng": capture_rng_state(), "config": self.config,
                             "progress": {"step": self.healthy.step, "weights_only": True},
                             **({"preprocessing": self.preprocessing} if self.preprocessing is not None else {})},
                            path)
        lr = self.settings.optim.lr
        lower = f"{float(lr) / 10:g}"
        command = continue_command(self.run_dir.parent / f"{self.run_dir.name}-lr{lower}",
                                   [f"trainer.init_from={path}", f"optim.lr={lower}"], self.dist.world_size)
        return TrainingDiverged(
            f"{self.progress.nonfinite_in_a_row} non-finite losses in a row at step {self.progress.step} with "
            f"optim.lr={lr}; stopped. The last healthy model weights (step {self.healthy.step}) are in {path}; "
            f"continue from them with a lower learning rate: {command}")

    def interrupted(self, signum: int) -> Interrupted:
        """After a finished step when a signal arrived: ``last.pt`` at this step, and the command to continue."""
        self.checkpoint("last.pt")
        command = continue_command(self.run_dir, [f"trainer.resume={self.run_dir}"], self.dist.world_size)
        log.warning("interrupted at step %d; continue with: %s", self.progress.step, command)
        return Interrupted(signum, self.progress.step, command)


def attempt_header(resume: Optional[str], overwrite: bool, started: float) -> str:
    """The line that opens an attempt in ``train.log`` (which Hydra appends to): when, which process, what kind
    of attempt and the command-line overrides, so a folder's resumed or overwritten runs read apart."""
    kind = (f"resume of {resume}" if resume
            else "new run (trainer.overwrite=true: earlier outputs deleted)" if overwrite else "new run")
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = " ".join(HydraConfig.get().overrides.task) or "(none)"
    except ValueError:                                 # called from Python, not through train.py
        overrides = "(train() called from Python)"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started))
    return f"===== attempt started {stamp} UTC, pid {os.getpid()}: {kind}; overrides: {overrides} ====="


def set_up(settings: TrainConfig, run_dir: Path) -> Run:
    """Everything before the first step, from a config :func:`~models.training.config.check_config` checked;
    raises ``ConfigError`` for a folder or data that cannot be used."""
    started = time.time()
    trainer, resume, init_from = settings.trainer, settings.resume, settings.init_from
    config = settings.as_dict()
    state = _claim_the_run_folder(trainer, run_dir, config, resume, init_from)
    if ddp.env_rank() == 0:                            # train.log appends: each accepted attempt starts with this
        log.info("%s", attempt_header(resume, trainer.overwrite, started))
        record_hydra_files(run_dir, config)            # only now: a refused attempt leaves .hydra/ as it was

    if trainer.num_threads:
        torch.set_num_threads(trainer.num_threads)
    seed_everything(settings.seed)
    device = resolve_device(trainer.device)
    dist = ddp.init(device.type)
    amp_dtype = autocast_dtype(settings.precision, device)

    data = _build_data(settings.data, settings.seed, dist.world_size)
    model = _build_model(settings.model, data, device, init_from)
    ddp.seed_rank_streams(settings.seed)               # ranks > 0: own dropout masks, same initial weights
    # Both share the model's parameters; under DDP ``forward`` also averages gradients over ranks.
    forward, eval_forward = ddp.prepare_model(model, trainer.compile, device)
    log.info("model %s (%s params) on %s, data %s: %s", settings.model.name,
             f"{sum(p.numel() for p in model.parameters()):,}", device, data.name,
             {s: len(d) for s, d in data.splits.items()})

    train_order = data.loader("train", settings.data["batch_size"], shuffle=True, seed=settings.seed)
    ddp.check_batch_sizes(train_order.all_batches)     # every rank needs a row of every global batch
    optim = dataclasses.asdict(settings.optim)
    optimizer = build_optimizer(model, optim)
    scheduler = build_scheduler(optimizer, optim, trainer.max_epochs * len(train_order))
    run = Run(settings=settings, config=config, run_dir=run_dir, dist=dist, device=device,
              precision=settings.precision, amp_dtype=amp_dtype, data=data, model=model, forward=forward,
              eval_forward=eval_forward, optimizer=optimizer, scheduler=scheduler,
              scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16), progress=Progress(),
              healthy=HealthyWeights(model, 0, data.num_classes), ema=weight_average(model, settings.optim.ema_decay),
              resume=resume, init_from=init_from, started=started,
              preprocessing=Preprocessing.from_bundle(data).to_dict())
    if state is not None:
        _restore(run, state)
    run.writer = _tensorboard_writer(run)
    if dist.is_main:
        run.loggers = MetricLoggers(config.get("logger"), run_dir, config)
    return run


def _claim_the_run_folder(trainer: TrainerConfig, run_dir: Path, config: Dict[str, Any], resume: Optional[str],
                          init_from: Optional[str]) -> Optional[Dict[str, Any]]:
    """Refuse a folder that holds another run (rank 0) and a resume that does not match its checkpoint; returns
    the checkpoint a resume continues (on the CPU), else None."""
    is_main = ddp.env_rank() == 0
    if resume:
        state = load_for_resume(resume, config, torch.device("cpu"))
        if is_main and not same_folder(_source_dir(state["path"]), run_dir):
            refuse_a_used_folder(run_dir, trainer.overwrite)
        if is_main:
            clean_orphans(run_dir)                     # the lock is held: a temporary here is a killed write's
        return state
    if init_from:                                      # exists: fail now, not after the data is read
        source = resolve_init_from(init_from).resolve()
        if trainer.overwrite and run_dir.resolve() in source.parents:
            raise ConfigError(f"trainer.init_from={init_from} lies in the run folder {run_dir} that "
                              f"trainer.overwrite=true would delete; choose another hydra.run.dir")
    if is_main:
        refuse_a_used_folder(run_dir, trainer.overwrite)
        clean_orphans(run_dir)
    return None


def _source_dir(checkpoint_path: Path) -> Path:
    """The run folder a checkpoint file belongs to (``<run>/checkpoints/last.pt`` -> ``<run>``)."""
    parent = checkpoint_path.parent
    return parent.parent if parent.name == "checkpoints" else parent


def _build_data(data_cfg: Mapping[str, Any], seed: int, world_size: int) -> DataBundle:
    try:
        data = build_data(dict(data_cfg), seed=seed)
        data.check(world_size)
    except (DataFormatError, ChecksumError, FileNotFoundError, ValueError) as error:
        raise ConfigError(str(error)) from error        # a file to fix or a data setting to change: one line
    return data


def _build_model(settings: ModelSettings, data: DataBundle, device: torch.device,
                 init_from: Optional[str]) -> nn.Module:
    # The input comes from the data: a vocabulary of token ids, or (data=arrays) F float features per step.
    inputs = ({"input_size": data.num_features} if data.input_kind == "features" else {"vocab_size": data.vocab_size})
    model = settings.build(num_classes=data.num_classes, **inputs)
    model.to(device)
    if init_from:
        path = load_init_weights(model, init_from, device)
        log.info("model weights from %s (trainer.init_from); new optimiser, schedule and step count", path)
    return model


def _restore(run: Run, state: Dict[str, Any]) -> None:
    """A resume: the checkpoint's weights, optimiser, schedule, scaler, progress and RNG state; rank 0 copies the
    source's history (``metrics.jsonl``, ``best.pt``) when the continued run is written to another folder."""
    load_weights(run.model, state["model"], f"trainer.resume={state['path']}")
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    if run.ema is not None and "ema" in state:       # (a checkpoint of the same ema_decay: resume.py checked)
        run.ema.load_state_dict(state["ema"])
    run.progress.restore(state["progress"])
    rng = ddp.rng_state_for_rank(state)
    if rng is not None:
        restore_rng_state(rng)
    restore_cpu_path(state)  # the kernel-or-PyTorch choices of the checkpointed run, on any machine
    source_dir = _source_dir(state["path"])
    if run.dist.is_main:
        adopt_history(source_dir, run.run_dir, run.progress.as_dict(), state.get("best_damage"), state.get("best_step"))
    run.healthy = HealthyWeights(run.model, run.progress.step, run.data.num_classes)
    log.info("resumed from %s at epoch %d, step %d%s", state["path"], run.progress.epoch, run.progress.step,
             "" if same_folder(source_dir, run.run_dir) else f"; the continued run is written to {run.run_dir}")


@functools.cache
def _say_tensorboard_is_missing() -> None:
    """Once per process (a sweep runs many jobs in one), and only where trainer.tensorboard=true asked for it."""
    log.warning("trainer.tensorboard=true but tensorboard is not installed (pip install -e '.[tensorboard]'): "
                "no TensorBoard events")


def _tensorboard_writer(run: Run) -> Any:
    if not (run.trainer.tensorboard and run.dist.is_main):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        _say_tensorboard_is_missing()
        return None
    return SummaryWriter(str(run.run_dir / "tensorboard"))

