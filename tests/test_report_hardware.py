"""The report's hardware section: the exact reference and error statistics of fpsim.report.accumulation, the test
operands, and the section's measurements on a small grid (analyses/hardware.py)."""

import math
from fractions import Fraction

import numpy as np
import pytest

import fpsim
from fpsim.report import accumulation
from fpsim.report.runner import load_analysis
from fpsim.report.section import Context

@pytest.fixture(scope="module")
def hardware():
    return load_analysis("hardware")


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


# --- (c): claim (i), judged from paired runs ---------------------------------------------------------------

def conv_runs(**shifts):
    """Conv-net results over 5 seeds: fp8-current's accuracies, and each H100 policy's shifted by ``shifts``
    (a number, or None for a seed that diverged: no score)."""
    base = [0.80, 0.82, 0.81, 0.83, 0.79]
    noise = [0.001, -0.002, 0.0, 0.002, -0.001]
    runs = {"fp8-current": [{"status": "ok", "test_loss": 1.0, "test_accuracy": a} for a in base]}
    for name, shift in shifts.items():
        runs[name] = [{"status": "diverged", "test_loss": None, "test_accuracy": 0.1} if shift is None else
                      {"status": "ok", "test_loss": 1.0, "test_accuracy": a + shift + e} for a, e in zip(base, noise)]
    return runs


@pytest.mark.parametrize("shifts, verdict", [
    ({"fp8-h100-fast": -0.05, "fp8-h100-te": 0.0, "fp8-h100-split": 0.0}, "holds under conditions"),
    ({"fp8-h100-fast": -0.05, "fp8-h100-te": -0.05, "fp8-h100-split": 0.0}, "holds"),
    ({"fp8-h100-fast": 0.0, "fp8-h100-te": 0.0, "fp8-h100-split": 0.0}, "not supported by the evidence"),
    ({"fp8-h100-fast": None, "fp8-h100-te": -0.05, "fp8-h100-split": 0.0}, "holds"),
])
def test_claim_i_holds_where_fast_accumulation_trains_worse_than_fp32(hardware, tmp_path, shifts, verdict):
    from fpsim.report.claims import score, score_table
    from fpsim.report.section import Section

    by_policy = conv_runs(**shifts)
    _, tests = score_table("conv net", {n: [score("conv net", r) for r in rs] for n, rs in by_policy.items()},
                           "fp8-current", no_score="no finite loss")
    section = Section("hardware", "t", tmp_path)
    hardware.promotion_verdict(section, "conv net", by_policy, tests, 0.01)
    (judged,) = section.verdicts
    assert (judged.claim, judged.model, judged.verdict) == (hardware.CLAIM_PROMOTION, "conv net", verdict)
    assert judged.claim.startswith("(i) ") and "fp8-h100-fast minus fp8-current" in judged.evidence
    assert bool(judged.condition) == (verdict == "holds under conditions")


def test_the_gemm_parts_write_their_figures_and_quote_their_own_rows(hardware, tmp_path, monkeypatch):
    import csv

    from fpsim.report.section import new_section

    monkeypatch.setattr(hardware, "KS", (64, 128, 4096))
    monkeypatch.setattr(hardware, "size", lambda ctx: 4)
    ctx = Context(tmp_path, quick=True, progress=False)
    section = new_section(ctx, vars(hardware), "t")
    hardware.fp8_gemm(section, ctx)
    hardware.sixteen_bit_gemm(section, ctx)
    assert [f.path for f in section.figures] == ["fp8_gemm.png", "sixteen_bit_gemm.png"]
    assert all((tmp_path / f.path).stat().st_size > 5000 for f in section.figures)
    rows = list(csv.DictReader(open(tmp_path / "sixteen_bit_gemm.csv")))
    median = {(r["inputs"], r["distribution"], r["accumulator"]): float(r["median relative error"])
              for r in rows if r["K"] == "4096"}
    bf16 = median[("bf16", "normal", "A100")] / median[("bf16", "normal", "IEEE FP32")]
    assert f"A100 BF16 {bf16:.1f}x" in section.parts[-1]
    h100 = [r for r in csv.DictReader(open(tmp_path / "fp8_gemm.csv")) if r["K"] == "4096" and
            r["accumulator"] == "H100 (wgmma)" and r["distribution"] == "uniform positive"]
    assert f"{100 * float(h100[0]['median relative error']):.3g}% / " in "\n".join(section.parts)
