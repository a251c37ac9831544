"""Paired comparisons across seeds: exact Wilcoxon p-values, the t-test's degenerate cases, and differences of
accuracies rounded to whole test examples before anything is ranked."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats as scipy_stats

from fpsim.report import stats
from fpsim.report.stats import paired_comparison, paired_t_p, wilcoxon_signed_rank_p

N_TEST = 360


def brute_force_wilcoxon_p(d) -> Fraction:
    """Two-sided signed-rank p by listing all 2^m sign assignments of the non-zero |d| (mean ranks for ties)."""
    magnitudes = [abs(x) for x in d if x != 0]
    ranks = [Fraction(sum(y < x for y in magnitudes) + sum(y <= x for y in magnitudes) + 1, 2) for x in magnitudes]
    centre = sum(ranks) / 2
    observed = abs(sum(r for r, x in zip(ranks, (x for x in d if x != 0)) if x > 0) - centre)
    assignments = list(itertools.product((0, 1), repeat=len(ranks)))
    extreme = sum(abs(sum(r for r, s in zip(ranks, signs) if s) - centre) >= observed for signs in assignments)
    return Fraction(extreme, len(assignments))


@pytest.mark.parametrize("seed", range(12))
def test_wilcoxon_is_exact_with_ties_and_zeros(seed):
    rng = np.random.default_rng(seed)
    d = rng.integers(-3, 4, size=int(rng.integers(2, 13)))  # few values: many ties and zeros
    assert wilcoxon_signed_rank_p(d) == pytest.approx(float(brute_force_wilcoxon_p(d)), rel=1e-12)


def test_wilcoxon_agrees_with_scipys_exact_test_without_ties_or_zeros():
    rng = np.random.default_rng(1)
    for m in (3, 7, 15, 25):
        d = rng.permutation(np.arange(1, m + 1)) * rng.choice([-1, 1], m) + rng.uniform(-0.3, 0.3, m)
        assert wilcoxon_signed_rank_p(d) == pytest.approx(scipy_stats.wilcoxon(d, method="exact").pvalue, rel=1e-9)


@pytest.mark.parametrize("d, p", [([1, 1, -1, -1, 0, 0, 0], 1.0), ([0, 0, 3, 0], 1.0), ([0, 0, 0], 1.0),
                                  ([1, 2, 3, 4], 2 / 16), ([1, 1, 1, 1, 1, 0], 2 / 32)])
def test_wilcoxon_degenerate_cases(d, p):
    assert wilcoxon_signed_rank_p(d) == p


def test_wilcoxon_normal_approximation_is_close_to_the_exact_value(monkeypatch):
    d = np.random.default_rng(2).integers(-5, 8, 60)
    exact = wilcoxon_signed_rank_p(d)
    monkeypatch.setattr(stats, "WILCOXON_EXACT_MAX", 30)
    approx = wilcoxon_signed_rank_p(d)
    assert approx != exact and approx == pytest.approx(exact, abs=0.01)


def test_t_test_p_and_its_degenerate_cases():
    d = np.array([2.0, -1.0, 3.0, 0.0, 4.0])
    t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    assert paired_t_p(d) == pytest.approx(2 * scipy_stats.t.sf(abs(t), d.size - 1), rel=1e-12)
    assert math.isnan(paired_t_p([3, 3, 3]))  # zero spread: no t statistic
    assert paired_t_p([0, 0, 0]) == 1.0


def accuracies(counts):
    return [c / N_TEST for c in counts]


def test_accuracies_are_compared_in_whole_test_examples():
    """Differences of one example each way, [+1, +1, -1, -1, 0, 0]: in floats they differ in the last bits."""
    base = [286, 320, 301, 319, 322, 340]  # the +1s come out larger in floats than the -1s
    other = [c + s for c, s in zip(base, (1, 1, -1, -1, 0, 0))]
    a, b = accuracies(other), accuracies(base)
    raw = np.array(a) - np.array(b)
    assert len(set(np.abs(raw[raw != 0]))) > 1, "the floats must show the rounding noise this test is about"
    assert paired_comparison(a, b)["wilcoxon_p"] < 1.0, "ranked as floats, the noise looks like a difference"
    exact = paired_comparison(a, b, resolution=1 / N_TEST)
    counts = paired_comparison(other, base)
    assert exact["wilcoxon_p"] == counts["wilcoxon_p"] == 1.0
    assert exact["t_test_p"] == counts["t_test_p"] == 1.0
    assert (exact["a_better"], exact["b_better"], exact["ties"]) == (2, 2, 2)
    assert exact["mean_difference"] == 0.0 and exact["high"] == pytest.approx(counts["high"] / N_TEST)


def test_equal_non_zero_differences_have_no_t_p_and_a_zero_width_interval():
    base = [301, 317, 333, 349]
    result = paired_comparison(accuracies([c + 1 for c in base]), accuracies(base), resolution=1 / N_TEST)
    assert math.isnan(result["t_test_p"])
    assert result["wilcoxon_p"] == 2 / 16
    assert result["low"] == result["mean_difference"] == result["high"] == pytest.approx(1 / N_TEST, rel=1e-15)


def test_all_zero_differences_give_p_one():
    result = paired_comparison(accuracies([300, 310]), accuracies([300, 310]), resolution=1 / N_TEST)
    assert result["t_test_p"] == result["wilcoxon_p"] == 1.0 and result["ties"] == 2


@pytest.mark.parametrize("resolution, message", [(1 / 100, "not whole multiples"), (0.0, "positive"),
                                                 (math.inf, "positive"), (True, "positive")])
def test_a_resolution_that_does_not_fit_is_refused(resolution, message):
    with pytest.raises(ValueError, match=message):
        paired_comparison(accuracies([300, 310, 320]), accuracies([301, 309, 320]), resolution=resolution)
