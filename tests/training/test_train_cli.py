"""What ``python train.py`` shows before it trains: ``--help``, one-line errors for group choices and merge modes,
and ``experiment=tiny`` with any dataset."""

from typing import Callable

import pytest
from helpers.composing import CONF
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from models.training.config import ConfigError, check_config
from models.zoo import list_models


def help_page(*overrides: str) -> str:
    """The text ``python train.py --help`` prints (the template Hydra fills in, resolved as Hydra resolves it)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
        return cfg.hydra.help.template


def test_help_lists_only_the_groups_users_choose_from() -> None:
    page = help_page()
    groups = page.split("== Config groups (group=option) ==", 1)[1].split("==", 1)[0]
    lines = {line.split(":")[0]: line.split(": ")[1].split(", ") for line in groups.strip().splitlines()}
    assert {"data", "experiment", "model", "optim", "trainer"} <= set(lines)
    assert not [group for group in lines if group.startswith(("schema", "hydra"))]
    assert lines["model"] == sorted(list_models())                    # no 'preset'
    assert "tiny" in lines["experiment"]


def test_help_prints_resolved_values() -> None:
    page = help_page("model=bigru", "model.hidden_size=32")
    assert "zoo_preset" not in page and "${" not in page
    assert "  cell: gru\n" in page and "  hidden_size: 32\n" in page and "--cfg job" in page


def test_model_preset_fails_in_one_line(compose: Callable[..., DictConfig]) -> None:
    with pytest.raises(ConfigError) as error:
        check_config(compose("model=preset"))
    message = str(error.value)
    assert "\n" not in message and message.startswith("model=preset is the base") and "model=bilstm" in message


@pytest.mark.parametrize(("override", "expected"), [
    ("model.merge_mode=[concat,None]", "model.merge_mode[1]='None' is not a merge mode; choose one of "
                                      "['concat', 'sum', 'mul', 'ave'] or null; write null, not None"),
    ("model.merge_mode=None", "write null, not None"),
    ("model.merge_mode=[null,sum]", "model.merge_mode[0]=null is only allowed for the last layer"),
    ("model.merge_mode=avg", "or null; on the command line: model.merge_mode=sum (every layer), "
                             "model.merge_mode=null (no merge, the last layer only) or one mode per layer: "
                             "model.merge_mode=[concat,null]"),
])
def test_merge_mode_errors_show_the_command_line_spelling(compose: Callable[..., DictConfig], override: str,
                                                          expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        check_config(compose(override))
    assert expected in str(error.value) and "or None" not in str(error.value) and "=None " not in str(error.value)


def test_the_spelling_the_errors_show_works(compose: Callable[..., DictConfig]) -> None:
    check_config(compose("model.merge_mode=[concat,null]"))
    assert compose("model.merge_mode=null").model.merge_mode is None


@pytest.mark.parametrize("data", ["trec", "sst2", "first_last"])
def test_experiment_tiny_composes_with_any_dataset(compose: Callable[..., DictConfig], data: str) -> None:
    cfg = compose("experiment=tiny", f"data={data}")
    assert cfg.model.hidden_size == 8 and cfg.trainer.max_epochs == 2
    assert check_config(cfg).data["name"] == ("synthetic" if data == "first_last" else data)
    assert compose("experiment=tiny").data.num_train == 192                  # alone: the tiny synthetic data
