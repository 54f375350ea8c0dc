"""Keras ``TextVectorization`` as data: its settings and vocabulary read from the file, and the same token ids for
the same raw strings, without TensorFlow.

What Keras 3 does (``keras/src/layers/preprocessing/text_vectorization.py``, ``index_lookup.py``), reproduced by
``TextVectorizer.encode``:

1. ``standardize``: ``"lower"`` / ``"lower_and_strip_punctuation"`` lower-case ASCII letters only
   (``tf.strings.lower`` without an encoding); ``"strip_punctuation"`` / ``"lower_and_strip_punctuation"``
   delete every character of ``PUNCTUATION`` (Keras's regex, ASCII punctuation); ``None``: as is.
2. ``split``: ``"whitespace"`` splits on runs of ASCII whitespace (empty pieces dropped); ``"character"``: one
   token per Unicode code point.
2b. ``ngrams`` (``tf.strings.ngrams(tokens, widths, separator=" ")``): an int ``n`` means the widths
   ``1, 2, ..., n``, a tuple those widths; the tokens become, width after width in that order, every run of
   ``width`` consecutive tokens joined by one space (none for a row shorter than the width).
3. ids: ``vocabulary[i]`` has id ``i``; ``vocabulary[0]`` is the mask token ``""`` (padding, id 0) and
   ``vocabulary[1]`` the OOV token ``"[UNK]"`` (id 1, every token not in the vocabulary).
4. ``output_sequence_length`` ``L``: the first ``L`` ids, right-padded with 0 to ``L``; ``None``: right-padded to the
   longest row of the batch.

Refused, naming the layer and option: a custom ``standardize`` or ``split`` (code), an ``output_mode``
other than ``"int"``, ``ragged``/``sparse`` outputs, an encoding other than UTF-8, more than one OOV token, and a
vocabulary that is not in the file (neither in the config nor in the ``.keras`` assets).
"""

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .errors import KerasImportError

FORMAT = "birnn-zoo/keras-text-vectorization/v1"
PUNCTUATION = r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']'
_PUNCTUATION_RE = re.compile(PUNCTUATION)
_ASCII_WHITESPACE_RE = re.compile(r"[ \t\n\v\f\r]+")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
STANDARDIZE = (None, "lower_and_strip_punctuation", "lower", "strip_punctuation")
SPLIT = ("whitespace", "character")
MAX_VOCAB = 5_000_000
MAX_TOKEN_CHARS = 10_000
MAX_SEQUENCE_LENGTH = 1_000_000
MAX_NGRAM = 64
MASK, OOV = "", "[UNK]"


def _fail(layer: str, reason: str) -> KerasImportError:
    return KerasImportError(f"layer {layer!r}: {reason}")


@dataclass(frozen=True)
class TextVectorizer:
    """A Keras ``TextVectorization`` layer's inference: raw strings -> token ids ``(B, L)`` int64.

    ``vocabulary`` holds every id's token, the mask token ``""`` (id 0) and ``"[UNK]"`` (id 1) included, as
    ``layer.get_vocabulary()`` returns it."""

    vocabulary: Tuple[str, ...]
    standardize: Optional[str] = "lower_and_strip_punctuation"
    split: str = "whitespace"
    output_sequence_length: Optional[int] = None
    name: str = "text_vectorization"
    ngrams: Optional[Tuple[int, ...]] = None
    """The n-gram widths, in Keras's order (``ngrams=3`` in the layer's config is ``(1, 2, 3)``); ``None``: tokens
    as split."""

    def __post_init__(self) -> None:
        where = self.name
        if self.standardize not in STANDARDIZE:
            raise _fail(where, f"standardize={self.standardize!r} is not one of {list(STANDARDIZE)}")
        if self.split not in SPLIT:
            raise _fail(where, f"split={self.split!r} is not one of {list(SPLIT)}")
        widths = self.ngrams
        if widths is not None and (not isinstance(widths, tuple) or not widths or len(set(widths)) != len(widths)
                                   or any(isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= MAX_NGRAM
                                          for w in widths)):
            raise _fail(where, f"ngrams={widths!r} is not null or a tuple of distinct integers in [1, {MAX_NGRAM}]")
        length = self.output_sequence_length
        if length is not None and (isinstance(length, bool) or not isinstance(length, int)
                                   or not 1 <= length <= MAX_SEQUENCE_LENGTH):
            raise _fail(where, f"output_sequence_length={length!r} is not null or an integer in "
                               f"[1, {MAX_SEQUENCE_LENGTH}]")
        vocab = self.vocabulary
        if not isinstance(vocab, tuple) or not 2 <= len(vocab) <= MAX_VOCAB:
            raise _fail(where, f"vocabulary of {len(vocab) if isinstance(vocab, tuple) else type(vocab).__name__} "
                               f"entries: expected a tuple of 2 to {MAX_VOCAB} strings")
        if vocab[:2] != (MASK, OOV):
            raise _fail(where,
                        f"vocabulary starts with {list(vocab[:2])!r}: expected ['', '[UNK]'] (mask id 0, OOV id 1)")
        for index, token in enumerate(vocab):
            if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
                raise _fail(where, f"vocabulary[{index}]={token!r:.80} is not a string of at most {MAX_TOKEN_CHARS} "
                                   "characters")
        if len(set(vocab)) != len(vocab):
            raise _fail(where, "the vocabulary holds a token twice")
        object.__setattr__(self, "_ids", {token: index for index, token in enumerate(vocab)})

    # -- the file side ----------------------------------------------------------------------------------------
    @classmethod
    def from_keras_config(cls, config: Dict[str, Any], name: str, assets: Dict[str, str]) -> "TextVectorizer":
        """The checked settings of a ``TextVectorization`` config; the vocabulary from the config (set at
        construction) or from its ``vocabulary.txt`` asset (adapted), as Keras reads it back."""
        def setting(key: str, allowed: Sequence[Any], default: Any) -> Any:
            value = config.get(key, default)
            if isinstance(value, dict) or (value not in allowed):
                what = "a custom callable is code" if isinstance(value, dict) else f"expected one of {list(allowed)}"
                raise _fail(name, f"TextVectorization {key}={value!r} is not supported ({what})")
            return value

        standardize = setting("standardize", STANDARDIZE, "lower_and_strip_punctuation")
        split = setting("split", SPLIT, "whitespace")
        ngrams = _ngram_widths(config.get("ngrams"), name)
        setting("output_mode", ("int",), "int")
        setting("ragged", (False,), False)
        setting("sparse", (False,), False)
        setting("encoding", ("utf-8", "UTF-8"), "utf-8")
        setting("idf_weights", (None,), None)
        length = config.get("output_sequence_length")
        vocab = config.get("vocabulary")
        if vocab is not None:
            if isinstance(vocab, str):
                raise _fail(name, f"vocabulary={vocab!r} is a file path outside the model file; not imported")
            if not isinstance(vocab, list):
                raise _fail(name, f"vocabulary is a {type(vocab).__name__}, expected a list of strings")
            if vocab[:2] != [MASK, OOV]:            # Keras adds the mask and OOV tokens in front
                vocab = [MASK, OOV] + vocab
        else:
            # Keras 3 writes it twice: for the layer and for its inner lookup layer (``_lookup_layer``)
            found = sorted({text for path, text in assets.items() if path.endswith("/vocabulary.txt")})
            if not found:
                raise _fail(name, "TextVectorization's vocabulary is not in the file (no vocabulary.txt asset); save "
                                  "the model as .keras after adapt(), or pass vocabulary= to the layer")
            if len(found) > 1:
                raise _fail(name, f"the file holds {len(found)} different vocabulary.txt assets; refused")
            vocab = found[0].splitlines()
            while vocab and vocab[-1] == "":
                vocab.pop()
        return cls(tuple(vocab), standardize, split, length, name, ngrams)

    # -- raw strings -> ids -----------------------------------------------------------------------------------
    def tokens(self, text: str) -> List[str]:
        """One string's tokens after ``standardize`` and ``split``."""
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings, got {type(text).__name__}")
        if self.standardize in ("lower", "lower_and_strip_punctuation"):
            text = text.translate(_ASCII_LOWER)
        if self.standardize in ("strip_punctuation", "lower_and_strip_punctuation"):
            text = _PUNCTUATION_RE.sub("", text)
        if self.split == "character":
            pieces = list(text)
        else:
            pieces = [piece for piece in _ASCII_WHITESPACE_RE.split(text) if piece]
        if self.ngrams is None:
            return pieces
        return [" ".join(pieces[start:start + width]) for width in self.ngrams
                for start in range(len(pieces) - width + 1)]

    def encode_ids(self, texts: Sequence[str]) -> List[List[int]]:
        """Each string's ids, truncated to ``output_sequence_length`` (not padded)."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        ids: Dict[str, int] = self._ids  # type: ignore[attr-defined]
        rows = [[ids.get(token, 1) for token in self.tokens(text)] for text in texts]
        return [row[: self.output_sequence_length] for row in rows] if self.output_sequence_length else rows

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Raw strings -> ``ids (B, L)`` int64, right-padded with 0, as the Keras layer returns them."""
        rows = self.encode_ids(texts)
        width = self.output_sequence_length or max([len(row) for row in rows] + [0])
        out = torch.zeros(len(rows), width, dtype=torch.int64)
        for index, row in enumerate(rows):
            out[index, : len(row)] = torch.tensor(row, dtype=torch.int64)
        return out

    # -- the record -------------------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return {"format": FORMAT, "name": self.name, "standardize": self.standardize, "split": self.split,
                "ngrams": None if self.ngrams is None else list(self.ngrams),
                "output_sequence_length": self.output_sequence_length, "vocabulary": list(self.vocabulary),
                "punctuation": PUNCTUATION, "lowercase": "ASCII letters only", "whitespace": "ASCII"}

    def settings(self) -> Dict[str, Any]:
        """The settings without the vocabulary and length, as a preprocessing record keeps them
        (``models/data/preprocessing.py``: its ``vocab`` and ``max_len`` hold those)."""
        return {"name": self.name, "standardize": self.standardize, "split": self.split,
                "ngrams": None if self.ngrams is None else list(self.ngrams)}

    @staticmethod
    def rules() -> Dict[str, Any]:
        """The rules as data: what a standard-library re-implementation needs (this class is the reference)."""
        return {
            "punctuation": PUNCTUATION,
            "whitespace": _ASCII_WHITESPACE_RE.pattern,
            "steps": [
                "standardize lower / lower_and_strip_punctuation: map A-Z to a-z, nothing else "
                "(text.translate(str.maketrans(string.ascii_uppercase, string.ascii_lowercase)))",
                "standardize strip_punctuation / lower_and_strip_punctuation: re.sub(punctuation, '', text)",
                "split whitespace: [t for t in re.split(whitespace, text) if t]; split character: list(text)",
                "ngrams [w1, w2, ...]: for each width w in that order, ' '.join(tokens[i:i + w]) for i in "
                "range(len(tokens) - w + 1); ngrams null: the tokens",
                "id = vocab.index(token) if token is in vocab, else oov_id",
                "max_len (output_sequence_length) set: ids[:max_len] right-padded with mask_id to exactly max_len; "
                "null: right-padded with mask_id to the longest row of the batch",
            ],
            "mask_token": MASK, "mask_id": 0, "oov_token": OOV, "oov_id": 1,
        }

    @classmethod
    def from_dict(cls, d: Any) -> "TextVectorizer":
        """A record (``to_dict``), validated; ``KerasImportError`` names what is wrong."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise KerasImportError(f"a text vectorizer record must be a JSON object with format {FORMAT!r}")
        vocab = d.get("vocabulary")
        if not isinstance(vocab, list):
            raise KerasImportError("text vectorizer record: vocabulary must be a list of strings")
        name = str(d.get("name", "text_vectorization"))
        return cls(tuple(vocab), d.get("standardize"), d.get("split"), d.get("output_sequence_length"), name,
                   _ngram_widths(d.get("ngrams"), name))


def _ngram_widths(value: Any, name: str) -> Optional[Tuple[int, ...]]:
    """Keras's ``ngrams`` setting (``None``, an int ``n``: widths ``1..n``, or a list/tuple of widths) -> the widths;
    ``TextVectorizer`` checks them."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= MAX_NGRAM:
            raise _fail(name, f"TextVectorization ngrams={value!r} is not supported (expected an integer in "
                              f"[1, {MAX_NGRAM}], a list of them, or null)")
        return tuple(range(1, value + 1))
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise _fail(name, f"TextVectorization ngrams={value!r} is not supported (expected an integer, a list of "
                      "integers, or null)")


def split_text_vectorization(model: Dict[str, Any]) -> Tuple[Dict[str, Any], Optional[TextVectorizer]]:
    """A model config whose input feeds a ``TextVectorization`` -> the same config reading token ids
    ``(batch, L)`` instead (the layer removed, its readers reading the input) and the layer's ``TextVectorizer``;
    ``(model, None)`` when it has none. Only a ``TextVectorization`` right after the (only) string input is
    imported."""
    config = model.get("config")
    layers = config.get("layers") if isinstance(config, dict) else None
    if not isinstance(layers, list):
        return model, None
    found = [i for i, entry in enumerate(layers) if isinstance(entry, dict)
             and entry.get("class_name") == "TextVectorization"]
    if not found:
        return model, None
    entry = layers[found[0]]
    layer_config = entry.get("config") if isinstance(entry.get("config"), dict) else {}
    name = str(entry.get("name") or layer_config.get("name") or "text_vectorization")
    if len(found) > 1:
        raise _fail(name, "several TextVectorization layers; only one, on the model's string input, is imported")
    vectorizer = TextVectorizer.from_keras_config(layer_config, name, model.get("_assets") or {})
    width = vectorizer.output_sequence_length
    inputs = [i for i, e in enumerate(layers) if isinstance(e, dict) and e.get("class_name") == "InputLayer"]
    original = layers[inputs[0]] if inputs else {"module": "keras.layers", "class_name": "InputLayer",
                                                 "registered_name": None, "inbound_nodes": []}
    original_config = original.get("config") if isinstance(original.get("config"), dict) else {}
    ids_input = {**original, "config": {**original_config, "batch_shape": [None, width], "dtype": "int64"}}
    ids_input["config"].pop("batch_input_shape", None)
    new_layers = list(layers)
    if model.get("class_name") == "Sequential":
        if found[0] not in (0, 1) or (found[0] == 1 and inputs != [0]):
            raise _fail(name, "TextVectorization is only imported as the first layer of a Sequential model")
        input_name = "input_layer" if not inputs else str(layers[0].get("name") or original_config.get("name"))
        ids_input["name"] = ids_input["config"]["name"] = input_name
        new_layers = [ids_input] + [e for i, e in enumerate(layers) if i not in (found[0], *inputs)]
        return {**model, "config": {**config, "layers": new_layers}}, vectorizer
    sources = _keras_histories(entry.get("inbound_nodes"))
    if len(inputs) != 1 or len(sources) != 1 or sources[0] != layers[inputs[0]].get("name"):
        raise _fail(name, "TextVectorization is only imported on the model's one (string) input")
    input_name = sources[0]
    ids_input["name"] = ids_input["config"]["name"] = input_name
    new_layers = [ids_input if i == inputs[0] else _renamed(e, name, input_name)
                  for i, e in enumerate(layers) if i != found[0]]
    return {**model, "config": {**config, "layers": new_layers}}, vectorizer


def _keras_histories(value: Any) -> List[str]:
    """The layer names a (Keras 3 or Keras 2) inbound-nodes structure reads."""
    found: List[str] = []
    if isinstance(value, dict):
        history = value.get("keras_history") if "keras_history" in value else None
        if isinstance(history, list) and history and isinstance(history[0], str):
            found.append(history[0])
        for key, item in value.items():
            found += _keras_histories(item) if key != "keras_history" else []
    elif isinstance(value, list):
        if len(value) >= 3 and isinstance(value[0], str) and isinstance(value[1], int):      # Keras 2
            found.append(value[0])
        else:
            for item in value:
                found += _keras_histories(item)
    return found


def _renamed(value: Any, old: str, new: str) -> Any:
    """``value`` with every reference to layer ``old``'s output (Keras 3 ``keras_history``, Keras 2 node lists)
    pointing at ``new``."""
    if isinstance(value, dict):
        out = {key: _renamed(item, old, new) for key, item in value.items()}
        history = out.get("keras_history")
        if isinstance(history, list) and history and history[0] == old:
            out["keras_history"] = [new, *history[1:]]
        return out
    if isinstance(value, list):
        if len(value) >= 3 and value[0] == old and isinstance(value[1], int):
            return [new, *[_renamed(item, old, new) for item in value[1:]]]
        return [_renamed(item, old, new) for item in value]
    return value
