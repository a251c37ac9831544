"""numba kernel of the tensor-core models of ``fpsim.ops.tensor_cores``, exact in float64.

Why float64 is exact here (inputs of at most 11 significand bits: FP16, BF16,
TF32, FP8; FP32 / FP16 / e8m13 accumulators):

* a product a*b has at most 22 significand bits: exact;
* scaling by 2^(f - E) is exact (a power of two, far inside float64's range:
  E lies in [-300, 260]); a term then has magnitude < 2^(f + 2) <= 2^27, and
  ``trunc`` of it is the truncation of the term to a multiple of 2^(E - f);
  a term scaled below float64's normal range is < 1, so truncates to 0 either way;
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

from ..numerics._kernels import round_float64
from ._reduction_kernels import add_rounded

NO_TERM = -(1 << 20)
"""The alignment exponent of a zero operand: below every real one, so a zero product never sets E."""

@njit(cache=True, inline="always")
def _alignment_exponent(x, emin):
    """max(floor(log2 |x|), emin) for x != 0, NO_TERM for x == 0."""
    if x == 0.0:
        return NO_TERM
    return max(math.frexp(x)[1] - 1, emin)


@njit(cache=True, inline="always")
def _round_step(value, params, mode, overflow):
    """``value`` rounded to the step's format; +-inf from ``overflow`` = 2^(emax + 1) on."""
    if abs(value) >= overflow:
        return math.copysign(math.inf, value)
    return round_float64(value, params, mode, 0)


@njit(cache=True, parallel=True)
def tensor_core_matmul(A, B, C, exp_a, exp_b, k, f, c_emin, c_in_alignment, step_params, step_mode, overflow,
                       out_params, nearest, run, blocked, fp32_params):
    """D[i, j] = C[i, j] + sum_k A[i, k] B[k, j] through the model's chain of fused steps.

    ``exp_a`` / ``exp_b``: the operands' alignment exponents (``NO_TERM`` for
    zeros).  ``k``, ``f``, ``c_in_alignment``: the record's fields;
    ``step_params`` / ``step_mode`` / ``overflow``: the step format's rounding;
    ``out_params`` with mode ``nearest``: the IEEE add of c for records that do
    not align c.  Not ``blocked``: one chain over all K starting at C;
    ``blocked`` (``order="blocked:run"``): each run of ``run`` products is a
    chain from 0, its result added to the total (starting at C) in FP32
    rounded to nearest (``fp32_params``).
    """
    M, K = A.shape
    N = B.shape[1]
    out = np.empty((M, N))
    for i in prange(M):
        acc = np.empty(N)
        exponent = np.empty(N, dtype=np.int64)
        plain = np.empty(N)
        scale = np.empty(N)
        cut = np.empty(N)
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
                    plain[j] = acc[j]
                    exponent[j] = _alignment_exponent(acc[j], c_emin) if c_in_alignment else NO_TERM
                for kk in range(s0, s1):
                    a = A[i, kk]
                    e = exp_a[i, kk]
                    for j in range(N):
                        exponent[j] = max(exponent[j], e + exp_b[kk, j])
                        plain[j] += a * B[kk, j]
                for j in range(N):
                    # no term: any finite scale will do (every term is 0)
                    scale[j] = math.ldexp(1.0, f - (exponent[j] if exponent[j] > NO_TERM // 2 else 0))
                    cut[j] = np.trunc(acc[j] * scale[j]) if c_in_alignment else 0.0
                for kk in range(s0, s1):
                    a = A[i, kk]
                    for j in range(N):
                        cut[j] += np.trunc(a * B[kk, j] * scale[j])
                for j in range(N):
                    if not np.isfinite(plain[j]):  # an inf or NaN operand: the IEEE sum
                        acc[j] = plain[j]
                        continue
                    step = 0.0
                    if cut[j] != 0.0:
                        step = _round_step(cut[j] / scale[j], step_params, step_mode, overflow)
                    acc[j] = step if c_in_alignment else add_rounded(acc[j], step, out_params, nearest, 0)
            if blocked:
                for j in range(N):
                    total[j] = add_rounded(total[j], acc[j], fp32_params, nearest, 0)
        out[i, :] = total if blocked else acc
    return out
