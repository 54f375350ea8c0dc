"""``models/training/study/stats.py`` against closed forms, sharp enough that mutation testing (issue 37) finds no
change a user would not notice: the incomplete beta function on both sides of its switch, the t tail for 1 to 4
degrees of freedom, every branch of the paired t-test and Holm's step-down. Pure Python, milliseconds."""

import math
import re
from typing import List, Optional

import pytest

from models.training.study.stats import betainc, holm, mean_std, paired_t_test, t_two_sided_p


def binomial_betainc(a: int, b: int, x: float) -> float:
    """``I_x(a, b)`` for integer ``a, b``: the chance of at least ``a`` successes in ``a + b - 1`` trials."""
    n = a + b - 1
    return math.fsum(math.comb(n, j) * x ** j * (1 - x) ** (n - j) for j in range(a, n + 1))


@pytest.mark.parametrize(("a", "b"), [(1, 1), (2, 1), (1, 3), (2, 5), (5, 2), (3, 3), (7, 4), (12, 9)])
@pytest.mark.parametrize("x", [0.01, 0.1, 0.3, 0.45, 0.5, 0.62, 0.8, 0.97])
def test_betainc_matches_the_binomial_sum_on_both_sides_of_its_switch(a: int, b: int, x: float) -> None:
    assert betainc(a, b, x) == pytest.approx(binomial_betainc(a, b, x), rel=1e-11, abs=1e-14)


def test_betainc_of_half_integer_parameters_is_the_arcsine_law() -> None:
    for x in (0.001, 0.2, 0.5, 0.77, 0.999):
        assert betainc(0.5, 0.5, x) == pytest.approx(2 / math.pi * math.asin(math.sqrt(x)), rel=1e-11)


def test_betainc_at_and_beyond_the_ends() -> None:
    assert betainc(2.0, 3.0, 0.0) == 0.0 and betainc(2.0, 3.0, 1.0) == 1.0
    for x in (-0.1, 1.5):
        with pytest.raises(ValueError, match=f"^x must lie in \\[0, 1\\], got {re.escape(repr(x))}$"):
            betainc(2.0, 3.0, x)


def t_tail(t: float, df: int) -> float:
    """Two-sided p of Student's t, closed forms for 1 to 4 degrees of freedom."""
    t = abs(t)
    if df == 1:
        return 1 - 2 / math.pi * math.atan(t)
    if df == 2:
        return 1 - t / math.sqrt(2 + t * t)
    if df == 3:
        u = t / math.sqrt(3)
        return 1 - 2 / math.pi * (math.atan(u) + u / (1 + u * u))
    return 1 - t * (t * t + 6) / (t * t + 4) ** 1.5


@pytest.mark.parametrize("df", [1, 2, 3, 4])
def test_the_t_tail_matches_its_closed_forms(df: int) -> None:
    for t in (0.05, 0.4, 1.0, 1.7, 3.2, -2.5, 12.0, 60.0):
        assert t_two_sided_p(t, df) == pytest.approx(t_tail(t, df), rel=1e-10, abs=1e-14)
    assert t_two_sided_p(0.0, df) == 1.0
    assert t_two_sided_p(math.inf, df) == 0.0 and t_two_sided_p(-math.inf, df) == 0.0



def test_the_t_tail_is_accurate_to_a_few_units_in_the_last_place() -> None:
    # The closed forms of 1 and 2 degrees of freedom written without cancellation (exact to about 2 ulp); the
    # continued fraction stops as soon as it has converged (more terms only add rounding, up to 3e-14 here).
    for t in (0.1, 0.5, 1.0, 2.0, 3.0, 10.0, 100.0):
        root = math.sqrt(2 + t * t)
        assert t_two_sided_p(t, 1) == pytest.approx(2 / math.pi * math.atan(1 / t), rel=4e-15, abs=0)
        assert t_two_sided_p(t, 2) == pytest.approx(2 / (root * (root + t)), rel=4e-15, abs=0)
    # mpmath at 40 digits: betainc(15, 1/2, 0, 30/34, regularized=True); starting the fraction on the side that
    # converges fast matters here (the other side's 1 - I gives 1e-13).
    assert t_two_sided_p(2.0, 30) == pytest.approx(0.0546250449629831, rel=2e-14, abs=0)

def test_the_t_tail_refuses_no_degrees_of_freedom() -> None:
    for df in (0, -2):
        with pytest.raises(ValueError, match=f"^df must be >= 1, got {df}$"):
            t_two_sided_p(1.0, df)


def test_mean_std_of_one_and_of_several_values() -> None:
    assert mean_std([3]) == {"mean": 3.0, "std": 0.0, "n": 1}
    assert mean_std((1, 2, 6)) == pytest.approx({"mean": 3.0, "std": math.sqrt(7), "n": 3}, rel=1e-15)
    assert isinstance(mean_std([1, 2])["mean"], float)
    assert mean_std([1.0, 3.0]) == pytest.approx({"mean": 2.0, "std": math.sqrt(2), "n": 2}, rel=1e-15)
    with pytest.raises(ValueError, match=r"^mean_std needs at least one value, got an empty sequence$"):
        mean_std([])


def test_the_paired_t_test_of_four_seeds() -> None:
    # differences 1, 2, 4, 9: mean 4, sample std sqrt(38/3), t = 4 / (std / 2), df 3
    a, b = [11.0, 22.0, 34.0, 49.0], [10.0, 20.0, 30.0, 40.0]
    std = math.sqrt(38 / 3)
    t = 4 / (std / 2)
    assert paired_t_test(a, b) == pytest.approx(
        {"mean_diff": 4.0, "std_diff": std, "n": 4, "t": t, "p": t_tail(t, 3)}, rel=1e-12)
    swapped = paired_t_test(b, a)
    assert swapped["t"] == pytest.approx(-t, rel=1e-12) and swapped["p"] == pytest.approx(t_tail(t, 3), rel=1e-12)


def test_the_paired_t_test_of_one_seed_has_no_t() -> None:
    assert paired_t_test([0.9], [0.7]) == pytest.approx({"mean_diff": 0.2, "std_diff": 0.0, "n": 1, "t": None,
                                                         "p": None})


@pytest.mark.parametrize(("a", "b", "t", "p"), [
    ([0.75, 0.5], [0.5, 0.25], math.inf, 0.0),       # every seed 0.25 better
    ([0.5, 0.25], [0.75, 0.5], -math.inf, 0.0),      # every seed 0.25 worse
    ([0.5, 0.25], [0.5, 0.25], 0.0, 1.0),            # no difference at all
])
def test_identical_differences(a: List[float], b: List[float], t: float, p: float) -> None:
    result = paired_t_test(a, b)
    assert (result["t"], result["p"], result["std_diff"], result["n"]) == (t, p, 0.0, 2)


def test_the_paired_t_test_refuses_what_is_not_pairs() -> None:
    with pytest.raises(ValueError, match=r"^paired_t_test needs equally long sequences \(one value per seed\), got 3 "
                                         r"and 2$"):
        paired_t_test([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match=r"^paired_t_test needs at least one pair, got none$"):
        paired_t_test([], [])


@pytest.mark.parametrize(("p_values", "expected"), [
    ([], []),
    ([None, None], [None, None]),
    ([0.2], [0.2]),
    ([0.01, 0.02, 0.03], [0.03, 0.04, 0.04]),        # 3 * 0.01, 2 * 0.02, then 0.03 < the running 0.04
    ([0.03, 0.02, 0.01], [0.04, 0.04, 0.03]),
    ([0.001, None, 0.3, 0.04], [0.003, None, 0.3, 0.08]),
    ([0.25, 0.25], [0.5, 0.5]),                      # ties
])
def test_holm_on_hand_worked_cases(p_values: List[Optional[float]], expected: List[Optional[float]]) -> None:
    adjusted = holm(p_values)
    # None where the p-value is None, the rest approximately (pytest >= 9.2's approx refuses None)
    assert [a is None for a in adjusted] == [e is None for e in expected]
    assert [a for a in adjusted if a is not None] == pytest.approx([e for e in expected if e is not None],
                                                                   rel=1e-12)
