"""Why is BF16 more robust? The same trainings across formats and gradient magnitudes: BF16 needs no loss
scaling (nothing underflows above 2^-133), but without master weights it loses more updates than FP16
(8 against 11 significant bits). The exact trade."""

import matplotlib.pyplot as plt
import numpy as np

import fpsim
from fpsim.report.experiments import pow2_label, range_and_precision
from fpsim.report.plots import Zones
from fpsim.report.runner import analysis_main
from fpsim.report.section import new_section

ORDER = 60
STYLE = {"fp32": ("k", "-"), "fp16-pure": ("#1f77b4", ":"), "fp16-mixed": ("#1f77b4", "--"),
         "fp16-amp": ("#1f77b4", "-"), "bf16-pure": ("#d62728", ":"), "bf16-mixed": ("#d62728", "--")}


def run(ctx):
    section = new_section(ctx, globals(), "BF16's range against its precision")
    data = range_and_precision(ctx)
    section.what_was_run(
        f"fpsim.train on digits, MLP 64-128-128-128-10, SGD, batch 64, {data['steps']} steps, seed 0: the policies "
        f"{', '.join(STYLE)} at lr 0.05 with every gradient multiplied by "
        f"{', '.join(pow2_label(s) for s in data['grad_scales'])} (grad_scale; the optimizer compensates, so "
        f"exact arithmetic trains the same); and fp32, fp16-pure and bf16-pure at learning rates {data['lrs']} "
        "(gradients as they are). Weight gradients count as flushed where the backward pass redone in FP64 through "
        "the policy's own forward pass is non-zero and the policy's is zero.")
    section.data("range.csv", data["range"])
    section.data("precision.csv", data["precision"])
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.8))
    for policy, (colour, style) in STYLE.items():
        rows = [r for r in data["range"] if r["policy"] == policy]
        x = [np.log2(r["grad_scale"]) for r in rows]
        axes[0].plot(x, [100 * r["test_accuracy"] for r in rows], "o", color=colour, ls=style, label=policy)
        if policy != "fp32":
            axes[1].plot(x, [100 * r["weight_grad_underflow"] for r in rows], "o", color=colour, ls=style,
                         label=policy)
    for policy in ("fp16-pure", "bf16-pure"):
        colour, style = STYLE[policy]
        rows = [r for r in data["precision"] if r["policy"] == policy]
        axes[2].plot([r["lr"] for r in rows], [100 * r["lost_update_fraction"] for r in rows], "o", color=colour,
                     ls="-", label=f"{policy}: updates lost")
        axes[2].plot([r["lr"] for r in rows], [100 * r["test_accuracy"] for r in rows], "s", color=colour, ls="--",
                     alpha=0.6, label=f"{policy}: test accuracy")
    axes[0].set_title("Range: accuracy against gradient magnitude (lr 0.05)")
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].set_title("Range: weight-gradient values flushed to zero")
    axes[1].set_ylabel("% of non-zero values")
    for ax in axes[:2]:
        ax.set_xlabel("log2 of the gradient multiplier (grad_scale)")
    axes[2].set_title("Precision: no master weights, gradients as they are")
    axes[2].set_xscale("log")
    axes[2].set_xlabel("learning rate")
    axes[2].set_ylabel("%")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    smallest = min(data["grad_scales"])
    at = {r["policy"]: r for r in data["range"] if r["grad_scale"] == smallest}
    bf16_flushed = max(r["weight_grad_underflow"] for r in data["range"] if r["policy"] == "bf16-mixed")
    section.figure(fig, "range_vs_precision.png",
                   f"The trade: BF16 mixed keeps its accuracy however small the gradients get and flushes at most "
                   f"{bf16_flushed:.2g} of its weight-gradient values (left, middle), where FP16 needs loss scaling; "
                   "but with 16-bit weights and no master copy BF16 loses more updates than FP16 (right).", key=True)
    lr_small = min(data["lrs"])
    pre = {r["policy"]: r for r in data["precision"] if r["lr"] == lr_small and r["policy"] != "fp32"}
    fp32_small_lr = next(r for r in data["precision"] if r["lr"] == lr_small and r["policy"] == "fp32")
    section.table([{"policy": p, "grads x": pow2_label(smallest), "test accuracy": at[p]["test_accuracy"],
                    "weight grads flushed": at[p]["weight_grad_underflow"],
                    f"updates lost at lr {lr_small}": pre[p]["lost_update_fraction"] if p in pre else None,
                    f"accuracy at lr {lr_small}": pre[p]["test_accuracy"] if p in pre else None}
                   for p in STYLE], caption="At the smallest gradient multiplier and the smallest learning rate.")
    section.text(
        f"At gradients x {pow2_label(smallest)}, FP16 without scaling flushes "
        f"{at['fp16-mixed']['weight_grad_underflow']:.0%} of weight-gradient values and reaches "
        f"{100 * at['fp16-mixed']['test_accuracy']:.1f}%; with dynamic loss scaling "
        f"{100 * at['fp16-amp']['test_accuracy']:.1f}%; BF16 mixed, unscaled, flushes "
        f"{at['bf16-mixed']['weight_grad_underflow']:.2%} and reaches {100 * at['bf16-mixed']['test_accuracy']:.1f}% "
        f"(FP32: {100 * at['fp32']['test_accuracy']:.1f}%): its exponent range (normal down to 2^{fpsim.BF16.emin}, "
        f"flushing only at or below 2^{Zones.of(fpsim.BF16).flush_below:.0f}) is FP32's. The price is precision: "
        f"at lr {lr_small} pure BF16 loses {pre['bf16-pure']['lost_update_fraction']:.0%} of its updates against "
        f"{pre['fp16-pure']['lost_update_fraction']:.0%} for pure FP16 ({fpsim.BF16.precision} against "
        f"{fpsim.FP16.precision} significant bits) and reaches {100 * pre['bf16-pure']['test_accuracy']:.1f}% "
        f"against {100 * pre['fp16-pure']['test_accuracy']:.1f}% (FP32 at that learning rate: "
        f"{100 * fp32_small_lr['test_accuracy']:.1f}%): BF16 relies on FP32 master weights (or stochastic rounding, "
        "or Kahan summation) where FP16 relies on loss scaling.")
    return section


if __name__ == "__main__":
    raise SystemExit(analysis_main(globals()))
