"""Interleaved timing: every (variant, mode) is timed once per round, in a rotating order, and the
median over rounds is reported, so slow background load on a shared machine hits all variants alike.
Clocks are ``torch.utils.benchmark``'s ``timer`` (``perf_counter`` after synchronising CUDA). ``Timer.timeit``
itself is not used: it runs two extra warm-up calls per sample, tripling the cost of multi-second steps."""

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List

import torch
from torch.utils.benchmark.utils.timer import timer as sync_timer


@dataclass
class Series:
    """Per-call seconds of one timed callable over the rounds."""

    number: int
    samples: List[float] = field(default_factory=list)

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


def _sample(fn: Callable[[], None], number: int, threads: int) -> float:
    """Seconds per call of ``number`` back-to-back calls, with ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    start = sync_timer()
    for _ in range(number):
        fn()
    return (sync_timer() - start) / number


def interleaved(
    items: Dict[str, Callable[[], None]], threads: int, min_time: float, budget_s: float, min_rounds: int,
    max_rounds: int, log: Callable[[str], None],
) -> Dict[str, Series]:
    """Warm each callable up once and pick a per-sample call count reaching ``min_time``; then run interleaved
    rounds (rotating order) until ``budget_s`` is spent, at least ``min_rounds`` and at most ``max_rounds``.
    Returns ``{key: Series}``."""
    series: Dict[str, Series] = {}
    for key, fn in items.items():
        once = _sample(fn, 1, threads)
        series[key] = Series(number=max(1, math.ceil(min_time / max(once, 1e-6))))
    keys = list(items)
    started = time.perf_counter()
    r = 0
    while r < max_rounds and (r < min_rounds or time.perf_counter() - started < budget_s):
        start = time.perf_counter()
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            s = series[key]
            s.samples.append(_sample(items[key], s.number, threads))
        r += 1
        log(f"  round {r}: {time.perf_counter() - start:.1f}s")
    return series
