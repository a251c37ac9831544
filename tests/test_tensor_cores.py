"""The tensor-core models: measured GPU rows bit for bit, the features Fasi et al. describe, the fast kernel
against the readable exact reference, blocked promotion, and the clear errors."""

import csv
import math
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import fpsim
from fpsim.numerics.exact import round_exact
from fpsim.numerics.formats import BF16, E4M3, E5M2, FP16, FP32, TF32
from fpsim.ops import tensor_cores as tc

DATA = Path(__file__).parent / "data" / "tensor-cores"
FILES = sorted(p.stem for p in DATA.glob("*.csv"))


def same_bits(x, y) -> bool:
    """Equal as float64 bit patterns (the sign of zero counts), any NaN equal to any NaN."""
    x, y = np.float64(x), np.float64(y)
    return (np.isnan(x) and np.isnan(y)) or x.view(np.int64) == y.view(np.int64)


def load(name: str):
    """(a, b, c, d) float64 arrays of one measured file: a, b (rows, K); c, d (rows,)."""
    def values(text):
        return np.array([int(h, 16) for h in text.split()], dtype=np.uint32).view(np.float32).astype(np.float64)
    rows = list(csv.DictReader(open(DATA / f"{name}.csv")))
    a, b, c, d = (np.array([values(r[col]) for r in rows]) for col in "abcd")
    return a, b, c[:, 0], d[:, 0]


def measured_model_name(gpu: str, inputs: str, output: str) -> str:
    """The model each file was measured with (its README): wmma (mma.sync) except H100/H200 FP8 FP32 (wgmma)."""
    if gpu in ("H100", "H200") and inputs in ("e4m3", "e5m2") and output == "fp32":
        return gpu
    return f"{gpu}:mma.sync"


def unsolved(name: str) -> bool:
    return name in tc.UNSOLVED_MATCHES


def matches(name: str) -> int:
    gpu, inputs, output = name.split("-")
    a, b, c, d = load(name)
    if output == "fp16":  # the GPU was given c rounded to fp16
        c = np.array([round_exact(x, FP16) for x in c])
    result = fpsim.matmul(a[:, None, :], b[:, :, None], C=c[:, None, None], inputs=inputs,
                          accumulate=measured_model_name(gpu, inputs, output), output=output)[:, 0, 0]
    return sum(same_bits(x, y) for x, y in zip(result, d))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(
    strict=True, reason=f"unsolved: the best model found matches {tc.UNSOLVED_MATCHES[n]}/400 rows"))
    if unsolved(n) else n for n in FILES])
def test_every_measured_row_bit_for_bit(name):
    assert matches(name) == 400


@pytest.mark.parametrize("name", sorted(tc.UNSOLVED_MATCHES))
def test_unsolved_files_match_the_recorded_count(name):
    assert matches(name) == tc.UNSOLVED_MATCHES[name]


def test_the_data_covers_every_file_and_each_has_a_model():
    assert len(FILES) == 48
    for name in FILES:
        gpu, inputs, output = name.split("-")
        model = tc.accumulator_model(measured_model_name(gpu, inputs, output), inputs, output)
        assert name in model.measured or unsolved(name)


# --- the features of Fasi, Higham, Mikaitis and Pranesh (2021), as test vectors of our own ------------------

def fp16_fp32_models():
    return [m for m in tc.MODELS if m.inputs == "fp16" and m.output == FP32]


def tc_dot(model, a, b, c=0.0):
    fmt = model.input_formats[0]
    return float(fpsim.dot(np.array(a), np.array(b), C=c, inputs=fmt, accumulate=model.name,
                           output=model.output))


@pytest.mark.parametrize("model", fp16_fp32_models(), ids=lambda m: m.name)
def test_alignment_bits_per_generation(model):
    # 1 + m terms 2^-t with m * 2^-t = 2^-23: kept when t <= f, cut when t = f + 1
    extra = {"V100": 0, "A100": 1, "A2": 1, "Ada": 1, "L40S": 1}.get(model.gpu, 2)
    assert model.fraction_bits == 23 + extra
    for t, kept in ((model.fraction_bits, True), (model.fraction_bits + 1, False)):
        m = 2 ** (t - 23)
        a = [1.0] + [2.0 ** -12] * m
        b = [1.0] + [2.0 ** (12 - t)] * m
        assert tc_dot(model, a, b) == (1 + 2.0 ** -23 if kept else 1.0)


@pytest.mark.parametrize("model", fp16_fp32_models(), ids=lambda m: m.name)
def test_carries_are_kept(model):
    x = 2 - 2.0 ** -10
    k = model.products_per_step
    assert tc_dot(model, [x] * k, [x] * k) == k * x * x  # up to 4k, exact: no carry bit lost


@pytest.mark.parametrize("model", fp16_fp32_models(), ids=lambda m: m.name)
def test_fp32_output_is_truncated(model):
    a, b = [1.0, 2.0 ** -12, 2.0 ** -12], [1.0, 2.0 ** -11, 2.0 ** -12]  # 1 + 3 * 2^-24
    assert tc_dot(model, a, b) == 1 + 2.0 ** -23  # round to nearest would give 1 + 2^-22
    assert tc_dot(model, [-x for x in a], b) == -(1 + 2.0 ** -23)  # toward zero on both sides


@pytest.mark.parametrize("model", [m for m in tc.MODELS if m.inputs == "fp16" and m.output == FP16],
                         ids=lambda m: m.name)
def test_fp16_output_rounds_to_nearest_even(model):
    assert tc_dot(model, [1.0, 2.0 ** -6, 2.0 ** -6], [1.0, 2.0 ** -5, 2.0 ** -6]) == 1 + 2.0 ** -10  # 1 + 3 * 2^-12
    assert tc_dot(model, [1.0, 2.0 ** -6], [1.0, 2.0 ** -5]) == 1.0  # the tie 1 + 2^-11 goes to even
    assert tc_dot(model, [1.0, 2.0 ** -5, 2.0 ** -6], [1.0, 2.0 ** -5, 2.0 ** -5]) == 1 + 2.0 ** -9


def test_subnormal_inputs_and_outputs_are_kept():
    a100, a100_16 = tc.accumulator_model("A100", "fp16", "fp32"), tc.accumulator_model("A100", "fp16", "fp16")
    assert tc_dot(a100, [2.0 ** -24], [1.0]) == 2.0 ** -24  # an fp16 subnormal input
    assert tc_dot(a100, [2.0 ** -24], [2.0 ** -20]) == 2.0 ** -44  # two subnormals: no flush
    assert tc_dot(tc.accumulator_model("A100", "bf16", "fp32"), [2.0 ** -100], [2.0 ** -40]) == 2.0 ** -140
    assert tc_dot(a100_16, [2.0 ** -12], [2.0 ** -12]) == 2.0 ** -24  # an fp16 subnormal output
    assert tc_dot(a100_16, [2.0 ** -12], [3 * 2.0 ** -14]) == 2.0 ** -24  # 0.75 of it rounds up
    assert tc_dot(a100_16, [2.0 ** -12], [2.0 ** -13]) == 0.0  # the tie with 0 goes to even


@pytest.mark.parametrize("model", fp16_fp32_models(), ids=lambda m: m.name)
def test_a_larger_accumulator_can_give_a_smaller_result(model):
    # non-monotonic: c growing to the next binade moves the cut up, and the products' low bits are lost
    m = 3 * 2 ** (model.fraction_bits - 23)
    a, b = [2.0 ** -12] * m, [2.0 ** (12 - model.fraction_bits)] * m
    assert tc_dot(model, a, b, c=2 - 2.0 ** -23) == 2 + 2.0 ** -22
    assert tc_dot(model, a, b, c=2.0) == 2.0


def test_hopper_fp8_keeps_13_fraction_bits():
    h100 = tc.accumulator_model("H100", "e4m3", "fp32")
    assert (h100.products_per_step, h100.fraction_bits, h100.step_format.mantissa_bits) == (32, 13, 13)
    assert tc_dot(h100, [1.0, 2.0 ** -7], [1.0, 2.0 ** -6]) == 1 + 2.0 ** -13
    assert tc_dot(h100, [1.0, 2.0 ** -7], [1.0, 2.0 ** -7]) == 1.0  # 2^-14 is cut
    assert tc_dot(tc.accumulator_model("H100:mma.sync", "e4m3", "fp32"), [1.0, 2.0 ** -7], [1.0, 2.0 ** -7]) \
        == 1 + 2.0 ** -14


# --- the fast kernel against the exact reference ---------------------------------------------------------

def adversarial(fmt, shape, rng):
    """Values of ``fmt``: normal ones across binades, exponent gaps, subnormals, zeros of both signs."""
    magnitude = rng.uniform(1, 2, shape) * 2.0 ** rng.integers(-6, 6, shape)
    gaps = rng.random(shape) < 0.15
    magnitude[gaps] *= 2.0 ** rng.integers(-30, -10, gaps.sum())
    tiny = rng.random(shape) < 0.08
    magnitude[tiny] = rng.integers(1, 2 ** fmt.mantissa_bits, tiny.sum()) * fmt.smallest_subnormal
    values = np.asarray(fpsim.round(magnitude * rng.choice([-1.0, 1.0], shape), fmt), dtype=np.float64)
    values[rng.random(shape) < 0.08] = 0.0
    values[rng.random(shape) < 0.04] = -0.0
    return values


def kernel_cases(model, rng):
    fmt_a = model.input_formats[0]
    fmt_b = model.input_formats[-1]  # FP8: E4M3 times E5M2
    K = 2 * model.products_per_step + 3
    A, B = adversarial(fmt_a, (3, K), rng), adversarial(fmt_b, (K, 4), rng)
    B[:, 1] = -B[:, 0] * 2.0 ** rng.integers(-1, 2)  # cancellation against column 0 (scaled by a power of 2)
    B[:, 1] = np.asarray(fpsim.round(B[:, 1], fmt_b), dtype=np.float64)
    C = adversarial(model.output, (3, 4), rng) * 8
    if fmt_a.has_infinity:
        A[2, 5] = np.inf
        B[5, 3] = 0.0  # inf * 0
    A[1, 1] = np.nan if fmt_a.has_nan else A[1, 1]
    C[0, 2] = np.inf if model.output.has_infinity else C[0, 2]
    return A, B, C, fmt_a, fmt_b


@pytest.mark.parametrize("model", tc.MODELS, ids=lambda m: f"{m.name}-{m.inputs}-{m.output.name}")
def test_kernel_equals_exact_reference(model):
    rng = np.random.default_rng(abs(hash((model.name, model.inputs, model.output.name))) % 2**32)
    for _ in range(2):
        A, B, C, fmt_a, fmt_b = kernel_cases(model, rng)
        if model.inputs == "fp8":
            got = fpsim.matmul(A.astype(ml_dtypes.float8_e4m3fn), B.astype(ml_dtypes.float8_e5m2), C=C,
                               accumulate=model.name, output=model.output)
        else:
            got = fpsim.matmul(A, B, C=C, inputs=fmt_a, accumulate=model.name, output=model.output)
        for i in range(3):
            for j in range(4):
                want = tc.reference_dot(A[i], B[:, j], C[i, j], model, fmt_a, fmt_b)
                assert same_bits(got[i, j], want), (i, j, got[i, j], want)


@pytest.mark.parametrize("name, inputs", [("B200:mma.sync", "e4m3"), ("H100:mma.sync", "fp16")])
def test_a_step_of_large_equal_terms_sums_exactly(name, inputs):
    # every cut term just below 2^(f + 2): a whole step's sum exceeds int32 (2^32 for k = 32, f = 25)
    model = tc.accumulator_model(name, inputs, "fp32")
    fmt = model.input_formats[0]
    x = (2 - 2.0 ** -fmt.mantissa_bits) * 8  # all significand bits set: x * x just below 4 * 64
    K = 2 * model.products_per_step
    got = fpsim.dot(np.full(K, x), np.full(K, x), C=1.0, inputs=fmt, accumulate=name)
    assert same_bits(got, tc.reference_dot([x] * K, [x] * K, 1.0, model, fmt, fmt))
    assert got != 1.0


def test_tf32_operands_are_truncated_by_the_hardware():
    x = 1 + 2.0 ** -10 + 2.0 ** -11 + 2.0 ** -20  # rounds up to 1 + 2^-9 in TF32, truncates to 1 + 2^-10
    got = fpsim.matmul(np.array([[x]]), np.array([[1.0]]), inputs="tf32", accumulate="A100")
    assert got[0, 0] == 1 + 2.0 ** -10 == round_exact(x, TF32, "toward_zero")


def test_blocked_order_is_the_chain_per_run_plus_fp32_sums():
    rng = np.random.default_rng(5)
    A = np.asarray(fpsim.round(rng.standard_normal((2, 300)), E4M3), dtype=np.float64)
    B = np.asarray(fpsim.round(rng.standard_normal((300, 3)), E4M3), dtype=np.float64)
    C = rng.standard_normal((2, 3)).astype(np.float32).astype(np.float64)
    model = tc.accumulator_model("H100", "e4m3", "fp32")
    blocked = fpsim.matmul(A, B, C=C, inputs="e4m3", accumulate="H100", order="blocked:128")
    sequential = fpsim.matmul(A, B, C=C, inputs="e4m3", accumulate="H100")
    for i in range(2):
        for j in range(3):
            assert same_bits(blocked[i, j], tc.reference_blocked(A[i], B[:, j], C[i, j], model, E4M3, E4M3, 128))
    assert not np.array_equal(blocked, sequential)


def test_batch_dimensions_broadcast_as_numpy():
    rng = np.random.default_rng(2)
    A = np.asarray(fpsim.round(rng.standard_normal((2, 1, 3, 20)), FP16), dtype=np.float64)
    B = np.asarray(fpsim.round(rng.standard_normal((4, 20, 5)), FP16), dtype=np.float64)
    C = rng.standard_normal((5,)).astype(np.float32)
    for accumulate in ("H100", "fp16"):
        got = fpsim.matmul(A, B, C=C, inputs="fp16", accumulate=accumulate)
        assert got.shape == (2, 4, 3, 5)
        for index in np.ndindex(2, 4):
            one = fpsim.matmul(A[index[0], 0], B[index[1]], C=np.broadcast_to(C, (3, 5)), inputs="fp16",
                               accumulate=accumulate)
            np.testing.assert_array_equal(got[index], one)


def test_c_is_added_once_to_an_ieee_accumulation():
    a, b = np.array([1.0, 2.0 ** -11]), np.array([1.0, 1.0])
    # the fp16 chain gives 1 (the tie 1 + 2^-11 goes to even); C then joins with one more rounding: the tie
    # 1 + 2^-11 again gives 1, although the exact total 1 + 2^-10 is an fp16 value
    assert fpsim.dot(a, b, accumulate="fp16", C=2.0 ** -11) == 1.0
    assert fpsim.dot(a, b, accumulate="fp16", C=3 * 2.0 ** -12) == 1 + 2.0 ** -10  # 0.75 ulp rounds up


def test_gpu_models_list_and_describe():
    assert {m.gpu for m in tc.MODELS} == {"V100", "A100", "A2", "Ada", "L40S", "H100", "H200", "B200"}
    assert len({(m.gpu, m.instruction, m.inputs, m.output) for m in tc.MODELS}) == len(tc.MODELS)
    assert all(m.source and m.measured for m in tc.MODELS)
    assert tc.parse_gpu("h100") == ("H100", "wgmma") and tc.parse_gpu("B200") == ("B200", "tcgen05")
    assert tc.parse_gpu(" b200:MMA.sync ") == ("B200", "mma.sync") and tc.parse_gpu("fp32") is None
    assert "k): 32" in fpsim.hardware.describe("H100", "e4m3")
    rows = fpsim.hardware.rows()
    assert len(rows) == len(tc.MODELS) + len(fpsim.hardware.BLOCK_SCALED_MODELS) and {"gpu", "k", "f", "rounding"} <= set(rows[0])


@pytest.mark.parametrize("call, message", [
    (lambda: fpsim.dot(np.ones(2), np.ones(2), inputs="bf16", accumulate="V100"), "no path for inputs bf16"),
    (lambda: fpsim.dot(np.ones(2), np.ones(2), accumulate="A100"), "inputs=FORMAT"),
    (lambda: fpsim.dot(np.ones(2), np.ones(2), inputs="fp16", accumulate="H100:hmma"), "no instruction 'hmma'"),
    (lambda: fpsim.dot(np.ones(2), np.ones(2), inputs="fp16", accumulate="H900"), "unknown accumulate"),
    (lambda: fpsim.dot(np.ones(2), np.ones(2), inputs="fp16", accumulate="H100", order="pairwise"), "own order"),
    (lambda: fpsim.matmul(np.ones((2, 2)), np.ones((2, 2)), C=np.ones((3, 2))), "do not broadcast"),
    (lambda: fpsim.matmul(np.ones((2, 2, 2)), np.ones((3, 2, 2))), "batch dimensions"),
])
def test_bad_arguments_are_one_clear_line(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_matmul_over_2_40_elements_is_refused_before_allocating():
    A = np.broadcast_to(np.ones(1), (2**20, 2**20))  # a view: no memory behind it
    with pytest.raises(ValueError, match="would need .* GiB"):
        fpsim.matmul(A, A)


@pytest.mark.parametrize("accumulate, inputs", [("fp32", None), ("H100", "e4m3")])
def test_a_block_size_of_30_digits_is_one_block(accumulate, inputs):
    x = np.linspace(-1, 1, 40)
    huge = fpsim.dot(x, x[::-1], accumulate=accumulate, inputs=inputs, order="blocked:" + "9" * 30)
    assert huge == fpsim.dot(x, x[::-1], accumulate=accumulate, inputs=inputs, order="blocked:40")


def test_cli_prints_the_table_and_describes_one_model():
    table = subprocess.run([sys.executable, "-m", "fpsim", "hardware"], capture_output=True, text=True, check=True)
    assert "H100" in table.stdout and "wgmma" in table.stdout and "e8m13" in table.stdout
    one = subprocess.run([sys.executable, "-m", "fpsim", "hardware", "b200:mma.sync", "--inputs", "e4m3"],
                         capture_output=True, text=True, check=True)
    assert "c added after" in one.stdout
    bad = subprocess.run([sys.executable, "-m", "fpsim", "hardware", "H900"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown GPU model" in bad.stderr
