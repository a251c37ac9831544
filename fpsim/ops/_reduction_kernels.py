"""numba kernels for exactly rounded sums and for dot/sum/matmul with a stated accumulation order.

The one idea: the exact sum of two float64 values a + b is s + e with
``s = fl(a + b)`` and ``e`` its rounding error (TwoSum, Knuth; exact unless
``s`` overflows).  From (s, e) we form the *round-to-odd* value of a + b at 53
bits: s itself when e == 0 or when s's last significand bit is already 1,
else s moved one float64 ulp toward e (its neighbour on the side of the exact
sum, whose last bit is 1).  Round-to-odd keeps the information "exact or not,
and on which side", so rounding that value once more to any precision
p <= 51 (53 >= p + 2) gives the correctly rounded a + b in every mode
(Boldo & Melquiond, "Emulation of FMA and correctly rounded sums: proved
algorithms using rounding to odd", IEEE TC 2008).  For stochastic rounding the
probability of rounding up is then taken from the 53-bit odd value: it differs
from the exact one by less than 2^-(53-p).

``add_rounded`` is that operation.  The matmul kernels apply it at every step
of the stated order: a product of two inputs with <= 26 significand bits is
exact in float64, so ``acc + a*b`` is rounded once from its exact value (a
fused multiply-add, as GPUs accumulate).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..numerics.kernels import DOWN, STOCHASTIC, round_float64, round_nearest_branchless, splitmix63


@njit(cache=True, inline="always")
def two_sum(a, b):
    """(s, e) with s = fl(a + b) and s + e == a + b exactly (finite a, b, no overflow)."""
    s = a + b
    b_virtual = s - a
    a_virtual = s - b_virtual
    return s, (a - a_virtual) + (b - b_virtual)


@njit(cache=True, inline="always")
def sum_to_odd(a, b):
    """a + b rounded to odd at float64 precision; inf and NaN sums come back as IEEE float64 gives them."""
    s, e = two_sum(a, b)
    if not np.isfinite(s) or e == 0.0:
        return s
    bits = np.float64(s).view(np.int64)
    if (bits & 1) == 0:
        # one ulp toward e: away from zero when e has the sign of s (s != 0 since e != 0)
        bits += 1 if (e > 0.0) == (s > 0.0) else -1
    return np.int64(bits).view(np.float64)


@njit(cache=True, inline="always")
def add_rounded(a, b, params, mode, r63):
    """round(a + b) once from the exact sum, to the format of ``params`` (p <= 51).

    An exact zero sum follows IEEE 754 section 6.3: -0 if both operands are -0,
    +0 otherwise, except in mode "down" where x + (-x) and (+0) + (-0) give -0.
    """
    s = sum_to_odd(a, b)
    if s == 0.0 and mode == DOWN and not (a == 0.0 and b == 0.0 and not np.signbit(a) and not np.signbit(b)):
        s = -0.0
    return round_float64(s, params, mode, r63)


@njit(cache=True)
def matmul_blocked(A, B, params, mode, block, key):
    """C[i, j] accumulated in blocks of ``block`` k-steps, every step rounded by ``params``.

    Within a block: acc = round(a_k * b_k) for its first k, then
    acc = round(acc + a_k * b_k) (the product exact: inputs have <= 26 bits).
    Over blocks: total = first block's acc, then total = round(total + acc).
    ``block >= K`` is plain sequential order.  With stochastic rounding, output
    (i, j) uses the numbers ``splitmix63(key, (i*N + j)*R + step)`` for its
    R = K + ceil(K / block) - 1 roundings, step = 0..R-1 in the order made.
    """
    M, K = A.shape
    N = B.shape[1]
    n_blocks = (K + block - 1) // block
    R = K + n_blocks - 1
    use_random = mode == STOCHASTIC
    out = np.empty((M, N))
    for i in range(M):
        acc = np.empty(N)
        total = np.empty(N)
        for k in range(K):
            a = A[i, k]
            first_in_block = k % block == 0
            # roundings of output (i, j) before this step: the k products, plus the block merges so far
            step = k + k // block - (1 if k >= block else 0)
            for j in range(N):
                r63 = splitmix63(key, (i * N + j) * R + step) if use_random else 0
                prod = a * B[k, j]
                if first_in_block:
                    acc[j] = round_float64(prod, params, mode, r63)
                else:
                    acc[j] = add_rounded(acc[j], prod, params, mode, r63)
            if (k + 1) % block == 0 or k == K - 1:
                merge_step = step + 1
                for j in range(N):
                    if k < block:
                        total[j] = acc[j]
                    else:
                        r63 = splitmix63(key, (i * N + j) * R + merge_step) if use_random else 0
                        total[j] = add_rounded(total[j], acc[j], params, mode, r63)
        for j in range(N):
            out[i, j] = total[j]
    return out


@njit(cache=True)
def matmul_pairwise(A, Bt, params, mode, key):
    """C[i, j]: the K products rounded, then summed in a pairwise tree, each sum rounded.

    Level by level: v[0]+v[1], v[2]+v[3], ...; an odd last element moves up
    unchanged.  ``Bt`` is B transposed (N, K).  Random numbers per output:
    R = 2K - 1 (K products, then the K - 1 sums in the order made), numbered
    as in ``matmul_blocked``.
    """
    M, K = A.shape
    N = Bt.shape[0]
    R = 2 * K - 1
    use_random = mode == STOCHASTIC
    out = np.empty((M, N))
    for i in range(M):
        v = np.empty(K)
        for j in range(N):
            base = (i * N + j) * R
            for k in range(K):
                r63 = splitmix63(key, base + k) if use_random else 0
                v[k] = round_float64(A[i, k] * Bt[j, k], params, mode, r63)
            step = K
            n = K
            while n > 1:
                half = n // 2
                for t in range(half):
                    r63 = splitmix63(key, base + step) if use_random else 0
                    step += 1
                    v[t] = add_rounded(v[2 * t], v[2 * t + 1], params, mode, r63)
                if n % 2 == 1:
                    v[half] = v[n - 1]
                n = half + n % 2
            out[i, j] = v[0]
    return out


@njit(cache=True, parallel=True)
def matmul_native_nearest(A, B, block):
    """Blocked (or, with block >= K, sequential) accumulation in the hardware type of A and B, round to nearest.

    Valid for float32 (float64) operands when every product a*b is exact in
    that type: then ``acc + a*b`` in hardware is the exact sum rounded once to
    FP32 (FP64), ties to even, as IEEE 754 requires.  Accumulators start at
    -0.0, the identity of IEEE addition in this mode.
    """
    M, K = A.shape
    N = B.shape[1]
    zero = -A.dtype.type(0.0)
    out = np.empty((M, N), dtype=A.dtype)
    for i in prange(M):
        acc = np.empty(N, dtype=A.dtype)
        total = np.full(N, zero, dtype=A.dtype)
        for k0 in range(0, K, block):
            acc[:] = zero
            for k in range(k0, min(k0 + block, K)):
                a = A[i, k]
                for j in range(N):
                    acc[j] += a * B[k, j]
            for j in range(N):
                total[j] += acc[j]
        out[i, :] = total
    return out


@njit(cache=True, inline="always")
def round_nearest_float64(x, nearest):
    """``round_nearest_branchless`` of a float64, as a float64."""
    return np.int64(round_nearest_branchless(x, nearest)).view(np.float64)


@njit(cache=True, inline="always")
def sum_to_odd_branchless(a, b):
    """``sum_to_odd`` with selects only (the same value)."""
    s = a + b
    b_virtual = s - a
    a_virtual = s - b_virtual
    e = (a - a_virtual) + (b - b_virtual)
    s_bits = np.float64(s).view(np.int64)
    e_bits = np.float64(e).view(np.int64)
    finite = (s_bits & np.int64(0x7FF0000000000000)) != np.int64(0x7FF0000000000000)
    move = finite & (e != 0.0) & ((s_bits & 1) == 0)
    step = 1 + 2 * ((s_bits ^ e_bits) >> 63)  # +1 (away from zero) when e has the sign of s, else -1
    return np.int64(s_bits + (step if move else 0)).view(np.float64)


@njit(cache=True, parallel=True)
def matmul_blocked_nearest(A, B, nearest, block):
    """``matmul_blocked`` in mode "nearest", vectorised over the output row (``nearest``: see
    ``round_nearest_branchless``, for float64).

    Accumulators start at -0.0 (x + (-0) == x exactly, with the sign IEEE gives
    in this mode), so every step is ``acc = round(acc + a_k * b_k)``.
    """
    M, K = A.shape
    N = B.shape[1]
    out = np.empty((M, N))
    for i in prange(M):
        acc = np.empty(N)
        total = np.full(N, -0.0)
        for k0 in range(0, K, block):
            acc[:] = -0.0
            for k in range(k0, min(k0 + block, K)):
                a = A[i, k]
                for j in range(N):
                    s = sum_to_odd_branchless(acc[j], a * B[k, j])
                    acc[j] = round_nearest_float64(s, nearest)
            for j in range(N):
                s = sum_to_odd_branchless(total[j], acc[j])
                total[j] = round_nearest_float64(s, nearest)
        out[i, :] = total
    return out


@njit(cache=True)
def add_arrays(a, b, params, mode, key):
    """round(a[i] + b[i]) once from the exact sum, for every i (1-D float64 arrays of equal length).

    Stochastic rounding uses ``splitmix63(key, i)`` for element i."""
    out = np.empty(a.shape[0])
    for i in range(a.shape[0]):
        out[i] = add_rounded(a[i], b[i], params, mode, splitmix63(key, i) if mode == STOCHASTIC else 0)
    return out


@njit(cache=True)
def fma_arrays(a, b, c, params, mode, key):
    """round(a[i] * b[i] + c[i]) once, for inputs whose products are exact in float64 (numbers as ``add_arrays``)."""
    out = np.empty(a.shape[0])
    for i in range(a.shape[0]):
        out[i] = add_rounded(a[i] * b[i], c[i], params, mode, splitmix63(key, i) if mode == STOCHASTIC else 0)
    return out
