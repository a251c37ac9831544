"""encode / decode / fields / describe against the hardware dtypes, exhaustively where the space is small."""

import ml_dtypes
import numpy as np
import pytest

import fpsim
from fpsim import Format


@pytest.mark.parametrize("name, dtype, code_dtype", [
    ("fp16", np.float16, np.uint16), ("bf16", ml_dtypes.bfloat16, np.uint16),
    ("e4m3", ml_dtypes.float8_e4m3fn, np.uint8), ("e5m2", ml_dtypes.float8_e5m2, np.uint8)])
def test_every_code_decodes_like_the_hardware_and_encodes_back(name, dtype, code_dtype):
    bits = np.dtype(code_dtype).itemsize * 8
    codes = np.arange(1 << bits, dtype=np.uint64).astype(code_dtype)
    with np.errstate(invalid="ignore"):  # ml_dtypes warns when it casts NaN codes
        hardware = codes.view(dtype).astype(np.float64)
    values = fpsim.decode(codes, name)
    assert np.array_equal(values, hardware, equal_nan=True)
    assert np.array_equal(np.signbit(values), np.signbit(hardware))
    finite_or_inf = ~np.isnan(values)
    encoded = fpsim.encode(values[finite_or_inf], name)
    assert encoded.dtype == code_dtype
    assert np.array_equal(encoded, codes[finite_or_inf])


@pytest.mark.parametrize("name, dtype, code_dtype", [
    ("fp16", np.float16, np.uint16), ("bf16", ml_dtypes.bfloat16, np.uint16), ("fp32", np.float32, np.uint32),
    ("e4m3", ml_dtypes.float8_e4m3fn, np.uint8), ("e5m2", ml_dtypes.float8_e5m2, np.uint8)])
def test_encode_of_float32_inputs_equals_the_hardware_bit_pattern(name, dtype, code_dtype):
    x = np.random.default_rng(2).integers(0, 1 << 32, 300_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = x[~np.isnan(x)]
    with np.errstate(all="ignore"):
        hardware = x.astype(dtype)
    keep = ~np.isnan(hardware.astype(np.float32))
    assert np.array_equal(fpsim.encode(x[keep], name), hardware[keep].view(code_dtype))


@pytest.mark.parametrize("fmt", ["e3m2", "e2m0", "e4m3", Format("e4m3", 4, 3), Format("e5m2fn", 5, 2, specials="fn"),
                                 Format("e3m2_ftz", 3, 2, subnormals=False), "e6m9"], ids=str)
def test_small_formats_round_trip_every_code(fmt):
    fmt = fpsim.get_format(fmt)
    codes = np.arange(1 << fmt.bits, dtype=np.uint64)
    values = fpsim.decode(codes, fmt)
    if not fmt.subnormals:  # subnormal codes are not values of a flush-to-zero format
        keep = (codes >> np.uint64(fmt.mantissa_bits)) % (1 << fmt.exponent_bits) != 0
        keep |= codes % (1 << (fmt.bits - 1)) == 0
        codes, values = codes[keep], values[keep]
    finite = ~np.isnan(values)
    assert np.array_equal(fpsim.encode(values[finite], fmt), codes[finite])
    positive = values[finite & (codes < (1 << (fmt.bits - 1)))]
    assert np.all(np.diff(positive) > 0)  # codes order the values
    assert positive[-1] == (np.inf if fmt.has_infinity else fmt.max)


def test_canonical_nan_codes():
    assert fpsim.encode(np.nan, "fp16") == 0x7E00 and fpsim.encode(np.nan, "e4m3") == 0x7F
    assert fpsim.encode(np.nan, "bf16") == 0x7FC0
    with pytest.raises(ValueError, match="no NaN code"):
        fpsim.encode(np.nan, "e2m0")


def test_fields():
    assert fpsim.fields(1.0, "fp16") == (0, 15, 0)
    assert fpsim.fields(-2.0**-24, "fp16") == (1, 0, 1)
    assert fpsim.fields(65504, "fp16") == (0, 30, 1023)
    sign, exponent, mantissa = fpsim.fields(np.array([448.0, -0.0, np.inf]), "e4m3", saturate=True)
    assert list(sign) == [0, 1, 0] and list(exponent) == [15, 0, 15] and list(mantissa) == [6, 0, 6]


def test_encode_uses_the_rounding_mode():
    assert fpsim.encode(1 + 2.0**-12, "fp16", "up") == 0x3C01
    assert fpsim.encode(1 + 2.0**-12, "fp16") == 0x3C00
    assert fpsim.encode(np.float32(0.1), "tf32").dtype == np.uint32


def test_decode_rejects_bad_codes():
    with pytest.raises(ValueError, match="0..2\\^8-1"):
        fpsim.decode(np.array([256]), "e4m3")
    with pytest.raises(TypeError, match="integer codes"):
        fpsim.decode(np.array([1.0]), "e4m3")


def test_describe_reads_like_a_lesson():
    assert fpsim.describe(1.0, "fp16") == "0 | 01111 | 0000000000  = 1.0  (normal, 2^0 x 1.0000000000b)  exact"
    text = fpsim.describe(0.1, "bf16")
    assert text.startswith("0 | 01111011 | 1001101  = 0.10009765625  (normal, 2^-4 x 1.1001101b)")
    assert "error +9.76562e-05 from 0.1" in text
    assert "(subnormal, 2^-14 x 0.0000000001b)" in fpsim.describe(2.0**-24, "fp16")
    assert "= inf  (inf)  from 70000.0" in fpsim.describe(70000.0, "fp16")
    assert "(zero)  error -1e-08" in fpsim.describe(1e-8, "fp16")
    with pytest.raises(ValueError, match="one scalar"):
        fpsim.describe(np.ones(2), "fp16")


def test_decimal_text_is_described_from_its_exact_value():
    text = fpsim.describe("1.00048828125000000000001", "fp16")  # just above a midpoint that float64 lands on
    assert "= 1.0009765625" in text and "from 1.00048828125000000000001" in text
    assert "= 1.0  " in fpsim.describe(1.00048828125000000000001, "fp16")  # the float64 input: a tie, to even
    assert fpsim.describe("-0.0", "bf16").startswith("1 | 00000000 | 0000000  = -0.0")
    assert "error +0.000651042 from 1/3" in fpsim.describe("1/3", "bf16")
    with pytest.raises(ValueError, match="not a number"):
        fpsim.describe("0.1.2", "fp16")


def test_without_subnormals_the_subnormal_codes_decode_to_signed_zero():
    fmt = Format("fp16_ftz", 5, 10, subnormals=False)
    np.testing.assert_array_equal(fpsim.decode(np.array([0x0001, 0x03FF, 0x0400]), fmt), [0.0, 0.0, 2.0**-14])
    assert np.signbit(fpsim.decode(0x8001, fmt))
