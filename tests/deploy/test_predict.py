"""``models.load_run`` -> ``Predictor``: raw strings classified as the training loop's own evaluation classified
them; old checkpoints (no preprocessing) still load; feature models; ``predict.py`` / ``eval.py`` on the command
line."""

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.optional import optional_import
from helpers.tiny_text_run import tiny_text_run, write_tiny_trec
from omegaconf import OmegaConf

import models
from models.data import build_data, resolve_config
from models.data.preprocessing import Preprocessing
from models.data.text import read_trec
from models.deploy.evaluate import evaluate_run, text_rows
from models.deploy.predict_cli import PredictError, open_model, predict_main
from models.deploy.predictor import Predictor
from models.training.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    threads = torch.get_num_threads()
    try:
        return tiny_text_run(tmp_path_factory.mktemp("predict"))
    finally:
        torch.set_num_threads(threads)


def test_load_run_predicts_raw_strings_as_the_training_evaluation_did(run) -> None:
    run_dir, root = run
    results = json.loads((run_dir / "results.json").read_text())
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    # The loop's own evaluation: its data bundle, its batches, the best weights, argmax per row.
    data = build_data(checkpoint["config"]["data"], seed=0)
    model = models.load_run(run_dir).model
    expected = []
    with torch.no_grad():
        for batch in data.loader("test", 7, shuffle=False, seed=0, bucket=False):
            expected += model(batch.tokens, batch.lengths).argmax(-1).tolist()
    texts = [question for _, question in read_trec(root / "trec" / "TREC_10.label")[0]]
    truth = [label for label, _ in read_trec(root / "trec" / "TREC_10.label")[0]]
    predictor = models.load_run(run_dir)
    out = predictor(texts)
    assert out.class_ids == expected, "raw strings through the predictor = the loop's encoded test rows"
    accuracy = sum(p == t for p, t in zip(out.labels, truth, strict=True)) / len(truth)
    assert accuracy == pytest.approx(results["test_accuracy"], abs=1e-9), "same accuracy as results.json"
    assert out.probabilities.shape == (len(texts), 6)
    torch.testing.assert_close(out.probabilities.sum(-1), torch.ones(len(texts)), rtol=0, atol=1e-5)
    assert predictor.class_names == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert isinstance(predictor.model, models.SequenceClassifier) and not predictor.model.training


def test_batching_does_not_change_the_outputs(run) -> None:
    predictor = models.load_run(run[0])
    texts = ["what is the capital of peru ?", "Who wrote Hamlet ?", "how many tigers", "?", "", "NASA"]
    one_by_one = torch.cat([predictor.logits([t]) for t in texts])
    torch.testing.assert_close(predictor.logits(texts), one_by_one, rtol=1e-5, atol=1e-5)
    assert predictor.preprocessing.encode_ids([""]) == [[1]], "a text without tokens is [<unk>], as in training"
    with pytest.raises(TypeError, match="wrap it in a list"):
        predictor("what is a walrus ?")


def test_a_checkpoint_without_preprocessing_loads_with_a_note(run, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    checkpoint = load_checkpoint(run[0] / "checkpoints" / "best.pt")
    ids = models.load_run(run[0]).preprocessing.encode_ids(["who wrote hamlet ?"])
    del checkpoint["preprocessing"]
    old = save_checkpoint(checkpoint, tmp_path / "old.pt")
    with caplog.at_level(logging.WARNING):
        predictor = models.load_run(old)
    notes = [r for r in caplog.records if "no preprocessing" in r.getMessage()]
    assert len(notes) == 1 and "\n" not in notes[0].getMessage()
    assert predictor.class_names == [str(i) for i in range(6)]
    out = predictor(ids)
    assert out.class_ids == models.load_run(run[0])(["who wrote hamlet ?"]).class_ids
    with pytest.raises(ValueError, match="give token id lists"):
        predictor(["who wrote hamlet ?"])


def test_a_feature_model_takes_arrays_standardised_with_the_recorded_statistics() -> None:
    torch.manual_seed(0)
    model = models.create_model("bigru", input_size=3, num_classes=2, embed_dim=4, hidden_size=4)
    prep = Preprocessing.from_dict({"format": "birnn-zoo/preprocessing/v1", "input_kind": "features",
                                    "class_names": ["no", "yes"], "num_features": 3,
                                    "feature_mean": [1.0, 2.0, 3.0], "feature_std": [2.0, 2.0, 0.5]})
    predictor = Predictor(model, prep)
    arrays = [torch.randn(5, 3), torch.randn(2, 3)]
    out = predictor(arrays)
    mean, std = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 0.5])
    with torch.no_grad():
        expected = torch.cat([model(((x - mean) / std).unsqueeze(0)) for x in arrays])
    torch.testing.assert_close(out.probabilities, torch.softmax(expected, -1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"expected \(T, 3\)"):
        predictor([torch.randn(4, 2)])


def _cli(script: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], input=stdin, capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})


TEXTS = ["what is the capital of peru ?", "who wrote hamlet ?", "how many apples are there in the world ?"]


def test_predict_py_writes_json_lines(run, tmp_path: Path) -> None:
    """The command line once (a subprocess costs a torch import); the input kinds in process below."""
    expected = models.load_run(run[0])(TEXTS)
    (tmp_path / "texts.txt").write_text(TEXTS[0] + "\n\n" + "\n".join(TEXTS[1:]) + "\n")
    result = _cli("predict.py", f"run={run[0]}", f"input={tmp_path / 'texts.txt'}", f"output={tmp_path / 'p.jsonl'}")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 2, 3], "the index is the input's line; blank lines are skipped"
    assert [r["label"] for r in rows] == expected.labels
    assert list(rows[0]["probabilities"]) == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert [list(r["probabilities"].values()) for r in rows] == expected.probabilities.tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "texts.txt"], "no log, no temporary file"


def _predict(run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, stdin: str = "",
             **options: object) -> list:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    cfg = OmegaConf.create({"run": str(run_dir), "input": "-", "column": None, "output": None, "batch_size": 64,
                            "device": "cpu", "class_names": None, **options})
    predict_main(cfg)
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_predict_reads_a_csv_or_jsonl_column_and_stdin(run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    expected = [r for r in models.load_run(run[0])(TEXTS)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"id": i, "question": t}) + "\n"
                                                 for i, t in enumerate(TEXTS)))
    (tmp_path / "rows.csv").write_text("id,question\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(TEXTS)))
    for options in ({"input": str(tmp_path / "rows.jsonl"), "column": "question"},
                    {"input": str(tmp_path / "rows.csv"), "column": "question"}):
        assert _predict(run[0], monkeypatch, capsys, **options) == expected
    assert _predict(run[0], monkeypatch, capsys, stdin="\n".join(TEXTS) + "\n") == expected
    with pytest.raises(PredictError, match=r"column='nope' is not in row 0 .* \['id', 'question'\]"):
        _predict(run[0], monkeypatch, capsys, input=str(tmp_path / "rows.csv"), column="nope")
    with pytest.raises(PredictError, match=r"input='missing\.txt': no such file"):
        _predict(run[0], monkeypatch, capsys, input="missing.txt")
    with pytest.raises(PredictError, match=r"run=.*does not exist"):
        _predict(tmp_path / "no-run", monkeypatch, capsys)


def test_eval_py_evaluates_a_saved_run_without_touching_its_results(run, tmp_path: Path) -> None:
    run_dir = run[0]
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    results = json.loads((run_dir / "results.json").read_text())
    out = tmp_path / "eval"
    result = _cli("eval.py", f"run={run_dir}", f"hydra.run.dir={out}", "split=test")
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((out / "eval_results.json").read_text())
    assert evaluated["accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-12)
    assert evaluated["loss"] == pytest.approx(results["test_loss"], rel=1e-5)
    assert evaluated["split"] == "test" and evaluated["rows"] == 36 and evaluated["checkpoint"].endswith("best.pt")
    assert sum(map(sum, evaluated["confusion"])) == 36
    assert before == {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}, "the run folder is untouched"


def test_evaluate_run_reads_another_data_config_with_the_runs_vocabulary(run, tmp_path: Path) -> None:
    run_dir = run[0]
    other = write_tiny_trec(tmp_path / "other", train=60, test=12, seed=7)   # other questions, other vocabulary
    data = {"name": "trec", "root": str(other), "download": False, "verify_checksum": False, "val_fraction": 0.5}
    evaluated = evaluate_run(run_dir, data, "train")
    assert evaluated["rows"] == 30
    rows = text_rows(resolve_config(data), "train")
    predicted = models.load_run(run_dir)([t for _, t in rows]).labels
    assert evaluated["accuracy"] == sum(p == label for p, (label, _) in zip(predicted, rows, strict=True)) / 30
    with pytest.raises(ValueError, match="split='val': data 'trec' has splits"):
        evaluate_run(run_dir, {**data, "val_fraction": 0}, "val")


_, needs_safetensors = optional_import("safetensors", "the hub extra (safetensors)")
_, needs_h5py = optional_import("h5py", "Keras files need h5py (pip install -e '.[dev]')")
KERAS_TEXT = ROOT / "tests" / "keras" / "fixtures" / "keras_text"


@needs_safetensors
def test_predict_opens_a_save_pretrained_folder_as_the_run_itself(run, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    folder = models.save_pretrained(run[0], tmp_path / "shared-model")
    stdin = "\n".join(TEXTS) + "\n"
    from_run = _predict(run[0], monkeypatch, capsys, stdin=stdin)
    assert _predict(folder, monkeypatch, capsys, stdin=stdin) == from_run
    assert open_model(str(folder), batch_size=2).batch_size == 2
    with pytest.raises(PredictError, match=r"batch_size.*0"):
        open_model(str(folder), batch_size=0)


@needs_h5py
@pytest.mark.parametrize("name, fmt", [("tv_sequential", "keras"), ("tv_characters", "h5")])
def test_predict_opens_a_keras_text_model_file(name: str, fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    """``run=model.keras``: raw strings in, Keras's probabilities out (the committed Keras 3 + TensorFlow outputs,
    within 1e-6), the classes named by ``class_names``."""
    expected = json.loads((KERAS_TEXT / f"{name}.expected.json").read_text(encoding="utf-8"))
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in expected["texts"]))
    keras_out = torch.tensor(expected["outputs"], dtype=torch.float64)
    probabilities = keras_out if keras_out.min() >= 0 and torch.allclose(keras_out.sum(-1), torch.ones(1).double(),
                                                                           atol=1e-5) else keras_out.softmax(-1)
    names = [f"class{i}" for i in range(probabilities.shape[1])]
    rows = _predict(KERAS_TEXT / f"{name}.{fmt}", monkeypatch, capsys, input=str(tmp_path / "texts.jsonl"),
                    batch_size=len(expected["texts"]), class_names=names)
    assert [row["index"] for row in rows] == list(range(len(expected["texts"])))
    got = torch.tensor([list(row["probabilities"].values()) for row in rows], dtype=torch.float64)
    torch.testing.assert_close(got, probabilities, atol=1e-6, rtol=0)
    assert [row["label"] for row in rows] == [names[i] for i in probabilities.argmax(1).tolist()]
    assert list(rows[0]["probabilities"]) == names


def test_class_names_is_checked_and_only_for_keras_files(run) -> None:
    with pytest.raises(PredictError, match=r"class_names only applies to a Keras model file"):
        open_model(str(run[0]), class_names=["a", "b"])
    for bad in ("neg", [], ["a", "a"], ["a", ""]):
        with pytest.raises(PredictError, match=r"class_names=.*distinct non-empty names"):
            open_model(str(KERAS_TEXT / "tv_sequential.keras"), class_names=bad)


def test_eval_of_a_model_without_a_run_asks_for_data(run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra.core.hydra_config import HydraConfig

    from models.deploy.predict_cli import eval_main

    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: OmegaConf.create(
        {"runtime": {"output_dir": str(tmp_path / "eval")}})))
    cfg = OmegaConf.create({"run": str(KERAS_TEXT / "tv_sequential.keras"), "split": "test", "data_root": None,
                            "batch_size": 8, "device": "cpu", "class_names": None, "data": None})
    with pytest.raises(PredictError, match=r"not a run of python train\.py.*give data=<name>"):
        eval_main(cfg)
