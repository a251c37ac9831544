"""2-D block scaling, Transformer Engine's power-of-two FP32 scales and its NVFP4 encode order.

Oracles: the exact Fraction reference (``quantize_reference``), the 1-D and per-tensor paths for the
grouping, and TE's reference quantizers re-written in torch float32 from their source (cited below).
"""

import math

import ml_dtypes
import numpy as np
import pytest
import torch

import fpsim
from fpsim.ops.quantize import quantize_reference


def same_bits(a, b) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    equal = ((a == b) & (np.signbit(a) == np.signbit(b))) | (np.isnan(a) & np.isnan(b))
    return a.shape == b.shape and bool(np.all(equal))


def spread(rng, shape, dtype=np.float32) -> np.ndarray:
    """Values over many binades with row-wise magnitude changes, random signs, a few zeros."""
    x = rng.standard_normal(shape) * np.exp2(rng.uniform(-12, 12, shape[:-1] + (1,)) + rng.uniform(-6, 0, shape))
    x[rng.random(shape) < 0.03] = 0.0
    return x.astype(dtype)


CASES = [
    dict(fmt="mxfp8_e4m3", block_size=(8, 16)),
    dict(fmt="mxfp4", block_size=(4, 8), scale_rounding="ceil"),
    dict(fmt="e4m3", scaling="block", scale_format="e8m0", scale_rounding="floor-scale", block_size=(16, 16)),
    dict(fmt="e5m2", scaling="block", scale_format="e8m0", scale_rounding="floor-scale", block_size=32),
    dict(fmt="e4m3", scaling="block", block_size=(5, 7)),
    dict(fmt="nvfp4", block_size=(16, 16)),
    dict(fmt="nvfp4_te"),
    dict(fmt="nvfp4_te", block_size=(16, 16)),
]


@pytest.mark.parametrize("kwargs", CASES, ids=lambda k: "-".join(map(str, k.values())))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_the_exact_reference(kwargs, dtype):
    rng = np.random.default_rng(3)
    x = spread(rng, (2, 21, 37), dtype)
    if dtype == np.float64:
        x = x * (1 + 2.0**-40)  # values between FP32 numbers
    values, scales = fpsim.quantize(x, return_scales=True, **kwargs)
    expected, expected_scales = quantize_reference(x, **kwargs)
    assert values.dtype == dtype
    assert same_bits(values, expected)
    assert same_bits(scales, expected_scales)


def test_tiles_are_groups_of_the_per_tensor_rule():
    """Each (r, c) tile quantizes as that tile alone would with one scale (an independent grouping)."""
    rng = np.random.default_rng(4)
    x = spread(rng, (19, 45))
    for rounding in ("floor", "floor-scale"):
        values, scales = fpsim.quantize(x, "e4m3", scaling="block", scale_format="e8m0", scale_rounding=rounding,
                                        block_size=(8, 16), return_scales=True)
        assert scales.shape == (3, 3)
        for i in range(3):
            for j in range(3):
                tile = x[8 * i:8 * i + 8, 16 * j:16 * j + 16]
                alone, scale = fpsim.quantize(tile, "e4m3", scaling="tensor", scale_format="e8m0",
                                              scale_rounding=rounding, return_scales=True)
                assert same_bits(values[8 * i:8 * i + 8, 16 * j:16 * j + 16], alone)
                assert scales[i, j] == scale


def test_one_row_tiles_are_one_dimensional_blocks_and_square_tiles_commute_with_transposition():
    rng = np.random.default_rng(5)
    w = spread(rng, (48, 80))
    for fmt in ("nvfp4", "nvfp4_te", "mxfp8_e4m3"):
        size = fpsim.ops.quantize.PRESETS[fmt].block_size
        assert same_bits(fpsim.quantize(w, fmt, block_size=(1, size)), fpsim.quantize(w, fmt))
        assert same_bits(fpsim.quantize(w.T, fmt, block_size=(16, 16)), fpsim.quantize(w, fmt, block_size=(16, 16)).T)
    # leading axes are batches of matrices
    batch = spread(rng, (3, 20, 24))
    stacked = np.stack([fpsim.quantize(m, "mxfp4", block_size=(8, 8)) for m in batch])
    assert same_bits(fpsim.quantize(batch, "mxfp4", block_size=(8, 8)), stacked)
    assert fpsim.quantize(batch, "mxfp4", block_size=(8, 8), return_scales=True)[1].shape == (3, 3, 3)


# ---- Transformer Engine's power-of-two scales (Float8BlockScaling) ---------------------------------


def te_pow2_scale_inv(amax: torch.Tensor, fp8_max: float) -> torch.Tensor:
    """TE's ``tests/pytorch/references/quantize_scale_calc.py: scale_from_amax_tensor`` with eps = 0 and
    pow_2_scales=True, for float32 input: scale = fp8_max / amax (inf -> FP32 max), rounded down to a power
    of two with frexp / ldexp; amax = 0 -> scale 1; returns 1 / scale."""
    scale = torch.div(torch.tensor(fp8_max, dtype=torch.float32), amax)
    scale = torch.where(scale == torch.inf, torch.finfo(torch.float32).max, scale)
    _, exponent = torch.frexp(scale)
    scale = torch.ldexp(torch.ones_like(scale), exponent - 1)
    scale = torch.where(amax == 0, 1.0, scale)
    return torch.reciprocal(scale)


@pytest.mark.parametrize("element", ["e4m3", "e5m2"])
def test_floor_scale_is_transformer_engines_power_of_two_rule(element):
    rng = np.random.default_rng(6)
    x = spread(rng, (64, 256))
    x[0, :128] = 0.0                                   # an all-zero block: scale 1
    x[1, :128] = np.float32(1.4e-45)                   # max / A overflows FP32: FP32 max
    x[2, :128] = np.float32(3.0e38)
    values, scales = fpsim.quantize(x, element, scaling="block", scale_format="e8m0", scale_rounding="floor-scale",
                                    block_size=128, return_scales=True)
    amax = torch.from_numpy(np.abs(x).reshape(64, 2, 128).max(axis=-1))
    fp8_max = fpsim.get_format(element).max
    assert same_bits(scales, te_pow2_scale_inv(amax, fp8_max).numpy())
    dtype = torch.float8_e4m3fn if element == "e4m3" else torch.float8_e5m2
    te = (torch.from_numpy(x).reshape(64, 2, 128) / torch.from_numpy(scales)[..., None].float()).to(dtype)
    assert same_bits(values, (te.float() * torch.from_numpy(scales)[..., None].float()).reshape(64, 256).numpy())


@pytest.mark.parametrize("amax, expected, ceil", [
    (1.0, 2.0**-8, 2.0**-8),        # 448 / 1 = 448 -> 256
    (1.5, 2.0**-8, 2.0**-7),        # 298.7 -> 256: A / X = 384 <= 448, where ceil's A / X = 192
    (1.75, 2.0**-8, 2.0**-7),       # exactly 256: A / X = 448
    (1.8, 2.0**-7, 2.0**-7),        # 248.9 -> 128
    (448.0, 1.0, 2.0**1),
    (0.0, 1.0, 2.0**-127),          # TE: scale 1 for an all-zero block
    (2.0**-149, 2.0**-127, 2.0**-127),   # 448 / A overflows: FP32 max -> 2^127
    (math.inf, math.nan, math.nan),
])
def test_floor_scale_hand_checked_values_and_where_it_differs_from_ceil(amax, expected, ceil):
    block = np.full(4, amax, dtype=np.float32)
    for rounding, want in (("floor-scale", expected), ("ceil", ceil)):
        _, scale = fpsim.quantize(block, "e4m3", scaling="block", scale_format="e8m0", scale_rounding=rounding,
                                  return_scales=True)
        assert same_bits(scale, [want])


# ---- NVFP4 in Transformer Engine's order --------------------------------------------------------


def te_nvfp4(x: torch.Tensor, block: int = 16):
    """TE's NVFP4 reference quantizer (``tests/pytorch/nvfp4``: ``_quantize_blockwise_reference``, 1 x 16) and
    dequantization (``common/cast/nvfp4/dequantize_nvfp4.cuh``: q * (float(scale) * amax * (1 / (6 * 448)))),
    float32 torch; the E2M1 cast by ml_dtypes (round to nearest even of the clamped value)."""
    m, n = x.shape
    blocks = x.view(m, n // block, block)
    global_amax = torch.amax(torch.abs(x)).to(torch.float32)
    vec_max = torch.amax(torch.abs(blocks), dim=-1, keepdim=True)
    fp4_max, fp8_max = torch.tensor(6.0), torch.tensor(448.0)
    f32_max = torch.tensor(torch.finfo(torch.float32).max)
    encode = torch.min(torch.div(fp8_max * fp4_max, global_amax), f32_max)
    encode = torch.where(encode == 0, torch.tensor(1.0), encode)
    decode = torch.div(1.0, encode)
    multiplier = encode * torch.reciprocal(fp4_max)
    decode_scale = torch.clamp(torch.min(vec_max * multiplier, f32_max), min=-448, max=448).to(torch.float8_e4m3fn)
    encode_scale = torch.min(torch.div(1.0, decode_scale.to(torch.float32) * decode), f32_max)
    clipped = torch.clamp(blocks * encode_scale, -fp4_max, fp4_max)
    q = torch.from_numpy(clipped.numpy().astype(ml_dtypes.float4_e2m1fn).astype(np.float32))
    final = decode_scale.to(torch.float32) * global_amax * np.float32(1.0 / (6.0 * 448.0))
    return (q * final).reshape(m, n).numpy(), final.squeeze(-1).numpy()


def test_nvfp4_te_is_transformer_engines_encode_and_decode():
    rng = np.random.default_rng(7)
    for x in (spread(rng, (32, 128)), rng.standard_normal((32, 128)).astype(np.float32),
              np.ldexp(rng.standard_normal((32, 128)), -130).astype(np.float32)):   # block scales below E4M3's
        values, scales = fpsim.quantize(x, "nvfp4_te", return_scales=True)
        expected, expected_scales = te_nvfp4(torch.from_numpy(x))
        assert same_bits(scales, expected_scales)
        assert same_bits(values, expected)


def test_nvfp4_te_and_the_torchao_order_differ_in_fp32_roundings_and_below_e4m3s_normal_range():
    """Where every block scale is a normal E4M3 number the two orders agree within FP32 roundings (the same
    recipe); torchao clamps a block scale to E4M3's smallest normal 2^-6, TE does not, so a block with
    A / T below about 2^-10 / 448 is flushed to zero (block scale 0) by TE and kept coarsely by torchao."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((64, 256)).astype(np.float32)
    a, b = fpsim.quantize(x, "nvfp4"), fpsim.quantize(x, "nvfp4_te")
    assert not same_bits(a, b)
    np.testing.assert_allclose(a, b, rtol=2**-21, atol=0)
    x[0, 0] = 8.0  # T
    x[1:] = np.sign(x[1:]) * np.float32(8.0 * 2.0**-19)  # A / T = 2^-19: TE's block scale 448 * 2^-19 rounds to 0
    (a, sa), (b, sb) = fpsim.quantize(x, "nvfp4", return_scales=True), fpsim.quantize(x, "nvfp4_te", return_scales=True)
    assert np.all(sb[1:] == 0) and np.all(b[1:] == 0) and np.all(sa[1:] > 0) and np.count_nonzero(a[1:]) > 0


def test_bad_block_sizes_give_one_line():
    x = np.ones((4, 4), dtype=np.float32)
    for kwargs, message in [(dict(block_size=(0, 4)), "pair of positive"), (dict(block_size=(4, 4, 4)), "pair"),
                            (dict(block_size=(4, 4), scaling="row"), "scaling='block'"),
                            (dict(block_size=(4, 4), axis=0), "axis"), (dict(block_size=1.5), "positive integer")]:
        with pytest.raises(ValueError, match=message):
            fpsim.quantize(x, "mxfp4", **kwargs) if "scaling" not in kwargs else fpsim.quantize(x, "e4m3", **kwargs)
    with pytest.raises(ValueError, match="2 or more dimensions"):
        fpsim.quantize(np.ones(8), "mxfp4", block_size=(2, 2))


def test_the_tile_kernel_in_parallel_and_on_empty_and_odd_shapes_matches_the_tile_grouping():
    """The fused tile kernel (E8M0, nearest) against the grouping path (stochastic mode off: ``mode`` 'nearest'
    via the reference), on a matrix over the parallel threshold split into strips, and on edge shapes."""
    rng = np.random.default_rng(9)
    x = spread(rng, (512, 1024))
    whole = fpsim.quantize(x, "mxfp8_e4m3", scale_rounding="floor-scale", block_size=(128, 128))
    strips = [fpsim.quantize(part, "mxfp8_e4m3", scale_rounding="floor-scale", block_size=(128, 128))
              for part in np.split(x, 4)]
    assert same_bits(whole, np.concatenate(strips))
    for shape in [(0, 5), (3, 0), (1, 1), (2, 3, 129, 3)]:
        y = spread(rng, shape) if 0 not in shape else np.zeros(shape, dtype=np.float32)
        for rounding in ("floor", "floor-scale"):
            values, scales = fpsim.quantize(y, "mxfp4", scale_rounding=rounding, block_size=(128, 2),
                                            return_scales=True)
            expected, expected_scales = quantize_reference(y, "mxfp4", scale_rounding=rounding, block_size=(128, 2))
            assert same_bits(values, expected) and same_bits(scales, expected_scales), (shape, rounding)


def test_the_nvfp4_te_kernel_in_parallel_matches_its_split_and_the_numpy_path():
    """float32, mode nearest: the numba kernel; a parallel-sized input equals its strips (each holding the
    tensor's amax, so T is the same) and the numpy path used for float64 input of the same values."""
    rng = np.random.default_rng(10)
    x = spread(rng, (512, 1024))
    x[::128, 0] = np.float32(1e6)   # T in every strip of 128 rows
    whole, scales = fpsim.quantize(x, "nvfp4_te", return_scales=True)
    strips = [fpsim.quantize(part, "nvfp4_te") for part in np.split(x, 4)]
    assert same_bits(whole, np.concatenate(strips))
    wide, wide_scales = fpsim.quantize(x.astype(np.float64), "nvfp4_te", return_scales=True)
    assert same_bits(whole, wide) and same_bits(scales, wide_scales)


@pytest.mark.parametrize("kwargs", [dict(fmt="mxfp4", block_size=(16, 16)), dict(fmt="nvfp4_te"),
                                    dict(fmt="nvfp4_te", block_size=(16, 16))])
def test_stochastic_rounding_of_tiles_and_nvfp4_te_is_seeded_and_unbiased(kwargs):
    """Each tile's scale puts 1.25 between the E2M1 values 1 and 1.5 (amax 6 in every tile and block, T = 6)."""
    x = np.full((400, 32), 1.25, dtype=np.float32)
    x[:, ::16] = 6.0
    a = fpsim.quantize(x, mode="stochastic", rng=7, **kwargs)
    assert same_bits(a, fpsim.quantize(x, mode="stochastic", rng=7, **kwargs))
    assert not same_bits(a, fpsim.quantize(x, mode="stochastic", rng=8, **kwargs))
    inner = a[x == np.float32(1.25)]
    assert set(np.unique(inner)) == {1.0, 1.5} and abs(inner.mean() - 1.25) < 0.01


def adversarial_blocks(rng) -> np.ndarray:
    """Rows of 16 that stress the NVFP4 encode: zeros of both signs (all -0 made T = -0 and every value NaN),
    one value with 15 zeros, equal values, subnormals, amax at E2M1's 6 and at 448 x 6 (T = 1), the largest and
    smallest float32 normals, and mixed binades."""
    tiny, huge = np.finfo(np.float32).tiny, np.finfo(np.float32).max
    rows = [np.full(16, -0.0), np.zeros(16), np.r_[-0.0, np.zeros(15)], np.r_[3.0, np.zeros(15)],
            np.full(16, -1.25), np.full(16, tiny * 3), np.arange(16) * tiny / 7, np.r_[6.0, np.linspace(-6, 5, 15)],
            np.r_[2688.0, rng.standard_normal(15)], np.r_[huge, -huge / 3, np.ones(14)],
            np.r_[tiny, 1e-30, 1e30, rng.standard_normal(13)], rng.standard_normal(16) * 2.0 ** rng.integers(-40, 40, 16)]
    return np.asarray(rows, dtype=np.float32)


@pytest.mark.parametrize("block_size", [16, (16, 16), (1, 16)])
@pytest.mark.parametrize("case", ["each row alone", "together", "signed zeros", "edge shape"])
def test_the_nvfp4_te_kernel_matches_the_exact_reference_on_adversarial_blocks(block_size, case):
    """The fused nvfp4_te kernel (float32, nearest) against the Fraction reference: every adversarial row as its
    own tensor (its amax sets T), all of them in one tensor, tensors of zeros only, and a shape whose rows and
    columns are not multiples of 16 (partial tiles at both edges)."""
    rng = np.random.default_rng(11)
    rows = adversarial_blocks(rng)
    if case == "each row alone":
        tensors = [np.tile(row, (16, 1)) for row in rows]
    elif case == "together":
        tensors = [np.repeat(rows, 2, axis=0)]
    elif case == "signed zeros":
        tensors = [np.full((16, 32), -0.0, np.float32), np.zeros((3, 16), np.float32),
                   np.where(rng.random((16, 16)) < 0.5, -0.0, 0.0).astype(np.float32)]
    else:
        tensors = [spread(rng, (19, 37)), np.concatenate([rows[:, :13], rows[:, :13]])]
    for x in tensors:
        values, scales = fpsim.quantize(x, "nvfp4_te", block_size=block_size, return_scales=True)
        expected, expected_scales = quantize_reference(x, "nvfp4_te", block_size=block_size)
        assert same_bits(values, expected) and same_bits(scales, expected_scales), (case, x[0, :4])
