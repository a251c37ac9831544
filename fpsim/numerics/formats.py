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
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np

from .checks import is_integer

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
    """A binary floating-point format.

    Two formats are equal (and hash alike) when they define the same values and codes:
    the same exponent bits, mantissa bits, subnormals and specials, whatever their names.
    """

    name: str = field(compare=False)
    """Short name used in tables and reports, e.g. ``"fp16"``; not part of the definition."""
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
            if not is_integer(value):
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

ML_DTYPES_NAMES: dict[str, Format] = {
    "bfloat16": BF16,
    "float8_e4m3fn": E4M3, "float8_e5m2": E5M2,
    "float8_e4m3": Format("float8_e4m3", 4, 3), "float8_e3m4": Format("float8_e3m4", 3, 4),
    "float6_e3m2fn": E3M2, "float6_e2m3fn": E2M3, "float4_e2m1fn": E2M1, "float8_e8m0fnu": E8M0,
}
"""ml_dtypes' dtypes that fpsim models, by ml_dtypes' name: each is exactly that dtype.

``"float8_e4m3"`` is ml_dtypes' IEEE-style E4M3 (bias 7, +-inf, max 240), not fpsim's
``"e4m3"`` (OCP's E4M3, ``float8_e4m3fn``, max 448)."""

UNMODELLED_ML_DTYPES: dict[str, str] = {
    "float8_e4m3fnuz": "its NaN is the negative-zero code and its exponent bias is 8",
    "float8_e5m2fnuz": "its NaN is the negative-zero code and its exponent bias is 16",
    "float8_e4m3b11fnuz": "its NaN is the negative-zero code and its exponent bias is 11",
    "float8_e5m3fnu": "it is unsigned with a mantissa (fpsim's unsigned formats are exponent-only scales)",
}
"""ml_dtypes' dtypes that no ``Format`` describes, with the reason (named in the error ``get_format`` gives)."""

ALIASES: dict[str, Format] = {
    **FORMATS, **ML_DTYPES_NAMES,
    "half": FP16, "float16": FP16, "binary16": FP16,
    "float32": FP32, "single": FP32, "binary32": FP32,
    "float64": FP64, "double": FP64, "binary64": FP64,
    "fp8_e4m3": E4M3, "fp8_e5m2": E5M2, "fp6_e3m2": E3M2, "fp6_e2m3": E2M3, "fp4_e2m1": E2M1, "ue8m0": E8M0,
}
"""Every name ``get_format`` accepts besides the ``eXmY[fn|fnu]`` strings (see ``get_format``)."""

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


_EXMY = re.compile(r"^e(\d+)m(\d+)(fn|fnu|fnuz)?$")

NAN_CODE_MIN_BITS = 8
"""An ``"eXmYfn"`` format of at least this many bits has a NaN code (ml_dtypes' and OCP's 8-bit ``fn``
formats), a narrower one has none (ml_dtypes' and OCP MX's ``float6_e3m2fn``, ``float6_e2m3fn``,
``float4_e2m1fn``)."""


def get_format(spec) -> Format:
    """Return the Format named by ``spec``.

    Accepts a Format; a name of ``ALIASES`` (case-insensitive): the built-in names, the
    ml_dtypes and numpy dtype names that fpsim models (``ML_DTYPES_NAMES``: exactly that
    dtype), and a few aliases; a dtype of those (``np.float16``, ``ml_dtypes.bfloat16``,
    ``ml_dtypes.float8_e4m3fn``, ...); or a string ``"eXmY"`` with X exponent and Y mantissa
    bits, written without leading zeros, and a suffix meaning what it means in ml_dtypes:

    * none: the built-in format of that name (``e4m3``, ``e5m2``, ``e3m2``, ``e2m3``, ``e2m1``,
      ``e8m0``: the OCP FP8 and MX formats), else IEEE-style (+-inf, NaN): ``"e6m9"``;
    * ``fn``: finite, no infinities; the all-ones code is NaN in formats of 8 bits or more
      (``e4m3fn`` = ``float8_e4m3fn``, max 448), and there is no NaN in narrower ones
      (``e3m2fn`` = ``float6_e3m2fn``, max 28; ``e2m3fn``; ``e2m1fn`` = ``float4_e2m1fn``);
    * ``fnu``: finite and unsigned, fpsim's exponent-only scales ``"eXm0fnu"`` (``e8m0fnu`` =
      ``float8_e8m0fnu``).

    ``fnuz`` formats (NaN at the negative-zero code) are not modelled and are refused, as
    are ml_dtypes' dtypes of ``UNMODELLED_ML_DTYPES``.  A format equal to a built-in one is
    returned as that one (``"e5m10"`` is ``FP16``).
    """
    if isinstance(spec, Format):
        return spec
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in ALIASES:
            return ALIASES[key]
        if key in UNMODELLED_ML_DTYPES:
            raise ValueError(f"fpsim does not model ml_dtypes' {key}: {UNMODELLED_ML_DTYPES[key]}")
        match = _EXMY.match(key)
        if match:
            return _exmy_format(key, match[1], match[2], match[3])
    elif isinstance(spec, (type, np.dtype)):
        try:
            name = np.dtype(spec).name
        except TypeError:
            name = None
        if name in ALIASES:  # float16, float32, float64 and ML_DTYPES_NAMES
            return ALIASES[name]
        if name in UNMODELLED_ML_DTYPES:
            raise ValueError(f"fpsim does not model ml_dtypes' {name}: {UNMODELLED_ML_DTYPES[name]}")
    known = ", ".join(sorted(ALIASES))
    raise ValueError(
        f"unknown format {spec!r}: use one of {known}; an 'eXmY' string such as 'e6m9' "
        f"(2 <= X <= 11, 0 <= Y <= 52; suffix 'fn' for finite, 'fnu' for an unsigned eXm0 scale); "
        f"a dtype; or a fpsim.Format")


def _exmy_format(key: str, exponent: str, mantissa: str, suffix: str | None) -> Format:
    """The format of an ``"eXmY[suffix]"`` name (see ``get_format``): a built-in one if it equals one."""
    e, m = int(exponent), int(mantissa)
    if exponent != str(e) or mantissa != str(m):
        raise ValueError(f"format names are written without leading zeros: write "
                         f"'e{e}m{m}{suffix or ''}', not {key!r}")
    if suffix == "fnuz":
        raise ValueError(f"fpsim does not model 'fnuz' formats such as {key!r} (NaN at the negative-zero code, "
                         f"no -0, another exponent bias): use 'e{e}m{m}fn' or a fpsim.Format")
    if suffix == "fnu" and m != 0:
        raise ValueError(f"fpsim's unsigned 'fnu' formats are exponent-only scales: write 'e{e}m0fnu' "
                         f"(such as 'e8m0fnu'), not {key!r}")
    if suffix == "fnu":
        fmt = Format(key, e, 0, subnormals=False, specials="fnu")
    elif suffix == "fn":
        fmt = Format(key, e, m, specials="fn" if 1 + e + m >= NAN_CODE_MIN_BITS else "finite")
    else:  # the bare built-in names (e4m3, ...) are ALIASES, found before this
        fmt = Format(key, e, m)
    return next((known for known in FORMATS.values() if known == fmt), fmt)
