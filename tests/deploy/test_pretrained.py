"""``save_pretrained`` / ``from_pretrained``: ``model.safetensors`` + ``config.json``, a bit-exact round trip for
every preset and a trained run, no code run on load, a folder that was tampered with refused."""

import json
from pathlib import Path

import pytest
import torch
from helpers.optional import optional_import
from helpers.tiny_text_run import tiny_text_run

import models
from models.data.preprocessing import Preprocessing, PreprocessingError

_, needs_safetensors = optional_import("safetensors", "the hub extra (safetensors)")
pytestmark = needs_safetensors

TEXTS = ["what is the capital of peru ?", "who wrote hamlet ?", "What does NASA stand for ?"]


def assert_bit_exact(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and torch.equal(sa[name], sb[name]), name


@pytest.mark.parametrize("name", models.list_models())
def test_every_preset_round_trips_bit_for_bit(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = models.create_model(name, vocab_size=40, num_classes=3, embed_dim=8, hidden_size=8,
                                merge_mode=["sum", "mul"] if name != "bilstm_deep" else "ave", head_dropout=0.25)
    models.save_pretrained(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = models.from_pretrained(tmp_path)
    assert_bit_exact(model, loaded.model)
    assert loaded.model.merge_modes == model.merge_modes and loaded.model.pooling == model.pooling
    assert loaded.model.head_dropout.p == 0.25 and loaded.preprocessing is None
    x = torch.randint(1, 40, (4, 9))
    model.eval()
    assert torch.equal(loaded.model(x), model(x))


def test_a_trained_run_round_trips_with_its_preprocessing(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        run_dir = tiny_text_run(tmp_path / "t")[0]
    finally:
        torch.set_num_threads(threads)
    original = models.load_run(run_dir)
    folder = models.save_pretrained(run_dir, tmp_path / "shared")
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "SequenceClassifier" and config["arguments"]["merge_mode"] == ["concat", "concat"]
    assert config["preprocessing"]["class_names"] == original.class_names
    loaded = models.from_pretrained(folder)
    assert_bit_exact(original.model, loaded.model)
    assert loaded.preprocessing == original.preprocessing
    assert torch.equal(loaded.logits(TEXTS), original.logits(TEXTS))
    assert loaded(TEXTS).labels == original(TEXTS).labels


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    prep = Preprocessing.for_text(TEXTS, ["a", "b"])
    model = models.create_model("bigru", vocab_size=len(prep.vocab), num_classes=2, embed_dim=4, hidden_size=4)
    return models.save_pretrained(models.Predictor(model, prep), tmp_path / "m")


def _edit(folder: Path, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(("change", "error", "match"), [
    (lambda c: c.update(architecture="os.system"), ValueError, r"architecture='os\.system', expected"),
    (lambda c: c["arguments"].update(hidden_size="4"), ValueError, r"arguments\.hidden_size='4' has the wrong type"),
    (lambda c: c["arguments"].update(__class__="x"), ValueError, r"arguments\.__class__ is not an argument"),
    (lambda c: c["arguments"].update(hidden_size=5), ValueError, r"model\.safetensors does not match"),
    (lambda c: c["preprocessing"]["vocab"].append(3), PreprocessingError, r"preprocessing\.vocab\[\d+\]=3"),
    (lambda c: c["preprocessing"]["vocab"].append("zzz"), PreprocessingError,
     r"tokens but the model's embedding has \d+ rows"),
], ids=["architecture", "type", "unknown-argument", "shape", "token-type", "oversized-vocab"])
def test_a_tampered_config_is_refused(saved: Path, change, error: type, match: str) -> None:
    _edit(saved, change)
    with pytest.raises(error, match=match):
        models.from_pretrained(saved)


def test_a_missing_or_foreign_weights_file_is_refused(saved: Path) -> None:
    (saved / "model.safetensors").write_bytes(b"\x80\x04pickle?")
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
        models.from_pretrained(saved)
    (saved / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"model\.safetensors is missing"):
        models.from_pretrained(saved)


def test_without_safetensors_save_pretrained_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match=r"pip install safetensors"):
        models.save_pretrained(models.create_model("birnn", vocab_size=5, num_classes=2), tmp_path)


def test_push_to_hub_uploads_the_save_pretrained_folder(monkeypatch: pytest.MonkeyPatch, saved: Path) -> None:
    hub = pytest.importorskip("huggingface_hub", reason="the hub extra")
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
            return "commit"

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    assert models.push_to_hub(models.from_pretrained(saved), "me/tiny") == "commit"
    assert calls == [("token", None), ("create", "me/tiny", False, True),
                     ("upload", "me/tiny", ["config.json", "model.safetensors"])]
