"""Where do gradients fall on FP16's and BF16's number lines? Histograms of log2 |g| of activation and
weight gradients per layer, collected in FP32 training, against the zones that flush to zero or lose
precision (the analogue of Micikevicius et al. 2018, Fig. 3), and the share a loss scale of 2^k would rescue."""

import matplotlib.pyplot as plt
import numpy as np

import fpsim
from fpsim.report.experiments import (histogram_of, histogram_steps, pow2_label, run_trainings, share_after_scaling,
                               share_below)
from fpsim.report.plots import Zones, histogram_grid
from fpsim.report.runner import analysis_main
from fpsim.report.section import new_section
from fpsim.report.sources import MICIKEVICIUS

ORDER = 30
GRAD_SCALES = (1.0, 2.0 ** -10)
"""Gradient magnitudes: this MLP as it is, and every gradient 2^10 times smaller (a stand-in for smaller gradients,
not a measurement of a larger model)."""
KINDS = {"activation_grads": "activation gradients", "weight_grads": "weight gradients"}
FP16_LOST = int(Zones.of(fpsim.FP16).flush_below)  # -25: |g| <= 2^-25 rounds to zero in FP16
FP16_NORMAL = fpsim.FP16.emin  # -14: |g| < 2^-14 is subnormal in FP16 (fewer significant bits)
LOST = f"below 2^{FP16_LOST}"
SUBNORMAL = f"below 2^{FP16_NORMAL}"
SCALES = range(0, 33)


def histogram_figure(result, grad_scale, stages):
    bf16 = Zones.of(fpsim.BF16).flush_below
    layers = range(len(result["layers"]))
    return histogram_grid(KINDS, layers, stages, fpsim.FP16,
                          lambda kind, layer, step: histogram_of(result, kind, layer, step)[:2],
                          column_title=lambda layer, label: f"{label}, layer {layer + 1}",
                          xlabel="log2 |g| (before rounding)", xlim=(-48, 4),
                          title=f"FP32 training, every gradient x {pow2_label(grad_scale)}: FP16 zones shaded "
                                f"(grey: rounds to 0, orange: subnormal); BF16 rounds to 0 only at or below "
                                f"2^{bf16:.0f}, far off this axis",
                          size=(4 * len(layers), 6.5), rect=(0, 0.03, 1, 0.95))


def run(ctx):
    section = new_section(ctx, globals(), "Gradient underflow: where gradients fall on the number line")
    steps = ctx.pick(80, 1500)
    stages = sorted({int(s) for s in np.linspace(0, steps - 1, ctx.pick(4, 8))})
    configs = [dict(policy="fp32", steps=steps, grad_scale=gs, histograms=True, histogram_steps=stages, seed=0)
               for gs in GRAD_SCALES]
    section.what_was_run(
        f"fpsim.train in FP32 (preset fp32) on the digits data, MLP 64-128-128-128-10, SGD lr 0.05, batch 64, "
        f"{steps} steps, seed 0, histograms of log2 |value| before rounding at steps {stages}; once as it is "
        f"(grad_scale 1) and once with every gradient 2^10 times smaller (grad_scale {pow2_label(GRAD_SCALES[1])}, "
        "the optimizer compensating, so the training is the same in exact arithmetic).")
    results = run_trainings(ctx, configs)
    rows, rescue = [], []
    for gs, result in zip(GRAD_SCALES, results):
        layers = len(result["layers"])
        for kind in KINDS:
            for layer in range(layers):
                for step in histogram_steps(result):
                    e, c, zeros = histogram_of(result, kind, layer, step)
                    rows.append({"grad_scale": pow2_label(gs), "kind": kind, "layer": layer + 1, "step": step,
                                 "nonzero": int(c.sum()), "zeros": zeros,
                                 LOST: share_below(e, c, FP16_LOST),
                                 SUBNORMAL: share_below(e, c, FP16_NORMAL),
                                 "median log2|g|": int(e[np.searchsorted(np.cumsum(c), c.sum() / 2)])})
                    for k in SCALES:
                        rescue.append({"grad_scale": pow2_label(gs), "kind": kind, "layer": layer + 1, "step": step,
                                       **share_after_scaling(e, c, k, FP16_LOST, fpsim.FP16.emax)})
            e, c, _ = histogram_of(result, kind)
            for k in SCALES:
                rescue.append({"grad_scale": pow2_label(gs), "kind": kind, "layer": "all", "step": "all",
                               **share_after_scaling(e, c, k, FP16_LOST, fpsim.FP16.emax)})
    section.data("underflow_by_layer.csv", rows)
    section.data("rescue_by_scale.csv", rescue)  # per layer and step, and over all ("all")
    scaled = results[1]
    show = [stages[0], stages[len(stages) // 3], stages[2 * len(stages) // 3], stages[-1]]
    section.figure(histogram_figure(scaled, GRAD_SCALES[1], show), "histograms.png",
                   f"Histograms of log2 |g| per layer in FP32 training with gradients x {pow2_label(GRAD_SCALES[1])}, "
                   "at four stages of training, over FP16's zones: the analogue of Micikevicius et al. 2018, Fig. 3.",
                   key=True)
    section.figure(histogram_figure(results[0], GRAD_SCALES[0], show), "histograms_unscaled.png",
                   "The same for this MLP's own gradients (grad_scale 1).")

    fig, axes = plt.subplots(len(KINDS), len(GRAD_SCALES), figsize=(13, 7.5), sharex=True, sharey=True)
    for col, gs in enumerate(GRAD_SCALES):
        for row, (kind, label) in enumerate(KINDS.items()):
            ax = axes[row, col]
            for layer in range(len(results[0]["layers"])):
                picked = [r for r in rows if r["grad_scale"] == pow2_label(gs) and r["kind"] == kind
                          and r["layer"] == layer + 1]
                line, = ax.plot([r["step"] for r in picked], [100 * r[LOST] for r in picked], "o-",
                                label=f"layer {layer + 1}: < 2^{FP16_LOST} (lost in FP16)")
                ax.plot([r["step"] for r in picked], [100 * r[SUBNORMAL] for r in picked], "s--",
                        color=line.get_color(), alpha=0.6, label=f"layer {layer + 1}: < 2^{FP16_NORMAL} (FP16 "
                                                                 "subnormal)")
            ax.set_title(f"{label}, gradients x {pow2_label(gs)}")
            ax.set_ylim(-3, 103)
            if row == 1:
                ax.set_xlabel("training step")
            if col == 0:
                ax.set_ylabel("% of non-zero values")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, bbox_to_anchor=(0.5, -0.01))
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    section.figure(fig, "underflow_by_layer.png",
                   f"Per layer over training: the share of gradient values FP16 would lose (below 2^{FP16_LOST}) or "
                   f"hold as subnormals (below 2^{FP16_NORMAL}).", key=False)

    fig, axes = plt.subplots(1, len(GRAD_SCALES), figsize=(13, 4.2), sharey=True)
    for ax, gs in zip(axes, GRAD_SCALES):
        for kind, label in KINDS.items():
            picked = [r for r in rescue if r["grad_scale"] == pow2_label(gs) and r["kind"] == kind
                      and r["layer"] == "all"]
            line, = ax.plot([r["k"] for r in picked], [100 * r["lost"] for r in picked], "-",
                            label=f"{label}: lost (< 2^{FP16_LOST} after scaling)")
            ax.plot([r["k"] for r in picked], [100 * r["overflow"] for r in picked], "--", color=line.get_color(),
                    label=f"{label}: overflow (>= 2^{fpsim.FP16.emax + 1} after scaling)")
        ax.set_title(f"loss scale 2^k applied to FP32 gradients x {pow2_label(gs)}")
        ax.set_xlabel("k (loss scale 2^k)")
    axes[0].set_ylabel("% of non-zero gradient values (all layers, all stages)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    section.figure(fig, "rescue_by_scale.png",
                   f"What a loss scale of 2^k would do in FP16: the share of gradient values still lost below "
                   f"2^{FP16_LOST}, and the share pushed to 2^{fpsim.FP16.emax + 1} or above (overflow; counted by "
                   "binade, so values between 65504 and 2^16 that also overflow are not in it).")

    summary = []
    for gs in GRAD_SCALES:
        for kind, label in KINDS.items():
            last = [r for r in rows if r["grad_scale"] == pow2_label(gs) and r["kind"] == kind
                    and r["step"] == stages[-1]]
            picked = [r for r in rescue if r["grad_scale"] == pow2_label(gs) and r["kind"] == kind
                      and r["layer"] == "all"]
            best = max(picked, key=lambda r: (r["kept"], -r["k"]))
            window = [r["k"] for r in picked if r["lost"] <= 0.001 and r["overflow"] == 0]
            summary.append({"gradients x": pow2_label(gs), "kind": label,
                            f"lost in FP16 ({LOST}), last step, worst layer": max(r[LOST] for r in last),
                            f"FP16 subnormal or lost ({SUBNORMAL}), last step, worst layer": max(r[SUBNORMAL]
                                                                                               for r in last),
                            "median log2|g|, last step": min(r["median log2|g|"] for r in last),
                            "loss scales 2^k keeping 99.9% without overflow": (f"k = {window[0]}..{window[-1]}"
                                                                              if window else "none"),
                            "best k (share kept)": f"{best['k']} ({best['kept']:.4f})"})
    section.table(summary, caption="Summary over layers (last histogram step) and over all recorded values "
                                   "(loss-scale columns).")
    act1, act2 = (next(r for r in summary if r["gradients x"] == pow2_label(gs) and r["kind"] == KINDS[
        "activation_grads"]) for gs in GRAD_SCALES)
    section.text(
        f"Compare {MICIKEVICIUS}, where much of a large network's activation-gradient histogram lay below FP16's "
        f"range. In this MLP's own FP32 training, at the last recorded step, up to "
        f"{act1[f'lost in FP16 ({LOST}), last step, worst layer']:.1%} of a layer's activation-gradient values lie "
        f"{LOST} (FP16 rounds them to zero) and "
        f"{act1[f'FP16 subnormal or lost ({SUBNORMAL}), last step, worst layer']:.1%} below FP16's smallest normal "
        f"2^{FP16_NORMAL}; with every gradient 2^10 times smaller (a stand-in for smaller gradients, not a "
        f"measurement of a larger model), up to {act2[f'lost in FP16 ({LOST}), last step, worst layer']:.1%} would "
        f"be lost. A loss scale 2^k with "
        f"{act2['loss scales 2^k keeping 99.9% without overflow']} keeps 99.9% of them without overflow. BF16 "
        f"flushes only at or below 2^{Zones.of(fpsim.BF16).flush_below:.0f}, far below every recorded gradient.")
    return section


if __name__ == "__main__":
    raise SystemExit(analysis_main(globals()))
