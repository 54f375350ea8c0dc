"""``Preprocessing``: everything a trained model needs at inference to turn raw inputs into its input tensors.

A run's checkpoints (``best.pt``, ``last.pt``), its exports (a ``<file>.json`` beside the artifact) and
``save_pretrained`` folders (in ``config.json``) carry one, as plain JSON data (never pickled code):

- ``input_kind``: ``"tokens"`` (raw text -> token ids ``(B, T)`` int64) or ``"features"`` (``(T, F)`` float arrays);
- ``class_names``: the label of each logit;
- tokens: the vocabulary (``vocab[i]`` is the token of id ``i``; ``<pad>`` = 0, ``<unk>`` = 1) and the tokenizer
  settings ``lowercase``, ``max_len`` (``null``: no truncation), ``unk_shapes`` and ``word_pieces`` (both read off
  the vocabulary), with the tokenizer's rules spelt out in ``tokenizer`` so a few lines of standard-library Python
  reproduce :meth:`Preprocessing.encode` without this project (``docs/zoo-and-deployment.md``), and ``text_pair``
  (``true``: the run's data had a ``text_pair_column``, so every input is a ``(text, pair)`` pair, encoded as text
  ids, ``<sep>``, pair ids, truncated to ``max_len``; ``false`` or absent: one text per input);
- tokens, ``tokenizer_kind``: which tokenizer reads the text. ``"birnn-zoo"`` (absent in records written before
  Keras imports had one: the same) is the zoo's own above. ``"keras-text-vectorization"`` is a Keras
  ``TextVectorization`` layer imported with its model (``models/keras/text_vectorization.py`` is the reference):
  ``keras_text`` holds its settings (``name``, ``standardize``, ``split``, ``ngrams``: the n-gram widths or
  ``null``), ``vocab`` its vocabulary (``""`` the mask = id 0, ``"[UNK]"`` the OOV token = id 1), ``max_len`` its
  ``output_sequence_length`` (truncate, then right-pad with 0 to exactly ``max_len``; ``null``: pad to the longest
  row of the batch), ``lowercase`` whether ``standardize`` lower-cases (A-Z only, as Keras), and ``tokenizer``
  its rules spelt out (punctuation regex, whitespace, n-gram joining, mask and OOV ids). Such a record is
  never a pair model's;
- features: ``num_features`` and the standardisation fitted on the training split, ``feature_mean`` /
  ``feature_std`` (``null``: none), applied as ``(x - mean) / std``.

:meth:`Preprocessing.from_dict` validates strictly (types, sizes, token strings) and raises
:class:`PreprocessingError` naming the key, the value and what was expected: a checkpoint or JSON file someone
edited by hand is refused before any model is built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import text

FORMAT = "birnn-zoo/preprocessing/v1"
INPUT_KINDS = ("tokens", "features")
ZOO_TOKENIZER, KERAS_TOKENIZER = "birnn-zoo", "keras-text-vectorization"
TOKENIZER_KINDS = (ZOO_TOKENIZER, KERAS_TOKENIZER)
KERAS_TEXT_KEYS = ("name", "standardize", "split", "ngrams")
MAX_VOCAB = 5_000_000
"""A vocabulary larger than this is refused (a tampered or corrupted file, not a model this project trains)."""
MAX_TOKEN_CHARS = 1_000
MAX_CLASSES = 100_000
MAX_FEATURES = 1_000_000


class PreprocessingError(ValueError):
    """A preprocessing record that cannot be used; the message names the key, its value and what is expected."""


def tokenizer_rules() -> dict[str, Any]:
    """The tokenizer as data: what a stdlib re-implementation needs (``models/data/text.py`` is the reference)."""
    return {
        "pattern": text._TOKEN_RE.pattern,
        "steps": [
            "tokens = re.findall(pattern, text.lower() if lowercase else text)",
            "id = vocab.index(token) if token is in vocab, else (in order) its word pieces when word_pieces "
            "(greedy longest word-start piece of >= 3 letters, then longest '##' pieces; letters-only words longer "
            "than 3; with unk_shapes only for words written in lower case), else the id of its unk_shape token "
            "when unk_shapes, else unk_id",
            "text_pair false: ids = ids[:max_len] (max_len null: all); no ids at all -> [unk_id]",
            "text_pair true: ids = (text ids + [id of sep_token] + pair ids)[:max_len]",
        ],
        "sep_token": text.SEP,
        "unk_shape_tokens": list(text.UNK_SHAPES),
        "unk_shape_rules": ["any digit", "all upper case and longer than 1", "first letter upper case",
                            "all lower case", "anything else"],
        "continuation": text.CONTINUATION,
        "pad_id": text.PAD_ID,
        "unk_id": text.UNK_ID,
    }


def _fail(key: str, value: Any, expected: str) -> PreprocessingError:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return PreprocessingError(f"preprocessing.{key}={shown}: expected {expected}")


def _check_bool(d: Mapping[str, Any], key: str) -> bool:
    value = d.get(key)
    if not isinstance(value, bool):
        raise _fail(key, value, "true or false")
    return value


def _check_strings(key: str, value: Any, limit: int, *, min_count: int) -> list[str]:
    if not isinstance(value, (list, tuple)):
        raise _fail(key, value, "a list of strings")
    if not min_count <= len(value) <= limit:
        raise PreprocessingError(f"preprocessing.{key} has {len(value):,} entries: expected {min_count} to {limit:,}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise _fail(f"{key}[{index}]", item, "a string")
        if len(item) > MAX_TOKEN_CHARS:
            raise PreprocessingError(f"preprocessing.{key}[{index}] has {len(item)} characters: expected at most "
                                     f"{MAX_TOKEN_CHARS}")
    if len(set(value)) != len(value):
        seen: set[str] = set()
        duplicate = next(item for item in value if item in seen or seen.add(item))  # type: ignore[func-returns-value]
        raise _fail(key, duplicate, f"unique entries (this one appears more than once in {key})")
    return list(value)


def _check_floats(key: str, value: Any, size: int, *, positive: bool) -> list[float] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != size:
        raise _fail(key, value, f"null or a list of {size} numbers (one per feature)")
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item) \
                or (positive and item <= 0):
            raise _fail(f"{key}[{index}]", item, "a finite number" + (" > 0" if positive else ""))
    return [float(item) for item in value]


@dataclass(frozen=True)
class Preprocessing:
    """Raw inputs -> model inputs, and logits -> labels; see the module docstring for the fields."""

    input_kind: str
    class_names: list[str]
    vocab: list[str] | None = None
    lowercase: bool = True
    max_len: int | None = None
    num_features: int | None = None
    feature_mean: list[float] | None = None
    feature_std: list[float] | None = None
    data_name: str | None = None
    text_pair: bool = False
    tokenizer_kind: str = ZOO_TOKENIZER
    keras_text: dict[str, Any] | None = None
    _vocab: text.Vocab | None = field(default=None, repr=False, compare=False)
    _keras: Any = field(default=None, repr=False, compare=False)   # the TextVectorizer of a Keras tokenizer

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def from_bundle(cls, data: Any) -> Preprocessing:
        """The preprocessing of a :class:`~models.data.DataBundle` (what its splits were encoded with)."""
        config = dict(getattr(data, "config", None) or {})
        kind = getattr(data, "input_kind", "tokens")
        if kind == "features":
            return cls.from_dict({
                "format": FORMAT, "input_kind": "features", "class_names": list(data.class_names),
                "num_features": data.num_features, "feature_mean": getattr(data, "feature_mean", None),
                "feature_std": getattr(data, "feature_std", None), "data_name": data.name})
        vocab = getattr(data, "vocab", None)
        return cls.from_dict({
            "format": FORMAT, "input_kind": "tokens", "class_names": list(data.class_names),
            "vocab": None if vocab is None else list(vocab.itos), "lowercase": bool(config.get("lowercase", True)),
            "max_len": config.get("max_len") if vocab is not None else None, "data_name": data.name,
            "text_pair": vocab is not None and config.get("text_pair_column") is not None})

    @classmethod
    def for_text(cls, texts: Sequence[str], class_names: Sequence[str], *, lowercase: bool = True,
                 max_len: int | None = None, min_freq: int = 1, max_vocab: int | None = None,
                 unk_shapes: bool = False, subword_types: int = 0) -> Preprocessing:
        """A vocabulary built from ``texts`` the way ``build_data`` builds one from a training split."""
        vocab = text.Vocab.build((text.tokenize(t, lowercase) for t in texts), min_freq=min_freq, max_size=max_vocab,
                                 unk_shapes=unk_shapes, subword_types=subword_types)
        return cls.from_dict({"format": FORMAT, "input_kind": "tokens", "class_names": list(class_names),
                              "vocab": vocab.itos, "lowercase": lowercase, "max_len": max_len})

    @classmethod
    def from_text_vectorizer(cls, vectorizer: Any, class_names: Sequence[str]) -> Preprocessing:
        """The record of a Keras ``TextVectorization`` layer (``models.keras.from_keras_text``'s vectorizer)."""
        return cls.from_dict({
            "format": FORMAT, "input_kind": "tokens", "class_names": list(class_names),
            "tokenizer_kind": KERAS_TOKENIZER, "keras_text": vectorizer.settings(),
            "vocab": list(vectorizer.vocabulary), "max_len": vectorizer.output_sequence_length,
            "lowercase": vectorizer.standardize in ("lower", "lower_and_strip_punctuation")})

    @classmethod
    def from_dict(cls, d: Any) -> Preprocessing:
        """Validate a record (``to_dict``'s output, from a checkpoint or a JSON file); raises ``PreprocessingError``."""
        if not isinstance(d, Mapping):
            raise PreprocessingError(f"preprocessing must be a JSON object, got {type(d).__name__}")
        if d.get("format") != FORMAT:
            raise _fail("format", d.get("format"), repr(FORMAT))
        kind = d.get("input_kind")
        if kind not in INPUT_KINDS:
            raise _fail("input_kind", kind, f"one of {list(INPUT_KINDS)}")
        classes = _check_strings("class_names", d.get("class_names"), MAX_CLASSES, min_count=1)
        name = d.get("data_name")
        if name is not None and not isinstance(name, str):
            raise _fail("data_name", name, "a string or null")
        if kind == "features":
            size = d.get("num_features")
            if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_FEATURES:
                raise _fail("num_features", size, f"an integer in [1, {MAX_FEATURES:,}]")
            mean = _check_floats("feature_mean", d.get("feature_mean"), size, positive=False)
            std = _check_floats("feature_std", d.get("feature_std"), size, positive=True)
            if (mean is None) != (std is None):
                raise PreprocessingError("preprocessing.feature_mean and feature_std: give both or neither")
            return cls("features", classes, num_features=size, feature_mean=mean, feature_std=std, data_name=name)
        tokenizer_kind = d.get("tokenizer_kind", ZOO_TOKENIZER)
        if tokenizer_kind not in TOKENIZER_KINDS:
            raise _fail("tokenizer_kind", tokenizer_kind, f"one of {list(TOKENIZER_KINDS)}")
        if tokenizer_kind == KERAS_TOKENIZER:
            return cls._keras_from_dict(d, classes, name)
        if d.get("keras_text") is not None:
            raise _fail("keras_text", d["keras_text"], f"null for tokenizer_kind {ZOO_TOKENIZER!r}")
        raw_vocab = d.get("vocab")
        vocab = None
        if raw_vocab is not None:
            vocab = _check_strings("vocab", raw_vocab, MAX_VOCAB, min_count=2)
            if vocab[:2] != [text.PAD, text.UNK]:
                raise _fail("vocab[:2]", vocab[:2], f"[{text.PAD!r}, {text.UNK!r}] (pad id 0, unk id 1)")
        max_len = d.get("max_len")
        if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1):
            raise _fail("max_len", max_len, "an integer >= 1 or null")
        lowercase = _check_bool(d, "lowercase")
        text_pair = _check_bool(d, "text_pair") if "text_pair" in d else False   # absent: a record from before pairs
        if text_pair and (vocab is None or text.SEP not in vocab):
            raise _fail("text_pair", text_pair, f"false for a vocabulary without the {text.SEP!r} token (a pair "
                                                "model's vocabulary holds it)")
        record = cls("tokens", classes, vocab=vocab, lowercase=lowercase, max_len=max_len, data_name=name,
                     text_pair=text_pair, _vocab=None if vocab is None else text.Vocab(vocab))
        for key in ("unk_shapes", "word_pieces"):   # derived from the vocabulary; a record saying otherwise is wrong
            if key in d and d[key] != getattr(record, key):
                raise _fail(key, d[key], f"{getattr(record, key)} (what the vocabulary holds)")
        return record

    @classmethod
    def _keras_from_dict(cls, d: Mapping[str, Any], classes: list[str], name: str | None) -> Preprocessing:
        """A ``keras-text-vectorization`` record, checked by building its ``TextVectorizer``."""
        from ..keras.errors import KerasImportError
        from ..keras.text_vectorization import TextVectorizer

        settings = d.get("keras_text")
        if not isinstance(settings, Mapping) or sorted(settings) != sorted(KERAS_TEXT_KEYS):
            raise _fail("keras_text", settings, f"an object with exactly the keys {list(KERAS_TEXT_KEYS)}")
        if not isinstance(settings["name"], str):
            raise _fail("keras_text.name", settings["name"], "a string (the layer's name)")
        vocab = _check_strings("vocab", d.get("vocab"), MAX_VOCAB, min_count=2)
        if d.get("text_pair", False) is not False:
            raise _fail("text_pair", d.get("text_pair"), "false (a Keras text model reads one string per input)")
        ngrams = settings["ngrams"]
        if ngrams is not None and not isinstance(ngrams, list):
            raise _fail("keras_text.ngrams", ngrams, "null or a list of n-gram widths")
        try:
            vectorizer = TextVectorizer(tuple(vocab), settings["standardize"], settings["split"], d.get("max_len"),
                                        settings["name"], None if ngrams is None else tuple(ngrams))
        except KerasImportError as error:
            raise PreprocessingError(f"preprocessing.keras_text: {error}") from None
        lowercase = vectorizer.standardize in ("lower", "lower_and_strip_punctuation")
        if d.get("lowercase", lowercase) != lowercase:
            raise _fail("lowercase", d.get("lowercase"), f"{lowercase} (what standardize="
                                                         f"{vectorizer.standardize!r} does)")
        return cls("tokens", classes, vocab=vocab, lowercase=lowercase, max_len=vectorizer.output_sequence_length,
                   data_name=name, tokenizer_kind=KERAS_TOKENIZER, keras_text=vectorizer.settings(), _keras=vectorizer)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (safe in a ``weights_only`` checkpoint); ``from_dict`` reads it back."""
        d: dict[str, Any] = {"format": FORMAT, "input_kind": self.input_kind, "class_names": list(self.class_names),
                             "data_name": self.data_name}
        if self.input_kind == "features":
            d.update(num_features=self.num_features, feature_mean=self.feature_mean, feature_std=self.feature_std)
            return d
        if self._keras is not None:
            d.update(tokenizer_kind=KERAS_TOKENIZER, keras_text=dict(self.keras_text or {}), lowercase=self.lowercase,
                     max_len=self.max_len, text_pair=False, tokenizer=self._keras.rules(), vocab=self.vocab)
            return d
        d.update(tokenizer_kind=ZOO_TOKENIZER, lowercase=self.lowercase, max_len=self.max_len,
                 unk_shapes=self.unk_shapes, word_pieces=self.word_pieces, text_pair=self.text_pair,
                 tokenizer=tokenizer_rules(), vocab=self.vocab)
        return d

    # -- properties --------------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def unk_shapes(self) -> bool:
        return bool(self._vocab is not None and self._vocab.has_shapes)

    @property
    def word_pieces(self) -> bool:
        return bool(self._vocab is not None and self._vocab.has_pieces)

    @property
    def has_tokenizer(self) -> bool:
        """True when raw strings can be encoded (a token model with a vocabulary)."""
        return self.input_kind == "tokens" and (self._vocab is not None or self._keras is not None)

    @property
    def pads_like_keras(self) -> bool:
        """True for a Keras ``TextVectorization`` record: a batch's rows are padded to ``max_len`` (or to the
        batch's longest row) in input order, as Keras pads them, since an unmasked Keras model reads the padding."""
        return self._keras is not None

    # -- checks against a model --------------------------------------------------------------------------------
    def check_model(self, model: torch.nn.Module) -> None:
        """Refuse a record that does not fit ``model``: class count, input kind, vocabulary or feature size."""
        num_classes = getattr(model, "num_classes", None)
        if num_classes is not None and num_classes != self.num_classes:
            raise PreprocessingError(f"preprocessing.class_names has {self.num_classes} names but the model has "
                                     f"{num_classes} classes")
        token_input = bool(getattr(model, "token_input", True))
        if token_input != (self.input_kind == "tokens"):
            raise PreprocessingError(f"preprocessing.input_kind={self.input_kind!r} but the model takes "
                                     f"{'token ids' if token_input else 'features'}")
        vocab_size = getattr(model, "vocab_size", None)
        if self.vocab is not None and vocab_size is not None and len(self.vocab) > vocab_size:
            raise PreprocessingError(f"preprocessing.vocab has {len(self.vocab):,} tokens but the model's embedding "
                                     f"has {vocab_size:,} rows (ids would fall outside it)")
        input_size = getattr(model, "input_size", None)
        if self.input_kind == "features" and input_size is not None and input_size != self.num_features:
            raise PreprocessingError(f"preprocessing.num_features={self.num_features} but the model takes "
                                     f"input_size={input_size}")

    # -- encoding ----------------------------------------------------------------------------------------------
    def encode_ids(self, texts: Sequence[Any]) -> list[list[int]]:
        """Raw strings, or ``(text, pair)`` string pairs for a pair model (``text_pair``), -> one id list each
        (what the training data held for the same example)."""
        if not self.has_tokenizer:
            raise PreprocessingError("this model's preprocessing has no vocabulary (token-id data such as the "
                                     "synthetic tasks): give token id lists, not strings")
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, got one str (wrap it in a list)")
        if self._keras is not None:
            for index, item in enumerate(texts):
                self._split_pair(item, index)
            return self._keras.encode_ids(texts)
        out = []
        for index, item in enumerate(texts):
            text_, pair = self._split_pair(item, index)
            out.append(_encode_one(text_, pair, self._vocab, lowercase=self.lowercase, max_len=self.max_len))
        return out

    def _split_pair(self, item: Any, index: int) -> tuple[str, str | None]:
        """``item`` -> ``(text, pair or None)``; refuses a plain str for a pair model and a pair for a one-text one."""
        if self.text_pair:
            if isinstance(item, str):
                raise TypeError(f"texts[{index}] is one str but this model was trained on text pairs "
                                f"(data.text_pair_column): give a (text, pair) tuple of two strings")
            if not isinstance(item, (tuple, list)) or len(item) != 2 or not all(isinstance(t, str) for t in item):
                raise TypeError(f"texts[{index}]={item!r:.60}: expected a (text, pair) tuple of two strings")
            return item[0], item[1]
        if not isinstance(item, str):
            if isinstance(item, tuple) and len(item) == 2 and all(isinstance(t, str) for t in item):
                raise TypeError(f"texts[{index}] is a (text, pair) tuple but this model was trained on one text per "
                                f"example (no data.text_pair_column): give a str")
            raise TypeError(f"texts[{index}] is a {type(item).__name__}, expected a str")
        return item, None

    def encode(self, texts: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw strings (or token id lists, for a model without a vocabulary) -> ``(ids (B, T) int64`` right-padded
        with 0, ``lengths (B,) int64)``."""
        if self.input_kind != "tokens":
            raise PreprocessingError("this model takes (T, F) feature arrays: use encode_features")
        if any(_is_text(t) for t in texts):
            seqs = self.encode_ids(texts)
        else:
            seqs = [_id_list(t, i, self.max_len) for i, t in enumerate(texts)]
        return self.pad(seqs)

    def pad(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Id lists -> ``(ids (B, T) int64`` right-padded with 0, ``lengths (B,))``: ``T`` the longest row, or
        exactly ``max_len`` for a Keras record with one (as its ``output_sequence_length`` pads)."""
        ids, lengths = pad_ids(seqs)
        if self._keras is not None and self.max_len is not None and ids.shape[1] < self.max_len:
            ids = torch.nn.functional.pad(ids, (0, self.max_len - ids.shape[1]))
        return ids, lengths

    def encode_features(self, arrays: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(T_i, F)`` float arrays -> ``(features (B, T, F) float32`` right-padded with 0, standardised with the
        training split's mean and std when recorded, ``lengths (B,))``."""
        if self.input_kind != "features":
            raise PreprocessingError("this model takes text (token ids): use encode")
        rows = []
        for index, item in enumerate(arrays):
            x = torch.as_tensor(np.asarray(item, dtype=np.float32))
            if x.dim() != 2 or x.shape[1] != self.num_features or x.shape[0] < 1:
                raise ValueError(f"inputs[{index}] has shape {list(x.shape)}: expected (T, {self.num_features}) "
                                 f"with T >= 1")
            rows.append(x)
        if self.feature_mean is not None and self.feature_std is not None:
            mean, std = torch.tensor(self.feature_mean), torch.tensor(self.feature_std)
            rows = [(x - mean) / std for x in rows]
        lengths = torch.tensor([len(x) for x in rows], dtype=torch.int64)
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True), lengths


def _encode_one(item: str, pair: str | None, vocab: text.Vocab, *, lowercase: bool,
                max_len: int | None) -> list[int]:
    """The text -> ids rule: :func:`text.encode_example`, the one the training data was encoded with."""
    return text.encode_example(item, pair, vocab, lowercase=lowercase, max_len=max_len)


def _is_text(item: Any) -> bool:
    """A raw input (a str or a ``(text, pair)`` tuple of strings), as opposed to a token id list."""
    return isinstance(item, str) or (isinstance(item, tuple) and any(isinstance(t, str) for t in item))


def _id_list(item: Any, index: int, max_len: int | None) -> list[int]:
    if isinstance(item, torch.Tensor):
        item = item.tolist()
    if not isinstance(item, (list, tuple)) or not item or \
            not all(isinstance(i, int) and not isinstance(i, bool) for i in item):
        raise TypeError(f"inputs[{index}]={item!r:.60}: expected a str or a non-empty list of token ids")
    return list(item)[:max_len]


def pad_ids(seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Id lists -> ``(ids (B, T) int64`` right-padded with ``<pad>`` = 0, ``lengths (B,) int64)``."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    ids = torch.zeros(len(seqs), int(lengths.max()) if len(seqs) else 0, dtype=torch.int64)
    for row, seq in enumerate(seqs):
        ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.int64)
    return ids, lengths
