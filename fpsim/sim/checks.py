"""Checks of the plain numbers a configuration holds (learning rates, scales, factors)."""

from __future__ import annotations

import math


def is_finite_number(value) -> bool:
    """Whether ``value`` is a finite Python ``int`` or ``float`` (not a bool, not a string, not inf/NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
