"""The float32 fast paths: ``_round_nearest_float32`` (int32 arithmetic) and ``quantize_pow2_blocks``'s tasks.

The float32 twin of ``round_nearest_branchless`` is held against the int64 steps it replaces
and against the exact Fraction reference; the MX kernel, which splits rows into tasks of
``BLOCKS_PER_TASK`` blocks, against the numpy path of ``fpsim.quantize`` and the exact reference
on rows that span several tasks and end in a short block.
"""

import math

import numpy as np
import pytest
from numba import njit

import fpsim
from fpsim.numerics import kernels
from fpsim.numerics.exact import round_exact
from fpsim.numerics.formats import Format
from fpsim.numerics.rounding import kernel_params
from fpsim.ops import _quantize_kernels
from fpsim.ops.quantize import PRESETS, _grouped, _resolve, _rows, quantize_reference

FLOAT32_FORMATS = ["fp16", "bf16", "tf32", "e4m3", "e5m2", "e3m2", "e2m3", "e2m1", "e8m0", "e5m0", "e3m0fn", "e7m0fn", "e6m9",
                   "e8m7", Format("fp16_ftz", 5, 10, subnormals=False),
                   Format("e4m3_ftz", 4, 3, subnormals=False, specials="fn")]


@njit(cache=True)
def _int64_steps(values, bits_out, nearest):
    """``_round_nearest_int64`` of every float32 in ``values``: the int64 steps the float32 kernel replaces."""
    for i in range(values.shape[0]):
        bits_out[i] = kernels._round_nearest_int64(values[i], nearest)


def adversarial_float32(fmt: Format) -> np.ndarray:
    """Values of ``fmt`` (all of them up to 10 bits of codes, else the lowest, the highest and 1,024 random ones),
    the ties with their upper neighbours and one float32 ulp either side of each, the ties past max, float32
    subnormals, signed zeros, infinities and NaNs of every kind (the largest payloads wrap the int32 sum)."""
    every = np.arange(1 << (fmt.bits - (1 if fmt.signed else 0)))
    codes = every[np.isfinite(fpsim.decode(every, fmt))]
    if codes.size > 1024:
        random_codes = np.random.default_rng(0).choice(codes, 1024)
        codes = np.unique(np.concatenate([codes[:64], codes[-64:], random_codes]))
    low, high = fpsim.decode(codes, fmt), fpsim.decode(codes + 1, fmt)
    low, high = low[np.isfinite(high)], high[np.isfinite(high)]
    beyond = fmt.max + np.array([0.5, 1.0, 1.5]) * 2.0 ** (fmt.emax - fmt.mantissa_bits)  # the tie past max, and more
    values = np.concatenate([low, high, (low + high) / 2, beyond,
                             [fmt.smallest_subnormal / 2, fmt.smallest_subnormal * 0.75]])
    with np.errstate(over="ignore"):
        values = values.astype(np.float32)
    values = np.concatenate([values, np.nextafter(values, np.float32(0)), np.nextafter(values, np.float32(np.inf))])
    specials = np.array([0x00000000, 0x00000001, 0x00400000, 0x007FFFFF, 0x00800000, 0x7F7FFFFF, 0x7F800000,
                         0x7F800001, 0x7FC00000, 0x7FFFFFFF], dtype=np.uint32).view(np.float32)
    values = np.concatenate([values, specials])
    return np.concatenate([values, -values])


def same_bits(a, b) -> bool:
    """Equal values with equal signs, or both NaN, everywhere."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return bool((((a == b) & (np.signbit(a) == np.signbit(b))) | (np.isnan(a) & np.isnan(b))).all())


def float32_patterns(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1 << 32, count, dtype=np.uint64).astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("saturate", [False, True])
@pytest.mark.parametrize("spec", FLOAT32_FORMATS, ids=str)
def test_float32_kernel_gives_the_int64_steps_bits(spec, saturate):
    fmt = fpsim.get_format(spec)
    values = np.concatenate([float32_patterns(300_000, 2), adversarial_float32(fmt)])
    nearest = kernel_params(fmt, np.float32).nearest_args(saturate)
    fast, steps = np.empty(values.size, np.uint32), np.empty(values.size, np.uint32)
    kernels.round_nearest_array(values, fast, nearest)
    _int64_steps(values, steps, nearest)
    np.testing.assert_array_equal(fast, steps)


@pytest.mark.parametrize("spec", ["e4m3", "e5m2", "e2m1", "e3m2", "e8m0", "bf16", "tf32", Format("e8m13", 8, 13),
                                  Format("e4m3_ftz", 4, 3, subnormals=False, specials="fn")], ids=str)
def test_float32_kernel_matches_the_exact_reference(spec):
    fmt = fpsim.get_format(spec)
    values = np.concatenate([adversarial_float32(fmt), float32_patterns(2_000, 3)])
    for saturate in (False, True):
        bits = np.empty(values.size, np.uint32)
        kernels.round_nearest_array(values, bits, kernel_params(fmt, np.float32).nearest_args(saturate))
        ours = bits.view(np.float32)
        for value, got in zip(values, ours):
            want = round_exact(float(value), fmt, "nearest", saturate=saturate)
            assert (math.isnan(got) and math.isnan(want)) or \
                (got == want and math.copysign(1, got) == math.copysign(1, want)), (fmt, saturate, value, got, want)


@njit(cache=True)
def _keeps_float32_range(nearest):
    return kernels.keeps_float32_range(nearest)


@pytest.mark.parametrize("spec, saturate, expected", [("bf16", False, True), ("tf32", False, True),
                                                      (Format("e8m13", 8, 13), False, True), ("bf16", True, False),
                                                      ("fp16", False, False), ("e6m9", False, False),
                                                      (Format("bf16_ftz", 8, 7, subnormals=False), False, False),
                                                      ("e8m0", False, False)], ids=str)
def test_the_short_path_is_taken_for_float32s_exponent_range_only(spec, saturate, expected):
    """The targets ``_round_nearest_float32_range`` serves (the tests above hold its bits): float32's exponent
    range, subnormals and infinities kept, no saturation."""
    nearest = kernel_params(fpsim.get_format(spec), np.float32).nearest_args(saturate)
    assert _keeps_float32_range(nearest) is expected


def test_nan_results_are_the_positive_quiet_nan_whatever_the_sign():
    """A NaN of either sign, an overflow to NaN and a negative number in E8M0 give the one NaN pattern."""
    values = np.array([0xFFFFFFFF, 0x7FFFFFFF, 0xFF800001], dtype=np.uint32).view(np.float32)
    for fmt, extra in (("e4m3", [-500.0]), ("e8m0", [-1.0, 0.0])):
        x = np.concatenate([values, np.array(extra, np.float32)])
        bits = np.empty(x.size, np.uint32)
        kernels.round_nearest_array(x, bits, kernel_params(fpsim.get_format(fmt), np.float32).nearest_args())
        assert (bits == 0x7FC00000).all(), (fmt, [hex(b) for b in bits])


def rows_over_several_tasks(dtype) -> np.ndarray:
    """3 rows of 2.1 tasks of 32-value blocks, the last block short: magnitudes over 60 binades, zeros, a NaN, inf."""
    rng = np.random.default_rng(8)
    n = 2 * _quantize_kernels.BLOCKS_PER_TASK * 32 + 29 * 32 + 7
    x = np.exp2(rng.uniform(-30, 30, (3, n // 32 + 1)).repeat(32, axis=1)[:, :n] + rng.uniform(-12, 2, (3, n)))
    x *= rng.choice([-1.0, 1.0], x.shape)
    x[rng.random(x.shape) < 0.03] = 0.0
    x[0, 32 * _quantize_kernels.BLOCKS_PER_TASK + 3] = np.nan  # the first block of the second task
    x[2, -1] = np.inf  # the short last block
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rounding", ["floor", "ceil", "even", "rceil"])
@pytest.mark.parametrize("preset", [name for name, preset in PRESETS.items() if preset.scale_format == "e8m0"])
def test_tasks_give_the_numpy_paths_bits(preset, rounding, dtype):
    x = rows_over_several_tasks(dtype)
    for saturate in (True, False):
        ours, scales = fpsim.quantize(x, preset, scale_rounding=rounding, saturate=saturate, return_scales=True)
        spec = _resolve(preset, None, None, None, rounding)
        rows, block, groups, _ = _rows(x, spec, -1)
        numpy_values, numpy_scales = _grouped(rows, block, groups, spec, saturate, "nearest", None)
        assert same_bits(ours, numpy_values.astype(dtype)) and same_bits(scales, numpy_scales), saturate


def test_tasks_match_the_exact_reference():
    x = rows_over_several_tasks(np.float32)[:2]
    ours, scales = fpsim.quantize(x, "mxfp8_e4m3", return_scales=True)
    reference, reference_scales = quantize_reference(x, "mxfp8_e4m3")
    assert same_bits(ours, reference) and same_bits(scales, reference_scales)
