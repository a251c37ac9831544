"""Correctly rounded elementwise arithmetic in any format: add, sub, mul, div, sqrt, fma.

Each function broadcasts its operands as numpy does, first rounds every
operand that is not a value of ``fmt`` to ``fmt`` (in the same ``mode``), then
returns the exact result of the operation rounded ONCE to ``fmt`` in ``mode``.
IEEE 754 special cases hold: inf - inf, 0 * inf, 0 / 0, inf / inf and sqrt of
a negative number give NaN; x / 0 gives +-inf; an exact zero sum is +0, or -0
in mode "down" and for (-0) + (-0); zero products and quotients carry the
sign of the operands' product; sqrt(-0) is -0.

Why the fast paths are exact (p = fmt.precision):

* add, sub, fma: TwoSum gives the exact sum as s + e in float64; the
  round-to-odd value built from it rounds correctly to any p <= 51 in every
  mode (see ``fpsim.ops._reduction_kernels``).  fma's product a*b is exact in
  float64 when p <= 26 and the format's range keeps it inside float64's.
* mul: the product of two p-bit values has at most 2p <= 52 bits, so for
  p <= 26 the float64 product is exact and is rounded once.
* div, sqrt, p <= 25: an exact quotient or square root of p-bit values that
  is not itself a (p+1)-bit number (a value or a midpoint of the format)
  lies farther than 2^-(2p+2) (relative) from every such number, so with
  53 >= 2p + 2 the float64 result lies on the same side of them as the exact
  one and rounding it gives the same value in every deterministic mode
  (Figueroa, "When is double rounding innocuous?", 1995).

Other formats (p above those bounds, e.g. e8m30 or fp64, or exponent ranges
float64 cannot hold products or quotients of) use a slow exact evaluation
with ``fractions.Fraction`` and integer square roots, element by element.

Stochastic rounding (``rng``: Generator or int seed) draws one number per
operand rounding and one per result; the fast add/sub/fma paths take the
probability from the 53-bit round-to-odd value (off by < 2^-(53-p)).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from ..numerics.kernels import MODE_CODES
from . import _reduction_kernels as kernels
from ..numerics.exact import check_mode, floor_log2, round_exact, round_sum_exact
from ..numerics.formats import FP64, Format, get_format, widen_ml_dtypes
from .reductions import _products_exact_in
from ..numerics.rounding import as_generator, float64_params, random_key, stochastic_uniform
from ..numerics.rounding import round as round_to


def _operands(arrays, fmt: Format, mode: str, rng):
    """The operands rounded to ``fmt`` (float64, broadcast to one shape), the result dtype and scalar-ness."""
    converted = []
    for x in arrays:
        array = widen_ml_dtypes(np.asarray(x))
        if array.dtype.kind not in "fiub":
            raise TypeError(f"fpsim arithmetic needs real numbers; got dtype {array.dtype}")
        converted.append(array)
    scalar = all(a.ndim == 0 for a in converted)
    typed = [a for a, x in zip(converted, arrays) if not isinstance(x, (int, float))]  # Python numbers adapt
    all_float32 = bool(typed) and all(a.dtype == np.float32 for a in typed)
    dtype = np.float32 if (fmt.fits_float32 and all_float32) else np.float64
    rounded = [np.asarray(round_to(a, fmt, mode, rng=rng), dtype=np.float64) for a in converted]
    return np.broadcast_arrays(*rounded), dtype, scalar


def _finish(values: np.ndarray, shape, dtype, scalar: bool):
    out = values.reshape(shape).astype(dtype)
    return out[()] if scalar else out


def _key(mode: str, rng) -> int:
    """The stream key of a stochastic result rounding (see ``fpsim.numerics.kernels.splitmix63``), else 0."""
    return random_key(rng) if mode == "stochastic" else 0


def _float64_sums_fit(fmt: Format) -> bool:
    """Round-to-odd needs p + 2 <= 53; float64 must not overflow on a sum of two values of fmt."""
    return fmt.precision <= 51 and fmt.exponent_bits <= 10


def _quotients_fit(fmt: Format) -> bool:
    """p <= 25 and every quotient of two values of ``fmt`` a normal float64 (or 0, inf)."""
    top = fmt.emax + 1
    bottom = fmt.emin - fmt.mantissa_bits
    return fmt.precision <= 25 and top - bottom < 1023 and bottom - top > -1022


def _setup(fmt, mode, rng):
    fmt = get_format(fmt)
    return fmt, check_mode(mode), as_generator(rng)


def add(a, b, fmt, mode: str = "nearest", *, rng=None):
    """a + b rounded once to ``fmt`` (see the module docstring for the exact method and special cases)."""
    fmt, mode, rng = _setup(fmt, mode, rng)
    (x, y), dtype, scalar = _operands((a, b), fmt, mode, rng)
    return _finish(_add_rounded(x.ravel(), y.ravel(), fmt, mode, rng), x.shape, dtype, scalar)


def sub(a, b, fmt, mode: str = "nearest", *, rng=None):
    """a - b rounded once to ``fmt``: a + (-b), the negation being exact."""
    fmt, mode, rng = _setup(fmt, mode, rng)
    (x, y), dtype, scalar = _operands((a, b), fmt, mode, rng)
    return _finish(_add_rounded(x.ravel(), -y.ravel(), fmt, mode, rng), x.shape, dtype, scalar)


def _add_rounded(x, y, fmt, mode, rng):
    key = _key(mode, rng)
    if _float64_sums_fit(fmt):
        return kernels.add_arrays(np.ascontiguousarray(x), np.ascontiguousarray(y), float64_params(fmt),
                                  MODE_CODES[mode], key)
    return _exact_elementwise(_exact_add, (x, y), fmt, mode, key)


def _exact_add(x: float, y: float, fmt, mode, uniform) -> float:
    return round_sum_exact(x, y, fmt, mode, uniform=uniform)


def mul(a, b, fmt, mode: str = "nearest", *, rng=None):
    """a * b rounded once to ``fmt``."""
    fmt, mode, rng = _setup(fmt, mode, rng)
    (x, y), dtype, scalar = _operands((a, b), fmt, mode, rng)
    if _products_exact_in(fmt, fmt, FP64):
        with np.errstate(invalid="ignore"):  # 0 * inf is NaN, as IEEE 754 wants
            values = round_to(x.ravel() * y.ravel(), fmt, mode, rng=rng)
    else:
        values = _exact_elementwise(_exact_mul, (x.ravel(), y.ravel()), fmt, mode, _key(mode, rng))
    return _finish(values, x.shape, dtype, scalar)


def div(a, b, fmt, mode: str = "nearest", *, rng=None):
    """a / b rounded once to ``fmt``; x / 0 is +-inf (sign of x times sign of the zero), 0 / 0 NaN."""
    fmt, mode, rng = _setup(fmt, mode, rng)
    (x, y), dtype, scalar = _operands((a, b), fmt, mode, rng)
    if _quotients_fit(fmt):
        with np.errstate(divide="ignore", invalid="ignore"):
            quotient = x.ravel() / y.ravel()
        values = round_to(quotient, fmt, mode, rng=rng)
    else:
        values = _exact_elementwise(_exact_div, (x.ravel(), y.ravel()), fmt, mode, _key(mode, rng))
    return _finish(values, x.shape, dtype, scalar)


def sqrt(a, fmt, mode: str = "nearest", *, rng=None):
    """sqrt(a) rounded once to ``fmt``; sqrt(-0) = -0, sqrt of a negative number NaN."""
    fmt, mode, rng = _setup(fmt, mode, rng)
    (x,), dtype, scalar = _operands((a,), fmt, mode, rng)
    if fmt.precision <= 25:
        with np.errstate(invalid="ignore"):
            values = round_to(np.sqrt(x.ravel()), fmt, mode, rng=rng)
    else:
        values = _exact_elementwise(_exact_sqrt, (x.ravel(),), fmt, mode, _key(mode, rng))
    return _finish(values, x.shape, dtype, scalar)


def fma(a, b, c, fmt, mode: str = "nearest", *, rng=None):
    """a * b + c with ONE rounding to ``fmt`` (the fused multiply-add of IEEE 754).

    Rounding a*b + c computed in float64 would round twice and can be wrong
    even for FP16 (the exact value may need far more than 53 bits); here the
    product is exact and the sum goes through TwoSum and round-to-odd.
    """
    fmt, mode, rng = _setup(fmt, mode, rng)
    (x, y, z), dtype, scalar = _operands((a, b, c), fmt, mode, rng)
    key = _key(mode, rng)
    flat = [np.ascontiguousarray(v.ravel()) for v in (x, y, z)]
    if _products_exact_in(fmt, fmt, FP64) and _float64_sums_fit(fmt):
        values = kernels.fma_arrays(*flat, float64_params(fmt), MODE_CODES[mode], key)
    else:
        values = _exact_elementwise(_exact_fma, flat, fmt, mode, key)
    return _finish(values, x.shape, dtype, scalar)


# --- the slow exact path: one element at a time, in Fractions -------------------------------------------

def _exact_elementwise(operation, arrays, fmt, mode, key) -> np.ndarray:
    """``operation(*values, fmt, mode, uniform)`` for every element; floats in, float64 array out."""
    out = np.empty(arrays[0].size)
    for i, values in enumerate(zip(*(a.tolist() for a in arrays))):
        uniform = stochastic_uniform(key, i) if mode == "stochastic" else None
        out[i] = operation(*values, fmt, mode, uniform)
    return out


def _negative(x: float) -> bool:
    return math.copysign(1.0, x) < 0


def _exact_mul(x: float, y: float, fmt, mode, uniform) -> float:
    if not (math.isfinite(x) and math.isfinite(y)) or x == 0 or y == 0:
        return round_exact(x * y, fmt, mode)  # inf, NaN and signed zeros as IEEE float64 gives them
    return round_exact(Fraction(x) * Fraction(y), fmt, mode, uniform=uniform)


def _exact_div(x: float, y: float, fmt, mode, uniform) -> float:
    if math.isnan(x) or math.isnan(y) or (x == 0 and y == 0) or (math.isinf(x) and math.isinf(y)):
        return math.nan
    negative = _negative(x) != _negative(y)
    if y == 0 or math.isinf(x):
        return round_exact(-math.inf if negative else math.inf, fmt, mode)
    if x == 0 or math.isinf(y):
        return -0.0 if negative else 0.0
    return round_exact(Fraction(x) / Fraction(y), fmt, mode, uniform=uniform)


def _exact_sqrt(x: float, fmt, mode, uniform) -> float:
    if math.isnan(x) or x < 0:
        return math.nan
    if x == 0 or math.isinf(x):
        return round_exact(x, fmt, mode)
    value = Fraction(x)
    # sqrt(value) = sqrt(N) / 2^s with N = floor(value * 4^s); s is chosen so that isqrt(N) has
    # many more bits than fmt keeps (and a spacing far below the subnormal one), then the root is
    # replaced by root + 1/2 when it is not exact: a value strictly between the same neighbours.
    s = 2 * fmt.precision + 8 + max(0, fmt.mantissa_bits - fmt.emin) + max(0, -floor_log2(value))
    scaled = value * 4 ** s
    n = math.floor(scaled)
    root = math.isqrt(n)
    if root * root == scaled:
        return round_exact(Fraction(root, 1 << s), fmt, mode, uniform=uniform)
    return round_exact(Fraction(2 * root + 1, 1 << (s + 1)), fmt, mode, uniform=uniform)


def _exact_fma(x: float, y: float, z: float, fmt, mode, uniform) -> float:
    if not (math.isfinite(x) and math.isfinite(y)):
        return round_exact(x * y + z, fmt, mode)
    if not math.isfinite(z):
        return round_exact(z, fmt, mode)  # a finite product does not change inf or NaN
    product = Fraction(x) * Fraction(y)
    if product == 0:
        return round_sum_exact(x * y, z, fmt, mode, uniform=uniform)  # x * y is a signed zero, exact
    return round_sum_exact(product, z, fmt, mode, uniform=uniform)
