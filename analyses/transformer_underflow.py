"""Do a transformer's own gradients underflow in FP16, with no multiplier? Histograms of log2 |g| of
activation and weight gradients per module kind of char-gpt (embedding, attention, MLP, LayerNorm, head),
collected in FP32 training on the pydoc text, over FP16's and BF16's zones (the analogue of Micikevicius et
al. 2018, Fig. 3); the share FP16 would flush per module kind over training; the loss scales 2^k that keep
them; and whether the underflow costs anything measurable when the model is trained in fp16-mixed (no
scaling) against fp16-amp and bf16-mixed."""

import matplotlib.pyplot as plt
import numpy as np

import fpsim
from fpsim.report.experiments import (GPT_TRAINING, bits_per_character, gpt_batch, gpt_config, gpt_steps,
                                      histogram_of, histogram_steps, kind_colour, model_seeds, modules_by_kind,
                                      run_trainings, share_after_scaling, share_below)
from fpsim.report.plots import Zones, legend_entries, module_histograms_figure, seed_scatter, shade_zones
from fpsim.report.runner import analysis_main
from fpsim.report.section import new_section
from fpsim.report.sources import MICIKEVICIUS
from fpsim.report.stats import mean_ci, paired_comparison

ORDER = 35
NEEDS = ("torch",)
KINDS = {"activation_grads": "activation gradients", "weight_grads": "weight gradients"}
FP16_LOST = int(Zones.of(fpsim.FP16).flush_below)  # -25: |g| <= 2^-25 rounds to zero in FP16
FP16_NORMAL = fpsim.FP16.emin  # -14
SCALES = range(0, 41)
POLICIES = ("fp32", "fp16-mixed", "fp16-amp", "bf16-mixed")
"""Trained and compared: fp16-mixed is FP16 with FP32 master weights and no loss scaling, so natural
underflow acts on it unrescued; fp16-amp adds the dynamic loss scale; bf16-mixed has FP32's range."""
EVERY_OP = {"preset": "fp32", "placement": "low-precision", "name": "fp32 (every op observed)"}
"""FP32 training in which every op's output is observed (what pure FP16, ``model.half()``, would round),
not only the ops autocast runs in 16 bits."""
NOTICEABLE_BPC = 0.01
"""A paired difference in validation bits per character whose 95% CI lies inside +-this counts as
"nothing measurable" (about 0.4% of the losses these runs reach)."""


def stages_of(steps: int, count: int) -> list[int]:
    return sorted({int(s) for s in np.linspace(0, steps - 1, count)})


def describe(ctx) -> str:
    options = gpt_config(ctx, "fp32")["model_options"]
    return (f"char-gpt ({options['n_layer']} pre-LayerNorm blocks, width {options['n_embd']}, "
            f"{options['n_head']} heads, context {options['block_size']}) on the pydoc text, "
            f"{GPT_TRAINING['optimizer']} lr {GPT_TRAINING['lr']:g}, batch {gpt_batch(ctx)}, {gpt_steps(ctx)} steps, "
            "mean cross-entropy over the batch's characters")


def histogram_figure(result, stages):
    bf16 = Zones.of(fpsim.BF16).flush_below
    return module_histograms_figure(result, KINDS, stages, fpsim.FP16, "char-gpt, FP32 training, gradients as they "
                                    "are (no multiplier): FP16 zones shaded; BF16 rounds to 0 only at or below "
                                    f"2^{bf16:.0f}, far off this axis")


def shares(result, stages, placement: str) -> list[dict]:
    """Per gradient kind, module kind and histogram step: the share FP16 would lose and hold subnormal."""
    rows = []
    groups = modules_by_kind(result)
    for kind in KINDS:
        for module_kind, paths in groups.items():
            for step in stages:
                try:
                    e, c, zeros = histogram_of(result, kind, step=step, modules=paths)
                except ValueError:
                    continue
                rows.append({"placement": placement, "kind": kind, "module kind": module_kind, "step": step,
                             "nonzero": int(c.sum()), "zeros": zeros,
                             "lost in FP16": share_below(e, c, FP16_LOST),
                             "FP16 subnormal or lost": share_below(e, c, FP16_NORMAL),
                             "smallest log2|g|": int(e[np.flatnonzero(c)[0]]) if c.sum() else None})
    return rows


def run(ctx):
    section = new_section(ctx, globals(), "Transformer underflow: a transformer's own gradients in FP16")
    steps = gpt_steps(ctx)
    stages = stages_of(steps, ctx.pick(3, 6))
    seeds = model_seeds(ctx)
    observed = {"every op (pure 16-bit)": EVERY_OP, "autocast's 16-bit ops": "fp32"}
    histogram_configs = [gpt_config(ctx, policy, histograms=True, histogram_steps=stages)
                         for policy in observed.values()]
    trained_configs = [gpt_config(ctx, policy, seed=seed) for policy in POLICIES for seed in seeds]
    section.what_was_run(
        f"fpsim.train on {describe(ctx)}. Histograms: FP32 training (seed 0) with histograms of log2 |value| at "
        f"steps {stages}, every value observed before any rounding, twice: once where autocast would round to 16 "
        "bits (the inputs and outputs of matrix products and of the ops that follow them in 16 bits) and once at "
        f"every op (as pure 16-bit training, model.half(), would round). Training: {', '.join(POLICIES)}, seeds "
        f"{seeds[0]}..{seeds[-1]}, each seed the same initial weights and batches for every policy; validation loss "
        "over the held-out 10% of the text, in bits per character.")
    results = run_trainings(ctx, histogram_configs + trained_configs)
    every_op, autocast = results[:2]
    trained = {p: results[2 + i * len(seeds):2 + (i + 1) * len(seeds)] for i, p in enumerate(POLICIES)}

    rows = shares(every_op, histogram_steps(every_op), "every op") + shares(autocast, histogram_steps(autocast),
                                                                            "autocast")
    section.data("underflow_by_module.csv", rows)
    section.figure(histogram_figure(every_op, [stages[0], stages[len(stages) // 2], stages[-1]]), "histograms.png",
                   "char-gpt's gradients in FP32 training, no multiplier: histograms of log2 |g| per module kind at "
                   "three stages of training, over FP16's zones (the analogue of Micikevicius et al. 2018, Fig. 3).",
                   key=True)

    fig, axes = plt.subplots(1, len(KINDS), figsize=(13, 4.4), sharey=True)
    for ax, (kind, label) in zip(axes, KINDS.items()):
        for module_kind in modules_by_kind(every_op):
            for placement, style in (("every op", "o-"), ("autocast", "s--")):
                picked = [r for r in rows if r["kind"] == kind and r["module kind"] == module_kind
                          and r["placement"] == placement]
                if picked:
                    ax.plot([r["step"] for r in picked], [100 * r["lost in FP16"] for r in picked], style,
                            color=kind_colour(module_kind), label=f"{module_kind}, {placement}")
        ax.set_title(f"{label}: share FP16 rounds to 0 (|g| < 2^{FP16_LOST})")
        ax.set_xlabel("training step")
        ax.set_yscale("symlog", linthresh=0.01)
    axes[0].set_ylabel("% of non-zero values (symlog)")
    handles, labels = legend_entries(axes)
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    section.figure(fig, "flushed_by_module.png",
                   "The share of char-gpt's gradient values FP16 would round to zero, per module kind, over "
                   "FP32 training: solid, every op's gradients; dashed, only those autocast puts in 16 bits.")

    rescue = []
    for kind in KINDS:
        for step in histogram_steps(autocast):
            e, c, _ = histogram_of(autocast, kind, step=step)
            rescue += [{"kind": kind, "step": step, **share_after_scaling(e, c, k, FP16_LOST, fpsim.FP16.emax)}
                       for k in SCALES]
    section.data("loss_scale_window.csv", rescue)
    fig, ax = plt.subplots(figsize=(9, 4.4))
    for kind, label in KINDS.items():
        for step in (stages[0], stages[-1]):
            picked = [r for r in rescue if r["kind"] == kind and r["step"] == step]
            line, = ax.plot([r["k"] for r in picked], [100 * r["lost"] for r in picked], "-",
                            label=f"{label}, step {step}: still lost")
            ax.plot([r["k"] for r in picked], [100 * r["overflow"] for r in picked], ":", color=line.get_color(),
                    label=f"{label}, step {step}: overflow")
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_xlabel("k (loss scale 2^k)")
    ax.set_ylabel("% of non-zero gradient values (symlog)")
    ax.set_title("char-gpt, autocast's 16-bit gradients: what a loss scale 2^k leaves lost (< 2^-25) or overflowing")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    fig.tight_layout()
    section.figure(fig, "loss_scale_window.png",
                   "The loss-scale window: for scales 2^k, the share of char-gpt's gradient values (autocast's "
                   "16-bit ones, first and last histogram step) FP16 would still flush, and the share pushed to "
                   f"2^{fpsim.FP16.emax + 1} or above (overflow; counted by binade).")

    summary = []
    for kind, label in KINDS.items():
        for placement in ("every op", "autocast"):
            last = [r for r in rows if r["kind"] == kind and r["placement"] == placement and r["step"] == stages[-1]]
            if not last:
                continue
            worst = max(last, key=lambda r: r["lost in FP16"])
            total = sum(r["nonzero"] * r["lost in FP16"] for r in last) / max(sum(r["nonzero"] for r in last), 1)
            summary.append({"gradients": label, "observed at": placement, "step": stages[-1],
                            "lost in FP16, all modules": total,
                            "worst module kind": f"{worst['module kind']} ({worst['lost in FP16']:.2%})",
                            "FP16 subnormal or lost, all modules":
                                sum(r["nonzero"] * r["FP16 subnormal or lost"] for r in last)
                                / max(sum(r["nonzero"] for r in last), 1)})
    windows = {}
    for kind in KINDS:
        picked = [r for r in rescue if r["kind"] == kind and r["step"] == stages[-1]]
        kept = [r["k"] for r in picked if r["lost"] <= 0.001 and r["overflow"] == 0]
        windows[kind] = f"k = {kept[0]}..{kept[-1]}" if kept else "none"
    for row in summary:
        kind = next(k for k, v in KINDS.items() if v == row["gradients"])
        row["loss scales 2^k keeping 99.9% (autocast's tensors)"] = windows[kind]
    section.table(summary, caption=f"At the last histogram step (FP32 training, seed 0): the share of non-zero "
                                   f"gradient values FP16 would round to zero (|g| < 2^{FP16_LOST}) or hold as "
                                   f"subnormals (< 2^{FP16_NORMAL}).")

    # --- trained: does the underflow cost anything? -------------------------------------------------
    bpc = {p: [bits_per_character(r) for r in trained[p]] for p in POLICIES}
    measured = [{"policy": p, "seed": s, "validation bits per character": bpc[p][i],
                 "activation-gradient values flushed": trained[p][i]["activation_grad_underflow_fraction"],
                 "weight-gradient values flushed (FP64 shadow)": trained[p][i]["weight_grad_underflow_fraction"],
                 "skipped steps": trained[p][i]["skipped_steps"], "final loss scale": trained[p][i]["final_loss_scale"],
                 "diverged": trained[p][i]["diverged"]}
                for p in POLICIES for i, s in enumerate(seeds)]
    section.data("trained.csv", measured)
    diverged = [p for p in POLICIES if None in bpc[p]]
    if diverged:  # the comparison needs every policy's score on every seed
        raise RuntimeError(f"{', '.join(diverged)} left no finite validation loss on some seed (trained.csv)")
    tests = {p: paired_comparison(bpc[p], bpc["fp32"]) for p in POLICIES[1:]}
    tests["fp16-mixed vs fp16-amp"] = paired_comparison(bpc["fp16-mixed"], bpc["fp16-amp"])
    table = []
    for p in POLICIES:
        ci = mean_ci(bpc[p])
        runs = [r for r in measured if r["policy"] == p]
        row = {"policy": p, "seeds": len(seeds), "mean bits/char": ci["mean"], "95% CI": f"{ci['low']:.4f} to "
               f"{ci['high']:.4f}",
               "activation grads flushed (mean)": float(np.mean([r["activation-gradient values flushed"]
                                                                 for r in runs])),
               "skipped steps (mean)": float(np.mean([r["skipped steps"] for r in runs]))}
        if p != "fp32":
            t = tests[p]
            row["minus fp32 (paired)"] = f"{t['mean_difference']:+.4f} ({t['low']:+.4f} to {t['high']:+.4f})"
        table.append(row)
    section.table(table, caption=f"Validation bits per character after {gpt_steps(ctx)} steps, {len(seeds)} seeds; "
                                 "paired differences against FP32 with their 95% t intervals; flushed: the share of "
                                 "non-zero activation-gradient values the run rounded to zero, over the run.")
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    seed_scatter(left, bpc, "validation loss (bits per character)")
    names = [*POLICIES[1:], "fp16-mixed vs fp16-amp"]
    for i, name in enumerate(names):
        t = tests[name]
        right.errorbar(i, t["mean_difference"], yerr=[[t["mean_difference"] - t["low"]],
                                                      [t["high"] - t["mean_difference"]]], fmt="o", capsize=5)
    right.axhline(0, color="k", lw=0.8)
    right.axhspan(-NOTICEABLE_BPC, NOTICEABLE_BPC, color="0.85", alpha=0.6, label=f"+-{NOTICEABLE_BPC} bits/char")
    right.set_xticks(range(len(names)))
    right.set_xticklabels([n if "vs" in n else f"{n} - fp32" for n in names], fontsize=8)
    right.set_ylabel("paired difference (bits per character)")
    right.set_title("Mean paired difference and 95% CI (positive: worse)")
    right.legend(loc="upper right")
    fig.tight_layout()
    section.figure(fig, "trained.png", f"char-gpt trained in FP32, fp16-mixed (no loss scaling), fp16-amp and "
                                       f"bf16-mixed, {len(seeds)} seeds: validation bits per character and the "
                                       "paired differences.")

    act = next(r for r in summary if r["gradients"] == KINDS["activation_grads"] and r["observed at"] == "autocast")
    mixed = tests["fp16-mixed vs fp16-amp"]
    cost = tests["fp16-mixed"]
    inside = -NOTICEABLE_BPC <= cost["low"] and cost["high"] <= NOTICEABLE_BPC
    flushed = np.mean([r["activation-gradient values flushed"] for r in measured if r["policy"] == "fp16-mixed"])
    skipped = np.mean([r["skipped steps"] for r in measured if r["policy"] == "fp16-amp"])
    section.text(
        f"Compare {MICIKEVICIUS}: 67% of SSD's activation-gradient values were zero in FP16 without scaling. Here, "
        f"with no multiplier, at the last recorded step of FP32 training {act['lost in FP16, all modules']:.2%} of "
        f"the activation-gradient values autocast would put in FP16 lie below 2^{FP16_LOST} (worst module kind: "
        f"{act['worst module kind']}), and the fp16-mixed runs themselves flushed {flushed:.2%} of theirs over "
        f"training. The cost of that underflow is fp16-mixed (FP16, no loss scaling) against FP32: "
        f"{cost['mean_difference']:+.4f} bits per character (95% CI {cost['low']:+.4f} to {cost['high']:+.4f}, "
        f"paired t p = {cost['t_test_p']:.2g}, {len(seeds)} seeds), "
        + (f"inside +-{NOTICEABLE_BPC} bits per character: on this model, at this length of training, the natural "
           "underflow costs nothing measurable." if inside else
           f"not inside +-{NOTICEABLE_BPC} bits per character: "
           + ("a measurable cost." if cost["low"] > 0 else "the seeds cannot rule a cost of that size out."))
        + f" fp16-mixed minus fp16-amp: {mixed['mean_difference']:+.4f} ({mixed['low']:+.4f} to "
        f"{mixed['high']:+.4f}); the dynamic scale, starting at 2^16, skipped {skipped:.1f} steps per run on "
        "average while it backed off to the gradients' range. BF16 flushes nothing here: its zone starts at 2^-134.")
    return section


if __name__ == "__main__":
    raise SystemExit(analysis_main(globals()))
