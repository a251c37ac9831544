"""Hardening of the numerics layer and the quantizer: format names parse one way, formats compare by
definition, quantize takes its input exactly, empty inputs and absurd sizes, bad arguments in one line."""

import dataclasses
import re
from fractions import Fraction
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import fpsim
from fpsim.numerics.exact import round_exact
from fpsim.numerics.formats import ALIASES, E2M1, E4M3, E8M0, ML_DTYPES_NAMES, UNMODELLED_ML_DTYPES, Format
from fpsim.ops.quantize import quantize_reference
from fpsim.sim.policy import Policy

README = Path(__file__).resolve().parent.parent / "README.md"


def same_bits(a, b) -> np.ndarray:
    """Elementwise: equal values with equal signs, or both NaN."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return ((a == b) & (np.signbit(a) == np.signbit(b))) | (np.isnan(a) & np.isnan(b))


def ml_dtypes_values(dtype) -> np.ndarray:
    """Every code of an ml_dtypes dtype decoded (its definition: bit pattern -> value), as float64."""
    bits = ml_dtypes.finfo(dtype).bits
    codes = np.arange(1 << bits, dtype=np.uint8 if bits <= 8 else np.uint16)
    with np.errstate(invalid="ignore"):
        return codes.view(dtype).astype(np.float64)


# ---- format names ------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ML_DTYPES_NAMES))
def test_every_ml_dtypes_name_is_that_dtype(name):
    """The definition (finfo, which codes are inf and NaN, every code's value) equals ml_dtypes' dtype of that name;
    float32 values round to the code that ml_dtypes' cast from float32 (a single rounding) gives."""
    dtype = getattr(ml_dtypes, name)
    fmt, info = fpsim.get_format(name), ml_dtypes.finfo(dtype)
    assert fpsim.get_format(dtype) == fmt and fpsim.get_format(np.dtype(dtype)) == fmt
    assert (fmt.bits, fmt.max, fmt.smallest_normal, fmt.smallest_subnormal, fmt.eps) == \
        (info.bits, float(info.max), float(info.smallest_normal), float(info.smallest_subnormal), float(info.eps))
    values = ml_dtypes_values(dtype)
    assert fmt.has_infinity == bool(np.isinf(values).any()) and fmt.has_nan == bool(np.isnan(values).any())
    codes = np.arange(1 << fmt.bits, dtype=fmt.code_dtype)
    assert same_bits(fpsim.decode(codes, fmt), values).all()
    # float32 -> narrow: finite inputs up to max (overflow and NaN conventions are not roundings)
    rng = np.random.default_rng(11)
    x = rng.integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = x[np.isfinite(x) & (np.abs(x) <= fmt.max)]
    if fmt is E8M0:  # no zero, no sign; the bottom binade against the exact reference (ml_dtypes releases differ)
        bottom = x[(x > 0) & (x < 2.0**-126)]
        assert all(fpsim.round(v, fmt) == round_exact(float(v), fmt) for v in bottom[:200])
        x = x[x >= 2.0**-126]
    ours = fpsim.encode(fpsim.round(x, fmt), fmt)
    reference = x.astype(dtype).view(np.uint8 if fmt.bits <= 8 else np.uint16)
    assert np.count_nonzero(ours != reference) == 0


@pytest.mark.parametrize("name", sorted(ML_DTYPES_NAMES))
def test_a_short_name_with_a_suffix_means_what_ml_dtypes_means_by_it(name):
    """``float<N>_eXmY<suffix>`` and ``eXmY<suffix>`` are one format, but for the bare OCP ``e4m3`` (see the README)."""
    match = re.fullmatch(r"b?float(\d+)_(e\d+m\d+\w*)", name)
    if match is None:  # bfloat16
        return
    width, short = int(match[1]), match[2]
    fmt = fpsim.get_format(short)
    assert fmt.bits == width
    if short == "e4m3":
        assert fmt is E4M3 and fmt.max == 448 and fpsim.get_format(name).max == 240
    else:
        assert fmt == fpsim.get_format(name)


@pytest.mark.parametrize("name, maximum, nan, inf", [
    ("e3m2fn", 28.0, False, False), ("e2m3fn", 7.5, False, False), ("e2m1fn", 6.0, False, False),
    ("e3m3fn", 30.0, False, False), ("e4m3fn", 448.0, True, False), ("e5m2fn", 98304.0, True, False),
    ("e4m3", 448.0, True, False), ("e5m2", 57344.0, True, True), ("e3m2", 28.0, False, False),
    ("e8m0fnu", 2.0**127, True, False), ("e5m0fnu", 2.0**15, True, False),
    ("e6m9", (2 - 2.0**-9) * 2.0**31, True, True),
])
def test_suffixes_follow_ml_dtypes(name, maximum, nan, inf):
    fmt = fpsim.get_format(name)
    assert (fmt.max, fmt.has_nan, fmt.has_infinity) == (maximum, nan, inf)
    assert fpsim.get_format(name.upper()) == fmt


def test_e3m2fn_is_the_mx_e3m2_not_a_nan_format():
    assert fpsim.get_format("e3m2fn") is fpsim.E3M2 and fpsim.get_format("e2m1fn") is E2M1
    assert fpsim.round(30.0, "e3m2fn") == 28.0 and fpsim.round(7.0, "e2m1fn") == 6.0
    assert fpsim.get_format("e8m0fnu") is E8M0 and fpsim.get_format("float8_e4m3fn") is E4M3


@pytest.mark.parametrize("spec, message", [
    ("e04m03", "write 'e4m3', not 'e04m03'"), ("e03m02", "write 'e3m2'"), ("e02m01", "write 'e2m1'"),
    ("e4m03fn", "write 'e4m3fn'"), ("e4m3fnuz", "does not model 'fnuz' formats"),
    ("e5m3fnu", "write 'e5m0fnu'"), ("float8_e2m5", "unknown format"),
    *[(name, f"does not model ml_dtypes' {name}") for name in UNMODELLED_ML_DTYPES],
    *[(getattr(ml_dtypes, name), f"does not model ml_dtypes' {name}") for name in UNMODELLED_ML_DTYPES],
])
def test_names_fpsim_does_not_take_are_refused_in_one_line(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        fpsim.get_format(spec)
    assert "\n" not in str(info.value)


def test_every_unmodelled_ml_dtypes_dtype_exists():
    """The refusal list names real dtypes of the installed ml_dtypes where it has them (newer ones may add some)."""
    present = [name for name in UNMODELLED_ML_DTYPES if hasattr(ml_dtypes, name)]
    assert "float8_e4m3fnuz" in present


def readme_format_table() -> dict[str, str]:
    """The README's table of format names: spelling -> the row's text."""
    text = README.read_text()
    section = text[text.index("<!-- format names -->"):text.index("<!-- /format names -->")]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`"):
            for spelling in re.findall(r"`([^`]+)`", cells[0]):
                rows[spelling] = line
    return rows


def test_the_readme_table_lists_every_accepted_name_and_its_format():
    rows = readme_format_table()
    assert set(ALIASES) <= set(rows), sorted(set(ALIASES) - set(rows))
    for spelling, line in rows.items():
        if re.fullmatch(r"[a-z0-9_]+", spelling):  # a name (not a pattern such as eXmYfn)
            fmt = fpsim.get_format(spelling)
            max_cell = line.strip().strip("|").split("|")[2].strip()
            assert float(max_cell) == pytest.approx(fmt.max, rel=1e-5), spelling
    for name in UNMODELLED_ML_DTYPES:
        assert name in README.read_text()


# ---- formats compare by definition ---------------------------------------------------------

def test_formats_are_equal_by_definition_whatever_their_names():
    mine = Format("myfp4", 2, 1, specials="finite")
    assert mine == E2M1 and hash(mine) == hash(E2M1) and mine.name == "myfp4"
    assert Format("x", 2, 1) != E2M1 and Format("x", 2, 1, subnormals=False, specials="finite") != E2M1
    policy = dataclasses.replace(Policy.preset("mxfp4"), name="mine", activations=mine, gradients=mine)
    assert policy.activations.name == "myfp4"  # the block check accepts a custom E2M1 under mxfp4


# ---- quantize takes its input exactly ------------------------------------------------------

QUANTIZE_SETTINGS = [dict(fmt="nvfp4"), dict(fmt="e4m3"), dict(fmt="e5m2", scaling="row"), dict(fmt="mxfp4"),
                     dict(fmt="mxfp8_e4m3", scale_rounding="rceil"),
                     dict(fmt="e2m1", scaling="row", scale_format="e4m3"), dict(fmt="e4m3", scale=0.75)]


@pytest.mark.parametrize("kwargs", QUANTIZE_SETTINGS, ids=lambda k: "-".join(map(str, k.values())))
def test_float64_inputs_are_taken_exactly_by_quantize_and_its_reference(kwargs):
    """Float64 values that are not FP32 values, many within a float64 ulp of an FP32 midpoint (where rounding
    them to FP32 first would change the scale or the scaled value): values and scales equal the reference."""
    rng = np.random.default_rng(21)
    for trial in range(6):
        x = rng.standard_normal((4, 32)) * 2.0 ** rng.integers(-20, 20)
        near = x.astype(np.float32).astype(np.float64)
        ulp32 = np.spacing(near.astype(np.float32)).astype(np.float64)
        x[::2] = near[::2] + ulp32[::2] / 2 * rng.choice([-1, 1], x[::2].shape) * (1 + 2.0**-40)
        assert np.count_nonzero(x != x.astype(np.float32)) > 64
        for mode in ("nearest", "toward_zero"):
            ours, scales = fpsim.quantize(x, return_scales=True, mode=mode, **kwargs)
            reference, reference_scales = quantize_reference(x, mode=mode, **kwargs)
            assert ours.dtype == np.float64
            assert same_bits(ours, reference).all() and same_bits(scales, reference_scales).all(), (trial, mode)


def test_the_fp32_scale_of_a_float64_tensor_is_max_over_its_exact_amax_rounded_once():
    """s = RN32(448 / A) with A the exact float64 amax, not RN32(448 / RN32(A)) (they differ for some A)."""
    rng = np.random.default_rng(8)
    differ = 0
    for _ in range(40):
        x = rng.standard_normal(64)
        amax = Fraction(float(np.max(np.abs(x))))
        expected = round_exact(448 / amax, fpsim.FP32)
        differ += expected != round_exact(448 / Fraction(round_exact(amax, fpsim.FP32)), fpsim.FP32)
        assert float(fpsim.quantize(x, "e4m3", return_scales=True)[1]) == expected
        assert float(quantize_reference(x, "e4m3")[1]) == expected
    assert differ > 0


def test_a_float64_amax_beyond_fp32_gives_the_documented_scales():
    x = np.array([[1e300, 1.0, -3.0, 1e-300] * 8, [5e39, 1.0, 2.0, 3.0] * 8])
    for kwargs in (dict(fmt="e4m3"), dict(fmt="e4m3", scaling="row"), dict(fmt="nvfp4"), dict(fmt="mxfp4")):
        ours, scales = fpsim.quantize(x, return_scales=True, **kwargs)
        reference, reference_scales = quantize_reference(x, **kwargs)
        assert same_bits(ours, reference).all() and same_bits(scales, reference_scales).all(), kwargs
    _, scales = fpsim.quantize(x, "e4m3", scaling="row", return_scales=True)
    assert scales[0, 0] == 2.0**-149 and scales[1, 0] == np.float32(448 / 5e39)
    assert np.isnan(fpsim.quantize(x, "nvfp4")).all()  # P = RN32(T / 2688) overflows FP32


# ---- sizes, empty inputs, bad arguments -----------------------------------------------------

@pytest.mark.parametrize("block_size", [2**40, 2**70])
@pytest.mark.parametrize("kwargs", [dict(fmt="mxfp4"), dict(fmt="mxfp4", mode="toward_zero"), dict(fmt="nvfp4"),
                                    dict(fmt="e4m3", scaling="block")])
def test_a_block_longer_than_the_axis_is_the_whole_axis(block_size, kwargs):
    x = np.random.default_rng(2).standard_normal((3, 40)).astype(np.float32)
    ours, scales = fpsim.quantize(x, block_size=block_size, return_scales=True, **kwargs)
    whole, whole_scales = fpsim.quantize(x, block_size=40, return_scales=True, **kwargs)
    assert same_bits(ours, whole).all() and same_bits(scales, whole_scales).all() and scales.shape == (3, 1)


EMPTY_SETTINGS = [dict(fmt="e4m3"), dict(fmt="e4m3", scaling="row"), dict(fmt="e4m3", scaling="block"),
                  dict(fmt="nvfp4"), dict(fmt="mxfp4"), dict(fmt="mxfp4", mode="toward_zero"),
                  dict(fmt="e2m1", scaling="row", scale_format="e4m3"), dict(fmt="e4m3", scale=2.0)]


@pytest.mark.parametrize("kwargs", EMPTY_SETTINGS, ids=lambda k: "-".join(map(str, k.values())))
@pytest.mark.parametrize("shape, axis", [((0, 5), -1), ((5, 0), 0), ((0, 0), 0), ((2, 0, 3), 1), ((0,), 0)])
def test_empty_inputs_give_empty_outputs_and_scales_shaped_like_the_reference(kwargs, shape, axis):
    x = np.zeros(shape, dtype=np.float32)
    ours, scales = fpsim.quantize(x, axis=axis, return_scales=True, **kwargs)
    reference, reference_scales = quantize_reference(x, axis=axis, **kwargs)
    assert ours.shape == reference.shape == shape and ours.dtype == np.float32
    assert scales.shape == reference_scales.shape and same_bits(scales, reference_scales).all()
    if kwargs.get("scaling", "block" if kwargs["fmt"] in ("nvfp4", "mxfp4") else "tensor") != "tensor":
        assert scales.shape[axis] == 1


@pytest.mark.parametrize("axis", [0.0, True, "0", None])
def test_axis_must_be_an_integer(axis):
    for function in (fpsim.quantize, quantize_reference):
        with pytest.raises(ValueError, match="axis must be an integer") as info:
            function(np.ones((2, 32)), "mxfp4", axis=axis)
        assert "\n" not in str(info.value)
