"""An imported Keras text model through the deployment path: ``keras_text_predictor`` gives a ``Predictor`` whose
labels and probabilities on raw strings are Keras's (the committed expectations of
``tests/keras/fixtures/keras_text/``, made by Keras 3 with TensorFlow: punctuation, case, non-ASCII letters and
spaces, empty strings, rows longer than the sequence length, n-grams), and which keeps them through its
preprocessing record (``models/data/preprocessing.py``, tokenizer kind ``keras-text-vectorization``),
``save_pretrained`` / ``from_pretrained`` and the exports with their JSON.

Tolerances: probabilities within 1e-6 of Keras's (float32; a softmax output goes through ``log`` and the
Predictor's softmax, about 1e-7); exported logits within 1e-5 of the eager module's.
"""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.without_project import isolated

from models.data.preprocessing import Preprocessing, PreprocessingError
from models.deploy import export, from_pretrained, load_exported, save_pretrained
from models.deploy.exporters import read_sidecar
from models.keras import KerasImportError, from_keras_text, keras_text_predictor
from models.keras.module import module_from_specs
from models.keras.text_classifier import KerasTextClassifier, output_kind

FIXTURES = Path(__file__).resolve().parents[1] / "keras" / "fixtures" / "keras_text"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "keras-import.md"
FILES = [("tv_adapted", "keras"), ("tv_characters", "h5"), ("tv_sequential", "keras"), ("tv_ngrams", "keras"),
         ("tv_ngram_widths", "h5"), ("tv_unmasked_fixed", "keras")]
TOL = 1e-6


def _expected(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.expected.json").read_text(encoding="utf-8"))


def _keras_probabilities(expected: dict, output: str) -> np.ndarray:
    """Keras's outputs as probabilities: as they are after a softmax, else the softmax of the logits."""
    outputs = torch.tensor(expected["outputs"], dtype=torch.float64)
    return (outputs if output == "probabilities" else outputs.softmax(-1)).numpy()


@pytest.mark.parametrize("name, fmt", FILES)
def test_the_predictor_classifies_raw_strings_as_keras(name: str, fmt: str) -> None:
    expected = _expected(name)
    predictor = keras_text_predictor(FIXTURES / f"{name}.{fmt}", batch_size=len(expected["texts"]))
    assert predictor.preprocessing.to_dict()["tokenizer_kind"] == "keras-text-vectorization"
    ids, _ = predictor.preprocessing.encode(expected["texts"])
    assert ids.tolist() == expected["ids"]
    out = predictor(expected["texts"])
    keras = _keras_probabilities(expected, predictor.model.output)
    np.testing.assert_allclose(out.probabilities.numpy(), keras, atol=TOL, rtol=0)
    assert out.class_ids == keras.argmax(1).tolist()
    assert out.labels == [str(i) for i in keras.argmax(1)]


def test_class_names_and_outputs() -> None:
    predictor = keras_text_predictor(FIXTURES / "tv_adapted.keras", class_names=["neg", "neu", "pos"])
    assert predictor.class_names == ["neg", "neu", "pos"] and predictor.model.output == "probabilities"
    assert keras_text_predictor(FIXTURES / "tv_sequential.h5").model.output == "logits"
    with pytest.raises(Exception, match=r"preprocessing\.class_names has 2 names but the model has 3 classes"):
        keras_text_predictor(FIXTURES / "tv_adapted.keras", class_names=["a", "b"])


def test_batches_pad_like_keras_in_input_order() -> None:
    """Without ``output_sequence_length`` and without a mask (``tv_characters``), Keras pads each batch to its longest
    row and the padding changes the outputs: the Predictor batches in input order and pads the same way, so each
    batch's logits are the module's on that batch, whatever the batch size."""
    expected = _expected("tv_characters")
    texts = expected["texts"]
    predictor = keras_text_predictor(FIXTURES / "tv_characters.keras", batch_size=3)
    module, vectorizer = from_keras_text(FIXTURES / "tv_characters.keras")
    reference = torch.cat([module(vectorizer.encode(texts[i:i + 3])) for i in range(0, len(texts), 3)])
    got = predictor.logits(texts).softmax(-1)
    torch.testing.assert_close(got, reference, atol=TOL, rtol=0)
    whole = keras_text_predictor(FIXTURES / "tv_characters.keras", batch_size=len(texts)).logits(texts).softmax(-1)
    assert (whole - got).abs().max() > 1e-4                  # padding to 3 rows' longest differs: Keras's behaviour


def test_a_fixed_sequence_length_pads_every_batch_to_it() -> None:
    """With ``output_sequence_length`` every row has exactly that many ids whatever the batch, so one string at a
    time gives Keras's outputs of the whole batch; ``tv_unmasked_fixed`` does not mask, so the padding counts."""
    expected = _expected("tv_unmasked_fixed")
    predictor = keras_text_predictor(FIXTURES / "tv_unmasked_fixed.keras", batch_size=1)
    for text, row in zip(expected["texts"], expected["ids"], strict=True):
        assert predictor.preprocessing.encode([text])[0].tolist() == [row]
    keras = _keras_probabilities(expected, predictor.model.output)
    np.testing.assert_allclose(predictor(expected["texts"]).probabilities.numpy(), keras, atol=TOL, rtol=0)


@pytest.mark.parametrize("name, fmt", [("tv_ngrams", "keras"), ("tv_characters", "h5")])
def test_save_pretrained_round_trip(tmp_path: Path, name: str, fmt: str) -> None:
    expected = _expected(name)
    predictor = keras_text_predictor(FIXTURES / f"{name}.{fmt}", class_names=["x", "y", "z"], batch_size=64)
    save_pretrained(predictor, tmp_path / "shared")
    config = json.loads((tmp_path / "shared" / "config.json").read_text(encoding="utf-8"))
    assert config["architecture"] == "KerasTextClassifier"
    assert config["preprocessing"]["keras_text"] == predictor.preprocessing.keras_text
    shared = from_pretrained(tmp_path / "shared")
    assert isinstance(shared.model, KerasTextClassifier) and shared.class_names == ["x", "y", "z"]
    assert shared.preprocessing == predictor.preprocessing
    assert torch.equal(shared.logits(expected["texts"]), predictor.logits(expected["texts"]))


def test_from_pretrained_refuses_a_tampered_keras_config(tmp_path: Path) -> None:
    predictor = keras_text_predictor(FIXTURES / "tv_sequential.keras")
    save_pretrained(predictor, tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for change, words in [({"output": "softmax"}, "output='softmax'"),
                          ({"keras_specs": "[{\"kind\": \"os.system\"}]"}, "do not describe a KerasTextClassifier"),
                          ({"embed_dim": 3}, "not an argument of KerasTextClassifier")]:
        path.write_text(json.dumps({**config, "arguments": {**config["arguments"], **change}}), encoding="utf-8")
        with pytest.raises(ValueError, match=words):
            from_pretrained(tmp_path)


def test_the_record_is_the_preprocessing_format_and_is_checked() -> None:
    predictor = keras_text_predictor(FIXTURES / "tv_ngram_widths.keras")
    record = json.loads(json.dumps(predictor.preprocessing.to_dict()))
    assert record["format"] == "birnn-zoo/preprocessing/v1"
    assert record["keras_text"] == {"name": "text_vectorization_1", "standardize": "lower_and_strip_punctuation",
                                    "split": "whitespace", "ngrams": [1, 3]}
    assert record["vocab"][:2] == ["", "[UNK]"] and record["max_len"] is None and record["lowercase"] is True
    assert Preprocessing.from_dict(record) == predictor.preprocessing
    for change, words in [
        ({"tokenizer_kind": "spacy"}, "tokenizer_kind='spacy'"),
        ({"keras_text": {**record["keras_text"], "standardize": "upper"}}, "standardize='upper'"),
        ({"keras_text": {**record["keras_text"], "ngrams": 2}}, "keras_text.ngrams=2"),
        ({"keras_text": {"standardize": None}}, "keras_text="),
        ({"lowercase": False}, "lowercase=False"),
        ({"text_pair": True}, "text_pair=True"),
        ({"max_len": 0}, "output_sequence_length=0"),
        ({"vocab": ["<pad>", "<unk>", "a"]}, "vocabulary starts with"),
    ]:
        with pytest.raises(PreprocessingError, match=words):
            Preprocessing.from_dict({**record, **change})


def test_a_zoo_record_without_tokenizer_kind_still_loads() -> None:
    """Records written before the Keras tokenizer have no ``tokenizer_kind``: the zoo's tokenizer, as before."""
    zoo = Preprocessing.for_text(["who wrote hamlet ?"], ["a", "b"])
    record = zoo.to_dict()
    assert record["tokenizer_kind"] == "birnn-zoo"
    old = {key: value for key, value in record.items() if key != "tokenizer_kind"}
    assert Preprocessing.from_dict(old) == zoo
    with pytest.raises(PreprocessingError, match="keras_text"):
        Preprocessing.from_dict({**record, "keras_text": {"standardize": None}})


def test_outputs_that_are_not_class_scores_are_refused() -> None:
    module, _ = from_keras_text(FIXTURES / "tv_sequential.keras")
    specs = json.loads(module.keras_specs)
    specs[-1]["options"]["activation"] = "relu"
    with pytest.raises(KerasImportError, match=r"layer 'dense_2'.*activation 'relu'"):
        output_kind(json.dumps(specs))
    with pytest.raises(KerasImportError, match="has no TextVectorization"):
        keras_text_predictor(FIXTURES.parent / "keras2" / "fn_gru_pool.keras")


def test_one_sigmoid_unit_is_two_classes() -> None:
    """A binary Keras classifier (``Dense(1, "sigmoid")``) gives p; the Predictor's classes are ``[1 - p, p]``."""
    module, vectorizer = from_keras_text(FIXTURES / "tv_sequential.keras")
    specs = json.loads(module.keras_specs)
    specs[-1]["options"].update(units=1, activation="sigmoid")
    torch.manual_seed(0)
    binary = module_from_specs(json.dumps(specs)).eval()
    assert output_kind(binary.keras_specs) == "sigmoid"
    classifier = KerasTextClassifier(binary, "sigmoid", 2)
    ids = vectorizer.encode(_expected("tv_sequential")["texts"])
    p = binary(ids)[:, 0]
    torch.testing.assert_close(classifier(ids).softmax(-1), torch.stack([1 - p, p], dim=-1), atol=1e-6, rtol=0)


def _stdlib_encode(prep: dict, texts: list) -> list:
    """The record's ``tokenizer`` rules, written with the standard library only (what docs/keras-import.md shows)."""
    import re
    import string

    rules = prep["tokenizer"]
    settings, index = prep["keras_text"], {token: i for i, token in enumerate(prep["vocab"])}
    rows = []
    for text in texts:
        if settings["standardize"] in ("lower", "lower_and_strip_punctuation"):
            text = text.translate(str.maketrans(string.ascii_uppercase, string.ascii_lowercase))
        if settings["standardize"] in ("strip_punctuation", "lower_and_strip_punctuation"):
            text = re.sub(rules["punctuation"], "", text)
        tokens = list(text) if settings["split"] == "character" else [
            t for t in re.split(rules["whitespace"], text) if t]
        if settings["ngrams"]:
            tokens = [" ".join(tokens[i:i + n]) for n in settings["ngrams"] for i in range(len(tokens) - n + 1)]
        rows.append([index.get(token, rules["oov_id"]) for token in tokens][: prep["max_len"]])
    width = prep["max_len"] or max(map(len, rows))
    return [row + [rules["mask_id"]] * (width - len(row)) for row in rows]


@pytest.mark.parametrize("name, fmt", FILES)
def test_the_records_rules_reproduce_keras_without_the_project(name: str, fmt: str) -> None:
    expected = _expected(name)
    prep = json.loads(json.dumps(keras_text_predictor(FIXTURES / f"{name}.{fmt}").preprocessing.to_dict()))
    assert _stdlib_encode(prep, expected["texts"]) == expected["ids"]


def test_the_docs_classify_keras_block_runs_without_the_project(tmp_path: Path) -> None:
    """docs/keras-import.md's ``classify_keras.py`` (torch and the standard library only) in ``python -I`` with
    ``models`` unimportable, on a TorchScript export with its JSON: the Predictor's labels and probabilities."""
    found = re.findall(r"```python\n(# classify_keras\.py.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    assert len(found) == 1, "docs/keras-import.md shows one classify_keras.py block"
    predictor = keras_text_predictor(FIXTURES / "tv_ngrams.keras", class_names=["neg", "neu", "pos"])
    export(predictor, tmp_path / "reviews.pt", "torchscript")
    result = isolated(found[0], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    expected = predictor([p["text"] for p in printed])
    assert len(printed) == 2 and [p["label"] for p in printed] == expected.labels
    for row, p in zip(expected.probabilities, printed, strict=True):
        assert abs(float(row.max()) - p["p"]) < 1e-4


def test_torchscript_export_with_its_json(tmp_path: Path) -> None:
    expected = _expected("tv_adapted")
    predictor = keras_text_predictor(FIXTURES / "tv_adapted.keras", class_names=["a", "b", "c"])
    path = export(predictor, tmp_path / "model.pt", "torchscript")
    sidecar = read_sidecar(path)
    assert sidecar["preprocessing"] == predictor.preprocessing and sidecar["pad_id"] == 0
    ids, _ = sidecar["preprocessing"].encode(expected["texts"])
    got = load_exported(path)(ids).softmax(-1).detach().numpy()
    np.testing.assert_allclose(got, _keras_probabilities(expected, "probabilities"), atol=TOL, rtol=0)


def test_a_max_len_against_the_sequence_length_is_refused(tmp_path: Path) -> None:
    predictor = keras_text_predictor(FIXTURES / "tv_adapted.keras")
    with pytest.raises(ValueError, match="output_sequence_length=8"):
        export(predictor, tmp_path / "model.pt2", "pt2", max_len=16)
    assert not os.listdir(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
@pytest.mark.parametrize("name, fmt_in", [("tv_ngrams", "keras"), ("tv_characters", "keras")])
def test_static_exports_take_exactly_the_sequence_length(tmp_path: Path, fmt: str, name: str, fmt_in: str) -> None:
    """No padding inside for a Keras model: the program takes ``T == max_len`` ids (``output_sequence_length``, or
    the ``max_len`` given: here the fixture batch's longest row, which Keras padded to) and returns Keras's
    outputs on the fixture strings; ``tv_characters`` does not mask padding, so one padding step more would
    change them."""
    if fmt == "onnx":
        pytest.importorskip("onnxscript", reason="format='onnx' needs onnxscript")
        pytest.importorskip("onnxruntime", reason="loading the ONNX file needs onnxruntime")
    expected = _expected(name)
    predictor = keras_text_predictor(FIXTURES / f"{name}.{fmt_in}")
    width = len(expected["ids"][0])
    given = None if predictor.preprocessing.max_len else width
    path = export(predictor, tmp_path / f"model.{fmt}", fmt, max_len=given)
    sidecar = read_sidecar(path)
    assert sidecar["max_len"] == width and sidecar["time_steps"] == "== max_len"
    got = load_exported(path)(torch.tensor(expected["ids"])).softmax(-1).detach().numpy()
    np.testing.assert_allclose(got, _keras_probabilities(expected, "probabilities"), atol=1e-5, rtol=0)
