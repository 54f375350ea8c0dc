"""The study's statistics: mean +- std over seeds, and paired comparisons of merge modes by seed.

Every number here comes from a handful of seeds (3 in ``experiment=study``), so the choice of test matters:

- ``paired_t_test``: the differences ``a[s] - b[s]`` of two merge modes trained with the same seed ``s`` (same
  synthetic data, same batch order) against zero, Student's t with ``n - 1`` degrees of freedom. Pairing removes
  what a seed does to every mode alike (which examples are hard, the data order).
- Why not a sign test or a sign-flip permutation test: with 3 seeds their smallest two-sided p-value is
  ``2 / 2**3 = 0.25``, so they can never flag a difference; the t-test can, at the price of assuming the
  per-seed differences are roughly normal.
- ``holm``: the 6 pairs of 4 modes are 6 tests; Holm's step-down correction keeps the chance of any false
  "differs" within one (data, cell) family at ``alpha``.

Pure Python (no SciPy): the t distribution's tail is the regularised incomplete beta function.
"""

import math
import statistics
from typing import Dict, List, Optional, Sequence


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    """``{"mean", "std", "n"}``: the sample standard deviation (``n - 1``), 0.0 for a single value."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std needs at least one value, got an empty sequence")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)`` for ``a, b > 0``, ``0 <= x <= 1``."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must lie in [0, 1], got {x!r}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """Two-sided p-value of Student's t statistic ``t`` with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df!r}")
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> Dict[str, Optional[float]]:
    """Paired t-test of ``a[i] - b[i]`` (same seed ``i``) against 0.

    Returns ``mean_diff``, ``std_diff`` (sample std of the differences), ``n``, ``t`` and two-sided ``p``;
    ``t``/``p`` are None with fewer than 2 pairs. Identical differences (std 0) give ``p = 0`` when their
    mean is not 0 (every seed agrees exactly) and ``p = 1`` when it is."""
    if len(a) != len(b):
        raise ValueError(f"paired_t_test needs equally long sequences (one value per seed), got {len(a)} and {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    if not diffs:
        raise ValueError("paired_t_test needs at least one pair, got none")
    summary = mean_std(diffs)
    result: Dict[str, Optional[float]] = {"mean_diff": summary["mean"], "std_diff": summary["std"],
                                          "n": len(diffs), "t": None, "p": None}
    if len(diffs) < 2:
        return result
    if summary["std"] == 0.0:
        result.update(t=math.copysign(math.inf, summary["mean"]) if summary["mean"] else 0.0,
                      p=0.0 if summary["mean"] else 1.0)
        return result
    t = summary["mean"] / (summary["std"] / math.sqrt(len(diffs)))
    result.update(t=t, p=t_two_sided_p(t, len(diffs) - 1))
    return result


def holm(p_values: Sequence[Optional[float]]) -> List[Optional[float]]:
    """Holm-Bonferroni adjusted p-values (same order; None stays None and is not counted)."""
    indexed = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m, adjusted, running = len(indexed), [None] * len(p_values), 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
