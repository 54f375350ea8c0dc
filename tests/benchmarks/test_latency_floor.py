"""The latency benchmark's floors: the bytes a one-row request must read, and the read-rate probe."""

from pathlib import Path

import pytest

from benchmarks.latency import read_bandwidth, request_bytes_floor


def test_a_one_step_request_reads_every_weight_once_at_the_model_rate() -> None:
    # 3 GB of weights at 2 GB/s: 1.5 s; no further step reads W_hh again.
    assert request_bytes_floor(1, [1e9, 1e9], [5e8, 5e8], model_rate=2.0, step_rate=1.0) == pytest.approx(1.5)


def test_each_further_step_reads_every_direction_w_hh_again_at_the_step_rate() -> None:
    # 1.5 s once, then 2 more steps x 1 GB of W_hh at 4 GB/s: 0.5 s.
    assert request_bytes_floor(3, [1e9, 1e9], [5e8, 5e8], model_rate=2.0, step_rate=4.0) == pytest.approx(2.0)


def test_an_empty_request_still_reads_the_weights_once() -> None:
    assert request_bytes_floor(0, [2e9], [0.0], model_rate=1.0, step_rate=1.0) == pytest.approx(2.0)


def test_the_read_rate_probe_gives_a_positive_finite_rate() -> None:
    rate = read_bandwidth(64 * 1024, repeats=1, total=8 << 20)
    assert 0.1 < rate < 1e5   # GB/s: any real core, cached or not


def test_request_lengths_come_from_trec_and_are_named_by_the_file_not_the_folder(tmp_path: Path) -> None:
    from benchmarks.latency import trec_lengths

    (tmp_path / "trec").mkdir()
    (tmp_path / "trec" / "train_5500.label").write_text(
        "DESC:manner How did serfdom develop in and then leave Russia ?\nHUM:ind Who was Galileo ?\n",
        encoding="latin-1")
    lengths, source = trec_lengths(tmp_path)
    assert lengths == [10, 4]  # the project tokenizer: words and "?"
    assert source == "TREC train_5500.label"  # result files and RESULTS.md never name this machine's folders


def test_without_trec_the_lengths_are_a_named_stand_in(tmp_path: Path) -> None:
    from benchmarks.latency import trec_lengths

    lengths, source = trec_lengths(tmp_path)
    assert source == "stand-in log-normal"
    assert len(lengths) == 5000 and 3 <= min(lengths) and max(lengths) <= 37
