"""``data=text_files``: CSV, TSV and JSON Lines files in, the same bundle out; every bad row is one error naming the
file, the line and the key (or a skipped, counted row); the three formats train from the command line."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.text_rows import example_rows, write_csv, write_jsonl

from models.data import DataFormatError, build_data, resolve_config
from models.data.text import SEP, Vocab, encode_example

ROOT = Path(__file__).resolve().parents[2]


def cfg(train: Path | str, **keys: object) -> dict:
    return {"name": "text_files", "train": str(train), **keys}


def test_csv_tsv_and_jsonl_of_the_same_rows_give_the_same_bundle(tmp_path: Path) -> None:
    files = [write_csv(tmp_path / "d.csv", 60), write_csv(tmp_path / "d.tsv", 60, delimiter="\t"),
             write_jsonl(tmp_path / "d.jsonl", 60)]
    bundles = [build_data(cfg(f)) for f in files]
    first = bundles[0]
    assert first.class_names == ["neg", "pos"] and first.input_kind == "tokens"
    assert {s: len(d) for s, d in first.splits.items()} == {"train": 42, "val": 6, "test": 12}   # 0.1 / 0.2 stratified
    for other in bundles[1:]:
        assert other.vocab.itos == first.vocab.itos
        for split in ("train", "val", "test"):
            assert [s.tolist() for s in other.splits[split].sequences] == [s.tolist() for s in
                                                                           first.splits[split].sequences]
            assert other.splits[split].labels.tolist() == first.splits[split].labels.tolist()
    rows = example_rows(60)
    texts = {" ".join(first.vocab.decode(s.tolist())) for s in first.splits["test"].sequences}
    assert texts <= {t for t, _ in rows}, "test rows are rows of the file, encoded by the training vocabulary"


def test_fractions_are_seeded_and_stratified(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "d.csv", 100)
    a, b = build_data(cfg(train, split_seed=3)), build_data(cfg(train, split_seed=3))
    c = build_data(cfg(train, split_seed=4))
    assert [s.tolist() for s in a.splits["val"].sequences] == [s.tolist() for s in b.splits["val"].sequences]
    assert [s.tolist() for s in a.splits["val"].sequences] != [s.tolist() for s in c.splits["val"].sequences]
    assert np.bincount(a.splits["test"].labels).tolist() == [10, 10]
    none = build_data(cfg(train, val_fraction=0))
    assert not none.has_validation and len(none.splits["train"]) == 80


def test_separate_files_and_integer_labels_with_class_names(tmp_path: Path) -> None:
    for name, n, seed in (("train", 20, 0), ("val", 6, 1), ("test", 8, 2)):
        (tmp_path / f"{name}.csv").write_text("sentence,y\n" + "".join(
            f"\"{t}\",{int(y == 'pos')}\n" for t, y in example_rows(n, seed)))
    b = build_data(cfg(tmp_path / "train.csv", validation=str(tmp_path / "val.csv"), test=str(tmp_path / "test.csv"),
                       text_column="sentence", label_column="y", class_names=["negative", "positive"]))
    assert b.class_names == ["negative", "positive"]
    assert {s: len(d) for s, d in b.splits.items()} == {"train": 20, "val": 6, "test": 8}
    assert b.splits["test"].labels.tolist() == [int(y == "pos") for _, y in example_rows(8, 2)]
    plain = build_data(cfg(tmp_path / "train.csv", test=str(tmp_path / "test.csv"), text_column="sentence",
                           label_column="y"))
    assert plain.class_names == ["0", "1"] and set(plain.splits) == {"train", "val", "test"}


def test_a_pair_column_joins_the_texts_with_sep(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"premise": f"a {w} day", "hypothesis": f"it was {w}", "label": y}) + "\n"
                            for w, y in [("good", "yes"), ("bad", "no")] * 10))
    c = cfg(path, text_column="premise", text_pair_column="hypothesis", val_fraction=0, test_fraction=0.2)
    b = build_data(c)
    assert b.config["text_pair_column"] == "hypothesis"
    v = b.vocab
    assert v.itos[2] == SEP
    ids = b.splits["train"].sequences[0].tolist()
    assert v.decode(ids) == ["a", "good", "day", SEP, "it", "was", "good"]
    assert encode_example("a good day", "it was good", v, max_len=4) == ids[:4]
    assert encode_example("a good day", None, v) == ids[:3]


def test_encode_example_refuses_a_pair_without_sep_in_the_vocabulary() -> None:
    with pytest.raises(ValueError, match="<sep>"):
        encode_example("a", "b", Vocab.build([["a", "b"]]))


def test_skip_malformed_skips_counts_and_reports(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_csv(tmp_path / "d.csv", 40)
    with path.open("a") as f:
        f.write("only one field\n,pos\n\"fine\",\n")
    with caplog.at_level(logging.WARNING):
        b = build_data(cfg(path, skip_malformed=True))
    assert b.info["skipped_malformed"] == 3 and b.info["skipped_by_file"] == {str(path): 3}
    assert sum(len(d) for d in b.splits.values()) == 40
    assert f"{path}: skipped 3 malformed row(s)" in caplog.text


# (file name, content, the line and the key the message must name)
BAD_FILES = [
    ("missing.csv", "sentence,label\nhi,pos\n", ":1:", "data.text_column='text' is not a column"),
    ("empty_text.csv", "text,label\ngood,pos\n  ,neg\n", ":3:", "data.text_column='text' is empty"),
    ("fields.csv", "text,label\ngood,pos\ngood,pos,extra\n", ":3:", "data.format='csv'"),
    ("quoted.csv", 'text,label\ngood,pos\n"a ""quoted"" text, with a comma",neg\nbad\n', ":4:", "data.format='csv'"),
    ("label.tsv", "text\tlabel\ngood\t\n", ":2:", "data.label_column='label'"),
    ("json.jsonl", '{"text": "good", "label": "pos"}\n{"text": "bad", "label": \n', ":2:", "data.format='jsonl'"),
    ("key.jsonl", '{"text": "good", "label": "pos"}\n\n{"txt": "bad", "label": "neg"}\n', ":3:",
     "data.text_column='text' is missing"),
    ("float.jsonl", '{"text": "good", "label": 1.5}\n', ":1:", "data.label_column='label'"),
]


@pytest.mark.parametrize(("name", "content", "line", "key"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_bad_row_names_the_file_the_line_and_the_key(tmp_path: Path, name: str, content: str, line: str,
                                                       key: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataFormatError) as error:
        build_data(cfg(path, val_fraction=0, test=str(path)))
    assert f"{path}{line}" in str(error.value) and key in str(error.value)


def test_an_encoding_error_names_the_file_the_line_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ngood,pos\ncaf\xe9 bad,neg\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"latin\.csv:3: byte b'\\xe9' at column 4 is not valid "
                                              r"data\.encoding='utf-8'"):
        build_data(cfg(path, val_fraction=0, test=str(path)))
    b = build_data(cfg(path, val_fraction=0, test=str(path), encoding="latin-1"))
    assert "café" in b.vocab.itos


def test_a_label_seen_only_in_test_names_the_file_the_line_and_the_key(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", 10)
    test = tmp_path / "test.csv"
    test.write_text("text,label\ngood,pos\nso-so,neutral\n")
    with pytest.raises(DataFormatError, match=r"test\.csv:3: data\.label_column='label': label 'neutral' does not "
                                              r"occur in the training data"):
        build_data(cfg(train, test=str(test)))
    b = build_data(cfg(train, test=str(test), skip_malformed=True))
    assert len(b.splits["test"]) == 1 and b.info["skipped_labels"] == 1


@pytest.mark.parametrize(("keys", "message"), [
    ({"train": "x.csv", "test": "y.csv", "test_fraction": 0.2}, "data.test_fraction=0.2 and data.test='y.csv' both"),
    ({"train": "x.txt"}, "data.train='x.txt': cannot tell the format from '.txt'"),
    ({"train": "x.csv", "format": "xml"}, "data.format='xml'"),
    ({"train": "x.csv", "label_column": "text"}, "must differ"),
    ({"train": "x.csv", "class_names": ["a"]}, "data.class_names=['a']"),
    ({"train": "x.csv", "encoding": "klingon"}, "data.encoding='klingon'"),
])
def test_config_errors_name_the_key(keys: dict, message: str) -> None:
    with pytest.raises(ValueError) as error:
        resolve_config({"name": "text_files", **keys})
    assert message in str(error.value)


def test_a_missing_train_key_is_refused_when_the_data_is_built() -> None:
    resolve_config({"name": "text_files"})            # the shipped conf/data/text_files.yaml composes and checks
    with pytest.raises(ValueError, match=r"data\.train is not set"):
        build_data({"name": "text_files"})


def test_a_missing_file_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data.train='.*nope.csv': no such file"):
        build_data(cfg(tmp_path / "nope.csv"))


@pytest.mark.slow  # 3 train.py runs (16-30 s on 2 busy cores); fast: the same-bundle test + test_predict_sources
def test_csv_tsv_and_jsonl_train_from_the_command_line(tmp_path: Path) -> None:
    files = [write_csv(tmp_path / "d.csv", 96), write_csv(tmp_path / "d.tsv", 96, delimiter="\t"),
             write_jsonl(tmp_path / "d.jsonl", 96)]
    command = [sys.executable, str(ROOT / "train.py"), "-m", "data=text_files",
               "data.train=" + ",".join(str(f) for f in files), "data.batch_size=16", "model.embed_dim=8",
               "model.hidden_size=8", "trainer.max_epochs=2", "trainer.num_threads=1", "trainer.tensorboard=false",
               "trainer.infer_batches=1", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = [json.loads((tmp_path / "sweep" / str(i) / "results.json").read_text()) for i in range(3)]
    assert [r["data"] for r in results] == ["text_files"] * 3
    assert [r["config"]["data"]["train"] for r in results] == [str(f) for f in files]
    assert len({r["test_accuracy"] for r in results}) == 1, "the same rows in three formats: the same run"
    assert (tmp_path / "sweep" / "summary.md").is_file()


SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_trec = pytest.mark.skipif(not (SHARED / "trec").is_dir(),
                                reason=f"shared data folder {SHARED} is missing (see shared/README.md)")


def trec_as_csv(folder: Path) -> tuple[Path, Path]:
    """TREC-6's two files as ``label,text`` CSV files (the built-in reader parses them)."""
    from models.data.download import ensure_files
    from models.data.text import read_trec

    paths = ensure_files("trec", str(SHARED), download=False, verify=True)
    written = []
    for part in ("train", "test"):
        rows, _ = read_trec(paths[part])
        path = folder / f"trec_{part}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["question", "coarse"])
            writer.writerows((text, label) for label, text in rows)
        written.append(path)
    return written[0], written[1]


TREC_KEYS = {"text_column": "question", "label_column": "coarse", "val_fraction": 0.1, "split_seed": 0}


@needs_trec
def test_trec_through_text_files_is_the_built_in_loader(tmp_path: Path) -> None:
    train, test = trec_as_csv(tmp_path)
    generic = build_data(cfg(train, test=str(test), unk_shapes=True, **TREC_KEYS))
    built_in = build_data({"name": "trec", "root": str(SHARED), "download": False, "unk_shapes": True})
    assert generic.class_names == built_in.class_names
    assert generic.vocab.itos == built_in.vocab.itos
    for split in ("train", "val", "test"):
        assert generic.splits[split].labels.tolist() == built_in.splits[split].labels.tolist()
        assert [s.tolist() for s in generic.splits[split].sequences] == [s.tolist() for s in
                                                                         built_in.splits[split].sequences]


@needs_trec
@pytest.mark.slow
def test_trec_through_text_files_trains_to_the_same_accuracy(tmp_path: Path) -> None:
    from helpers.composing import compose_config

    from models.training.loop import train as train_run

    threads = torch.get_num_threads()
    train, test = trec_as_csv(tmp_path)
    common = ("model.embed_dim=16", "model.hidden_size=16", "trainer.max_epochs=2", "trainer.num_threads=1",
              "trainer.tensorboard=false", "trainer.infer_batches=1")
    try:
        generic = train_run(compose_config("data=text_files", f"data.train={train}", f"data.test={test}",
                                           *(f"data.{k}={v}" for k, v in TREC_KEYS.items()), *common),
                            tmp_path / "generic")
        built_in = train_run(compose_config("data=trec", f"data.root={SHARED}", "data.download=false", *common),
                             tmp_path / "built_in")
    finally:
        torch.set_num_threads(threads)
    assert generic["best_val_accuracy"] == built_in["best_val_accuracy"]
    assert generic["test_accuracy"] == built_in["test_accuracy"] > built_in["majority_test_accuracy"] + 0.1
