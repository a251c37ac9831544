"""The recipes that trained recent frontier models, on the real models: the NVFP4 pretraining recipe taken apart
component by component against FP8 and BF16 (does each component help, and is the whole recipe within the
paper's 1-1.5% of FP8's loss?), and DeepSeek-V3's blockwise FP8 against per-tensor scaling and BF16, with
1x128 against 128x128 blocks for the activation gradients; verdicts (j) and (k)."""

from fpsim.report import sources
from fpsim.report.claims import CLAIM_BLOCKWISE, CLAIM_NVFP4, SIGNIFICANCE
from fpsim.report.experiments import (CNN_TRAINING, GPT_TRAINING, cnn_config, cnn_steps, gpt_config, gpt_steps,
                                      model_seeds, run_trainings)
from fpsim.report.recipes import (BLOCKWISE, BLOCKWISE_2D_GRADIENTS, GRADIENT_TILES, NVFP4_COMPONENTS, NVFP4_RECIPE,
                                  blockwise_2d_gradients, blockwise_figure, gradient_error, loss_figure, nvfp4_variant,
                                  relative_gap, summary_row, validation_loss, variant_name)
from fpsim.report.runner import analysis_main
from fpsim.report.section import new_section
from fpsim.report.stats import paired_comparison
from fpsim.sim.config import TrainConfig

ORDER = 99
NEEDS = ("torch",)
BASELINE = "bf16-mixed"
FP8 = "fp8-current"
REFERENCES = (BASELINE, FP8)
"""Run with every seed of ``model_seeds`` (the fp8 section's runs of them: the report's store runs them once)."""
NONE = variant_name(())
COMPONENT_VARIANTS = [(), *((c,) for c in NVFP4_COMPONENTS), tuple(NVFP4_COMPONENTS)]
"""(j): plain NVFP4, each component alone on it, and every component (``nvfp4-te``)."""
SECTION_POLICIES = {
    **{variant_name(v): nvfp4_variant(v).to_dict() if len(v) < len(NVFP4_COMPONENTS) else NVFP4_RECIPE
       for v in COMPONENT_VARIANTS},
    BLOCKWISE: BLOCKWISE, BLOCKWISE_2D_GRADIENTS: blockwise_2d_gradients().to_dict()}
"""Every policy of the section but the references, by name, as ``TrainConfig(policy=...)`` takes it."""
NVFP4_NAMES = [variant_name(v) for v in COMPONENT_VARIANTS]
BLOCKWISE_NAMES = [BASELINE, FP8, BLOCKWISE, BLOCKWISE_2D_GRADIENTS]
QUICK_STEPS = {"conv net": 12, "transformer": 8}
"""``--quick``: steps per run (the section's 40 quick runs take about 40 s on 2 cores); the full run trains as the
fp8 section does: 8 policies x 3 seeds = 24 runs per model beyond the references, which are the fp8 section's."""
NVFP4_BOUND = sources.NVFP4_GAP.value / 100
DEEPSEEK_BOUND = sources.DEEPSEEK_FP8_GAP.value / 100
SHADOW_EVERY = TrainConfig.__dataclass_fields__["shadow_every"].default
"""The runs' FP64-shadow interval (``TrainConfig``'s default: the configurations leave it)."""
LOSS_UNITS = {"transformer": "bits per character", "conv net": "nats (test cross-entropy)"}


def config(ctx, model, name, seed):
    builder = cnn_config if model == "conv net" else gpt_config
    quick = {"steps": QUICK_STEPS[model]} if ctx.quick else {}
    return builder(ctx, SECTION_POLICIES.get(name, name), seed=seed, **quick)


def steps(ctx, model) -> int:
    return ctx.pick(QUICK_STEPS[model], cnn_steps(ctx) if model == "conv net" else gpt_steps(ctx))


def run(ctx):
    section = new_section(ctx, globals(),
                          "Frontier recipes: the NVFP4 recipe's components and DeepSeek's blockwise FP8")
    seeds, reference_seeds = list(range(ctx.pick(2, 3))), model_seeds(ctx)
    names = list(dict.fromkeys([*REFERENCES, *NVFP4_NAMES, *BLOCKWISE_NAMES]))
    plan = {model: {name: [config(ctx, model, name, s) for s in (reference_seeds if name in REFERENCES else seeds)]
                    for name in names} for model in ("conv net", "transformer")}
    gpt = plan["transformer"][BASELINE][0]
    section.what_was_run(
        f"fpsim.train with seeds 0..{reference_seeds[-1]} for {BASELINE} and {FP8}"
        + ctx.pick("", " (the fp8 section's runs)") + ", "
        f"0..{seeds[-1]} for the others, each compared seed by seed (a seed fixes the initial weights, the batches "
        f"and the stochastic rounding). Conv net: the cnn on MNIST-1D, Adam lr {CNN_TRAINING['lr']:g}, batch "
        f"{plan['conv net'][BASELINE][0]['batch_size']}, {steps(ctx, 'conv net')} steps; transformer: char-gpt "
        f"({gpt['model_options']['n_layer']} block{'s' * (gpt['model_options']['n_layer'] != 1)}, width "
        f"{gpt['model_options']['n_embd']}) on the pydoc text, Adam "
        f"lr {GPT_TRAINING['lr']:g}, batch {gpt['batch_size']}, {steps(ctx, 'transformer')} steps. Score: the final "
        f"validation loss ({LOSS_UNITS['transformer']} for the transformer, the test cross-entropy in nats for the "
        "conv net); a gap is relative, loss / reference's loss - 1 per seed, with its 95% t interval. (j): "
        f"{NONE}: plain NVFP4 in Transformer Engine's encode (E2M1, an E4M3 scale per 1 x 16 block along each "
        "product's reduction axis, an FP32 tensor scale, rounded to nearest, every layer in FP4); each \"+\" variant "
        "switches one component of nvfp4-te on: 2-D weights (16 x 16 weight tiles), SR gradients (the gradients "
        "rounded stochastically), RHT (the 16-point random Hadamard transform with TE's signs on both inputs of "
        "the weight-gradient products), last layers BF16 (the last 15% of the layers under bf16-mixed); nvfp4-te: "
        f"all four. (k): {BLOCKWISE} (E4M3 everywhere, 1 x 128 tiles for activations and gradients, 128 x 128 "
        "weight blocks, power-of-two scales, FP32 accumulation) and the same with the incoming gradients in "
        f"{GRADIENT_TILES[0]} x {GRADIENT_TILES[1]} blocks. Every FP8 / FP4 policy quantizes the operands of the "
        "matrix products and convolutions only, with FP32 master weights and optimizer state. Gradient error: on "
        f"the steps compared with an FP64 twin of the model (every {SHADOW_EVERY}th, from step 0), "
        "||g - g64|| / ||g64|| of each module's weight gradient, its median over modules and those steps (the twin "
        "runs the whole step in FP64, so the error holds the forward pass's quantization as well as the "
        "backward's).")
    configs = [c for by_name in plan.values() for group in by_name.values() for c in group]
    results = iter(run_trainings(ctx, configs))
    runs = {model: {name: [next(results) for _ in group] for name, group in by_name.items()}
            for model, by_name in plan.items()}
    section.text("#### (j) The NVFP4 recipe, one component at a time")
    nvfp4_table(section, runs)
    for model, by_name in runs.items():
        nvfp4_verdict(section, model, by_name, steps(ctx, model))
    section.text("#### (k) DeepSeek-V3's blockwise FP8, and 2-D blocks for the activation gradients")
    blockwise_table(section, runs)
    for model, by_name in runs.items():
        blockwise_verdict(section, model, by_name, plan[model][BASELINE][0])
    return section


def losses(model, results) -> list:
    return [validation_loss(model, r) for r in results]


def percent(gap: dict | None) -> str:
    """A relative gap in one line: "+0.84% (95% CI +0.21% to +1.47%, p = 0.03)"."""
    if gap is None:
        return "not compared (a run diverged)"
    return (f"{100 * gap['mean_difference']:+.2f}% (95% CI {100 * gap['low']:+.2f}% to {100 * gap['high']:+.2f}%, "
            f"p = {gap['t_test_p']:.2g})")


def lower(test: dict | None) -> bool:
    """Whether a paired loss difference (a - b) says a ends lower than b at p < ``SIGNIFICANCE``."""
    return test is not None and test["mean_difference"] < 0 and test["t_test_p"] < SIGNIFICANCE


def higher(test: dict | None) -> bool:
    return test is not None and test["mean_difference"] > 0 and test["t_test_p"] < SIGNIFICANCE


def paired(model, by_name, a, b) -> dict | None:
    """The paired loss difference a - b on a's seeds; None when a run of either has no loss."""
    x, y = losses(model, by_name[a]), losses(model, by_name[b])[:len(by_name[a])]
    return None if None in x or None in y else paired_comparison(x, y)


# --- (j) -----------------------------------------------------------------------------------------------

def nvfp4_table(section, runs):
    rows, panels = [], []
    for model, by_name in runs.items():
        for name in [BASELINE, FP8, *NVFP4_NAMES]:
            row = summary_row(model, name, by_name[name])
            if name != FP8:
                row["gap to fp8-current"] = _mean(relative_gap(losses(model, by_name[name]),
                                                               losses(model, by_name[FP8])))
            if name in NVFP4_NAMES and name != NONE:
                test = paired(model, by_name, name, NONE)
                row.update({"minus none": test and test["mean_difference"], "minus none p": test and test["t_test_p"]})
            rows.append(row)
        panels.append((f"{model}: final validation loss", LOSS_UNITS[model],
                       {name: losses(model, by_name[name]) for name in [BASELINE, FP8, *NVFP4_NAMES]}, FP8))
    section.table(rows, ["model", "policy", "seeds", "diverged", "loss mean", "loss 95% CI low", "loss 95% CI high",
                         "gap to fp8-current", "minus none", "minus none p", "saturated share",
                         "gradients flushed (mean)", "gradient error vs FP64 (mean of medians)"],
                  caption="(j) Per model and policy: the final validation loss (mean over seeds, 95% t interval), "
                          "the mean relative gap to fp8-current on the same seeds, the paired loss difference from "
                          f"{NONE} (negative: the component lowers the loss) with its t-test p, the share of the "
                          "operands saturated, of the incoming gradients flushed to zero, and the weight gradients' "
                          "error against FP64.")
    section.data("nvfp4_components.csv", rows)
    by = {(r["model"], r["policy"]): r for r in rows}
    texts = [f"on the {model}, " + ", ".join(
        f"{name.removeprefix(NVFP4_RECIPE + ', ')} {100 * by[(model, name)]['gradients flushed (mean)']:.3g}% "
        f"({_error(by[(model, name)])})" for name in NVFP4_NAMES) for model in runs]
    joined = "; ".join(texts)
    section.text("**What each component changes in the casts**: the share of the incoming gradients flushed to zero "
                 "(E2M1's smallest non-zero magnitude is 0.5 times its block's scale) and, in brackets, the weight "
                 "gradients' error against FP64: " + joined + ".")
    section.figure(loss_figure(panels, NVFP4_BOUND), "nvfp4_components.png",
                   "(j) The final validation loss of each NVFP4 variant (points: seeds; black: mean and 95% t "
                   f"interval) beside bf16-mixed and fp8-current; green: fp8-current's mean and the band up to "
                   f"{sources.NVFP4_GAP.value:g}% above it (the paper's gap).", key=True)


def _mean(test: dict | None):
    return None if test is None else test["mean_difference"]


def nvfp4_verdict(section, model, by_name, n_steps):
    """(j) holds on a model when nvfp4-te's relative gap to fp8-current lies below +1.5% (its whole 95% interval)
    and every component, alone on plain NVFP4, lowers the loss at p < 0.05; under conditions when the gap lies
    below and some component is not shown to help (the condition names them); not supported when the gap is not
    shown below +1.5%."""
    gap = relative_gap(losses(model, by_name[NVFP4_RECIPE]), losses(model, by_name[FP8]))
    none_gap = relative_gap(losses(model, by_name[NONE]), losses(model, by_name[FP8]))
    within = gap is not None and gap["high"] <= NVFP4_BOUND
    tests = {c: paired(model, by_name, variant_name((c,)), NONE) for c in NVFP4_COMPONENTS}
    helping = [c for c, t in tests.items() if lower(t)]
    hurting = [c for c, t in tests.items() if higher(t)]
    unshown = [c for c in NVFP4_COMPONENTS if c not in helping]
    verdict = ("not supported by the evidence" if not within else
               "holds" if not unshown else "holds under conditions")
    n = len(by_name[NVFP4_RECIPE])
    bf16 = [layer["module"] for layer in by_name[NVFP4_RECIPE][0]["layers"] if layer.get("policy") == BASELINE]
    diverged = {name: losses(model, results).count(None) for name, results in by_name.items()}
    weights = sum(layer["parameters"] for layer in by_name[FP8][0]["layers"])
    evidence = (
        f"{model}, {n} seeds, {n_steps} steps: nvfp4-te's loss minus fp8-current's, relative, {percent(gap)}: "
        + ("within" if within else "beyond" if gap is not None and gap["low"] > NVFP4_BOUND else
           "not shown within")
        + f" the paper's {sources.NVFP4_GAP.value:g}%; plain NVFP4 ({NONE}) {percent(none_gap)}. "
        "Each component alone on plain NVFP4, loss minus plain NVFP4's: "
        + "; ".join(f"+{c} {_difference(t)}" for c, t in tests.items())
        + f". At p < {SIGNIFICANCE:g}, lowering the loss: {', '.join(helping) or 'none'}"
        + (f"; raising it: {', '.join(hurting)}" if hurting else "") + ". "
        + (f"Diverged runs: {', '.join(f'{k} {v}' for k, v in diverged.items() if v)}. " if any(diverged.values())
           else "")
        + f"What limits this evidence: a model of {weights:,} weights trained for {n_steps} steps, against the "
        f"paper's 12B parameters on 10T tokens, and {n} seeds; \"the last 15% of the layers\" is here "
        f"{', '.join(bf16) or 'no layer'}.")
    section.verdict(CLAIM_NVFP4, verdict, evidence, sources.NVFP4_PRETRAINING, model=model,
                    condition=f"the whole recipe is within {sources.NVFP4_GAP.value:g}% of FP8, but "
                              f"{', '.join(unshown)} not shown to help alone" if verdict == "holds under conditions"
                    else "")


def _difference(test: dict | None) -> str:
    if test is None:
        return "not compared (a run diverged)"
    if test["ties"] == test["n"]:
        return f"0 in each of the {test['n']} seeds (the same losses)"
    return (f"{test['mean_difference']:+.3g} (95% CI {test['low']:+.3g} to {test['high']:+.3g}, "
            f"p = {test['t_test_p']:.2g})")


# --- (k) -----------------------------------------------------------------------------------------------

def blockwise_table(section, runs):
    rows, panels = [], []
    for model, by_name in runs.items():
        for name in BLOCKWISE_NAMES:
            row = summary_row(model, name, by_name[name])
            if name != BASELINE:
                row["gap to bf16-mixed"] = _mean(relative_gap(losses(model, by_name[name]),
                                                              losses(model, by_name[BASELINE])))
            rows.append(row)
        panels.append((f"{model}", LOSS_UNITS[model], {n: losses(model, by_name[n]) for n in BLOCKWISE_NAMES},
                       {n: [gradient_error(r) for r in by_name[n]] for n in BLOCKWISE_NAMES}))
    section.table(rows, ["model", "policy", "seeds", "diverged", "loss mean", "loss 95% CI low", "loss 95% CI high",
                         "gap to bf16-mixed", "saturated (all seeds)", "saturated share", "gradients flushed (mean)",
                         "gradient error vs FP64 (mean of medians)"],
                  caption="(k) Per model and policy: the final validation loss (mean, 95% t interval), the mean "
                          "relative gap to bf16-mixed on the same seeds, the operand values the scaled casts "
                          "saturated (all seeds and steps) and their share, the share of the incoming gradients "
                          "flushed to zero, and the weight gradients' error against the FP64 twin.")
    section.data("blockwise.csv", rows)
    by = {(r["model"], r["policy"]): r for r in rows}
    texts = [f"on the {model} 128 x 128 gradient blocks flushed "
             f"{100 * by[(model, BLOCKWISE_2D_GRADIENTS)]['gradients flushed (mean)']:.3g}% of the incoming gradients "
             f"to zero against 1 x 128 tiles' {100 * by[(model, BLOCKWISE)]['gradients flushed (mean)']:.3g}% "
             f"(per-tensor fp8-current: {100 * by[(model, FP8)]['gradients flushed (mean)']:.3g}%), and saturated "
             f"{by[(model, BLOCKWISE_2D_GRADIENTS)]['saturated (all seeds)']:,} values against "
             f"{by[(model, BLOCKWISE)]['saturated (all seeds)']:,}; the weight gradients' error against FP64 went "
             f"from {_error(by[(model, BLOCKWISE)])} to {_error(by[(model, BLOCKWISE_2D_GRADIENTS)])}"
             for model in runs]
    joined = "; ".join(texts)
    section.text("**What a coarser gradient block changes.** fp8-blockwise's scales are powers of two (TE's "
                 "power-of-two scale, 448 / amax rounded down), and multiplying by a power of two moves a value's "
                 "exponent without changing how its significand rounds to E4M3: a block's scale changes only the "
                 "values that land below E4M3's normal range (rounded with fewer bits, or flushed) or above its max "
                 "(saturated). A 128 x 128 block takes its amax over 128 rows, so its small values fall lower. "
                 + joined[0].upper() + joined[1:] + ".")
    section.figure(blockwise_figure(panels), "blockwise.png",
                   "(k) Top: the final validation loss of bf16-mixed, per-tensor fp8-current, DeepSeek's blockwise "
                   "FP8 and the same with 128 x 128 gradient blocks (points: seeds; black: mean and 95% t interval). "
                   "Bottom: the weight gradients' error against an FP64 twin of the same step (median over modules "
                   "and compared steps).", key=True)


def blockwise_verdict(section, model, by_name, reference_config):
    """(k) holds on a model when fp8-blockwise's relative gap to bf16-mixed lies below +0.25% (its whole 95%
    interval) and 128 x 128 gradient blocks end with a higher loss than 1 x 128 tiles at p < 0.05 (or diverge where
    the tiles do not); under conditions when one of the two is shown (the condition says which is not); not
    supported when neither."""
    gap = relative_gap(losses(model, by_name[BLOCKWISE]), losses(model, by_name[BASELINE]))
    current = relative_gap(losses(model, by_name[FP8]), losses(model, by_name[BASELINE]))
    within = gap is not None and gap["high"] <= DEEPSEEK_BOUND
    tiles = paired(model, by_name, BLOCKWISE_2D_GRADIENTS, BLOCKWISE)
    diverged = {n: losses(model, by_name[n]).count(None) for n in (BLOCKWISE, BLOCKWISE_2D_GRADIENTS)}
    worse = higher(tiles) or (diverged[BLOCKWISE_2D_GRADIENTS] > 0 and diverged[BLOCKWISE] == 0)
    verdict = ("holds" if within and worse else "holds under conditions" if within or worse
               else "not supported by the evidence")
    rows = {n: summary_row(model, n, by_name[n]) for n in (FP8, BLOCKWISE, BLOCKWISE_2D_GRADIENTS)}
    n = len(by_name[BLOCKWISE])
    width, what = widest_gradient_row(model, reference_config)
    evidence = (
        f"{model}, {n} seeds: fp8-blockwise's loss minus bf16-mixed's, relative, {percent(gap)}: "
        + ("within" if within else "beyond" if gap is not None and gap["low"] > DEEPSEEK_BOUND else "not shown within")
        + f" DeepSeek's {sources.DEEPSEEK_FP8_GAP.value:g}% (per-tensor fp8-current {percent(current)}). "
        f"128 x 128 gradient blocks minus 1 x 128 tiles: {_difference(tiles)}"
        + (f", {diverged[BLOCKWISE_2D_GRADIENTS]} of {n} runs diverged" if diverged[BLOCKWISE_2D_GRADIENTS] else "")
        + f" ({'worse' if worse else 'not shown worse'}). Saturated operand values (all seeds): "
        + ", ".join(f"{k} {r['saturated (all seeds)']:,}" for k, r in rows.items())
        + "; incoming gradients flushed: "
        + ", ".join(f"{k} {100 * r['gradients flushed (mean)']:.3g}%" for k, r in rows.items())
        + "; weight-gradient error against FP64: "
        + ", ".join(f"{k} {_error(r)}" for k, r in rows.items()) + ". "
        f"What limits this evidence: DeepSeek saw the 128 x 128 divergence on a 16B model after long training; here "
        f"the incoming gradients' rows hold at most {width} values ({what})"
        + (f", so a 1 x 128 tile spans a whole row (one scale per token or position) and a 128 x 128 block at most "
           f"{width} channels of 128 rows" if width <= GRADIENT_TILES[1] else "")
        + "; a model this small, trained this briefly, may not show it.")
    condition = ("" if verdict != "holds under conditions" else
                 "128 x 128 gradient blocks not shown worse at this scale" if within else
                 f"fp8-blockwise not shown within {sources.DEEPSEEK_FP8_GAP.value:g}% of BF16")
    section.verdict(CLAIM_BLOCKWISE, verdict, evidence, sources.DEEPSEEK_V3_FP8, model=model, condition=condition)


def widest_gradient_row(model, reference_config) -> tuple[int, str]:
    """The most channels an incoming gradient of the model's hidden layers has, and what they are: char-gpt's MLP
    hidden layer (4 x width; the head's, one per character of the vocabulary, aside), the conv net's channels
    (``CNNConfig``; its head has one per class)."""
    if model == "transformer":
        from fpsim.sim.data import load_data

        width = reference_config["model_options"]["n_embd"]
        vocabulary = load_data(TrainConfig.from_dict(dict(reference_config)).data).vocab_size
        return 4 * width, f"char-gpt's MLP, 4 x width {width}; the head's {vocabulary} logits aside"
    from fpsim.torch.models import CNNConfig

    return CNNConfig(**reference_config.get("model_options", {})).channels, "the conv net's channels"


def _error(row) -> str:
    error = row["gradient error vs FP64 (mean of medians)"]
    return "none recorded" if error is None else f"{error:.3g}"


if __name__ == "__main__":
    raise SystemExit(analysis_main(globals()))
