"""Structured configs of ``train.py``'s ``trainer``, ``optim`` and ``data`` groups, registered in Hydra's ConfigStore.

Each ``conf/<group>/*.yaml`` names its schema first in its defaults list (``optional /schema/trainer@_here_``),
so Hydra checks types and unknown keys when it composes the config: ``trainer.max_epochs=abc`` or
``trainer.epochs=3`` fails before anything runs. Each default lives in one place: ``trainer`` and ``optim``
values and their comments in their YAML files (these schemas have none), ``data`` defaults in
``models/data/schema.py`` (the library's ``build_data`` needs them; the YAML files only choose). A field's
``metadata`` holds the allowed values (``choices``) or bounds (``min``, ``above``) that
:func:`models.training.config.check_config` checks after composition, with the cross-field checks; it hands the
loop a frozen instance of each (the loop never reads the composed ``DictConfig``).

Importing ``models.training`` (any module of it) registers the schemas; the YAML names them ``optional`` so a
compose without them still works, and ``check_config`` checks the same schema either way.
"""

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from ..data import TASKS
from ..data.schema import FILE_SCHEMAS, TEXT_SCHEMAS, synthetic_schema
from ..deploy.compile import COMPILE_MODES

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("none", "cosine", "linear")
TRAIN_COMPILE_MODES = tuple(mode for mode in COMPILE_MODES if mode != "export")  # export graphs are eval-only
DEVICES = ("auto", "cpu", "cuda")


def _key(*, choices: Any = None, minimum: Any = None, above: Any = None) -> Any:
    """A required field (its value comes from the YAML) with the values it may take."""
    metadata = {k: v for k, v in (("choices", choices), ("min", minimum), ("above", above)) if v is not None}
    return field(default=MISSING, metadata=metadata)


@dataclass(frozen=True)
class TrainerConfig:
    """``trainer``: how the loop runs, checkpoints and reports (``conf/trainer/default.yaml``)."""

    max_epochs: int = _key(minimum=1)
    device: str = _key(choices=DEVICES)
    compile: str = _key(choices=TRAIN_COMPILE_MODES)
    precision: Any = MISSING                          # as typed (32, "32", 16, bf16, ...): normalize_precision
    patience: int = _key(minimum=1)
    resume: Optional[str] = MISSING
    overwrite: bool = MISSING
    init_from: Optional[str] = MISSING
    checkpoint_every_steps: Optional[int] = _key(minimum=1)
    max_nonfinite_steps: int = _key(minimum=1)
    num_threads: Optional[int] = _key(minimum=1)
    log_every_steps: int = _key(minimum=1)
    log_every_seconds: float = _key(above=0)
    progress: bool = MISSING
    tensorboard: bool = MISSING
    validate_inputs: bool = MISSING
    infer_batches: int = _key(minimum=0)


@dataclass(frozen=True)
class OptimConfig:
    """``optim``: the optimiser and its schedule (``conf/optim/*.yaml``)."""

    name: str = _key(choices=OPTIMIZERS)
    lr: float = _key(above=0)
    weight_decay: float = _key(minimum=0.0)
    betas: Optional[List[float]] = MISSING            # two numbers in [0, 1): checked in check_config
    momentum: Optional[float] = _key(minimum=0.0)
    scheduler: str = _key(choices=SCHEDULERS)
    warmup_steps: int = _key(minimum=0)
    grad_clip: float = _key(minimum=0.0)
    ema_decay: float = _key(minimum=0.0)           # < 1: checked in check_config


def structured(schema: type) -> DictConfig:
    """``schema``'s node with every key ``???``, writable: OmegaConf makes a frozen dataclass's node read-only,
    and the YAML and the overrides are merged into it. ``OmegaConf.to_object`` of the merged node is a frozen
    ``schema``."""
    node = OmegaConf.structured(schema)
    OmegaConf.set_readonly(node, False)
    return node


def register() -> None:
    """Store the schemas as ``schema/trainer``, ``schema/optim`` and ``schema/data/<option>`` (one per file of
    ``conf/data/``: a synthetic task's name, or a text dataset's)."""
    store = ConfigStore.instance()
    store.store(group="schema", name="trainer", node=structured(TrainerConfig))
    store.store(group="schema", name="optim", node=structured(OptimConfig))
    for task in TASKS:
        store.store(group="schema/data", name=task, node=synthetic_schema(task))
    for name, schema in {**TEXT_SCHEMAS, **FILE_SCHEMAS}.items():
        store.store(group="schema/data", name=name, node=schema)
