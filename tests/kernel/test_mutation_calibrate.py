"""Function-level tests of models/blocks/cpu_kernel/calibrate.py written for mutation testing (issue 37): the exact
cache key and identity, the nearest-cell rule's distance and ties, the adaptive timing's order and stopping rule,
``measure``'s rows and summary, the ``calibrate`` mode that measures once, and the command line. Nothing here
times anything: clocks are fakes that only the fake steps move, and ``measure`` is stubbed where a test needs
one (``tests/kernel/test_cpu_kernel_calibrate.py`` does the same)."""

import hashlib
import json
import re
import threading
import time
import types
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import torch
from helpers.kernel_aids import isolate_calibrations

from models.blocks import cpu_kernel
from models.blocks.cpu_kernel import build, calibrate


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private cache folder for calibrations, nothing read or pinned before or after (as the calibrate tests)."""
    yield from isolate_calibrations(tmp_path, monkeypatch)


def grid(ratio: float, capability: str = "avx2", threads: int = 1) -> Dict[str, Any]:
    """A made-up calibration of the whole grid, every cell at ``ratio``."""
    rows = [{"cell": cell, "batch": b, "hidden": h, "lengths": lengths, "training": training, "ratio": ratio}
            for cell in calibrate.CELLS for b in calibrate.BATCHES for h in calibrate.HIDDENS
            for lengths in (False, True) for training in (False, True)]
    return {"format": calibrate.FORMAT, "identity": calibrate.identity(threads, capability), "rows": rows}


def rows_at(*cells: Tuple[int, int, float]) -> calibrate.Calibration:
    """A calibration of one-thread LSTM inference without lengths measured only at ``(batch, hidden, ratio)``."""
    return calibrate.Calibration({"format": calibrate.FORMAT, "rows": [
        {"cell": "LSTM", "batch": b, "hidden": h, "lengths": False, "training": False, "ratio": r}
        for b, h, r in cells]})


# -- the nearest measured cell ----------------------------------------------------------------------------------
def test_a_batch_or_hidden_of_one_is_log2_zero() -> None:
    # B = 1 (H = 1) sits on the B = 1 (H = 1) row, not halfway to the B = 2 one
    assert rows_at((1, 64, 0.5), (2, 64, 2.0)).kernel_wins("LSTM", 1, 64, False, False) is True
    assert rows_at((64, 1, 0.5), (64, 2, 2.0)).kernel_wins("LSTM", 64, 1, False, False) is True


def test_the_distance_adds_both_axes_on_a_log_scale() -> None:
    # (1, 1) lies 1 from (2, 1) and 3 from (1, 8): the sum decides, not the difference
    assert rows_at((1, 8, 0.5), (2, 1, 2.0)).kernel_wins("LSTM", 1, 1, False, False) is False
    # H = 4 lies on the (1, 4) row, 2 doublings from the (1, 1) one
    assert rows_at((1, 4, 0.5), (1, 1, 2.0)).kernel_wins("LSTM", 1, 4, False, False) is True


def test_ties_go_to_the_smaller_batch_then_the_smaller_hidden() -> None:
    # (2, 2) is 2 from both (1, 4) and (4, 1): the smaller batch
    assert rows_at((4, 1, 2.0), (1, 4, 0.5)).kernel_wins("LSTM", 2, 2, False, False) is True
    # (2, 2) is 1 from both (2, 1) and (2, 4), same batch: the smaller hidden, whatever their ratios
    assert rows_at((2, 4, 0.5), (2, 1, 2.0)).kernel_wins("LSTM", 2, 2, False, False) is False


def test_each_shape_is_looked_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Serving asks the policy at every call: the nearest cell is found once per shape, the answer kept (at most
    4096 of them)."""
    table = rows_at((16, 64, 0.5), (64, 64, 2.0))
    looked_up: List[Tuple[Any, ...]] = []
    nearest = table._nearest_answer
    monkeypatch.setattr(table, "_nearest_answer", lambda *key: looked_up.append(key) or nearest(*key))
    assert [table.kernel_wins("LSTM", b, 64, False, False) for b in (16, 64, 16, 64)] == [True, False, True, False]
    assert looked_up == [("LSTM", 16, 64, False, False), ("LSTM", 64, 64, False, False)]
    for b in range(1, 4100):
        table.kernel_wins("LSTM", b, 64, False, False)
    assert len(table._answers) <= 4096


def test_the_threshold_is_inclusive() -> None:
    """The kernel needs a ratio of at most 0.95: ``nn.*`` itself takes near ties."""
    assert rows_at((16, 64, 0.95)).kernel_wins("LSTM", 16, 64, False, False) is True
    assert rows_at((16, 64, 0.951)).kernel_wins("LSTM", 16, 64, False, False) is False


# -- where a calibration lives and what it is keyed by ----------------------------------------------------------
def test_the_identity_names_everything_the_measurement_depends_on() -> None:
    assert calibrate.identity(2, "avx512") == {
        "cpu": calibrate._cpu_model(), "capability": "avx512", "threads": 2, "torch": str(torch.__version__),
        "kernel_source": calibrate._kernel_source(), "reference_isa": calibrate.reference_isa()}


def test_the_reference_isa_is_atens_level_and_the_caps_that_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in calibrate.REFERENCE_ISA_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert calibrate.reference_isa() == {"aten": "AVX512"}
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "")  # set but empty: no cap
    assert calibrate.reference_isa() == {"aten": "AVX512", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def test_the_kernel_source_is_the_first_16_hex_digits_of_the_sources_sha256() -> None:
    digest = hashlib.sha256()
    for source in build.SOURCES:
        digest.update(source.read_bytes())
    assert calibrate._kernel_source() == digest.hexdigest()[:16]


def test_the_cache_file_is_named_by_the_sorted_identitys_hash(isolated: Path) -> None:
    ident = calibrate.identity(1, "avx2")
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    assert calibrate.cache_path(1, "avx2") == isolated / f"calibration-{key}.json"
    assert calibrate.cache_path(1, "avx2", isolated / "elsewhere") == isolated / "elsewhere" / f"calibration-{key}.json"


def test_save_writes_indented_json_where_asked_and_the_process_uses_it_at_once(isolated: Path) -> None:
    data = grid(0.5, "avx512", 2)
    folder = isolated / "elsewhere"
    folder.mkdir()
    assert calibrate.save(data, folder) is data
    path = calibrate.cache_path(2, "avx512", folder)
    assert path.read_text() == json.dumps(data, indent=1) + "\n"
    assert not calibrate.cache_path(2, "avx512").exists()  # only in the folder asked for
    # used from now on without reading the file (removed here): under the key of its threads and capability
    path.unlink()
    found = calibrate.cached(2, "avx512")
    assert found is not None and found.data is data
    assert calibrate.cached(2, "avx2") is None


def test_each_thread_count_and_capability_is_read_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(calibrate.POLICY_ENV, "calibrated")
    calibrate.save(grid(0.5, "avx2", 1))
    calibrate.forget()
    assert calibrate.cached(1, "avx2") is not None
    assert calibrate.cached(2, "avx2") is None
    assert calibrate.cached(1, "avx512") is None


# -- the policy mode --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [None, "", "  ", " Calibrated "])
def test_the_mode_defaults_to_calibrated(value: Optional[str], monkeypatch: pytest.MonkeyPatch) -> None:
    if value is None:
        monkeypatch.delenv(calibrate.POLICY_ENV, raising=False)
    else:
        monkeypatch.setenv(calibrate.POLICY_ENV, value)
    assert calibrate.policy_mode() == "calibrated"


def test_an_unknown_mode_lists_the_known_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(calibrate.POLICY_ENV, "fast")
    with pytest.raises(ValueError) as raised:
        calibrate.policy_mode()
    assert str(raised.value) == "BIRNN_ZOO_CPU_POLICY='fast'; expected one of calibrated, table, calibrate"


def measured_once(monkeypatch: pytest.MonkeyPatch) -> List[Tuple[int, str]]:
    """``calibrate.measure`` replaced by a recorder returning a grid at 2.0 (never times anything)."""
    calls: List[Tuple[int, str]] = []

    def fake(threads: int, capability: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        calls.append((threads, capability))
        return grid(2.0, capability, threads)
    monkeypatch.setattr(calibrate, "measure", fake)
    return calls


def test_the_calibrate_mode_measures_a_missing_calibration_once_and_keeps_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A real bug this found: ``cached`` held the module's lock while ``save`` took it again (a plain ``Lock``):
    the first question under ``BIRNN_ZOO_CPU_POLICY=calibrate`` hung for ever. Asked on a thread here, so a
    hang fails the test instead of the suite."""
    calls = measured_once(monkeypatch)
    monkeypatch.setenv(calibrate.POLICY_ENV, "calibrate")
    # a lock of the module's kind, private to this test: one left held by a hung thread cannot hang the rest
    original = calibrate._lock
    monkeypatch.setattr(calibrate, "_lock", threading.Lock() if type(original) is type(threading.Lock())
                        else threading.RLock())
    answers: List[Optional[calibrate.Calibration]] = []
    asking = threading.Thread(target=lambda: answers.append(calibrate.cached(2, "avx512")), daemon=True)
    asking.start()
    asking.join(timeout=60)
    hung = asking.is_alive()
    calibrate._lock = original  # the isolated fixture's forget() takes it before monkeypatch undoes
    assert not hung, "cached() under the calibrate mode never returned (a lock taken twice)"
    (found,) = answers
    assert calls == [(2, "avx512")]
    assert isinstance(found, calibrate.Calibration) and found.data == grid(2.0, "avx512", 2)
    assert json.loads(calibrate.cache_path(2, "avx512").read_text()) == found.data
    assert calibrate.cached(2, "avx512") is found and calls == [(2, "avx512")]  # once a process
    calibrate.forget()
    assert calibrate.cached(2, "avx512").data == found.data and calls == [(2, "avx512")]  # then from the cache


@pytest.mark.parametrize("mode", ["calibrated", "table"])
def test_the_other_modes_never_measure(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = measured_once(monkeypatch)
    monkeypatch.setenv(calibrate.POLICY_ENV, mode)
    assert calibrate.cached(1, "avx2") is None
    assert calls == []


def test_the_calibrate_mode_uses_an_existing_calibration_without_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = measured_once(monkeypatch)
    calibrate.save(grid(0.5))
    calibrate.forget()
    monkeypatch.setenv(calibrate.POLICY_ENV, "calibrate")
    assert calibrate.cached(1, "avx2").data["rows"][0]["ratio"] == 0.5
    assert calls == []


def test_a_damaged_calibration_is_reported_at_the_policys_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_read`` warns with ``stacklevel=3``: past ``_read`` and ``cached``, at whoever asked ``cached``."""
    if "mutants" in Path(calibrate.__file__).parts:
        pytest.skip("under mutmut each function is wrapped in a trampoline: two frames more")
    monkeypatch.setenv(calibrate.POLICY_ENV, "calibrated")
    calibrate.cache_path(1, "avx2").write_text("{}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert calibrate.cached(1, "avx2") is None
    assert [Path(w.filename).name for w in caught] == [Path(__file__).name]
    assert caught[0].category is RuntimeWarning


@pytest.mark.parametrize("text, kind", [("[]", "list"), ("3", "int"), ("null", "NoneType"), ('"rows"', "str")])
def test_a_calibration_file_of_valid_json_but_no_object_is_ignored_with_a_warning(
        text: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real bug this found: ``Calibration([])`` raised ``AttributeError``, which ``_read`` does not catch, so
    such a file broke every block's forward instead of giving way to the table."""
    monkeypatch.setenv(calibrate.POLICY_ENV, "calibrated")
    calibrate.cache_path(1, "avx2").write_text(text)
    with pytest.warns(RuntimeWarning, match=f"not a calibration of format 1: a {kind}, not an object"):
        assert calibrate.cached(1, "avx2") is None
    with pytest.raises(ValueError, match="not a calibration of format 1"):
        calibrate.pin({"source": "calibration", "threads": 1, "capability": "avx2", "calibration": []})


# -- pinning and recording --------------------------------------------------------------------------------------
def test_a_pinned_record_gives_its_threads_and_capability() -> None:
    calibrate.pin({"format": 1, "source": "table", "threads": 2, "capability": "avx512", "calibration": None})
    assert calibrate.active(1, "avx2") == (None, 2, "avx512")


def test_a_record_names_the_thread_count_and_capability_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(calibrate.POLICY_ENV, "table")
    assert calibrate.record(3, "avx512") == {"format": calibrate.FORMAT, "source": "table", "threads": 3,
                                             "capability": "avx512", "calibration": None}
    monkeypatch.setattr(cpu_kernel, "capability", lambda: None)  # no kernel here: the record says avx2
    assert calibrate.record(1)["capability"] == "avx2"


# -- the CPU's name ---------------------------------------------------------------------------------------------
def read_from(path: Path, opened: List[Tuple[str, Dict[str, Any]]]) -> Callable[..., Any]:
    """An ``open`` that records what it was asked to open and opens ``path`` with the same options."""
    def fake_open(file: str, *args: Any, **kwargs: Any) -> Any:
        opened.append((file, kwargs))
        return open(path, *args, **kwargs)
    return fake_open


def test_the_cpu_model_is_the_model_name_line_of_proc_cpuinfo(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    # a byte that is not UTF-8 (replaced, not fatal) and a colon inside the name (only the first one splits)
    cpuinfo.write_bytes(b"processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Caf\xe9 CPU: 2 GHz  \n"
                        b"model name\t: second\n")
    opened: List[Tuple[str, Dict[str, Any]]] = []
    monkeypatch.setattr(calibrate, "open", read_from(cpuinfo, opened), raising=False)
    assert calibrate._cpu_model() == "Caf\ufffd CPU: 2 GHz"
    assert [file for file, _ in opened] == ["/proc/cpuinfo"]
    assert opened[0][1]["encoding"].lower() == "utf-8"  # not the locale's


def test_without_proc_cpuinfo_the_platform_names_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*args: Any, **kwargs: Any) -> Any:
        raise FileNotFoundError("/proc/cpuinfo")
    monkeypatch.setattr(calibrate, "open", missing, raising=False)
    for processor, machine, expected in [("Xeon", "x86_64", "Xeon"), ("", "x86_64", "x86_64"),
                                         ("", "", "unknown CPU")]:
        monkeypatch.setattr(calibrate.platform, "processor", lambda p=processor: p)
        monkeypatch.setattr(calibrate.platform, "machine", lambda m=machine: m)
        assert calibrate._cpu_model() == expected


# -- timing one cell --------------------------------------------------------------------------------------------
class ScriptedClock:
    """A clock that only the fake steps move, starting at ``start``; ``log`` the order the steps ran in."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.log: List[str] = []

    def step(self, name: str, seconds: float) -> Callable[[], None]:
        def run() -> None:
            self.now += seconds
            self.log.append(name)
        return run

    def __call__(self) -> float:
        return self.now


def test_pairs_alternate_which_path_runs_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(calibrate, "CELL_BUDGET_S", 1e9)
    clock = ScriptedClock()
    got, calls = calibrate.ratio(clock.step("k", 20.0), clock.step("r", 20.0), clock)  # a tie: every pair
    assert (got, calls) == (1.0, 2 + 2 * calibrate.MAX_PAIRS)
    assert "".join(clock.log) == "kr" + "krrk" * (calibrate.MAX_PAIRS // 2)


@pytest.mark.parametrize("kernel_s, pairs", [(19.0, 8), (21.0, 8), (18.0, 3), (22.0, 3)])
def test_a_ratio_exactly_clear_of_one_is_not_clear(kernel_s: float, pairs: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopping needs every ratio strictly beyond 1 -/+ CLEAR: 19/20 and 21/20 are exactly on the edge."""
    assert 19.0 / 20.0 == 1 - calibrate.CLEAR and 21.0 / 20.0 == 1 + calibrate.CLEAR
    monkeypatch.setattr(calibrate, "CELL_BUDGET_S", 1e9)
    clock = ScriptedClock()
    got, calls = calibrate.ratio(clock.step("k", kernel_s), clock.step("r", 20.0), clock)
    assert got == kernel_s / 20.0
    assert calls == 2 + 2 * pairs


def test_the_budget_is_time_spent_since_the_cell_began_and_ends_it_only_when_exceeded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # first calls 40 s, then 40 s a pair: 160 s after 3 pairs, 200 after 4; a budget of exactly 160 allows a 4th
    monkeypatch.setattr(calibrate, "CELL_BUDGET_S", 160.0)
    clock = ScriptedClock(start=1000.0)
    _got, calls = calibrate.ratio(clock.step("k", 20.0), clock.step("r", 20.0), clock)
    assert calls == 2 + 2 * 4


def test_a_clock_too_coarse_to_see_a_call_takes_the_largest_samples() -> None:
    clock = ScriptedClock()
    got, calls = calibrate.ratio(clock.step("k", 0.0), clock.step("r", 0.0), clock)
    assert got == 0.0  # 0 / the 1e-9 floor: clearly below 1, decided after MIN_PAIRS
    assert calls == 2 + 2 * calibrate.MIN_PAIRS * calibrate.MAX_NUMBER


def test_the_clock_is_cpu_time_on_one_thread_and_wall_time_on_more() -> None:
    assert calibrate._clock(1) is time.process_time
    assert calibrate._clock(2) is time.perf_counter


# -- measuring the grid -----------------------------------------------------------------------------------------
def fake_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """``calibrate.time`` with scripted counters: perf_counter 100 -> 103.46 s, process_time 50 -> 51.23 s, and
    the epoch as the UTC time."""
    perf, cpu = iter([100.0, 103.46]), iter([50.0, 51.23])
    monkeypatch.setattr(calibrate, "time", types.SimpleNamespace(
        perf_counter=lambda: next(perf), process_time=lambda: next(cpu), strftime=time.strftime,
        gmtime=lambda: time.gmtime(0)))


def test_measure_times_each_cell_of_the_grid_once_in_order_and_summarizes(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_time(monkeypatch)
    clock = ScriptedClock()
    asked: List[Tuple[str, int, int, bool, bool]] = []

    def case(cell: str, batch: int, hidden: int, lengths: bool, training: bool) -> Callable[[], None]:
        asked.append((cell, batch, hidden, lengths, training))
        # the kernel's path (forced on) 1.23456789x PyTorch's, both clearly slower than CLEAR: 3 pairs
        def run() -> None:
            clock.step("", 1.23456789 if cpu_kernel._switch.forced else 1.0)()
        return run
    lines: List[str] = []

    def real_case(*cell: Any) -> None:
        raise AssertionError("the given case was not used")
    monkeypatch.setattr(calibrate, "_case", real_case)
    data = calibrate.measure(2, "avx512", progress=lines.append, case=case, clock=clock)
    cells = [(cell, b, h, lengths, training) for cell in calibrate.CELLS for training in (False, True)
             for lengths in calibrate.LENGTHS for b in calibrate.BATCHES for h in calibrate.HIDDENS]
    assert calibrate.LENGTHS == (False,)  # batches with lengths take the kernel unmeasured
    assert asked == cells  # a loss at the largest inference cell: nothing past it is measured
    assert data["rows"] == [{"cell": c, "batch": b, "hidden": h, "lengths": lengths, "training": training,
                             "ratio": 1.2346, "calls": 8} for c, b, h, lengths, training in cells]
    assert lines == [f"{c} B={b} H={h} lengths={lengths} training={training}: 1.23x (8 calls)"
                     for c, b, h, lengths, training in cells]
    assert data == {"format": calibrate.FORMAT, "identity": calibrate.identity(2, "avx512"), "steps": calibrate.STEPS,
                    "measured_at": "1970-01-01T00:00:00Z", "seconds": 3.5, "cpu_seconds": 1.2, "calls": 24 * 8,
                    "rows": data["rows"]}
    assert torch.get_num_threads() == 1  # put back


@pytest.mark.parametrize("corner,extended", [(0.6875, False), (0.75, False), (0.78125, True), (0.875, True),
                                             (0.90625, False), (1.25, False)])
def test_inference_past_the_grid_is_measured_only_after_a_narrow_win_at_its_largest_cell(
        corner: float, extended: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # EXTEND < ratio <= THRESHOLD, both set to binary fractions here: the scripted times give them exactly
    monkeypatch.setattr(calibrate, "EXTEND", 0.75)
    monkeypatch.setattr(calibrate, "THRESHOLD", 0.875)
    clock = ScriptedClock()
    asked: List[Tuple[str, int, int, bool, bool]] = []
    largest = (max(calibrate.BATCHES), max(calibrate.HIDDENS))

    def case(cell: str, batch: int, hidden: int, lengths: bool, training: bool) -> Callable[[], None]:
        asked.append((cell, batch, hidden, lengths, training))
        slower = corner if (batch, hidden) == largest else 0.5  # only the largest cell's ratio decides

        def run() -> None:
            clock.step("", slower if cpu_kernel._switch.forced else 1.0)()
        return run
    data = calibrate.measure(1, "avx2", case=case, clock=clock)
    past = [a for a in asked if (a[1], a[2]) in calibrate.LARGER]
    assert past == ([(cell, b, h, False, False) for cell in calibrate.CELLS for b, h in calibrate.LARGER]
                    if extended else [])  # inference only: a training step past the grid is never measured
    assert calibrate.LARGER == ((64, 512), (256, 256))
    assert len(data["rows"]) == 24 + len(past)
    assert [row for row in data["rows"] if row.get("past")] == [
        {"cell": cell, "batch": b, "hidden": h, "lengths": False, "training": False, "ratio": 0.5, "calls": 8,
         "past": True} for cell, b, h, _, _ in past]


def test_a_row_past_the_grid_counts_only_as_a_clear_loss() -> None:
    def calibration(past_ratio: float) -> calibrate.Calibration:
        return calibrate.Calibration({"format": calibrate.FORMAT, "rows": [
            {"cell": "LSTM", "batch": 64, "hidden": 256, "lengths": False, "training": False, "ratio": 0.9},
            {"cell": "LSTM", "batch": 64, "hidden": 512, "lengths": False, "training": False, "ratio": past_ratio,
             "past": True}]})
    assert calibration(1.4).kernel_wins("LSTM", 64, 512, False, False) is False   # a clear loss stands
    assert calibration(1.4).kernel_wins("LSTM", 64, 1024, False, False) is False  # and reaches one doubling on
    assert calibration(1.05).kernel_wins("LSTM", 64, 512, False, False) is True   # 1 + CLEAR: a tie, ignored
    assert calibration(0.5).kernel_wins("LSTM", 64, 512, False, False) is True    # the grid's answer
    assert calibration(1.05).kernel_wins("LSTM", 64, 1024, False, False) is None  # beyond the grid's reach: table


def test_measure_uses_the_clock_of_its_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: List[int] = []
    clock = ScriptedClock()

    def chosen(threads: int) -> Callable[[], float]:
        asked.append(threads)
        return clock
    monkeypatch.setattr(calibrate, "_clock", chosen)
    calibrate.measure(1, "avx2", case=lambda *cell: clock.step("", 1.0))
    assert asked == [1]


def test_measure_refuses_without_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_kernel, "available", lambda: False)
    with pytest.raises(RuntimeError) as raised:
        calibrate.measure(1, "avx2", case=lambda *cell: (lambda: None), clock=ScriptedClock())
    assert str(raised.value) == "the CPU kernel is not available here: nothing to calibrate"


class Spy:
    """What ``_case``'s block saw: its constructor's arguments, and per call the input, lengths, mode and whether
    gradients flowed; ``outputs`` what each call returned (gradients retained)."""

    def __init__(self) -> None:
        self.made: List[Tuple[type, tuple]] = []
        self.calls: List[Dict[str, Any]] = []
        self.outputs: List[torch.Tensor] = []

    def wrap(self, base: type) -> type:
        spy = self

        class Wrapped(base):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any) -> None:
                super().__init__(*args)
                spy.made.append((base, args))
                spy.block = self

            def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> Any:
                spy.calls.append({"x": x, "lengths": None if lengths is None else lengths.clone(),
                                  "training": self.training, "grad": torch.is_grad_enabled()})
                result = super().forward(x, lengths=lengths)
                if result[0].requires_grad:
                    result[0].retain_grad()
                spy.outputs.append(result[0])
                return result
        return Wrapped


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_a_grid_cell_is_the_seeded_one_layer_block_on_a_seeded_input(cell: str, lengths: bool, training: bool,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from models.blocks import modules

    spy = Spy()
    monkeypatch.setattr(modules, "BiLSTM", spy.wrap(modules.BiLSTM))
    monkeypatch.setattr(modules, "BiGRU", spy.wrap(modules.BiGRU))
    batch, hidden = 16, 8
    step = calibrate._case(cell, batch, hidden, lengths, training)
    step()
    # the same draws, in the same order, from seed 0
    torch.manual_seed(0)
    base = {"LSTM": modules.BiLSTM, "GRU": modules.BiGRU}[cell].__bases__[0]
    reference = base(hidden, hidden, 1)
    x = torch.randn(calibrate.STEPS, batch, hidden)
    expected_lengths = torch.randint(calibrate.STEPS // 2, calibrate.STEPS + 1, (batch,)) if lengths else None
    if expected_lengths is not None:
        expected_lengths[0] = calibrate.STEPS
        assert int(expected_lengths.max()) == calibrate.STEPS and int(expected_lengths.min()) < calibrate.STEPS - 1
    assert spy.made == [(base, (hidden, hidden, 1))]
    for (name, got), want in zip(spy.block.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(got, want), name
    (call,) = spy.calls
    assert torch.equal(call["x"], x)
    assert call["lengths"] is None if not lengths else torch.equal(call["lengths"], expected_lengths)
    assert call["training"] is training and call["grad"] is training
    assert call["x"].requires_grad is training
    if training:  # the step's loss is the output's sum: a gradient of ones reaches the output, and x
        assert torch.equal(spy.outputs[0].grad, torch.ones_like(spy.outputs[0]))
        assert call["x"].grad is not None


# -- the command line -------------------------------------------------------------------------------------------
def normalized(text: str) -> str:
    return " ".join(text.split())


def test_the_help_describes_the_command_and_its_options(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as raised:
        calibrate.main(["--help"])
    assert raised.value.code == 0
    out = normalized(capsys.readouterr().out)
    # the first paragraph of the module's docstring, then the options, each help text whole
    assert re.search(re.escape(normalized(calibrate.__doc__.split("\n\n")[0])) + " options:", out)
    assert re.search(r"\] thread counts to calibrate \(default: torch's current, \[1\]\) --show ", out)
    assert out.endswith(" --show print the cached calibrations; measure nothing")


def test_show_prints_each_thread_counts_calibration_or_the_table(capsys: pytest.CaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_kernel, "capability", lambda: "avx512")
    data = grid(0.5, "avx512", 2)
    data["rows"] = data["rows"][:2]
    calibrate.save(data)
    calibrate.main(["--show", "--threads", "1", "2"])
    assert capsys.readouterr().out == (
        "1 thread(s): none (the fixed table)\n"
        f"2 thread(s): {calibrate.cache_path(2, 'avx512')}\n"
        "  LSTM B=1   H=64  lengths=False training=False kernel/torch 0.50x\n"
        "  LSTM B=1   H=64  lengths=False training=True  kernel/torch 0.50x\n")


def test_the_default_thread_count_is_torchs(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_kernel, "capability", lambda: "avx2")
    calibrate.main(["--show"])
    assert capsys.readouterr().out == f"{torch.get_num_threads()} thread(s): none (the fixed table)\n"


def test_calibrating_measures_saves_and_reports(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_kernel, "capability", lambda: "avx512")
    monkeypatch.setattr(calibrate, "_cpu_model", lambda: "Test CPU")

    def fake_measure(threads: int, capability: str, progress: Callable[[str], None]) -> Dict[str, Any]:
        progress("one cell")
        data = grid(2.0, capability, threads)
        data["rows"][0]["ratio"] = data["rows"][1]["ratio"] = 0.95  # two cells on the kernel (<= 0.95, <= 1)
        data.update(seconds=3.5, cpu_seconds=1.2, calls=400)
        return data
    monkeypatch.setattr(calibrate, "measure", fake_measure)
    calibrate.main(["--threads", "2"])
    captured = capsys.readouterr()
    path = calibrate.cache_path(2, "avx512")
    assert captured.err == "calibrating avx512 on 2 thread(s) (Test CPU)\n  one cell\n"
    assert captured.out == (f"2 thread(s): 2/48 cells on the kernel, measured in 3.5 s (1.2 s of CPU time, 400 calls); "
                            f"written {path}\n")
    assert json.loads(path.read_text())["calls"] == 400


def test_the_command_refuses_without_a_kernel_or_with_no_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_kernel, "capability", lambda: None)
    with pytest.raises(SystemExit) as raised:
        calibrate.main(["--show"])
    assert raised.value.code == ("the CPU kernel is not available here (see models.blocks.cpu_kernel.available()): "
                                 "the blocks use PyTorch's kernels, nothing to calibrate")
    monkeypatch.setattr(cpu_kernel, "capability", lambda: "avx2")
    with pytest.raises(SystemExit) as raised:
        calibrate.main(["--show", "--threads", "1", "0"])
    assert raised.value.code == "--threads must be >= 1, got 0"
