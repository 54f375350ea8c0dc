"""The one timing harness of every benchmark: interleaved rounds, a logger, and the JSON + Markdown writer.

Why interleaved: on a shared machine, background load comes in bursts. Every variant is timed once per round, in
a rotating order, and a benchmark reports medians (or per-round ratios) over rounds, so a burst hits every variant
alike instead of one. A *runner* times one variant: ``runner(number, warmup, index)`` runs ``warmup`` untimed
calls, then ``number`` timed ones, and returns their ``(wall seconds, process CPU seconds)``. It may run in this
process (``in_process``) or in a worker process (``benchmarks/process_timing.py``'s ``Worker.runner``). ``index``
is the round (``latency`` draws request ``index`` in round ``index``); other runners ignore it.

Clocks: ``"wall"`` (``time.perf_counter``; what a caller waits) or ``"cpu"`` (the process's CPU time: with one
thread, what the call itself cost, not counting the time other jobs held the core).

This module imports only the standard library: ``tf_keras_worker.py`` runs it in a TensorFlow environment without
torch.
"""

import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

Runner = Callable[[int, int, int], Tuple[float, float]]
CLOCKS = ("wall", "cpu")


def log(message: str, side: Optional[str] = None) -> None:
    """A timestamped progress line on stderr (stdout stays for results), e.g. ``[12:00:00] tf: message``."""
    prefix = f"{side}: " if side else ""
    print(f"[{time.strftime('%H:%M:%S')}] {prefix}{message}", file=sys.stderr, flush=True)


@dataclass
class Series:
    """Per-call seconds of one variant over the rounds, on both clocks; ``samples`` on the clock asked for."""

    number: int
    clock: str = "wall"
    wall: List[float] = field(default_factory=list)
    cpu: List[float] = field(default_factory=list)

    @property
    def samples(self) -> List[float]:
        return self.cpu if self.clock == "cpu" else self.wall

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        """Fastest round: the closest estimate of the time on an otherwise idle machine."""
        return min(self.samples)

    @property
    def spread(self) -> float:
        """(max - min) / median over the rounds: a rough noise indicator."""
        return (max(self.samples) - min(self.samples)) / self.median


def in_process(fn: Callable[..., Any], *, indexed: bool = False, setup: Optional[Callable[[], Any]] = None,
               wall_clock: Callable[[], float] = time.perf_counter) -> Runner:
    """A runner of ``fn()`` (``fn(index)`` when ``indexed``) in this process. ``setup`` runs before each turn
    (e.g. the thread count); ``wall_clock`` replaces ``perf_counter`` (``torch.utils.benchmark``'s timer
    synchronises CUDA)."""

    def run(number: int, warmup: int = 0, index: int = 0) -> Tuple[float, float]:
        if setup is not None:
            setup()
        for _ in range(warmup):
            fn(index) if indexed else fn()
        wall, cpu = wall_clock(), time.process_time()
        for _ in range(number):
            fn(index) if indexed else fn()
        return wall_clock() - wall, time.process_time() - cpu

    return run


def interleaved(runners: Mapping[str, Runner], *, clock: str = "wall", min_time: float = 0.05,
                first_calls: int = 1, number: Optional[int] = None, turn_warmup_s: Optional[float] = None,
                min_rounds: int = 3, max_rounds: Optional[int] = None, budget_s: float = 0.0, settle_s: float = 0.0,
                floor_s: float = 1e-6, on_round: Optional[Callable[[int, float], None]] = None
                ) -> Dict[str, Series]:
    """Time every runner in interleaved rounds (order rotating by one each round). Returns ``{key: Series}`` of
    seconds per call.

    Sizing, per runner: ``first_calls`` single calls (the first ones pay allocation, tracing, prepared weights),
    the last of them timed on ``clock``; a turn is then ``number`` calls, or as many as make ``min_time``
    seconds. ``turn_warmup_s``: each turn first runs that many seconds of untimed calls, at least one (None: no
    untimed calls; on a virtual machine the first calls after an idle spell run slowly). ``settle_s``: a pause
    before each turn (a thread pool that spins after its work parks first). Rounds: at least ``min_rounds``, then
    more while ``budget_s`` seconds have not passed, at most ``max_rounds`` (None: ``min_rounds``).
    ``on_round(round, seconds)`` after each round (progress)."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    which = CLOCKS.index(clock)
    series: Dict[str, Series] = {}
    warmups: Dict[str, int] = {}
    for key, run in runners.items():
        once = 0.0
        for i in range(max(1, first_calls)):
            once = run(1, 0, i)[which]
        once = max(once, floor_s)
        series[key] = Series(number or max(1, math.ceil(min_time / once)), clock)
        warmups[key] = 0 if turn_warmup_s is None else max(1, math.ceil(turn_warmup_s / once))
    keys = list(runners)
    last = min_rounds if max_rounds is None else max_rounds
    started = time.perf_counter()
    for r in range(last):
        if r >= min_rounds and time.perf_counter() - started > budget_s:
            break
        round_start = time.perf_counter()
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            if settle_s:
                time.sleep(settle_s)
            s = series[key]
            wall, cpu = runners[key](s.number, warmups[key], r)
            s.wall.append(wall / s.number)
            s.cpu.append(cpu / s.number)
        if on_round is not None:
            on_round(r + 1, time.perf_counter() - round_start)
    return series


def grid(**axes: Sequence[Any]) -> Iterator[Dict[str, Any]]:
    """A benchmark's cases: every combination of the axes, the last axis varying fastest, as dicts.
    ``grid(cell=["LSTM"], B=[1, 16])`` -> ``{"cell": "LSTM", "B": 1}``, ``{"cell": "LSTM", "B": 16}``."""
    names = list(axes)
    for values in itertools.product(*axes.values()):
        yield dict(zip(names, values, strict=True))


Column = Tuple[str, Callable[[Dict[str, Any]], Any]]


def number_column(header: str, key: str, digits: int = 2, bold: bool = False) -> Column:
    """A column showing ``row[key]`` with ``digits`` decimals (in bold where it is the table's headline)."""
    mark = "**" if bold else ""
    return header, lambda row: f"{mark}{row[key]:.{digits}f}{mark}"


def error_column(header: str, prefix: str) -> Column:
    """A column showing ``row[prefix + "_max_abs_error"] / row[prefix + "_mean_abs_error"]``."""
    return header, lambda row: f"{row[prefix + '_max_abs_error']:.1e} / {row[prefix + '_mean_abs_error']:.1e}"


def table(columns: Sequence[Column], rows: Sequence[Dict[str, Any]], align: str = "") -> List[str]:
    """A Markdown table: one ``(header, row -> cell text)`` per column. ``align``: one character a column, ``l``
    (default) or ``r``."""
    rule = ["---:" if (align[i:i + 1] == "r") else "---" for i in range(len(columns))]
    lines = ["| " + " | ".join(header for header, _ in columns) + " |", "|" + "|".join(rule) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(cell(row)) for _, cell in columns) + " |")
    return lines


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, fsynced, then renamed: a reader
    never sees half a file, and an interrupted write leaves the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=path.name + ".", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise


def write_results(json_path: Optional[Path], payload: Any, markdown_path: Optional[Path] = None,
                  markdown: Optional[str] = None, indent: int = 1) -> None:
    """The results of a run: ``payload`` as JSON at ``json_path`` and, when given, ``markdown`` at
    ``markdown_path`` (both written atomically)."""
    if json_path is not None:
        write_atomic(json_path, json.dumps(payload, indent=indent) + "\n")
    if markdown_path is not None and markdown is not None:
        write_atomic(markdown_path, markdown)
