"""The readable, exact rounding algorithm: Python integers and ``fractions.Fraction``.

This module is the specification of rounding in fpsim.  The fast kernel in
``fpsim._kernels`` must agree with it bit for bit; the tests hold one against the other.

For a real x != 0 and a format with precision p and minimum exponent emin:

1. e = floor(log2 |x|), the binade of x.
2. q = max(e, emin) - (p - 1), the exponent of the spacing (ulp) of the format at x.
   Below 2^emin the spacing stays 2^(emin - p + 1): that is what subnormals are.
3. |x| / 2^q = n + f with integer n and 0 <= f < 1: the two neighbours of |x| are
   n * 2^q and (n + 1) * 2^q.
4. The mode decides between them (see ``ROUNDING_MODES``); the exponent range is
   unbounded at this point, so the result may exceed ``max``.
5. Overflow: a result above ``max`` becomes inf or ``max`` depending on the mode,
   as IEEE 754 section 7.4 prescribes; an "fn" format has no inf and gives NaN
   unless ``saturate``; a "finite" format has neither and gives ``max``.

The unsigned E8M0 ("fnu") has no zero and no negative numbers: they give NaN,
and a positive result below its smallest value 2^emin becomes 2^emin.
"""

from __future__ import annotations

import math
from fractions import Fraction

from .formats import Format, get_format

ROUNDING_MODES = {
    "nearest": "the nearer neighbour; a tie goes to the one with an even significand (IEEE roundTiesToEven)",
    "nearest_away": "the nearer neighbour; a tie goes to the one of larger magnitude (IEEE roundTiesToAway)",
    "toward_zero": "the neighbour of smaller magnitude: the largest r with |r| <= |x| (IEEE roundTowardZero)",
    "up": "the smallest r >= x (IEEE roundTowardPositive)",
    "down": "the largest r <= x (IEEE roundTowardNegative)",
    "stochastic": "the upper neighbour with probability f (the distance to the lower one in ulps), "
                  "else the lower; unbiased: E[round(x)] = x",
}
"""Rounding modes and what each one computes."""

DETERMINISTIC_MODES = tuple(m for m in ROUNDING_MODES if m != "stochastic")


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is a known rounding mode, else raise ValueError listing them."""
    if mode not in ROUNDING_MODES:
        raise ValueError(f"unknown rounding mode {mode!r}: use one of {', '.join(ROUNDING_MODES)}")
    return mode


def parse_real(text: str) -> Fraction | float:
    """The exact value of a number written as text: a Fraction for "0.1", "-3e-6", "1/3"; a float for zeros, inf, nan.

    Going through ``float(text)`` would round the decimal to float64 first, and
    rounding that once more to a narrower format is a double rounding.
    """
    cleaned = text.strip().lower().lstrip("+")
    if cleaned.lstrip("-") in ("inf", "infinity", "nan"):
        return float(cleaned)
    try:
        value = Fraction(cleaned.replace("_", ""))
        if value == 0:
            return -0.0 if cleaned.startswith("-") else 0.0  # a Fraction has no -0
        return value
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"not a number: {text!r} (write a decimal such as 0.1 or -3e-6, a ratio such as "
                         "1/3, inf or nan)") from None


def floor_log2(a: Fraction) -> int:
    """floor(log2 a) for a rational a > 0, exactly."""
    e = a.numerator.bit_length() - a.denominator.bit_length()
    # 2^(e-1) < a < 2^(e+1) by the bit lengths; one comparison settles it.
    return e if a >= Fraction(2) ** e else e - 1


def rounds_up(n: int, f: Fraction, mode: str, negative: bool, uniform: Fraction | None = None) -> bool:
    """Whether |x| = (n + f) * 2^q rounds to (n + 1) * 2^q rather than n * 2^q."""
    if f == 0:
        return False
    if mode == "nearest":
        return f > Fraction(1, 2) or (f == Fraction(1, 2) and n % 2 == 1)
    if mode == "nearest_away":
        return f >= Fraction(1, 2)
    if mode == "toward_zero":
        return False
    if mode == "up":
        return not negative
    if mode == "down":
        return negative
    if mode == "stochastic":
        if uniform is None:
            raise ValueError("stochastic rounding needs a uniform number in [0, 1)")
        return uniform < f
    raise ValueError(check_mode(mode))


def overflow_result(negative: bool, fmt: Format, mode: str, saturate: bool) -> float:
    """The value of a result whose magnitude rounded above ``fmt.max`` (or an infinite input)."""
    to_infinity = mode in ("nearest", "nearest_away", "stochastic") or \
        (mode == "up" and not negative) or (mode == "down" and negative)
    if not to_infinity or saturate or not (fmt.has_infinity or fmt.has_nan):
        magnitude = fmt.max
    elif fmt.has_infinity:
        magnitude = math.inf
    else:
        return math.nan
    return -magnitude if negative else magnitude


def round_exact(x, fmt, mode: str = "nearest", *, saturate: bool = False,
                uniform: Fraction | None = None) -> float:
    """Round the exact value of ``x`` once to ``fmt``: the reference algorithm.

    ``x`` may be an int, a float (any finite value, inf, NaN, -0.0), a Fraction,
    or anything with ``as_integer_ratio`` (numpy floats, including longdouble).
    The result is returned as a Python float, which holds every value of every
    supported format exactly.  ``uniform`` is the random number in [0, 1) that
    decides a stochastic rounding.
    """
    fmt = get_format(fmt)
    check_mode(mode)
    if x != x:  # NaN
        return math.nan
    negative = x < 0 or (x == 0 and not isinstance(x, Fraction) and math.copysign(1.0, float(x)) < 0)
    if not fmt.signed and (negative or x == 0):
        return math.nan
    if x in (math.inf, -math.inf):
        if fmt.has_infinity and not saturate:
            return float(x)
        return overflow_result(negative, fmt, "nearest", saturate)
    if isinstance(x, Fraction):
        value = x
    else:
        value = Fraction(*x.as_integer_ratio()) if hasattr(x, "as_integer_ratio") else Fraction(x)
    if value == 0:
        return -0.0 if negative else 0.0

    a = abs(value)
    binade = floor_log2(a)
    if binade > fmt.emax:  # |x| >= 2^(emax+1) > max: no need to scale a huge number
        return overflow_result(negative, fmt, mode, saturate)
    q = max(binade, fmt.emin) - fmt.mantissa_bits
    scaled = a / Fraction(2) ** q
    n = math.floor(scaled)
    if rounds_up(n, scaled - n, mode, negative, uniform):
        n += 1
    result = Fraction(n) * Fraction(2) ** q

    if result > Fraction(fmt.max):
        return overflow_result(negative, fmt, mode, saturate)
    if not fmt.subnormals and result < Fraction(fmt.smallest_normal):
        result = Fraction(0) if fmt.signed else Fraction(fmt.smallest_normal)
    magnitude = float(result)
    return -magnitude if negative else magnitude


def round_sum_exact(x, y, fmt, mode: str = "nearest", *, uniform: Fraction | None = None) -> float:
    """x + y rounded once to ``fmt``, for floats or Fractions, with IEEE 754's special cases.

    inf + (-inf) and anything with NaN give NaN; inf + finite is inf.  An exact
    zero sum follows IEEE 754 section 6.3: two zeros of the same sign give that
    zero; any other exact zero (x + (-x), (+0) + (-0)) is +0, or -0 in mode "down".
    """
    special = [v for v in (x, y) if isinstance(v, float) and not math.isfinite(v)]
    if special:
        return round_exact(sum(special), fmt, mode)
    total = Fraction(x) + Fraction(y)
    if total == 0:
        if x == 0 and y == 0 and _sign_bit(x) == _sign_bit(y):
            return -0.0 if _sign_bit(x) else 0.0  # (+0) + (+0) = +0 and (-0) + (-0) = -0 in every mode
        return -0.0 if mode == "down" else 0.0
    return round_exact(total, fmt, mode, uniform=uniform)


def _sign_bit(v) -> bool:
    """Whether ``v`` is negative or -0.0 (a Fraction zero counts as +0)."""
    return v < 0 or (isinstance(v, float) and math.copysign(1.0, v) < 0)
