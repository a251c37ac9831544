"""fpsim.quantize against graphcore's gfloat (MX blocks), the exact Fraction reference, and its documented properties."""

import math

import numpy as np
import pytest
from gfloat import compute_scale_amax, quantize_block
from gfloat.formats import (format_info_mxfp4_e2m1, format_info_mxfp6_e2m3, format_info_mxfp6_e3m2,
                            format_info_mxfp8_e4m3, format_info_mxfp8_e5m2)
from hypothesis import given, settings
from hypothesis import strategies as st

import fpsim
from fpsim.ops.quantize import PRESETS, quantize_reference

GFLOAT_BLOCK_FORMATS = {"mxfp8_e4m3": format_info_mxfp8_e4m3, "mxfp8_e5m2": format_info_mxfp8_e5m2,
                        "mxfp6_e3m2": format_info_mxfp6_e3m2, "mxfp6_e2m3": format_info_mxfp6_e2m3,
                        "mxfp4": format_info_mxfp4_e2m1}


def same_bits(a, b) -> np.ndarray:
    """Elementwise: equal values with equal signs, or both NaN."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return ((a == b) & (np.signbit(a) == np.signbit(b))) | (np.isnan(a) & np.isnan(b))


def random_blocks(rng, n_blocks: int, block: int = 32) -> np.ndarray:
    """Blocks whose magnitudes spread over many binades (log-uniform), random signs, some exact zeros."""
    magnitude = np.exp2(rng.uniform(-30, 30, (n_blocks, 1)) + rng.uniform(-12, 2, (n_blocks, block)))
    values = magnitude * rng.choice([-1.0, 1.0], (n_blocks, block))
    values[rng.random((n_blocks, block)) < 0.03] = 0.0
    return values.astype(np.float32)


def adversarial_blocks(preset: str) -> np.ndarray:
    """Blocks at the edges of the MX scale rule and the element format (float32, 32 values each)."""
    element = PRESETS[preset].element
    grid = fpsim.decode(np.arange(1 << (element.bits - 1)), element)  # the non-negative element values
    grid = grid[np.isfinite(grid)]
    midpoints = (grid[:-1] + grid[1:]) / 2
    rng = np.random.default_rng(1)

    def block(values):
        values = np.resize(np.asarray(values, dtype=np.float64), 32)
        return values.astype(np.float32)

    scale = 2.0**-20
    blocks = [
        np.zeros(32), -np.zeros(32),
        block([3e38] + [1e-3] * 31),                                 # one huge value, the rest flushed
        block([-1e-30, 5e-31] + [0.0] * 30),
        block(grid[-1] * scale * np.ones(32)),                      # at the element max
        block(np.concatenate([[grid[-1] * scale], midpoints * scale])),   # every tie, to even
        block(np.concatenate([[grid[-1] * scale], -midpoints * scale])),
        block(np.concatenate([[grid[-1] * 2 * scale], midpoints * 2 * scale * (1 + 2.0**-20)])),
        block([2.0**10 * (1 - 2.0**-24)] + list(rng.standard_normal(31))),  # amax just below a power of two
        block([2.0**10] + list(rng.standard_normal(31))),
        block([1.0e-40, -3e-41, 1.4e-45, 0.0]),                     # float32 subnormals: the scale clamps to 2^-127
        block([2.0**-120, 2.0**-135, -(2.0**-131), 2.0**-140]),     # element subnormals under a tiny scale
        block([1.5 * 2.0**127, 1e38, -2.5e38]),                     # the top of float32
        block(grid[-1] * 1.03 * scale * rng.choice([-1, 1], 32)),   # floor: amax / X above max, saturating
    ]
    return np.array([np.asarray(b, dtype=np.float32) for b in blocks])


def gfloat_quantize(preset: str, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """graphcore gfloat's MX quantization of each block: (values, scales).

    The blocks go in as float64: on a float32 array gfloat takes log2 in float32, which
    rounds log2(2^10 * (1 - 2^-24)) up to 10 and so picks the scale of the binade above
    (one adversarial block; the spec's floor(log2 amax) is 9 there).
    """
    fi = GFLOAT_BLOCK_FORMATS[preset]
    blocks = blocks.astype(np.float64)
    values = np.array([quantize_block(fi, b, compute_scale_amax) for b in blocks])
    scales = np.array([compute_scale_amax(fi.etype.emax, b) for b in blocks])
    return values, scales


@pytest.mark.parametrize("preset", GFLOAT_BLOCK_FORMATS)
def test_mx_presets_match_gfloat_on_random_and_adversarial_blocks(preset):
    blocks = np.concatenate([random_blocks(np.random.default_rng(0), 300), adversarial_blocks(preset)])
    ours, scales = fpsim.quantize(blocks, preset, return_scales=True)
    reference, reference_scales = gfloat_quantize(preset, blocks)
    assert ours.dtype == np.float32 and scales.shape == (blocks.shape[0], 1)
    assert np.count_nonzero(~same_bits(ours, reference)) == 0
    assert np.count_nonzero(~same_bits(scales[:, 0], reference_scales)) == 0
    # the same blocks laid out along axis 0 of a float64 array
    ours64 = fpsim.quantize(blocks.T.astype(np.float64), preset, axis=0)
    assert ours64.dtype == np.float64 and same_bits(ours64.T, reference).all()


@pytest.mark.parametrize("preset", ["mxfp8_e4m3", "mxfp8_e5m2"])
def test_a_nan_makes_its_block_nan_like_gfloat(preset):
    blocks = random_blocks(np.random.default_rng(3), 4)
    blocks[1, 7] = np.nan
    ours = fpsim.quantize(blocks, preset)
    assert same_bits(ours, gfloat_quantize(preset, blocks)[0]).all()
    assert np.isnan(ours[1]).all() and not np.isnan(ours[[0, 2, 3]]).any()


def test_infinity_gives_a_nan_scale_as_the_spec_and_torchao():
    """gfloat clips an infinite amax's scale to 2^127 instead; microxcaling and torchao give NaN (0xFF)."""
    x = np.ones((2, 32), dtype=np.float32)
    x[0, 3] = -np.inf
    values, scales = fpsim.quantize(x, "mxfp4", return_scales=True)
    assert np.isnan(values[0]).all() and np.isnan(scales[0, 0]) and (values[1] == 1).all()


SETTINGS = [dict(fmt=p, scale_rounding=r) for p in ("mxfp8_e4m3", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxfp8_e5m2")
            for r in ("floor", "ceil", "even", "rceil")] + [
    dict(fmt="nvfp4"), dict(fmt="e4m3"), dict(fmt="e5m2"), dict(fmt="e4m3", scaling="row"),
    dict(fmt="e4m3", scaling="block", block_size=16), dict(fmt="e2m1", scaling="row", scale_format="e4m3"),
    dict(fmt="e4m3", scaling="block", block_size=13), dict(fmt="e2m1", scaling="row"),  # whole groups: the kernel
    dict(fmt="e4m3", scaling="tensor", scale_format="e8m0", scale_rounding="ceil"),
    dict(fmt="e5m2", scaling="row", scale_format="e8m0", scale_rounding="rceil"),
    dict(fmt="mxfp4", block_size=12), dict(fmt="bf16", scaling="block", block_size=8),
    dict(fmt="e4m3", scale=float(np.float32(0.3))), dict(fmt="e5m2", scale=2.0**-20),
    dict(fmt="e4m3", scale=2.0**20),  # delayed scaling's given scales: most values saturate or flush
]


@pytest.mark.parametrize("kwargs", SETTINGS, ids=lambda k: "-".join(str(v) for v in k.values()))
def test_matches_the_exact_reference(kwargs):
    """Every setting, values and scales, in nearest and a directed mode, for float32 and float64 input."""
    rng = np.random.default_rng(4)
    x = np.concatenate([random_blocks(rng, 6), adversarial_blocks("mxfp8_e4m3")[[0, 2, 5, 8, 10, 11, 13]]])
    x = x.reshape(-1, 52)  # rows of 52: the last block of 32 (16, 12, 8) in a row is short
    for dtype in (np.float32, np.float64):
        values = x.astype(dtype)
        if dtype == np.float64:
            values = values * (1 + 2.0**-40)  # float64 inputs that are not float32 values
        for mode in ("nearest", "toward_zero"):
            ours, scales = fpsim.quantize(values, return_scales=True, mode=mode, **kwargs)
            reference, reference_scales = quantize_reference(values, mode=mode, **kwargs)
            assert ours.dtype == dtype
            assert np.count_nonzero(~same_bits(ours, reference)) == 0, (dtype, mode)
            assert np.count_nonzero(~same_bits(scales, reference_scales)) == 0, (dtype, mode)


def test_a_given_scale_takes_inf_and_nan_elementwise():
    x = np.array([np.inf, -np.inf, np.nan, 1.0, 1e30], dtype=np.float32)
    ours = fpsim.quantize(x, "e4m3", scale=2.0)
    reference, _ = quantize_reference(x, "e4m3", scale=2.0)
    assert np.count_nonzero(~same_bits(ours, reference)) == 0
    assert ours[3] == 1.0 and ours[4] == 224.0 and ours[0] == 224.0 and np.isnan(ours[2])  # saturated at 448 / 2


def test_without_saturation_overflows_follow_the_element_format():
    x = np.array([[1.0] * 31 + [500.0]], dtype=np.float32)  # floor scale 2^0: 500 > 448
    for saturate, expected in ((True, 448.0), (False, np.nan)):
        ours = fpsim.quantize(x, "mxfp8_e4m3", saturate=saturate)
        reference, _ = quantize_reference(x, "mxfp8_e4m3", saturate=saturate)
        assert same_bits(ours, reference).all() and same_bits(ours[0, -1], expected)
    assert fpsim.quantize(x, "mxfp8_e4m3", scale_rounding="ceil")[0, -1] == 512.0  # ceil leaves room


def test_per_tensor_e4m3_round_trip_stays_in_range_and_keeps_every_representable_value():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(20_000) * np.exp2(rng.uniform(-24, 4, 20_000))).astype(np.float32)
    a = float(np.max(np.abs(x)))
    values, scale = fpsim.quantize(x, "e4m3", return_scales=True)
    assert float(scale) == float(np.float32(448.0 / a)) or abs(float(scale) * a / 448 - 1) < 2.0**-23
    scaled = np.abs(values.astype(np.float64) * float(scale))
    assert scaled.max() <= 448 * (1 + 2.0**-22)  # q <= 448, then one FP32 division and multiplication
    xs = np.abs(x.astype(np.float64)) * float(scale)
    normal = xs >= 2.0**-6
    assert np.all(np.abs(values[normal] - x[normal]) <= 2.0**-4 * np.abs(x[normal]) * (1 + 2.0**-20))
    subnormal = (xs >= 2.0**-9) & ~normal  # down to the smallest E4M3 value: nothing flushes to zero
    assert subnormal.any() and np.all(values[subnormal] != 0)
    assert np.all(np.abs(values[subnormal] - x[subnormal]) <= 2.0**-10 / float(scale) * (1 + 2.0**-20))


def test_all_zero_groups_have_defined_scales_and_keep_signed_zeros():
    x = np.array([[0.0, -0.0] * 16] * 2, dtype=np.float32)
    for kwargs, scale in ((dict(fmt="mxfp4"), 2.0**-127), (dict(fmt="e4m3"), 1.0), (dict(fmt="nvfp4"), 2.0**-6)):
        values, scales = fpsim.quantize(x, return_scales=True, **kwargs)
        assert same_bits(values, x).all() and (np.asarray(scales) == scale).all(), kwargs


def test_tiny_and_empty_tensors():
    tiny = np.array([1e-40, -3e-41, 0.0], dtype=np.float32)  # 448 / amax overflows FP32: the scale saturates
    for kwargs in (dict(fmt="e4m3"), dict(fmt="e5m2", scaling="row"), dict(fmt="nvfp4"), dict(fmt="mxfp8_e4m3")):
        values, scales = fpsim.quantize(tiny, return_scales=True, **kwargs)
        reference, reference_scales = quantize_reference(tiny, **kwargs)
        assert same_bits(values, reference).all() and same_bits(scales, reference_scales).all(), kwargs
    assert float(fpsim.quantize(tiny, "e4m3", return_scales=True)[1]) == fpsim.FP32.max
    values, scales = fpsim.quantize(np.zeros((2, 0), dtype=np.float32), "mxfp4", return_scales=True)
    assert values.shape == (2, 0) and scales.shape == (2, 1) and (scales == 2.0**-127).all()


def test_stochastic_rounding_is_reproducible_and_unbiased():
    x = np.full((400, 32), 1.25, dtype=np.float32)
    x[:, 0] = 6.0  # scale 2^0 for mxfp4: 1.25 lies between 1 and 1.5
    a = fpsim.quantize(x, "mxfp4", mode="stochastic", rng=7)
    assert np.array_equal(a, fpsim.quantize(x, "mxfp4", mode="stochastic", rng=7))
    assert not np.array_equal(a, fpsim.quantize(x, "mxfp4", mode="stochastic", rng=8))
    assert set(np.unique(a[:, 1:])) == {1.0, 1.5} and abs(a[:, 1:].mean() - 1.25) < 0.01


def test_the_parallel_path_gives_the_one_thread_bits():
    x = random_blocks(np.random.default_rng(6), 12_000).reshape(-1)  # 384,000 values: over the parallel threshold
    whole = fpsim.quantize(x, "mxfp6_e2m3", scale_rounding="even")
    pieces = [fpsim.quantize(part, "mxfp6_e2m3", scale_rounding="even") for part in np.split(x, 12)]
    assert np.array_equal(whole.view(np.uint32), np.concatenate(pieces).view(np.uint32))


def test_scale_shapes_follow_the_axis():
    x = np.ones((3, 64, 5), dtype=np.float32)
    assert fpsim.quantize(x, "mxfp4", axis=1, return_scales=True)[1].shape == (3, 2, 5)
    assert fpsim.quantize(x, "e4m3", scaling="row", axis=1, return_scales=True)[1].shape == (3, 1, 5)
    assert fpsim.quantize(x, "e4m3", return_scales=True)[1].shape == ()
    assert fpsim.quantize(np.float32(3.0), "mxfp4") == 3.0


def test_the_block_scaled_training_presets_and_quantize_agree_on_names():
    x = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)
    block_policies = {name: p for name, p in fpsim.SCALED_POLICIES.items()
                      if any(scaling.kind == "block" for _, scaling in p.scaling)}
    assert list(block_policies) == ["fp8-blockwise", "mxfp8", "mxfp8-te", "mxfp6", "mxfp4", "nvfp4", "nvfp4-te"]
    for name, policy in block_policies.items():
        if name in ("fp8-blockwise", "mxfp8-te", "nvfp4-te"):  # recipes named after their source, not formats
            continue
        blocks = {scaling.block for _, scaling in policy.scaling}
        assert blocks <= set(PRESETS)
        if len(blocks) == 1:  # one element format: quantize(x, name) is the policy's cast of every operand
            assert same_bits(fpsim.quantize(x, name), fpsim.quantize(x, blocks.pop())).all()
        else:  # MXFP6: E2M3 forward, E3M2 backward; quantize asks for one
            with pytest.raises(ValueError, match=" or ".join(sorted(blocks, reverse=True))):
                fpsim.quantize(x, name)
    assert fpsim.Policy(scaling={"params": {"kind": "block", "block": "mxfp8"}}, params="e4m3",
                        master="fp32").scaling[0][1].block == "mxfp8_e4m3"


@pytest.mark.parametrize("kwargs, message", [
    (dict(fmt="mxfp5"), "unknown format 'mxfp5'"),
    (dict(fmt="mxfp6"), "'mxfp6' has 2 element formats: use mxfp6_e3m2 or mxfp6_e2m3"),
    (dict(fmt="e4m3", scaling="column"), "unknown scaling"),
    (dict(fmt="e4m3", scale_format="e5m2"), "unknown scale_format"),
    (dict(fmt="e4m3", scale_rounding="ceil"), "scale_rounding applies to scale_format='e8m0'"),
    (dict(fmt="mxfp4", scale_rounding="up"), "unknown scale_rounding"),
    (dict(fmt="mxfp4", block_size=0), "block_size must be a positive integer"),
    (dict(fmt="mxfp4", axis=2), "axis 2 is out of range"),
    (dict(fmt="e8m0"), "signed element format narrower than FP32"),
    (dict(fmt="mxfp4", mode="banker"), "unknown rounding mode"),
    (dict(fmt="mxfp4", scale=1.0), "a given scale= is a per-tensor FP32 scale"),
    (dict(fmt="e4m3", scale=0.1), "scale must be a positive finite FP32 number"),
    (dict(fmt="e4m3", scale=-1.0), "scale must be a positive finite FP32 number"),
])
def test_bad_input_raises_one_line_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        fpsim.quantize(np.ones((2, 32)), **kwargs)
    assert "\n" not in str(info.value)


finite_floats = st.floats(-(2.0**100), 2.0**100, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(st.lists(finite_floats, min_size=1, max_size=70), st.sampled_from(sorted(GFLOAT_BLOCK_FORMATS)),
       st.sampled_from(["floor", "ceil", "even", "rceil"]))
def test_mx_quantization_is_idempotent_and_sign_symmetric(values, preset, rounding):
    x = np.array(values, dtype=np.float32)
    once = fpsim.quantize(x, preset, scale_rounding=rounding)
    assert same_bits(fpsim.quantize(once, preset, scale_rounding=rounding), once).all()
    assert same_bits(fpsim.quantize(-x, preset, scale_rounding=rounding), -once).all()


@settings(max_examples=40, deadline=None)
@given(st.lists(finite_floats, min_size=1, max_size=40), st.sampled_from(["e4m3", "e5m2", "nvfp4"]))
def test_fp32_and_e4m3_scaling_are_sign_symmetric_and_match_the_reference(values, fmt):
    x = np.array(values, dtype=np.float32)
    once = fpsim.quantize(x, fmt)
    assert same_bits(fpsim.quantize(-x, fmt), -once).all()
    assert same_bits(once, quantize_reference(x, fmt)[0]).all()


def test_presets_cite_their_source():
    assert all(p.source for p in PRESETS.values()) and PRESETS["nvfp4"].block_size == 16
    assert math.isclose(PRESETS["mxfp4"].element.max, 6.0)


# ---- torchao's MX and NVFP4 quantizers (the `test` extra; skipped without torchao) ------------------


def torchao_mx():
    """torchao's mx_formats (emulated paths, CPU), or a skip saying why."""
    pytest.importorskip("torchao", reason="torchao is not installed: pip install 'fpsim[test]' for these references")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.prototype.mx_formats import constants
        from torchao.prototype.mx_formats.config import ScaleCalculationMode
        from torchao.prototype.mx_formats.mx_tensor import MXTensor
        from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale
    return constants, ScaleCalculationMode, MXTensor, NVFP4Tensor, per_tensor_amax_to_scale


TORCHAO_ELEMENTS = {"mxfp8_e4m3": "float8_e4m3fn", "mxfp8_e5m2": "float8_e5m2", "mxfp6_e2m3": "fp6_e2m3",
                    "mxfp6_e3m2": "fp6_e3m2", "mxfp4": "float4_e2m1fn_x2"}


@pytest.mark.parametrize("preset", list(TORCHAO_ELEMENTS))
@pytest.mark.parametrize("rounding", ["floor", "rceil", "ceil", "even"])
def test_mx_presets_match_torchaos_to_mx(preset, rounding):
    import torch

    _, ScaleCalculationMode, MXTensor, _, _ = torchao_mx()
    name = TORCHAO_ELEMENTS[preset]
    element = getattr(torch, name) if name.startswith("float") else name
    rng = np.random.default_rng(11)
    x = np.concatenate([random_blocks(rng, 64), adversarial_blocks(preset)])
    # torchao 0.18 departs from the spec (and gfloat, which fpsim matches) where the scale clamps at 2^-127:
    # blocks of FP32 subnormals and of values near 2^-120; those are compared with gfloat above, not here
    x = x[np.abs(x).max(axis=1) >= 2.0**-100]
    mx = MXTensor.to_mx(torch.from_numpy(x), element, 32, ScaleCalculationMode(rounding))
    assert same_bits(fpsim.quantize(x, preset, scale_rounding=rounding), mx.dequantize(torch.float32).numpy()).all()


def test_nvfp4_matches_torchaos_to_nvfp4_with_a_per_tensor_scale():
    import torch

    _, _, _, NVFP4Tensor, per_tensor_amax_to_scale = torchao_mx()
    rng = np.random.default_rng(12)
    for x in (random_blocks(rng, 64, 16).reshape(32, 32), rng.standard_normal((16, 64)).astype(np.float32)):
        tensor = torch.from_numpy(x)
        nvfp4 = NVFP4Tensor.to_nvfp4(tensor, per_tensor_scale=per_tensor_amax_to_scale(tensor.abs().max()))
        assert same_bits(fpsim.quantize(x, "nvfp4"), nvfp4.dequantize(torch.float32).numpy()).all()


def test_fp32_products_at_exact_midpoints_round_to_even_without_the_fraction_path():
    """RN32(a * b) where the float64 product is exact is taken from it (NVFP4's d = P * s, an FP32 number times
    an E4M3 one, is often an FP32 midpoint exactly); checked against Fractions, with inexact and tiny products."""
    from fractions import Fraction

    from fpsim.ops.quantize import _exact_products, _fp32_of

    rng = np.random.default_rng(13)
    fp32 = np.ldexp(rng.uniform(1, 2, 4000), rng.integers(-60, 60, 4000)).astype(np.float32).astype(np.float64)
    e4m3 = fpsim.round(rng.uniform(-448, 448, 4000), "e4m3")
    wide = rng.uniform(1, 2, 4000) * 2.0 ** rng.integers(-600, -400, 4000)   # 53-bit significands, tiny products
    for a, b in ((fp32, e4m3), (fp32, wide), (wide, wide), (np.array([1 + 2.0**-23]), np.array([1.5]))):
        got = _fp32_of(np.multiply, a, b)
        expected = [fpsim.round_exact(Fraction(float(x)) * Fraction(float(y)), fpsim.FP32) for x, y in zip(a, b)]
        assert same_bits(got, expected).all()
    assert _fp32_of(np.multiply, np.array([1 + 2.0**-23]), np.array([1.5]))[0] == np.float32(1.5 + 2.0**-22)
    assert _exact_products(fp32, e4m3, fp32 * e4m3).all() and not _exact_products(wide, wide, wide * wide).any()


@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("kwargs", [dict(scaling="tensor"), dict(scaling="row"), dict(scaling="row", axis=0),
                                    dict(scaling="block", block_size=8), dict(scale=float(np.float32(0.3)))],
                         ids=lambda k: "-".join(f"{key}={value}" for key, value in k.items()))
def test_the_fp32_scale_kernels_match_the_exact_reference_with_zeros_and_non_finite_groups(kwargs, saturate):
    """The float32 path of FP32 current scaling (``largest_magnitude(s)`` and ``quantize_fp32_scaled``, in tasks
    of ``SCALED_CHUNK`` values across groups) against Fractions: groups of +-0 only, a NaN, +-inf, the top of
    float32 and float32 subnormals, in a tensor of more than one task; and a tensor of -0s only."""
    from fpsim.ops._quantize_kernels import SCALED_CHUNK

    rng = np.random.default_rng(21)
    x = (rng.standard_normal((6, SCALED_CHUNK // 4 + 8)) * 2.0 ** rng.integers(-30, 30, (6, 1))).astype(np.float32)
    x[0] = 0.0
    x[0, 5] = -0.0
    x[1, :40] = [1e-40, -3e-41, 1.4e-45, 3e38, -2.5e38] * 8
    x[2, 7], x[3, 9], x[4, 11] = np.nan, np.inf, -np.inf
    for fmt in ("e4m3", "e5m2", "e2m1"):
        for values in (x, x[1:2], x[5:], np.full((2, 3), -0.0, np.float32)):
            ours, scales = fpsim.quantize(values, fmt, return_scales=True, saturate=saturate, **kwargs)
            reference, reference_scales = quantize_reference(values, fmt, saturate=saturate, **kwargs)
            assert same_bits(ours, reference).all(), (fmt, values.shape)
            assert same_bits(scales, reference_scales).all(), (fmt, values.shape)
