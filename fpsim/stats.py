"""Uncertainty for multi-seed results: mean with a t confidence interval, and paired tests against a baseline.

With n seeds giving values x_i, the mean's 95% interval is mean +- t(0.975, n-1) * s / sqrt(n)
(s the sample standard deviation). Two policies run on the same seeds share the
initial weights and batch order of each seed, so their difference is tested
paired: the t-test on d_i = a_i - b_i (``scipy.stats.ttest_rel``) and, without the
normality assumption, the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


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


def paired_comparison(a, b, level: float = 0.95) -> dict:
    """Compare paired samples ``a`` and ``b`` (same seeds): the mean difference a - b with its interval,
    the paired t-test p-value and the Wilcoxon signed-rank p-value (1.0 when all differences are zero)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.size < 2:
        raise ValueError("paired_comparison needs two samples of the same size, at least 2")
    d = a - b
    ci = mean_ci(d, level)
    if np.all(d == 0):
        t_p = wilcoxon_p = 1.0
    else:
        t_p = float(stats.ttest_rel(a, b).pvalue) if np.std(d) > 0 else 0.0
        wilcoxon_p = float(stats.wilcoxon(a, b).pvalue)
    return {"n": int(a.size), "mean_difference": ci["mean"], "low": ci["low"], "high": ci["high"],
            "t_test_p": t_p, "wilcoxon_p": wilcoxon_p,
            "a_better": int(np.sum(d > 0)), "b_better": int(np.sum(d < 0)), "ties": int(np.sum(d == 0))}
