"""What a resume may change and what it refuses (issue 37): every ``data.*`` key that says what the data is, and
``trainer.precision``, must match the checkpoint; where the files live (``data.root`` and the other location keys)
may change; the NumPy RNG comes back with the rest of the RNG state. Tiny synthetic runs in this process."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.composing import TINY, compose_config
from omegaconf import OmegaConf

from models.training.checkpoint import load_checkpoint, save_checkpoint
from models.training.config import ConfigError
from models.training.loop import train
from models.training.resume import check_resume_config, config_differences

TINY_HERE = [*TINY, "trainer.tensorboard=false"]


def run(run_dir: Path, *overrides: str) -> dict:
    return train(compose_config(*TINY_HERE, *overrides), run_dir)


def plain(*overrides: str) -> dict:
    return OmegaConf.to_container(compose_config(*overrides), resolve=True)


def fingerprint(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished 2-epoch tiny run; the tests only read it or copy it."""
    run_dir = tmp_path_factory.mktemp("finished")
    threads = torch.get_num_threads()
    run(run_dir)
    torch.set_num_threads(threads)
    return run_dir


# -- data.*: what the data is must match, where it lives may change ------------------------------------------
@pytest.mark.parametrize(("override", "expected"), [
    ("data=first_last", "data.task: 'ends_sum' in the checkpoint, 'first_last' now"),
    ("data.batch_size=16", "data.batch_size: 32 in the checkpoint, 16 now"),
    ("data.max_len=11", "data.max_len: 12 in the checkpoint, 11 now"),
])
def test_a_resume_with_other_data_settings_is_refused_naming_the_key(finished: Path, override: str,
                                                                     expected: str) -> None:
    before = fingerprint(finished)
    with pytest.raises(ConfigError) as error:
        run(finished, f"trainer.resume={finished}", override)
    assert expected in str(error.value)
    assert fingerprint(finished) == before, "a refused resume touches nothing"


def test_a_resume_in_another_precision_is_refused(finished: Path) -> None:
    """fp32 <-> bf16 changes every rounding: the continued run would not be the run the checkpoint started."""
    with pytest.raises(ConfigError, match=r"trainer\.precision: '32' in the checkpoint, 'bf16' now"):
        run(finished, f"trainer.resume={finished}", "trainer.precision=bf16")
    # 32 and "32" are the same precision, not a change
    assert config_differences(plain(*TINY, "trainer.precision=32"), plain(*TINY, "trainer.precision='32'")) == []


def test_where_the_text_files_live_may_change_but_not_what_they_hold() -> None:
    saved = plain("data=trec", "data.root=/data/on/the/old/node")
    moved = plain("data=trec", "data.root=/scratch/elsewhere", "data.download=false", "data.verify_checksum=false",
                  "data.num_workers=2")
    assert config_differences(saved, moved) == []
    check_resume_config(Path("last.pt"), saved, moved)          # no error
    changed = plain("data=trec", "data.root=/scratch/elsewhere", "data.lowercase=false", "data.batch_size=8")
    assert config_differences(saved, changed) == ["data.batch_size: 64 in the checkpoint, 8 now",
                                                  "data.lowercase: True in the checkpoint, False now"]
    with pytest.raises(ConfigError, match=r"trainer.resume: last.pt was trained with other settings"):
        check_resume_config(Path("last.pt"), saved, changed)


# -- the NumPy RNG --------------------------------------------------------------------------------------------
def test_a_resume_restores_the_numpy_rng_of_the_checkpoint(tmp_path: Path, finished: Path) -> None:
    """User code (a custom dataset, an augmentation) that draws from NumPy's global RNG must see the same numbers
    after a resume. Nothing in the training loop draws from NumPy today, so the state the resumed run ends with is
    the one the checkpoint held: plant a distinctive one in a copy of the checkpoint and look for it."""
    np.random.seed(2024)
    np.random.random(7)
    planted = np.random.get_state()
    expected = np.random.random(5)
    checkpoint = load_checkpoint(finished / "checkpoints" / "last.pt")
    name, key, *_ = checkpoint["rng"]["numpy"]
    checkpoint["rng"]["numpy"] = [planted[0], torch.from_numpy(planted[1].astype(np.int64)), *planted[2:]]
    assert name == planted[0] and key.shape == (624,)
    source = tmp_path / "source.pt"
    save_checkpoint(checkpoint, source)
    np.random.seed(0)                                  # anything else than the planted state
    run(tmp_path / "continued", f"trainer.resume={source}")   # max_epochs reached already: restore, test, finish
    np.testing.assert_array_equal(np.random.random(5), expected)
