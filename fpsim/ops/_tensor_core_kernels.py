"""numba kernel of the tensor-core models of ``fpsim.ops.tensor_cores``, exact in float64.

Why float64 is exact here (inputs of at most 11 significand bits: FP16, BF16,
TF32, FP8; FP32 / FP16 / e8m13 accumulators):

* a product a*b has at most 22 significand bits: exact;
* scaling by 2^(f - E) is exact (a power of two, far inside float64's range:
  E lies in [-300, 260]); a term then has magnitude < 2^(f + 2) <= 2^27, and
  its conversion to int32 (toward zero) is the truncation of the term to a
  multiple of 2^(E - f); a term scaled below float64's normal range is < 1, so
  truncates to 0 either way;
* the cut terms are integers, at most k + 1 <= 33 of them below 2^27 each:
  their sum is exact (< 2^33 < 2^53), and so is S * 2^(E - f);
* that value is rounded once to the step's format by ``round_float64``.

So every step is the exact algorithm, without Python integers.  The loops run
over the output row j innermost, as the other reduction kernels do.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._reduction_kernels import add_rounded, round_nearest_float64

NO_TERM = -(1 << 20)
"""The alignment exponent of a zero operand: below every real one, so a zero product never sets E."""

@njit(cache=True, inline="always")
def _alignment_exponent(x, emin):
    """max(floor(log2 |x|), emin) for a finite x != 0 (a normal float64), NO_TERM for x == 0."""
    if x == 0.0:
        return NO_TERM
    return max(((np.float64(x).view(np.int64) >> 52) & 0x7FF) - 1023, emin)


@njit(cache=True, inline="always")
def _power_of_two(e):
    """2^e for an integer e with |e| < 1023, from its bits."""
    return np.int64((e + 1023) << 52).view(np.float64)


@njit(cache=True, inline="always")
def _truncate(x, p, emin):
    """x (a normal float64) rounded toward zero to precision p with minimum exponent emin, by masking bits."""
    bits = np.float64(x).view(np.int64)
    exponent = ((bits >> 52) & 0x7FF) - 1023
    dropped = 53 - p + max(emin - exponent, 0)
    if dropped > 52:  # below the smallest subnormal: a zero of x's sign
        return math.copysign(0.0, x)
    return np.int64(bits & ~((np.int64(1) << dropped) - 1)).view(np.float64)


@njit(cache=True, inline="always")
def _round_step(value, toward_zero, p, emin, nearest, overflow):
    """``value`` rounded to the step's format (toward zero, or to nearest by ``nearest``); +-inf from
    ``overflow`` = 2^(emax + 1) on, in either rounding."""
    if abs(value) >= overflow:
        return math.copysign(math.inf, value)
    if toward_zero:
        return _truncate(value, p, emin)
    return round_nearest_float64(value, nearest)


@njit(cache=True, parallel=True)
def tensor_core_matmul(A, B, C, exp_a, exp_b, k, f, c_emin, c_in_alignment, toward_zero, p, step_nearest,
                       overflow, out_params, nearest, run, blocked, fp32_params, specials):
    """D[i, j] = C[i, j] + sum_k A[i, k] B[k, j] through the model's chain of fused steps.

    ``exp_a`` / ``exp_b``: the operands' alignment exponents as int32
    (``NO_TERM`` for zeros).  ``k``, ``f``, ``c_in_alignment``: the record's
    fields; ``toward_zero``, ``p``, ``c_emin`` (the step format's precision
    and emin), ``step_nearest`` (``round_nearest_branchless`` constants) and
    ``overflow``: the step format's rounding; ``out_params`` with mode ``nearest``: the IEEE add of c for
    records that do not align c.  Not ``blocked``: one chain over all K
    starting at C; ``blocked`` (``order="blocked:run"``): each run of ``run``
    products is a chain from 0, its result added to the total (starting at C)
    in FP32 rounded to nearest (``fp32_params``).  ``specials``: whether an
    operand is inf or NaN (then each step also forms the plain float64 sum,
    whose inf or NaN is the result).  Cut terms are below 2^27 in magnitude,
    so their truncation is the conversion to int32 (which vectorises).
    """
    M, K = A.shape
    N = B.shape[1]
    out = np.empty((M, N))
    for i in prange(M):
        acc = np.empty(N)
        exponent = np.empty(N, dtype=np.int32)
        plain = np.zeros(N)
        scale = np.empty(N)
        cut = np.empty(N, dtype=np.int64)
        total = C[i, :].copy()
        for r0 in range(0, K, run):
            r1 = min(r0 + run, K)
            if blocked:
                acc[:] = 0.0
            else:
                acc[:] = C[i, :]
            for s0 in range(r0, r1, k):
                s1 = min(s0 + k, r1)
                for j in range(N):
                    exponent[j] = _alignment_exponent(acc[j], c_emin) if c_in_alignment and np.isfinite(acc[j]) \
                        else NO_TERM
                for kk in range(s0, s1):
                    e = exp_a[i, kk]
                    for j in range(N):
                        exponent[j] = max(exponent[j], e + exp_b[kk, j])
                if specials:
                    for j in range(N):
                        plain[j] = acc[j]
                    for kk in range(s0, s1):
                        a = A[i, kk]
                        for j in range(N):
                            plain[j] += a * B[kk, j]
                for j in range(N):
                    # no term: any finite scale will do (every term is 0)
                    scale[j] = _power_of_two(f - (exponent[j] if exponent[j] > NO_TERM // 2 else 0))
                    cut[j] = np.int32(acc[j] * scale[j]) if c_in_alignment and np.isfinite(acc[j]) else 0
                for kk in range(s0, s1):
                    a = A[i, kk]
                    for j in range(N):
                        cut[j] += np.int32(a * B[kk, j] * scale[j])
                for j in range(N):
                    if specials and not np.isfinite(plain[j]):  # an inf or NaN operand: the IEEE sum
                        acc[j] = plain[j]
                    elif np.isfinite(acc[j]):  # (an inf from an overflow stays: inf + finite terms)
                        step = 0.0
                        if cut[j] != 0:
                            step = _round_step(cut[j] / scale[j], toward_zero, p, c_emin, step_nearest, overflow)
                        acc[j] = step if c_in_alignment else add_rounded(acc[j], step, out_params, nearest, 0)
            if blocked:
                for j in range(N):
                    total[j] = add_rounded(total[j], acc[j], fp32_params, nearest, 0)
        out[i, :] = total if blocked else acc
    return out
