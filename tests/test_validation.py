"""The validation run that `fpsim validate` prints: 10 million inputs, every row 0 mismatches."""

import numpy as np
import pytest

from fpsim.numerics import validation


def test_ten_million_inputs_match_every_oracle():
    rows = validation.run_validation(10_000_000, seed=0, exact_samples=500, progress=False)
    hardware = [r for r in rows if r["oracle"] == "hardware"]
    assert {(r["format"], r["input_dtype"]) for r in hardware} == {
        ("fp16", "float32"), ("bf16", "float32"), ("e4m3", "float32"), ("e5m2", "float32"), ("fp16", "float64")}
    assert all(r["inputs"] >= 9_900_000 for r in hardware)
    assert {r["mode"] for r in rows if r["oracle"] == "exact"} == {"nearest", "nearest_away", "toward_zero", "up",
                                                                   "down"}
    assert [r for r in rows if r["mismatches"]] == []


def test_inputs_cover_ties_and_specials():
    import fpsim
    x = validation.validation_inputs(200_000, seed=1)
    assert np.isnan(x).any() and np.isposinf(x).any() and np.isneginf(x).any()
    assert np.signbit(x[x == 0]).any() and (~np.signbit(x[x == 0])).any()
    finite = x[np.isfinite(x)].astype(np.float64)
    for fmt in validation.HARDWARE_FORMATS:
        down, up = fpsim.round(finite, fmt, "down"), fpsim.round(finite, fmt, "up")
        exact_ties = np.count_nonzero((down != up) & (finite - down == up - finite))
        assert exact_ties > 3_000, fmt  # about 1/50 of the inputs per format
        assert np.isin(np.float32(fmt.max), x) and np.isin(np.float32(fmt.smallest_subnormal), x)


def test_mismatch_counter_can_fail():
    assert validation.mismatches(np.array([0.0, 1.0, np.nan]), np.array([-0.0, 1.0, np.nan])) == 1


@pytest.fixture(scope="module")
def study():
    return validation.double_rounding_study(30_000, seed=0)


def test_double_rounding_through_float32_is_found_and_fpsim_is_right(study):
    assert study["fpsim_wrong_in_sample"] == 0
    assert study["two_step_wrong_in_sample"] > 0.2 * study["exact_sample"]


def test_library_casts_are_measured_not_assumed(study):
    """Each library's float64 -> bfloat16 cast is classified from what it computed, whatever the release."""
    assert {c["library"] for c in study["casts"]} >= {"ml_dtypes"}
    for cast in study["casts"]:
        assert cast["version"]
        assert (cast["rounds"] == "once") == (cast["differs_from_fpsim"] == 0)
        if cast["rounds"] == "twice":
            assert cast["differs_from_fpsim"] == study["two_step_differs_from_fpsim"]
        if cast["rounds"] == "once":
            assert cast["wrong_in_sample"] == 0
