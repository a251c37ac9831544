"""Checks of the plain numbers every layer takes (format widths, axes, block sizes, learning rates, counts).

The predicates (``is_integer``, ``is_finite_number``) say whether a value is one;
the checks return it in its canonical Python type (``float`` or ``int``) or raise a
one-line ``ValueError`` that names the option and what it must be.  Numpy scalars
count as the numbers they hold (``np.int64(3)`` is an integer); a bool is not a number.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

_FP32 = np.finfo(np.float32)  # not fpsim's FP32: the formats module imports these checks


def is_integer(value) -> bool:
    """Whether ``value`` is an integer, Python or numpy (not a bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    """Whether ``value`` is a finite real number, Python or numpy (not a bool, not a string, not inf/NaN)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def positive_number(name: str, value) -> float:
    """``value`` as a float if it is a finite number > 0."""
    if not (is_finite_number(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def positive_fp32_number(name: str, value) -> float:
    """``value`` as a float if it is a positive number FP32 holds: 2^-149 (its smallest subnormal) <= value <=
    FP32 max (about 3.4e38), so that an engine computing in FP32 sees neither 0 nor inf."""
    low, high = float(_FP32.smallest_subnormal), float(_FP32.max)
    if not (is_finite_number(value) and low <= value <= high):
        raise ValueError(f"{name} must be a positive finite number within FP32's range [{low:.3g}, {high:.3g}], "
                         f"got {value!r}")
    return float(value)


def number_in(name: str, value, low: float, high: float) -> float:
    """``value`` as a float if it lies in [low, high)."""
    if not (is_finite_number(value) and low <= value < high):
        raise ValueError(f"{name} must be a number in [{low:g}, {high:g}), got {value!r}")
    return float(value)


def integer(name: str, value, minimum: int) -> int:
    """``value`` as an int if it is an integer (Python or numpy) >= ``minimum``."""
    if not is_integer(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
