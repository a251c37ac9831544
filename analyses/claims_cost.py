"""Do the cost claims of mixed precision hold? A verdict on training time (a roofline model against cited
measurements), training memory (measured and modelled) and inference memory and time."""

from fpsim.report import memory, roofline, sources
from fpsim.report.experiments import DIGITS_MLP as MLP
from fpsim.report.plots import memory_figure, roofline_figure
from fpsim.report.runner import analysis_main
from fpsim.report.section import new_section

ORDER = 91
BARELY_CHANGES = 0.85
"""A 16-bit / FP32 peak-memory ratio at or above this counts as "barely changes"."""
WIDE_MLP = (1024, 2048, 2048, 2048, 10)
"""A wider MLP for inference memory, whose weights (about 10M parameters) dominate at small batch."""
ENCODER = dict(layers=6, d=768, heads=12, ffn=3072, vocab=30522, seq=512)
"""DistilBERT's shape (Sanh et al. 2019), at 512 tokens per sequence."""


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
        f"{encoder.params / 1e6:.1f}M parameters by the model's count, batch 16 x 512 tokens, our choice) the model "
        f"gives a 16-mixed step "
        f"{model16['fp32_over']['16-mixed']:.2f}x faster than strict FP32 and "
        f"{model16['tf32_over']['16-mixed']:.2f}x faster than TF32; TF32 alone {model16['fp32_over']['tf32']:.2f}x. "
        f"These are ratios of roofline times, the model's answer if both precisions reach the same share of their "
        f"peaks; real steps add launch overheads, data loading and imperfect utilisation. "
        f"For the digits MLP at batch 64 the modelled step is {mlp64['times']['fp32'] * 1e6:.2f} us "
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
        f"{by[('bf16', batches[-1])]['peak / fp32 peak']:.3f} at batch {batches[-1]} (activations halve too). Cited "
        f"Falcon-7B ({sources.LITGPT}): {sources.FALCON_FP32_GB.value} GB -> "
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


def run(ctx):
    section = new_section(ctx, globals(), "Claims on cost: training time, training memory, inference memory and time")
    claim_time(section, ctx)
    claim_training_memory(section, ctx)
    claim_inference(section, ctx)
    return section


if __name__ == "__main__":
    raise SystemExit(analysis_main(globals()))
