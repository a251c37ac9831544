"""B200's block-scaled MMA (fpsim.ops.block_scaled): the numba kernels against the Fraction reference on random
and adversarial operands, hand-worked cases of the truncation at 25 / 35 bits, fpsim.matmul's entry, the errors."""

from fractions import Fraction

import numpy as np
import pytest

import fpsim
from fpsim.numerics.formats import E4M3, E8M0, FP32
from fpsim.ops import block_scaled as bs

INPUTS = ("mxfp8", "mxfp8_e5m2", "mxfp4", "nvfp4")


def same_bits(x, y) -> bool:
    x, y = np.float32(x), np.float32(y)
    return (np.isnan(x) and np.isnan(y)) or x.view(np.int32) == y.view(np.int32)


def codes(fmt):
    """Every finite value of an element or scale format (NaN too where it has one)."""
    bits = fmt.exponent_bits + fmt.mantissa_bits + (0 if fmt == E8M0 else 1)
    values = np.asarray(fpsim.decode(np.arange(2 ** bits), fmt), dtype=np.float64)
    return values[~np.isinf(values)]


def reference(qa, sa, qb, sb, c, inputs):
    model = bs.block_scaled_model(inputs)
    return np.array([[bs.reference_dot(qa[i], sa[i], qb[:, j], sb[:, j], float(c[i, j]), model)
                      for j in range(qb.shape[1])] for i in range(qa.shape[0])])


def adversarial(inputs, M, K, N, seed):
    """Random codes with zeros of both signs, zero blocks, extreme and NaN scales, C of cancellation."""
    model = bs.block_scaled_model(inputs)
    rng = np.random.default_rng(seed)
    elements = codes(model.element)
    finite = elements[~np.isnan(elements)]
    qa, qb = rng.choice(finite, (M, K)), rng.choice(finite, (K, N))
    if seed % 2 == 0 and np.isnan(elements).any():  # a NaN element (E4M3 0x7F, E5M2) on even seeds
        qa[0, -1] = np.nan
    if K > model.block_size:
        qa[1, :model.block_size] = rng.choice([0.0, -0.0], model.block_size)  # a block of zeros
    qb[rng.random((K, N)) < 0.2] = -0.0
    blocks = -(-K // model.block_size)
    scales = codes(model.scale)
    scales = scales[(scales >= 2.0 ** -12) & (scales <= 2.0 ** 12)]  # mostly moderate, some extremes below
    scales = np.concatenate([scales, -scales]) if model.scale == E4M3 else scales  # UE4M3: sign ignored
    extremes = [2.0 ** -127, 2.0 ** 127] if model.scale == E8M0 else [448.0, 2.0 ** -9, 0.0, -0.0]
    sa, sb = rng.choice(scales, (M, blocks)), rng.choice(scales, (blocks, N))
    sa[rng.random(sa.shape) < 0.06] = rng.choice(extremes)
    sb[rng.random(sb.shape) < 0.06] = rng.choice(extremes)
    if seed % 3 == 0:  # a scale NaN (E8M0 0xFF, E4M3 0x7F) on some seeds
        sa[-1, -1] = np.nan
    exact = (qa * np.repeat(np.nan_to_num(sa), model.block_size, 1)[:, :K]) @ \
        (qb * np.repeat(np.nan_to_num(sb), model.block_size, 0)[:K])
    with np.errstate(all="ignore"):
        exact = np.where(np.abs(exact) < 2.0 ** 100, exact, 1.0)  # c a finite FP32 value (near -D: cancellation)
        c = np.where(rng.random((M, N)) < 0.5, -exact, rng.choice([0.0, -0.0, 1.0, 2.0 ** -149], (M, N)))
        c = np.asarray(fpsim.round(np.nan_to_num(c, nan=0.0), FP32), dtype=np.float64)
    return qa, sa, qb, sb, c


@pytest.mark.parametrize("inputs", INPUTS)
@pytest.mark.parametrize("seed", range(6))
def test_kernel_is_the_reference_on_adversarial_operands(inputs, seed):
    K = (45, 64, 130, 7, 200, 33)[seed]  # K not a multiple of the block or the step, one step, several
    qa, sa, qb, sb, c = adversarial(inputs, 4, K, 5, seed)
    got = bs.block_scaled_matmul(qa, sa, qb, sb, inputs, C=c)
    want = reference(qa, sa, qb, sb, c, inputs)
    assert all(same_bits(x, y) for x, y in zip(got.ravel(), want.ravel())), (got, want)


@pytest.mark.parametrize("inputs", INPUTS)
def test_batch_dimensions_run_each_product(inputs):
    qa, sa, qb, sb, c = adversarial(inputs, 3, 70, 2, 5)
    batched = bs.block_scaled_matmul(np.stack([qa, -qa]), np.stack([sa, sa]), qb, sb, inputs, C=c)
    assert batched.shape == (2, 3, 2)
    for index, sign in enumerate((1, -1)):
        want = reference(sign * qa, sa, qb, sb, c, inputs)
        assert all(same_bits(x, y) for x, y in zip(batched[index].ravel(), want.ravel()))


def test_mxfp8_drops_a_product_more_than_25_bits_below_the_largest():
    # 256 * 256 - 256 * 256 + 2^-9 * 2^-9: E = 16, the unit 2^-9, so 2^-18 is cut: D = 0; IEEE FP32 gives 2^-18
    a = np.array([[256.0, -256.0, 2.0 ** -9]])
    b = np.array([[256.0], [256.0], [2.0 ** -9]])
    one = np.ones((1, 1))
    assert bs.block_scaled_matmul(a, one, b, one, "mxfp8")[0, 0] == 0.0
    assert np.float32(a @ b)[0, 0] == 2.0 ** -18
    # the scales move the products' exponents, not the cut: scaled by 2^-100 each, still 0
    assert bs.block_scaled_matmul(a, one * 2.0 ** -100, b, one * 2.0 ** -100, "mxfp8")[0, 0] == 0.0
    # with c = 1 aligned, a product of 3 * 2^-25 is kept, then the sum truncated to FP32: 1 (IEEE: 1 + 2^-23)
    a, b = np.array([[1.5]]), np.array([[2.0 ** -8]])
    got = bs.block_scaled_matmul(a, one, b, one * 2.0 ** -16, "mxfp8", C=np.ones((1, 1)))[0, 0]
    assert got == 1.0 and np.float32(1 + 1.5 * 2.0 ** -24) == 1 + 2.0 ** -23


def test_fp4_keeps_35_bits_and_a_zero_sum_group_still_aligns():
    K = 128  # mxfp4: blocks of 32 (two groups of 16), one step of 64 then another
    a = np.zeros((1, K))
    b = np.zeros((K, 1))
    a[0, 0], b[0, 0] = 1.0, 1.0     # group 0: 1
    a[0, 16], b[16, 0] = -1.0, 1.0  # group 1: -1 (same block, scale 1)
    a[0, 32], b[32, 0] = 0.5, 0.5   # group 2 (block 1): 0.25
    sa, sb = np.ones((1, 4)), np.ones((4, 1))
    sa[0, 1], sb[1, 0] = 2.0 ** -16, 2.0 ** -17  # 0.25 * 2^-33 = 2^-35, E = 0: the last bit kept
    assert bs.block_scaled_matmul(a, sa, b, sb, "mxfp4")[0, 0] == 2.0 ** -35
    sb[1, 0] = 2.0 ** -18  # 2^-36: below the 35th bit, cut
    assert bs.block_scaled_matmul(a, sa, b, sb, "mxfp4")[0, 0] == 0.0
    # the zero-sum block 0 (1 - 1 at scale 2^20 * 2^20) sets E = 40: 0.25 at scales 1 (2^-2) is cut
    sa[0, 0], sb[0, 0], sa[0, 1], sb[1, 0] = 2.0 ** 20, 2.0 ** 20, 1.0, 1.0
    assert bs.block_scaled_matmul(a, sa, b, sb, "mxfp4")[0, 0] == 0.0
    a[0, 0] = a[0, 16] = 0.0  # the same block with products 0 (no term would align) still aligns at 40
    assert bs.block_scaled_matmul(a, sa, b, sb, "mxfp4")[0, 0] == 0.0
    sa[0, 0] = 2.0 ** -10  # block 0 at 2^10: 0.25 is 2^-2, 12 bits below: kept
    assert bs.block_scaled_matmul(a, sa, b, sb, "mxfp4")[0, 0] == 0.25


def test_nvfp4_ignores_the_scale_sign_and_a_zero_scale_takes_no_part():
    a, b = np.array([[1.0] * 16 + [0.5] * 16]), np.array([[1.0] * 16 + [0.5] * 16]).T
    sa, sb = np.array([[-2.0, 448.0]]), np.array([[1.0], [0.0]])
    assert bs.block_scaled_matmul(a, sa, b, sb, "nvfp4")[0, 0] == 32.0
    sa[0, 1] = np.nan
    assert np.isnan(bs.block_scaled_matmul(a, sa, b, sb, "nvfp4")[0, 0])


def test_special_values():
    one = np.ones((1, 1))
    assert np.isnan(bs.block_scaled_matmul(np.zeros((1, 32)), one * np.nan, np.zeros((32, 1)), one, "mxfp8")[0, 0])
    inf = bs.block_scaled_matmul(np.array([[57344.0]]), one, np.array([[57344.0]]), one * 2.0 ** 127, "mxfp8_e5m2")
    assert inf[0, 0] == np.inf  # the step overflows FP32: +inf, and it stays through the next step
    assert bs.block_scaled_matmul(np.ones((1, 64)), np.ones((1, 2)), np.ones((64, 1)), np.ones((2, 1)), "mxfp4",
                                  C=-one * np.inf)[0, 0] == -np.inf
    assert same_bits(bs.block_scaled_matmul(np.full((1, 1), -0.0), one, one, one, "mxfp8", C=-one * 0.0)[0, 0], 0.0)


@pytest.mark.parametrize("inputs", INPUTS)
def test_matmul_quantizes_along_k_then_runs_the_mma(inputs):
    rng = np.random.default_rng(7)
    A, B = rng.normal(size=(2, 3, 50)), rng.normal(size=(50, 4)) * 100
    C = rng.normal(size=(3, 4))
    got = fpsim.matmul(A, B, inputs=inputs, accumulate="b200", C=C)
    qa, sa, qb, sb, alpha = bs.quantized_operands(A, B, inputs)
    preset = "mxfp8_e4m3" if inputs == "mxfp8" else inputs
    model = bs.block_scaled_model(inputs)
    spread = np.repeat(sa, model.block_size, -1)[..., :50] if model.scale == E8M0 else None
    if spread is not None:  # MX: the quantizer's values are q X exactly
        assert np.array_equal(qa * spread, fpsim.quantize(A, preset, axis=-1))
    c32 = np.float32(C).astype(np.float64)
    for index in range(2):
        if model.scale == E8M0:
            want = reference(qa[index], sa[index], qb, sb, c32, inputs)
        else:  # NVFP4: D = RN32(alpha * acc + C), the tensor scales in the epilogue
            acc = reference(qa[index], sa[index], qb, sb, np.zeros((3, 4)), inputs)
            want = np.array([[fpsim.round_exact(Fraction(alpha) * Fraction(x) + Fraction(y), FP32)
                              for x, y in zip(row, c_row)] for row, c_row in zip(acc, c32)])
        assert all(same_bits(x, y) for x, y in zip(got[index].ravel(), want.ravel()))
    assert got.dtype == np.float32 and np.abs(got - (A @ B + C)).max() < 0.3 * np.abs(A @ B).max()


@pytest.mark.parametrize("call, message", [
    (lambda: fpsim.matmul(np.ones((2, 2)), np.ones((2, 2)), inputs="mxfp8", accumulate="H100"), "B200"),
    (lambda: fpsim.matmul(np.ones((2, 2)), np.ones((2, 2)), inputs="nvfp4"), "accumulate='B200'"),
    (lambda: fpsim.matmul(np.ones((2, 2)), np.ones((2, 2)), inputs="mxfp4", accumulate="B200:mma.sync"), "B200"),
    (lambda: fpsim.matmul(np.ones((2, 2)), np.ones((2, 2)), inputs="mxfp4", accumulate="B200", output="fp16"),
     "own order"),
    (lambda: bs.block_scaled_model("mxfp6_e3m2"), "no block-scaled path"),
    (lambda: bs.block_scaled_matmul(np.full((1, 2), 0.7), np.ones((1, 1)), np.ones((2, 1)), np.ones((1, 1)),
                                    "mxfp4"), "not e2m1 values"),
    (lambda: bs.block_scaled_matmul(np.ones((1, 2)), np.full((1, 1), 3.0), np.ones((2, 1)), np.ones((1, 1)),
                                    "mxfp8"), "not e8m0 values"),
    (lambda: bs.block_scaled_matmul(np.ones((1, 40)), np.ones((1, 1)), np.ones((40, 1)), np.ones((1, 1)),
                                    "mxfp8"), "one scale per 32"),
])
def test_errors_are_one_line(call, message):
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


def test_records_list_in_fpsim_hardware():
    rows = [r for r in fpsim.hardware.rows() if r["instruction"].startswith("tcgen05.mma kind::")]
    assert [(r["inputs"], r["k"], r["f"]) for r in rows] == [("mxfp8", 32, 25), ("mxfp8_e5m2", 32, 25),
                                                             ("mxfp4", 64, 35), ("nvfp4", 64, 35)]
    assert all(r["measured"] == "not measured" for r in rows)
    assert "groups of 16" not in bs.block_scaled_model("mxfp8").describe()
    assert "each group of 16 products" in bs.block_scaled_model("nvfp4").describe()
    assert [r["c"] for r in rows] == ["aligned"] * 3 + ["added after"]


def test_fpsim_hardware_describes_a_block_scaled_path_and_refuses_it_elsewhere(capsys):
    from fpsim.cli import main

    assert main(["hardware", "b200", "--inputs", "NVFP4"]) in (0, None)
    out = capsys.readouterr().out
    assert "kind::mxf4nvf4" in out and "c added after" in out and "35" in out
    assert "c aligned" in fpsim.hardware.describe("B200", "mxfp8_e4m3")
    for name, output in (("H100", "fp32"), ("B200", "fp16")):
        with pytest.raises(ValueError, match="run on B200 with fp32 output only"):
            fpsim.hardware.describe(name, "mxfp4", output)


def test_a_subnormal_e4m3_scale_aligns_at_its_emin():
    # two groups cancel (+-0.25 at scales 2^-9 * 2^-9): E = e(2^-9) + e(2^-9) = -6 - 6 = -12 (E4M3's emin), not
    # -18, so c = 2^-47 + 2^-50 is cut at 2^(-12 - 35) = 2^-47 (at E = -18 it would be kept whole)
    a = np.array([[0.5] + [0.0] * 15 + [-0.5] + [0.0] * 15])
    b = np.array([[0.5] + [0.0] * 15 + [0.5] + [0.0] * 15]).T
    scales = np.full((1, 2), 2.0 ** -9)
    c = np.full((1, 1), 2.0 ** -47 + 2.0 ** -50)
    got = bs.block_scaled_matmul(a, scales, b, scales.T, "nvfp4", C=c)[0, 0]
    assert got == 2.0 ** -47
    model = bs.block_scaled_model("nvfp4")
    assert bs.reference_dot(a[0], scales[0], b[:, 0], scales[0], c[0, 0], model) == 2.0 ** -47
