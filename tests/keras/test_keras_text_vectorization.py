"""Keras ``TextVectorization`` imported with ``from_keras_text``: committed fixtures made by Keras 3 with TensorFlow
(``tests/keras/fixtures/keras_text/make_fixtures.py``; Keras's layer needs TensorFlow, these tests do not) give, for
tricky raw strings (non-ASCII capitals, which Keras does not lower-case; non-ASCII spaces, which it does not split
on; every ASCII punctuation mark; empty strings; out-of-vocabulary words; rows over the sequence length), the same
token ids as Keras's layer and the same model outputs: a functional model with an adapted vocabulary (``.keras``
assets), one splitting characters with its vocabulary in the config (``.keras`` and ``.h5``), a Sequential one, and
two with ``ngrams`` (an int on an adapted vocabulary; a tuple of widths with the vocabulary in the config), and one
reading a fixed ``output_sequence_length`` without masking its padding. Unsupported settings are refused naming the
layer.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.keras import KerasImportError, TextVectorizer, from_keras, from_keras_text

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "keras_text"
TOL = 1e-5


def _expected(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.expected.json").read_text(encoding="utf-8"))


FIXTURE_FILES = [("tv_adapted", "keras"), ("tv_characters", "keras"), ("tv_characters", "h5"),
                 ("tv_sequential", "keras"), ("tv_sequential", "h5"), ("tv_ngrams", "keras"),
                 ("tv_ngram_widths", "keras"), ("tv_ngram_widths", "h5"), ("tv_unmasked_fixed", "keras")]


@pytest.mark.parametrize("name, fmt", FIXTURE_FILES)
def test_raw_strings_give_keras_ids_and_outputs(name: str, fmt: str) -> None:
    expected = _expected(name)
    module, vectorizer = from_keras_text(FIXTURES / f"{name}.{fmt}")
    assert list(vectorizer.vocabulary) == expected["vocabulary"]
    ids = vectorizer.encode(expected["texts"])
    assert ids.tolist() == expected["ids"]
    got = module(ids).detach().numpy()
    np.testing.assert_allclose(got, np.array(expected["outputs"], dtype=np.float32), atol=TOL, rtol=TOL)
    scripted = torch.jit.script(module)
    np.testing.assert_allclose(scripted(ids).detach().numpy(), got, atol=1e-6)


def test_the_record_round_trips_and_is_checked() -> None:
    _, vectorizer = from_keras_text(FIXTURES / "tv_adapted.keras")
    record = json.loads(json.dumps(vectorizer.to_dict()))
    again = TextVectorizer.from_dict(record)
    assert again == vectorizer
    assert again.encode(["The CAT, sat!"]).tolist() == vectorizer.encode(["The CAT, sat!"]).tolist()
    with pytest.raises(KerasImportError, match="vocabulary starts with"):
        TextVectorizer.from_dict({**record, "vocabulary": ["cat", "[UNK]"]})
    with pytest.raises(KerasImportError, match="twice"):
        TextVectorizer.from_dict({**record, "vocabulary": ["", "[UNK]", "a", "a"]})
    with pytest.raises(KerasImportError, match="output_sequence_length"):
        TextVectorizer.from_dict({**record, "output_sequence_length": 0})


def test_from_keras_still_refuses_it_by_name() -> None:
    with pytest.raises(KerasImportError, match="TextVectorization"):
        from_keras(FIXTURES / "tv_adapted.keras")


@pytest.mark.parametrize("key, value, words", [
    ("ngrams", 0, "ngrams=0"),
    ("ngrams", "2", "ngrams='2'"),
    ("ngrams", [2, 2], r"ngrams=\(2, 2\)"),
    ("output_mode", "tf_idf", "output_mode='tf_idf'"),
    ("output_mode", "multi_hot", "output_mode='multi_hot'"),
    ("output_mode", "count", "output_mode='count'"),
    ("standardize", {"module": "builtins", "class_name": "function", "config": "my_standardize"}, "callable is code"),
    ("split", {"module": "builtins", "class_name": "function", "config": "my_split"}, "callable is code"),
    ("ragged", True, "ragged=True"),
    ("vocabulary", "/data/vocab.txt", "file path"),
])
def test_unsupported_settings_are_refused_by_name(key: str, value, words: str) -> None:
    config = {"name": "tv", "standardize": "lower_and_strip_punctuation", "split": "whitespace", "ngrams": None,
              "output_mode": "int", "output_sequence_length": 4, "vocabulary": ["a"], key: value}
    with pytest.raises(KerasImportError, match=f"layer 'tv'.*{words}"):
        TextVectorizer.from_keras_config(config, "tv", {})


def test_a_missing_vocabulary_is_refused() -> None:
    config = {"standardize": None, "split": "whitespace", "output_mode": "int"}
    with pytest.raises(KerasImportError, match="vocabulary is not in the file"):
        TextVectorizer.from_keras_config(config, "tv", {})


def test_keras_rules_without_keras() -> None:
    """The rules themselves: ASCII-only lower-casing, ASCII punctuation stripped inside words, ASCII whitespace
    only, OOV id 1, truncation and right padding with 0."""
    vectorizer = TextVectorizer(("", "[UNK]", "dont", "école", "a"), output_sequence_length=4)
    assert vectorizer.tokens("Don't ÉCOLE\u00a0x") == ["dont", "École\u00a0x"]
    assert vectorizer.encode(["DON'T a école", "a a a a a", ""]).tolist() == [[2, 4, 3, 0], [4, 4, 4, 4], [0, 0, 0, 0]]
    characters = TextVectorizer(("", "[UNK]", "a", "é"), standardize=None, split="character")
    assert characters.encode(["aé", "bAa"]).tolist() == [[2, 3, 0], [1, 1, 2]]


def test_ngrams_follow_keras_order() -> None:
    """``tf.strings.ngrams``'s order: all n-grams of the first width, then of the next; none for a short row."""
    vocab = ("", "[UNK]", "a", "b", "a b", "b c", "a b c")
    assert TextVectorizer(vocab, ngrams=(1, 2)).tokens("a b c") == ["a", "b", "c", "a b", "b c"]
    assert TextVectorizer(vocab, ngrams=(3, 1)).encode(["A b c", "a"]).tolist() == [[6, 2, 3, 1], [2, 0, 0, 0]]
    characters = TextVectorizer(vocab, split="character", ngrams=(2,), standardize=None)
    assert characters.tokens("abc") == ["a b", "b c"]
    config = {"vocabulary": ["a"], "ngrams": 3, "output_mode": "int"}
    assert TextVectorizer.from_keras_config(config, "tv", {}).ngrams == (1, 2, 3)



NGRAM_RULES = json.loads((FIXTURES / "tv_ngram_rules.expected.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", NGRAM_RULES["cases"], ids=lambda c: f"{c['split']}-ngrams{c['ngrams']}")
def test_ngram_settings_give_keras_ids(case: dict) -> None:
    """Keras's layer alone (``tv_ngram_rules.expected.json``): ``ngrams`` as an int, a tuple in any order, on
    character and whitespace splits, rows shorter than a width, an empty string."""
    config = {key: case[key] for key in ("ngrams", "split", "standardize", "vocabulary")}
    vectorizer = TextVectorizer.from_keras_config({**config, "output_mode": "int"}, "tv", {})
    assert vectorizer.encode(NGRAM_RULES["texts"]).tolist() == case["ids"]
