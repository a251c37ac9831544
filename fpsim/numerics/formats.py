"""Binary floating-point formats as small frozen value objects.

A format with ``E`` exponent bits and ``M`` mantissa (trailing significand) bits
stores ``1 + E + M`` bits: sign, biased exponent, mantissa.  A normal value is
``(-1)^s * 2^(e - bias) * (1 + m / 2^M)`` and a subnormal one (biased exponent 0)
``(-1)^s * 2^emin * (m / 2^M)``.  Everything that follows from ``E``, ``M`` and the
treatment of specials is a property, not stored state; the names follow numpy's
``finfo`` (``eps``, ``max``, ``smallest_normal``, ``smallest_subnormal``, ``bits``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import ml_dtypes
import numpy as np

SPECIALS = ("ieee", "fn", "finite", "fnu")
"""How the all-ones exponent is used.

``"ieee"``: +-inf (mantissa 0) and NaN (any other mantissa), as IEEE 754.
``"fn"``: finite values only, no infinities; NaN is the single all-ones code
(exponent and mantissa), as OCP FP8 E4M3 ("fn" = finite, NaN).
``"finite"``: every code is a finite value, no infinities and no NaN, as the OCP
Microscaling (MX v1.0) FP6 and FP4 elements E3M2, E2M3, E2M1: a value beyond ``max``
saturates to +-max (there is nothing else to give, as ml_dtypes' ``float6_e3m2fn``).
``"fnu"``: unsigned powers of two, as the MX scale E8M0 (ml_dtypes' ``float8_e8m0fnu``):
no sign bit, no zero, no subnormals; biased exponent 0 is the binade 2^-bias and the
all-ones code is NaN.  Zero, negative numbers and overflows give NaN; positive values
below 2^-bias give 2^-bias, the nearest value there is.  Needs ``mantissa_bits=0``.
"""


@dataclass(frozen=True, repr=False)
class Format:
    """A binary floating-point format."""

    name: str
    """Short name used in tables and reports, e.g. ``"fp16"``."""
    exponent_bits: int
    """Number of exponent bits, E (2..11)."""
    mantissa_bits: int
    """Number of stored significand bits, M, without the implicit leading bit (0..52)."""
    subnormals: bool = True
    """Whether values below ``smallest_normal`` can be subnormal; if False they flush to signed zero."""
    specials: str = "ieee"
    """Use of the all-ones exponent: ``"ieee"`` (inf and NaN), ``"fn"`` (finite, one NaN code),
    ``"finite"`` (no inf, no NaN) or ``"fnu"`` (unsigned exponent-only scale); see ``SPECIALS``."""

    def __post_init__(self):
        for field_name in ("exponent_bits", "mantissa_bits"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{field_name} must be an integer, got {value!r}")
            object.__setattr__(self, field_name, int(value))  # numpy integers become Python ints
        if not 2 <= self.exponent_bits <= 11:
            raise ValueError(f"exponent_bits must be in 2..11, got {self.exponent_bits}")
        if not 0 <= self.mantissa_bits <= 52:
            raise ValueError(f"mantissa_bits must be in 0..52, got {self.mantissa_bits}")
        if self.specials not in SPECIALS:
            raise ValueError(f"specials must be one of {', '.join(SPECIALS)}, got {self.specials!r}")
        if not isinstance(self.subnormals, (bool, np.bool_)):
            raise ValueError(f"subnormals must be True or False, got {self.subnormals!r}")
        object.__setattr__(self, "subnormals", bool(self.subnormals))
        if self.specials == "fn" and self.exponent_bits == 11 and self.mantissa_bits > 0:
            raise ValueError("an 'fn' format with 11 exponent bits keeps finite values in the binade "
                             "[2^1024, 2^1025), beyond float64's range: use at most 10 exponent bits "
                             "with specials='fn', or mantissa_bits=0")
        if self.specials == "finite" and self.exponent_bits == 11:
            raise ValueError("a 'finite' format with 11 exponent bits has values at 2^1024 and above, beyond "
                             "float64's range: use at most 10 exponent bits with specials='finite'")
        if self.specials == "fnu" and (self.mantissa_bits != 0 or self.subnormals):
            raise ValueError("specials='fnu' is an exponent-only scale format without zero or subnormals: "
                             "use mantissa_bits=0 and subnormals=False")

    # --- encoding layout -------------------------------------------------
    @property
    def signed(self) -> bool:
        """Whether codes have a sign bit (all but the unsigned ``"fnu"`` formats)."""
        return self.specials != "fnu"

    @property
    def bits(self) -> int:
        """Total storage bits: 1 + E + M (E + M without a sign bit)."""
        return int(self.signed) + self.exponent_bits + self.mantissa_bits

    @property
    def bias(self) -> int:
        """Exponent bias, 2^(E-1) - 1."""
        return (1 << (self.exponent_bits - 1)) - 1

    @property
    def precision(self) -> int:
        """Significand bits including the implicit leading bit: M + 1."""
        return self.mantissa_bits + 1

    @property
    def _top_binade_is_finite(self) -> bool:
        # An "fn" format keeps finite values at the all-ones exponent, except the
        # all-ones mantissa (NaN); with M = 0 that binade holds nothing but NaN.
        return (self.specials == "fn" and self.mantissa_bits > 0) or self.specials == "finite"

    # --- range -----------------------------------------------------------
    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number: 1 - bias (-bias for "fnu", whose exponent field 0 is a binade)."""
        return -self.bias if self.specials == "fnu" else 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest finite number."""
        top = (1 << self.exponent_bits) - 1
        return top - self.bias if self._top_binade_is_finite else top - 1 - self.bias

    @property
    def max_significand(self) -> int:
        """Integer significand of ``max`` in units of 2^(emax - M): 2^(M+1) - 1, or 2^(M+1) - 2 for "fn" (NaN)."""
        return (1 << self.precision) - (2 if self._top_binade_is_finite and self.specials == "fn" else 1)

    @property
    def max(self) -> float:
        """Largest finite value."""
        return math.ldexp(self.max_significand, self.emax - self.mantissa_bits)

    @property
    def smallest_normal(self) -> float:
        """Smallest positive normal value: 2^emin."""
        return math.ldexp(1.0, self.emin)

    @property
    def smallest_subnormal(self) -> float:
        """Smallest positive value: 2^(emin - M), or ``smallest_normal`` without subnormals."""
        return math.ldexp(1.0, self.emin - self.mantissa_bits) if self.subnormals else self.smallest_normal

    @property
    def eps(self) -> float:
        """Distance from 1.0 to the next larger value: 2^-M."""
        return math.ldexp(1.0, -self.mantissa_bits)

    @property
    def has_infinity(self) -> bool:
        """Whether +-inf are values of the format (only for ``"ieee"``)."""
        return self.specials == "ieee"

    @property
    def has_nan(self) -> bool:
        """Whether the format has a NaN code (not "finite"; not "ieee" with M = 0, whose top binade is +-inf only)."""
        return self.specials in ("fn", "fnu") or (self.specials == "ieee" and self.mantissa_bits > 0)

    @property
    def decimal_digits(self) -> float:
        """Decimal digits of precision: (M + 1) * log10(2)."""
        return self.precision * math.log10(2)

    @property
    def dynamic_range_binades(self) -> float:
        """log2(max / smallest_subnormal): the number of binades the finite positive values span."""
        return math.log2(self.max) - math.log2(self.smallest_subnormal)

    # --- relations to machine types ---------------------------------------
    @property
    def fits_float32(self) -> bool:
        """True when every value of the format is exactly a float32."""
        return (self.precision <= 24 and self.emax <= 127
                and math.log2(self.smallest_subnormal) >= -149)

    @property
    def code_dtype(self) -> np.dtype:
        """Smallest unsigned integer dtype that holds a code."""
        for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
            if np.dtype(dtype).itemsize * 8 >= self.bits:
                return np.dtype(dtype)
        raise AssertionError("unreachable: bits <= 64")

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        extras = ("" if self.subnormals else ", subnormals=False") + \
            ("" if self.specials == "ieee" else f", specials={self.specials!r}")
        return f"Format({self.name!r}, {self.exponent_bits}, {self.mantissa_bits}{extras})"


FP64 = Format("fp64", 11, 52)
FP32 = Format("fp32", 8, 23)
TF32 = Format("tf32", 8, 10)
FP16 = Format("fp16", 5, 10)
BF16 = Format("bf16", 8, 7)
E4M3 = Format("e4m3", 4, 3, specials="fn")
E5M2 = Format("e5m2", 5, 2)
E3M2 = Format("e3m2", 3, 2, specials="finite")
E2M3 = Format("e2m3", 2, 3, specials="finite")
E2M1 = Format("e2m1", 2, 1, specials="finite")
E8M0 = Format("e8m0", 8, 0, subnormals=False, specials="fnu")

FORMATS: dict[str, Format] = {f.name: f for f in (FP32, TF32, FP16, BF16, E4M3, E5M2, E3M2, E2M3, E2M1, E8M0, FP64)}
"""The built-in formats by canonical name."""

ALIASES: dict[str, Format] = {
    **FORMATS,
    "half": FP16, "float16": FP16, "binary16": FP16,
    "bfloat16": BF16,
    "float32": FP32, "single": FP32, "binary32": FP32,
    "float64": FP64, "double": FP64, "binary64": FP64,
    "fp8_e4m3": E4M3, "float8_e4m3fn": E4M3,
    "fp8_e5m2": E5M2, "float8_e5m2": E5M2,
    "fp6_e3m2": E3M2, "float6_e3m2fn": E3M2, "fp6_e2m3": E2M3, "float6_e2m3fn": E2M3,
    "fp4_e2m1": E2M1, "float4_e2m1fn": E2M1, "ue8m0": E8M0, "float8_e8m0fnu": E8M0,
}

HARDWARE_DTYPES: dict[str, np.dtype] = {
    "fp64": np.dtype(np.float64),
    "fp32": np.dtype(np.float32),
    "fp16": np.dtype(np.float16),
    "bf16": np.dtype(ml_dtypes.bfloat16),
    "e4m3": np.dtype(ml_dtypes.float8_e4m3fn),
    "e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "e3m2": np.dtype(ml_dtypes.float6_e3m2fn),
    "e2m3": np.dtype(ml_dtypes.float6_e2m3fn),
    "e2m1": np.dtype(ml_dtypes.float4_e2m1fn),
    "e8m0": np.dtype(ml_dtypes.float8_e8m0fnu),
}
"""numpy / ml_dtypes dtype whose bit layout equals the built-in format's.

ml_dtypes converts NaN to -0 in the formats without NaN (E3M2, E2M3, E2M1); fpsim keeps NaN."""


def widen_ml_dtypes(array: np.ndarray) -> np.ndarray:
    """``array`` as float64 if its dtype is one of ml_dtypes' (bfloat16, the float8s, int4, ...), else unchanged.

    numpy reports those dtypes as kind 'V' (void), which fpsim's checks for real
    numbers would reject; every value of each is a float64, so the cast is exact.
    """
    if array.dtype.kind == "V" and array.dtype.type.__module__.split(".")[0] == "ml_dtypes":
        return array.astype(np.float64)
    return array


_EXMY = re.compile(r"^e(\d+)m(\d+)(fn)?$")


def get_format(spec) -> Format:
    """Return the Format named by ``spec``.

    Accepts a Format; a name or alias (case-insensitive, see ``ALIASES``); an
    ``"eXmY"`` string such as ``"e6m9"`` (``"eXmYfn"`` for the finite-NaN variant;
    the built-in names come first: ``"e4m3"``, ``"e3m2"``, ``"e2m3"``, ``"e2m1"`` and
    ``"e8m0"`` are the OCP formats); or a dtype of ``HARDWARE_DTYPES`` (``np.float16``,
    ``np.float32``, ``np.float64``, ``ml_dtypes.bfloat16``, ``ml_dtypes.float8_e4m3fn``, ...).
    """
    if isinstance(spec, Format):
        return spec
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in ALIASES:
            return ALIASES[key]
        match = _EXMY.match(key)
        if match:
            e, m, fn = int(match[1]), int(match[2]), bool(match[3])
            for known in FORMATS.values():
                if (known.exponent_bits, known.mantissa_bits, known.specials) == (e, m, "fn" if fn else "ieee"):
                    return known
            return Format(key, e, m, specials="fn" if fn else "ieee")
    elif isinstance(spec, (type, np.dtype)):
        for name, hardware in HARDWARE_DTYPES.items():
            if np.dtype(spec) == hardware:
                return FORMATS[name]
    known = ", ".join(sorted(ALIASES))
    raise ValueError(
        f"unknown format {spec!r}: use one of {known}; an 'eXmY' string such as 'e6m9' "
        f"(2 <= X <= 11, 0 <= Y <= 52); a dtype; or a fpsim.Format")
