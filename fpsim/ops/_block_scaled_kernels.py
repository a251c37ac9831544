"""numba kernels of ``fpsim.ops.block_scaled``: B200's block-scaled MMA in float64 and integers, exactly.

Why they are exact (E4M3 / E5M2 / E2M1 elements, E8M0 or E4M3 scales, FP32 accumulator):

* mxf8f6f4 (a step is one block of 32: one scale pair X_a X_b = 2^x per step): a product a*b has at most
  8 significand bits; its alignment exponent is e(a) + e(b) + x <= E, so a*b * 2^(f - E + x) < 2^(f + 2)
  = 2^27, a power-of-two multiple of an exact float64 value (no overflow or underflow: |x| <= 254), and
  its conversion to int64 is the term cut toward zero to a multiple of 2^(E - f);
* mxf4 / mxf4nvf4: a group of 16 E2M1 products sums to a multiple of 1/4 of magnitude <= 576 (exact);
  times two scales of at most 4 significand bits it has <= 20 bits (exact); its alignment exponent is the
  scales' e(s_a) + e(s_b) <= E and its magnitude < 2^(12 + E), so the cut term is below 2^47;
* c's cut term is below 2^(f + 1); a step's sum (at most 32 terms below 2^27, or 4 below 2^47, and c)
  stays below 2^53: exact in float64, and so is that sum times 2^(E - f) (|E| < 600);
* the step's value is then truncated to FP32 (``_tensor_core_kernels._round_step``), +-inf from 2^128 on.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._tensor_core_kernels import _alignment_exponent, _power_of_two, _round_step

NO_TERM = -(1 << 14)
"""The exponent of a zero operand, or of a padding block's scale 0: below every real one."""


@njit(cache=True)
def _fp32_step(total, exponent, f, nearest):
    """total * 2^(exponent - f) truncated to FP32 (toward zero; +-inf from 2^128 on)."""
    return _round_step(total * _power_of_two(exponent - f), True, 24, -126, nearest, 2.0 ** 128)


@njit(cache=True, parallel=True)
def mxf8_matmul(A, SA, B, SB, C, emin_a, emin_b, k, f, nearest):
    """D = C + sum_k (A[i, k] SA[i, k // k]) (B[k, j] SB[k // k, j]) in steps of ``k`` = 32 products (one block).

    ``A`` (M, K), ``B`` (K, N): element values (float64), K a multiple of k; ``SA`` (M, K / k), ``SB``
    (K / k, N): the E8M0 scales as float64 (NaN for 0xFF; 0 for a padding block: no product term);
    ``C`` (M, N) FP32 values; ``nearest``: FP32's ``round_nearest_branchless`` constants (unused by the
    truncation but taken by ``_round_step``).  A step with an inf or NaN in its float64 sum of the scaled
    products and c returns that sum, as MMA-Sim's ``fused_dot_add`` does.
    """
    M, K = A.shape
    N = B.shape[1]
    out = np.empty((M, N))
    for i in prange(M):
        for j in range(N):
            acc = C[i, j]
            for s0 in range(0, K, k):
                xa, xb = SA[i, s0 // k], SB[s0 // k, j]
                plain = acc
                for kk in range(s0, s0 + k):
                    plain += A[i, kk] * B[kk, j] * xa * xb
                if not np.isfinite(plain):
                    acc = plain
                    continue
                top = NO_TERM
                if xa != 0.0 and xb != 0.0:
                    for kk in range(s0, s0 + k):
                        ea = _alignment_exponent(A[i, kk], emin_a, NO_TERM)
                        eb = _alignment_exponent(B[kk, j], emin_b, NO_TERM)
                        if ea != NO_TERM and eb != NO_TERM:
                            top = max(top, ea + eb)
                x = _alignment_exponent(xa, -127, NO_TERM) + _alignment_exponent(xb, -127, NO_TERM)
                products = top != NO_TERM
                c_exponent = _alignment_exponent(acc, -126, NO_TERM)
                if not products and c_exponent == NO_TERM:
                    acc = 0.0
                    continue
                exponent = max(top + x if products else NO_TERM, c_exponent)
                total = 0
                if products:
                    scale = _power_of_two(f - exponent + x)
                    for kk in range(s0, s0 + k):
                        total += np.int64(A[i, kk] * B[kk, j] * scale)
                if c_exponent != NO_TERM:
                    total += np.int64(acc * _power_of_two(f - exponent))
                acc = _fp32_step(np.float64(total), exponent, f, nearest)
            out[i, j] = acc
    return out


@njit(cache=True, parallel=True)
def mxf4_matmul(A, SA, B, SB, C, block, scale_emin, k, group, f, nearest):
    """D = C + sum over groups of 16: (sum_g A[i, k] B[k, j]) |SA[i, b]| |SB[b, j]|, in steps of ``k`` = 64.

    ``A`` (M, K), ``B`` (K, N): E2M1 values (float64), K a multiple of k; ``SA`` (M, K / block), ``SB``
    (K / block, N): the block scales (E8M0 or E4M3 values, NaN allowed; 0: a padding block or a zero E4M3
    scale, no term); ``scale_emin``: the scale format's emin (-127 for E8M0, -6 for E4M3).  A group with
    non-zero scales takes part in the alignment even when its sum is 0.  A NaN scale of the step, or a NaN c,
    gives NaN; an inf c stays.
    """
    M, K = A.shape
    N = B.shape[1]
    out = np.empty((M, N))
    for i in prange(M):
        for j in range(N):
            acc = C[i, j]
            for s0 in range(0, K, k):
                nan = np.isnan(acc)
                top = NO_TERM
                for g0 in range(s0, s0 + k, group):
                    sa, sb = abs(SA[i, g0 // block]), abs(SB[g0 // block, j])
                    nan = nan or np.isnan(sa) or np.isnan(sb)
                    if sa != 0.0 and sb != 0.0 and not (np.isnan(sa) or np.isnan(sb)):
                        top = max(top, _alignment_exponent(sa, scale_emin, NO_TERM)
                                  + _alignment_exponent(sb, scale_emin, NO_TERM))
                if nan:
                    acc = math.nan
                    continue
                if np.isinf(acc):
                    continue
                c_exponent = _alignment_exponent(acc, -126, NO_TERM)
                exponent = max(top, c_exponent)
                if exponent == NO_TERM:
                    acc = 0.0
                    continue
                scale = _power_of_two(f - exponent)
                total = np.trunc(acc * scale) if c_exponent != NO_TERM else 0.0
                for g0 in range(s0, s0 + k, group):
                    sa, sb = abs(SA[i, g0 // block]), abs(SB[g0 // block, j])
                    if sa != 0.0 and sb != 0.0:
                        partial = 0.0
                        for kk in range(g0, g0 + group):
                            partial += A[i, kk] * B[kk, j]
                        total += np.trunc(partial * sa * sb * scale)
                acc = _fp32_step(total, exponent, f, nearest)
            out[i, j] = acc
    return out
