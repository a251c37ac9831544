"""Is fpsim's rounding right? The validation table (bit for bit against hardware dtypes and the exact
reference), the exhaustive run over every float32, and the double rounding of float64 -> bfloat16 casts
that round through float32 (measured for the installed ml_dtypes and torch)."""

import math

import matplotlib.pyplot as plt
import ml_dtypes
import numpy as np

import fpsim
from fpsim.numerics.exact import round_exact
from fpsim.report.runner import analysis_main
from fpsim.report.section import new_section
from fpsim.numerics.validation import double_rounding_study, exhaustive_float32, run_validation

ORDER = 20


def worked_example() -> dict:
    """One float64 just above a BF16 midpoint: 1 + 2^-8 + 2^-40 lies between 1 and 1 + 2^-7, above their tie."""
    x = 1.0 + math.ldexp(1.0, -8) + math.ldexp(1.0, -40)
    via_float32 = np.float32(x)
    return {"input": x.hex(), "float32 of it": float(via_float32).hex(),
            "exact BF16 rounding": round_exact(x, fpsim.BF16).hex(),
            "fpsim.round": float(fpsim.round(x, fpsim.BF16)).hex(),
            "through float32": float(fpsim.round(via_float32, fpsim.BF16)).hex(),
            f"ml_dtypes {ml_dtypes.__version__} cast": float(np.float64(x).astype(ml_dtypes.bfloat16)).hex()}


def run(ctx):
    section = new_section(ctx, globals(), "Rounding validation: bit for bit, and the double-rounding trap")
    n_inputs = ctx.pick(300_000, 10_000_000)
    n_double = ctx.pick(100_000, 1_000_000)
    exhaustive_formats = ctx.pick([], ["bf16"])
    section.what_was_run(
        f"fpsim.numerics.validation.run_validation on {n_inputs:,} float32 inputs (seed 0: ties and their neighbours "
        "for each 8- and 16-bit format, limits, random bit patterns, log-uniform magnitudes), float64 inputs "
        "against numpy's float64 -> float16 cast, and the exact Fraction reference in every deterministic mode; "
        + (f"every one of the 2^32 float32 bit patterns rounded to {', '.join(f.upper() for f in exhaustive_formats)} "
           "against ml_dtypes; " if exhaustive_formats else "no exhaustive run in quick mode; ")
        + f"double_rounding_study on {n_double:,} float64 values at and one to three float64 ulps off BF16 ties.")
    rows = run_validation(n_inputs, seed=0, progress=ctx.progress)
    section.data("validation.csv", rows)
    total = sum(r["mismatches"] for r in rows)
    hardware = [r for r in rows if r["oracle"] == "hardware"]
    exact = [r for r in rows if r["oracle"] == "exact"]
    section.table(hardware, caption="Against the hardware dtypes (numpy float16, ml_dtypes bfloat16 and float8).")
    by_format = {}
    for r in exact:
        entry = by_format.setdefault(r["format"], {"format": r["format"], "modes": 0, "inputs": 0, "mismatches": 0})
        entry["modes"] += 1
        entry["inputs"] += r["inputs"]
        entry["mismatches"] += r["mismatches"]
    section.table(list(by_format.values()),
                  caption=f"Against the exact Fraction reference, summed over the {len(exact) // len(by_format)} "
                          "deterministic modes (every row is in validation.csv).")
    section.text(f"**{total} mismatches** in {len(rows)} checks "
                 f"({sum(r['inputs'] for r in rows):,} roundings).")
    if exhaustive_formats:
        exhaustive = [exhaustive_float32(fmt, progress=ctx.progress) for fmt in exhaustive_formats]
        section.data("exhaustive.csv", exhaustive)
        section.table(exhaustive, caption="Every float32 bit pattern (NaNs compared as NaN), against the hardware "
                                          "cast; seconds include the oracle's cast. FP16, E4M3 and E5M2 are left out "
                                          "of the report for time (`fpsim validate --exhaustive` runs FP16).")
    else:
        section.text("The exhaustive run over all 2^32 float32 inputs is skipped in quick mode "
                     "(`fpsim validate --exhaustive` runs it).")
    study = double_rounding_study(n_double, seed=0)
    example = worked_example()
    section.data("double_rounding.json", {"study": study, "worked_example": example})
    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = ["fpsim.round", "float64 -> float32 -> BF16"]
    wrong = [study["fpsim_wrong_in_sample"], study["two_step_wrong_in_sample"]]
    labels += [f"{c['library']} {c['version']} cast" for c in study["casts"]]
    wrong += [c["wrong_in_sample"] for c in study["casts"]]
    bars = ax.barh(labels, wrong, color=["#6baed6", "#de2d26"] + ["#fdae6b"] * len(study["casts"]))
    for bar, value in zip(bars, wrong):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:g}", va="center")
    ax.set_xlabel(f"wrong results among {study['exact_sample']} sampled near-tie inputs (exact reference)")
    ax.set_title("float64 -> BF16 near ties: rounding once against rounding through float32")
    ax.set_xlim(0, max(wrong) * 1.25 + 1)
    section.figure(fig, "double_rounding.png",
                   "Double rounding: float64 values near BF16 ties converted by fpsim (once), through float32 "
                   "(twice), and by the installed ml_dtypes and torch casts, checked against the exact reference.")
    section.table([example], caption="A worked example (hex): the first rounding to float32 lands exactly on the "
                                     "BF16 tie, and the second rounds it to even, down, although the input lies above "
                                     "the tie.")
    share = study["two_step_differs_from_fpsim"] / study["inputs"]
    measured = "; ".join(
        f"{c['library']} {c['version']} rounds {c['rounds']} (differs from fpsim on {c['differs_from_fpsim']:,}, "
        f"wrong on {c['wrong_in_sample']} of the sample)" for c in study["casts"])
    section.text(
        f"Of {study['inputs']:,} float64 inputs at or next to BF16 ties, rounding through float32 differs from "
        f"rounding once on {study['two_step_differs_from_fpsim']:,} ({share:.1%}); on a sample of "
        f"{study['exact_sample']} checked against the exact reference, the two-step conversion is wrong on "
        f"{study['two_step_wrong_in_sample']} and fpsim on {study['fpsim_wrong_in_sample']}. "
        f"The libraries' own float64 -> bfloat16 casts, measured here: {measured}. Whether a cast rounds once is "
        "a property of a library's release (ml_dtypes rounded through float32 before 0.7), so fpsim's tests check "
        "fpsim against the exact reference and only measure the libraries. "
        "The trap is any float64 within half a float32 ulp of a BF16 tie but not on it: the first rounding "
        "moves it onto the tie and the second sends it to the even neighbour, the wrong one half the time. "
        "That window is 2^-23 wide (relative) out of 2^-7 between ties, so about 1 in 65,536 float64 values with "
        "random mantissas falls in it: rare, but an emulator that computes in float64 and casts to BF16 this way "
        "is not bit-exact.")
    return section


if __name__ == "__main__":
    raise SystemExit(analysis_main(globals()))
