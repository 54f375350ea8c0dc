"""Every config composes (Hydra compose API) and passes the checks; bad overrides fail with the key path."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.composing import compose_config
from omegaconf import OmegaConf

from models import list_models
from models.training.config import ConfigError, check_config, normalize_precision
from models.zoo.presets import preset_arguments

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
DATA = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))


def composed(*overrides: str):
    return compose_config(*overrides)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("data", DATA)
def test_every_model_and_data_config_composes_and_passes_the_checks(model: str, data: str) -> None:
    cfg = composed(f"model={model}", f"data={data}", "optim=sgd" if model == "birnn" else "optim=adamw")
    settings = check_config(cfg)
    assert settings.data["name"] == cfg.data.name and settings.model.name == model


def test_every_preset_has_a_model_config() -> None:
    assert MODELS == list(list_models())


@pytest.mark.parametrize("model", list_models())
def test_model_yaml_takes_its_values_from_the_preset(model: str) -> None:
    """conf/model/<name>.yaml names the preset; every value comes from models/zoo/presets.py, overrides win."""
    values = OmegaConf.to_container(composed(f"model={model}").model, resolve=True)
    assert values.pop("name") == model
    expected = preset_arguments(model)
    assert values == {key: expected[key] for key in values}
    assert set(expected) - set(values) == {"vocab_size", "num_classes", "input_size"}
    override = OmegaConf.to_container(composed(f"model={model}", "model.hidden_size=7").model, resolve=True)
    assert override == {**values, "name": model, "hidden_size": 7}


def test_a_preset_keeps_its_cell() -> None:
    with pytest.raises(ConfigError, match=re.escape("model.cell='gru': cell='gru' would change what preset 'bilstm' "
                                                    "is (cell 'lstm'); use 'bigru'")):
        check_config(composed("model.cell=gru"))
    with pytest.raises(ConfigError, match=re.escape("model.pooling='mean': pooling='mean' would change what preset "
                                                    "'bigru_attn' is")):
        check_config(composed("model=bigru_attn", "model.pooling=mean"))
    check_config(composed("model=birnn", "model.cell=rnn_relu"))       # both Elman RNNs are a birnn


def test_experiment_merge_modes_sweeps_modes_presets_and_seeds() -> None:
    cfg = compose_config("experiment=merge_modes", hydra=True)
    params = cfg.hydra.sweeper.params
    assert params["model.merge_mode"] == "concat,sum,mul,ave"
    assert params["model"] == "bilstm,bigru"
    assert cfg.hydra.mode.name == "MULTIRUN"


@pytest.mark.parametrize("experiment", ["trec", "sst2"])
def test_dataset_experiments_compose_and_pass_the_checks(experiment: str) -> None:
    cfg = composed(f"experiment={experiment}")
    assert check_config(cfg).data["name"] == experiment
    assert cfg.trainer.max_epochs == {"trec": 15, "sst2": 10}[experiment] and cfg.model.head_dropout == 0.3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.merge_mode=avg"],
         "model.merge_mode='avg' is not a merge mode; choose one of ['concat', 'sum', 'mul', 'ave']"),
        (["+model.typo=1"], "unknown config key model.typo; allowed keys under model:"),
        (["model.cell=transformer"],
         "model.cell='transformer' is not allowed; choose one of ['lstm', 'gru', 'rnn', 'rnn_relu']"),
        (["model.merge_mode=[null,sum]"], "model.merge_mode[0]=null is only allowed for the last layer"),
        (["trainer.compile=jit"],
         "trainer.compile='jit' is not allowed; choose one of ['none', 'script', 'aot_eager', 'inductor']"),
        (["trainer.device=tpu"], "trainer.device='tpu' is not allowed; choose one of ['auto', 'cpu', 'cuda']"),
        (["optim.name=lion"], "optim.name='lion' is not allowed; choose one of ['adamw', 'adam', 'sgd']"),
        (["+trainer.epochs=3"], "unknown config key trainer.epochs; allowed keys under trainer:"),
        (["+data.shuffle=false"], "unknown data config key(s) ['shuffle']"),
        (["data.task=sorting"], "data.task='sorting': expected one of"),
        (["seed=-1"], "seed=-1 must be a non-negative integer"),
        (["trainer.max_epochs=0"], "trainer.max_epochs=0 must be >= 1"),
        (["+extra=1"], "unknown config key <root>.extra; allowed keys under <root>:"),
        (["model.hidden_size=0"], "model.hidden_size=0: hidden_size must be a positive int, got 0"),
        (["model.dropout=1.5"], "model.dropout=1.5: dropout must be a float in [0, 1], got 1.5"),
        (["model.padding_idx=-1"], "model.padding_idx=-1: padding_idx must be an int in [0, vocab_size)"),
        (["optim.betas=[0.9]"], "optim.betas=[0.9] must be two numbers in [0, 1)"),
        (["optim.weight_decay=-1"], "optim.weight_decay=-1 must be >= 0.0"),
        (["trainer.patience=0"], "trainer.patience=0 must be >= 1"),
        (["trainer.precision=8"], "trainer.precision=8 is not allowed; choose one of 32, bf16, fp16 (16)"),
        (["trainer.device=cpu", "trainer.precision=fp16"], "trainer.precision='fp16' (fp16) needs a CUDA device"),
        (["trainer.device=cpu", "trainer.precision=16"], "trainer.precision=16 (fp16) needs a CUDA device"),
        (["trainer.resume=a", "trainer.init_from=b"], "trainer.resume='a' and trainer.init_from='b' both given"),
    ],
)
def test_bad_values_and_added_keys_are_refused_by_the_checks(overrides: list, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_config(composed(*overrides))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"trainer.device='cuda' but no CUDA device is available"):
        check_config(composed("trainer.device=cuda"))


@pytest.mark.parametrize("typed", ["32", "'32'", "fp32", "bf16", "BF16"])
def test_documented_precisions_are_accepted_as_typed(typed: str) -> None:
    check_config(composed(f"trainer.precision={typed}", "trainer.device=cpu"))
    assert normalize_precision(16) == normalize_precision("16") == "fp16"
    assert normalize_precision(32) == normalize_precision("32") == "32"


def run_train(*overrides: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.merge_mode=avg", "config error: model.merge_mode='avg' is not a merge mode"),
        ("+model.typo=1", "config error: unknown config key model.typo"),
        ("model.typo=1", "Could not override 'model.typo'"),
        ("model=resnet", "Could not find 'model/resnet'"),
        ("model.hidden_size=0", "config error: model.hidden_size=0: hidden_size must be a positive int, got 0"),
    ],
)
def test_bad_overrides_exit_non_zero_before_any_data_is_loaded(override: str, message: str, tmp_path: Path) -> None:
    result = run_train(override, f"hydra.run.dir={tmp_path}", "data=trec", "data.root=/nonexistent")
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert "nonexistent" not in result.stderr + result.stdout, "the checks must run before the data is read"
    if message.startswith("config error:"):
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.splitlines()[-1].startswith(message), "the error is the one last line"


def test_config_error_path_does_not_need_torch_compute() -> None:
    # The checks are pure config work: nothing is allocated on a device, no random number is drawn.
    before = torch.get_rng_state()
    with pytest.raises(ConfigError):
        check_config(composed("model.pooling=sum"))
    check_config(composed("model=bilstm_attn"))         # builds the model on the meta device
    assert torch.equal(before, torch.get_rng_state())


def test_a_data_root_that_does_not_exist_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_folder"
    result = run_train(f"hydra.run.dir={tmp_path / 'run'}", "data=trec", f"data.root={missing}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"config error: data.root='{missing}' does not exist")
    assert not missing.exists()


# ``python train.py`` with TREC's sources moved to a port nothing listens on (as without a network).
OFFLINE = """
import runpy, sys
import models.data.download as download
for name, spec in list(download.SOURCES["trec"].items()):
    download.SOURCES["trec"][name] = download.FileSpec(spec.relpath, "http://127.0.0.1:9/" + spec.relpath, spec.sha256)
sys.argv = [{script!r}, *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""


def test_a_download_without_network_ends_in_one_line(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    command = [sys.executable, "-c", OFFLINE.format(script=str(ROOT / "train.py")), f"hydra.run.dir={tmp_path / 'run'}",
               "data=trec", f"data.root={root}", "trainer.num_threads=1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"error: trec: cannot download http://127.0.0.1:9/trec/train_5500.label into "
                           f"data.root={root}: "), last
    assert "data.download=false" in last


@pytest.mark.parametrize(
    ("override", "key", "cause"),
    [
        ("trainer.max_epochs=abc", "trainer.max_epochs", "could not be converted to Integer"),
        ("optim.lr=fast", "optim.lr", "could not be converted to Float"),
        ("trainer.progress=maybe", "trainer.progress", "is not a valid bool"),
        ("data.batch_size=1.5", "data.batch_size", "could not be converted to Integer"),
        ("data.window=3", "data.window", "Key 'window' not in 'EndsSumDataConfig'"),
        ("trainer.epochs=3", "trainer.epochs", "Key 'epochs' not in 'TrainerConfig'"),
    ],
)
def test_types_and_unknown_keys_are_refused_when_composing(override: str, key: str, cause: str) -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as error:
        composed(override)
    assert override in str(error.value) or key in str(error.value)
    assert cause.lower() in str(error.value.__cause__).lower() and f"full_key: {key}" in str(error.value.__cause__)


@pytest.mark.parametrize("group", ["trainer", "optim", "data"])
def test_every_group_file_names_its_registered_schema(group: str) -> None:
    from omegaconf import OmegaConf

    from models.data.schema import DataConfig
    from models.training.schema import OptimConfig, TrainerConfig

    expected = {"trainer": TrainerConfig, "optim": OptimConfig, "data": DataConfig}[group]
    for path in sorted((CONF / group).glob("*.yaml")):
        node = composed(f"{group}={path.stem}")[group]
        assert issubclass(OmegaConf.get_type(node), expected), path


def test_a_config_composed_without_the_schemas_gets_the_same_checks() -> None:
    """``check_config`` checks types against the same dataclasses (a config loaded from a run's .hydra folder)."""
    cfg = OmegaConf.create(OmegaConf.to_container(composed()))
    cfg.trainer.max_epochs = "abc"
    with pytest.raises(ConfigError, match=r"trainer.max_epochs='abc' must be of type int"):
        check_config(cfg)
    cfg.trainer.max_epochs = None
    with pytest.raises(ConfigError, match=r"trainer.max_epochs must not be null"):
        check_config(cfg)
    del cfg.trainer["max_epochs"]
    with pytest.raises(ConfigError, match=r"trainer.max_epochs is not set"):
        check_config(cfg)
