"""Why do FP32 master weights work? The share of weight updates lost to rounding against |w| / |update|
(beside the thresholds 2^11 for FP16 and 2^8 for BF16) and against the learning rate, and training curves
of pure 16-bit weights, FP32 master weights, stochastic rounding and Kahan-compensated updates."""

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import ScalarFormatter

import fpsim
from fpsim.report.experiments import PRECISION_LRS, accuracy, grid_steps, loss_curve, run_trainings
from fpsim.report.lost_updates import measured_lost_share, theoretical_lost_share
from fpsim.report.runner import analysis_main
from fpsim.report.section import new_section

ORDER = 50
LR_POLICIES = {"fp32": "k", "fp16-pure": "#1f77b4", "bf16-pure": "#d62728", "bf16-mixed": "#ff9896"}
"""Policies of the learning-rate sweep, with their colours."""
CURVE_LR = 0.003
CURVE_POLICIES = {
    "fp16": ["fp16-pure", "fp16-mixed", {"preset": "fp16-pure", "update_rounding": "stochastic", "name": "fp16-sr"},
             {"preset": "fp16-pure", "kahan": True, "name": "fp16-kahan"}],
    "bf16": ["bf16-pure", "bf16-mixed", "bf16-sr", "bf16-kahan"],
}


def name_of(policy) -> str:
    return policy if isinstance(policy, str) else policy["name"]


def run(ctx):
    section = new_section(ctx, globals(), "Master weights: lost updates and how to keep them")
    ratios = 2.0 ** np.arange(4, 16.01, 0.125)
    fig, ax = plt.subplots(figsize=(9, 4.2))
    curve_rows = []
    for fmt, colour in ((fpsim.FP16, "#1f77b4"), (fpsim.BF16, "#d62728")):
        measured = measured_lost_share(fmt, ratios, n=ctx.pick(4000, 40000))
        theory = theoretical_lost_share(fmt, ratios)
        ax.plot(np.log2(ratios), 100 * measured, "o", ms=3, color=colour, label=f"{fmt.name.upper()}: measured (fpsim.round)")
        ax.plot(np.log2(ratios), 100 * theory, "-", color=colour, alpha=0.6, label=f"{fmt.name.upper()}: theory")
        ax.axvline(fmt.precision, color=colour, ls=":", label=f"{fmt.name.upper()} threshold 2^{fmt.precision}")
        curve_rows += [{"format": fmt.name, "log2 ratio": float(np.log2(r)), "measured": m, "theory": t}
                       for r, m, t in zip(ratios, measured, theory)]
    ax.set_xlabel("log2 (|w| / |update|)")
    ax.set_ylabel("% of updates lost (w unchanged)")
    ax.set_title("An update is lost when it is below half the spacing of the weights' format")
    ax.legend()
    fig.tight_layout()
    section.data("lost_vs_ratio.csv", curve_rows)
    section.figure(fig, "lost_vs_ratio.png",
                   "Share of updates lost when the weight is stored in FP16 or BF16, against |w| / |update|: measured "
                   "by rounding w - u with fpsim.round (weights log-uniform over [2^-8, 1), random signs) beside the "
                   "theory clip(log2 r - p, 0, 1).")

    steps = grid_steps(ctx)
    curve_steps = ctx.pick(60, 1500)
    lrs = ctx.pick((0.003, 0.05), PRECISION_LRS)
    lr_configs = [dict(policy=p, lr=lr, steps=steps, grad_scale=1.0, seed=0) for p in LR_POLICIES for lr in lrs]
    curve_configs = [dict(policy=p, lr=CURVE_LR, steps=curve_steps, seed=0)
                     for p in ["fp32"] + CURVE_POLICIES["fp16"] + CURVE_POLICIES["bf16"]]
    section.what_was_run(
        f"fpsim.train on digits, MLP 64-128-128-128-10, SGD, batch 64, seed 0: policies {', '.join(LR_POLICIES)} "
        f"at learning rates {list(lrs)} for {steps} steps; and fp32 with every FP16 and BF16 variant (pure, "
        f"mixed with FP32 master weights, stochastic rounding of the update, Kahan-compensated update) at lr "
        f"{CURVE_LR} for {curve_steps} steps. The lost-update curve rounds random weights directly.")
    results = run_trainings(ctx, lr_configs + curve_configs)
    lr_results, curve_results = results[:len(lr_configs)], results[len(lr_configs):]
    lr_rows = [{"policy": c["policy"], "lr": c["lr"], "test_accuracy": r["test_accuracy"],
                "lost_update_fraction": r["lost_update_fraction"],
                "lost_update_magnitude_fraction": r["lost_update_magnitude_fraction"]}
               for c, r in zip(lr_configs, lr_results)]
    section.data("lost_vs_lr.csv", lr_rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    for policy, colour in LR_POLICIES.items():
        picked = [r for r in lr_rows if r["policy"] == policy]
        style = "-" if "pure" in policy else "--"
        if policy != "fp32":
            left.plot([r["lr"] for r in picked], [100 * r["lost_update_fraction"] for r in picked], "o" + style,
                      color=colour, label=policy)
        right.plot([r["lr"] for r in picked], [100 * (r["test_accuracy"] or 0) for r in picked], "o" + style,
                   color=colour, label=policy)
    for ax, ylabel in ((left, "% of non-zero updates lost"), (right, "test accuracy (%)")):
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (SGD)")
        ax.set_ylabel(ylabel)
        ax.legend()
    left.set_title(f"Lost updates over {steps} steps")
    right.set_title("Final test accuracy")
    fig.tight_layout()
    rises = []  # learning-rate steps at which a policy loses MORE updates with the larger step
    for policy in (p for p in LR_POLICIES if p != "fp32"):
        picked = sorted((r for r in lr_rows if r["policy"] == policy), key=lambda r: r["lr"])
        rises += [f"{policy} from lr {a['lr']:g} to {b['lr']:g} ({a['lost_update_fraction']:.1%} to "
                  f"{b['lost_update_fraction']:.1%})"
                  for a, b in zip(picked, picked[1:]) if b["lost_update_fraction"] > a["lost_update_fraction"]]
    trend = ("the smaller the step, the more updates fall below half a unit of the stored weight"
             if not rises else "smaller steps mostly lose more updates (below half a unit of the stored "
                               f"weight), but not everywhere: lost updates rise with the step for {'; '.join(rises)}")
    section.figure(fig, "lost_vs_lr.png", f"Lost updates and accuracy against the learning rate: {trend}.")

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    fp32 = curve_results[0]
    rows = [{"policy": "fp32", "test_accuracy": fp32["test_accuracy"], "final_loss": fp32["final_loss"],
             "lost_update_fraction": fp32["lost_update_fraction"],
             "lost_update_magnitude_fraction": fp32["lost_update_magnitude_fraction"]}]
    offset = 1
    for ax, (fmt, policies) in zip(axes, CURVE_POLICIES.items()):
        s, l = loss_curve(fp32)
        ax.plot(s, l, color="k", ls="--", lw=2.5, zorder=5, label=f"fp32 ({100 * accuracy(fp32):.1f}%)")
        for policy, r in zip(policies, curve_results[offset:offset + len(policies)]):
            s, l = loss_curve(r)
            ax.plot(s, l, label=f"{name_of(policy)} ({100 * accuracy(r):.1f}%, {100 * r['lost_update_fraction']:.0f}% lost)")
            rows.append({"policy": name_of(policy), "test_accuracy": r["test_accuracy"], "final_loss": r["final_loss"],
                         "lost_update_fraction": r["lost_update_fraction"],
                         "lost_update_magnitude_fraction": r["lost_update_magnitude_fraction"]})
        offset += len(policies)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xlabel("training step")
        ax.set_title(f"{fmt.upper()} weights, lr {CURVE_LR} (legend: test accuracy, updates lost)")
        ax.legend()
    axes[0].set_ylabel("training loss (running mean of 25 steps)")
    fig.tight_layout()
    section.figure(fig, "training_curves.png", f"Training curves at lr {CURVE_LR}: pure 16-bit weights against FP32 "
                                               "master weights, stochastic rounding and Kahan summation.", key=True)
    section.table(rows, caption=f"Runs at lr {CURVE_LR}, {curve_steps} steps.")
    section.data("training_curves.csv", rows)
    by = {r["policy"]: r for r in rows}
    onset = {f: min(r["log2 ratio"] for r in curve_rows if r["format"] == f and r["measured"] > 0.01)
             for f in ("fp16", "bf16")}
    section.text(
        f"Measured on the rounding itself, more than 1% of updates are lost from |w| / |u| = 2^{onset['fp16']:g} in "
        f"FP16 and 2^{onset['bf16']:g} in BF16 (theory: losses begin above 2^{fpsim.FP16.precision} and "
        f"2^{fpsim.BF16.precision}); so BF16 weights drop updates that are 8 times larger, relative to the weight, "
        f"than FP16 weights drop. In training at lr {CURVE_LR}, pure BF16 loses "
        f"{by['bf16-pure']['lost_update_fraction']:.0%} of its updates ({by['bf16-pure']['lost_update_magnitude_fraction']:.0%} "
        f"of their total magnitude) and reaches {100 * by['bf16-pure']['test_accuracy']:.1f}% against "
        f"{100 * by['bf16-mixed']['test_accuracy']:.1f}% with FP32 master weights and "
        f"{100 * by['fp32']['test_accuracy']:.1f}% in FP32; pure FP16 loses {by['fp16-pure']['lost_update_fraction']:.0%} "
        f"({100 * by['fp16-pure']['test_accuracy']:.1f}%). Without a 32-bit copy, stochastic rounding reaches "
        f"{100 * by['bf16-sr']['test_accuracy']:.1f}% (it still leaves {by['bf16-sr']['lost_update_fraction']:.0%} of "
        f"the updates out, but right on average) and Kahan summation {100 * by['bf16-kahan']['test_accuracy']:.1f}% "
        f"({by['bf16-kahan']['lost_update_fraction']:.1%} lost).")
    return section


if __name__ == "__main__":
    raise SystemExit(analysis_main(globals()))
