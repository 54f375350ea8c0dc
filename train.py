"""Train a zoo model: ``python train.py [model=bilstm] [model.merge_mode=sum] [data=trec data.root=...]``.

Hydra composes ``conf/``; ``models.training.loop.train`` does the rest (read it top to bottom). Sweeps:
``python train.py -m model.merge_mode=concat,sum,mul,ave`` then the report lands in the sweep folder.
Data-parallel: ``torchrun --standalone --nproc_per_node=N train.py ...`` (see ``models/training/distributed.py``).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: 2 busy cores, do not spin-wait

import json
import logging
import sys
import traceback
from pathlib import Path
from typing import List

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import models.training  # noqa: F401  (registers what conf/ composes from: schemas, the model group, resolvers)

# The training stack (data, loop, checkpoints) is imported where a run needs it, not here: ``--help`` and ``--cfg``
# come back without loading it.

log = logging.getLogger("train")
failed_jobs: list = []   # sweep jobs that failed in this process (the basic launcher runs them all here)


def _record_failure(run_dir: Path, error: BaseException, kind: str) -> None:
    """A failed sweep job leaves ``job_error.json`` in its folder; the sweep goes on and the report lists it."""
    from models.training.report import JOB_ERROR

    overrides = list(HydraConfig.get().overrides.task)
    record = {"kind": kind, "error": type(error).__name__, "message": str(error), "overrides": overrides,
              "traceback": "".join(traceback.format_exception(error)) if kind == "exception" else None}
    try:
        (run_dir / JOB_ERROR).write_text(json.dumps(record, indent=2) + "\n")
    except OSError:
        pass
    failed_jobs.append(record)


def finished_already(cfg: DictConfig, run_dir: Path) -> dict | None:
    """The ``results.json`` of a run this job already finished in ``run_dir`` with the same settings (a sweep run
    again), else None: such a job is reported as done, not refused as a folder in use."""
    from models.training.config import optional_path
    from models.training.resume import config_differences

    results = run_dir / "results.json"
    trainer = cfg.trainer
    if trainer.overwrite or optional_path(trainer.resume) or optional_path(trainer.init_from) or not results.is_file():
        return None
    try:
        saved = json.loads(results.read_text())
        current = OmegaConf.to_container(cfg, resolve=True)
        config = saved["config"]
        same = not config_differences(config, current) and \
            config["trainer"]["max_epochs"] == current["trainer"]["max_epochs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return saved if same and "test_accuracy" in saved else None


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """One run (or one sweep job): train, test, write ``results.json``; returns the best **validation** accuracy.

    The return value is what a Hydra sweeper optimises (``hydra/sweeper=optuna``, ``conf/hparams_search/``): the
    metric early stopping selects the weights by (``best_val_accuracy``), never a test metric, so a sweep cannot
    tune on the test split. A run without a validation split (``data.val_fraction=0``) returns None and logs
    why; so does a failed sweep job."""
    from hydra.types import RunMode

    from models.data import DownloadError
    from models.training.config import ConfigError
    from models.training.loop import train
    from models.training.stopping import Interrupted, TrainingDiverged

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    done = finished_already(cfg, run_dir) if sweeping else None
    if done is not None:
        log.info("%s already holds this job's finished run (results.json): not run again", run_dir)
        return done["test_accuracy"]
    try:
        results = train(cfg, run_dir)
    except ConfigError as error:
        message = "config error: " + " ".join(str(error).split())     # one line, whatever the message held
        # stderr only: a refused attempt writes nothing into the run folder, whose train.log may be another run's.
        print(message, file=sys.stderr)
        if sweeping:
            _record_failure(run_dir, error, "config error")
            return None
        sys.exit(2)
    except Interrupted as interrupt:
        print(f"interrupted at step {interrupt.step}; continue with: {interrupt.command}", file=sys.stderr)
        sys.exit(interrupt.exit_code)                  # 130 (SIGINT) / 143 (SIGTERM); a sweep stops too
    except KeyboardInterrupt:                          # Ctrl-C outside the loop's steps, or a second Ctrl-C
        message = f"interrupted; checkpoints in {run_dir / 'checkpoints'} are as last written"
        log.warning("%s", message)
        print(message, file=sys.stderr)
        sys.exit(130)
    except (TrainingDiverged, DownloadError) as error:
        log.error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        if sweeping:
            _record_failure(run_dir, error, "diverged" if isinstance(error, TrainingDiverged) else "download")
            return None
        sys.exit(1)
    except Exception as error:
        if not sweeping:
            raise
        log.exception("job failed; the sweep goes on")
        _record_failure(run_dir, error, "exception")
        return None
    best_val = results["best_val_accuracy"]
    if best_val is None:
        log.warning("no validation split (data.val_fraction=0): main returns None, nothing a sweeper could "
                    "optimise; tune with a validation split, then train the final model on every row")
    return best_val


def _print_help(arguments: List[str]) -> bool:
    """``--help`` (or ``-h``) with ``key=value`` overrides only: print the help page and return True, the same
    text Hydra's ``--help`` prints, without its listing every config group twice (``cli_help.help_page``). With
    any other flag, or overrides that do not compose, Hydra answers (and reports the error as ever)."""
    if not {"--help", "-h"} & set(arguments):
        return False
    overrides = [a for a in arguments if a not in ("--help", "-h")]
    if any(a.startswith("-") for a in overrides):
        return False
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from models.training.cli_help import help_page

    try:
        text = help_page(Path(__file__).resolve().parent / "conf", "config", overrides)
    except (HydraException, OmegaConfBaseException):
        return False
    if text is None:
        return False
    print(text)
    return True


def cli() -> None:
    """``python train.py ...``: one run, a sweep (``-m``) or one rank of a ``torchrun`` job. Exit status: 0, 2 for a
    config error, 1 for a failed run or a sweep with a failed job, 130/143 after SIGINT/SIGTERM."""
    from models.training import distributed

    if _print_help(sys.argv[1:]):
        return
    if distributed.launched_by_torchrun():
        # Every rank runs Hydra; this callback makes them all resolve one run folder (rank 0's clock).
        sys.argv.append(distributed.HYDRA_CALLBACK_OVERRIDE)
    try:
        main()
    finally:
        distributed.shutdown()
    from models.training import report

    if failed_jobs or report.failed_in_last_sweep:
        sys.exit(1)                                    # the sweep ran to its end, but not every job succeeded


if __name__ == "__main__":
    cli()
