"""fpsim.add/sub/mul/div/sqrt/fma against exact Fraction references, numpy float16, and IEEE special cases."""

import math
import zlib
from decimal import Decimal, localcontext
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fpsim
from fpsim.numerics.exact import DETERMINISTIC_MODES, round_exact

FORMATS = ["fp16", "bf16", "e5m2", "e6m9", "e8m30"]
OPS = ["add", "sub", "mul", "div", "sqrt", "fma"]


# --- the oracle: exact values in Fractions (Decimal for square roots), rounded once by round_exact ----------

def exact_sqrt(x: float) -> Fraction:
    """sqrt(x) to 400 significant digits: exact when sqrt(x) is a dyadic value of any format, and otherwise
    far closer to it than to any boundary a rounding could depend on (those lie >= 2^-110 away, relative)."""
    with localcontext() as context:
        context.prec = 400
        return Fraction(Decimal(x).sqrt())


def reference(op: str, args, fmt, mode: str) -> float:
    """The correctly rounded result for finite non-special operands (already values of fmt)."""
    if op == "sqrt":
        exact = exact_sqrt(args[0])
    else:
        x = [Fraction(v) for v in args]
        exact = {"add": lambda: x[0] + x[1], "sub": lambda: x[0] - x[1], "mul": lambda: x[0] * x[1],
                 "div": lambda: x[0] / x[1], "fma": lambda: x[0] * x[1] + x[2]}[op]()
    if exact == 0:
        if op == "mul" or op == "div":
            return math.copysign(0.0, args[0]) * math.copysign(1.0, args[1])
        if op == "sqrt":
            return args[0]
        if op == "fma":  # the exact product: a signed zero, or a non-zero value
            terms = (args[0] * args[1] if args[0] * args[1] == 0 else 1.0, args[2])
        else:
            terms = (args[0], args[1] if op == "add" else -args[1])
        both_negative = all(math.copysign(1.0, t) < 0 and t == 0 for t in terms)
        return -0.0 if both_negative or mode == "down" else 0.0
    return round_exact(exact, fmt, mode)


def format_values(fmt, rng, n):
    """Finite values of ``fmt``: random codes (all binades, subnormals, the top binade) and random roundings."""
    fmt = fpsim.get_format(fmt)
    codes = rng.integers(0, 1 << fmt.bits, size=n, dtype=np.int64).astype(fmt.code_dtype)
    from_codes = fpsim.decode(codes, fmt)
    near_one = fpsim.round(rng.standard_normal(n) * 2.0 ** rng.integers(-4, 5, size=n), fmt)
    values = np.concatenate([from_codes, near_one, [fmt.max, -fmt.max, fmt.smallest_subnormal, fmt.smallest_normal,
                                                    1.0, -1.0, 0.0, -0.0]])
    return values[np.isfinite(values)]


def adversarial_pairs(fmt, rng, n):
    """(x, y) pairs whose results sit near midpoints, cancel, overflow or fall in the subnormal range."""
    fmt = fpsim.get_format(fmt)
    x = format_values(fmt, rng, n)[:n]
    ulp_exponent = np.floor(np.log2(np.maximum(np.abs(x), fmt.smallest_normal))) - fmt.mantissa_bits
    half_ulp = 2.0 ** (ulp_exponent - 1)
    wiggle = rng.choice([-1, 0, 1], size=x.size) * fmt.smallest_subnormal * rng.integers(1, 4, size=x.size)
    near_half = fpsim.round(half_ulp + wiggle, fmt, "toward_zero")  # sums next to a midpoint
    tiny = fpsim.round(half_ulp * 2.0 ** -rng.integers(1, 40, size=x.size), fmt, "up")  # directed modes move
    cancel = fpsim.round(-x * (1 + rng.choice([-1, 1], size=x.size) * fmt.eps), fmt)
    pairs_x = np.concatenate([x, x, x, x])
    pairs_y = np.concatenate([near_half, tiny, cancel, fpsim.round(x * 2.0 ** -rng.integers(0, 3, size=x.size), fmt)])
    return pairs_x, np.where(np.isfinite(pairs_y), pairs_y, 0.0)


def operands(op, fmt, seed, n=60):
    rng = np.random.default_rng(seed)
    if op in ("add", "sub"):
        x, y = adversarial_pairs(fmt, rng, n)
        return (x, np.where(rng.random(x.size) < 0.5, y, -y) if op == "sub" else y)
    values = format_values(fmt, rng, 3 * n)
    x, y, z = (rng.permutation(values)[:3 * n] for _ in range(3))
    if op == "sqrt":
        return (np.abs(x),)
    if op == "div":
        y = np.where(y == 0, 1.0, y)
        return (x, y)
    if op == "mul":
        return (x, y)
    near_x, near_y = adversarial_pairs(fmt, rng, n)
    size = near_x.size
    return (np.concatenate([x, near_x]), np.concatenate([y, np.ones(size)]), np.concatenate([z, near_y]))


def same(a, b) -> bool:
    """Equal as values including the sign of zero, NaN equal to NaN."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("op", OPS)
def test_every_operation_matches_the_exact_reference_in_every_mode(op, fmt):
    args = operands(op, fmt, seed=zlib.crc32(f"{op} {fmt}".encode()))
    if fmt == "e8m30":  # runs the library's own slow exact path: fewer cases
        keep = np.random.default_rng(0).permutation(args[0].size)[:60]
        args = tuple(a[keep] for a in args)
    for mode in DETERMINISTIC_MODES:
        got = getattr(fpsim, op)(*args, fmt, mode)
        mismatches = []
        for i in range(got.size):
            element = [float(a[i]) for a in args]
            want = reference(op, element, fmt, mode)
            if not same(float(got[i]), want):
                mismatches.append((element, float(got[i]), want))
        assert not mismatches, f"{op} {fmt} {mode}: {len(mismatches)} mismatches, e.g. {mismatches[:3]}"


@given(st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2))
@settings(max_examples=50, deadline=None)
def test_fp16_nearest_matches_numpy_float16(codes):
    x, y = np.array(codes, dtype=np.uint16).view(np.float16)
    with np.errstate(all="ignore"):
        expected = {"add": x + y, "sub": x - y, "mul": x * y, "div": x / y, "sqrt": np.sqrt(x)}
    for op, want in expected.items():
        got = fpsim.sqrt(x, "fp16") if op == "sqrt" else getattr(fpsim, op)(x, y, "fp16")
        assert same(float(got), float(want)), (op, x, y, got, want)


def test_fp16_nearest_matches_numpy_float16_on_arrays():
    rng = np.random.default_rng(5)
    x, y = rng.integers(0, 1 << 16, size=(2, 20000), dtype=np.uint16).view(np.float16)
    with np.errstate(all="ignore"):
        for op, want in {"add": x + y, "sub": x - y, "mul": x * y, "div": x / y}.items():
            got = getattr(fpsim, op)(x, y, "fp16")
            finite = ~np.isnan(want)
            assert np.array_equal(np.isnan(got), ~finite), op
            assert np.array_equal(got[finite].astype(np.float16).view(np.uint16), want[finite].view(np.uint16)), op


FMA_CASES = [
    # (a, b, c, fmt, mode): a*b + c needs more than 53 bits, so float64 rounds it first and a second
    # rounding to the format goes wrong; the exact result must come out.
    (7.0, 37 / 256, -2.0 ** -100, "bf16", "nearest"),      # a*b is a midpoint, c tips it down
    (7.0, 37 / 256, -2.0 ** -100, "bf16", "nearest_away"),
    (1.0, 1.0, 2.0 ** -100, "bf16", "up"),                 # 1 + tiny rounds up to 1 + 2^-7
    (1.0, 1.0, -2.0 ** -100, "bf16", "down"),
    (1.0, 1.0, -2.0 ** -100, "bf16", "toward_zero"),
    (-1.0, 1.0, 2.0 ** -100, "e8m30", "toward_zero"),
    (3.0, 683 / 2048, 2.0 ** -100, "tf32", "nearest"),    # 2049/2048: a TF32 midpoint
]


@pytest.mark.parametrize("a, b, c, fmt, mode", FMA_CASES)
def test_fma_is_right_where_float64_then_round_is_wrong(a, b, c, fmt, mode):
    want = round_exact(Fraction(a) * Fraction(b) + Fraction(c), fmt, mode)
    naive = float(fpsim.round(a * b + c, fmt, mode))
    assert naive != want  # the case does defeat double rounding
    assert float(fpsim.fma(a, b, c, fmt, mode)) == want


SPECIALS = [
    ("add", (math.inf, -math.inf), "nearest", math.nan),
    ("sub", (math.inf, math.inf), "nearest", math.nan),
    ("mul", (0.0, math.inf), "nearest", math.nan),
    ("div", (1.0, 0.0), "nearest", math.inf),
    ("div", (1.0, -0.0), "nearest", -math.inf),
    ("div", (-1.0, 0.0), "up", -math.inf),
    ("div", (0.0, 0.0), "nearest", math.nan),
    ("div", (math.inf, math.inf), "nearest", math.nan),
    ("div", (1.0, math.inf), "nearest", 0.0),
    ("div", (-1.0, math.inf), "nearest", -0.0),
    ("sqrt", (-1.0,), "nearest", math.nan),
    ("sqrt", (-0.0,), "nearest", -0.0),
    ("sqrt", (math.inf,), "nearest", math.inf),
    ("add", (3.0, -3.0), "nearest", 0.0),
    ("add", (3.0, -3.0), "up", 0.0),
    ("add", (3.0, -3.0), "down", -0.0),
    ("sub", (3.0, 3.0), "down", -0.0),
    ("add", (-0.0, -0.0), "nearest", -0.0),
    ("add", (-0.0, 0.0), "nearest", 0.0),
    ("add", (-0.0, 0.0), "down", -0.0),
    ("mul", (-0.0, 5.0), "nearest", -0.0),
    ("mul", (-1e-30, 1e-30), "nearest", -0.0),    # underflow keeps the sign
    ("fma", (0.0, math.inf, 1.0), "nearest", math.nan),
    ("fma", (2.0, 3.0, -6.0), "nearest", 0.0),
    ("fma", (2.0, 3.0, -6.0), "down", -0.0),
    ("fma", (-0.0, 1.0, -0.0), "nearest", -0.0),
    ("fma", (math.inf, 1.0, -math.inf), "nearest", math.nan),
    ("mul", (1e20, 1e20), "nearest", math.inf),
    ("mul", (1e20, -1e20), "toward_zero", "-max"),
    ("add", ("max", "max"), "nearest", math.inf),
    ("add", ("max", "max"), "down", "max"),
    ("fma", ("max", 2.0, "-max"), "nearest", "max"),
]


@pytest.mark.parametrize("fmt", ["fp16", "e8m30"])  # the fast kernels, and the slow exact path
@pytest.mark.parametrize("op, args, mode, want", SPECIALS)
def test_ieee_special_cases(op, args, mode, want, fmt):
    top = fpsim.get_format(fmt).max
    named = {"max": top, "-max": -top}
    args = [named.get(a, a) for a in args]
    got = float(getattr(fpsim, op)(*args, fmt, mode))
    assert same(got, named.get(want, want)), (op, args, mode, got)


def test_inputs_are_first_rounded_to_the_format_in_the_same_mode():
    # 1 + 2^-12 is not an FP16 value: mode "up" rounds it to 1 + 2^-10 before adding 0
    assert fpsim.add(1 + 2.0 ** -12, 0.0, "fp16", "up") == 1 + 2.0 ** -10
    assert fpsim.add(1 + 2.0 ** -12, 0.0, "fp16", "down") == 1.0


def test_broadcasting_dtypes_and_scalars():
    a = np.ones((3, 1), dtype=np.float32)
    b = np.arange(4, dtype=np.float32)
    out = fpsim.add(a, b, "bf16")
    assert out.shape == (3, 4) and out.dtype == np.float32
    assert fpsim.add(a, b, "fp64").dtype == np.float64
    assert fpsim.mul(a, 2.0, "fp16").dtype == np.float32
    assert fpsim.add(a.astype(np.float64), b, "fp16").dtype == np.float64
    scalar = fpsim.sqrt(2.0, "bf16")
    assert np.ndim(scalar) == 0 and scalar == fpsim.round(math.sqrt(2.0), "bf16")


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="rounding mode"):
        fpsim.add(1.0, 2.0, "fp16", "sideways")
    with pytest.raises(ValueError, match="unknown format"):
        fpsim.mul(1.0, 2.0, "fp17")
    with pytest.raises(TypeError):
        fpsim.add("1", 2.0, "fp16")
    with pytest.raises(ValueError, match="rng"):
        fpsim.add(1.0, 2.0, "fp16", "stochastic")


def test_stochastic_rounding_is_unbiased_and_reproducible():
    # 1 + 2^-12 (an FP16 addition of 1 and 2^-12, both exact FP16 values) is a quarter of the way
    # from 1 to 1 + 2^-10: it rounds up with probability 1/4.
    n = 20000
    ones, small = np.ones(n), np.full(n, 2.0 ** -12)
    first = fpsim.add(ones, small, "fp16", "stochastic", rng=7)
    assert np.array_equal(first, fpsim.add(ones, small, "fp16", "stochastic", rng=7))
    assert not np.array_equal(first, fpsim.add(ones, small, "fp16", "stochastic", rng=8))
    assert set(np.unique(first)) == {1.0, 1 + 2.0 ** -10}
    fraction_up = np.mean(first > 1)
    assert abs(fraction_up - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)  # 4 standard errors
    exact_mean = 1 + 2.0 ** -12
    assert abs(first.mean() - exact_mean) < 4 * 2.0 ** -10 * math.sqrt(0.25 * 0.75 / n)
    for op, args in (("mul", (ones * 3, np.full(n, 1 + 2.0 ** -10))), ("fma", (ones, ones, small))):
        values = getattr(fpsim, op)(*args, "fp16", "stochastic", rng=np.random.default_rng(3))
        exact = float(np.prod([float(a[0]) for a in args[:2]])) + (float(args[2][0]) if op == "fma" else 0)
        spread = np.ptp(values)
        assert spread > 0 and abs(values.mean() - exact) < 4 * spread * 0.5 / math.sqrt(n)


ZERO_SUM_OPERANDS = [(0.0, 0.0), (-0.0, -0.0), (0.0, -0.0), (-0.0, 0.0), (1.0, -1.0), (-0.5, 0.5)]


def ieee_zero_sum_is_negative(a: float, b: float, mode: str) -> bool:
    """IEEE 754 section 6.3, written out: equal-signed zeros keep their sign; any other exact zero is -0 only in "down"."""
    if a == 0 and b == 0 and math.copysign(1, a) == math.copysign(1, b):
        return math.copysign(1, a) < 0
    return mode == "down"


@pytest.mark.parametrize("fmt", ["fp16", "e5m0", "fp64", "e11m40"])  # the kernel, and the exact Fraction path
@pytest.mark.parametrize("mode", DETERMINISTIC_MODES)
def test_exact_zero_sums_take_the_sign_ieee_754_prescribes(fmt, mode):
    for a, b in ZERO_SUM_OPERANDS:
        total = float(fpsim.add(a, b, fmt, mode))
        assert total == 0 and (math.copysign(1, total) < 0) == ieee_zero_sum_is_negative(a, b, mode), (a, b)
        difference = float(fpsim.sub(a, -b, fmt, mode))
        assert (math.copysign(1, difference) < 0) == ieee_zero_sum_is_negative(a, b, mode), (a, -b)


def test_zero_sums_in_nearest_match_the_hardware():
    for a, b in ZERO_SUM_OPERANDS:
        assert np.signbit(fpsim.add(a, b, "fp64")) == np.signbit(np.float64(a) + np.float64(b))


def test_ml_dtypes_arrays_are_operands():
    a = np.array([1.5, -0.375, 3.0], dtype=ml_dtypes.bfloat16)
    b = np.array([0.25, 2.0, -1.0], dtype=ml_dtypes.float8_e4m3fn)
    expected = fpsim.mul(a.astype(np.float64), b.astype(np.float64), "bf16")
    np.testing.assert_array_equal(fpsim.mul(a, b, "bf16"), expected)
    np.testing.assert_array_equal(fpsim.add(a, b, "fp16"), [1.75, 1.625, 2.0])
