"""Does each claim of the mixed-precision recipe, as it is usually taught, hold? A verdict per claim:
the recipe itself, training time, training memory, inference memory and time, FP16's accuracy, BF16's range."""

import fpsim
from fpsim.report import memory, roofline, sources
from fpsim.report.claims import CLAIM_ACCURACY, CLAIM_RANGE, CLAIM_RECIPE, band, within
from fpsim.report.experiments import (accuracy, describe_runs, grid_config, pow2_label, range_and_precision,
                                      run_trainings)
from fpsim.report.plots import memory_figure, recipe_figure, roofline_figure, seed_comparison_figure
from fpsim.report.runner import analysis_main
from fpsim.report.section import new_section
from fpsim.report.stats import mean_ci, paired_comparison
from fpsim.sim.data import load_data

ORDER = 90
BARELY_CHANGES = 0.85
"""A 16-bit / FP32 peak-memory ratio at or above this counts as "barely changes"."""
MLP = (64, 128, 128, 128, 10)
"""The digits MLP of the training analyses (64 inputs, three hidden layers of 128, 10 classes)."""
WIDE_MLP = (1024, 2048, 2048, 2048, 10)
"""A wider MLP for inference memory, whose weights (about 10M parameters) dominate at small batch."""
ENCODER = dict(layers=6, d=768, heads=12, ffn=3072, vocab=30522, seq=512)
"""DistilBERT's shape (Sanh et al. 2019), at 512 tokens per sequence."""
SEED_POLICIES = ("fp32", "fp16-amp", "bf16-mixed")
TEST_EXAMPLES = len(load_data("digits").y_test)
"""Examples in the digits test set: accuracies are whole multiples of 1 / TEST_EXAMPLES."""
WITHIN = band("MLP", ())
"""Accuracy within this of FP32's counts as "as good as FP32" (one point: the MLP's band)."""
RECIPE = [
    ("1. cast master weights", "master {master} -> params {params}", "the master copy is rounded to the compute format"),
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


def claim_time(section, ctx):
    gpu = roofline.A100_80GB
    encoder = roofline.encoder_workload(batch=16, **ENCODER)
    breakdown = [roofline.step_time(encoder, p, gpu) for p in roofline.PRECISIONS]
    sweeps = {"DistilBERT-sized encoder": (ctx.pick([1, 4, 16, 64], [1, 2, 4, 8, 16, 32, 64, 128]),
                                           lambda b: roofline.encoder_workload(batch=b, **ENCODER)),
              "digits MLP": (ctx.pick([16, 256, 4096], [2 ** k for k in range(2, 17, 2)]),
                             lambda b: roofline.mlp_workload(MLP, b))}
    rows = roofline.speedup_table(sweeps, (roofline.A100_80GB, roofline.A100_40GB))
    curves = {}
    for name in sweeps:
        picked = [r for r in rows if r["workload"] == name and r["gpu"] == gpu.name]
        for precision in ("tf32", "16-mixed"):
            curves[(name, precision)] = ([r["batch"] for r in picked], [r[f"{precision} over fp32"] for r in picked])
    section.text('#### (b) "Training takes 1/2 to 1/3 of the FP32 time"')
    strict = sources.DISTILBERT_FP32_MIN.value / sources.DISTILBERT_16MIXED_MIN.value
    tf32 = sources.DISTILBERT_TF32_MIN.value / sources.DISTILBERT_16MIXED_MIN.value
    tf32_alone = sources.DISTILBERT_FP32_MIN.value / sources.DISTILBERT_TF32_MIN.value
    section.data("time_model.csv", rows)
    section.figure(roofline_figure(breakdown, curves, {"DistilBERT 16-mixed over strict FP32": strict,
                                                       "DistilBERT 16-mixed over TF32": tf32}),
                   "time_model.png",
                   "(b) A roofline MODEL of the training step on an A100 (datasheet peaks), not a measurement: "
                   "left, where the time of a DistilBERT-sized step goes; right, the modelled speed-up over FP32 "
                   "against batch size, beside the cited measured speed-ups.")
    model16 = roofline.speedups(encoder, gpu)
    mlp64 = roofline.speedups(roofline.mlp_workload(MLP, 64), gpu)
    section.text(
        "Not measurable on this CPU: fpsim emulates the formats in software, so a 16-bit step is slower here, "
        "not faster. The roofline model instead prices each operation of a step at max(flops / peak, bytes / "
        f"bandwidth) with the datasheet peaks of the {gpu.name} (FP32 {gpu.fp32_flops / 1e12:g}, TF32 "
        f"{gpu.tf32_flops / 1e12:g}, FP16/BF16 tensor {gpu.fp16_flops / 1e12:g} TFLOP/s dense, "
        f"{gpu.bandwidth / 1e12:g} TB/s; the 40GB model's {roofline.A100_40GB.bandwidth / 1e12:g} TB/s is in the "
        f"data; source: {gpu.source}). For a DistilBERT-sized encoder (shape from {sources.DISTILBERT}; here "
        f"{encoder.params / 1e6:.1f}M parameters by the model's count, batch 16 x 512 tokens, our choice) the model gives a 16-mixed step "
        f"{model16['fp32_over']['16-mixed']:.2f}x faster than strict FP32 and "
        f"{model16['tf32_over']['16-mixed']:.2f}x faster than TF32; TF32 alone {model16['fp32_over']['tf32']:.2f}x. "
        f"These are ratios of roofline times, the model's answer if both precisions reach the same share of their "
        f"peaks; real steps add launch overheads, data loading and imperfect utilisation. "
        f"For the digits MLP at batch 64 the modelled step is {model16 and mlp64['times']['fp32'] * 1e6:.2f} us "
        "in FP32: far below a kernel launch (microseconds), so on a GPU its time is overhead, whatever the format.\n\n"
        f"Cited measurements ({sources.ARTICLE}): {sources.DISTILBERT_FP32_MIN.value} min strict FP32, "
        f"{sources.DISTILBERT_TF32_MIN.value} min FP32 with TF32 matmuls, {sources.DISTILBERT_16MIXED_MIN.value} "
        f"min 16-mixed: {strict:.2f}x over strict FP32 but {tf32:.2f}x over TF32 (TF32 alone gives {tf32_alone:.2f}x).")
    gpu_rows = roofline.gpu_matmul_timing()
    if gpu_rows:
        section.table(gpu_rows, caption="Measured matmul throughput on this machine's GPU (torch).")
        section.data("gpu_matmul.csv", gpu_rows)
    else:
        section.text("No GPU timing: torch with a CUDA device is not available on this machine.")
    verdict = "holds under conditions" if strict >= 2 and tf32 < 2 else (
        "holds" if strict >= 2 else "not supported by the evidence")
    section.verdict(
        "(b) mixed precision takes 1/2 to 1/3 of the FP32 training time", verdict,
        f"Against strict FP32 matmuls on a tensor-core GPU: cited {strict:.2f}x (DistilBERT/IMDb, one A100), "
        f"roofline model {model16['fp32_over']['16-mixed']:.1f}x (equal efficiency assumed). Against FP32 with TF32 "
        f"matmuls the cited measurement is only {tf32:.2f}x "
        f"(model {model16['tf32_over']['16-mixed']:.2f}x); for small models the step is launch-bound "
        "and the format does not matter. Conditions: compared with strict FP32, matmul-dominated, large enough "
        "to fill the GPU.",
        f"{sources.ARTICLE}; {gpu.source}.")


def claim_training_memory(section, ctx):
    section.text('#### (c) "Training memory barely changes"')
    batches = ctx.pick([16, 1024], [4, 16, 64, 256, 1024, 4096, 16384])
    policies = ("fp32", "fp16-autocast", "fp16-mixed", "bf16-pure")
    params = memory.mlp_params(MLP)
    measured, modelled = memory.mlp_training_memory(MLP, batches, policies)
    peak = {(r["policy"], r["batch"]): r["peak bytes"] for r in measured}
    ratio_curves = {f"measured MLP, {p} / fp32": (batches, [peak[(p, b)] / peak[("fp32", b)] for b in batches])
                    for p in ("fp16-autocast", "fp16-mixed")}
    enc_batches = ctx.pick([1, 4, 16, 64], [1, 2, 4, 8, 16, 32, 64, 128])
    enc_params = roofline.encoder_workload(batch=1, **ENCODER).params
    encoder_rows = memory.encoder_training_memory(ENCODER, enc_params, enc_batches, ("fp32", "fp16-autocast",
                                                                                     "fp16-mixed"))
    enc_peak = {(r["policy"], r["batch"]): r["peak bytes"] for r in encoder_rows}
    ratio_curves["model DistilBERT-sized, fp16-autocast / fp32"] = (
        enc_batches, [enc_peak[("fp16-autocast", b)] / enc_peak[("fp32", b)] for b in enc_batches])
    cited = sources.DISTILBERT_16MIXED_GB.value / sources.DISTILBERT_FP32_GB.value
    section.data("training_memory_measured.csv", measured)
    section.data("training_memory_model_mlp.csv", modelled)
    section.data("training_memory_model_encoder.csv", encoder_rows)
    section.figure(memory_figure(measured, modelled, ratio_curves, ("DistilBERT 16-mixed / FP32", cited)),
                   "training_memory.png",
                   "(c) Training memory: measured peak of a real numpy Adam step with tensors in float32, float16 "
                   "and bfloat16 containers, against the bytes-per-tensor model (left); the 16-bit / FP32 ratio "
                   "against batch size (right).")
    ratios = ratio_curves["measured MLP, fp16-autocast / fp32"][1]
    per_param = {name: sum(memory.MEMORY_POLICIES[name].bytes_per_param().values()) for name in policies}
    held = [r for r in measured if r["batch"] == batches[0]]
    rows = [{"policy": name, "description": memory.MEMORY_POLICIES[name].description,
             "bytes/param (model)": per_param[name],
             "held between steps, KiB (measured)": next(r["held bytes"] for r in held if r["policy"] == name) / 1024,
             **{f"peak at batch {b}, KiB (measured)": peak[(name, b)] / 1024 for b in (batches[0], batches[-1])}}
            for name in policies]
    section.what_was_run(
        f"One Adam step of the digits MLP {MLP} ({params} parameters) on random inputs at batch sizes {batches}, "
        f"with every tensor in a real numpy container of the policy's dtype, measured with tracemalloc "
        f"(after one warm-up step); the analytic model on the same MLP and on a DistilBERT-sized encoder "
        f"({enc_params / 1e6:.1f}M parameters, 512 tokens per sequence; activation bytes per layer from "
        "Korthikanti et al. 2022).")
    section.table(rows, caption="Bytes per parameter (model: weights, master, gradients, weight copy, two Adam "
                                "states) and measured bytes.")
    lo, hi = ratios[0], ratios[-1]
    enc_ratios = ratio_curves["model DistilBERT-sized, fp16-autocast / fp32"][1]
    section.text(
        f"Measured peak ratio fp16-autocast / fp32: {lo:.2f} at batch {batches[0]}, {hi:.2f} at batch {batches[-1]}. "
        f"Modelled for the DistilBERT-sized encoder: {enc_ratios[0]:.2f} at batch {enc_batches[0]} to "
        f"{enc_ratios[-1]:.2f} at batch {enc_batches[-1]}. Cited ({sources.ARTICLE}): "
        f"{sources.DISTILBERT_FP32_GB.value} GB -> {sources.DISTILBERT_16MIXED_GB.value} GB, a ratio of {cited:.2f}. "
        f"With Adam, FP32 holds 4 + 4 + 8 = 16 bytes per parameter and mixed precision "
        f"{sources.ADAM_MIXED_BYTES_PER_PARAM.value:g} ({sources.ADAM_MIXED_BYTES_PER_PARAM.what}; "
        f"{sources.ADAM_MIXED_BYTES_PER_PARAM.source}); autocast "
        "holds 18 (its 16-bit weight copies come on top of FP32 weights); only the activations halve.")
    conditions = [r >= BARELY_CHANGES for r in ratios]
    verdict = ("holds" if all(conditions) else "not supported by the evidence" if not any(conditions)
               else "holds under conditions")
    section.verdict(
        "(c) training memory barely changes with mixed precision", verdict,
        f"The 16-bit / FP32 peak ratio (measured, MLP) goes from {lo:.2f} at batch {batches[0]} to {hi:.2f} at batch "
        f"{batches[-1]}: it barely changes (ratio >= {BARELY_CHANGES}) where weights, gradients and Adam states "
        f"dominate ({per_param['fp32']:g} bytes per parameter in FP32, {per_param['fp16-autocast']:g} with autocast's "
        "16-bit weight copies) and approaches 0.5 where saved activations dominate. The "
        f"cited DistilBERT ratio {cited:.2f} lies between.",
        f"{sources.ARTICLE}; {sources.ZERO}.")


def claim_inference(section, ctx):
    section.text("#### (d) \"Inference memory halves and time halves\"")
    batches = ctx.pick([1, 16], [1, 16, 256, 2048])
    rows = [memory.measure_inference(WIDE_MLP, b, dtype) for b in batches for dtype in ("fp32", "bf16")]
    by = {(r["dtype"], r["batch"]): r for r in rows}
    for r in rows:
        r["peak / fp32 peak"] = r["peak bytes"] / by[("fp32", r["batch"])]["peak bytes"]
    section.data("inference_memory.csv", rows)
    held_ratio = by[("bf16", batches[0])]["held bytes"] / by[("fp32", batches[0])]["held bytes"]
    falcon_params = sources.FALCON_FP32_GB.value * 1e9 / 4
    t32 = roofline.decode_step_time(falcon_params, 4)
    t16 = roofline.decode_step_time(falcon_params, 2)
    cited_mem = sources.FALCON_BF16_GB.value / sources.FALCON_FP32_GB.value
    section.what_was_run(
        f"A forward pass of an MLP {WIDE_MLP} ({memory.mlp_params(WIDE_MLP) / 1e6:.1f}M parameters) with weights "
        f"and activations in float32 or bfloat16 containers, at batch sizes {batches}, measured with tracemalloc; "
        "token generation time by the roofline model (every weight read once per token).")
    section.table([{"dtype": r["dtype"], "batch": r["batch"], "weights, MiB": r["weight bytes"] / 2 ** 20,
                    "held, MiB": r["held bytes"] / 2 ** 20, "peak, MiB": r["peak bytes"] / 2 ** 20,
                    "peak / fp32 peak": r["peak / fp32 peak"]} for r in rows])
    section.text(
        f"The weights held in bfloat16 take {held_ratio:.3f} of their FP32 bytes (2 bytes against 4 per value, by "
        f"construction); the measured peak ratio is "
        f"{by[('bf16', batches[0])]['peak / fp32 peak']:.3f} at batch {batches[0]} and "
        f"{by[('bf16', batches[-1])]['peak / fp32 peak']:.3f} at batch {batches[-1]} (activations halve too). Cited Falcon-7B ({sources.LITGPT}): {sources.FALCON_FP32_GB.value} GB -> "
        f"{sources.FALCON_BF16_GB.value} GB, ratio {cited_mem:.3f}, consistent with {falcon_params / 1e9:.2f}G "
        f"parameters at 4 then 2 bytes. Time: generating one token at batch 1 is bound by reading the weights, "
        f"so the model gives {t32 / t16:.2f}x for bf16 on an A100 ({t32 * 1e3:.1f} ms -> {t16 * 1e3:.1f} ms); the "
        f"cited measurement is {sources.FALCON_BF16_SPEEDUP.value}x.")
    section.verdict(
        "(d) inference memory halves with 16-bit weights", "holds" if held_ratio <= 0.55 and cited_mem <= 0.55
        else "holds under conditions",
        f"Weights in bfloat16 take {held_ratio:.3f} of their FP32 bytes (by construction); measured peak of a forward "
        f"pass {by[('bf16', batches[0])]['peak / fp32 peak']:.3f} to "
        f"{by[('bf16', batches[-1])]['peak / fp32 peak']:.3f} of FP32's; "
        f"cited Falcon-7B {cited_mem:.3f}.", f"{sources.LITGPT}.")
    speedup = sources.FALCON_BF16_SPEEDUP.value
    section.verdict(
        "(d) inference time halves", "holds" if speedup >= 1.8 else "not supported by the evidence",
        f"The cited Falcon-7B measurement is {speedup}x, not 2x, although the bandwidth-bound model allows "
        f"{t32 / t16:.2f}x: halving the bytes read halves the time only if reading the weights is all a token "
        "costs, which is all the model counts.", f"{sources.LITGPT}; {sources.A100_DATASHEET}.")


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
        f"{', '.join(pow2_label(g) for g in scales)}): without loss scaling, BF16 with FP32 master weights stays within "
        f"{100 * bf16_gap:.2f} points of FP32 at every gradient magnitude, FP16 falls up to {100 * fp16_gap:.1f} points "
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
    section = new_section(ctx, globals(), "Claims: a verdict on each claim of the recipe")
    trade = range_and_precision(ctx)
    seeds = seed_runs(ctx, min(trade["grad_scales"]))
    claim_recipe(section, ctx, seeds, trade)
    claim_time(section, ctx)
    claim_training_memory(section, ctx)
    claim_inference(section, ctx)
    claim_accuracy(section, ctx, seeds)
    claim_bf16(section, ctx, trade)
    return section


if __name__ == "__main__":
    raise SystemExit(analysis_main(globals()))
