"""Bit patterns: ``encode``, ``decode``, ``fields`` and the human-readable ``describe``.

A code of a format with E exponent and M mantissa bits is
``sign << (E + M) | biased_exponent << M | mantissa``.  Its value is
``(-1)^sign * 2^(biased_exponent - bias) * (1 + mantissa / 2^M)`` for a normal
code, ``(-1)^sign * 2^emin * (mantissa / 2^M)`` for biased exponent 0, and a
special (inf / NaN) at the all-ones exponent as the format's ``specials`` say.
The unsigned E8M0 (``specials="fnu"``) has no sign bit and its biased exponent 0 is
the normal 2^-127.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import numpy as np

from .exact import WIDE, format_real, parse_real
from .formats import Format, get_format
from .rounding import round as round_to_format


def _nan_fields(fmt: Format) -> tuple[int, int]:
    """(biased exponent, mantissa) of the canonical NaN: quiet NaN for "ieee", all ones for "fn" and "fnu"."""
    top = (1 << fmt.exponent_bits) - 1
    if fmt.specials in ("fn", "fnu"):
        return top, (1 << fmt.mantissa_bits) - 1
    if fmt.specials == "finite":
        raise ValueError(f"{fmt.name} has no NaN code: every code of a 'finite' format is a number")
    if fmt.mantissa_bits == 0:
        raise ValueError(f"{fmt.name} has no NaN code: an 'ieee' format with 0 mantissa bits holds only +-inf "
                         "at the all-ones exponent")
    return top, 1 << (fmt.mantissa_bits - 1)


def fields(x, fmt, mode: str = "nearest", *, saturate: bool = False, rng=None):
    """Round ``x`` to ``fmt`` and return (sign, biased exponent, mantissa) as int64 arrays (scalars for a scalar)."""
    fmt = get_format(fmt)
    values = np.asarray(round_to_format(x, fmt, mode, saturate=saturate, rng=rng), dtype=np.float64)
    sign = np.signbit(values).astype(np.int64) if fmt.signed else np.zeros(values.shape, np.int64)
    magnitude = np.abs(values)
    fraction, exponent = np.frexp(magnitude)  # magnitude = fraction * 2^exponent, 0.5 <= fraction < 1
    normal = magnitude >= fmt.smallest_normal
    finite = np.isfinite(magnitude)
    with np.errstate(invalid="ignore", over="ignore"):
        normal_mantissa = np.ldexp(fraction, fmt.precision) - (1 << fmt.mantissa_bits)
        subnormal_mantissa = np.ldexp(magnitude, fmt.mantissa_bits - fmt.emin)
    biased = np.where(normal, exponent - 1 + fmt.bias, 0)
    mantissa = np.where(normal, normal_mantissa, subnormal_mantissa)
    top = (1 << fmt.exponent_bits) - 1
    biased = np.where(finite, biased, top)
    mantissa = np.where(np.isinf(magnitude), 0, mantissa)
    if np.isnan(magnitude).any():
        nan_exponent, nan_mantissa = _nan_fields(fmt)
        nan = np.isnan(magnitude)
        biased, mantissa = np.where(nan, nan_exponent, biased), np.where(nan, nan_mantissa, mantissa)
    result = (sign, np.asarray(biased, dtype=np.int64), np.asarray(mantissa, dtype=np.int64))
    return tuple(r[()] for r in result) if values.ndim == 0 else result


def encode(x, fmt, mode: str = "nearest", *, saturate: bool = False, rng=None):
    """Round ``x`` to ``fmt`` and return its bit patterns in ``fmt.code_dtype`` (uint8/16/32/64).

    For FP16, BF16, FP32, E4M3 and E5M2 the codes equal the hardware dtype's
    (``x.astype(np.float16).view(np.uint16)``, ...) except for NaN payloads.
    """
    fmt = get_format(fmt)
    codes = _join(fmt, *fields(x, fmt, mode, saturate=saturate, rng=rng))
    return codes[()] if codes.ndim == 0 else codes


def _join(fmt: Format, sign, biased, mantissa) -> np.ndarray:
    """Codes from fields: sign << (E + M) | biased << M | mantissa, in ``fmt.code_dtype``."""
    sign, biased, mantissa = (np.asarray(f, dtype=np.uint64) for f in (sign, biased, mantissa))
    codes = (sign << np.uint64(fmt.exponent_bits + fmt.mantissa_bits)) | (biased << np.uint64(fmt.mantissa_bits)) \
        | mantissa
    return codes.astype(fmt.code_dtype)


def decode(codes, fmt):
    """The float64 value of every code of ``fmt`` (subnormals, infinities and NaNs included).

    In a format with ``subnormals=False``, codes with biased exponent 0 decode to
    signed zero (flush-to-zero hardware treats such inputs the same way).
    """
    fmt = get_format(fmt)
    array = np.asarray(codes)
    if array.dtype.kind not in "iu":
        raise TypeError(f"decode needs integer codes, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or int(array.max()) >= 1 << fmt.bits):
        raise ValueError(f"codes of {fmt.name} lie in 0..2^{fmt.bits}-1")
    codes64 = array.astype(np.uint64)
    mantissa = (codes64 & np.uint64((1 << fmt.mantissa_bits) - 1)).astype(np.float64)
    biased = ((codes64 >> np.uint64(fmt.mantissa_bits)) & np.uint64((1 << fmt.exponent_bits) - 1)).astype(np.int64)
    negative = ((codes64 >> np.uint64(fmt.bits - 1)) == 1) & fmt.signed
    with np.errstate(over="ignore"):  # the all-ones exponent of 11-bit formats; replaced by inf/NaN below
        normal = np.ldexp(mantissa + (1 << fmt.mantissa_bits), biased - fmt.bias - fmt.mantissa_bits)
    # without subnormals, codes with biased exponent 0 read as zero (as flush-to-zero hardware reads them)
    subnormal = np.ldexp(mantissa, fmt.emin - fmt.mantissa_bits) if fmt.subnormals else np.zeros_like(mantissa)
    values = normal if fmt.specials == "fnu" else np.where(biased == 0, subnormal, normal)
    top = biased == (1 << fmt.exponent_bits) - 1
    if fmt.specials == "ieee":
        values = np.where(top, np.where(mantissa == 0, np.inf, np.nan), values)
    elif fmt.has_nan:
        values = np.where(top & (mantissa == (1 << fmt.mantissa_bits) - 1), np.nan, values)
    values = np.where(negative, -values, values)
    return values[()] if values.ndim == 0 else values


def classify(value: float, fmt: Format) -> str:
    """"zero", "subnormal", "normal", "inf" or "nan" for a value of ``fmt``."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf"
    if value == 0:
        return "zero"
    return "normal" if abs(value) >= fmt.smallest_normal else "subnormal"


def anatomy(value, fmt) -> str:
    """A value of ``fmt`` as its fields and their meaning, e.g. ``0 | 01111 | 0000000000  = 1.0  (normal, 2^0 x 1.0000000000b)``.

    ``value`` is rounded to ``fmt`` (nearest) first, so any number is accepted.
    """
    fmt = get_format(fmt)
    if np.ndim(value) != 0:
        raise ValueError("describe takes one scalar value")
    sign, biased, mantissa = (int(f) for f in fields(value, fmt))
    stored = float(decode(_join(fmt, sign, biased, mantissa), fmt))
    mantissa_text = format(mantissa, f"0{fmt.mantissa_bits}b") if fmt.mantissa_bits else ""
    bits = f"{sign} | " * fmt.signed + f"{biased:0{fmt.exponent_bits}b} | {mantissa_text}".rstrip()
    kind = classify(stored, fmt)
    if kind == "normal":
        meaning = f"normal, 2^{biased - fmt.bias} x 1.{mantissa_text}b"
    elif kind == "subnormal":
        meaning = f"subnormal, 2^{fmt.emin} x 0.{mantissa_text}b"
    else:
        meaning = kind
    return f"{bits}  = {stored!r}  ({meaning.rstrip('.')})"


def describe(x, fmt, mode: str = "nearest", *, rng=None) -> str:
    """One scalar as a learner reads it: ``x`` rounded to ``fmt``, its ``anatomy``, and the rounding error.

    ``x`` is a number, a Fraction, or text ("0.1", "-3e-6", "1/3", "inf"), which
    is taken at its exact decimal value and rounded once.

    >>> print(describe(1.0, "fp16"))
    0 | 01111 | 0000000000  = 1.0  (normal, 2^0 x 1.0000000000b)  exact
    """
    if np.ndim(x) != 0:
        raise ValueError("describe takes one scalar value")
    value = parse_real(x) if isinstance(x, str) else x
    stored = float(round_to_format(value, fmt, mode, rng=rng))
    shown = x.strip() if isinstance(x, str) else repr(float(x))
    return f"{anatomy(stored, fmt)}  {_rounding_error(value, stored, shown)}"


def _rounding_error(x, value: float, shown: str) -> str:
    """How far the stored ``value`` is from the input ``x`` (shown as ``shown``), exactly when both are finite."""
    if isinstance(x, (Decimal, Fraction)):  # a Decimal is beyond 2^+-BINADE_LIMIT (parse_real): never expanded
        exact_input = x
    elif math.isfinite(x):
        exact_input = Fraction(*x.as_integer_ratio()) if hasattr(x, "as_integer_ratio") else Fraction(x)
    else:
        same = (math.isnan(x) and math.isnan(value)) or x == value
        return "exact" if same else f"from {shown}"
    if not math.isfinite(value):
        return f"from {shown}"
    if isinstance(exact_input, Decimal):
        error = WIDE.subtract(Decimal(value), exact_input)
        relative = WIDE.divide(error, exact_input)
    else:
        error = Fraction(value) - exact_input
        relative = error / exact_input if exact_input else None
    if error == 0:
        return "exact"
    relative = f", relative {format_real(relative, '+.3g')}" if relative is not None else ""
    return f"error {format_real(error)} from {shown}{relative}"
