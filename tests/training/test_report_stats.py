"""The report's and the study's statistics on groups where a wrong statistic shows (issue 37): three seeds with
values whose mean, median and population std all differ, and Holm's adjustment where ``m * p`` passes 1."""

import json
import math
from pathlib import Path

import pytest

from models.training.report import load_results, summarize, write_report
from models.training.study.stats import holm, mean_std, paired_t_test

# mean 0.68333, median 0.6, sample std 0.23629, population std 0.19293: each wrong statistic gives another number
ACCURACIES = (0.5, 0.6, 0.95)
MEAN, SAMPLE_STD = 0.6833333333333333, 0.2362907813126304


def write_run(folder: Path, hidden: int, seed: int, accuracy: float, speed: float) -> None:
    folder.mkdir(parents=True)
    config = {"model": {"name": "bilstm", "hidden_size": hidden}, "data": {"name": "synthetic"}, "seed": seed}
    row = {"data": "synthetic-ends_sum", "model": "bilstm", "cell": "lstm", "merge_mode": "concat", "pooling": "last",
           "seed": seed, "num_parameters": 100 * hidden, "test_accuracy": accuracy, "train_tokens_per_s": speed,
           "infer_tokens_per_s": 2 * speed, "config": config}
    (folder / "results.json").write_text(json.dumps(row))


def test_the_reports_mean_and_std_over_three_seeds(tmp_path: Path) -> None:
    for seed, accuracy in enumerate(ACCURACIES):
        write_run(tmp_path / f"h8-s{seed}", 8, seed, accuracy, speed=1000.0 * (1 + seed ** 2))   # 1000, 2000, 5000
        write_run(tmp_path / f"h12-s{seed}", 12, seed, 0.9, speed=1000.0)
    keys, summary = summarize(load_results(tmp_path)[0])
    assert keys == ["model.hidden_size"]
    small, large = summary
    assert (small["seeds"], small["runs"]) == (3, 3)
    assert small["test_accuracy"] == pytest.approx(MEAN, rel=1e-12)
    assert small["test_accuracy_std"] == pytest.approx(SAMPLE_STD, rel=1e-12)
    assert small["train_tokens_per_s"] == pytest.approx(8000 / 3, rel=1e-12)
    assert small["infer_tokens_per_s"] == pytest.approx(16000 / 3, rel=1e-12)
    assert large["test_accuracy"] == pytest.approx(0.9) and large["test_accuracy_std"] == pytest.approx(0.0, abs=1e-12)
    write_report(tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "| 8 | 3 | 3 | 800 | 68.3 +- 23.6 | 2,667 +- 2,082 | 5,333 +- 4,163 |" in summary


def test_the_studys_mean_and_sample_std_over_three_seeds() -> None:
    stat = mean_std(ACCURACIES)
    assert stat == pytest.approx({"mean": MEAN, "std": SAMPLE_STD, "n": 3}, rel=1e-12)
    # the paired differences' statistics are the same statistics
    diffs = paired_t_test(ACCURACIES, [0.0, 0.0, 0.0])
    assert diffs["mean_diff"] == pytest.approx(MEAN) and diffs["std_diff"] == pytest.approx(SAMPLE_STD)
    assert diffs["t"] == pytest.approx(MEAN / (SAMPLE_STD / math.sqrt(3)), rel=1e-12)


@pytest.mark.parametrize(("p_values", "expected"), [
    ([0.5, 0.6, 0.9], [1.0, 1.0, 1.0]),                          # 3 * 0.5, 2 * 0.6, 0.9 -> capped, then monotone
    ([0.3, 0.01, 0.45, None], [0.6, 0.03, 0.6, None]),            # 3 * 0.01, 2 * 0.3, then 0.45 < 0.6 running max
    ([0.04, 0.2, 0.6, 0.7], [0.16, 0.6, 1.0, 1.0]),
    ([1.0], [1.0]),
])
def test_holm_adjusted_p_values_are_monotone_and_never_above_one(p_values: list, expected: list) -> None:
    adjusted = holm(p_values)
    # None where the p-value is None, the rest approximately (pytest >= 9.2's approx refuses None)
    assert [a is None for a in adjusted] == [e is None for e in expected]
    assert [a for a in adjusted if a is not None] == pytest.approx([e for e in expected if e is not None],
                                                                   rel=1e-12)
    assert all(a is None or p <= a <= 1.0 for p, a in zip(p_values, adjusted, strict=True))
