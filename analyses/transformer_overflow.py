"""Does FP16 overflow in a transformer's forward pass? The largest |x| per module kind of char-gpt over FP32
training against FP16's 65504 (headroom in binades), for the tensors autocast runs in 16 bits and for every
op in 16 bits; then a condition under which FP16 does overflow on this model (a larger learning rate), with
FP16 and BF16 trained through it, beside the overflows reported on T5, Pegasus and BLOOM."""

import math

import matplotlib.pyplot as plt
import numpy as np

import fpsim
from fpsim.report import sources
from fpsim.report.experiments import (FORCED_LRS, FORCED_POLICIES, bits_per_character, forced_configs,
                                      forced_steps, forward_overflows, gpt_config, gpt_steps, histogram_steps,
                                      kind_colour, max_binade, modules_by_kind, run_trainings)
from fpsim.report.plots import legend_entries, shade_zones
from fpsim.report.runner import analysis_main, new_section

ORDER = 36
NEEDS = ("torch",)
KINDS = {"activations": "activations (forward)", "activation_grads": "activation gradients",
         "weight_grads": "weight gradients"}
FP16_TOP = math.log2(fpsim.FP16.max)  # 15.999: 65504 < 2^16
EVERY_OP = {"preset": "fp32", "placement": "low-precision", "name": "fp32 (every op observed)"}


def headroom_rows(result, placement) -> list[dict]:
    rows = []
    for step in histogram_steps(result):
        for module_kind, paths in modules_by_kind(result).items():
            for kind in KINDS:
                top = max_binade({"histograms": [h for h in result["histograms"] if h["module"] in paths]}, kind,
                                 step=step)
                if top is not None:
                    rows.append({"placement": placement, "step": step, "module kind": module_kind, "kind": kind,
                                 "max |x| below 2^": top + 1, "headroom in FP16 (binades)": 16 - (top + 1)})
    return rows


def run(ctx):
    section = new_section(ctx, globals(), "Transformer overflow: FP16's 65504 in the forward pass")
    steps = gpt_steps(ctx)
    stages = sorted({int(s) for s in np.linspace(0, steps - 1, ctx.pick(3, 6))})
    histogram_configs = [gpt_config(ctx, p, histograms=True, histogram_steps=stages) for p in (EVERY_OP, "fp32")]
    forced = forced_configs(ctx)
    options = histogram_configs[1]["model_options"]
    section.what_was_run(
        f"fpsim.train on char-gpt ({options['n_layer']} pre-LayerNorm blocks, width {options['n_embd']}, context "
        f"{options['block_size']}) on the pydoc text, Adam, batch {histogram_configs[1]['batch_size']}. Headroom: "
        f"FP32 training at lr {histogram_configs[1]['lr']:g}, {steps} steps, seed 0, histograms of log2 |value| at "
        f"steps {stages}, observed where autocast runs ops in 16 bits and at every op. Forced condition: "
        f"{', '.join(FORCED_POLICIES)} at Adam learning rates {', '.join(f'{lr:g}' for lr in FORCED_LRS)}, "
        f"{forced_steps(ctx)} steps, seed 0, fp16-amp with its dynamic loss scale (a step with inf/NaN gradients "
        "is skipped).")
    results = run_trainings(ctx, histogram_configs + forced)
    rows = headroom_rows(results[0], "every op") + headroom_rows(results[1], "autocast")
    section.data("headroom.csv", rows)

    fig, axes = plt.subplots(1, len(KINDS), figsize=(14, 4.4), sharey=True)
    for ax, (kind, label) in zip(axes, KINDS.items()):
        shade_zones(ax, fpsim.FP16, vertical=False, label=ax is axes[0])
        for module_kind in modules_by_kind(results[0]):
            for placement, style in (("every op", "o-"), ("autocast", "s--")):
                picked = [r for r in rows if r["kind"] == kind and r["module kind"] == module_kind
                          and r["placement"] == placement]
                if picked:
                    ax.plot([r["step"] for r in picked], [r["max |x| below 2^"] for r in picked], style,
                            color=kind_colour(module_kind), label=f"{module_kind}, {placement}")
        ax.set_ylim(-12, 18)
        ax.set_title(label)
        ax.set_xlabel("training step")
    axes[0].set_ylabel("log2 of the largest |x| (upper edge of its binade)")
    handles, labels = legend_entries(axes)
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, bbox_to_anchor=(0.5, -0.16))
    fig.suptitle(f"char-gpt, FP32 training at the default learning rate: the largest values against FP16's max "
                 f"65504 (red: overflow above 2^{FP16_TOP:.2f})", fontsize=11)
    fig.tight_layout()
    section.figure(fig, "headroom.png", "The largest |x| per module kind over FP32 training of char-gpt at the "
                                        "default learning rate, against FP16's overflow zone: solid, every op; "
                                        "dashed, the ops autocast runs in 16 bits.", key=True)
    at_end = [r for r in rows if r["step"] == stages[-1]]
    least = {placement: min((r for r in at_end if r["placement"] == placement),
                            key=lambda r: r["headroom in FP16 (binades)"]) for placement in ("autocast", "every op")}

    forced_rows = []
    for i, config in enumerate(forced):
        r = results[2 + i]
        overflows = forward_overflows(r)
        first = next((h["step"] for h in r["history"] if h["overflow"]["activations"]), None)
        forced_rows.append({"lr": config["lr"], "policy": config["policy"],
                            "forward values overflowing (activations)": overflows,
                            "first step with a forward overflow": first,
                            "skipped steps": r["skipped_steps"], "diverged at step": r["diverged_step"],
                            "final loss scale": r["final_loss_scale"],
                            "validation bits/char": bits_per_character(r)})
    section.data("forced.csv", forced_rows)
    section.table(forced_rows, caption=f"The forced condition: char-gpt trained {forced_steps(ctx)} steps at larger "
                                       "Adam learning rates (seed 0). A forward overflow is a value that was finite "
                                       "before rounding to the activation format and inf after.")
    fig, axes = plt.subplots(1, len(FORCED_LRS), figsize=(14, 4), sharey=True)
    for ax, lr in zip(axes, FORCED_LRS):
        for p in FORCED_POLICIES:
            i = next(j for j, c in enumerate(forced) if c["lr"] == lr and c["policy"] == p)
            history = results[2 + i]["history"]
            steps_run = [h["step"] for h in history]
            loss = [h["loss"] if h["loss"] is not None else np.nan for h in history]
            line, = ax.plot(steps_run, loss, label=p, alpha=0.8)
            bad = [h["step"] for h in history if h["overflow"]["activations"]]
            if bad:
                ax.plot(bad, [6.5] * len(bad), "|", color=line.get_color(), ms=10,
                        label=f"{p}: step with a forward overflow")
        ax.set_title(f"Adam lr {lr:g}")
        ax.set_xlabel("training step")
        ax.set_ylim(0, 7)
    axes[0].set_ylabel("training loss (nats per character; gaps: inf/NaN)")
    axes[-1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    section.figure(fig, "forced.png", "Training loss of char-gpt at larger learning rates in FP32, fp16-amp and "
                                      "bf16-mixed; ticks at the top mark steps where FP16's forward pass "
                                      "overflowed.")

    fp16_overflow = [r for r in forced_rows if r["policy"] == "fp16-amp" and r["forward values overflowing "
                                                                                "(activations)"]]
    cited = (f"In the field: {sources.T5_FFN_OUTPUT}; {sources.T5_HIDDEN_STATES}; {sources.PEGASUS_FC2}; "
             f"{sources.BLOOM_FP16}.")
    text = (f"At the default learning rate the largest value autocast puts in FP16 lies below "
            f"2^{least['autocast']['max |x| below 2^']} ({least['autocast']['module kind']}, "
            f"{KINDS[least['autocast']['kind']]}): {least['autocast']['headroom in FP16 (binades)']} binades of "
            f"headroom below 65504 at step {stages[-1]}; with every op in 16 bits the least headroom is "
            f"{least['every op']['headroom in FP16 (binades)']} binades ({least['every op']['module kind']}). "
            "So FP16 does not overflow on this model as it is trained by default. ")
    if fp16_overflow:
        worst = fp16_overflow[0]
        bf16 = next(r for r in forced_rows if r["policy"] == "bf16-mixed" and r["lr"] == worst["lr"])
        fp32 = next(r for r in forced_rows if r["policy"] == "fp32" and r["lr"] == worst["lr"])
        default = next(r for r in forced_rows if r["policy"] == "fp32" and r["lr"] == FORCED_LRS[0])
        text += (f"The change needed: the learning rate. At Adam lr {worst['lr']:g} "
                 f"({worst['lr'] / FORCED_LRS[0]:.0f}x the default; a forced setting, not the default behaviour), "
                 f"fp16-amp's forward pass overflowed {worst['forward values overflowing (activations)']} values "
                 f"(first at step {worst['first step with a forward overflow']}), {worst['skipped steps']} steps "
                 f"were skipped" + (f" and the run diverged at step {worst['diverged at step']}"
                                    if worst["diverged at step"] is not None else "")
                 + f"; bf16-mixed at the same rate overflowed {bf16['forward values overflowing (activations)']} "
                 f"values and ended at {_bpc(bf16)} bits per character (FP32: {_bpc(fp32)}; fp16-amp: "
                 f"{_bpc(worst)}; FP32 at the default rate: {_bpc(default)}). BF16 stays finite there, which "
                 "is all its range gives: whether it also trains well at that rate is the last column. The rate is "
                 "far above what trains this model well: it shows where FP16's range ends, not a recipe. ")
    else:
        text += (f"At none of the learning rates {', '.join(f'{lr:g}' for lr in FORCED_LRS)} did FP16's forward "
                 "pass overflow in these runs: no forward overflow was found on this model within the budget. ")
    section.text(text + cited)
    return section


def _bpc(row) -> str:
    value = row["validation bits/char"]
    return "no finite loss" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    raise SystemExit(analysis_main(globals()))
