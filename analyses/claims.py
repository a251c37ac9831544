"""Does the mixed-precision recipe, as it is usually taught, train as it claims? A verdict, from training the
digits MLP, on the recipe itself, FP16's accuracy and BF16's range (the cost claims: claims_cost)."""

import fpsim
from fpsim.report import sources
from fpsim.report.claims import CLAIM_ACCURACY, CLAIM_RANGE, CLAIM_RECIPE, band, within
from fpsim.report.experiments import (DIGITS_MLP as MLP, accuracy, describe_runs, grid_config, pow2_label,
                                      range_and_precision, run_trainings)
from fpsim.report.plots import recipe_figure, seed_comparison_figure
from fpsim.report.runner import analysis_main
from fpsim.report.section import new_section
from fpsim.report.stats import mean_ci, paired_comparison
from fpsim.sim.data import load_data

ORDER = 90
SEED_POLICIES = ("fp32", "fp16-amp", "bf16-mixed")
TEST_EXAMPLES = len(load_data("digits").y_test)
"""Examples in the digits test set: accuracies are whole multiples of 1 / TEST_EXAMPLES."""
WITHIN = band("MLP", ())
"""Accuracy within this of FP32's counts as "as good as FP32" (one point: the MLP's band)."""
RECIPE = [
    ("1. cast master weights", "master {master} -> params {params}",
     "the master copy is rounded to the compute format"),
    ("2. forward, backward", "activations {activations}\ngradients {gradients}\naccumulate {accumulate}\n"
     "loss {loss}, x loss scale", "products accumulate in the accumulate format; outputs and gradients are rounded"),
    ("3. unscale, check", "gradients {gradients} -> FP32\n/ loss scale, inf/NaN?", "a step with inf/NaN is skipped and "
     "the dynamic scale halves"),
    ("4. optimizer", "update x learning rate\nstate {optimizer_state}", "SGD here; momentum and Adam keep state"),
    ("5. update master", "master {master} += update", "rounded once into the master weights"),
]
"""The five steps of the recipe: title, the tensors and their formats (filled from a Policy), what happens."""



def recipe_formats(policy) -> list[str]:
    fields = {f: str(getattr(policy, f)).upper() for f in ("master", "params", "activations", "gradients",
                                                            "accumulate", "loss", "optimizer_state")}
    return [template.format(**fields) for _, template, _ in RECIPE]


def points(share: float) -> str:
    """A difference of shares in signed percentage points, 2 decimals (no "-0.00")."""
    value = round(100 * share, 2)
    return f"{value + 0.0:+.2f}" if value else "+0.00"


def seed_runs(ctx, small_grad_scale: float) -> dict:
    """Final test accuracy on seeds 0..n-1 (the grid configuration): each SEED_POLICIES policy with the
    gradients as they are (``"configs"``), and fp16-amp with every gradient x ``small_grad_scale``
    (``"amp_small"``)."""
    seeds = list(range(ctx.pick(4, 20)))
    configs = [grid_config(ctx, p, 1.0, seed=s) for p in SEED_POLICIES for s in seeds]
    small = [grid_config(ctx, "fp16-amp", small_grad_scale, seed=s) for s in seeds]
    scores = [accuracy(r) for r in run_trainings(ctx, configs + small)]
    per_policy = [scores[i:i + len(seeds)] for i in range(0, len(scores), len(seeds))]
    return {"seeds": seeds, "accuracy": dict(zip(SEED_POLICIES, per_policy)), "amp_small": per_policy[-1],
            "small_grad_scale": small_grad_scale, "configs": configs}


def compare(a, b) -> dict:
    """``paired_comparison`` of two lists of digits test accuracies, on whole test examples (exact tests)."""
    return paired_comparison(a, b, resolution=1 / TEST_EXAMPLES)


def claim_recipe(section, ctx, seeds, trade):
    section.text('#### (a) The five-step recipe')
    policy = fpsim.Policy.preset("fp16-amp")
    smallest = min(trade["grad_scales"])
    traced, unscaled = run_trainings(ctx, [grid_config(ctx, "fp16-amp", smallest), grid_config(ctx, "fp16-mixed",
                                                                                                smallest)])
    steps = [(title, formats, note) for (title, _, note), formats in zip(RECIPE, recipe_formats(policy))]
    section.text(f"Each step of `fpsim.train` with the fp16-amp preset, and the format of every tensor in it "
                 f"(`{policy.describe()}`):")
    section.table([{"step": step, "tensors and formats": formats.replace("\n", "; "), "what happens": note}
                   for step, formats, note in steps])
    recorded = (f"Recorded over the run with gradients x {pow2_label(smallest)}: activation-gradient values "
                f"flushed to zero {traced['activation_grad_underflow_fraction']:.2%} with dynamic scaling "
                f"(final scale {pow2_label(traced['final_loss_scale'])}, {traced['skipped_steps']} skipped steps) "
                f"against {unscaled['activation_grad_underflow_fraction']:.2%} without; "
                f"updates lost {traced['lost_update_fraction']:.2%}.")
    title = f"The recipe as fpsim emulates it: policy {policy.name} (loss scale {policy.loss_scale})"
    section.figure(recipe_figure(steps, recorded, title), "recipe.png",
                   "(a) The mixed-precision recipe step by step, each tensor's format, and what the run recorded.")
    acc = {(r["policy"], r["grad_scale"]): r["test_accuracy"] for r in trade["range"]}
    rows = [{"gradients x": pow2_label(gs), **{p: acc[(p, gs)] for p in ("fp32", "fp16-pure", "fp16-mixed",
                                                                          "fp16-amp")}}
            for gs in trade["grad_scales"]]
    section.table(rows, caption=f"Test accuracy of the full recipe (fp16-amp) and with a step left out (seed 0, "
                                f"{trade['steps']} steps, lr 0.05): fp16-mixed drops loss scaling, fp16-pure also "
                                "drops the master weights.")
    gaps = [acc[("fp32", gs)] - acc[("fp16-amp", gs)] for gs in trade["grad_scales"]]
    mixed_gaps = [acc[("fp32", gs)] - acc[("fp16-mixed", gs)] for gs in trade["grad_scales"]]
    pure_gaps = [acc[("fp32", gs)] - acc[("fp16-pure", gs)] for gs in trade["grad_scales"]]
    test = compare(seeds["accuracy"]["fp16-amp"], seeds["accuracy"]["fp32"])
    # FP32 trains the same at every gradient multiplier (power-of-two scaling is exact in its range), so its
    # runs with the gradients as they are serve as the reference for fp16-amp's runs with tiny gradients
    fp32_same = len({acc[("fp32", gs)] for gs in trade["grad_scales"]}) == 1
    reference = ("FP32's seed-0 accuracy is the same at every multiplier, so its runs at x 1 are the reference"
                 if fp32_same else "reference: FP32 at x 1, although its seed-0 accuracy differs across multipliers")
    small = compare(seeds["amp_small"], seeds["accuracy"]["fp32"])
    failing = [gs for gs, gap in zip(trade["grad_scales"], gaps) if gap > WITHIN]
    seeds_agree = within(test, WITHIN) and within(small, WITHIN)
    if seeds_agree and not failing:
        verdict, condition = "holds", ""
    elif seeds_agree and len(failing) < len(gaps):
        verdict = "holds under conditions"
        condition = (f" Condition: gradients not as small as x {', '.join(pow2_label(g) for g in failing)}, where the "
                     "dynamic scale does not reach the scale needed within the run.")
    else:
        verdict, condition = "not supported by the evidence", ""
    section.verdict(
        CLAIM_RECIPE, verdict,
        f"fp16-amp is at most {100 * max(gaps):.2f} points below FP32 over gradient multipliers "
        f"{', '.join(pow2_label(g) for g in trade['grad_scales'])} (seed 0); over {test['n']} seeds the mean "
        f"difference is {points(test['mean_difference'])} points (95% CI {points(test['low'])} to "
        f"{points(test['high'])}) with the gradients as they are and {points(small['mean_difference'])} (95% CI "
        f"{points(small['low'])} to {points(small['high'])}) with every gradient x "
        f"{pow2_label(seeds['small_grad_scale'])} ({reference}); "
        f"{'both CIs lie' if seeds_agree else 'not both CIs lie'} inside +-{100 * WITHIN:g} point. "
        f"Without loss scaling (fp16-mixed) FP16 falls up to {100 * max(mixed_gaps):.1f} points behind as gradients "
        f"shrink, and without master weights as well (fp16-pure) up to {100 * max(pure_gaps):.1f}; the cost of "
        f"dropping the master weights grows at small learning rates (master_weights).{condition} Scope: the digits "
        f"MLP {'-'.join(map(str, MLP))}, SGD lr 0.05, {trade['steps']} steps; the conv net and the transformer "
        "(Adam) have their own rows (claims_models).",
        "this run (fpsim.train on digits).", model="MLP", condition=condition.strip().removeprefix("Condition: "))


def claim_accuracy(section, ctx, seeds):
    section.text('#### (e) "FP16 test accuracy went up (a regularising effect)"')
    acc = seeds["accuracy"]
    n = len(seeds["seeds"])
    section.what_was_run(f"{describe_runs(seeds['configs'])} (a seed fixes the initial weights and the batch order, "
                         "so the policies are compared paired, seed by seed).")
    rows, tests = [], {}
    for p in SEED_POLICIES:
        ci = mean_ci(acc[p])
        row = {"policy": p, "seeds": n, "mean accuracy %": 100 * ci["mean"], "95% CI low": 100 * ci["low"],
               "95% CI high": 100 * ci["high"], "std": 100 * ci["std"]}
        if p != "fp32":
            tests[p] = compare(acc[p], acc["fp32"])
            row.update({"mean diff vs fp32 (points)": round(100 * tests[p]["mean_difference"], 4) + 0.0,
                        "diff CI": f"{points(tests[p]['low'])} to {points(tests[p]['high'])}",
                        "paired t p": tests[p]["t_test_p"], "Wilcoxon p": tests[p]["wilcoxon_p"],
                        "seeds better / worse / same": f"{tests[p]['a_better']} / {tests[p]['b_better']} / "
                                                       f"{tests[p]['ties']}"})
        rows.append(row)
    section.table(rows)
    section.data("accuracy_seeds.json", {"seeds": seeds["seeds"], "accuracy": acc, "summary": rows,
                                          "paired_tests": tests, "small_grad_scale": seeds["small_grad_scale"],
                                          "fp16-amp_accuracy_at_small_grad_scale": seeds["amp_small"]})
    fig = seed_comparison_figure(seeds["seeds"], acc, {p: t["t_test_p"] for p, t in tests.items()})
    section.figure(fig, "accuracy_seeds.png", f"(e) Test accuracy over {n} seeds per policy, and the paired "
                                              "differences against FP32, seed by seed.")
    t = tests["fp16-amp"]
    went_up = t["mean_difference"] > 0 and t["t_test_p"] < 0.05
    section.verdict(
        CLAIM_ACCURACY,
        "holds" if went_up else "not supported by the evidence",
        f"Over {n} seeds fp16-amp differs from FP32 by {points(t['mean_difference'])} points on average (95% CI "
        f"{points(t['low'])} to {points(t['high'])}; paired t-test p = {t['t_test_p']:.2g}, Wilcoxon p = "
        f"{t['wilcoxon_p']:.2g}; seeds better / worse / equal: {t['a_better']} / {t['b_better']} / {t['ties']}). "
        f"The article's numbers come from one seed each, and its FP32-with-TF32 run scored "
        f"{sources.DISTILBERT_TF32_ACC.value}% against {sources.DISTILBERT_16MIXED_ACC.value}% for 16-mixed: a "
        "single-seed difference of that size says nothing about a regularising effect.",
        f"this run; {sources.ARTICLE}.", model="MLP")


def claim_bf16(section, ctx, trade):
    section.text('#### (f) "BF16\'s range is more robust"')
    acc = {(r["policy"], r["grad_scale"]): r for r in trade["range"]}
    scales = trade["grad_scales"]
    bf16_gap = max(acc[("fp32", g)]["test_accuracy"] - acc[("bf16-mixed", g)]["test_accuracy"] for g in scales)
    fp16_gap = max(acc[("fp32", g)]["test_accuracy"] - acc[("fp16-mixed", g)]["test_accuracy"] for g in scales)
    lr = min(trade["lrs"])
    lost = {r["policy"]: r for r in trade["precision"] if r["lr"] == lr}  # fp32 has no lost-update problem
    section.text(
        f"From the bf16_range runs (seed 0, {trade['steps']} steps, gradients x "
        f"{', '.join(pow2_label(g) for g in scales)}): without loss scaling, BF16 with FP32 master weights stays "
        f"within {100 * bf16_gap:.2f} points of FP32 at every gradient magnitude, FP16 falls up to "
        f"{100 * fp16_gap:.1f} points "
        f"behind. Without master weights, at lr {lr}, pure BF16 loses {lost['bf16-pure']['lost_update_fraction']:.0%} "
        f"of its updates (test accuracy {100 * lost['bf16-pure']['test_accuracy']:.1f}%) against "
        f"{lost['fp16-pure']['lost_update_fraction']:.0%} for pure FP16 "
        f"({100 * lost['fp16-pure']['test_accuracy']:.1f}%; FP32 at that learning rate "
        f"{100 * lost['fp32']['test_accuracy']:.1f}%).")
    robust = bf16_gap <= WITHIN and fp16_gap > WITHIN
    precision_cost = lost["bf16-pure"]["lost_update_fraction"] > lost["fp16-pure"]["lost_update_fraction"]
    verdict = ("holds under conditions" if robust and precision_cost else "holds" if robust
               else "not supported by the evidence")
    section.verdict(
        CLAIM_RANGE, verdict,
        f"Range: BF16 needs no loss scaling (within {100 * bf16_gap:.2f} points of FP32 down to gradients x "
        f"{pow2_label(min(scales))}; unscaled FP16 up to {100 * fp16_gap:.1f} points behind). Condition: FP32 master "
        f"weights (or stochastic rounding / Kahan), because with 8 significant bits pure BF16 loses "
        f"{lost['bf16-pure']['lost_update_fraction']:.0%} of updates at lr {lr} against "
        f"{lost['fp16-pure']['lost_update_fraction']:.0%} for FP16 (test accuracy "
        f"{100 * lost['bf16-pure']['test_accuracy']:.1f}% and {100 * lost['fp16-pure']['test_accuracy']:.1f}% against "
        f"FP32's {100 * lost['fp32']['test_accuracy']:.1f}% at that learning rate).",
        "this run (bf16_range, master_weights): the digits MLP, SGD, seed 0.", model="MLP",
        condition="FP32 master weights (or stochastic rounding / Kahan)" if precision_cost else "")


def run(ctx):
    section = new_section(ctx, globals(), "Claims judged by training: the recipe, FP16's accuracy, BF16's range")
    trade = range_and_precision(ctx)
    seeds = seed_runs(ctx, min(trade["grad_scales"]))
    claim_recipe(section, ctx, seeds, trade)
    claim_accuracy(section, ctx, seeds)
    claim_bf16(section, ctx, trade)
    return section


if __name__ == "__main__":
    raise SystemExit(analysis_main(globals()))
