"""The tensor-core kernel at the edges of its narrow exponent lanes: int8 alignment exponents (FP16, FP8
operands) from the largest exponent down to the subnormals, against the exact reference."""

import numpy as np
import pytest

import fpsim
from fpsim.numerics.formats import E4M3, E5M2, FP16
from fpsim.ops import _tensor_core_kernels as tc_kernels
from fpsim.ops import tensor_cores as tc


def same_bits(x, y) -> bool:
    x, y = np.float64(x), np.float64(y)
    return (np.isnan(x) and np.isnan(y)) or x.view(np.int64) == y.view(np.int64)


@pytest.mark.parametrize("fmt", [FP16, E4M3, E5M2], ids=lambda f: f.name)
def test_int8_lanes_cover_the_largest_and_the_subnormal_exponents(fmt):
    assert tc_kernels.exponent_type(fmt.emin, fmt.emax, fmt.emin, fmt.emax)[0] is np.int8
    rng = np.random.default_rng(11)
    K = 40
    # every exponent from the largest binade to the subnormals, either sign, a few zeros
    exponents = rng.integers(fmt.emin - fmt.mantissa_bits, fmt.emax + 1, (2, K))
    values = rng.uniform(1, 2, (2, K)) * 2.0 ** exponents * rng.choice([-1.0, 1.0], (2, K))
    values = np.asarray(fpsim.round(values, fmt, mode="toward_zero"), dtype=np.float64)
    values[:, ::9] = 0.0
    A, B = values[:1], values[1:].T
    for name in ("H100", "B200:mma.sync", "A100"):
        path = "fp8" if fmt in (E4M3, E5M2) else "fp16"
        if name == "A100" and path == "fp8":
            continue
        model = tc.accumulator_model(name, path, "fp32")
        got = fpsim.matmul(A, B, inputs=fmt, accumulate=name)[0, 0]
        want = tc.reference_dot(A[0], B[:, 0], 0.0, model, fmt, fmt)
        assert same_bits(got, want), (name, got, want)


def test_bf16_takes_int16_lanes():
    assert tc_kernels.exponent_type(-126, 127, -126, 127)[0] is np.int16


@pytest.mark.parametrize("fmt", [FP16, E5M2], ids=lambda f: f.name)
def test_a_zero_against_the_largest_value_sets_no_exponent(fmt):
    # a zero operand times the format's max takes no part in the alignment: E comes from the small products
    small = [fmt.smallest_normal * (1 + 2.0 ** -fmt.mantissa_bits * 3), fmt.smallest_normal * 1.5] * 4
    small = [float(fpsim.round(x, fmt)) for x in small]
    a = np.array([[0.0] + small])
    b = np.array([[fmt.max] + [1.0 + 2.0 ** -fmt.mantissa_bits] * len(small)]).T
    model = tc.accumulator_model("H100", "fp8" if fmt == E5M2 else "fp16", "fp32")
    got = fpsim.matmul(a, b, inputs=fmt, accumulate="H100")[0, 0]
    assert same_bits(got, tc.reference_dot(a[0], b[:, 0], 0.0, model, fmt, fmt))
    assert got == np.float32(sum(x * (1.0 + 2.0 ** -fmt.mantissa_bits) for x in small))  # exact: nothing cut


@pytest.mark.parametrize("order", ["sequential", "blocked:30"])
def test_passes_past_a_step_end_change_nothing(order):
    # K = 37 and runs of 30: steps of 32, 5, 30, 7 products, none a multiple of the kernel's 4-product pass
    rng = np.random.default_rng(7)
    A = np.asarray(fpsim.round(rng.standard_normal((5, 37)), E4M3), dtype=np.float64)
    B = np.asarray(fpsim.round(rng.standard_normal((37, 7)), E4M3), dtype=np.float64)
    C = rng.standard_normal((5, 7)).astype(np.float32).astype(np.float64)
    model = tc.accumulator_model("H100", "e4m3", "fp32")
    got = fpsim.matmul(A, B, C=C, inputs="e4m3", accumulate="H100", order=order)
    for i in range(5):
        for j in range(7):
            want = (tc.reference_dot(A[i], B[:, j], C[i, j], model, E4M3, E4M3) if order == "sequential" else
                    tc.reference_blocked(A[i], B[:, j], C[i, j], model, E4M3, E4M3, 30))
            assert same_bits(got[i, j], want), (i, j)
