"""``fpsim.matmul``, ``fpsim.dot`` and ``fpsim.sum``: products and sums with a chosen accumulation format and order.

Semantics, for one output value c = sum_k a_k * b_k:

* ``inputs`` (if given) rounds A and B to that format first (in ``mode``).
* ``order="sequential"``: acc = round(a_0 * b_0), then for k = 1..K-1
  acc = round(acc + a_k * b_k), the product added exactly and the sum rounded
  once to ``accumulate`` (a fused multiply-add, as GPU tensor cores and FMA
  loops accumulate).
* ``order="pairwise"``: the K products are rounded to ``accumulate``, then summed
  level by level (v0+v1, v2+v3, ...; an odd last one moves up unchanged), each
  sum rounded.
* ``order="blocked:N"``: sequential within each run of N consecutive k, then
  sequential over the block results: total = block_0, total = round(total + block_b)
  (how tiled GPU kernels accumulate).
* ``output`` (if given) rounds the result once more.

Every rounding is from the exact value (see ``fpsim._reduction_kernels``), in
``mode``; stochastic rounding draws one random number per rounding from ``rng``
(a Generator or int seed; one key per call, then ``fpsim._kernels.splitmix63``
numbers indexed by output and step), so the same seed gives the same bits.

Kernels (``fpsim._reduction_kernels``), the first that applies:

* accumulate FP32 or FP64, mode "nearest", products exact in that type (e.g.
  FP16/FP8 inputs for FP32): plain hardware ``acc += a*b``, which IEEE 754
  makes the exact sum rounded once;
* products exact in float64 (input precision <= 26 bits, exponent range small
  enough) and an accumulator of <= 51 bits with <= 10 exponent bits: TwoSum and
  round-to-odd in float64, then one rounding (vectorised for "nearest");
* anything else (for instance float64 operands that are not float32 values, or
  an FP64 accumulator in a directed mode) a slow exact ``Fraction`` evaluation
  of the same order and the same random numbers.

Products with fewer than ``PARALLEL_MIN_WORK`` multiply-adds run on one thread.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np

from ..numerics import _kernels
from ..numerics._kernels import threads_for
from . import _reduction_kernels as kernels
from ..numerics.exact import check_mode, round_exact, round_sum_exact
from ..numerics.formats import FP32, FP64, HARDWARE_DTYPES, Format, get_format, widen_ml_dtypes
from ..numerics.rounding import as_generator, float64_params, kernel_params, random_key, stochastic_uniform
from ..numerics.rounding import round as round_to

PARALLEL_MIN_WORK = 1 << 24
"""Products with fewer multiply-adds (M*K*N) than this run on one thread.

On small products numba's thread pool costs more than it gains, and right
after a numpy matmul OpenBLAS's idle threads spin and the two pools contend;
on a 2-core machine the pool pays for that risk from about this size on.
``benchmarks/bench_threads.py`` measures both sides (the training step's 2^20
product and a 2^24 one, alone and after a numpy matmul).
"""


def parse_order(order: str, K: int) -> tuple[str, int]:
    """("blocked", N) for "sequential" (N = K) and "blocked:N"; ("pairwise", 0) for "pairwise"."""
    if order == "sequential":
        return "blocked", max(K, 1)
    if order == "pairwise":
        return "pairwise", 0
    match = re.fullmatch(r"blocked:([0-9]+)", order) if isinstance(order, str) else None
    if match and int(match[1]) >= 1:
        return "blocked", int(match[1])
    raise ValueError(f"unknown order {order!r}: use 'sequential', 'pairwise' or 'blocked:N' with N >= 1")


def _array_format(array: np.ndarray) -> Format:
    """The format of an array's dtype (FP64 for anything that is not a known float dtype)."""
    for name, dtype in HARDWARE_DTYPES.items():
        if array.dtype == dtype:
            return get_format(name)
    return FP64


def _prepare_input(x, inputs, mode, rng, name):
    """Array of the values that enter the products (float64), and their format."""
    array = np.asarray(x)
    fmt = _array_format(array)
    array = widen_ml_dtypes(array)
    if array.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers; got dtype {array.dtype}")
    if inputs is not None:
        return np.asarray(round_to(array, inputs, mode, rng=rng), dtype=np.float64), inputs
    wide = array.astype(np.float64)
    may_be_inexact = array.dtype.kind in "iu" or array.dtype.itemsize > 8  # 64-bit integers, long double
    if may_be_inexact and not np.array_equal(wide.astype(array.dtype), array, equal_nan=array.dtype.kind == "f"):
        raise ValueError(f"{name} holds values that float64 cannot hold exactly ({array.dtype}): pass "
                         "inputs=FORMAT to round them once to a format first")
    return wide, fmt


def _products_exact_in(fmt_a: Format, fmt_b: Format, layout: Format) -> bool:
    """Whether every product of a value of ``fmt_a`` and one of ``fmt_b`` is a value of ``layout`` (or inf/NaN)."""
    quantum_exp = (fmt_a.emin - fmt_a.mantissa_bits) + (fmt_b.emin - fmt_b.mantissa_bits)
    return (fmt_a.precision + fmt_b.precision <= layout.precision
            and quantum_exp >= layout.emin - layout.mantissa_bits
            and (fmt_a.emax + 1) + (fmt_b.emax + 1) <= layout.emax)


def _exponent_span(values: np.ndarray, fmt: Format) -> tuple[int, int]:
    """(e_low, e_high): every non-zero finite value of ``fmt`` here is a multiple of 2^e_low and below 2^e_high."""
    magnitudes = np.abs(values[np.isfinite(values) & (values != 0)])
    if magnitudes.size == 0:
        return 0, 0
    exponents = np.frexp(magnitudes)[1]  # |v| < 2^exponent, top bit at exponent - 1
    return int(max(exponents.min() - 1, fmt.emin)) - fmt.mantissa_bits, int(exponents.max())


def _value_products_exact_in(a: np.ndarray, b: np.ndarray, fmt_a: Format, fmt_b: Format, layout: Format) -> bool:
    """Whether every product of these particular values is a value of ``layout``.

    ``_products_exact_in`` asks it of whole formats; BF16 x BF16 fails there (its
    products reach 2^-266, below float32) although activations and weights seldom
    come near the ends of the range.  Checked on the data: enough precision, the
    products' lowest bits at or above the layout's smallest subnormal, and their
    magnitudes below 2^(emax + 1).
    """
    if fmt_a.precision + fmt_b.precision > layout.precision:
        return False
    low_a, high_a = _exponent_span(a, fmt_a)
    low_b, high_b = _exponent_span(b, fmt_b)
    return low_a + low_b >= layout.emin - layout.mantissa_bits and high_a + high_b <= layout.emax + 1


def _effective_input_format(values: np.ndarray, fmt: Format) -> Format:
    """FP32 if a float64 operand (given without ``inputs``) holds only float32 values, else ``fmt``."""
    if fmt.precision > 24 and np.array_equal(values.astype(np.float32).astype(np.float64), values,
                                             equal_nan=True):
        return FP32
    return fmt


def _fits_float64_kernel(fmt_a: Format, fmt_b: Format, accumulate: Format) -> bool:
    """Exact products in float64, and an accumulator that round-to-odd serves and float64 cannot overflow in."""
    return (_products_exact_in(fmt_a, fmt_b, FP64) and accumulate.precision <= 51
            and accumulate.exponent_bits <= 10)


def _native_layout(fmt: Format):
    """FP32 or FP64 when ``fmt`` is exactly that IEEE format (so hardware arithmetic rounds to it), else None."""
    for layout in (FP32, FP64):
        if (fmt.exponent_bits, fmt.mantissa_bits, fmt.subnormals, fmt.specials) == \
                (layout.exponent_bits, layout.mantissa_bits, True, "ieee"):
            return layout
    return None


def matmul(A, B, *, inputs=None, accumulate=FP32, output=None, mode: str = "nearest",
           order: str = "sequential", rng=None):
    """C = A @ B with every partial sum rounded to ``accumulate`` in the stated ``order``.

    A is (M, K), B is (K, N) (real arrays).  See the module docstring for the
    exact semantics of ``inputs``, ``accumulate``, ``output``, ``order`` and
    ``mode``.  Returns an (M, N) array: float32 when every format involved
    (``inputs``, or the arrays' own formats when it is None; ``accumulate``;
    ``output``) fits float32, float64 otherwise.  IEEE special values
    propagate: 0 * inf and inf - inf give NaN.
    """
    mode = check_mode(mode)
    accumulate = get_format(accumulate)
    inputs = None if inputs is None else get_format(inputs)
    output = None if output is None else get_format(output)
    if np.ndim(A) != 2 or np.ndim(B) != 2:
        raise ValueError(f"matmul needs 2-D arrays; got shapes {np.shape(A)} and {np.shape(B)}")
    if np.shape(A)[1] != np.shape(B)[0]:
        raise ValueError(f"matmul: inner dimensions differ: {np.shape(A)} @ {np.shape(B)}")
    rng = as_generator(rng)  # one stream for the whole call: the roundings draw distinct numbers
    if mode == "stochastic" and rng is None:
        raise ValueError("stochastic rounding needs rng: a numpy Generator or an integer seed")
    with threads_for(np.shape(A)[0] * np.shape(A)[1] * np.shape(B)[1], PARALLEL_MIN_WORK):
        return _matmul(A, B, inputs, accumulate, output, mode, order, rng)


def _matmul(A, B, inputs, accumulate, output, mode, order, rng):
    a, fmt_a = _prepare_input(A, inputs, mode, rng, "A")
    b, fmt_b = _prepare_input(B, inputs, mode, rng, "B")
    formats = [fmt_a, fmt_b, accumulate] + ([output] if output is not None else [])
    result_dtype = np.float32 if all(f.fits_float32 for f in formats) else np.float64

    M, K = a.shape
    N = b.shape[1]
    kind, block = parse_order(order, K)
    if K == 0:
        c = np.zeros((M, N))
    else:
        c = _accumulate(a, b, fmt_a, fmt_b, accumulate, mode, kind, block, rng)
    if output is not None:
        c = round_to(c, output, mode, rng=rng)
    return np.asarray(c).astype(result_dtype)


def nearest_constants(fmt: Format) -> tuple:
    """The ``nearest`` tuple of ``_kernels.round_nearest_branchless`` for float64 values and ``fmt`` (p <= 51)."""
    return kernel_params(fmt, np.float64).nearest_args()


def _accumulate(a, b, fmt_a, fmt_b, accumulate, mode, kind, block, rng):
    """The (M, N) float64 array of accumulated values, by the fastest exact kernel that applies."""
    M, K = a.shape
    N = b.shape[1]
    fmt_a, fmt_b = _effective_input_format(a, fmt_a), _effective_input_format(b, fmt_b)
    native = _native_layout(accumulate)
    if kind == "blocked" and mode == "nearest" and native is not None and (
            _products_exact_in(fmt_a, fmt_b, native) or _value_products_exact_in(a, b, fmt_a, fmt_b, native)):
        dtype = np.float32 if native == FP32 else np.float64
        return kernels.matmul_native_nearest(a.astype(dtype), b.astype(dtype), block)
    key = random_key(rng) if mode == "stochastic" else 0
    if _fits_float64_kernel(fmt_a, fmt_b, accumulate):
        params = float64_params(accumulate)
        code = _kernels.MODE_CODES[mode]
        if kind == "blocked" and mode == "nearest":
            return kernels.matmul_blocked_nearest(np.ascontiguousarray(a), np.ascontiguousarray(b),
                                                  nearest_constants(accumulate), block)
        if kind == "blocked":
            return kernels.matmul_blocked(np.ascontiguousarray(a), np.ascontiguousarray(b), params, code,
                                          block, key)
        return kernels.matmul_pairwise(np.ascontiguousarray(a), np.ascontiguousarray(b.T), params, code, key)
    return _accumulate_exact(a, b, accumulate, mode, kind, block, key)


def _accumulate_exact(a, b, accumulate, mode, kind, block, key):
    """Slow path: the same order and random numbers as the kernels, in exact Fractions."""
    M, K = a.shape
    N = b.shape[1]
    R = K + (K + block - 1) // block - 1 if kind == "blocked" else 2 * K - 1
    out = np.empty((M, N))
    for i in range(M):
        for j in range(N):
            uniforms = (stochastic_uniform(key, (i * N + j) * R + step) for step in range(R))
            products = [_exact_product(a[i, k], b[k, j]) for k in range(K)]
            out[i, j] = _ordered_sum(products, accumulate, mode, kind, block, uniforms)
    return out


def _exact_product(x: float, y: float):
    """x * y as a Fraction, or the IEEE float result (inf, NaN, signed zero) when it is not finite non-zero."""
    if math.isfinite(x) and math.isfinite(y) and x != 0 and y != 0:
        return Fraction(x) * Fraction(y)
    return float(x) * float(y)


def _add_exact(x, y, fmt, mode, uniforms) -> float:
    """round(x + y) once (one random number used in any case)."""
    return round_sum_exact(x, y, fmt, mode, uniform=next(uniforms) if mode == "stochastic" else None)


def _round(x, fmt, mode, uniforms) -> float:
    return round_exact(x, fmt, mode, uniform=next(uniforms) if mode == "stochastic" else None)


def _ordered_sum(terms, fmt, mode, kind, block, uniforms) -> float:
    """The terms (exact products) summed in the stated order, each step rounded once to ``fmt``."""
    if kind == "pairwise":
        values = [_round(t, fmt, mode, uniforms) for t in terms]
        while len(values) > 1:
            merged = [_add_exact(values[t], values[t + 1], fmt, mode, uniforms) for t in range(0, len(values) - 1, 2)]
            values = merged + values[len(values) - len(values) % 2:]
        return values[0]
    total = None
    for start in range(0, len(terms), block):
        acc = _round(terms[start], fmt, mode, uniforms)
        for term in terms[start + 1:start + block]:
            acc = _add_exact(acc, term, fmt, mode, uniforms)
        total = acc if total is None else _add_exact(total, acc, fmt, mode, uniforms)
    return total


def dot(a, b, *, accumulate=FP32, inputs=None, output=None, mode: str = "nearest", order: str = "sequential",
        rng=None):
    """sum_k a_k * b_k of two 1-D arrays, accumulated as ``matmul`` does; returns a numpy scalar."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 1 or b.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"dot needs two 1-D arrays of the same length; got shapes {a.shape} and {b.shape}")
    return matmul(a[None, :], b[:, None], inputs=inputs, accumulate=accumulate, output=output, mode=mode,
                  order=order, rng=rng)[0, 0]


def sum(x, fmt=FP32, *, axis=None, mode: str = "nearest", order: str = "sequential", rng=None):
    """Sum of ``x`` (all of it, or along ``axis``) accumulated in ``fmt`` in the stated ``order``.

    The values of ``x`` are first rounded to ``fmt`` in ``mode`` (as the
    elementwise operations do), then summed as ``matmul`` sums products (here
    x_k * 1, exact).  Returns a numpy scalar for ``axis=None``.
    """
    fmt = get_format(fmt)
    array = np.asarray(x)
    if axis is None:
        rows = array.reshape(1, -1)
        shape = ()
    else:
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise ValueError(f"axis must be None or one integer axis, got {axis!r}")
        moved = np.moveaxis(array, axis, -1)
        shape = moved.shape[:-1]
        rows = moved.reshape(math.prod(shape), moved.shape[-1])
    ones = np.ones((rows.shape[1], 1))
    result = matmul(rows, ones, inputs=fmt, accumulate=fmt, mode=mode, order=order, rng=rng)
    result = result.reshape(shape)
    return result[()] if result.ndim == 0 else result
