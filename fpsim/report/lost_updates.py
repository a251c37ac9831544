"""When is a weight update lost? The share of updates u that leave a stored weight w unchanged,
measured by rounding w - u with ``fpsim.round``, against the theory.

A normal w = m * 2^e (1 <= m < 2) in a format with p significant bits has neighbours
2^(e - p + 1) apart, so round-to-nearest(w - u) = w when |u| < 2^(e - p) (half that
spacing).  With r = |w| / |u| this reads r > m * 2^p: no update is lost below
r = 2^p (2^11 for FP16, 2^8 for BF16), every one is lost above 2^(p+1), and for a
significand spread evenly in log2 m the share lost in between is log2(r) - p.
"""

from __future__ import annotations

import numpy as np

from ..numerics.formats import get_format
from ..numerics.rounding import round as round_to


def theoretical_lost_share(fmt, ratios) -> np.ndarray:
    """Share of updates lost at |w| / |u| = ``ratios`` for log-uniform significands: clip(log2 r - p, 0, 1)."""
    fmt = get_format(fmt)
    return np.clip(np.log2(np.asarray(ratios, dtype=float)) - fmt.precision, 0.0, 1.0)


def measured_lost_share(fmt, ratios, n: int = 20_000, seed: int = 0, mode: str = "nearest") -> np.ndarray:
    """Share of ``n`` weights (values of ``fmt``, log-uniform over [2^-8, 2^0), random signs) that
    ``round(w - u, fmt, mode)`` leaves unchanged, with |u| = |w| / r and a random sign, for each r."""
    fmt = get_format(fmt)
    rng = np.random.default_rng(seed)
    w = np.asarray(round_to(np.exp2(rng.uniform(-8, 0, n)) * rng.choice([-1.0, 1.0], n), fmt), dtype=np.float64)
    shares = []
    for r in np.asarray(ratios, dtype=float):
        u = w / r * rng.choice([-1.0, 1.0], n)
        after = np.asarray(round_to(w - u, fmt, mode, rng=rng if mode == "stochastic" else None), dtype=np.float64)
        shares.append(float(np.mean(after == w)))
    return np.array(shares)
