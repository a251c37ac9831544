"""The readable, exact rounding algorithm: Python integers and ``fractions.Fraction``.

This module is the specification of rounding in fpsim.  The fast kernel in
``fpsim.numerics.kernels`` must agree with it bit for bit; the tests hold one against the other.

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
import re
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal
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


BINADE_LIMIT = 1 << 16
"""Numbers written as text are expanded exactly only within 2^-BINADE_LIMIT .. 2^BINADE_LIMIT in magnitude.

Every format lies far inside (FP64 spans 2^-1074 .. 2^1024): a number beyond rounds as an
overflow or an underflow whatever its digits, so it is kept as an unexpanded ``Decimal``
and ``round_exact`` applies the mode's rule to it.  This bounds the work by the size of the text.
"""

MAX_DIGITS = 2000
"""Significant digits of a decimal kept exactly; further digits are replaced by one sticky digit 1.

The rounding is unchanged: between two consecutive numbers of MAX_DIGITS digits lies no
breakpoint of any format (its values, midpoints and the 2^-63 steps of stochastic rounding
have fewer than 1000 significant digits), and the cut number lies strictly between the same two.
"""

_MAX_EXPONENT_DIGITS = 17  # a decimal exponent longer than this is clamped to 10^17: beyond every limit alike
_DECIMAL = re.compile(r"(\d+(?:_\d+)*)?(?:\.(\d+(?:_\d+)*)?)?(?:e([-+]?\d+(?:_\d+)*))?")


def parse_real(text: str) -> Fraction | Decimal | float:
    """The exact value of a number written as text: a Fraction for "0.1", "-3e-6", "1/3"; a float for zeros, inf, nan.

    Going through ``float(text)`` would round the decimal to float64 first, and
    rounding that once more to a narrower format is a double rounding.  A decimal
    beyond 2^+-``BINADE_LIMIT`` comes back as a ``Decimal`` (its value, not expanded);
    one of more than ``MAX_DIGITS`` digits is cut with a sticky digit (same rounding).
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_real takes text, got {type(text).__name__}")
    cleaned = text.strip().lower()
    negative = cleaned.startswith("-")
    unsigned = cleaned[1:] if cleaned[:1] in "+-" else cleaned
    if unsigned in ("inf", "infinity", "nan"):
        return -float(unsigned) if negative else float(unsigned)
    if "/" in unsigned:
        value = _parse_ratio(text, unsigned)
    else:
        match = _DECIMAL.fullmatch(unsigned)
        if not match or not (match[1] or match[2]):
            raise ValueError(f"not a number: {text!r} (write a decimal such as 0.1 or -3e-6, a ratio such as "
                             "1/3, inf or nan)")
        whole, fraction, exponent = (part.replace("_", "") if part else "0" for part in match.groups())
        if len(exponent.lstrip("+-").lstrip("0")) > _MAX_EXPONENT_DIGITS:
            exponent = ("-1" if exponent.startswith("-") else "1") + "0" * _MAX_EXPONENT_DIGITS
        value = decimal_value(Decimal(f"{whole}.{fraction}e{int(exponent)}"))
    if value == 0:
        return -0.0 if negative else 0.0  # a Fraction has no -0
    if isinstance(value, Decimal):  # copy_negate: the operator would round to the decimal context
        return value.copy_negate() if negative else value
    return -value if negative else value


def _parse_ratio(text: str, unsigned: str) -> Fraction:
    parts = [parse_real(part) if part.strip()[:1] not in "+-" else None for part in unsigned.split("/")]
    if len(parts) != 2 or not all(isinstance(p, (Fraction, float)) and math.isfinite(p) for p in parts):
        raise ValueError(f"not a number: {text!r} (a ratio is two unsigned numbers within 2^+-{BINADE_LIMIT}, "
                         "such as 1/3)")
    if parts[1] == 0:
        raise ValueError(f"not a number: {text!r} divides by zero")
    return Fraction(parts[0]) / Fraction(parts[1])


def decimal_value(x: Decimal) -> Fraction | Decimal:
    """A finite Decimal as a Fraction when within 2^+-``BINADE_LIMIT`` (cut to ``MAX_DIGITS`` digits, with a
    sticky digit), else ``x`` itself; never expands a number beyond that range."""
    sign, digits, exponent = x.as_tuple()
    text = "".join(map(str, digits)).lstrip("0")
    significant = text.rstrip("0")
    if not significant:
        return Fraction(0)
    exponent += len(text) - len(significant)
    if _beyond(len(significant) - 1 + exponent):
        return x
    if len(significant) > MAX_DIGITS:
        exponent += len(significant) - MAX_DIGITS - 1
        significant = significant[:MAX_DIGITS] + "1"
    value = Fraction(int(significant)) * Fraction(10) ** exponent
    return -value if sign else value


def _beyond(adjusted: int) -> int:
    """+1 if 10^adjusted <= |x| < 10^(adjusted+1) lies above 2^BINADE_LIMIT, -1 below 2^-BINADE_LIMIT, else 0."""
    if adjusted * math.log2(10) > BINADE_LIMIT:
        return 1
    return -1 if (adjusted + 1) * math.log2(10) < -BINADE_LIMIT else 0


WIDE = Context(prec=50, Emax=MAX_EMAX, Emin=MIN_EMIN)
"""Decimal arithmetic on numbers kept as Decimals (beyond 2^+-``BINADE_LIMIT``): 50 digits, any exponent."""


def format_real(x: Fraction | Decimal | float, spec: str = "+.6g") -> str:
    """``x`` formatted with the float format ``spec``; a value a float cannot hold (1e-400, 1e999) keeps its
    own magnitude instead of showing as 0 or inf."""
    try:
        as_float = float(x)
    except OverflowError:
        as_float = math.inf
    if (math.isfinite(as_float) and (as_float != 0 or x == 0)) or x != x or x in (math.inf, -math.inf):
        return format(as_float, spec)
    if isinstance(x, Fraction):
        x = WIDE.divide(Decimal(x.numerator), Decimal(x.denominator))
    digits = int(re.search(r"\.(\d+)", spec)[1]) if "." in spec else 6
    return format(Context(prec=digits, Emax=MAX_EMAX, Emin=MIN_EMIN).normalize(x), spec)


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

    ``x`` may be an int, a float (any finite value, inf, NaN, -0.0), a Fraction, a Decimal
    (of any exponent: one beyond 2^+-``BINADE_LIMIT`` is not expanded), or anything with ``as_integer_ratio`` (numpy floats, including longdouble).
    The result is returned as a Python float, which holds every value of every
    supported format exactly.  ``uniform`` is the random number in [0, 1) that
    decides a stochastic rounding.
    """
    fmt = get_format(fmt)
    check_mode(mode)
    if isinstance(x, Decimal):
        if not x.is_finite() or x == 0:
            x = float(x)
        else:
            x = decimal_value(x)
            if isinstance(x, Decimal):  # beyond every format's range: the mode's rule, without expanding it
                if x.copy_abs() > 1:
                    return overflow_result(x < 0, fmt, mode, saturate)
                # a stand-in 2^64 times below the smallest subnormal rounds as x does in every mode
                x = Fraction(-1 if x < 0 else 1, 1 << (fmt.mantissa_bits - fmt.emin + 64))
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
