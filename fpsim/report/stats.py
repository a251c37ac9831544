"""Uncertainty for multi-seed results: mean with a t confidence interval, and paired tests against a baseline.

With n seeds giving values x_i, the mean's 95% interval is mean +- t(0.975, n-1) * s / sqrt(n)
(s the sample standard deviation). Two policies run on the same seeds share the
initial weights and batch order of each seed, so their difference is tested
paired, on d_i = a_i - b_i: the t-test of mean(d) = 0 and, without the normality
assumption, the Wilcoxon signed-rank test, its p-value exact (the null
distribution counted over all 2^m sign assignments of the m non-zero d_i, for m
up to ``WILCOXON_EXACT_MAX``).

Accuracies over a test set of N examples are multiples of 1/N, but their float
differences are not: two differences of one example can differ in the last bits,
and a test would then rank rounding noise.  ``paired_comparison(a, b,
resolution=1 / N)`` rounds every difference to a whole number of examples first;
counts of correct examples (integers) are exact as they are.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from ..numerics.checks import is_finite_number

GRID_TOLERANCE = 1e-6
"""How far (in units of the resolution) a difference may lie from the grid before it is refused."""

WILCOXON_EXACT_MAX = 400
"""Up to this many non-zero differences the Wilcoxon p-value is exact (O(m^3) work); above, the normal
approximation (with the tie correction, zeros dropped) is used."""


def mean_ci(values, level: float = 0.95) -> dict:
    """Mean, sample standard deviation and the ``level`` t interval of the mean of ``values``."""
    x = np.asarray(values, dtype=float)
    n = x.size
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(x.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "std": math.nan, "low": math.nan, "high": math.nan}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "low": mean - half, "high": mean + half}


def paired_comparison(a, b, level: float = 0.95, resolution: float | None = None) -> dict:
    """Compare paired samples ``a`` and ``b`` (same seeds) through their differences d = a - b.

    ``resolution``: the grid the values lie on, e.g. 1/N for accuracies over N test
    examples.  Each difference is then rounded to k_i = round(d_i / resolution) whole
    steps (a difference more than ``GRID_TOLERANCE`` steps off the grid is an error)
    and both tests run on the k_i, so equal differences are equal exactly.  None
    (default): the differences are taken as computed, exact for integer counts.

    Returns the mean difference with its ``level`` t interval (``low``, ``high``), the
    p-values ``t_test_p`` (``paired_t_p``) and ``wilcoxon_p`` (``wilcoxon_signed_rank_p``),
    and how many pairs have a > b, a < b, a = b.  When all differences are zero both p-values
    are 1.0 (the data are exactly what no difference predicts); when all are equal and
    non-zero the t-test p is NaN (zero spread: no t statistic), and the interval has
    zero width.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError("paired_comparison needs two samples of the same size, at least 2")
    steps = _on_grid(a - b, resolution)
    d = steps * (resolution or 1.0)
    ci = mean_ci(d, level)
    return {"n": int(a.size), "mean_difference": ci["mean"], "low": ci["low"], "high": ci["high"],
            "t_test_p": paired_t_p(steps), "wilcoxon_p": wilcoxon_signed_rank_p(steps),
            "a_better": int(np.sum(d > 0)), "b_better": int(np.sum(d < 0)), "ties": int(np.sum(d == 0))}


def _on_grid(d: np.ndarray, resolution: float | None) -> np.ndarray:
    """``d`` in whole steps of ``resolution``: round(d / resolution); ``d`` itself when resolution is None."""
    if resolution is None:
        return d
    if not (is_finite_number(resolution) and resolution > 0):
        raise ValueError(f"resolution must be a positive finite number, got {resolution!r}")
    scaled = d / resolution
    steps = np.rint(scaled)
    off = float(np.max(np.abs(scaled - steps)))
    if not off <= GRID_TOLERANCE:
        raise ValueError(f"the differences are not whole multiples of resolution {resolution!r} "
                         f"(up to {off:.3g} of a step off)")
    return steps


def paired_t_p(d) -> float:
    """Two-sided p-value of the t-test of mean(d) = 0: t = mean(d) / (s / sqrt(n)), n - 1 degrees of freedom.

    1.0 when every d_i is 0; NaN when all d_i are equal and non-zero (s = 0, t undefined).
    """
    d = np.asarray(d, dtype=float)
    if np.all(d == 0):
        return 1.0
    if np.all(d == d[0]):
        return math.nan
    return float(stats.ttest_1samp(d, 0.0).pvalue)


def wilcoxon_signed_rank_p(d) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test of the differences ``d``.

    Zeros are dropped (Wilcoxon's "wilcox" method); the m others get the ranks r_i
    of |d_i| (ties: their mean rank), and T = sum of r_i over d_i > 0.  Under the
    null hypothesis each sign is + or - with probability 1/2, independently, so T
    is distributed as sum_i s_i r_i with s_i uniform on {0, 1}, symmetric about
    E = sum(r_i) / 2, and p = P(|T - E| >= |t - E|) for the observed t.  Exact (all
    2^m assignments counted) for m <= ``WILCOXON_EXACT_MAX``, else the normal
    approximation.  m = 0 (all zero) and m = 1 give p = 1.
    """
    d = np.asarray(d, dtype=float)
    nonzero = d[d != 0]
    if nonzero.size > WILCOXON_EXACT_MAX:
        return float(stats.wilcoxon(nonzero, zero_method="wilcox", correction=False, method="approx").pvalue)
    ranks2 = np.rint(2 * stats.rankdata(np.abs(nonzero))).astype(np.int64)  # mean ranks are halves: 2r is whole
    total = int(ranks2.sum())
    observed = int(ranks2[nonzero > 0].sum())
    counts = _subset_sum_counts(ranks2)
    values = np.arange(total + 1)
    extreme = np.abs(2 * values - total) >= abs(2 * observed - total)
    return min(1.0, float(counts[extreme].sum() / counts.sum()))


def _subset_sum_counts(weights: np.ndarray) -> np.ndarray:
    """c[v] = number of subsets of ``weights`` (non-negative integers) summing to v, v = 0..sum(weights).

    Built one weight at a time: c'(v) = c(v) + c(v - w).  Counts are floats, exact up to 2^53.
    """
    counts = np.zeros(int(weights.sum()) + 1)
    counts[0] = 1.0
    for w in weights:
        counts[w:] = counts[w:] + counts[:counts.size - w]  # the sum is formed before it is stored
    return counts
