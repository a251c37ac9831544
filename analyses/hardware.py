"""What the GPUs' tensor cores compute: how far an FP8 GEMM's accumulator on H100 and B200 lies from the exact
product as K grows (DeepSeek-V3's experiment) and what promotion to FP32 every 128 products recovers; how far
the "FP32 accumulation" of FP16 / BF16 tensor cores on V100, A100 and H100 lies from FP32."""

import numpy as np

import fpsim
from fpsim.report import sources
from fpsim.report.accumulation import DISTRIBUTIONS, OUTLIER_FACTOR, correctly_rounded_fp32, errors, exact_product, \
    operands
from fpsim.report.runner import analysis_main
from fpsim.report.section import new_section

ORDER = 98
NEEDS = ("torch",)
KS = tuple(2 ** e for e in range(6, 15))
"""The reduction lengths K: 64 ... 16384, powers of two."""
FP8_ACCUMULATORS = {"H100 (wgmma)": ("H100", "sequential"), "H100, FP32 every 128": ("H100", "blocked:128"),
                    "B200 (tcgen05)": ("B200", "sequential"), "IEEE FP32": ("fp32", "sequential")}
"""(a): label -> (``accumulate``, ``order``) of ``fpsim.matmul`` for E4M3 operands, FP32 output."""
SIXTEEN_BIT = {"fp16": ("V100", "A100", "H100"), "bf16": ("A100", "H100")}
"""(b): the GPUs of each 16-bit input format (V100 has no BF16 path), beside IEEE FP32 accumulation."""
CORRECTLY_ROUNDED = "correctly rounded FP32"
AT_K = 4096
"""DeepSeek-V3's K."""
COLOURS = {"H100 (wgmma)": "tab:red", "H100, FP32 every 128": "tab:orange", "B200 (tcgen05)": "tab:purple",
           "IEEE FP32": "tab:blue", "V100": "tab:brown", "A100": "tab:green", "H100": "tab:red",
           CORRECTLY_ROUNDED: "black"}


def size(ctx) -> int:
    """M = N of every GEMM (each K gets its own operands)."""
    return ctx.pick(16, 32)


def measure(ctx, fmt, accumulators: dict, distribution: str) -> list[dict]:
    """One row per K and accumulator: ``errors`` of ``fpsim.matmul(A, B, inputs=fmt, accumulate=, order=)``
    against the exact product, for operands of ``distribution``; with ``CORRECTLY_ROUNDED`` as well for
    16-bit inputs, and for every accumulator the share of outputs equal to it and the largest distance from
    it in FP32 spacings."""
    rows, n = [], size(ctx)
    for K in KS:
        A, B = operands(distribution, fmt, n, K, n)
        exact = exact_product(A, B, fmt)
        rounded = correctly_rounded_fp32(A, B, exact)
        computed = {label: fpsim.matmul(A, B, inputs=fmt, accumulate=acc, order=order)
                    for label, (acc, order) in accumulators.items()}
        if fmt != "e4m3":
            computed[CORRECTLY_ROUNDED] = rounded
        spacing = np.spacing(rounded.astype(np.float32)).astype(np.float64)
        for label, D in computed.items():
            rows.append({"inputs": fmt, "distribution": distribution, "K": K, "accumulator": label,
                         **errors(D, exact), "equal to correctly rounded FP32": float(np.mean(D == rounded)),
                         "max FP32 spacings from it": float(np.max(np.abs(D - rounded) / spacing))})
    return rows


def error_figure(panels):
    """Median (solid) and maximum (dashed) relative error against K, one line pair per accumulator (errors of 0
    left out); ``panels``: (title, rows, cited point (K, value, label) or None)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), sharey=True, squeeze=False)
    for ax, (title, rows, cited) in zip(axes[0], panels):
        for label in dict.fromkeys(r["accumulator"] for r in rows):
            own = [r for r in rows if r["accumulator"] == label]
            k = [r["K"] for r in own]
            for field, style in (("median relative error", "o-"), ("max relative error", "--")):
                values = [r[field] or np.nan for r in own]  # an error of 0 (exact) has no place on a log axis
                ax.plot(k, values, style, color=COLOURS[label], ms=3, lw=1.5 if style == "o-" else 1,
                        label=label if style == "o-" else None)
        if cited:
            ax.plot(*cited[:2], "k*", ms=12, label=cited[2])
        ax.set(xscale="log", yscale="log", xlabel="K (products per output)", title=title)
        ax.set_xticks(KS, [f"2^{k.bit_length() - 1}" for k in KS])
        ax.minorticks_off()
    axes[0][0].set_ylabel("relative error |d - x| / |x| (solid: median, dashed: max)")
    axes[0][-1].legend(loc="lower right")
    return fig


def at(rows, K, distribution, accumulator, field="median relative error") -> float:
    return next(r[field] for r in rows if (r["K"], r["distribution"], r["accumulator"]) == (K, distribution,
                                                                                           accumulator))


def fp8_gemm(section, ctx):
    section.text("#### (a) DeepSeek-V3's experiment: FP8 GEMM error against K")
    rows = [r for dist in DISTRIBUTIONS for r in measure(ctx, "e4m3", FP8_ACCUMULATORS, dist)]
    section.data("fp8_gemm.csv", rows)
    cited = sources.DEEPSEEK_MAX_ERROR
    section.figure(error_figure([(f"E4M3 operands, {dist}", [r for r in rows if r["distribution"] == dist],
                                  (AT_K, cited.value / 100, "DeepSeek-V3: max 'nearly 2%'")) for dist in DISTRIBUTIONS]),
                   "fp8_gemm.png", "(a) The relative error of each output of an E4M3 GEMM against the exact product, "
                                   f"median (solid) and maximum (dashed) over {size(ctx)} x {size(ctx)} outputs, "
                                   "against K, for H100's wgmma accumulator, the same promoted to FP32 every 128 "
                                   "products, B200's tcgen05 and an IEEE FP32 accumulator (an error of 0, exact, is not "
                                   "drawn).", key=True)
    section.table([r for r in rows if r["K"] in (AT_K, KS[-1])],
                  ["distribution", "K", "accumulator", "median relative error", "max relative error",
                   "magnitude bias"], caption=f"At K = {AT_K} and {KS[-1]} (every K: fp8_gemm.csv).")
    h100, promoted, fp32 = "H100 (wgmma)", "H100, FP32 every 128", "IEEE FP32"
    medians = {d: at(rows, AT_K, d, h100) for d in DISTRIBUTIONS}
    peaks = {d: at(rows, AT_K, d, h100, "max relative error") for d in DISTRIBUTIONS}
    inside = min(medians.values()) <= cited.value / 100 <= max(peaks.values())
    gains = {d: at(rows, AT_K, d, h100) / at(rows, AT_K, d, promoted) for d in DISTRIBUTIONS}
    growth = at(rows, KS[-1], "normal", h100) / at(rows, KS[0], "normal", h100)
    above = at(rows, AT_K, "normal", promoted) / at(rows, AT_K, "normal", fp32)
    promoted_growth = at(rows, KS[-1], "normal", promoted) / at(rows, 128, "normal", promoted)
    section.text(
        f"**DeepSeek's \"nearly 2%\"** ({cited}). At K = {AT_K} H100's accumulator gives a median / maximum "
        "relative error of " + "; ".join(f"{100 * medians[d]:.3g}% / {100 * peaks[d]:.3g}% ({d})" for d in DISTRIBUTIONS)
        + f" over {size(ctx) ** 2} outputs. DeepSeek's figure lies "
        + ("inside" if inside else "outside") + " that span: "
        + ("reproduced in size, not as one number, since the figure depends on the inputs and the statistic. " if inside
           else "not reproduced. ")
        + f"With mixed signs the median is {100 * medians['normal']:.2g}% and the maximum is set by the outputs whose "
        "exact value lies near zero (cancellation), so it grows with the number of outputs; with positive operands "
        "every output loses about the same share. The error grows with K "
        f"({growth:.0f}x from K = {KS[0]} to {KS[-1]}, normal operands): each fused step of 32 products cuts the "
        "growing running sum to 13 fraction bits and rounds toward zero (the magnitude bias). "
        f"**The promotion fix** (FP32 every {sources.DEEPSEEK_PROMOTION.value:g} products) divides the median "
        f"error at K = {AT_K} by " + ", ".join(f"{g:.0f} ({d})" for d, g in gains.items())
        + f"; from K = 128 to {KS[-1]} its median changes {promoted_growth:.2g}x (normal operands), and at K = "
        f"{AT_K} it lies {above:.0f}x above IEEE FP32's: the error of one 128-product run in e8m13 remains. "
        "B200's tcgen05 (25 fraction bits) lies within a few times IEEE FP32.")


def sixteen_bit_gemm(section, ctx):
    section.text("#### (b) FP16 and BF16 GEMMs: how far a tensor core's \"FP32 accumulation\" lies from FP32")
    rows = [r for fmt, gpus in SIXTEEN_BIT.items() for dist in DISTRIBUTIONS
            for r in measure(ctx, fmt, {gpu: (gpu, "sequential") for gpu in gpus} | {"IEEE FP32": ("fp32",
                                                                                                   "sequential")},
                             dist)]
    section.data("sixteen_bit_gemm.csv", rows)
    section.figure(error_figure([(f"{fmt.upper()} operands, {dist}", [r for r in rows if r["inputs"] == fmt and
                                                                     r["distribution"] == dist], None)
                                 for fmt in SIXTEEN_BIT for dist in ("normal", "uniform positive")]),
                   "sixteen_bit_gemm.png", "(b) The relative error of each output of an FP16 / BF16 GEMM (FP32 "
                                           "output) against the exact product, median (solid) and maximum (dashed), "
                                           "against K: the tensor cores of V100, A100 and H100, IEEE FP32 "
                                           "accumulation, and the exact product rounded once to FP32.")
    section.table([r for r in rows if r["K"] == AT_K],
                  ["inputs", "distribution", "accumulator", "median relative error", "max relative error",
                   "magnitude bias", "equal to correctly rounded FP32", "max FP32 spacings from it"],
                  caption=f"At K = {AT_K} (every K: sixteen_bit_gemm.csv). FP32 spacing: np.spacing of the "
                          "correctly rounded value.")
    ratios = {(fmt, gpu): at(rows, AT_K, "normal", gpu) / at(rows, AT_K, "normal", "IEEE FP32")
              for fmt, gpus in SIXTEEN_BIT.items() for gpu in gpus}
    section.text(
        f"At K = {AT_K} (normal operands) the median error of each tensor core against IEEE FP32 accumulation's: "
        + ", ".join(f"{gpu} {fmt.upper()} {r:.1f}x" for (fmt, gpu), r in ratios.items())
        + f"; the correctly rounded FP32 product's median error is {at(rows, AT_K, 'normal', CORRECTLY_ROUNDED):.2g}. "
        "A tensor core's FP32 accumulator truncates (23 + 0, 1 or 2 extra bits on V100, A100, H100) and rounds "
        "each fused step toward zero, so its error has a bias (the magnitude bias column) that IEEE FP32's "
        "round-to-nearest has not; how far it lies from FP32 is measured above in FP32 spacings.")


def run(ctx):
    section = new_section(ctx, globals(), "GPU tensor cores: accumulation in FP8 and 16-bit GEMMs")
    section.what_was_run(
        f"(a), (b): fpsim.matmul(A, B, inputs=, accumulate=, order=) with FP32 output for A of {size(ctx)} x K and "
        f"B of K x {size(ctx)}, K = {KS[0]} ... {KS[-1]} (powers of two), fresh operands per K (numpy seed (0, K)), "
        f"drawn from three distributions: iid standard normal; the same with one input channel of A (column "
        f"K // 2) {OUTLIER_FACTOR:g} times larger (the outlier features of LLM activations); iid uniform on [0, 1) "
        "(no cancellation). DeepSeek-V3 does not say which inputs it used. E4M3 operands are scaled per tensor to amax 448 (current scaling) and rounded "
        "to nearest; FP16 / BF16 ones rounded as drawn. Error metric: the relative error |d - x| / |x| of each "
        "output d against the exact product x of the same rounded operands (math.fsum of the float64 products: "
        "exact, rounded once to float64), median and maximum over the outputs. Accumulators: the tensor-core "
        "models of fpsim.hardware (H100: wgmma's FP8 path, 32 products per step, 13 fraction bits; B200: tcgen05, "
        "32 per step, 25 bits; V100 / A100 / H100 FP16 and BF16: 4 / 8 / 16 per step, 23 / 24 / 25 bits), "
        "H100 with order=\"blocked:128\" (the chain restarted every 128 products, the run results added in FP32 "
        "rounded to nearest: DeepSeek's promotion), and IEEE FP32 (every step correctly rounded).")
    fp8_gemm(section, ctx)
    sixteen_bit_gemm(section, ctx)
    return section


if __name__ == "__main__":
    raise SystemExit(analysis_main(globals()))
