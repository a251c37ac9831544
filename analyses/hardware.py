"""What the GPUs' tensor cores compute: how far an FP8 GEMM's accumulator on H100 and B200 lies from the exact
product as K grows (DeepSeek-V3's experiment) and what promotion to FP32 every 128 products recovers; how far
the "FP32 accumulation" of FP16 / BF16 tensor cores on V100, A100 and H100 lies from FP32."""

from fpsim.report import sources
from fpsim.report.accumulation import CORRECTLY_ROUNDED, DISTRIBUTIONS, OUTLIER_FACTOR, error_figure, gemm_errors
from fpsim.report.claims import (CLAIM_PROMOTION, band, better, difference_text, score, score_table, tolerance_text,
                                 unit, within)
from fpsim.report.experiments import cnn_config, cnn_steps, gpt_config, gpt_steps, model_seeds, run_trainings
from fpsim.report.plots import against_reference_figure
from fpsim.report.runner import analysis_main
from fpsim.report.section import new_section
from fpsim.report.stats import paired_comparison

ORDER = 98
NEEDS = ("torch",)
KS = tuple(2 ** e for e in range(6, 15))
"""The reduction lengths K: 64 ... 16384, powers of two."""
FP8_ACCUMULATORS = {"H100 (wgmma)": ("H100", "sequential"), "H100, FP32 every 128": ("H100", "blocked:128"),
                    "B200 (tcgen05)": ("B200", "sequential"), "IEEE FP32": ("fp32", "sequential")}
"""(a): label -> (``accumulate``, ``order``) of ``fpsim.matmul`` for E4M3 operands, FP32 output."""
SIXTEEN_BIT = {"fp16": ("V100", "A100", "H100"), "bf16": ("A100", "H100")}
"""(b): the GPUs of each 16-bit input format (V100 has no BF16 path), beside IEEE FP32 accumulation."""
AT_K = 4096
"""DeepSeek-V3's K."""
FP8_REFERENCE = "fp8-current"
"""(c): the FP8 recipe as the other sections run it, its products accumulated in IEEE FP32."""
H100_FP8 = {f"fp8-h100-{label}": {"preset": FP8_REFERENCE, "name": f"fp8-h100-{label}", "accumulate": "H100",
                                  "fast_accumulation": fast}
            for label, fast in (("fast", "all"), ("te", "forward"), ("split", "none"))}
"""(c): fp8-current on H100's wgmma accumulator with every FP8 product fast, Transformer Engine's default (forward
fast, the two backward products split) and every product split (promoted to FP32 every 128 products)."""
BF16_REFERENCE = "bf16-mixed"
BF16_GPUS = {f"bf16-mixed-{gpu.lower()}": {"preset": BF16_REFERENCE, "name": f"bf16-mixed-{gpu.lower()}",
                                          "accumulate": gpu} for gpu in ("A100", "H100")}
"""(d): bf16-mixed with its BF16 products on A100's and H100's tensor-core accumulators."""
COLOURS = {"H100 (wgmma)": "tab:red", "H100, FP32 every 128": "tab:orange", "B200 (tcgen05)": "tab:purple",
           "IEEE FP32": "tab:blue", "V100": "tab:brown", "A100": "tab:green", "H100": "tab:red",
           CORRECTLY_ROUNDED: "black"}


def size(ctx) -> int:
    """M = N of every GEMM (each K gets its own operands)."""
    return ctx.pick(16, 32)


def measure(ctx, fmt, accumulators: dict, distribution: str) -> list[dict]:
    return gemm_errors(fmt, accumulators, distribution, KS, size(ctx))


def at(rows, K, distribution, accumulator, field="median relative error", inputs="e4m3") -> float:
    """``field`` of the ``measure`` row of (``inputs``, K, ``distribution``, ``accumulator``)."""
    return next(r[field] for r in rows if (r["inputs"], r["K"], r["distribution"], r["accumulator"])
                == (inputs, K, distribution, accumulator))


def fp8_gemm(section, ctx):
    section.text("#### (a) DeepSeek-V3's experiment: FP8 GEMM error against K")
    rows = [r for dist in DISTRIBUTIONS for r in measure(ctx, "e4m3", FP8_ACCUMULATORS, dist)]
    section.data("fp8_gemm.csv", rows)
    cited = sources.DEEPSEEK_MAX_ERROR
    panels = [(f"E4M3 operands, {dist}", [r for r in rows if r["distribution"] == dist],
               (AT_K, cited.value / 100, "DeepSeek-V3: max 'nearly 2%'")) for dist in DISTRIBUTIONS]
    section.figure(error_figure(COLOURS, panels),
                   "fp8_gemm.png", "(a) The relative error of each output of an E4M3 GEMM against the exact product, "
                                   f"median (solid) and maximum (dashed) over {size(ctx)} x {size(ctx)} outputs, "
                                   "against K, for H100's wgmma accumulator, the same promoted to FP32 every 128 "
                                   "products, B200's tcgen05 and an IEEE FP32 accumulator (an error of 0, exact, is "
                                   "not drawn).", key=True)
    section.table([r for r in rows if r["K"] in (AT_K, KS[-1])],
                  ["distribution", "K", "accumulator", "median relative error", "max relative error",
                   "magnitude bias"], caption=f"At K = {AT_K} and {KS[-1]} (every K: fp8_gemm.csv).")
    h100, promoted, fp32 = "H100 (wgmma)", "H100, FP32 every 128", "IEEE FP32"
    medians = {d: at(rows, AT_K, d, h100) for d in DISTRIBUTIONS}
    peaks = {d: at(rows, AT_K, d, h100, "max relative error") for d in DISTRIBUTIONS}
    inside = min(medians.values()) <= cited.value / 100 <= max(peaks.values())
    gains = {d: at(rows, AT_K, d, h100) / at(rows, AT_K, d, promoted) for d in DISTRIBUTIONS}
    growth = at(rows, KS[-1], "normal", h100) / at(rows, KS[0], "normal", h100)
    fp32_median = at(rows, AT_K, "normal", fp32)
    above = at(rows, AT_K, "normal", promoted) / fp32_median
    promoted_growth = at(rows, KS[-1], "normal", promoted) / at(rows, 128, "normal", promoted)
    section.text(
        f"**DeepSeek's \"nearly 2%\"** ({cited}). At K = {AT_K} H100's accumulator gives a median / maximum "
        "relative error of " + "; ".join(f"{100 * medians[d]:.3g}% / {100 * peaks[d]:.3g}% ({d})"
                                         for d in DISTRIBUTIONS)
        + f" over {size(ctx) ** 2} outputs. "
        + (f"DeepSeek's figure lies between the median with mixed signs ({100 * medians['normal']:.2g}%, "
           f"{cited.value / 100 / medians['normal']:.0f}x below it) and the worst outputs: the size of the effect, "
           "errors of a percent or more at K = 4096, is reproduced; the number itself cannot be checked without the "
           "inputs and the statistic. " if inside else "DeepSeek's figure lies outside every statistic here: not "
           "reproduced. ")
        + "With mixed signs the maximum is set by the outputs whose "
        "exact value lies near zero (cancellation), so it grows with the number of outputs; with positive operands "
        "every output loses about the same share. The error grows with K "
        f"({growth:.0f}x from K = {KS[0]} to {KS[-1]}, normal operands): each fused step of 32 products cuts the "
        "growing running sum to 13 fraction bits and rounds toward zero (the magnitude bias). "
        f"**The promotion fix** (FP32 every {sources.DEEPSEEK_PROMOTION.value:g} products) divides the median "
        f"error at K = {AT_K} by " + ", ".join(f"{g:.0f} ({d})" for d, g in gains.items())
        + f"; from K = 128 to {KS[-1]} its median changes {promoted_growth:.2g}x (normal operands), and at K = "
        f"{AT_K} it lies {above:.0f}x above IEEE FP32's: the error of one 128-product run in e8m13 remains. "
        f"B200's tcgen05 (25 fraction bits) lies {at(rows, AT_K, 'normal', 'B200 (tcgen05)') / fp32_median:.1f}x "
        "above IEEE FP32 (median, normal operands).")


def sixteen_bit_gemm(section, ctx):
    section.text("#### (b) FP16 and BF16 GEMMs: how far a tensor core's \"FP32 accumulation\" lies from FP32")
    accumulators = {fmt: {gpu: (gpu, "sequential") for gpu in gpus} | {"IEEE FP32": ("fp32", "sequential")}
                    for fmt, gpus in SIXTEEN_BIT.items()}
    rows = [r for fmt in SIXTEEN_BIT for dist in DISTRIBUTIONS for r in measure(ctx, fmt, accumulators[fmt], dist)]
    section.data("sixteen_bit_gemm.csv", rows)
    panels = [(f"{fmt.upper()} operands, {dist}", [r for r in rows if (r["inputs"], r["distribution"]) == (fmt, dist)],
               None) for fmt in SIXTEEN_BIT for dist in ("normal", "uniform positive")]
    section.figure(error_figure(COLOURS, panels),
                   "sixteen_bit_gemm.png", "(b) The relative error of each output of an FP16 / BF16 GEMM (FP32 "
                                           "output) against the exact product, median (solid) and maximum (dashed), "
                                           "against K: the tensor cores of V100, A100 and H100, IEEE FP32 "
                                           "accumulation, and the exact product rounded once to FP32.")
    section.table([r for r in rows if r["K"] == AT_K],
                  ["inputs", "distribution", "accumulator", "median relative error", "max relative error",
                   "magnitude bias", "equal to correctly rounded FP32", "max FP32 spacings from it"],
                  caption=f"At K = {AT_K} (every K: sixteen_bit_gemm.csv). FP32 spacing: np.spacing of the "
                          "correctly rounded value.")
    def ratio(fmt, dist, gpu):
        return at(rows, AT_K, dist, gpu, inputs=fmt) / at(rows, AT_K, dist, "IEEE FP32", inputs=fmt)

    ratios = {dist: ", ".join(f"{gpu} {fmt.upper()} {ratio(fmt, dist, gpu):.1f}x" for fmt, gpus in SIXTEEN_BIT.items()
                              for gpu in gpus) for dist in ("normal", "uniform positive")}
    section.text(
        f"At K = {AT_K} the median error of each tensor core against IEEE FP32 accumulation's: "
        + "; ".join(f"{text} ({dist})" for dist, text in ratios.items())
        + "; the correctly rounded FP32 product's median error is "
        f"{at(rows, AT_K, 'normal', CORRECTLY_ROUNDED, inputs='fp16'):.2g} (FP16, normal). "
        "A tensor core's FP32 accumulator truncates (23 + 0, 1 or 2 extra bits on V100, A100, H100) and rounds "
        "each fused step toward zero, so its error has a bias (the magnitude bias column) that IEEE FP32's "
        "round-to-nearest has not; how far it lies from FP32 is measured above in FP32 spacings.")


def trainings(ctx, policies: dict) -> dict:
    """{model: {policy name: [results, seed by seed]}}: every policy of ``policies`` (name -> TrainConfig policy)
    on the conv net and the transformer, configured as the other sections' runs, seeds ``model_seeds``."""
    seeds, builders = model_seeds(ctx), {"conv net": cnn_config, "transformer": gpt_config}
    plan = [(model, name, builders[model](ctx, policy, seed=s)) for model in builders
            for name, policy in policies.items() for s in seeds]
    runs: dict = {}
    for (model, name, _), result in zip(plan, run_trainings(ctx, [config for _, _, config in plan])):
        runs.setdefault(model, {}).setdefault(name, []).append(result)
    return runs


def compare(section, runs, reference: str, caption: str, filename: str) -> dict:
    """The score table of every policy against ``reference`` on each model (``score_table``), written as a table
    and ``filename``; returns the paired comparisons by (model, policy)."""
    rows, tests = [], {}
    for model, by_policy in runs.items():
        model_rows, model_tests = score_table(model, {n: [score(model, r) for r in results]
                                                      for n, results in by_policy.items()},
                                              reference, no_score="no finite loss")
        rows += model_rows
        tests.update(model_tests)
    section.table(rows, caption=caption)
    section.data(filename, rows)
    return tests


def tolerance(model, runs, reference) -> float:
    return band(model, [score(model, r) for r in runs[model][reference]])


def fp8_training(section, ctx):
    section.text("#### (c) FP8 training on H100's accumulator: fast, split and Transformer Engine's default")
    runs = trainings(ctx, {FP8_REFERENCE: FP8_REFERENCE, **H100_FP8})
    tests = compare(section, runs, FP8_REFERENCE, "Per model and policy: the mean score over seeds (conv net: test "
                    "accuracy; transformer: validation bits per character, lower is better) with its 95% t interval, "
                    f"and the paired difference against {FP8_REFERENCE} (IEEE FP32 accumulation).", "fp8_training.csv")
    panels = []
    for model in runs:
        name, scale = unit(model)
        names = [n for n in H100_FP8 if (model, n) in tests]
        panels.append((f"{model}: paired difference with 95% CI", f"minus {FP8_REFERENCE}'s ({name})", names,
                       [tests[(model, n)] for n in names], scale, scale * tolerance(model, runs, FP8_REFERENCE),
                       ["tab:red", "tab:orange", "tab:green"][:len(names)]))
    section.figure(against_reference_figure(panels, "IEEE FP32 accumulation"), "fp8_training.png",
                   "(c) fp8-current on H100's accumulator (every FP8 product fast; TE's default: forward fast, "
                   "backward split; every product split) against the same recipe with IEEE FP32 accumulation, paired "
                   "by seed; the band is the model's \"as well as\". Policies with a diverged run are left out.",
                   key=True)
    gpt = gpt_config(ctx, FP8_REFERENCE)
    longest = max(4 * gpt["model_options"]["n_embd"], gpt["batch_size"] * gpt["model_options"]["block_size"])
    section.text(f"Split accumulation changes only the FP8 products whose reduction is longer than 128 products: in "
                 f"char-gpt here the longest is {longest} (the weight gradients' batch x context, or the MLP's "
                 "4 x width)" + (", so fast and split accumulation run the same products on it." if longest <= 128
                                 else "."))
    for model, by_policy in runs.items():
        promotion_verdict(section, model, by_policy, tests, tolerance(model, runs, FP8_REFERENCE))


def promotion_verdict(section, model, by_policy, tests, tol):
    """(i) holds on a model when fast accumulation everywhere trains worse than IEEE FP32 accumulation (at
    p < 0.05, or a run diverged that split accumulation keeps); under conditions when TE's default (forward fast)
    trains as well as FP32 there, so that only the backward products need promotion; not supported when fast
    accumulation trains as well (its interval inside the band) or the seeds cannot tell."""
    fast, te = tests.get((model, "fp8-h100-fast")), tests.get((model, "fp8-h100-te"))
    scores = {n: [score(model, r) for r in results] for n, results in by_policy.items()}
    diverged = {n: scores[n].count(None) for n in H100_FP8}
    fast_worse = fast is not None and better(model, paired_comparison(scores[FP8_REFERENCE], scores["fp8-h100-fast"]))
    needs = fast_worse or (diverged["fp8-h100-fast"] > 0 and diverged["fp8-h100-split"] == 0)
    verdict = ("not supported by the evidence" if not needs else
               "holds under conditions" if within(te, tol) else "holds")
    n = len(by_policy[FP8_REFERENCE])
    evidence = "; ".join(f"{name} minus {FP8_REFERENCE} "
                         f"{difference_text(model, tests.get((model, name)), lower_is_better=True)}"
                         + (f" ({diverged[name]} of {n} runs diverged)" if diverged[name] else "") for name in H100_FP8)
    section.verdict(CLAIM_PROMOTION, verdict,
                    f"{model}, {n} seeds: {evidence}; band {tolerance_text(model, tol)}. Fast accumulation everywhere "
                    + ("trains worse than IEEE FP32 accumulation" if needs else
                       "trains as well as IEEE FP32 accumulation" if within(fast, tol) else
                       "is neither shown worse nor shown equal (too few seeds)") + ".",
                    f"{sources.DEEPSEEK_V3}; {sources.TE_SPLIT_ACCUMULATOR}.", model=model,
                    condition="in the backward products only: TE's default (forward fast) trains as well"
                    if verdict == "holds under conditions" else "")


def bf16_training(section, ctx):
    section.text("#### (d) bf16-mixed on A100's and H100's accumulators: does claim (a)'s comparison change?")
    runs = trainings(ctx, {"fp32": "fp32", BF16_REFERENCE: BF16_REFERENCE, **BF16_GPUS})
    tests = compare(section, runs, "fp32", "Per model and policy: the mean score over seeds with its 95% t "
                    "interval, and the paired difference against FP32 (IEEE accumulation).", "bf16_training.csv")
    texts = []
    for model in runs:
        tol = tolerance(model, runs, "fp32")
        verdicts = {n: "within" if within(tests.get((model, n)), tol) else "not within"
                    for n in (BF16_REFERENCE, *BF16_GPUS)}
        same = len(set(verdicts.values())) == 1
        texts.append(f"on the {model} (band {tolerance_text(model, tol)}) bf16-mixed minus FP32 is "
                     + ", ".join(f"{v} the band ({n})" for n, v in verdicts.items())
                     + (": the tensor cores' truncation does not change the comparison" if same else
                        ": the accumulator changes the comparison"))
    joined = "; ".join(texts)
    section.text("**Claim (a)'s comparison with a tensor-core accumulator.** " + joined[0].upper() + joined[1:] + ".")


def run(ctx):
    section = new_section(ctx, globals(), "GPU tensor cores: accumulation in FP8 and 16-bit GEMMs")
    section.what_was_run(
        f"(a), (b): fpsim.matmul(A, B, inputs=, accumulate=, order=) with FP32 output for A of {size(ctx)} x K and "
        f"B of K x {size(ctx)}, K = {KS[0]} ... {KS[-1]} (powers of two), fresh operands per K (numpy seed (0, K)), "
        f"drawn from three distributions: iid standard normal; the same with one input channel of A (column "
        f"K // 2) {OUTLIER_FACTOR:g} times larger (the outlier features of LLM activations); iid uniform on [0, 1) "
        "(no cancellation). DeepSeek-V3 does not say which inputs it used. E4M3 operands are scaled per tensor to "
        "amax 448 (current scaling) and rounded to nearest; FP16 / BF16 ones rounded as drawn. Error metric: the "
        "relative error |d - x| / |x| of each output d against the exact product x of the same rounded operands "
        "(math.fsum of the float64 products: exact, rounded once to float64), median and maximum over the "
        "outputs. Accumulators: the tensor-core "
        "models of fpsim.hardware (H100: wgmma's FP8 path, 32 products per step, 13 fraction bits; B200: tcgen05, "
        "32 per step, 25 bits; V100 / A100 / H100 FP16 and BF16: 4 / 8 / 16 per step, 23 / 24 / 25 bits), "
        "H100 with order=\"blocked:128\" (the chain restarted every 128 products, the run results added in FP32 "
        "rounded to nearest: DeepSeek's promotion), and IEEE FP32 (every step correctly rounded).")
    fp8_gemm(section, ctx)
    sixteen_bit_gemm(section, ctx)
    gpt = gpt_config(ctx, FP8_REFERENCE)
    section.what_was_run(
        f"(c), (d): fpsim.train with seeds 0..{model_seeds(ctx)[-1]}, configured as the fp8 and claims_models "
        f"sections: the conv net on MNIST-1D ({cnn_steps(ctx)} steps, test accuracy) and char-gpt "
        f"({gpt['model_options']['n_layer']} blocks, width {gpt['model_options']['n_embd']}; {gpt_steps(ctx)} steps, "
        f"validation bits per character). (c): {FP8_REFERENCE} (IEEE FP32 accumulation) and the same recipe with "
        "accumulate=\"H100\" (wgmma) and fast_accumulation \"all\" (fp8-h100-fast), \"forward\" (fp8-h100-te, "
        "Transformer Engine's default) and \"none\" (fp8-h100-split), promote_every 128. (d): fp32, bf16-mixed and "
        "bf16-mixed with accumulate=\"A100\" and \"H100\" (its BF16 products on those tensor cores).")
    fp8_training(section, ctx)
    bf16_training(section, ctx)
    return section


if __name__ == "__main__":
    raise SystemExit(analysis_main(globals()))
