"""``benchmarks.vs_tensorflow`` without TensorFlow: the shared helpers, the per-round ratios and their median over
rounds, the markdown tables, the missing-TF-python error, and the torch worker mode on a tiny spec."""

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from benchmarks import vs_tensorflow as vs
from benchmarks.configs import Config
from benchmarks.tf_keras_worker import case_key, draw_lengths, measure_all, parse_spec

ROOT = Path(__file__).resolve().parents[2]
TINY = Config("LSTM", 2, 4, 3, 5, 1, merge_modes=("sum",))


def fake_round(tf_scale: float, blocks_scale: float) -> Dict[str, Any]:
    """One round of a TINY run: fused 1 s (infer) / 2 s (train), blocks and TF proportional to it."""
    fused = {"infer": 1.0, "train": 2.0}
    torch_times = {case_key("fused", False, k): fused[k] for k in fused}
    tf_times = {}
    for lengths, extra in ((False, 1.0), (True, 1.5)):  # lengths cost 1.5x on both sides
        for kind, base in fused.items():
            torch_times[case_key("sum", lengths, kind)] = base * blocks_scale * extra
            tf_times[case_key("sum", lengths, kind)] = base * tf_scale * extra
    return {"tf": {"times": tf_times}, "torch": {"times": torch_times}}


ROUNDS: List[Dict[str, Any]] = [fake_round(2.0, 0.8), fake_round(4.0, 1.2), fake_round(2.5, 1.0)]


def test_draw_lengths_are_seeded_in_range_with_one_full_row() -> None:
    lengths = draw_lengths(64, 128, seed=0)
    assert lengths == draw_lengths(64, 128, seed=0) and lengths != draw_lengths(64, 128, seed=1)
    assert len(lengths) == 64 and min(lengths) >= 64 and max(lengths) == 128


def test_parse_spec_fills_defaults_and_names_missing_fields() -> None:
    spec = parse_spec('{"cell": "GRU", "batch": 2, "seq_len": 4, "input_size": 3, "hidden": 5, "num_layers": 1}')
    assert spec["merge_modes"] == ["sum", "concat"] and spec["lengths"] == [False, True] and spec["threads"] == 2
    with pytest.raises(ValueError, match="hidden"):
        parse_spec('{"cell": "GRU", "batch": 2, "seq_len": 4, "input_size": 3, "num_layers": 1}')


def test_measure_all_warms_up_then_interleaves_repeats_and_takes_medians() -> None:
    calls: List[str] = []

    def make(key: str, seconds: float) -> Any:
        def fn() -> None:
            calls.append(key)
            time.sleep(seconds)
        return fn

    out = measure_all({"a": make("a", 0.002), "b": make("b", 0.02)}, repeats=3, min_time=0.01, warmup=2)
    a, b = out["a"], out["b"]
    assert b["number"] == 1 and 2 <= a["number"] <= 5
    assert len(a["samples"]) == 3 and a["median"] == sorted(a["samples"])[1]
    assert 0.002 <= a["median"] < 0.01 and 0.02 <= b["median"] < 0.05
    n = a["number"]
    warm, timed = calls[:4], calls[4:]
    assert warm == ["a", "a", "b", "b"]
    assert timed == ["a"] * n + ["b"] + ["b"] + ["a"] * n + ["a"] * n + ["b"]  # order rotates: ab | ba | ab


def test_round_ratios_and_median_over_rounds() -> None:
    first = vs.round_ratios(ROUNDS[0]["tf"]["times"], ROUNDS[0]["torch"]["times"])
    assert first["sum|full|train"] == pytest.approx({"blocks_vs_tf": 0.4, "tf_vs_fused": 2.0, "blocks_vs_fused": 0.8})
    assert first["sum|lengths|infer"]["blocks_vs_fused"] == pytest.approx(1.2)  # reference is always full length
    assert first["sum|lengths|infer"]["tf_lengths_cost"] == pytest.approx(1.5)
    assert "tf_lengths_cost" not in first["sum|full|infer"]

    summary = vs.aggregate([vs.round_ratios(r["tf"]["times"], r["torch"]["times"]) for r in ROUNDS])
    headline = summary["sum|full|infer"]["blocks_vs_tf"]  # rounds: 0.8/2, 1.2/4, 1.0/2.5
    assert headline == pytest.approx({"median": 0.4, "min": 0.3, "max": 0.4, "n": 3})
    assert summary["sum|full|train"]["tf_vs_fused"] == pytest.approx({"median": 2.5, "min": 2.0, "max": 4.0, "n": 3})


def test_summarize_config_keeps_raw_rounds_and_median_times() -> None:
    block = vs.summarize_config(TINY, ROUNDS)
    assert block["rounds"] is ROUNDS and block["config"]["name"] == "LSTM B=2 T=4 in=3 H=5 L=1"
    assert block["median_s"]["tf"]["sum|full|train"] == pytest.approx(5.0)  # 4, 8, 5
    assert block["median_s"]["torch"]["fused|full|infer"] == pytest.approx(1.0)


def test_markdown_has_one_row_per_case_with_median_and_range() -> None:
    payload = {"machine": {"summary": "fake CPU"}, "versions": {"tensorflow": "9.9", "keras": "3.x"}, "rounds": 3,
               "repeats": 3, "min_time": 0.1, "configs": [vs.summarize_config(TINY, ROUNDS)]}
    text = vs.markdown(payload)
    assert "TensorFlow 9.9, Keras 3.x" in text and "fake CPU" in text
    assert ("| B=2 T=4 in=3 H=5 L=1 | LSTM | sum | no | 0.40 (0.30-0.40) | 0.40 (0.30-0.40) | 2.50 (2.00-4.00) | "
            "2.50 (2.00-4.00) | 1.00 (0.80-1.20) | 1.00 (0.80-1.20) |") in text
    assert "| B=2 T=4 in=3 H=5 L=1 | LSTM | sum | 1.50 | 1.50 | 1.50 | 1.50 |" in text  # cost of lengths
    assert "| B=2 T=4 in=3 H=5 L=1 | LSTM | sum | yes | 1500.0 | 3000.0 | 3750.0 | 7500.0 | 1000.0 | 2000.0 |" in text


def test_missing_tf_python_exits_with_how_to_create_the_venv(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        vs.main(["--quick", "--tf-python", str(tmp_path / "no-such-python"), "--out", str(tmp_path / "unused")])
    message = str(info.value)
    assert "no-such-python" in message and vs.VENV_HINT in message and "--tf-python" in message
    assert not list(tmp_path.iterdir())


def test_torch_worker_prints_json_with_every_case() -> None:
    spec = {"cell": "GRU", "batch": 3, "seq_len": 6, "input_size": 4, "hidden": 5, "num_layers": 2, "threads": 1,
            "repeats": 2, "min_time": 0.0, "warmup": 1}
    command = [sys.executable, "-m", "benchmarks.vs_tensorflow", "--worker", "torch", "--spec", json.dumps(spec)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    blocks = {case_key(m, n, k) for m in ("sum", "concat") for n in (False, True) for k in ("infer", "train")}
    expected = {"fused|full|infer", "fused|full|train"} | blocks | {vs.ATEN + key for key in blocks}
    assert set(out["times"]) == expected
    assert all(t > 0 for t in out["times"].values())
    assert all(len(s) == 2 for s in out["samples"].values())
    assert out["lengths"] == draw_lengths(3, 6, 0) and out["threads"]["intra_op"] == 1
    assert "torch: GRU sum|lengths|train" in result.stderr
