"""Runs on your own data through ``load_run``: a ``data=arrays`` feature model and a ``data=text_files`` model with a
text pair column predict the raw rows exactly as the training loop's own evaluation classified the encoded rows,
and ``evaluate_run`` scores them with the run's preprocessing (never a vocabulary rebuilt from the evaluated data)."""

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.composing import compose_config
from omegaconf import OmegaConf

import models
from models.data import build_data, resolve_config
from models.data.preprocessing import Preprocessing
from models.deploy.evaluate import evaluate_run, source_rows
from models.deploy.predict_cli import PredictError, predict_main
from models.training.checkpoint import load_checkpoint

TINY = ("model.embed_dim=8", "model.hidden_size=8", "optim.lr=0.03", "optim.warmup_steps=0", "trainer.max_epochs=3",
        "trainer.num_threads=1", "trainer.tensorboard=false", "trainer.infer_batches=1", "data.batch_size=16")
COLORS = ["red", "blue", "green", "black"]
THINGS = ["car", "sea", "Sky", "hat", "Grass", "door"]


def _train(run_dir: Path, *overrides: str) -> Path:
    from models.training.loop import train

    threads = torch.get_num_threads()
    try:
        train(compose_config(*overrides, *TINY), run_dir)
    finally:
        torch.set_num_threads(threads)
    return run_dir


def _loop_predictions(run_dir: Path) -> list[int]:
    """The training loop's evaluation of the test split: its own data bundle, batches and best weights."""
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    data = build_data(checkpoint["config"]["data"], seed=0)
    model = models.load_run(run_dir).model
    out: list[int] = []
    with torch.no_grad():
        for batch in data.loader("test", 5, shuffle=False, seed=0, bucket=False):
            out += model(batch.tokens, batch.lengths).argmax(-1).tolist()
    return out


def _pair_csv(path: Path, count: int, seed: int) -> Path:
    """premise/hypothesis/label: "same" when the hypothesis names the premise's colour (needs both texts)."""
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["premise", "hypothesis", "label"])
        for i in range(count):
            color, thing = rng.choice(COLORS), rng.choice(THINGS)
            other = color if i % 2 else rng.choice([c for c in COLORS if c != color])
            writer.writerow([f"the {thing} is {color}", f"it is {other}", "same" if i % 2 else "different"])
    return path


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pairs")
    train, test = _pair_csv(folder / "train.csv", 120, 0), _pair_csv(folder / "test.csv", 23, 1)
    run_dir = _train(folder / "run", "data=text_files", f"data.train={train}", f"data.test={test}",
                     "data.text_column=premise", "data.text_pair_column=hypothesis", "data.max_len=9")
    return run_dir, test


def test_a_pair_run_predicts_text_pairs_as_the_training_evaluation_did(pair_run: tuple[Path, Path]) -> None:
    run_dir, test = pair_run
    predictor = models.load_run(run_dir)
    assert predictor.preprocessing.text_pair and predictor.preprocessing.max_len == 9
    rows = list(csv.DictReader(test.open(encoding="utf-8")))
    pairs = [(row["premise"], row["hypothesis"]) for row in rows]
    assert predictor(pairs).class_ids == _loop_predictions(run_dir)
    c = resolve_config(load_checkpoint(run_dir / "checkpoints" / "best.pt")["config"]["data"])
    assert source_rows(c, "test")[0] == pairs, "eval reads the rows with text_files' own reader"
    results = json.loads((run_dir / "results.json").read_text())
    assert evaluate_run(predictor)["accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-9)
    one_text = {**c, "text_pair_column": None}
    with pytest.raises(ValueError, match=r"data\.text_pair_column=None but the model was trained with a text pair"):
        evaluate_run(predictor, one_text)
    with pytest.raises(TypeError, match=r"texts\[0\] is one str but this model was trained on text pairs"):
        predictor(["the car is red"])
    with pytest.raises(TypeError, match=r"texts\[1\]=.*expected a \(text, pair\) tuple of two strings"):
        predictor([pairs[0], ("only one",)])


def test_the_pair_record_round_trips_and_a_one_text_model_refuses_pairs(pair_run: tuple[Path, Path]) -> None:
    prep = models.load_run(pair_run[0]).preprocessing
    record = prep.to_dict()
    assert record["text_pair"] is True and record["tokenizer"]["sep_token"] == "<sep>"
    again = Preprocessing.from_dict(json.loads(json.dumps(record)))
    assert again.text_pair and again.encode_ids([("the sea is red", "it is red")]) == \
        prep.encode_ids([("the sea is red", "it is red")])
    ids = prep.encode_ids([("the sea is red", "it is blue")])[0]
    assert ids[4] == prep.vocab.index("<sep>") and len(ids) == 8, "4 text ids, <sep>, 3 pair ids"
    assert len(prep.encode_ids([("the sea is red", "it is blue and the car is red")])[0]) == 9, "cut to max_len"
    single = Preprocessing.for_text(["the sea is red"], ["a", "b"])
    assert not single.text_pair and "text_pair" in single.to_dict()
    with pytest.raises(TypeError, match=r"texts\[0\] is a \(text, pair\) tuple but this model was trained on one"):
        single.encode_ids([("the sea", "red")])


def test_predict_py_reads_a_pair_column(pair_run: tuple[Path, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    run_dir, test = pair_run
    base = {"run": str(run_dir), "input": str(test), "column": "premise", "output": None, "batch_size": 4,
            "device": "cpu"}
    predict_main(OmegaConf.create({**base, "pair_column": "hypothesis"}))
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rows = list(csv.DictReader(test.open(encoding="utf-8")))
    expected = models.load_run(run_dir)([(row["premise"], row["hypothesis"]) for row in rows]).labels
    assert [p["label"] for p in printed] == expected and [p["index"] for p in printed] == list(range(len(rows)))
    with pytest.raises(PredictError, match=r"trained on text pairs .*give pair_column="):
        predict_main(OmegaConf.create({**base, "pair_column": None}))
    with pytest.raises(PredictError, match=r"pair_column='nope' is not in row 0"):
        predict_main(OmegaConf.create({**base, "pair_column": "nope"}))


def test_an_arrays_run_predicts_raw_arrays_as_the_training_evaluation_did(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(90) % 2
    seqs = [(rng.normal(size=(int(rng.integers(3, 9)), 3)) + [4.0 + (1.5 if y else -1.5), -2.0, 0.0])
            .astype(np.float32) for y in labels]
    lengths = np.array([len(s) for s in seqs])
    x = np.zeros((len(seqs), lengths.max(), 3), dtype=np.float32)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
    np.savez(tmp_path / "train.npz", x=x, y=labels, lengths=lengths)
    run_dir = _train(tmp_path / "run", "data=arrays", f"data.train={tmp_path / 'train.npz'}", "model=bigru")
    predictor = models.load_run(run_dir)
    assert predictor.preprocessing.input_kind == "features" and predictor.preprocessing.feature_mean is not None
    assert predictor.model.embed.weight.shape == (8, 3), "model.input_size came from the data (F = 3)"
    c = resolve_config(load_checkpoint(run_dir / "checkpoints" / "best.pt")["config"]["data"])
    raw, raw_labels = source_rows(c, "test")
    assert abs(float(np.concatenate(raw)[:, 0].mean())) > 2, "raw rows: standardised by the predictor, not the reader"
    assert predictor(raw).class_ids == _loop_predictions(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["data"] == "arrays" and results["test_accuracy"] >= 0.8, results   # the class: feature 0's mean
    evaluated = evaluate_run(predictor, split="test")
    assert evaluated["rows"] == len(raw_labels)
    assert evaluated["accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-9)


def test_an_hf_run_with_class_label_ids_evaluates_with_its_own_vocabulary(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets", reason="data=hf needs the optional extra: pip install -e '.[hf]'")
    for key in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(key, "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    rng = random.Random(0)
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["cold", "warm"])})
    parts = {}
    for split, count in (("train", 96), ("test", 21)):
        ids = [i % 2 for i in range(count)]
        texts = [f"the {rng.choice(THINGS)} is {rng.choice(['hot', 'sunny'] if y else ['icy', 'frozen'])}"
                 for y in ids]
        parts[split] = datasets.Dataset.from_dict({"text": texts, "label": ids}, features=features)
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "saved"))
    run_dir = _train(tmp_path / "run", "data=hf", f"data.path={tmp_path / 'saved'}", "data.test=test")
    predictor = models.load_run(run_dir)
    assert predictor.class_names == ["cold", "warm"] and not predictor.preprocessing.text_pair
    assert predictor(parts["test"]["text"]).class_ids == _loop_predictions(run_dir)
    evaluated = evaluate_run(predictor)
    results = json.loads((run_dir / "results.json").read_text())
    assert evaluated["rows"] == 21 and evaluated["accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-9)
    # Other data of the same kind whose training split (a rebuilt vocabulary's source) is all new words: scored with
    # the run's vocabulary (new words -> <unk>), labels matched by ClassLabel id; the loss pins the exact logits.
    new = datasets.Dataset.from_dict({"text": ["the zeppelin is hot", "the quasar is icy", "a quasar zeppelin"],
                                      "label": [1, 0, 1]}, features=features)
    datasets.DatasetDict({"train": new, "test": new}).save_to_disk(str(tmp_path / "other"))
    other = evaluate_run(predictor, {"name": "hf", "path": str(tmp_path / "other"), "test": "test"})
    assert 1 in predictor.preprocessing.encode_ids(["the zeppelin is hot"])[0], "zeppelin is <unk> to the run"
    logits = predictor.logits(new["text"])
    assert other["rows"] == 3
    assert other["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, torch.tensor([1, 0, 1]))),
                                          abs=1e-6)


def test_the_docs_classify_encode_follows_the_sep_rule_of_a_pair_export(pair_run: tuple[Path, Path], tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from test_export_preprocessing import classify_block

    run_dir, test = pair_run
    prep = models.load_run(run_dir).preprocessing
    assert not (prep.unk_shapes or prep.word_pieces), "the docs' classify.py implements the plain vocabulary"
    spec = {"preprocessing": prep.to_dict(), "max_len": 9, "pad_id": 0, "model_file": "question_classifier.pt2"}
    (tmp_path / "question_classifier.pt2.json").write_text(json.dumps(spec))
    monkeypatch.chdir(tmp_path)
    head = classify_block().partition("def batch(")[0]     # the JSON and encode(), without a program to load
    namespace: dict = {}
    exec(compile(head, "classify.py", "exec"), namespace)
    rows = list(csv.DictReader(test.open(encoding="utf-8")))
    pairs = [(row["premise"], row["hypothesis"]) for row in rows] + [("the Sky is red", "it is red and so is grass")]
    assert [namespace["encode"](t, p) for t, p in pairs] == prep.encode_ids(pairs)
    with pytest.raises(ValueError, match="text_pair model takes"):
        namespace["encode"]("the car is red")


def test_save_pretrained_keeps_the_pair_rule(pair_run: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("safetensors", reason="save_pretrained needs the optional extra: pip install -e '.[hub]'")
    run_dir, test = pair_run
    loaded = models.from_pretrained(models.save_pretrained(run_dir, tmp_path / "pairs"))
    assert loaded.preprocessing.text_pair
    rows = list(csv.DictReader(test.open(encoding="utf-8")))
    pairs = [(row["premise"], row["hypothesis"]) for row in rows]
    torch.testing.assert_close(loaded.logits(pairs), models.load_run(run_dir).logits(pairs), rtol=0, atol=0)
