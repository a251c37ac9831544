"""The report's recipes section (analyses/recipes.py, fpsim/report/recipes.py): the NVFP4 variants and the 2-D
gradient blocks it builds, the statistics it takes of a run, its verdicts (j) and (k) from paired runs, and the
section itself in quick mode."""

import csv
import dataclasses
import re

import numpy as np
import pytest

from fpsim.report import recipes
from fpsim.report.runner import load_analysis
from fpsim.report.section import Context, Section
from fpsim.sim.policy import POLICIES
from fpsim.sim.scaling import Scaling

@pytest.fixture(scope="module")
def section_module():
    return load_analysis("recipes")


# --- the policies --------------------------------------------------------------------------------------

def test_every_component_on_is_the_nvfp4_te_preset_and_none_is_plain_nvfp4():
    full = POLICIES["nvfp4-te"]
    everything = recipes.nvfp4_variant(tuple(recipes.NVFP4_COMPONENTS))
    assert everything == full and everything.name == "nvfp4-te"
    none = recipes.nvfp4_variant(())
    assert none.name == "nvfp4-te, none" and none.overrides == ()
    for kind, scaling in none.scaling:
        assert (scaling.block, scaling.block_size, scaling.stochastic, scaling.hadamard) == ("nvfp4_te", None, False,
                                                                                             False), kind
    assert (none.params, none.activations, none.gradients, none.master) == (full.params, full.activations,
                                                                            full.gradients, full.master)


@pytest.mark.parametrize("component, changed", [
    ("2-D weights", {("params", "block_size"): (16, 16)}),
    ("SR gradients", {("gradients", "stochastic"): True}),
    ("RHT", {("activations", "hadamard"): True, ("gradients", "hadamard"): True}),
    ("last layers BF16", {}),
])
def test_each_component_switches_on_its_fields_of_nvfp4_te_and_nothing_else(component, changed):
    none, one = recipes.nvfp4_variant(()), recipes.nvfp4_variant((component,))
    assert one.name == f"nvfp4-te, +{component}"
    for (kind, base), (_, scaling) in zip(none.scaling, one.scaling):
        for field in recipes.SWITCHES:
            assert getattr(scaling, field) == changed.get((kind, field), getattr(base, field)), (kind, field)
    assert one.overrides == (POLICIES["nvfp4-te"].overrides if component == recipes.LAST_LAYERS else ())


def test_unknown_components_are_refused_in_one_line():
    with pytest.raises(ValueError, match="unknown NVFP4 component.*choose from 2-D weights"):
        recipes.nvfp4_variant(("RHT", "FP32 master"))


def test_the_2d_gradient_variant_changes_only_the_gradients_blocks():
    preset, variant = POLICIES["fp8-blockwise"], recipes.blockwise_2d_gradients()
    scaling, base = dict(variant.scaling), dict(preset.scaling)
    assert scaling["gradients"] == dataclasses.replace(base["gradients"], block_size=(128, 128))
    assert base["gradients"].block_size == 128
    assert scaling["params"] == base["params"] == Scaling.block_of("mxfp8_e4m3", "floor-scale", block_size=(128, 128))
    assert scaling["activations"] == base["activations"]
    assert dataclasses.replace(variant, name=preset.name, scaling=preset.scaling) == preset


# --- what a run says -------------------------------------------------------------------------------------

def test_the_relative_gap_is_paired_seed_by_seed():
    gap = recipes.relative_gap([1.01, 2.04, 3.0], [1.0, 2.0, 3.0, 9.0])  # the reference's extra seed is left out
    assert gap["mean_difference"] == pytest.approx((0.01 + 0.02 + 0.0) / 3)
    half = 4.302652729749464 * np.std([0.01, 0.02, 0.0], ddof=1) / np.sqrt(3)  # t(0.975, 2)
    assert gap["high"] == pytest.approx(0.01 + half) and gap["low"] == pytest.approx(0.01 - half)
    assert recipes.relative_gap([1.0, None], [1.0, 1.0]) is None


def test_the_gradient_error_is_the_median_over_steps_and_modules():
    result = {"shadow": [{"relative_error": [0.1, None, 0.3]}, {"relative_error": [0.2, 0.9]}]}
    assert recipes.gradient_error(result) == 0.25
    assert recipes.gradient_error({"shadow": [{"relative_error": [None]}]}) is None


def test_the_validation_loss_is_in_bits_for_the_transformer_and_none_for_a_diverged_run():
    assert recipes.validation_loss("transformer", {"status": "ok", "test_loss": np.log(2) * 3}) == pytest.approx(3)
    assert recipes.validation_loss("conv net", {"status": "ok", "test_loss": 1.25}) == 1.25
    assert recipes.validation_loss("conv net", {"status": "diverged", "test_loss": 1.25}) is None


# --- the verdicts, from paired runs ---------------------------------------------------------------------

NOISE = [0.0011, -0.0007, 0.0003]


def fake(loss, bf16_layers=("head",)):
    """A run's result as the section reads it (conv net: its test loss in nats); None: a diverged run."""
    return {"status": "ok" if loss is not None else "diverged", "test_loss": loss, "test_accuracy": 0.5,
            "history": [{"saturated": {"gradients": 2}}], "activation_grad_underflow_fraction": 0.01,
            "scaling": [{"module": "convs.0", "kind": "gradients", "values": [100], "saturated": [2]}],
            "shadow": [{"relative_error": [0.1, 0.2]}],
            "layers": [{"module": "convs.0", "policy": "nvfp4-te", "parameters": 90}] +
                      [{"module": m, "policy": "bf16-mixed", "parameters": 10} for m in bf16_layers]}


def runs(**losses):
    """{policy: [fake results]} from {policy: losses seed by seed}."""
    return {name.replace("_", " "): [fake(v) for v in values] for name, values in losses.items()}


BASE = [2.0, 2.1, 1.9]


def nvfp4_runs(full_gap, component_gains, spread=0.1):
    """fp8-current at BASE; plain NVFP4 5% above it; each component lowering plain NVFP4's loss by its gain (0:
    noise only); nvfp4-te ``full_gap`` (relative) above fp8-current, with NOISE times ``spread``."""
    none = [b * 1.05 for b in BASE]
    by_name = {"fp8-current": [fake(b) for b in BASE], "bf16-mixed": [fake(b - 0.01) for b in BASE],
               "nvfp4-te, none": [fake(v) for v in none],
               "nvfp4-te": [fake(b * (1 + full_gap) + spread * e) for b, e in zip(BASE, NOISE)]}
    for component, gain in component_gains.items():
        by_name[f"nvfp4-te, +{component}"] = [fake(v - gain + e) for v, e in zip(none, NOISE)]
    return by_name


GAINS = {"2-D weights": 0.05, "SR gradients": 0.03, "RHT": 0.04, "last layers BF16": 0.08}


@pytest.mark.parametrize("full_gap, spread, gains, verdict, unshown, said", [
    (0.005, 0.1, GAINS, "holds", [], ": within"),
    (0.005, 0.1, dict(GAINS, RHT=0.0), "holds under conditions", ["RHT"], ": within"),
    (0.012, 5.0, GAINS, "not supported by the evidence", [], ": not shown within"),  # its CI reaches over 1.5%
    (0.05, 0.1, GAINS, "not supported by the evidence", [], ": beyond"),
])
def test_verdict_j_follows_the_gap_to_fp8_and_the_components(section_module, tmp_path, full_gap, spread, gains,
                                                            verdict, unshown, said):
    section = Section("recipes", "t", tmp_path)
    by_name = nvfp4_runs(full_gap, gains, spread)
    section_module.nvfp4_verdict(section, "conv net", by_name, 100)
    (judged,) = section.verdicts
    assert (judged.claim, judged.model, judged.verdict) == (section_module.CLAIM_NVFP4, "conv net", verdict)
    assert judged.claim.startswith("(j) ")
    gap = recipes.relative_gap([r["test_loss"] for r in by_name["nvfp4-te"]], BASE)
    assert f"relative, {100 * gap['mean_difference']:+.2f}% (95% CI {100 * gap['low']:+.2f}%" in judged.evidence
    assert f"{said} the paper's 1.5%" in judged.evidence
    helping = [c for c in recipes.NVFP4_COMPONENTS if c not in unshown]
    assert f"lowering the loss: {', '.join(helping)}" in judged.evidence
    assert "is here head" in judged.evidence and "100 steps" in judged.evidence
    assert all(c in judged.condition for c in unshown) and bool(judged.condition) == (verdict == "holds under "
                                                                                           "conditions")


def blockwise_runs(gap, tiles_penalty, spread=0.01):
    """bf16-mixed at BASE, fp8-current 0.1% above, fp8-blockwise ``gap`` above (with NOISE times ``spread``); the
    128 x 128 variant ``tiles_penalty`` above fp8-blockwise (None: diverged)."""
    blockwise = [b * (1 + gap) + spread * e for b, e in zip(BASE, NOISE)]
    return {"bf16-mixed": [fake(b) for b in BASE], "fp8-current": [fake(b * 1.001) for b in BASE],
            "fp8-blockwise": [fake(v) for v in blockwise],
            recipes.BLOCKWISE_2D_GRADIENTS: [fake(None if tiles_penalty is None else v + tiles_penalty + e)
                                             for v, e in zip(blockwise, NOISE)]}


@pytest.mark.parametrize("gap, spread, penalty, verdict, condition, said", [
    (0.0005, 0.01, 0.05, "holds", "", ": within"),
    (0.0005, 0.01, 0.0, "holds under conditions", "not shown worse", ": within"),
    (0.0005, 0.01, None, "holds", "", ": within"),
    (0.002, 1.0, 0.05, "holds under conditions", "not shown within 0.25%", ": not shown within"),  # CI over 0.25%
    (0.03, 0.01, 0.05, "holds under conditions", "not shown within 0.25%", ": beyond"),
    (0.03, 0.01, 0.0, "not supported by the evidence", "", ": beyond"),
])
def test_verdict_k_follows_the_gap_to_bf16_and_the_2d_gradient_blocks(section_module, tmp_path, gap, spread, penalty,
                                                                      verdict, condition, said):
    pytest.importorskip("torch")  # the conv net's widths come from its config
    section = Section("recipes", "t", tmp_path)
    section_module.blockwise_verdict(section, "conv net", blockwise_runs(gap, penalty, spread), {"model": "cnn"})
    (judged,) = section.verdicts
    assert (judged.claim, judged.model, judged.verdict) == (section_module.CLAIM_BLOCKWISE, "conv net", verdict)
    assert judged.claim.startswith("(k) ") and condition in judged.condition
    assert f"{said} DeepSeek's 0.25%" in judged.evidence
    assert ("3 of 3 runs diverged" in judged.evidence) == (penalty is None)
    assert "at most 32 values (the conv net's channels)" in judged.evidence
    assert "fp8-blockwise 6" in judged.evidence  # saturated values over its 3 seeds


def test_verdict_k_says_so_when_the_2d_blocks_change_no_loss(section_module, tmp_path):
    pytest.importorskip("torch")
    by_name = blockwise_runs(0.0005, 0.0)
    by_name[recipes.BLOCKWISE_2D_GRADIENTS] = [fake(r["test_loss"]) for r in by_name["fp8-blockwise"]]
    section = Section("recipes", "t", tmp_path)
    section_module.blockwise_verdict(section, "conv net", by_name, {"model": "cnn"})
    (judged,) = section.verdicts
    assert judged.verdict == "holds under conditions"
    assert "1 x 128 tiles: 0 in each of the 3 seeds (the same losses) (not shown worse)" in judged.evidence


# --- the section, in quick mode ---------------------------------------------------------------------------

@pytest.mark.slow
def test_the_quick_section_writes_its_figures_and_quotes_its_runs(section_module, tmp_path):
    pytest.importorskip("torch")
    from fpsim.report.experiments import run_trainings

    ctx = Context(tmp_path, quick=True, progress=False)
    try:
        section = section_module.run(ctx)
        assert [f.path for f in section.figures] == ["nvfp4_components.png", "blockwise.png"]
        assert all((tmp_path / f.path).read_bytes()[:4] == b"\x89PNG" and (tmp_path / f.path).stat().st_size > 5000
                   for f in section.figures)
        rows = {(r["model"], r["policy"]): r for r in csv.DictReader(open(tmp_path / "nvfp4_components.csv"))}
        assert len(rows) == 2 * (2 + len(section_module.COMPONENT_VARIANTS))
        # the numbers come from the runs: the stored runs of one policy, read again, give the row's mean
        results = run_trainings(ctx, [section_module.config(ctx, "transformer", "nvfp4-te, +RHT", s) for s in (0, 1)])
        losses = [recipes.validation_loss("transformer", r) for r in results]
        assert float(rows[("transformer", "nvfp4-te, +RHT")]["loss mean"]) == pytest.approx(np.mean(losses))
        assert len({r["loss mean"] for r in rows.values()}) > len(rows) // 2  # the policies' runs differ
        blockwise = list(csv.DictReader(open(tmp_path / "blockwise.csv")))
        assert {r["policy"] for r in blockwise} == set(section_module.BLOCKWISE_NAMES)
    finally:
        ctx.close()
    verdicts = {(v.claim[:3], v.model): v for v in section.verdicts}
    assert set(verdicts) == {(c, m) for c in ("(j)", "(k)") for m in ("conv net", "transformer")}
    for (claim, model), v in verdicts.items():  # the wording follows the interval it quotes
        bound = 1.5 if claim == "(j)" else 0.25
        high = float(re.search(r"relative, [+-][\d.]+% \(95% CI [+-][\d.]+% to ([+-][\d.]+)%", v.evidence).group(1))
        assert (f": within the paper's {bound:g}%" in v.evidence or f": within DeepSeek's {bound:g}%" in v.evidence) \
            == (high <= bound) and ("not shown within" not in v.evidence or high > bound), v.evidence
        assert (v.verdict == "not supported by the evidence") == (high > bound and (claim == "(j)" or "not shown "
                                                                                    "worse" in v.evidence))
