"""benchmarks/harness.py: the one timing loop, its tables and writer, and the results page drawn from the files."""

import json
from pathlib import Path
from typing import List

import pytest

from benchmarks import harness, results_page


def test_rounds_rotate_and_turns_are_sized_from_the_last_first_call() -> None:
    """Two fake runners (10 ms and 40 ms a call): two first calls each, then turns of ceil(min_time / once) calls
    after the asked untimed warm-up, in an order that rotates by one each round."""
    seen: List[tuple] = []

    def runner(name: str, seconds: float) -> harness.Runner:
        def run(number: int, warmup: int, index: int) -> tuple:
            seen.append((name, number, warmup, index))
            return seconds * number, seconds * number / 2
        return run

    series = harness.interleaved({"a": runner("a", 0.01), "b": runner("b", 0.04)}, clock="cpu", min_time=0.05,
                                 first_calls=2, turn_warmup_s=0.02, min_rounds=3)
    assert seen[:4] == [("a", 1, 0, 0), ("a", 1, 0, 1), ("b", 1, 0, 0), ("b", 1, 0, 1)]
    # cpu clock: 5 ms a call for a, 20 ms for b -> 10 and 3 calls a turn, warm-ups of 4 and 1 calls
    assert seen[4:] == [("a", 10, 4, 0), ("b", 3, 1, 0), ("b", 3, 1, 1), ("a", 10, 4, 1), ("a", 10, 4, 2),
                        ("b", 3, 1, 2)]
    assert series["a"].samples == pytest.approx([0.005] * 3) and series["a"].wall == pytest.approx([0.01] * 3)
    assert series["b"].median == pytest.approx(0.02) and series["b"].number == 3
    with pytest.raises(ValueError, match="clock"):
        harness.interleaved({"a": runner("a", 0.01)}, clock="gpu")


def test_in_process_runner_runs_warmup_untimed_then_number_calls_with_the_index() -> None:
    calls: List[int] = []
    wall, cpu = harness.in_process(calls.append, indexed=True)(3, 2, 7)
    assert calls == [7] * 5 and wall >= 0.0 and cpu >= 0.0


def test_grid_table_and_atomic_writer(tmp_path: Path) -> None:
    cases = list(harness.grid(cell=["LSTM", "GRU"], B=[1, 16]))
    assert cases[1] == {"cell": "LSTM", "B": 16} and len(cases) == 4
    lines = harness.table([("cell", lambda r: r["cell"]), ("B", lambda r: r["B"])], cases[:1], "lr")
    assert lines == ["| cell | B |", "|---|---:|", "| LSTM | 1 |"]
    harness.write_results(tmp_path / "r" / "x.json", {"a": 1}, tmp_path / "r" / "x.md", "# x\n")
    assert json.loads((tmp_path / "r" / "x.json").read_text()) == {"a": 1}
    assert (tmp_path / "r" / "x.md").read_text() == "# x\n"
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["x.json", "x.md"]  # no partial file left


def test_results_page_draws_every_result_file_with_its_machine(tmp_path: Path) -> None:
    source = results_page.RESULTS / "latency-avx512.json"
    (tmp_path / source.name).write_text(source.read_text())
    text = results_page.page(tmp_path)
    document = json.loads(source.read_text())
    assert f"## {document['machine']['cpu']}" in text
    assert f"commit {document['machine']['commit']}" in text and "| variant | threads | p50 ms |" in text
