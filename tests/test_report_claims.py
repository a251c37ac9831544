"""How the report judges a claim on a model (fpsim.report.claims) and describes what was run
(fpsim.report.experiments): scores of diverged runs, the "as well as" band, paired differences in words."""

import math

import pytest

from fpsim.report import claims
from fpsim.report.experiments import ScaleRounding, describe_runs
from fpsim.sim.policy import SCALED_POLICIES


def run(status="ok", test_loss=0.5, test_accuracy=0.9):
    return {"status": status, "test_loss": test_loss, "test_accuracy": test_accuracy}


def test_a_diverged_run_has_no_score_but_a_final_one():
    assert claims.score("conv net", run()) == 0.9
    assert claims.score("transformer", run()) == pytest.approx(0.5 / math.log(2))
    assert claims.score("conv net", run("diverged")) is None
    assert claims.final_score("conv net", run("diverged", test_loss=None)) == 0.9  # where the weights ended
    assert claims.final_score("conv net", run("diverged", test_loss=None, test_accuracy=None)) == 0.0
    assert claims.final_score("transformer", run("diverged", test_loss=None)) is None


def test_the_band_is_one_point_or_one_percent_of_the_reference():
    assert claims.band("MLP", ()) == claims.band("conv net", [0.5, 0.7]) == 0.01
    assert claims.band("transformer", [2.0, 4.0]) == pytest.approx(0.03)
    test = {"low": -0.004, "high": 0.009, "mean_difference": 0.002, "t_test_p": 0.3, "wilcoxon_p": 0.5}
    assert claims.within(test, 0.01) and not claims.within(test, 0.005) and not claims.within(None, 1.0)
    assert not claims.better("conv net", test)
    assert claims.better("conv net", dict(test, t_test_p=0.01)) and not claims.better("transformer",
                                                                                     dict(test, t_test_p=0.01))


def test_a_paired_difference_in_words():
    test = {"low": -0.004, "high": 0.009, "mean_difference": 0.002, "t_test_p": 0.3, "wilcoxon_p": 0.5}
    assert claims.difference_text("conv net", test) == "+0.200 points (95% CI -0.400 to +0.900, paired t p = 0.3)"
    assert claims.difference_text("transformer", test, wilcoxon=True, lower_is_better=True) == (
        "+0.002 bits per character (negative: better) (95% CI -0.004 to +0.009; paired t p = 0.3, Wilcoxon p = 0.5)")
    assert claims.difference_text("MLP", None).startswith("not compared")
    assert claims.tolerance_text("conv net", 0.01) == "+-1 points"


def test_the_score_table_compares_each_policy_with_the_reference_unless_a_run_has_no_score():
    rows, tests = claims.score_table("conv net", {"ref": [0.5, 0.6, 0.7], "a": [0.6, 0.6, 0.9], "b": [0.1, None, 0.2]},
                                     "ref", no_score="no finite loss")
    assert [r["policy"] for r in rows] == ["ref", "a", "b"] and list(tests) == [("conv net", "a")]
    assert rows[1]["minus ref"] == pytest.approx(0.1) and "Wilcoxon p" not in rows[1]
    assert rows[2]["diverged"] == "1 of 3 seeds (no finite loss)" and "mean" not in rows[2]


def test_what_was_run_is_read_from_the_configs():
    configs = [dict(policy=p, steps=60, seed=s) for p in ("fp32", "bf16-mixed") for s in range(3)]
    assert describe_runs(configs) == ("fpsim.train on digits, MLP 64-128-128-128-10, SGD lr 0.05, batch 64, 60 "
                                      "steps, seeds 0..2 for each of fp32, bf16-mixed")
    with pytest.raises(ValueError, match="differ only in policy and seed"):
        describe_runs([dict(policy="fp32", steps=60), dict(policy="fp32", steps=70)])


def test_a_scale_rounding_variant_is_the_preset_with_those_kinds_rounded_another_way():
    variant = ScaleRounding("mxfp8", (("gradients", "rceil"),), "gradient scales rounded up")
    policy = variant.policy()
    assert policy["name"] == variant.name == "mxfp8 gradient scales rounded up" and policy["preset"] == "mxfp8"
    assert policy["scaling"]["gradients"]["scale_rounding"] == "rceil"
    assert policy["scaling"]["activations"]["scale_rounding"] == policy["scaling"]["params"]["scale_rounding"] == "floor"
    assert dict(policy["scaling"]["gradients"], scale_rounding="floor") == \
        dict(SCALED_POLICIES["mxfp8"].scaling)["gradients"].to_dict()
