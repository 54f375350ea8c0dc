"""Real text datasets from ../shared/data: row counts, tokenizer/vocab round trip, malformed lines."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from models.data import DataFormatError, Vocab, batch_order, build_data, padding_fraction, tokenize

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "trec").is_dir(),
                                  reason=f"shared data folder {SHARED} is missing (see shared/README.md)")


def _cfg(name: str, **kw: object) -> dict:
    return {"name": name, "root": str(SHARED), "download": False, **kw}


@needs_shared
@pytest.mark.parametrize(
    ("name", "sizes", "classes", "train_counts"),
    [
        # TREC: train_5500 (5,452) split 90/10 stratified by seed; TREC_10 (500) is the test set.
        ("trec", {"train": 4906, "val": 546, "test": 500}, 6, [77, 1046, 1125, 1101, 751, 806]),
        ("sst2", {"train": 6920, "val": 872, "test": 1821}, 2, [3310, 3610]),
        # SMS: 5,574 rows (ham 4,827, spam 747) split 70/10/20 stratified by seed.
        ("sms_spam", {"train": 3902, "val": 558, "test": 1114}, 2, [3379, 523]),
    ],
)
def test_real_dataset_row_counts(name: str, sizes: dict, classes: int, train_counts: list[int]) -> None:
    b = build_data(_cfg(name))
    assert {s: len(d) for s, d in b.splits.items()} == sizes
    assert b.num_classes == len(b.class_names) == classes
    assert np.bincount(b.splits["train"].labels).tolist() == train_counts
    assert b.vocab is not None and b.vocab_size == len(b.vocab) and b.pad_id == 0
    assert b.vocab.itos[:2] == ["<pad>", "<unk>"]
    assert b.info["skipped_malformed"] == 0
    for d in b.splits.values():
        assert d.lengths.min() >= 1


@needs_shared
def test_counts_add_up_to_the_files() -> None:
    trec = build_data(_cfg("trec"))
    assert len(trec.splits["train"]) + len(trec.splits["val"]) == 5452
    sms = build_data(_cfg("sms_spam"))
    labels = np.concatenate([d.labels for d in sms.splits.values()])
    assert np.bincount(labels).tolist() == [4827, 747]
    assert sms.majority_accuracy("test") == pytest.approx(965 / 1114)


@needs_shared
def test_val_fraction_zero_builds_no_validation_split_and_trains_on_every_row() -> None:
    full, split = build_data(_cfg("trec", val_fraction=0)), build_data(_cfg("trec"))
    assert set(full.splits) == {"train", "test"} and not full.has_validation and split.has_validation
    assert len(full.splits["train"]) == 5452 and len(full.splits["test"]) == 500
    assert full.vocab_size > split.vocab_size, "the vocabulary counts the former validation rows too"
    full.check()
    sms = build_data(_cfg("sms_spam", val_fraction=0.0))
    assert set(sms.splits) == {"train", "test"} and len(sms.splits["train"]) + len(sms.splits["test"]) == 5574


@needs_shared
def test_split_seed_changes_sms_split_and_vocab_options() -> None:
    a = build_data(_cfg("sms_spam"))
    b = build_data(_cfg("sms_spam", split_seed=1, min_freq=2, max_vocab=1000, max_len=20))
    assert len(a.splits["train"]) == len(b.splits["train"])
    assert a.splits["test"][0] != b.splits["test"][0]
    assert b.vocab_size == 1000 and int(b.splits["train"].lengths.max()) == 20


@needs_shared
def test_bucketing_reduces_padding_on_sst2() -> None:
    """SST-2 train, batch 64: random batches measured ~58% padding, bucketed ~3% (ratio < 0.1)."""
    lens = build_data(_cfg("sst2")).splits["train"].lengths
    rnd = padding_fraction(batch_order(lens, 64, shuffle=True, bucket=False, seed=0, epoch=0), lens)
    bkt = padding_fraction(batch_order(lens, 64, shuffle=True, bucket=True, seed=0, epoch=0), lens)
    assert rnd > 0.4 and bkt / rnd < 0.1, (bkt, rnd)


def test_tokenizer_and_vocab_round_trip() -> None:
    text = "It's NOT the movie's fault , isn't it ? Call 0800-123 now!"
    toks = tokenize(text)
    assert toks == ["it's", "not", "the", "movie's", "fault", ",", "isn't", "it", "?", "call", "0800",
                    "-", "123", "now", "!"]
    assert tokenize(" ".join(toks)) == toks
    assert tokenize("ABC", lowercase=False) == ["ABC"]
    vocab = Vocab.build([toks, ["it", "now"]], min_freq=1)
    assert vocab.itos[:4] == ["<pad>", "<unk>", "it", "now"]  # most frequent first, ties alphabetical
    assert vocab.decode(vocab.encode(toks)) == toks
    assert vocab.encode(["zebra"]) == [1] and vocab.decode([0, 2, 0]) == ["it"]
    assert Vocab.build([toks, ["it", "now"]], min_freq=2).itos == ["<pad>", "<unk>", "it", "now"]
    assert len(Vocab.build([toks], max_size=5)) == 5
    with pytest.raises(ValueError, match="min_freq"):
        Vocab.build([toks], min_freq=0)


def test_unknown_words_map_to_their_shape_when_asked() -> None:
    from models.data.text import UNK_SHAPES, encode_text, word_shape

    assert [word_shape(w) for w in ("1900", "B52", "MO", "Aspen", "walrus", "?", "ü")] == [
        "<unk:number>", "<unk:number>", "<unk:CAPS>", "<unk:Capital>", "<unk:lower>", "<unk:other>", "<unk:lower>"]
    vocab = Vocab.build([["what", "is", "the", "?"]], unk_shapes=True)
    assert vocab.itos[:7] == ["<pad>", "<unk>", *UNK_SHAPES] and vocab.has_shapes
    ids = encode_text("What is Aspen , the MO of 1900 walrus ?", vocab)
    assert vocab.decode(ids) == ["what", "is", "<unk:Capital>", "<unk:other>", "the", "<unk:CAPS>", "<unk:lower>",
                                 "<unk:number>", "<unk:lower>", "?"]
    assert Vocab(vocab.itos).has_shapes, "a vocabulary rebuilt from its tokens (a checkpoint) keeps its shapes"
    plain = Vocab.build([["what", "is"]])
    assert not plain.has_shapes and encode_text("What is Aspen", plain) == [3, 2, 1]
    assert encode_text("What is Aspen", Vocab.build([["What", "is"]], unk_shapes=True), lowercase=False) == [7, 8, 4]
    with pytest.raises(ValueError, match="max_size must be >= 7"):
        Vocab.build([["a"]], max_size=6, unk_shapes=True)


def test_subword_pieces_spell_rare_lower_case_words() -> None:
    from models.data.text import encode_text

    words = [["explorer", "explorer", "painter", "painters", "singer", "singers", "walker", "walkers", "what", "what"]]
    vocab = Vocab.build(words, min_freq=2, unk_shapes=True, subword_types=2)
    assert vocab.has_pieces and "##s" in vocab.stoi and "##er" in vocab.stoi and "walk" in vocab.stoi
    assert "painters" not in vocab.stoi, "a word below min_freq is not a token of its own"
    assert vocab.decode(vocab.spell("explorers")) == ["explorer", "##s"], "longest start, then the continuation"
    # "walker" is below min_freq: the longest start piece is "walke" (in 2 words), greedy even where "walk" reads
    # better.
    assert vocab.decode(vocab.spell("walkers")) == ["walke", "##rs"]
    assert vocab.spell("zebra") is None and vocab.spell("ex1") is None and vocab.spell("exp") is None
    # Lower-case unknown words are spelt; a capitalised one keeps its shape; one without pieces falls back to it.
    ids = encode_text("What explorers Walkers zebra", vocab)
    assert vocab.decode(ids) == ["what", "explorer", "##s", "<unk:Capital>", "<unk:lower>"]
    assert Vocab(vocab.itos).has_pieces, "a vocabulary rebuilt from its tokens keeps its pieces"
    without_shapes = Vocab.build(words, min_freq=2, subword_types=2)
    assert without_shapes.decode(encode_text("Walkers zebra", without_shapes)) == ["walke", "##rs", "<unk>"]
    assert not Vocab.build(words, min_freq=2).has_pieces
    with pytest.raises(ValueError, match="subword_types must be >= 0"):
        Vocab.build(words, subword_types=-1)


@needs_shared
def test_subword_pieces_on_trec_spell_most_unseen_lower_case_test_words() -> None:
    shaped = build_data(_cfg("trec", min_freq=2, unk_shapes=True))
    spelt = build_data(_cfg("trec", min_freq=2, unk_shapes=True, subword_types=5))
    assert spelt.vocab is not None and spelt.vocab.has_pieces and spelt.vocab_size > shaped.vocab_size
    test_ids = np.concatenate([np.asarray(ids) for ids, _ in spelt.splits["test"]])
    shaped_ids = np.concatenate([np.asarray(ids) for ids, _ in shaped.splits["test"]])
    lower = 5  # <unk:lower>
    assert (test_ids == lower).sum() < 0.5 * (shaped_ids == lower).sum(), "most rare lower-case words are spelt"
    # Names keep their shape, except the few whose lower-case form is a word-start piece (a token of its own).
    assert (test_ids == 4).sum() >= 0.9 * (shaped_ids == 4).sum(), "names keep their shape"


@needs_shared
def test_unk_shapes_on_trec_gives_unknown_test_words_their_shape() -> None:
    plain = build_data(_cfg("trec", min_freq=2))
    shaped = build_data(_cfg("trec", min_freq=2, unk_shapes=True))
    assert shaped.vocab_size == plain.vocab_size + 5
    test_ids = np.concatenate([np.asarray(ids) for ids, _ in shaped.splits["test"]])
    assert not (test_ids == 1).any(), "every unknown word has a shape"
    assert all((test_ids == i).any() for i in (2, 3, 4, 5)), "numbers, acronyms, names and rare words all occur"
    with pytest.raises(ValueError, match=r"data.max_vocab=6: expected an integer >= 7"):
        build_data(_cfg("trec", unk_shapes=True, max_vocab=6))


def _copy(tmp_path: Path, name: str) -> Path:
    shutil.copytree(SHARED / name, tmp_path / name)
    return tmp_path


@needs_shared
def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    root = _copy(tmp_path, "sst2")
    path = root / "sst2" / "stsa.binary.dev"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[2] = "7 not a valid label\n"
    path.chmod(0o644)
    path.write_text("".join(lines), encoding="utf-8")
    cfg = {"name": "sst2", "root": str(root), "download": False, "verify_checksum": False}
    with pytest.raises(DataFormatError, match=r"stsa\.binary\.dev:3: malformed line"):
        build_data(cfg)
    b = build_data({**cfg, "skip_malformed": True})
    assert len(b.splits["val"]) == 871 and b.info["skipped_malformed"] == 1
    assert b.info["skipped_by_file"][str(path)] == 1


@needs_shared
def test_modified_copy_is_refused_by_checksum(tmp_path: Path) -> None:
    from models.data import ChecksumError

    root = _copy(tmp_path, "trec")
    path = root / "trec" / "TREC_10.label"
    path.chmod(0o644)
    path.write_bytes(path.read_bytes() + b"NUM:count How many ?\n")
    with pytest.raises(ChecksumError, match=r"TREC_10\.label.*refusing"):
        build_data({"name": "trec", "root": str(root), "download": False})
    assert len(build_data({"name": "trec", "root": str(root), "download": False,
                           "verify_checksum": False}).splits["test"]) == 501


def test_missing_file_names_path_and_remedy(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"sms_spam/sms\.tsv.*data\.root.*data\.download=true"):
        build_data({"name": "sms_spam", "root": str(tmp_path), "download": False})


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"name": "trec", "min_freq": 0}, r"data.min_freq=0: expected an integer >= 1"),
        ({"name": "sst2", "split_seed": 0}, r"unknown data config key\(s\) \['split_seed'\]"),
        ({"name": "sms_spam", "val_fraction": 0.5, "test_fraction": 0.5}, r"val_fraction \+ data.test_fraction"),
        ({"name": "trec", "root": 3}, r"data.root=3"),
        ({"name": "trec", "val_fraction": -0.1}, r"data.val_fraction=-0.1: expected a number in \[0, 1\) \(0: no "),
        ({"name": "trec", "val_fraction": 1.0}, r"data.val_fraction=1.0: expected a number in \[0, 1\)"),
        ({"name": "sms_spam", "test_fraction": 0.0}, r"data.test_fraction=0.0: expected a number strictly between"),
        ({"name": "trec", "subword_types": -1}, r"data.subword_types=-1: expected an integer >= 0"),
    ],
)
def test_bad_text_config(cfg: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_data(cfg)


@needs_shared
def test_an_undecodable_byte_names_file_and_line_and_can_be_skipped(tmp_path: Path) -> None:
    root = _copy(tmp_path, "sst2")
    path = root / "sst2" / "stsa.binary.train"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[41] = b"1 a caf\xe9 in latin-1, not utf-8\n"                  # line 42
    path.chmod(0o644)
    path.write_bytes(b"".join(lines))
    cfg = {"name": "sst2", "root": str(root), "download": False, "verify_checksum": False}
    with pytest.raises(DataFormatError, match=r"stsa\.binary\.train:42: malformed line \(byte b'\\xe9' at column 8 "
                                              r"is not valid utf-8\)"):
        build_data(cfg)
    b = build_data({**cfg, "skip_malformed": True})
    assert len(b.splits["train"]) == 6919 and b.info["skipped_by_file"][str(path)] == 1
