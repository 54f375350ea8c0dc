"""A sweep checks every job's config before it launches any, and names the bad value and its job."""

from typing import List

import pytest
from helpers.composing import CONF
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from models.training.sweep_check import SweepConfigError, check_jobs, sweep_jobs


def sweep_config(task: List[str]) -> DictConfig:
    """The config Hydra hands ``on_multirun_start`` for ``python train.py -m *task``."""
    plain = [o for o in task if "," not in o]
    cfg = compose(config_name="config", overrides=plain, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.overrides.task = task
    return cfg


@pytest.fixture()
def hydra_app() -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def test_a_bad_value_stops_the_sweep_naming_the_job(hydra_app: None) -> None:
    cfg = sweep_config(["experiment=tiny", "model.merge_mode=concat,sum,avg", "seed=0,1"])
    assert len(sweep_jobs(cfg)) == 6
    with pytest.raises(SweepConfigError) as error:
        check_jobs(cfg)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("sweep job 4 (experiment=tiny model.merge_mode=avg seed=0): model.merge_mode='avg' "
                              "is not a merge mode")
    assert message.endswith("no job was launched")


def test_an_experiments_own_sweep_is_checked_too(hydra_app: None) -> None:
    cfg = sweep_config(["experiment=merge_modes"])
    assert len(sweep_jobs(cfg)) == 24                          # bilstm, bigru x 4 modes x 3 seeds
    cfg = sweep_config(["experiment=merge_modes", "optim.lr=-1"])
    with pytest.raises(SweepConfigError, match=r"^sweep job 0 \(.*optim.lr=-1.*\): optim.lr=-1"):
        check_jobs(cfg)
