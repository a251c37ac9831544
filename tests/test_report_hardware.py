"""The report's hardware section: the exact reference and error statistics of fpsim.report.accumulation, the test
operands, and the section's measurements on a small grid (analyses/hardware.py)."""

import importlib.util
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import fpsim
from fpsim.report import accumulation
from fpsim.report.section import Context

ANALYSIS = Path(__file__).parents[1] / "analyses" / "hardware.py"


@pytest.fixture(scope="module")
def hardware():
    spec = importlib.util.spec_from_file_location("hardware_analysis", ANALYSIS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_exact_product_is_the_sum_of_the_products_rounded_once():
    A, B = accumulation.operands("normal", "bf16", 3, 200, 2)
    exact = accumulation.exact_product(A, B, "bf16")
    for i in range(3):
        for j in range(2):
            total = sum(Fraction(float(a)) * Fraction(float(b)) for a, b in zip(A[i], B[:, j]))
            assert exact[i, j] == float(total)  # Fraction -> float rounds to nearest once
    A8, B8 = accumulation.operands("outlier channel", "e4m3", 4, 4096, 4)
    assert np.array_equal(accumulation.exact_product(A8, B8, "e4m3"), A8 @ B8)  # E4M3: float64 sums are exact


def test_the_exact_product_refuses_formats_and_values_it_cannot_multiply_exactly():
    with pytest.raises(ValueError, match="exact in float64"):
        accumulation.exact_product(np.ones((1, 2)), np.ones((2, 1)), "fp64")
    with pytest.raises(ValueError, match="must hold fp16 values"):
        accumulation.exact_product(np.full((1, 2), 0.1), np.ones((2, 1)), "fp16")


@pytest.mark.parametrize("tail, expected", [(2.0 ** -80, 1 + 2.0 ** -23), (-(2.0 ** -80), 1.0), (0.0, 1.0)])
def test_correctly_rounded_fp32_resolves_a_float64_midpoint_by_the_residual(tail, expected):
    # exact sum 1 + 2^-24 + tail: float64 holds 1 + 2^-24, an FP32 midpoint; rounding it would give 1 (ties to even)
    A = np.array([[1.0, 2.0 ** -12, 2.0 ** -40 if tail else 0.0]])
    B = np.array([[1.0], [2.0 ** -12], [math.copysign(2.0 ** -40, tail)]])
    exact = accumulation.exact_product(A, B, "bf16")
    assert exact[0, 0] == 1 + 2.0 ** -24
    assert accumulation.correctly_rounded_fp32(A, B, exact)[0, 0] == expected


def test_errors_are_relative_to_each_exact_output():
    exact = np.array([[2.0, -4.0, 0.0]])
    stats = accumulation.errors(np.array([[2.5, -3.0, 1.0]]), exact)
    assert stats == {"median relative error": 0.25, "max relative error": 0.25, "magnitude bias": 0.0, "outputs": 2}
    assert accumulation.errors(np.array([[1.0, -2.0, 0.0]]), exact)["magnitude bias"] == -0.5


def test_operands_are_values_of_the_format_drawn_as_stated():
    A, B = accumulation.operands("outlier channel", "e4m3", 8, 64, 8, seed=3)
    assert np.abs(A).max() == np.abs(B).max() == 448  # current scaling: amax to E4M3's max
    assert np.array_equal(fpsim.round(A, "e4m3"), A) and np.array_equal(fpsim.round(B, "e4m3"), B)
    assert np.abs(A[:, 32]).min() > np.abs(np.delete(A, 32, axis=1)).max() / 20  # the outlier channel
    again, _ = accumulation.operands("outlier channel", "e4m3", 8, 64, 8, seed=3)
    assert np.array_equal(A, again)
    U, _ = accumulation.operands("uniform positive", "fp16", 4, 64, 4)
    assert U.min() >= 0 and np.array_equal(fpsim.round(U, "fp16"), U)
    with pytest.raises(ValueError, match="distribution must be one of"):
        accumulation.operands("cauchy", "fp16", 2, 2, 2)


def test_the_section_measures_each_accumulator_against_the_exact_product(hardware, tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "KS", (64, 128, 1024))
    ctx = Context(tmp_path, quick=True, progress=False)
    rows = hardware.measure(ctx, "e4m3", hardware.FP8_ACCUMULATORS, "uniform positive")
    by = {(r["K"], r["accumulator"]): r for r in rows}
    assert len(rows) == 3 * len(hardware.FP8_ACCUMULATORS)
    for K in (64, 128):  # one run of at most 128 products: the promotion adds it to 0, exactly
        assert by[(K, "H100, FP32 every 128")] == dict(by[(K, "H100 (wgmma)")], accumulator="H100, FP32 every 128")
    h100, promoted = by[(1024, "H100 (wgmma)")], by[(1024, "H100, FP32 every 128")]
    assert h100["magnitude bias"] < 0 and h100["median relative error"] > 10 * promoted["median relative error"]
    assert promoted["median relative error"] > 100 * by[(1024, "IEEE FP32")]["median relative error"]
    sixteen = hardware.measure(ctx, "fp16", {"V100": ("V100", "sequential")}, "normal")
    rounded = [r for r in sixteen if r["accumulator"] == hardware.CORRECTLY_ROUNDED]
    assert [r["equal to correctly rounded FP32"] for r in rounded] == [1.0] * 3
    assert max(r["max relative error"] for r in rounded) <= 2.0 ** -24
    assert all(r["max FP32 spacings from it"] > 0 for r in sixteen if r["accumulator"] == "V100" and r["K"] == 1024)
