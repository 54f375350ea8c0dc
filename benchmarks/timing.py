"""In-process interleaved timing for ``benchmarks.run``: ``benchmarks/harness.py``'s rounds, with
``torch.utils.benchmark``'s ``timer`` as the wall clock (``perf_counter`` after synchronising CUDA).
``Timer.timeit`` itself is not used: it runs two extra warm-up calls per sample, tripling the cost of
multi-second steps."""

from typing import Callable, Dict

import torch
from torch.utils.benchmark.utils.timer import timer as sync_timer

from .harness import Series, in_process
from .harness import interleaved as harness_interleaved

__all__ = ["Series", "interleaved"]


def interleaved(
    items: Dict[str, Callable[[], None]], threads: int, min_time: float, budget_s: float, min_rounds: int,
    max_rounds: int, log: Callable[[str], None],
) -> Dict[str, Series]:
    """Warm each callable up once and pick a per-sample call count reaching ``min_time``; then run interleaved
    rounds (rotating order) until ``budget_s`` is spent, at least ``min_rounds`` and at most ``max_rounds``, with
    ``threads`` intra-op threads. Returns ``{key: Series}`` (wall clock)."""
    runners = {key: in_process(fn, setup=lambda: torch.set_num_threads(threads), wall_clock=sync_timer)
               for key, fn in items.items()}
    return harness_interleaved(runners, min_time=min_time, budget_s=budget_s, min_rounds=min_rounds,
                               max_rounds=max_rounds, on_round=lambda r, s: log(f"  round {r}: {s:.1f}s"))
