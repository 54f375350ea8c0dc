"""The one way tests compose ``conf/`` (Hydra's compose API, as notebooks do) and the one tiny run.

``TINY`` selects ``conf/experiment/tiny.yaml`` (192 synthetic sequences, 2 epochs, hidden size 8, one thread):
``python train.py *TINY ...`` in a subprocess, ``compose_config(*TINY, ...)`` in this process. Further overrides
come after it and win. ``tests/conftest.py`` offers :func:`compose_config` as the ``compose`` fixture.
"""

from pathlib import Path
from typing import Tuple

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import models.training  # noqa: F401  (registers the config schemas in Hydra's ConfigStore)

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
TINY: Tuple[str, ...] = ("experiment=tiny",)


def compose_config(*overrides: str, hydra: bool = False) -> DictConfig:
    """``conf/config.yaml`` with ``overrides`` (``hydra=True``: with the ``hydra`` node, e.g. sweeper params).
    Overrides of ``hydra.*`` other than with ``hydra=True`` are dropped (they configure a ``python train.py``
    process, not the config a test trains)."""
    kept = list(overrides) if hydra else [o for o in overrides if not o.startswith("hydra.")]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=kept, return_hydra_config=hydra)
