"""fpsim.matmul / dot / sum against a slow exact reference that follows the stated order step by step."""

import math
from fractions import Fraction

import numpy as np
import pytest

import fpsim
from fpsim.numerics.exact import DETERMINISTIC_MODES, round_exact
from fpsim.numerics.kernels import splitmix63
from fpsim.numerics.rounding import random_key


# --- the reference: exact products, every step rounded once with round_exact ----------------------------

class Rounder:
    """Rounds exact values to a format, drawing the stochastic uniforms in order from a list."""

    def __init__(self, fmt, mode, uniforms=()):
        self.fmt, self.mode, self.uniforms = fmt, mode, list(uniforms)

    def __call__(self, value) -> float:
        uniform = Fraction(int(self.uniforms.pop(0)), 1 << 63) if self.mode == "stochastic" else None
        return round_exact(value, self.fmt, self.mode, uniform=uniform)

    def add(self, x, y) -> float:
        """round(x + y): x, y are floats (values of the format, maybe inf/NaN) or exact Fractions."""
        if any(isinstance(v, float) and not math.isfinite(v) for v in (x, y)):
            self(0)  # a rounding step all the same: it uses up its random number
            return round_exact(float(x) + float(y), self.fmt, "nearest")
        total = Fraction(x) + Fraction(y)
        if total == 0:
            self(0)
            negative_zeros = all(isinstance(v, float) and math.copysign(1, v) < 0 for v in (x, y))
            return -0.0 if negative_zeros or self.mode == "down" else 0.0
        return self(total)


def exact_product(a: float, b: float):
    return a * b if a * b == 0 else Fraction(a) * Fraction(b)  # a zero keeps its IEEE sign


def reference_sum(terms, order: str, rounder: Rounder) -> float:
    if order == "pairwise":
        level = [rounder(t) for t in terms]
        while len(level) > 1:
            pairs = [rounder.add(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            level = pairs + ([level[-1]] if len(level) % 2 else [])
        return level[0]
    block = len(terms) if order == "sequential" else int(order.split(":")[1])
    total = None
    for start in range(0, len(terms), block):
        chunk = terms[start:start + block]
        acc = rounder(chunk[0])
        for t in chunk[1:]:
            acc = rounder.add(acc, t)
        total = acc if total is None else rounder.add(total, acc)
    return total


def reference_matmul(A, B, accumulate, mode, order, uniforms=None):
    M, K = A.shape
    N = B.shape[1]
    roundings = 2 * K - 1 if order == "pairwise" else K + math.ceil(K / (K if order == "sequential"
                                                                          else int(order.split(":")[1]))) - 1
    out = np.empty((M, N))
    for i in range(M):
        for j in range(N):
            start = (i * N + j) * roundings
            rounder = Rounder(accumulate, mode, [] if uniforms is None else uniforms[start:start + roundings])
            terms = [exact_product(float(A[i, k]), float(B[k, j])) for k in range(K)]
            out[i, j] = reference_sum(terms, order, rounder)
    return out


def same_bits(x, y) -> bool:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return np.array_equal(np.isnan(x), np.isnan(y)) and np.array_equal(x[~np.isnan(x)].view(np.int64),
                                                                       y[~np.isnan(y)].view(np.int64))


def random_operands(rng, inputs, M, K, N, spread):
    """Values of ``inputs`` over 2*spread binades, with exact cancellations and zeros mixed in."""
    A = rng.standard_normal((M, K)) * 2.0 ** rng.integers(-spread, spread + 1, size=(M, K))
    B = rng.standard_normal((K, N)) * 2.0 ** rng.integers(-spread, spread + 1, size=(K, N))
    A[:, 1] = -A[:, 0]  # the first two products cancel exactly when B's rows 0 and 1 are equal
    B[1] = B[0]
    A[0, 2] = -0.0
    return fpsim.round(A, inputs), fpsim.round(B, inputs)


CASES = [
    # inputs, accumulate, spread (binades), order; together they exercise every kernel
    ("fp16", "fp32", 6, "sequential"),      # float32 hardware kernel (nearest), other kernels otherwise
    ("fp16", "fp16", 3, "sequential"),      # FP16 accumulation: stagnation and overflow to inf
    ("bf16", "fp32", 40, "blocked:4"),
    ("bf16", "fp32", 12, "sequential"),     # BF16 values whose products all fit float32: hardware kernel
    ("bf16", "fp32", 70, "sequential"),     # products below float32's range: the exact float64 kernel
    ("bf16", "bf16", 20, "pairwise"),
    ("e5m2", "e6m9", 8, "blocked:1"),
    ("e4m3", "e4m3", 4, "sequential"),      # no infinities: overflow gives NaN
    ("fp16", "fp32", 6, "blocked:5"),
    ("e4m3", "fp16", 4, "pairwise"),
    ("fp16", "e8m40", 10, "sequential"),    # an accumulator wider than FP32
    ("bf16", "fp64", 30, "blocked:3"),      # float64 hardware kernel (nearest), exact path otherwise
    ("fp16", fpsim.Format("fp16_ftz", 5, 10, subnormals=False), 8, "sequential"),  # flushes tiny sums
]


@pytest.mark.parametrize("inputs, accumulate, spread, order", CASES)
@pytest.mark.parametrize("mode", DETERMINISTIC_MODES)
def test_matmul_follows_the_stated_order_exactly(inputs, accumulate, spread, order, mode):
    rng = np.random.default_rng(spread)
    A, B = random_operands(rng, inputs, 3, 13, 4, spread)
    got = fpsim.matmul(A, B, accumulate=accumulate, mode=mode, order=order)
    want = reference_matmul(A, B, accumulate, mode, order)
    assert same_bits(got, want), (got, want)


def test_stochastic_matmul_is_unbiased_and_reproducible():
    # every output is round(round(1) + 2^-12) in FP16: up to 1 + 2^-10 with probability 1/4
    n = 20_000
    A, B = np.array([[1.0, 2.0 ** -12]]), np.ones((2, n))
    for order in ("sequential", "pairwise", "blocked:1"):
        got = fpsim.matmul(A, B, inputs="fp16", accumulate="fp16", mode="stochastic", order=order, rng=11)
        assert set(np.unique(got)) == {1.0, 1 + 2.0 ** -10}, order
        up = np.mean(got > 1)
        assert abs(up - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n), (order, up)  # 4 standard errors
        again = fpsim.matmul(A, B, inputs="fp16", accumulate="fp16", mode="stochastic", order=order,
                             rng=np.random.default_rng(11))
        assert same_bits(got, again)
        other = fpsim.matmul(A, B, inputs="fp16", accumulate="fp16", mode="stochastic", order=order, rng=12)
        assert not np.array_equal(got, other)


@pytest.mark.parametrize("order, roundings", [("sequential", 9), ("pairwise", 17), ("blocked:4", 11)])
def test_stochastic_exact_path_follows_the_order_with_one_number_per_rounding(order, roundings):
    # Float64 operands that are not float32 values go through the library's exact path, which must
    # follow the stated order with one number per rounding.  (The numba kernels use the same numbers,
    # but fpsim.numerics.kernels.round_pattern maps a number to up/down differently from round_exact in the
    # normal range, so only their statistics are compared, above.)
    A, B = random_operands(np.random.default_rng(1), "bf16", 3, 9, 2, 6)
    A = A * (1 + 2.0 ** -40)
    got = fpsim.matmul(A, B, accumulate="fp16", mode="stochastic", order=order, rng=11)
    key = random_key(np.random.default_rng(11))
    uniforms = [splitmix63(key, index) for index in range(3 * 2 * roundings)]
    assert same_bits(got, reference_matmul(A, B, "fp16", "stochastic", order, uniforms))


def test_float64_operands_that_are_not_float32_values_take_the_exact_path():
    rng = np.random.default_rng(2)
    A, B = rng.standard_normal((2, 5)), rng.standard_normal((5, 3))  # 53-bit values: products need 106 bits
    for mode in ("nearest", "up"):
        got = fpsim.matmul(A, B, accumulate="fp32", mode=mode)
        assert got.dtype == np.float64
        assert same_bits(got, reference_matmul(A, B, "fp32", mode, "sequential"))


def test_inputs_and_output_roundings():
    rng = np.random.default_rng(3)
    A, B = rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal((6, 5)).astype(np.float32)
    got = fpsim.matmul(A, B, inputs="bf16", accumulate="fp32", output="fp16", mode="toward_zero")
    a, b = fpsim.round(A, "bf16", "toward_zero"), fpsim.round(B, "bf16", "toward_zero")
    want = fpsim.round(reference_matmul(a, b, "fp32", "toward_zero", "sequential"), "fp16", "toward_zero")
    assert got.dtype == np.float32 and same_bits(got, want)
    assert fpsim.matmul(A, B, inputs="bf16", accumulate="fp64").dtype == np.float64
    assert fpsim.matmul(A.astype(np.float64), B, inputs="bf16").dtype == np.float32


def test_special_values_and_signed_zero():
    inf, nan = math.inf, math.nan
    A = np.array([[1.0, inf], [0.0, inf], [inf, -inf], [-0.0, 0.0], [nan, 1.0]])
    B = np.array([[2.0], [1.0]])
    got = fpsim.matmul(A, B, inputs="fp16", accumulate="fp32")
    assert got[0, 0] == inf and math.isnan(got[2, 0]) and math.isnan(got[4, 0])
    assert got[1, 0] == inf
    assert got[3, 0] == 0 and math.copysign(1, got[3, 0]) > 0  # -0 + 0 = +0
    assert math.isnan(fpsim.matmul(np.array([[0.0]]), np.array([[inf]]), accumulate="bf16")[0, 0])
    assert math.copysign(1, fpsim.dot([-0.0, -0.0], [1.0, 1.0], accumulate="fp16")) < 0


def test_summing_ten_thousand_ones_in_fp16_stops_at_2048():
    assert fpsim.sum(np.ones(10_000), "fp16") == 2048
    assert fpsim.sum(np.ones(10_000), "fp32") == 10_000
    assert fpsim.sum(np.ones(10_000), "fp16", order="pairwise") == 10_000  # every partial sum <= 2048 is exact


def test_summing_uniforms_in_bf16_stalls_at_256_but_fp32_gets_about_5000():
    x = np.random.default_rng(0).random(10_000)
    exact = math.fsum(fpsim.round(x, "bf16").tolist())
    assert fpsim.sum(x, "bf16") == 256  # spacing 2 at 256: every addend < 1 rounds away
    assert abs(fpsim.sum(x, "fp32") - exact) / exact < 1e-4
    assert abs(fpsim.sum(x, "bf16", order="blocked:32") - exact) / exact < 0.02  # 32-term blocks stay small
    # stochastic rounding: no stagnation, and unbiased (each step's error has mean 0; the spread is a
    # random walk of ~10^4 steps of up to half a spacing of 32): the mean of 20 seeds within 4 standard errors
    stochastic = np.array([fpsim.sum(x, "bf16", mode="stochastic", rng=seed) for seed in range(20)])
    assert stochastic.min() > 2048
    assert abs(stochastic.mean() - math.fsum(x.tolist())) < 4 * stochastic.std(ddof=1) / math.sqrt(20)


def test_sum_along_an_axis_and_dot():
    rng = np.random.default_rng(4)
    x = fpsim.round(rng.standard_normal((3, 7)), "bf16")
    along = fpsim.sum(x, "bf16", axis=0)
    assert along.shape == (7,)
    for j in range(7):
        assert along[j] == reference_sum([Fraction(v) for v in x[:, j]], "sequential", Rounder("bf16", "nearest"))
    a, b = x[0], x[1]
    want = reference_sum([Fraction(p) * Fraction(q) for p, q in zip(a, b)], "pairwise", Rounder("fp16", "up"))
    assert fpsim.dot(a, b, accumulate="fp16", mode="up", order="pairwise") == want


@pytest.mark.parametrize("call, message", [
    (lambda: fpsim.matmul(np.ones((2, 3)), np.ones((2, 3))), "inner dimensions"),
    (lambda: fpsim.matmul(np.ones(3), np.ones((3, 1))), "at least 2 dimensions"),
    (lambda: fpsim.matmul(np.ones((2, 3)), np.ones((3, 1)), order="tiled"), "unknown order"),
    (lambda: fpsim.matmul(np.ones((2, 3)), np.ones((3, 1)), order="blocked:0"), "unknown order"),
    (lambda: fpsim.matmul(np.ones((2, 3)), np.ones((3, 1)), mode="stochastic"), "rng"),
    (lambda: fpsim.dot(np.ones(3), np.ones(4)), "same length"),
])
def test_bad_arguments_are_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("fmt", ["e5m0", "e4m1", "e3m0fn"])
@pytest.mark.parametrize("order", ["sequential", "pairwise"])
def test_ties_in_one_and_two_bit_formats_round_as_the_exact_reference(fmt, order):
    # p = 1 has no stored significand bit: the vectorised nearest kernel must still break ties as round_exact
    values = np.array([round_exact(v, fmt) for v in (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)])
    for x in values:
        for y in values:
            expected = round_exact(Fraction(x) + Fraction(y), fmt)
            np.testing.assert_equal(fpsim.sum(np.array([x, y]), fmt, order=order), expected, err_msg=f"{x} + {y}")
    assert fpsim.sum(np.array([2.0, 1.0]), "e5m0") == 4.0  # 3 = 1.5 * 2: the exact reference goes up to 4


def test_ml_dtypes_arrays_enter_products_at_their_exact_values():
    import ml_dtypes
    rng = np.random.default_rng(3)
    a = rng.standard_normal((4, 8)).astype(ml_dtypes.bfloat16)
    b = rng.standard_normal((8, 3)).astype(ml_dtypes.float8_e5m2)
    expected = fpsim.matmul(a.astype(np.float64), b.astype(np.float64), inputs="bf16", accumulate="fp16")
    np.testing.assert_array_equal(fpsim.matmul(a, b, accumulate="fp16"), expected)
    assert fpsim.sum(a[0], "fp32") == fpsim.sum(a[0].astype(np.float32), "fp32")


def test_integers_float64_cannot_hold_need_an_input_format():
    big = np.array([2**53 + 1, 1], dtype=np.int64)
    with pytest.raises(ValueError, match="inputs=FORMAT"):
        fpsim.dot(big, np.array([1, 1]))
    # with inputs, each integer is rounded once from its exact value: 2^53 + 1 -> 2^53 in fp32, plus 1
    assert fpsim.dot(big, np.array([1, 1]), inputs="fp32", accumulate="fp64") == 2.0**53 + 1


def test_sums_over_empty_axes_are_zero_and_axis_tuples_are_refused():
    np.testing.assert_array_equal(fpsim.sum(np.zeros((2, 0)), axis=1), [0.0, 0.0])
    assert fpsim.sum(np.zeros((0, 3)), axis=1).shape == (0,)
    assert fpsim.sum(np.zeros(0)) == 0.0
    with pytest.raises(ValueError, match="one integer axis"):
        fpsim.sum(np.ones((2, 2)), axis=(0, 1))


@pytest.mark.parametrize("order", ["blocked: 2", "blocked:0", "blocked:2x", "blocked:", "Sequential"])
def test_malformed_orders_are_refused(order):
    with pytest.raises(ValueError, match="unknown order"):
        fpsim.dot(np.ones(4), np.ones(4), order=order)
