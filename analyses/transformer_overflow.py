"""Does FP16 overflow in a transformer's forward pass? The largest |x| per module kind of char-gpt over FP32
training against FP16's 65504 (headroom in binades), for the tensors autocast runs in 16 bits and for every
op in 16 bits; then the condition under which FP16 does overflow on this model (a residual stream carried
2^16 times larger, where T5's grew; removing LayerNorm alone does not suffice), with FP32, FP16 and BF16 trained
through it, beside the overflows reported on T5, Pegasus and BLOOM."""

import math

import matplotlib.pyplot as plt
import numpy as np

import fpsim
from fpsim.report import sources
from fpsim.report.experiments import (FORCED_POLICIES, FORCED_STREAM_SCALE, bits_per_character, first_forward_overflow,
                                      forced_configs, forced_histogram_steps, forward_overflows, gpt_config,
                                      gpt_steps, histogram_steps, kind_colour, max_binade, modules_by_kind,
                                      pow2_label, run_trainings)
from fpsim.report.plots import legend_entries, shade_zones
from fpsim.report.runner import analysis_main
from fpsim.report.section import new_section

ORDER = 36
NEEDS = ("torch",)
KINDS = {"activations": "activations (forward)", "activation_grads": "activation gradients",
         "weight_grads": "weight gradients"}
FP16_TOP = math.log2(fpsim.FP16.max)  # 15.999: 65504 < 2^16
EVERY_OP = {"preset": "fp32", "placement": "low-precision", "name": "fp32 (every op observed)"}
NO_NORM_LR = 0.03
"""Adam learning rate of the run without LayerNorm: 10x the default, where that model still trains."""
SCALE_LABEL = pow2_label(FORCED_STREAM_SCALE)
SCALED = f"residual stream x {SCALE_LABEL}"
NO_NORM = f"no LayerNorm, Adam lr {NO_NORM_LR:g}"
DEFAULT = "default model"
POLICY_STYLE = {"fp32": {"color": "tab:blue", "lw": 2.5, "alpha": 0.5},
                "fp16-amp": {"color": "tab:orange", "lw": 1.0},
                "bf16-mixed": {"color": "tab:green", "lw": 1.0, "ls": "--"}}
CONDITION_COLOUR = {SCALED: "tab:blue", NO_NORM: "tab:purple", DEFAULT: "0.4"}


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
    options = histogram_configs[1]["model_options"]
    forced = forced_configs(ctx)
    no_norm = gpt_config(ctx, "fp32", model_options=options | {"norm": "none"}, lr=NO_NORM_LR, histograms=True,
                         histogram_steps=forced_histogram_steps(ctx))
    section.what_was_run(
        f"fpsim.train on char-gpt ({options['n_layer']} pre-LayerNorm blocks, width {options['n_embd']}, context "
        f"{options['block_size']}) on the pydoc text, Adam, batch {histogram_configs[1]['batch_size']}. Headroom: "
        f"FP32 training at lr {histogram_configs[1]['lr']:g}, {steps} steps, seed 0, histograms of log2 |value| at "
        f"steps {stages}, observed where autocast runs ops in 16 bits and at every op. Forced conditions, seed 0, "
        f"{steps} steps: {SCALED} (GPTConfig.stream_scale, the default training otherwise) in "
        f"{', '.join(FORCED_POLICIES)} (fp16-amp with its dynamic loss scale: a step with inf/NaN gradients is "
        f"skipped); {NO_NORM} (GPTConfig.norm \"none\") in FP32; FP32's values observed where autocast runs ops "
        f"in 16 bits, at steps {forced_histogram_steps(ctx)}.")
    results = run_trainings(ctx, histogram_configs + forced + [no_norm])
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

    text = (f"At the default scale the largest value autocast puts in FP16 lies below "
            f"2^{least['autocast']['max |x| below 2^']} ({least['autocast']['module kind']}, "
            f"{KINDS[least['autocast']['kind']]}): {least['autocast']['headroom in FP16 (binades)']} binades of "
            f"headroom below 65504 at step {stages[-1]}; with every op in 16 bits the least headroom is "
            f"{least['every op']['headroom in FP16 (binades)']} binades ({least['every op']['module kind']}). "
            "So FP16 does not overflow on this model as it is trained by default. ")
    conditions = [(SCALED, c, r) for c, r in zip(forced, results[2:])] + [(NO_NORM, no_norm, results[-1]),
                                                                          (DEFAULT, histogram_configs[1], results[1])]
    forced_rows = [forced_row(*condition) for condition in conditions]
    section.data("forced.csv", forced_rows)
    section.table(forced_rows, caption=f"char-gpt trained {steps} steps (Adam, seed 0) under each condition. The "
                                       "largest |x| is FP32's, among the values autocast rounds to 16 bits, over "
                                       "the steps with histograms; a forward overflow is a value "
                                       "that was finite before rounding to the activation format and inf after.")
    forced_figure(section, conditions)
    section.text(text + forced_text(forced_rows))
    return section


def forced_row(condition, config, result) -> dict:
    top = max_binade(result, "activations") if result["histograms"] else None
    first = first_forward_overflow(result)
    return {"condition": condition, "policy": config["policy"],
            "largest |x| below 2^": None if top is None else top + 1,
            "forward values overflowing": forward_overflows(result),
            "first step with a forward overflow": first,
            "skipped steps": result["skipped_steps"],
            "skipped steps after the first overflow": None if first is None else sum(
                h["skipped"] for h in result["history"] if h["step"] >= first),
            "diverged at step": result["diverged_step"],
            "final loss scale": result["final_loss_scale"], "validation bits/char": bits_per_character(result)}


def forced_figure(section, conditions):
    """Training loss per policy under the scaled stream, and FP32's largest |x| over training per condition."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 4.6))
    for name, config, result in conditions:
        history = result["history"]
        steps_run = [h["step"] for h in history]
        loss = [h["loss"] if h["loss"] is not None else np.nan for h in history]
        if name == SCALED:
            colour = POLICY_STYLE[config["policy"]]["color"]
            left.plot(steps_run, loss, label=config["policy"], **POLICY_STYLE[config["policy"]])
            bad = [h["step"] for h in history if h["overflow"]["activations"]]
            if bad:
                left.plot(bad, [6.7] * len(bad), "|", color=colour, ms=12,
                          label=f"{config['policy']}: step with a forward overflow")
                right.axvline(bad[0], color=colour, ls=":",
                              label=f"{config['policy']}: first forward overflow (step {bad[0]})")
            if result["diverged_step"] is not None:
                left.plot(steps_run[-1], 6.2, "x", color=colour, ms=9,
                          label=f"{config['policy']}: diverged (step {result['diverged_step']})")
        elif name == DEFAULT:
            left.plot(steps_run, loss, color="0.3", lw=0.8, ls=":", label="fp32, default stream (scale 1)")
        if result["histograms"]:
            stages = histogram_steps(result)
            right.plot(stages, [max_binade(result, "activations", step=s) + 1 for s in stages], "o-",
                       color=CONDITION_COLOUR[name], label=f"fp32, {name}")
    left.set_ylim(0, 7)
    left.set_xlabel("training step")
    left.set_ylabel("training loss (nats per character; gaps: inf/NaN)")
    left.set_title(f"{SCALED}: training loss")
    left.legend(fontsize=8, loc="lower left")
    shade_zones(right, fpsim.FP16, vertical=False, label=False)
    right.axhline(FP16_TOP, color="r", lw=0.8, label="FP16's largest finite value 65504 (red: overflow)")
    right.set_ylim(-8, 22)
    right.set_xlabel("training step")
    right.set_ylabel("log2 of the largest |x| FP16 would hold (binade's upper edge)")
    right.set_title("FP32's largest value autocast rounds to 16 bits, against 65504")
    right.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    section.figure(fig, "forced.png", f"char-gpt with its residual stream carried {SCALE_LABEL} times larger "
                                      "(a forced condition): left, the training loss of FP32, fp16-amp and "
                                      "bf16-mixed, ticks where FP16's forward pass overflowed, a cross where it "
                                      "diverged, the default model's FP32 loss dotted; right, the largest value FP16 would have to hold in FP32 "
                                      "training, per condition, against FP16's overflow zone.")


def forced_text(rows) -> str:
    by = {(r["condition"], r["policy"]): r for r in rows}
    fp32, amp, bf16 = (by[(SCALED, p)] for p in FORCED_POLICIES)
    default, no_norm = by[(DEFAULT, "fp32")], by[(NO_NORM, "fp32")]
    t5 = sources.T5_HIDDEN_STATES.value
    text = (f"Removing the LayerNorms ({NO_NORM}) did not bring FP16 near its limit: FP32's largest value stayed "
            f"below 2^{no_norm['largest |x| below 2^']} ({_bpc(no_norm)} bits per character). The change needed "
            f"was the scale of the residual stream: carried {SCALE_LABEL} times larger (GPTConfig.stream_scale; a "
            "forced setting, not the default behaviour; the pre-LayerNorm model computes the same function at any "
            "scale), FP32's largest value that autocast rounds to 16 bits was below "
            f"2^{fp32['largest |x| below 2^']} over training (T5's hidden states: "
            f"{t5:,.0f}, 2^{math.log2(t5):.1f}), against "
            "FP16's 65504 (just below 2^16). ")
    if amp["forward values overflowing"]:
        text += (f"fp16-amp's forward pass overflowed {amp['forward values overflowing']} values, first at step "
                 f"{amp['first step with a forward overflow']} (the branch outputs grow as the model learns); from "
                 f"then on its dynamic loss scale skipped {amp['skipped steps after the first overflow']} steps"
                 + (f" ({amp['skipped steps']} in all)" if amp["skipped steps"] != amp["skipped steps after the first "
                                                                                      "overflow"] else "")
                 + f", backing off to {amp['final loss scale']:g}, which cannot help an "
                 "overflow in the forward pass"
                 + (f", and the run diverged at step {amp['diverged at step']}" if amp["diverged at step"] is not None
                    else "") + f" (validation: {_bpc(amp)}"
                 + (" bits per character" if amp["validation bits/char"] is not None else "")
                 + "). bf16-mixed under the same condition overflowed "
                 f"{bf16['forward values overflowing']} values and ended at {_bpc(bf16)} bits per character, FP32 at "
                 f"{_bpc(fp32)} (FP32 with the default stream: {_bpc(default)}): BF16 trains through "
                 "what stops FP16. ")
    else:
        text += ("Even so, fp16-amp's forward pass did not overflow in this run: no forward overflow was found on "
                 "this model within the budget. ")
    return text + (f"In the field: {sources.T5_FFN_OUTPUT}; {sources.T5_HIDDEN_STATES}; {sources.PEGASUS_FC2}; "
                   f"{sources.BLOOM_FP16}.")


def _bpc(row) -> str:
    value = row["validation bits/char"]
    return "no finite loss" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    raise SystemExit(analysis_main(globals()))
