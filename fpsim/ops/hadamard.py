"""``fpsim.ops.hadamard``: the (random) Hadamard transform of NVFP4 training, rounded once to FP32.

H_n is Sylvester's Hadamard matrix (H_1 = [1], H_2k = [[H_k, H_k], [H_k, -H_k]]; entries +-1,
symmetric, H_n H_n^T = n I), n a power of two (NVFP4 uses 16; 32 for MXFP4-sized blocks).  With a
sign vector s (entries +-1) the transform is Transformer Engine's random Hadamard transform
(``transformer_engine/pytorch/tensor/nvfp4_tensor.py``: ``get_rht_matrix`` = diag(s) @ H_16 / 4)::

    R = diag(s) H_n / sqrt(n)            (orthogonal: R R^T = I)
    y_block = x_block R                  for each run of n consecutive values along ``axis``
    inverse:  x_block = y_block R^T      (R^T = H_n diag(s) / sqrt(n))

Rounding: each output is the *exact* value of its sum, sum_i x_i s_i H_ij / sqrt(n) for the exact
inputs, rounded once to nearest FP32 (ties to even), for any n.  For n a power of four (16)
sqrt(n) is a power of two, so R's entries (+-1/4) are exact and so is R R^T = I in any binary
format; for n = 32 the entries +-2^-2.5 are irrational and only the rounded result is stated
(an irrational result has no ties).  Consequently hadamard(hadamard(x), inverse=True) is x
whenever the forward results are FP32 numbers without rounding (e.g. small integers with n = 16),
and otherwise within a few FP32 ulps of x.  The sums are taken in float64, each addition's error
found exactly (TwoSum): an exact sum (the usual case for float32 inputs, ties included) is rounded once
from float64 for n a power of four; otherwise a rigorous error bound (n u sum |x_i|, u = 2^-53) decides,
and the rare results within it of an FP32 rounding boundary are recomputed from exact rationals.  Non-finite inputs give IEEE float64 results rounded to FP32.

Signs: ``None`` (all +1, the plain transform), ``"te"`` (TE's fixed NVFP4 weight-gradient vector
``TE_WGRAD_SIGNS``, n = 16), an integer seed (a random vector from ``numpy.random.default_rng``:
same seed, same signs), or n values +-1.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import numpy as np

from ..numerics.checks import is_integer
from ..numerics.exact import round_exact
from ..numerics.formats import FP32
from ..numerics.rounding import _as_float_array

TE_WGRAD_SIGNS = (1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1)
"""Transformer Engine's fixed sign vector for the NVFP4 weight-gradient Hadamard transform
(``transformer_engine/pytorch/tensor/nvfp4_tensor.py: get_wgrad_sign_vector``; also TE's JAX
``quantize/hadamard.py``)."""

_UNIT_ROUNDOFF = 2.0**-53


@lru_cache(maxsize=None)
def sylvester(n: int) -> np.ndarray:
    """Sylvester's Hadamard matrix H_n (int64 entries +-1), n a power of two."""
    if not is_integer(n) or n < 1 or n & (n - 1):
        raise ValueError(f"the Hadamard size n must be a power of two (16 or 32 in the recipes), got {n!r}")
    matrix = np.ones((1, 1), dtype=np.int64)
    while matrix.shape[0] < n:
        matrix = np.block([[matrix, matrix], [matrix, -matrix]])
    matrix.setflags(write=False)
    return matrix


def sign_vector(n: int, signs=None) -> np.ndarray:
    """The sign vector s (int64, entries +-1) for ``signs``: None, "te", an integer seed, or n values +-1."""
    if signs is None:
        return np.ones(n, dtype=np.int64)
    if isinstance(signs, str):
        if signs.strip().lower() != "te":
            raise ValueError(f"unknown signs {signs!r}: use None, 'te', an integer seed or {n} values +-1")
        if n != len(TE_WGRAD_SIGNS):
            raise ValueError(f"signs='te' is Transformer Engine's 16-value vector: use n=16 (got n={n})")
        return np.array(TE_WGRAD_SIGNS, dtype=np.int64)
    if is_integer(signs):
        return np.random.default_rng(int(signs)).choice(np.array([-1, 1], dtype=np.int64), n)
    vector = np.asarray(signs)
    if vector.shape != (n,) or vector.dtype.kind not in "iuf" or not np.all((vector == 1) | (vector == -1)):
        raise ValueError(f"signs must be {n} values +-1 (or None, 'te', an integer seed), got {signs!r}")
    return vector.astype(np.int64)


def rht_matrix(n: int = 16, signs=None) -> np.ndarray:
    """R = diag(s) H_n / sqrt(n) as float64 (exact for n a power of four; for n = 32 each entry rounded)."""
    return (sign_vector(n, signs)[:, None] * sylvester(n)) / np.sqrt(n)


def hadamard(x, n: int = 16, signs=None, *, axis: int = -1, inverse: bool = False) -> np.ndarray:
    """The random Hadamard transform of ``x`` in blocks of ``n`` along ``axis``, each output rounded once to FP32.

    Returns a float32 array shaped like ``x``: y_block = x_block diag(s) H_n / sqrt(n), or with
    ``inverse`` x_block H_n diag(s) / sqrt(n) (the module docstring).  The length of ``axis`` must
    be a multiple of n (pad with zeros to transform a ragged axis, as the recipes require).
    """
    integers = sylvester(n)
    s = sign_vector(n, signs)
    array, exact_inputs = _as_float_array(x)
    if exact_inputs is not None:
        raise ValueError("hadamard reads float64 values: pass integers below 2^53 and no long doubles")
    if not is_integer(axis) or not -max(array.ndim, 1) <= axis < max(array.ndim, 1):
        raise ValueError(f"axis must be an integer within the array's {array.ndim} dimension(s), got {axis!r}")
    if array.ndim == 0 or array.shape[axis] % n:
        length = array.shape[axis] if array.ndim else 0
        raise ValueError(f"the transformed axis needs a multiple of n={n} values, got {length}: pad it with zeros")
    kernel = integers * s[None, :] if inverse else s[:, None] * integers   # H diag(s) or diag(s) H
    moved = np.moveaxis(array, axis, -1)
    blocks = moved.reshape(-1, n).astype(np.float64)
    result = _rounded_transform(blocks, kernel, n)
    return np.moveaxis(result.reshape(moved.shape), -1, axis)


def _rounded_transform(blocks: np.ndarray, kernel: np.ndarray, n: int) -> np.ndarray:
    """RN32(blocks @ kernel / sqrt(n)) for the exact float64 ``blocks`` and the +-1 integer ``kernel``."""
    power_of_four = n.bit_length() % 2 == 1   # n = 4^k: sqrt(n) = 2^k exactly
    half_log = (n.bit_length() - 1) // 2
    with np.errstate(over="ignore", invalid="ignore"):
        sums, exact = _sums_and_exactness(blocks, kernel)
        approx = np.ldexp(sums, -half_log) if power_of_four else np.ldexp(sums, -half_log) * np.sqrt(0.5)
        bound = np.ldexp(n * _UNIT_ROUNDOFF * (np.abs(blocks).sum(axis=1, keepdims=True) + 3 * np.abs(sums)),
                         -half_log)
        out = approx.astype(np.float32)
        unsure = np.isfinite(approx) & ((approx - bound).astype(np.float32) != (approx + bound).astype(np.float32))
        if power_of_four:   # an exact float64 sum scaled by 2^-k is the exact result: astype rounds it once
            unsure &= ~exact
    for row, column in np.argwhere(unsure):
        exact_sum = sum(int(k) * Fraction(float(v)) for k, v in zip(kernel[:, column], blocks[row]))
        out[row, column] = _round_scaled_sum(exact_sum, half_log, power_of_four,
                                             float(approx[row, column] - bound[row, column]),
                                             float(approx[row, column] + bound[row, column]))
    return out


def _sums_and_exactness(blocks: np.ndarray, kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S, exact): S = blocks @ kernel summed left to right in float64, and where that sum is exact.

    Each term x_i k_ij (k = +-1) is exact; Knuth's TwoSum gives every addition's rounding error exactly
    (s + t = fl(s + t) + e), so the sum is exact where every error is zero.  Float32 inputs of nearby
    magnitudes (the transform's usual case) sum exactly in float64, ties at FP32 midpoints included."""
    sums = np.zeros((blocks.shape[0], kernel.shape[1]))
    exact = np.ones(sums.shape, dtype=bool)
    for i, signs in enumerate(kernel.astype(np.float64)):
        term = blocks[:, i:i + 1] * signs
        total = sums + term
        virtual = total - sums
        error = (sums - (total - virtual)) + (term - virtual)
        exact &= error == 0
        sums = total
    return sums, exact


def _round_scaled_sum(exact_sum: Fraction, half_log: int, power_of_four: bool, low: float, high: float) -> float:
    """RN32(S / 2^half_log), or RN32(S / (2^half_log sqrt 2)) when n is not a power of four (irrational unless
    S = 0: the FP32 candidates between RN32(low) and RN32(high) are tested against squared midpoints)."""
    if power_of_four or exact_sum == 0:
        return round_exact(exact_sum / 2**half_log, FP32)
    candidates = [np.float32(low)]
    while candidates[-1] < np.float32(high):
        candidates.append(np.nextafter(candidates[-1], np.float32(np.inf)))
    target = exact_sum / 2**half_log   # the result times sqrt 2

    def below(midpoint: Fraction) -> bool:  # target / sqrt 2 < midpoint
        scaled = 2 * midpoint * midpoint
        if midpoint >= 0:
            return target < 0 or target * target < scaled
        return target < 0 and target * target > scaled

    overflow = Fraction(2**128 - 2**103)   # FP32's max plus half its ulp: beyond it RN32 gives inf
    for lower, upper in zip(candidates, candidates[1:]):
        midpoint = (-overflow if np.isinf(lower) else overflow if np.isinf(upper)
                    else (Fraction(float(lower)) + Fraction(float(upper))) / 2)
        if below(midpoint):
            return float(lower)
    return float(candidates[-1])
