"""``models/training/checkpoint.py`` function by function, sharp enough that mutation testing (issue 37) finds no
change a user would not notice: every RNG comes back exactly, every way a file is wrong gives its own message,
and the load never unpickles. Fast (no training)."""

import logging
import pickle
import random
import re
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest
import torch

from models.data.preprocessing import Preprocessing, PreprocessingError
from models.training.checkpoint import (
    FORMAT,
    REQUIRED_KEYS,
    capture_rng_state,
    load_checkpoint,
    read_preprocessing,
    resolve_checkpoint_path,
    restore_rng_state,
    save_checkpoint,
)


def checkpoint(**extra: Any) -> Dict[str, Any]:
    state: Dict[str, Any] = {key: {} for key in REQUIRED_KEYS}
    state.update({"format": FORMAT, "model": {"w": torch.arange(3.0)}, "progress": {"step": 4}, **extra})
    return state


def draws() -> tuple:
    """One draw from every RNG a run (or a user's code in it) may use; NumPy's Gaussian twice, so its cached
    second value is part of what must come back."""
    return (torch.rand(3).tolist(), random.random(), random.gauss(0.0, 1.0), np.random.rand(2).tolist(),
            np.random.standard_normal(), np.random.standard_normal())


def test_every_rng_comes_back_exactly_through_a_checkpoint_file(tmp_path: Path) -> None:
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    draws()
    np.random.standard_normal()                        # NumPy now holds a cached Gaussian (has_gauss = 1)
    random.gauss(0.0, 1.0)                             # and Python its gauss_next
    state = capture_rng_state()
    expected = draws()
    assert state["cuda"] == [] if not torch.cuda.is_available() else len(state["cuda"]) >= 1
    assert state["numpy"][0] == "MT19937" and state["numpy"][1].dtype == torch.int64
    assert len(state["numpy"]) == 5 and state["numpy"][3] == 1, "position, has_gauss and the cached Gaussian kept"
    save_checkpoint(checkpoint(rng=state), tmp_path / "last.pt")
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    draws()
    restore_rng_state(load_checkpoint(tmp_path / "last.pt")["rng"])
    assert draws() == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="what a CPU-only machine does with a GPU run's RNG state")
def test_a_gpu_runs_rng_state_restores_on_a_cpu_only_machine() -> None:
    state = capture_rng_state()
    expected = draws()
    restore_rng_state({**state, "cuda": [torch.zeros(16, dtype=torch.uint8)]})   # CUDA state skipped, not an error
    assert draws() == expected


class FakeCuda:
    """``torch.cuda``'s RNG calls, recorded: what capture and restore do with CUDA on any machine."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, available: bool) -> None:
        self.state, self.restored = [torch.full((8,), 7, dtype=torch.uint8)], []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: self.state)
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self.restored.append)


def test_with_cuda_its_rng_state_is_captured_and_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = FakeCuda(monkeypatch, available=True)
    state = capture_rng_state()
    assert state["cuda"] is cuda.state
    restore_rng_state(state)
    assert cuda.restored == [cuda.state]


def test_without_cuda_no_cuda_rng_state_is_captured_or_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = FakeCuda(monkeypatch, available=False)
    state = capture_rng_state()
    assert state["cuda"] == []
    restore_rng_state({**state, "cuda": cuda.state})    # a GPU run's checkpoint resumed on a CPU-only machine
    assert cuda.restored == []


def test_save_refuses_a_checkpoint_lacking_keys_and_writes_nothing(tmp_path: Path) -> None:
    state = checkpoint()
    del state["rng"], state["scaler"]
    message = (f"checkpoint to save lacks keys ['scaler', 'rng']; expected {list(REQUIRED_KEYS)}")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        save_checkpoint(state, tmp_path / "last.pt")
    assert not list(tmp_path.iterdir())


def test_save_returns_the_path_it_wrote_and_load_reads_it_back(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    assert save_checkpoint(checkpoint(), target) == target
    loaded = load_checkpoint(target)
    assert loaded["model"]["w"].tolist() == [0.0, 1.0, 2.0] and loaded["progress"] == {"step": 4}
    assert load_checkpoint(str(target))["format"] == FORMAT, "a str path works too"


def test_load_maps_tensors_to_the_device_asked_for(tmp_path: Path) -> None:
    save_checkpoint(checkpoint(), tmp_path / "last.pt")
    assert load_checkpoint(tmp_path / "last.pt")["model"]["w"].device.type == "cpu"
    assert load_checkpoint(tmp_path / "last.pt", map_location="meta")["model"]["w"].device.type == "meta"


def test_a_run_folder_or_a_file_names_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    save_checkpoint(checkpoint(), last)
    assert resolve_checkpoint_path(tmp_path / "run") == last
    assert resolve_checkpoint_path(str(last)) == last
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_checkpoint_path("~/run") == last, "a ~ path is expanded"


def test_no_checkpoint_there_says_what_to_give(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for given, looked_at in ((tmp_path / "empty", tmp_path / "empty" / "checkpoints" / "last.pt"),
                             (tmp_path / "x.pt", tmp_path / "x.pt")):
        message = (f"trainer.resume={str(given)!r}: no checkpoint at {looked_at}; give a run folder holding "
                   f"checkpoints/last.pt or a .pt checkpoint file")
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            resolve_checkpoint_path(given)


def error_of(path: Path, **kwargs: Any) -> str:
    with pytest.raises(ValueError) as error:
        load_checkpoint(path, **kwargs)
    return str(error.value)


def test_each_way_a_file_is_wrong_has_its_own_message(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    assert error_of(path) == f"checkpoint {path} does not exist"
    torch.save([1, 2], path)
    assert error_of(path) == f"checkpoint {path} holds a list, expected a dict"
    torch.save({**checkpoint(), "format": "other/v0"}, path)
    assert error_of(path) == f"checkpoint {path} has format 'other/v0', expected {FORMAT!r}"
    torch.save({k: v for k, v in checkpoint().items() if k not in ("format", "config")}, path)
    assert error_of(path) == f"checkpoint {path} has format None, expected {FORMAT!r}"
    torch.save({k: v for k, v in checkpoint().items() if k not in ("optimizer", "config")}, path)
    assert error_of(path) == f"checkpoint {path} lacks keys ['optimizer', 'config']; expected {list(REQUIRED_KEYS)}"


def test_a_truncated_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(checkpoint(), path)
    path.write_bytes(path.read_bytes()[:100])
    message = error_of(path)
    assert message.startswith(f"checkpoint {path} is corrupted, truncated or not a birnn-zoo checkpoint (")
    assert message.endswith(")") and "\n" not in message


class Payload:
    """An object only a full unpickle could build."""


def test_a_file_holding_code_is_refused_without_torchs_advice_to_unpickle(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    torch.save(checkpoint(progress={"step": 1, "hook": Payload()}), path)   # a full checkpoint but for the object
    assert error_of(path) == (f"checkpoint {path} is corrupted, truncated or not a birnn-zoo checkpoint "
                              f"(UnpicklingError: it holds data a weights-only load refuses)")


# torch.load is replaced by a stub that raises these; the last-but-one carries torch's own advice text
# (torch.serialization.UNSAFE_MESSAGE, which suggests a full unpickle), which the loader must never pass on (the
# loader itself only ever calls torch.load(..., weights_only=True)).
@pytest.mark.parametrize(("raised", "shown"), [
    (RuntimeError("first line\nsecond line"), "RuntimeError: first line"),
    (RuntimeError(""), "RuntimeError: "),
    (OSError("Unpickler got something odd"), "OSError: it holds data a weights-only load refuses"),
    (RuntimeError(torch.serialization.UNSAFE_MESSAGE), "RuntimeError: it holds data a weights-only load refuses"),
    (pickle.UnpicklingError("invalid load key, 'x'."), "UnpicklingError: invalid load key, 'x'."),
])
def test_the_reason_shown_is_the_first_line_and_never_torchs_advice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raised: Exception, shown: str) -> None:
    path = tmp_path / "c.pt"
    path.write_bytes(b"not a zip")

    def fail(*args: Any, **kwargs: Any) -> None:
        raise raised

    monkeypatch.setattr(torch, "load", fail)
    assert error_of(path) == f"checkpoint {path} is corrupted, truncated or not a birnn-zoo checkpoint ({shown})"


def test_load_asks_torch_for_a_weights_only_load_onto_the_device(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(checkpoint(), path)
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append((a, kw)) or real(*a, **kw))
    load_checkpoint(path, map_location="cpu")
    assert calls == [((path,), {"map_location": "cpu", "weights_only": True})]


def preprocessing() -> Preprocessing:
    return Preprocessing(input_kind="tokens", class_names=["neg", "pos"], vocab=["<pad>", "<unk>", "good", "bad"])


def test_read_preprocessing_gives_the_record_back(tmp_path: Path) -> None:
    record = preprocessing().to_dict()
    got = read_preprocessing(checkpoint(preprocessing=record), tmp_path / "best.pt")
    assert isinstance(got, Preprocessing) and got.to_dict() == record


def test_an_older_checkpoint_without_preprocessing_is_none_with_one_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="models.training.checkpoint"):
        assert read_preprocessing(checkpoint(), tmp_path / "old.pt") is None
    assert [r.getMessage() for r in caplog.records] == [
        f"checkpoint {tmp_path / 'old.pt'} has no preprocessing (written before runs recorded it): no vocabulary "
        f"or class names; give token ids and read class indices"]


def test_a_tampered_preprocessing_record_names_the_checkpoint(tmp_path: Path) -> None:
    record = {**preprocessing().to_dict(), "input_kind": "pixels"}
    with pytest.raises(PreprocessingError) as error:
        read_preprocessing(checkpoint(preprocessing=record), tmp_path / "best.pt")
    try:
        Preprocessing.from_dict(record)
    except PreprocessingError as direct:
        assert str(error.value) == f"checkpoint {tmp_path / 'best.pt'}: {direct}"
    assert isinstance(error.value.__cause__, PreprocessingError)
