"""Formats: documented values, derived properties, parsing of specs, invalid parameters."""

import math

import ml_dtypes
import numpy as np
import pytest

import fpsim
from fpsim import BF16, E4M3, E5M2, FP16, FP32, TF32, Format, get_format


@pytest.mark.parametrize("fmt, bits, maximum, smallest_normal, smallest_subnormal, eps", [
    (FP32, 32, 3.4028234663852886e38, 2.0**-126, 2.0**-149, 2.0**-23),
    (FP16, 16, 65504.0, 2.0**-14, 2.0**-24, 2.0**-10),
    (BF16, 16, 3.3895313892515355e38, 2.0**-126, 2.0**-133, 2.0**-7),
    (TF32, 19, (2 - 2.0**-10) * 2.0**127, 2.0**-126, 2.0**-136, 2.0**-10),
    (E4M3, 8, 448.0, 2.0**-6, 2.0**-9, 2.0**-3),
    (E5M2, 8, 57344.0, 2.0**-14, 2.0**-16, 2.0**-2),
])
def test_documented_limits(fmt, bits, maximum, smallest_normal, smallest_subnormal, eps):
    assert (fmt.bits, fmt.max, fmt.smallest_normal, fmt.smallest_subnormal, fmt.eps) == \
        (bits, maximum, smallest_normal, smallest_subnormal, eps)


@pytest.mark.parametrize("name, dtype", [("fp32", np.float32), ("fp16", np.float16), ("bf16", ml_dtypes.bfloat16),
                                         ("e4m3", ml_dtypes.float8_e4m3fn), ("e5m2", ml_dtypes.float8_e5m2)])
def test_limits_equal_the_hardware_finfo(name, dtype):
    fmt, info = get_format(name), ml_dtypes.finfo(dtype)
    assert fmt.max == float(info.max)
    assert fmt.smallest_normal == float(info.smallest_normal)
    assert fmt.smallest_subnormal == float(info.smallest_subnormal)
    assert fmt.eps == float(info.eps)
    assert fmt.bits == info.bits
    assert get_format(dtype) is fmt


@pytest.mark.parametrize("spec, expected", [
    ("fp16", FP16), ("half", FP16), ("float16", FP16), ("binary16", FP16), ("BF16", BF16), ("bfloat16", BF16),
    ("fp32", FP32), ("float32", FP32), ("single", FP32), ("binary32", FP32), ("tf32", TF32), ("e4m3", E4M3),
    ("fp8_e4m3", E4M3), ("e5m2", E5M2), ("fp8_e5m2", E5M2), ("e5m10", FP16), ("e8m7", BF16), (FP16, FP16),
    (np.float16, FP16), (np.dtype(np.float32), FP32), (ml_dtypes.bfloat16, BF16),
    (ml_dtypes.float8_e4m3fn, E4M3), (ml_dtypes.float8_e5m2, E5M2),
])
def test_get_format_accepts_names_aliases_and_dtypes(spec, expected):
    assert get_format(spec) is expected


def test_exmy_strings_give_new_formats():
    fmt = get_format("e6m9")
    assert (fmt.exponent_bits, fmt.mantissa_bits, fmt.bias, fmt.precision) == (6, 9, 31, 10)
    assert fmt.emin == -30 and fmt.emax == 31
    assert fmt.max == (2 - 2.0**-9) * 2.0**31
    assert get_format("e4m3fn") is E4M3 and get_format("e5m2fn").specials == "fn"


@pytest.mark.parametrize("spec", ["fp17", "e12m3", "e3m53", "", None, 3.5, np.int32])
def test_unknown_specs_raise_value_error_listing_names(spec):
    with pytest.raises(ValueError) as info:
        get_format(spec)
    assert "bf16" in str(info.value) or "must be in" in str(info.value)


@pytest.mark.parametrize("kwargs, message", [
    (dict(exponent_bits=1, mantissa_bits=3), "exponent_bits must be in 2..11"),
    (dict(exponent_bits=12, mantissa_bits=3), "exponent_bits must be in 2..11"),
    (dict(exponent_bits=5, mantissa_bits=-1), "mantissa_bits must be in 0..52"),
    (dict(exponent_bits=5, mantissa_bits=53), "mantissa_bits must be in 0..52"),
    (dict(exponent_bits=5, mantissa_bits=2, specials="ocp"), "specials must be one of ieee, fn"),
    (dict(exponent_bits=5.0, mantissa_bits=2), "exponent_bits must be an integer"),
])
def test_invalid_parameters_say_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Format("x", **kwargs)


def test_format_is_a_frozen_hashable_value():
    assert Format("a", 5, 10) == Format("a", 5, 10)
    assert len({FP16, Format("fp16", 5, 10)}) == 1
    with pytest.raises(AttributeError):
        FP16.mantissa_bits = 3


def test_fn_format_uses_the_top_binade():
    assert E4M3.emax == 8 and E4M3.max_significand == 14
    assert Format("e5m2fn", 5, 2, specials="fn").max == 1.5 * 2.0**16
    assert Format("e4m0fn", 4, 0, specials="fn").max == 2.0**7  # the top binade holds only NaN


def test_derived_quantities():
    assert FP16.decimal_digits == pytest.approx(11 * math.log10(2))
    assert FP16.dynamic_range_binades == pytest.approx(math.log2(65504) + 24)
    assert FP16.fits_float32 and BF16.fits_float32 and TF32.fits_float32
    assert not get_format("e11m20").fits_float32 and not get_format("e8m30").fits_float32
    assert Format("ftz", 5, 10, subnormals=False).smallest_subnormal == 2.0**-14
    assert fpsim.FORMATS["fp16"] is FP16


def test_repr_is_short_and_evaluates_back():
    assert repr(fpsim.FP16) == "Format('fp16', 5, 10)"
    for fmt in (*fpsim.FORMATS.values(), Format("x", 3, 2, subnormals=False, specials="fn")):
        assert eval(repr(fmt), {"Format": Format}) == fmt


def test_numpy_integer_fields_become_python_ints():
    fmt = Format("x", np.int64(5), np.int32(2), subnormals=np.bool_(True))
    assert type(fmt.exponent_bits) is int and type(fmt.mantissa_bits) is int and type(fmt.subnormals) is bool
    assert fmt == Format("x", 5, 2) and hash(fmt) == hash(Format("x", 5, 2))


def test_fn_formats_beyond_float64_range_are_refused():
    with pytest.raises(ValueError, match="beyond float64's range"):
        get_format("e11m3fn")
    assert get_format("e11m0fn").max == 2.0**1023  # its top binade is NaN only
    assert get_format("e10m5fn").max == (2 - 2 * 2.0**-5) * 2.0**512
