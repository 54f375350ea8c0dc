"""``benchmarks.vs_onnxruntime``'s per-process timing on a tiny row: the block and ONNX Runtime each in its own
spawned worker, outputs equal, ratios positive and finite; a worker's exception reaches the parent with its
traceback, a dead worker is reported, and every worker has exited once the pool closes. Skipped without
onnxruntime. (``nn.*``'s worker is left out: each worker's start imports torch, seconds of CPU on a shared machine.)"""

import math
from pathlib import Path

import pytest
from helpers.optional import optional_import

_, needs_onnx = optional_import("onnx", "the comparison needs onnx (pip install -e '.[onnx]')")
_, needs_onnxruntime = optional_import("onnxruntime", "the comparison needs onnxruntime (pip install -e '.[onnx]')")
pytestmark = [needs_onnx, needs_onnxruntime]
from benchmarks import vs_onnxruntime as vs  # noqa: E402
from benchmarks.process_timing import WorkerError, WorkerPool  # noqa: E402


def test_tiny_row_in_worker_processes(tmp_path: Path) -> None:
    with WorkerPool() as pool:
        row = vs.run_row(pool, tmp_path, "LSTM", 1, 4, 8, False, threads=1, budget_s=0.0, with_nn=False,
                         min_time=0.001)
        block, ort = pool.get("block", 1), pool.get("ort", 1)
        with pytest.raises(WorkerError, match=r"(?s)block worker .* raised:\nTraceback.*KeyError: 'tensors'"):
            block.call("load", vs.block_runner, {"cell": "LSTM", "hidden": 8})
        with pytest.raises(WorkerError, match="nothing loaded"):  # still serving after the error
            block.call("run", 1)
        ort.process.kill()
        ort.process.join()
        with pytest.raises(WorkerError, match=r"ort worker .* died"):
            ort.call("run", 1)
        processes = [worker.process for worker in pool.workers.values()]
    assert len(processes) == 2 and not any(p.is_alive() for p in processes)
    assert row["outputs_equal"] and row["max_abs_diff"] < vs.TOLERANCE
    assert row["rounds"] >= 3 and row["clock"] == "process_cpu" and isinstance(row["kernel"], bool)
    for key in ("block_ms", "ort_ms", "block_over_ort", "ratio_min", "ratio_max", "best_block_over_best_ort"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert "| LSTM | 4 | 8 | 1 | no | 1 |" in vs.markdown([row])


def test_a_turn_times_its_calls_after_the_untimed_warmup() -> None:
    from benchmarks.process_timing import _run

    calls = []
    wall, cpu = _run(lambda: calls.append(1), 3, 2)
    assert len(calls) == 5 and wall >= 0.0 and cpu >= 0.0
    _run(lambda: calls.append(1), 4)
    assert len(calls) == 9, "no warm-up unless asked"


def test_each_turn_warms_up_for_warmup_s_before_its_timed_calls() -> None:
    """A turn runs ``warmup_s`` worth of untimed calls (at least one), then ``min_time`` worth of timed ones: the
    calls right after an idle spell (slow on a virtual machine) are not timed. Fake workers, 10 ms a call."""
    from benchmarks.process_timing import interleaved

    class Fake:
        def __init__(self) -> None:
            self.runs: list = []

        def call(self, op: str, number: int, warmup: int = 0) -> tuple:
            self.runs.append((number, warmup))
            return 0.01 * number, 0.01 * number

    workers = {"a": Fake(), "b": Fake()}
    samples = interleaved(workers, False, 0.0, min_rounds=3, min_time=0.05, settle_s=0.0, warmup_s=0.05)
    for worker in workers.values():
        assert worker.runs[:2] == [(1, 0), (1, 0)]  # the first-call warm-up, then the one call that sizes the turns
        assert worker.runs[2:] == [(5, 5)] * 3
    assert all(s == pytest.approx([0.01] * 3) for s in samples.values())
    short = Fake()
    interleaved({"c": short}, False, 0.0, min_rounds=1, min_time=0.05, settle_s=0.0, warmup_s=0.0)
    assert short.runs[2:] == [(5, 1)], "at least one untimed call"
