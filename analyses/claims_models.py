"""Do claims (a) "the recipe trains as well as FP32", (e) "FP16 raises accuracy" and (f) "BF16's range is
more robust" hold on real models? The conv net on MNIST-1D (test accuracy) and char-gpt on the pydoc text
(validation bits per character), several seeds per policy, paired confidence intervals; and on the
transformer with Adam, FP32 master weights against pure 16-bit weights and stochastic rounding."""

import matplotlib.pyplot as plt

from fpsim.report.claims import (CLAIM_ACCURACY, CLAIM_RANGE, CLAIM_RECIPE, band, better, difference_text,
                                 final_score, score_table, unit, within)
from fpsim.report.experiments import (CNN_TRAINING, FORCED_STREAM_SCALE, GPT_TRAINING, bits_per_character,
                                      cnn_config, cnn_steps, forced_configs, forward_overflows, gpt_config, gpt_steps,
                                      model_seeds, pow2_label, run_trainings)
from fpsim.report.plots import paired_differences
from fpsim.report.runner import analysis_main
from fpsim.report.section import new_section

ORDER = 95
NEEDS = ("torch",)
POLICIES = ("fp32", "fp16-mixed", "fp16-amp", "bf16-mixed")
WEIGHTS = ("bf16-mixed", "bf16-pure", "bf16-sr", "fp16-pure")
"""The transformer's weights: FP32 master copy (bf16-mixed), 16-bit only with updates rounded to nearest
(bf16-pure, fp16-pure) or stochastically (bf16-sr)."""
"""A run is scored where it ended, diverged or not (``fpsim.report.claims.final_score``): a diverged conv net
still has a test accuracy; a transformer without a finite loss has no score, and its policy is not compared.
"As well as FP32": the models' bands (``fpsim.report.claims.band``) around FP32's runs."""


def describe(model, test) -> str:
    return difference_text(model, test, wilcoxon=True)


def run(ctx):
    section = new_section(ctx, globals(), "Claims on real models: the conv net and the transformer")
    seeds = model_seeds(ctx)
    gpt = {p: [gpt_config(ctx, p, seed=s) for s in seeds] for p in dict.fromkeys(POLICIES + WEIGHTS)}
    cnn = {p: [cnn_config(ctx, p, seed=s) for s in seeds] for p in POLICIES}
    forced = forced_configs(ctx)
    options = gpt["fp32"][0]["model_options"]
    section.what_was_run(
        f"fpsim.train, seeds {seeds[0]}..{seeds[-1]} for every policy (a seed fixes the initial weights and the "
        f"batches, so policies are compared seed by seed). Conv net: the cnn (3 stride-2 convolutions of 32 "
        f"channels, a linear head) on MNIST-1D, {CNN_TRAINING['optimizer']} lr {CNN_TRAINING['lr']:g}, batch 64, "
        f"{cnn_steps(ctx)} steps, test accuracy; policies {', '.join(POLICIES)}. Transformer: char-gpt "
        f"({options['n_layer']} blocks, width {options['n_embd']}, context {options['block_size']}) on the pydoc "
        f"text, {GPT_TRAINING['optimizer']} lr {GPT_TRAINING['lr']:g}, batch {gpt['fp32'][0]['batch_size']}, "
        f"{gpt_steps(ctx)} steps, validation bits per character; policies {', '.join(gpt)}. The forced-overflow "
        "runs are transformer_overflow's.")
    configs = [c for runs in (*gpt.values(), *cnn.values()) for c in runs] + forced
    results = iter(run_trainings(ctx, configs))
    scores = {model: {p: [final_score(model, next(results)) for _ in seeds] for p in by_policy}
              for model, by_policy in (("transformer", gpt), ("conv net", cnn))}
    forced_results = [next(results) for _ in forced]

    rows, tests = [], {}
    for model, by_policy in scores.items():
        model_rows, model_tests = score_table(model, by_policy, "fp32", no_score="no finite validation loss",
                                              wilcoxon=True)
        rows += model_rows
        tests.update(model_tests)
    section.table(rows, caption="Per model and policy: the mean score over seeds (conv net: test accuracy, "
                                "a share; transformer: validation bits per character, lower is better) with its 95% "
                                "t interval, and the paired difference against FP32.")
    section.data("scores.json", {"seeds": seeds, "scores": scores, "summary": rows})

    fig, axes = plt.subplots(1, 2, figsize=(14, 4.6))
    for ax, (model, by_policy) in zip(axes, scores.items()):
        names = [p for p in by_policy if (model, p) in tests]
        scale = unit(model)[1]
        paired_differences(ax, [tests[(model, p)] for p in names], scale, scale * tolerance_of(model, by_policy),
                           "FP32", capsize=5)
        ax.set_xticklabels(names, fontsize=8)
        ax.set_ylabel("test accuracy minus FP32's (points)" if model == "conv net"
                      else "validation loss minus FP32's (bits per character)")
        ax.set_title(f"{model}: paired difference against FP32, mean and 95% CI over {len(seeds)} seeds")
        ax.legend(loc="best")
    fig.tight_layout()
    section.figure(fig, "paired_differences.png", f"Each policy against FP32 on the conv net (MNIST-1D, test "
                                                  f"accuracy) and the transformer (char-gpt, validation loss), "
                                                  f"{len(seeds)} seeds, paired.", key=True)

    for model in scores:
        recipe_verdict(section, model, scores[model], tests, len(seeds))
    for model in scores:
        accuracy_verdict(section, model, tests, len(seeds))
    range_verdict(section, "conv net", scores["conv net"], tests, None)
    range_verdict(section, "transformer", scores["transformer"], tests,
                  [{"policy": c["policy"], "forward overflows": forward_overflows(r), "skipped": r["skipped_steps"],
                    "diverged": r["diverged_step"], "bits/char": bits_per_character(r)}
                   for c, r in zip(forced, forced_results)])
    return section


def _bits(row) -> str:
    return "no finite loss" if row["bits/char"] is None else f"{row['bits/char']:.3f}"


def tolerance_of(model, by_policy) -> float:
    return band(model, by_policy["fp32"])


def recipe_verdict(section, model, by_policy, tests, n):
    t = tests.get((model, "fp16-amp"))
    tol = tolerance_of(model, by_policy)
    name, scale = unit(model)
    inside = within(t, tol)
    section.verdict(
        CLAIM_RECIPE, "holds" if inside else "not supported by the evidence",
        f"{model}: fp16-amp minus FP32 over {n} seeds {describe(model, t)}; the CI "
        + ("lies" if inside else "does not lie") + f" inside +-{scale * tol:.3g} {name}"
        + (" (it contains 0: too few seeds to show the two equal)" if t is not None and not inside
           and t["low"] <= 0 <= t["high"] else "") + ".",
        "this run (claims_models).", model=model)


def accuracy_verdict(section, model, tests, n):
    """Holds if the recipe (fp16-amp) beats FP32 at p < 0.05; under conditions if only FP16 without loss
    scaling (fp16-mixed) does."""
    amp, mixed = tests.get((model, "fp16-amp")), tests.get((model, "fp16-mixed"))
    name, scale = unit(model)
    up_amp, up_mixed = better(model, amp), better(model, mixed)
    verdict = "holds" if up_amp else "holds under conditions" if up_mixed else "not supported by the evidence"
    section.verdict(
        CLAIM_ACCURACY, verdict,
        f"{model}: fp16-amp minus FP32 over {n} seeds {describe(model, amp)}"
        + (" (lower loss is better)" if model == "transformer" else "")
        + (": better at p < 0.05" if up_amp else ": no significant gain")
        + f"; fp16-mixed (no loss scaling) minus FP32 {describe(model, mixed)}"
        + (": better at p < 0.05 (with 5 seeds the exact Wilcoxon p cannot go below 0.0625)." if up_mixed
           else "."),
        "this run (claims_models).", model=model,
        condition=f"FP16 without loss scaling on the {model} ({scale * mixed['mean_difference']:+.2f} {name})"
        if up_mixed and not up_amp else "")


def range_verdict(section, model, by_policy, tests, forced):
    tol = tolerance_of(model, by_policy)
    mixed, bf16 = tests.get((model, "fp16-mixed")), tests.get((model, "bf16-mixed"))
    worse_sign = -1 if model == "conv net" else 1
    fp16_hurt = mixed is None or worse_sign * mixed["low"] > tol  # diverged, or the whole CI worse than tolerance
    bf16_fine = within(bf16, tol)
    evidence = (f"{model}: without loss scaling fp16-mixed minus FP32 {describe(model, mixed)}, bf16-mixed "
                f"minus FP32 {describe(model, bf16)}.")
    conditions = []
    if forced:
        by_name = {r["policy"]: r for r in forced}
        amp, b, f = by_name["fp16-amp"], by_name["bf16-mixed"], by_name["fp32"]
        stream = pow2_label(FORCED_STREAM_SCALE)
        if amp["forward overflows"]:
            # BF16 trains through the condition if it ends within the tolerance of FP32 under the same condition
            trains = None not in (b["bits/char"], f["bits/char"]) and abs(b["bits/char"] - f["bits/char"]) <= tol
            evidence += (f" Forced condition (transformer_overflow): with the residual stream carried {stream} times "
                         f"larger, FP16's forward pass overflowed {amp['forward overflows']} values ({amp['skipped']} "
                         "skipped steps" + (f", diverged at step {amp['diverged']}" if amp["diverged"] is not None
                                            else "") + ("; no finite loss" if amp["bits/char"] is None
                                                        else f"; {_bits(amp)} bits per character")
                         + f"), BF16's {b['forward overflows']}; BF16 ended at {_bits(b)} bits per character, FP32 at "
                         f"{_bits(f)}" + (": BF16 trained through what stopped FP16." if trains
                                          else ": BF16 did not train as FP32 did there either."))
            if not b["forward overflows"] and trains:
                conditions.append(f"values beyond 65504 (forced here: the residual stream carried {stream} times "
                                  "larger, as T5's grew)")
        else:
            evidence += (f" Even with the residual stream carried {stream} times larger FP16's forward pass did not "
                         "overflow (transformer_overflow).")
        pure = tests.get((model, "bf16-pure"))
        sr = tests.get((model, "bf16-sr"))
        evidence += (f" Precision: without master weights bf16-pure minus FP32 {describe(model, pure)}, "
                     f"bf16-sr (stochastic rounding) {describe(model, sr)}, fp16-pure "
                     f"{describe(model, tests.get((model, 'fp16-pure')))}.")
        if pure is None or pure["low"] > tol:
            conditions.append("FP32 master weights or stochastic rounding (pure BF16 trains worse)")
    if fp16_hurt and bf16_fine:
        conditions.insert(0, "gradients small enough to underflow FP16 without scaling")
    shows = fp16_hurt and bf16_fine or any("65504" in c for c in conditions)
    verdict = ("holds under conditions" if shows and conditions else "holds" if shows
               else "not supported by the evidence")
    if not shows:
        evidence += " FP16's range sufficed here: BF16's larger range made no measurable difference."
    section.verdict(CLAIM_RANGE, verdict, evidence, "this run (claims_models, transformer_overflow).", model=model,
                    condition="; ".join(conditions))


if __name__ == "__main__":
    raise SystemExit(analysis_main(globals()))
