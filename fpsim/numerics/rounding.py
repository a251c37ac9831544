"""``fpsim.round``: round values once, from their exact value, to any format in any mode."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

import numpy as np

from . import kernels
from .threads import threads_for
from .exact import check_mode, round_exact
from .formats import Format, get_format, widen_ml_dtypes

_EXACT_INT_LIMIT = 1 << 53  # integers up to this magnitude are exact in float64
PARALLEL_MIN_ELEMENTS = 1 << 18
"""Arrays with fewer elements are rounded on one thread (the pool's wake-up costs more)."""


@dataclass(frozen=True)
class KernelParams:
    """A format's constants as bit patterns of one input layout (float32 or float64)."""

    total_bits: int
    mant_in: int
    bias_in: int
    p: int
    emin: int
    quantum: int
    max_bits: int
    normal_bits: int
    nan_bits: int
    fn_nan: bool
    float_type: type
    subnormals: bool
    unsigned: bool
    saturates: bool
    """The format has neither inf nor NaN ("finite"): an overflow always gives +-max."""

    @classmethod
    def of(cls, fmt: Format, dtype) -> "KernelParams":
        dtype = np.dtype(dtype)
        int_dtype = np.uint32 if dtype == np.float32 else np.int64
        finfo = np.finfo(dtype)

        def bits_of(value: float) -> int:
            return int(np.array(value, dtype=dtype).view(int_dtype))

        return cls(total_bits=finfo.bits, mant_in=finfo.nmant, bias_in=finfo.maxexp - 1,
                   p=fmt.precision, emin=fmt.emin,
                   quantum=bits_of(math.ldexp(1.0, fmt.emin - fmt.mantissa_bits)),
                   max_bits=bits_of(fmt.max), normal_bits=bits_of(fmt.smallest_normal),
                   nan_bits=bits_of(np.nan), fn_nan=not fmt.has_infinity, float_type=dtype.type,
                   subnormals=fmt.subnormals, unsigned=not fmt.signed,
                   saturates=not (fmt.has_infinity or fmt.has_nan))

    @property
    def dropped_bits(self) -> int:
        """k = mant_in + 1 - p: the input's significand bits below the target's last one, for normal results."""
        return self.mant_in + 1 - self.p

    def nearest_args(self, saturate: bool = False) -> tuple:
        """The ``nearest`` tuple of ``fpsim.numerics.kernels.round_nearest_branchless``
        (needs ``dropped_bits >= 1``)."""
        inf_bits = ((1 << (self.total_bits - 1 - self.mant_in)) - 1) << self.mant_in
        overflow_bits = self.max_bits if saturate or self.saturates else (self.nan_bits if self.fn_nan else inf_bits)
        shifter = self.float_type(math.ldexp(1.5, self.emin - self.p + 1 + self.mant_in))
        return (self.total_bits, self.mant_in, self.dropped_bits, shifter, self.normal_bits, self.max_bits,
                inf_bits, overflow_bits, self.nan_bits, not self.subnormals, self.unsigned)


def float64_params(fmt, saturate: bool = False) -> tuple:
    """The ``params`` tuple that ``fpsim.numerics.kernels.round_float64`` takes, for rounding float64 scalars
    to ``fmt``."""
    fmt = get_format(fmt)
    k = kernel_params(fmt, np.float64)
    return (k.p, k.emin, k.quantum, k.max_bits, k.normal_bits, k.nan_bits, k.fn_nan, bool(saturate or k.saturates),
            bool(fmt.subnormals), k.unsigned)


_PARAMS_CACHE: dict[tuple[Format, str], KernelParams] = {}


def kernel_params(fmt: Format, dtype) -> KernelParams:
    """Cached ``KernelParams.of``."""
    key = (fmt, np.dtype(dtype).str)
    if key not in _PARAMS_CACHE:
        _PARAMS_CACHE[key] = KernelParams.of(fmt, dtype)
    return _PARAMS_CACHE[key]


def as_generator(rng) -> np.random.Generator | None:
    """``rng`` as a numpy Generator: a Generator as it is, an int seed through ``np.random.default_rng``, None as None.

    An operation converts its ``rng`` once, so that all its roundings draw from one stream
    (distinct numbers, not the same seed restarted); ``random_key`` refuses None.
    """
    if rng is None or isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def random_key(rng) -> int:
    """One stream key in [0, 2^63) drawn from ``rng`` (a numpy Generator or an int seed); see ``fpsim.numerics.kernels.splitmix63``."""
    if rng is None:
        raise ValueError("stochastic rounding needs rng: a numpy Generator or an integer seed")
    return int(as_generator(rng).integers(0, np.iinfo(np.int64).max, endpoint=True))


def stochastic_uniform(key: int, index: int) -> Fraction:
    """The uniform number u in [0, 1) of position ``index`` in the stream ``key``: splitmix63(key, index) / 2^63.

    It is the number the kernels draw for that rounding, as the exact Fraction that
    ``fpsim.numerics.exact.round_exact(..., uniform=u)`` takes, so that the slow exact
    paths round stochastically exactly as the kernels do.
    """
    return Fraction(int(kernels.splitmix63(key, index)), 1 << 63)


def _as_float_array(x) -> tuple[np.ndarray, np.ndarray | None]:
    """Convert input to a float32 or float64 array holding its exact values.

    Returns the array and, where some elements cannot be held exactly (integers
    beyond 2^53, long doubles), an object array of those exact inputs (else None).
    """
    if (isinstance(x, int) and not isinstance(x, bool) and abs(x) > _EXACT_INT_LIMIT) or \
            isinstance(x, (Fraction, Decimal)):
        return np.array(float("nan")), np.array(x, dtype=object)
    array = widen_ml_dtypes(np.asarray(x))
    if array.dtype == object:  # a list holding ints beyond int64, Fractions or Decimals
        return _python_numbers(array)
    if not array.dtype.isnative:  # big-endian data: the kernels read native bit patterns
        array = array.astype(array.dtype.newbyteorder("="))
    kind = array.dtype.kind
    if kind in "cOSUVMm" or array.dtype.fields is not None:
        raise TypeError(f"fpsim.round needs real numbers (float or int arrays); got dtype {array.dtype}")
    if array.dtype == np.float32 or array.dtype == np.float64:
        return array, None
    if kind == "f" and array.dtype.itemsize <= 4:  # float16
        return array.astype(np.float64), None
    if kind == "f":  # long double: more bits than float64
        wide = array.astype(np.float64).astype(array.dtype) != array
        return array.astype(np.float64), (array.astype(object) if wide.any() else None)
    if kind in "iub":
        if kind != "b" and ((array > _EXACT_INT_LIMIT) | (array < -_EXACT_INT_LIMIT)).any():
            return array.astype(np.float64), array.astype(object)
        return array.astype(np.float64), None
    raise TypeError(f"fpsim.round cannot read dtype {array.dtype}")


def _python_numbers(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An object array of Python numbers as float64 (NaN where float64 cannot hold one) and the exact inputs."""
    exact = array.reshape(-1)
    floats = np.full(exact.shape, np.nan)
    for i, value in enumerate(exact):
        if not isinstance(value, (int, float, Fraction, Decimal, np.integer, np.floating)):
            raise TypeError(f"fpsim.round needs real numbers; got {type(value).__name__} {value!r:.40}")
        if isinstance(value, (float, np.floating)) or \
                (isinstance(value, (int, np.integer)) and abs(int(value)) <= _EXACT_INT_LIMIT):
            floats[i] = value
    return floats.reshape(array.shape), array


def round(x, fmt, mode: str = "nearest", *, saturate: bool = False, rng=None):
    """Round ``x`` to the values of ``fmt``, once, from the exact value of each input.

    Parameters
    ----------
    x : array_like or scalar of real numbers (float16/32/64, long double, the ml_dtypes
        formats, ints of any size, bools, ``fractions.Fraction``, ``decimal.Decimal``), lists of them included.
    fmt : anything ``fpsim.get_format`` accepts (a Format, ``"bf16"``, ``"e6m9"``, a dtype).
    mode : one of ``fpsim.ROUNDING_MODES``: "nearest" (ties to even), "nearest_away",
        "toward_zero", "up" (toward +inf), "down" (toward -inf) or "stochastic".
    saturate : map overflows and infinities to +-max instead of inf (or NaN in an
        "fn" format without infinities, as ml_dtypes does).  A format with neither inf
        nor NaN (``specials="finite"``: E3M2, E2M3, E2M1) always saturates, as ml_dtypes
        does; NaN stays NaN there (ml_dtypes gives -0), so that a simulation never hides one.
    rng : numpy Generator or int seed for ``mode="stochastic"``; the same seed gives
        the same bits.

    Returns float32 values for float32 input when every value of ``fmt`` is a
    float32, float64 otherwise; a numpy scalar for a scalar input.  Overflow
    follows IEEE 754: nearest modes give inf, toward_zero gives max, up/down give
    inf on the side they point to and max on the other.  NaN stays NaN and zeros
    keep their sign; with ``fmt.subnormals`` False, results below
    ``smallest_normal`` flush to signed zero.  The unsigned E8M0 (``specials="fnu"``)
    gives NaN for zeros and negative numbers and 2^-127 for anything smaller.
    """
    fmt = get_format(fmt)
    mode = check_mode(mode)
    array, exact_inputs = _as_float_array(x)
    if array.dtype == np.float32 and not fmt.fits_float32:
        array = array.astype(np.float64)
    params = kernel_params(fmt, array.dtype)
    flat = np.ascontiguousarray(array).reshape(-1)
    int_dtype = np.uint32 if array.dtype == np.float32 else np.int64
    out = np.empty(flat.shape, dtype=array.dtype)
    key = random_key(rng) if mode == "stochastic" else 0
    with threads_for(flat.size, PARALLEL_MIN_ELEMENTS):
        if mode == "nearest" and params.dropped_bits >= 1:
            kernels.round_nearest_array(flat, out.view(int_dtype), params.nearest_args(saturate))
        else:
            kernels.round_bits_array(
                flat.view(int_dtype), out.view(int_dtype), key, params.total_bits, params.mant_in,
                params.bias_in, params.p, params.emin, params.quantum, params.max_bits, params.normal_bits,
                params.nan_bits, params.fn_nan, saturate or params.saturates, fmt.subnormals, params.unsigned,
                kernels.MODE_CODES[mode])
    if exact_inputs is not None:
        _round_exact_inputs(out, exact_inputs.reshape(-1), fmt, mode, saturate, key)
    out = out.reshape(array.shape)
    return out[()] if out.ndim == 0 else out


def _round_exact_inputs(out, exact_inputs, fmt, mode, saturate, key):
    """Redo, with the exact reference, the elements that float64 could not hold."""
    for i, value in enumerate(exact_inputs):
        if isinstance(value, (int, np.integer)) and abs(int(value)) <= _EXACT_INT_LIMIT:
            continue
        if isinstance(value, (float, np.floating)) and np.float64(value) == value:
            continue
        uniform = stochastic_uniform(key, i) if mode == "stochastic" else None
        exact = int(value) if isinstance(value, (int, np.integer)) else value
        out[i] = round_exact(exact, fmt, mode, saturate=saturate, uniform=uniform)
