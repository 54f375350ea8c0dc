"""Train a zoo model: ``python train.py [model=bilstm] [model.merge_mode=sum] [data=trec data.root=...]``.

Hydra composes ``conf/``; ``models.trainer.train`` does the rest (read it top to bottom). Sweeps:
``python train.py -m model.merge_mode=concat,sum,mul,ave`` then the report lands in the sweep folder.
Data-parallel: ``torchrun --standalone --nproc_per_node=N train.py ...`` (see ``models/distributed.py``).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: 2 busy cores, do not spin-wait

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from models import distributed
from models.config import ConfigError
from models.trainer import train

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        results = train(cfg, run_dir)
    except ConfigError as error:
        log.error("config error: %s", error)
        print(f"config error: {error}", file=sys.stderr)
        sys.exit(2)
    return results["test_accuracy"]


if __name__ == "__main__":
    if distributed.launched_by_torchrun():
        # Every rank runs Hydra; this callback makes them all resolve one run folder (rank 0's clock).
        sys.argv.append(distributed.HYDRA_CALLBACK_OVERRIDE)
    try:
        main()
    finally:
        distributed.shutdown()
