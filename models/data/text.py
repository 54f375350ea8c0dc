"""Tokenizer, vocabulary and readers for the real text datasets (TREC-6, SST-2, SMS spam).

Row counts of the files as published (sources and checksums in :mod:`models.data.download`): TREC train 5,452 / test
500; SST-2 6,920 / 872 / 1,821; SMS 5,574 (ham 4,827, spam 747). Splits without an official counterpart are
seeded and stratified (:func:`stratified_split`).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .batching import ListDataset

log = logging.getLogger(__name__)

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
# Between a text and its pair (``data.text_pair_column``); the tokenizer splits ``<`` and ``>``, so no word is it.
SEP = "<sep>"
# With ``data.unk_shapes``, an unknown word maps to the token of its shape instead of ``<unk>`` (ids 2-6):
# a number, an acronym, a name and a rare lower-case word say different things about a question's type.
UNK_SHAPES = ("<unk:number>", "<unk:CAPS>", "<unk:Capital>", "<unk:lower>", "<unk:other>")
_TOKEN_RE = re.compile(r"\w+(?:'\w+)*|[^\w\s]")
# With ``data.subword_types``, a word below ``min_freq`` is spelt with pieces learnt from the training words: a
# word-start piece of >= 3 letters (a frequent word, or a prefix shared by enough word types), then continuation pieces
# ``##...`` (``"explorers" -> "explorer", "##s"``); the tokenizer never emits "##", so no word collides.
CONTINUATION = "##"
_MIN_START = 3  # letters of a word-start piece

TREC_CLASSES = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
SST2_CLASSES = ["negative", "positive"]
SMS_CLASSES = ["ham", "spam"]


MAX_LINE_BYTES = 1 << 20
"""A text line longer than this (1 MiB; real rows are under 1 KiB) is truncated with a warning that counts them,
so one huge line cannot grow the process without limit while it is tokenized."""


class DataFormatError(ValueError):
    """A malformed line; the message names the file and the 1-based line number."""


def tokenize(text: str, lowercase: bool = True) -> list[str]:
    """Word tokens: runs of word characters (with inner apostrophes, ``n't``) or single punctuation.

    Idempotent on its own output: ``tokenize(" ".join(tokenize(s))) == tokenize(s)``.
    """
    return _TOKEN_RE.findall(text.lower() if lowercase else text)


def word_shape(token: str) -> str:
    """The ``<unk:...>`` token of an unknown word, from its spelling *before* lowercasing: any digit
    (``1900``, ``B52``), all capitals (``MO``), a capital first letter (``Aspen``), lower case (``walrus``), or
    anything else (punctuation, other scripts)."""
    if any(c.isdigit() for c in token):
        return UNK_SHAPES[0]
    if token.isupper() and len(token) > 1:
        return UNK_SHAPES[1]
    if token[:1].isupper():
        return UNK_SHAPES[2]
    if token.islower():
        return UNK_SHAPES[3]
    return UNK_SHAPES[4]


class Vocab:
    """Token <-> id map with ``<pad>`` = 0 and ``<unk>`` = 1 (then the :data:`UNK_SHAPES`, when the vocabulary
    has them), built from training tokens."""

    def __init__(self, itos: Sequence[str]) -> None:
        if list(itos[:2]) != [PAD, UNK]:
            raise ValueError(f"vocabulary must start with {PAD!r}, {UNK!r}")
        self.itos = list(itos)
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary has duplicate tokens")
        self.has_shapes = list(itos[2:2 + len(UNK_SHAPES)]) == list(UNK_SHAPES)
        self.has_pieces = any(t.startswith(CONTINUATION) for t in self.itos)

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_freq: int = 1, max_size: int | None = None,
              unk_shapes: bool = False, subword_types: int = 0, reserved: Sequence[str] = ()) -> Vocab:
        """Tokens with count >= ``min_freq``, most frequent first (ties alphabetical), at most
        ``max_size`` entries in total including ``<pad>``, ``<unk>``, (``unk_shapes``) the shape tokens and the
        ``reserved`` tokens (e.g. :data:`SEP`, right after them). ``subword_types > 0``: then the pieces (see
        :data:`CONTINUATION`) found in at least that many distinct training words, most widespread first, within
        the same ``max_size``."""
        specials = [PAD, UNK, *(UNK_SHAPES if unk_shapes else ()), *reserved]
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}")
        if subword_types < 0:
            raise ValueError(f"subword_types must be >= 0 (0: no pieces), got {subword_types}")
        if max_size is not None and max_size < len(specials):
            raise ValueError(f"max_size must be >= {len(specials)} (room for {', '.join(specials)}), got {max_size}")
        counts = Counter(t for toks in token_lists for t in toks)
        kept = sorted((t for t, c in counts.items() if c >= min_freq and t not in specials),
                      key=lambda t: (-counts[t], t))
        if subword_types > 0:
            kept += _pieces(counts, set(kept), subword_types)
        if max_size is not None:
            kept = kept[: max_size - len(specials)]
        return cls([*specials, *kept])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str], spellings: Sequence[str] | None = None) -> list[int]:
        """Token strings -> ids. An unknown token -> its pieces (:meth:`spell`, in a vocabulary with pieces), or
        1, or, in a vocabulary with shapes, the id of the :func:`word_shape` of its spelling (``spellings[i]``:
        token ``i`` as written, before lowercasing; default the token itself). With pieces, one token may give
        several ids."""
        if not self.has_shapes and not self.has_pieces:
            return [self.stoi.get(t, UNK_ID) for t in tokens]
        spellings = tokens if spellings is None else spellings
        if len(spellings) != len(tokens):
            raise ValueError(f"spellings has {len(spellings)} entries for {len(tokens)} tokens")
        ids: list[int] = []
        for t, w in zip(tokens, spellings, strict=True):
            if t in self.stoi:
                ids.append(self.stoi[t])
                continue
            # With shapes, a word written with a capital or a digit keeps its shape (a name, an acronym, a number
            # says more about the text than its letters); pieces spell words written in lower case.
            pieces = self.spell(t) if self.has_pieces and (not self.has_shapes or w.islower()) else None
            if pieces is not None:
                ids.extend(pieces)
            else:
                ids.append(self.stoi[word_shape(w)] if self.has_shapes else UNK_ID)
        return ids

    def spell(self, word: str) -> list[int] | None:
        """An unknown word as piece ids: the longest word-start piece (>= 3 letters, leaving at least one), then
        the longest continuation pieces, left to right (WordPiece's greedy rule); None when some part has no
        piece, or the word is not letters only."""
        if not word.isalpha() or len(word) <= _MIN_START:
            return None
        for cut in range(len(word) - 1, _MIN_START - 1, -1):
            start = self.stoi.get(word[:cut])
            if start is not None:
                break
        else:
            return None
        ids, rest = [start], word[cut:]
        while rest:
            for end in range(len(rest), 0, -1):
                piece = self.stoi.get(CONTINUATION + rest[:end])
                if piece is not None:
                    break
            else:
                return None
            ids.append(piece)
            rest = rest[end:]
        return ids

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Ids -> token strings (padding ids dropped)."""
        return [self.itos[i] for i in ids if i != PAD_ID]


def _pieces(counts: Counter[str], words: set[str], min_types: int) -> list[str]:
    """Word-start pieces (prefixes of >= 3 letters) and continuation pieces (``##`` + a suffix, after a prefix of
    >= 3 letters) of the letters-only training words, kept when at least ``min_types`` distinct words have them;
    most widespread first (ties alphabetical), pieces already in ``words`` left out."""
    starts: Counter[str] = Counter()
    ends: Counter[str] = Counter()
    for word in counts:
        if not word.isalpha():
            continue
        for cut in range(_MIN_START, len(word)):
            starts[word[:cut]] += 1
            ends[CONTINUATION + word[cut:]] += 1
    found = [p for p, n in (*starts.items(), *ends.items()) if n >= min_types and p not in words]
    return sorted(found, key=lambda p: (-(starts[p] if p in starts else ends[p]), p))


def _read_lines(path: Path, encoding: str) -> list[str | UnicodeDecodeError]:
    """The file's lines without line endings; a line that does not decode is its ``UnicodeDecodeError``
    (one bad byte spoils its line, not the file)."""
    lines: list[str | UnicodeDecodeError] = []
    truncated = 0
    with open(path, "rb") as f:
        while raw := f.readline(MAX_LINE_BYTES + 1):
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):   # cut, and skip the rest of the line
                truncated += 1
                while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass
                lines.append(raw[:MAX_LINE_BYTES].decode(encoding, errors="ignore"))
                continue
            try:
                lines.append(raw.decode(encoding).rstrip("\r\n"))
            except UnicodeDecodeError as error:
                lines.append(error)
    if truncated:
        log.warning("%s: %d line(s) longer than %d bytes truncated to that length", path, truncated, MAX_LINE_BYTES)
    return lines


def _parse(
    path: Path, encoding: str, parse_line: callable, skip_malformed: bool  # type: ignore[valid-type]
) -> tuple[list[tuple[str, str]], int]:
    """Apply ``parse_line(line) -> (label, text)`` (raising ValueError) to every line of ``path``.

    Returns ``(rows, skipped)``. A malformed or undecodable line raises :class:`DataFormatError` naming the
    file and line, unless ``skip_malformed`` (then it is counted, and a warning reports the count).
    """
    rows, skipped = [], 0
    for lineno, line in enumerate(_read_lines(path, encoding), start=1):
        try:
            if isinstance(line, UnicodeDecodeError):
                bad = line.object[line.start:line.end]
                raise ValueError(f"byte {bad!r} at column {line.start + 1} is not valid {encoding}")
            label, text = parse_line(line)
            if not text.strip():
                raise ValueError("no text after the label")
        except ValueError as err:
            if not skip_malformed:
                shown = line.object[:80] if isinstance(line, UnicodeDecodeError) else line[:80]
                raise DataFormatError(
                    f"{path}:{lineno}: malformed line ({err}): {shown!r}. Fix the file, or set "
                    "data.skip_malformed=true to skip such lines"
                ) from None
            skipped += 1
            continue
        rows.append((label, text))
    if skipped:
        log.warning("%s: skipped %d malformed line(s) (data.skip_malformed=true)", path, skipped)
    return rows, skipped


def _trec_line(line: str) -> tuple[str, str]:
    head, _, text = line.partition(" ")
    coarse, sep, fine = head.partition(":")
    if not sep or not fine:
        raise ValueError("expected 'COARSE:fine question'")
    if coarse not in TREC_CLASSES:
        raise ValueError(f"unknown coarse class {coarse!r}, expected one of {TREC_CLASSES}")
    return coarse, text


def _sst2_line(line: str) -> tuple[str, str]:
    label, _, text = line.partition(" ")
    if label not in ("0", "1"):
        raise ValueError(f"label {label!r} is not 0 or 1")
    return SST2_CLASSES[int(label)], text


def _sms_line(line: str) -> tuple[str, str]:
    label, sep, text = line.partition("\t")
    if not sep:
        raise ValueError("expected 'label<TAB>message'")
    if label not in SMS_CLASSES:
        raise ValueError(f"label {label!r} is not one of {SMS_CLASSES}")
    return label, text


def read_trec(path: Path, skip_malformed: bool = False) -> tuple[list[tuple[str, str]], int]:
    """TREC ``COARSE:fine question ...`` lines (latin-1) -> ``[(coarse, question)]``, skipped count."""
    return _parse(path, "latin-1", _trec_line, skip_malformed)


def read_sst2(path: Path, skip_malformed: bool = False) -> tuple[list[tuple[str, str]], int]:
    """SST-2 ``LABEL sentence`` lines (UTF-8) -> ``[("negative"|"positive", sentence)]``, skipped count."""
    return _parse(path, "utf-8", _sst2_line, skip_malformed)


def read_sms(path: Path, skip_malformed: bool = False) -> tuple[list[tuple[str, str]], int]:
    """SMS ``label<TAB>message`` lines (UTF-8) -> ``[("ham"|"spam", message)]``, skipped count."""
    return _parse(path, "utf-8", _sms_line, skip_malformed)


def stratified_split(
    labels: Sequence[str], fractions: Sequence[float], seed: int
) -> list[np.ndarray]:
    """Seeded stratified split of row indices into ``len(fractions) + 1`` parts (the rest comes first).

    For each class (in sorted order) its rows are permuted with ``default_rng(seed)`` and part ``k``
    takes ``round(n_class * fractions[k])`` rows. Each returned index array is sorted (file order).
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF]))
    arr = np.asarray(labels)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for cls in sorted(set(labels)):
        idx = rng.permutation(np.flatnonzero(arr == cls))
        start = 0
        sizes = [round(len(idx) * f) for f in fractions]
        for k, size in enumerate(sizes, start=1):
            parts[k].append(idx[start : start + size])
            start += size
        parts[0].append(idx[start:])
    return [np.sort(np.concatenate(p)) for p in parts]


def encode_text(text: str, vocab: Vocab, lowercase: bool = True) -> list[int]:
    """One text -> token ids (unknown words spelt with pieces when ``vocab`` has them, else by their shape when
    it has shape tokens)."""
    if not vocab.has_shapes:
        return vocab.encode(tokenize(text, lowercase))
    spellings = tokenize(text, lowercase=False)
    return vocab.encode([w.lower() for w in spellings] if lowercase else spellings, spellings)


def encode_rows(
    rows: Sequence[tuple[str, str]],
    vocab: Vocab,
    class_names: Sequence[str],
    *,
    lowercase: bool = True,
    max_len: int | None = None,
    pairs: Sequence[str] | None = None,
) -> ListDataset:
    """Encode ``(label, text)`` rows (and ``pairs[i]``, the pair text of row ``i``) into a dataset with
    :func:`encode_example`: tokenized, truncated to ``max_len`` tokens, a text without tokens as ``[<unk>]``."""
    index = {c: i for i, c in enumerate(class_names)}
    if pairs is not None and len(pairs) != len(rows):
        raise ValueError(f"{len(pairs)} pair texts for {len(rows)} rows")
    seqs, labels = [], []
    for row, (label, text) in enumerate(rows):
        seqs.append(encode_example(text, None if pairs is None else pairs[row], vocab, lowercase=lowercase,
                                   max_len=max_len))
        labels.append(index[label])
    return ListDataset(seqs, labels)


def encode_example(text: str, pair: str | None, vocab: Vocab, *, lowercase: bool = True,
                   max_len: int | None = None) -> list[int]:
    """One raw example -> token ids, the one rule of every text dataset (training and prediction alike).

    ``pair`` None: the text's ids truncated to ``max_len``, or ``[<unk>]`` for a text without tokens (every
    example has length >= 1). With a pair: text ids, the id of :data:`SEP`, pair ids, then truncated to
    ``max_len`` (the vocabulary must hold ``<sep>``: built with ``reserved=[SEP]``)."""
    if pair is None:
        return encode_text(text, vocab, lowercase)[:max_len] or [UNK_ID]
    if SEP not in vocab.stoi:
        raise ValueError(f"a text pair needs the {SEP!r} token, which this vocabulary lacks (build it with "
                         f"reserved=[{SEP!r}])")
    return [*encode_text(text, vocab, lowercase), vocab.stoi[SEP], *encode_text(pair, vocab, lowercase)][:max_len]
