"""Exports carry their preprocessing: the ``.pt2`` (default) or ONNX artifact plus its JSON classify raw text in a
fresh ``python -I`` process that cannot import ``models`` (the docs' own ``classify.py`` block), with the labels
the run's ``Predictor`` gives. And a tampered preprocessing JSON is refused."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers.tiny_text_run import tiny_text_run
from helpers.without_project import isolated

import models
from models.data.preprocessing import Preprocessing, PreprocessingError
from models.deploy.exporters import read_sidecar, sidecar_path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "zoo-and-deployment.md"
TEXTS = ["what is the capital of peru ?", "who wrote hamlet ?"]
MAX_LEN = 8   # export time grows with the static T (the texts have at most 7 tokens)


def classify_block() -> str:
    """The docs' standalone ``classify.py`` (torch and the standard library only)."""
    found = re.findall(r"```python\n(# classify\.py.*?)```", DOCS.read_text(), re.S)
    assert len(found) == 1, "docs/zoo-and-deployment.md shows one classify.py block"
    return found[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    threads = torch.get_num_threads()
    try:
        # The docs' classify.py implements the plain vocabulary (no unknown-word shapes, no word pieces).
        return tiny_text_run(tmp_path_factory.mktemp("export"), unk_shapes=False)[0]
    finally:
        torch.set_num_threads(threads)


def test_pt2_is_the_default_and_its_json_classifies_raw_text_without_the_project(run: Path, tmp_path: Path) -> None:
    path = models.export(run, tmp_path / "question_classifier.pt2", max_len=MAX_LEN)
    sidecar = json.loads(sidecar_path(path).read_text())
    assert (sidecar["model_format"], sidecar["model_file"], sidecar["max_len"]) == ("pt2", "question_classifier.pt2",
                                                                                  MAX_LEN)
    assert sidecar["preprocessing"]["class_names"] == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert isinstance(read_sidecar(path)["preprocessing"], Preprocessing)
    cannot = isolated("import models", tmp_path)
    assert cannot.returncode != 0 and "ModuleNotFoundError" in cannot.stderr
    result = isolated(classify_block(), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    expected = models.load_run(run)(TEXTS)
    assert [p["text"] for p in printed] == TEXTS
    assert [p["label"] for p in printed] == expected.labels
    for row, p in zip(expected.probabilities, printed, strict=True):
        assert abs(float(row.max()) - p["p"]) < 1e-4
    # Any T <= max_len: the program pads inside (one row of 2 steps, a batch of 7, and max_len itself).
    program = torch.export.load(path).module()
    predictor = models.load_run(run)
    for texts in (["why ?"], TEXTS, ["what is a walrus ? " * 8]):
        ids, _ = predictor.preprocessing.encode(texts)
        ids = ids[:, :MAX_LEN]
        with torch.no_grad():
            torch.testing.assert_close(program(ids), predictor.model(ids), rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match=r"(?i)guard|constraint|expected|max"):
        program(torch.ones(1, MAX_LEN + 1, dtype=torch.int64))


@pytest.mark.slow  # a second export through torch.export, then the ONNX exporter (~1 min on a busy 2-core CPU)
def test_onnx_and_its_json_classify_raw_text_with_onnxruntime_alone(run: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra")
    pytest.importorskip("onnxscript", reason="the onnx extra")
    path = models.export(models.load_run(run), tmp_path / "question_classifier.onnx", "onnx", max_len=MAX_LEN)
    assert json.loads(sidecar_path(path).read_text())["model_format"] == "onnx"
    code = classify_block()
    code = code.replace('import torch\n', 'import numpy\nimport onnxruntime\n')
    code = code.replace('spec = json.load(open("question_classifier.pt2.json"))',
                        'spec = json.load(open("question_classifier.onnx.json"))')
    head, _, _ = code.partition("def batch(")
    code = head + '''def padded(ids):                        # the ONNX graph's T is static: exactly max_len
    return ids + [spec["pad_id"]] * (spec["max_len"] - len(ids))


session = onnxruntime.InferenceSession(spec["model_file"], providers=["CPUExecutionProvider"])
logits = session.run(None, {"tokens": numpy.array([padded(encode(t)) for t in TEXTS], dtype=numpy.int64)})[0]
for text, row in zip(TEXTS, logits):
    print(json.dumps({"label": prep["class_names"][int(row.argmax())], "text": text}))
'''.replace("TEXTS", repr(TEXTS))
    assert "import torch" not in code and "torch." not in code
    result = isolated(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [json.loads(line)["label"] for line in result.stdout.splitlines()] == models.load_run(run)(TEXTS).labels


def test_torchscript_stays_available_with_its_json(run: Path, tmp_path: Path) -> None:
    with pytest.warns(Warning):   # torch 2.13 deprecates TorchScript
        path = models.export(run, tmp_path / "model.pt", "torchscript")
    assert json.loads(sidecar_path(path).read_text())["max_len"] is None
    predictor = models.load_run(run)
    ids, lengths = predictor.preprocessing.encode(TEXTS)
    scripted = torch.jit.load(path)
    torch.testing.assert_close(scripted(ids, lengths), predictor.logits(TEXTS), rtol=1e-5, atol=1e-5)


# -- tampered preprocessing --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def record() -> dict:
    return Preprocessing.for_text(TEXTS, ["a", "b"]).to_dict()


@pytest.mark.parametrize(("change", "match"), [
    (lambda d: d.update(vocab="<pad> <unk> what"), r"preprocessing\.vocab='<pad> <unk> what': expected a list"),
    (lambda d: d["vocab"].append(7), r"preprocessing\.vocab\[\d+\]=7: expected a string"),
    (lambda d: d["vocab"].append(None), r"preprocessing\.vocab\[\d+\]=None: expected a string"),
    (lambda d: d["vocab"].append("what"), r"preprocessing\.vocab='what': expected unique entries"),
    (lambda d: d["vocab"].__setitem__(0, "what?"), r"preprocessing\.vocab\[:2\]=.*pad id 0"),
    (lambda d: d["vocab"].append("x" * 5000), r"preprocessing\.vocab\[\d+\] has 5000 characters"),
    (lambda d: d.update(lowercase="yes"), r"preprocessing\.lowercase='yes': expected true or false"),
    (lambda d: d.update(max_len=-3), r"preprocessing\.max_len=-3: expected an integer >= 1 or null"),
    (lambda d: d.update(max_len=2.5), r"preprocessing\.max_len=2\.5"),
    (lambda d: d.update(class_names=["a", 1]), r"preprocessing\.class_names\[1\]=1: expected a string"),
    (lambda d: d.update(class_names=[]), r"preprocessing\.class_names has 0 entries"),
    (lambda d: d.update(input_kind="images"), r"preprocessing\.input_kind='images'"),
    (lambda d: d.update(format="v0"), r"preprocessing\.format='v0'"),
    (lambda d: d.update(unk_shapes=True), r"preprocessing\.unk_shapes=True: expected False"),
    (lambda d: d.update(text_pair="yes"), r"preprocessing\.text_pair='yes': expected true or false"),
    (lambda d: d.update(text_pair=1), r"preprocessing\.text_pair=1: expected true or false"),
    (lambda d: d.update(text_pair=None), r"preprocessing\.text_pair=None: expected true or false"),
    (lambda d: d.update(text_pair=True), r"preprocessing\.text_pair=True: expected false for a vocabulary without "
                                         r"the '<sep>' token"),
], ids=["vocab-str", "int-token", "null-token", "duplicate", "specials", "long-token", "lowercase", "max_len",
        "float-max_len", "class-type", "no-classes", "input_kind", "format", "claims-shapes", "pair-str", "pair-int",
        "pair-null", "pair-without-sep"])
def test_a_tampered_record_is_refused_naming_the_key(record: dict, change, match: str) -> None:
    tampered = json.loads(json.dumps(record))
    change(tampered)
    with pytest.raises(PreprocessingError, match=match):
        Preprocessing.from_dict(tampered)


def test_an_oversized_vocabulary_is_refused_before_it_is_used(record: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from models.data import preprocessing

    monkeypatch.setattr(preprocessing, "MAX_VOCAB", 10)
    with pytest.raises(PreprocessingError, match=r"preprocessing\.vocab has 12 entries: expected 2 to 10"):
        Preprocessing.from_dict({**record,
                                 "vocab": record["vocab"] + [f"w{i}" for i in range(12 - len(record["vocab"]))]})


def test_a_checkpoint_with_a_tampered_record_is_refused(run: Path, tmp_path: Path) -> None:
    from models.training.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(run / "checkpoints" / "best.pt")
    vocab_size = checkpoint["model"]["embed.weight"].shape[0]
    bigger = {**checkpoint, "preprocessing": {**checkpoint["preprocessing"],
                                              "vocab": checkpoint["preprocessing"]["vocab"] + ["zzz-extra"]}}
    save_checkpoint(bigger, tmp_path / "bigger.pt")
    with pytest.raises(PreprocessingError, match=rf"bigger\.pt: .*{vocab_size + 1} tokens but the model's embedding "
                                                 rf"has {vocab_size} rows"):
        models.load_run(tmp_path / "bigger.pt")
    broken = {**checkpoint, "preprocessing": {**checkpoint["preprocessing"], "class_names": ["only", "three", 3]}}
    save_checkpoint(broken, tmp_path / "broken.pt")
    with pytest.raises(PreprocessingError, match=r"broken\.pt: preprocessing\.class_names\[2\]=3: expected a string"):
        models.load_run(tmp_path / "broken.pt")


def test_a_tampered_export_json_is_refused(run: Path, tmp_path: Path) -> None:
    path = models.export(run, tmp_path / "m.pt", "torchscript")
    sidecar = json.loads(sidecar_path(path).read_text())
    sidecar["preprocessing"]["vocab"][5] = {"not": "a token"}
    sidecar_path(path).write_text(json.dumps(sidecar))
    with pytest.raises(PreprocessingError, match=r"preprocessing\.vocab\[5\]=\{'not': 'a token'\}: expected a string"):
        read_sidecar(path)
    shutil.rmtree(tmp_path)
