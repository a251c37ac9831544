"""numba kernel of the tensor-core models of ``fpsim.ops.tensor_cores``: the exact algorithm in floats and integers.

Why it is exact (inputs of at most 11 significand bits: FP16, BF16, TF32, FP8;
FP32 / FP16 / e8m13 accumulators).  Each step has E, the largest alignment
exponent among its terms, and scale = 2^(f - E):

* a product a*b has at most 22 significand bits, exact in float64 and, when
  ``_products_exact_in`` holds for FP32 (FP8, FP16 operands), in float32;
* a term |a*b| < 2^(e(a) + e(b) + 2) <= 2^(E + 2), so a*b*scale (a power of
  two: exact, unless it falls below the float's normal range, where it is < 1)
  is below 2^(f + 2) <= 2^27, and its conversion to int32 (toward zero) is the
  term cut to a multiple of 2^(E - f);
* the cut terms are summed in int32 in runs of ``chunk`` products, few enough
  that a run's sum stays below 2^31, the runs and c's cut term (< 2^(f + 1))
  in float64: exact (< 2^33 < 2^53), and so is the sum times 2^(E - f);
* that value is rounded once to the step's format.

The operands come in float32 when that holds (twice the lanes of float64) and
in float64 otherwise.  Alignment exponents are int8 where every sum of two
fits (FP16, FP8: ``exponent_type``; twice the lanes) and int16 otherwise (the sum of two still
fits).  The loops run over the output row j innermost, as the other reduction
kernels do, each output row on its own thread; each pass over a row takes
``TILE`` products (rows kk .. kk + 3 of B), so that the row's running maxima
and cut sums are loaded and stored once per TILE products.  A pass that runs
past the end of its step (or chunk) takes zero operands there: a zero product
has no exponent (``no_term``) and cuts to 0, so it changes nothing.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._reduction_kernels import round_nearest_float64, sum_to_odd_branchless

TILE = 4  # products per pass of the inner loops over a row: their loads and stores of the row's sums are shared

def exponent_type(emin_a: int, emax_a: int, emin_b: int, emax_b: int) -> tuple[type, int]:
    """(integer type, no_term) for the alignment exponents of operands with exponents in [emin, emax].

    ``no_term`` is the exponent of a zero (or inf, NaN) operand: a sum with it lies below every sum of two real
    exponents (so it never sets E) and below ``no_term // 2``, and two of it still fit the type.  int8 with
    no_term = -64 when the real sums lie in (-32, 127] and each exponent is below 32; int16 with -2^14 otherwise.
    """
    if emin_a + emin_b > -32 and max(emax_a, emax_b) < 32:
        return np.int8, -64
    return np.int16, -(1 << 14)



@njit(cache=True, inline="always")
def _alignment_exponent(x, emin, no_term):
    """max(floor(log2 |x|), emin) for a finite x != 0 (a normal float64 once widened), else ``no_term``."""
    if x == 0.0 or not np.isfinite(x):
        return no_term
    return max(((np.float64(x).view(np.int64) >> 52) & 0x7FF) - 1023, emin)


@njit(cache=True, inline="always")
def _tile_rows(kk, end):
    """The TILE rows kk, kk + 1, ... of a pass, those from ``end`` on replaced by end - 1 (inside the arrays)."""
    return kk, min(kk + 1, end - 1), min(kk + 2, end - 1), min(kk + 3, end - 1)


@njit(cache=True, inline="always")
def _power_of_two(e):
    """2^e for an integer e with |e| < 1023, from its bits."""
    return np.int64((e + 1023) << 52).view(np.float64)


@njit(cache=True, inline="always")
def _truncate(x, p, emin):
    """x (a normal float64 or zero) rounded toward zero to precision p with minimum exponent emin, by masking
    bits, with selects only.

    Below the smallest subnormal (more than 52 bits dropped) the mask keeps the sign bit and bit 62 only; bit 62
    (the top exponent bit) is 0 for |x| < 2, so the result is a zero of x's sign.
    """
    bits = np.float64(x).view(np.int64)
    exponent = ((bits >> 52) & 0x7FF) - 1023
    dropped = min(53 - p + max(emin - exponent, 0), 62)
    return np.int64(bits & ~((np.int64(1) << dropped) - 1)).view(np.float64)


@njit(cache=True, inline="always")
def _round_step(value, toward_zero, p, emin, nearest, overflow):
    """``value`` rounded to the step's format (toward zero, or to nearest by ``nearest``); +0 for 0; +-inf from
    ``overflow`` = 2^(emax + 1) on, in either rounding.  Selects only, so that the loop over a row vectorises."""
    rounded = _truncate(value, p, emin) if toward_zero else round_nearest_float64(value, nearest)
    rounded = math.copysign(math.inf, value) if abs(value) >= overflow else rounded
    return 0.0 if value == 0.0 else rounded


@njit(cache=True, parallel=True)
def tensor_core_matmul(A, B, C, exp_b, no_term, emin_a, emin_b, k, f, c_emin, c_in_alignment, toward_zero, p, step_nearest,
                       overflow, out_nearest, run, blocked, fp32_nearest, specials):
    """D[i, j] = C[i, j] + sum_k A[i, k] B[k, j] through the model's chain of fused steps.

    ``A``, ``B``: the operands (float32 or float64, see the module docstring),
    of formats with minimum exponents ``emin_a`` / ``emin_b``; ``C`` float64;
    ``exp_b``: a (K, N) array of the type and ``no_term`` of ``exponent_type``,
    filled here with B's alignment exponents.
    ``k``, ``f``, ``c_in_alignment``: the record's fields; ``toward_zero``,
    ``p``, ``c_emin`` (the step format's precision and emin), ``step_nearest``
    (``round_nearest_branchless`` constants) and ``overflow`` = 2^(emax + 1):
    the step format's rounding; ``out_nearest``: the output format's constants,
    for the IEEE add (to nearest) of c in records that do not align c.  Not
    ``blocked``: one chain over all K starting at C; ``blocked``
    (``order="blocked:run"``): each run of ``run`` products is a chain from 0,
    its result added to the total (starting at C) in FP32 rounded to nearest
    (``fp32_nearest``).  ``specials``: whether an operand is inf or NaN (then
    each step also forms the plain float64 sum, whose inf or NaN is the result).

    The loops over a row's N outputs use selects only, so that they vectorise;
    a sum is rounded to nearest from its value rounded to odd
    (``sum_to_odd_branchless``, exact for p <= 51).
    """
    M, K = A.shape
    N = B.shape[1]
    exponent_lane = exp_b.dtype.type
    zero = A.dtype.type(0.0)
    no_lane = exponent_lane(no_term)
    chunk = max(1, min(k, (2**31 - 1) // (2**(f + 2) - 1)))  # products whose cut terms sum below 2^31
    for kk in prange(K):
        for j in range(N):
            exp_b[kk, j] = _alignment_exponent(B[kk, j], emin_b, no_term)
    out = np.empty((M, N))
    for i in prange(M):
        exp_a = np.empty(K, dtype=exp_b.dtype)
        for kk in range(K):
            exp_a[kk] = _alignment_exponent(A[i, kk], emin_a, no_term)
        acc = np.empty(N)
        top = np.empty(N, dtype=exp_b.dtype)
        unscale = np.empty(N)
        term_scale = np.empty(N, dtype=A.dtype)
        total_cut = np.empty(N)
        cut = np.empty(N, dtype=np.int32)
        plain = np.zeros(N)
        total = C[i, :].copy()
        for r0 in range(0, K, run):
            r1 = min(r0 + run, K)
            if blocked:
                acc[:] = 0.0
            else:
                acc[:] = C[i, :]
            for s0 in range(r0, r1, k):
                s1 = min(s0 + k, r1)
                top[:] = no_term
                for kk in range(s0, s1, TILE):
                    # past s1: a zero operand's exponent against a row of the step (any will do)
                    k0, k1, k2, k3 = _tile_rows(kk, s1)
                    e0, e1, e2, e3 = (exp_a[k0], exp_a[k1] if kk + 1 < s1 else no_lane,
                                      exp_a[k2] if kk + 2 < s1 else no_lane, exp_a[k3] if kk + 3 < s1 else no_lane)
                    for j in range(N):  # narrow lanes (numba would widen)
                        top[j] = max(max(top[j], max(exponent_lane(e0 + exp_b[k0, j]), exponent_lane(e1 + exp_b[k1, j]))),
                                     max(exponent_lane(e2 + exp_b[k2, j]), exponent_lane(e3 + exp_b[k3, j])))
                for j in range(N):
                    c = acc[j]
                    products = top[j] > no_term // 2
                    c_term = c_in_alignment and c != 0.0 and np.isfinite(c)
                    c_exponent = max(((np.float64(c).view(np.int64) >> 52) & 0x7FF) - 1023, c_emin)
                    exponent = max(np.int64(top[j]), c_exponent if c_term else no_term)
                    exponent = exponent if products or c_term else f  # no term: any scale will do
                    scale = _power_of_two(f - exponent)
                    unscale[j] = _power_of_two(exponent - f)
                    term_scale[j] = scale if products else 0.0  # no product term: all are 0 whatever the scale
                    total_cut[j] = np.trunc(c * scale) if c_term else 0.0
                for c0 in range(s0, s1, chunk):
                    c1 = min(c0 + chunk, s1)
                    cut[:] = 0
                    for kk in range(c0, c1, TILE):
                        # past c1: a zero operand against a row of the run (any will do)
                        k0, k1, k2, k3 = _tile_rows(kk, c1)
                        a0, a1, a2, a3 = (A[i, k0], A[i, k1] if kk + 1 < c1 else zero,
                                          A[i, k2] if kk + 2 < c1 else zero, A[i, k3] if kk + 3 < c1 else zero)
                        for j in range(N):
                            to_cut = term_scale[j]
                            cut[j] += np.int32(np.int32(a0 * B[k0, j] * to_cut) + np.int32(a1 * B[k1, j] * to_cut)
                                               + np.int32(a2 * B[k2, j] * to_cut) + np.int32(a3 * B[k3, j] * to_cut))
                    for j in range(N):
                        total_cut[j] += cut[j]
                if specials:
                    for j in range(N):
                        plain[j] = acc[j]
                    for kk in range(s0, s1):
                        a = np.float64(A[i, kk])
                        for j in range(N):
                            plain[j] += a * np.float64(B[kk, j])
                for j in range(N):
                    c = acc[j]
                    step = _round_step(total_cut[j] * unscale[j], toward_zero, p, c_emin, step_nearest, overflow)
                    if not c_in_alignment:
                        step = round_nearest_float64(sum_to_odd_branchless(c, step), out_nearest)
                    step = step if np.isfinite(c) else c  # an inf from an overflow stays: inf + finite terms
                    acc[j] = plain[j] if specials and not np.isfinite(plain[j]) else step  # inf / NaN operands
            if blocked:
                for j in range(N):
                    total[j] = round_nearest_float64(sum_to_odd_branchless(total[j], acc[j]), fp32_nearest)
        out[i, :] = total if blocked else acc
    return out
