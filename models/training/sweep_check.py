"""A sweep checks every job's config before it launches any (``conf/hydra/default.yaml``'s callbacks).

Hydra composes each job of a basic sweep before launching it, which catches a wrong key or group option; the
values (``model.merge_mode=avg``, ``optim.lr=-1``, a ``data.root`` that does not exist) are checked only by
``check_config`` when the job starts, after the jobs before it have trained. :class:`SweepCheckCallback`
expands the sweep as Hydra's basic sweeper will, composes each job and runs ``check_config`` on it, and stops
the sweep with one line naming the job, its overrides and the bad value, before anything trains.
"""

import sys
from typing import Any, List

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency
    Callback = object  # type: ignore[assignment,misc]

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


class SweepConfigError(ValueError):
    """A job of the sweep that cannot run."""


def sweep_jobs(config: DictConfig) -> List[List[str]]:
    """The override lists of every job of a basic sweep, in launch order (``[]`` for another sweeper, whose
    jobs are chosen while it runs)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    if config.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        return []
    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def check_jobs(config: DictConfig) -> int:
    """Compose and check every job of the sweep ``config`` describes; returns how many. Raises
    :class:`SweepConfigError` (one line) at the first job that cannot run."""
    from hydra import compose

    from .config import check_config

    jobs = sweep_jobs(config)
    for number, job in enumerate(jobs):
        try:
            check_config(compose(config_name=config.hydra.job.config_name, overrides=list(job)))
        except Exception as error:   # a config error, or a value Hydra cannot compose
            message = " ".join(str(error).split())
            raise SweepConfigError(f"sweep job {number} ({' '.join(job)}): {message}; no job was launched") \
                from error
    return len(jobs)


class SweepCheckCallback(Callback):  # type: ignore[misc]
    """Hydra callback: checks every job of a multirun before the first is launched."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_jobs(config)
        except SweepConfigError as error:
            print(f"config error: {error}", file=sys.stderr)
            sys.exit(2)
