"""Which values can each format hold? The table of formats and their number line: normal range,
subnormal range, the zone that flushes to zero, and the precision (eps)."""

import math

import numpy as np

import fpsim
from fpsim.report.plots import Zones, number_line_figure
from fpsim.report.runner import analysis_main
from fpsim.report.section import new_section

ORDER = 10
FORMATS = ("fp32", "tf32", "fp16", "bf16", "e4m3", "e5m2")


def measured_edges(fmt) -> dict:
    """The flush and overflow edges found by rounding powers of two and their neighbours with fpsim.round."""
    k = np.arange(-200, 200)
    powers = np.ldexp(1.0, k)
    flushed = fpsim.round(powers, fmt) == 0
    above_flush = fpsim.round(np.nextafter(powers, np.inf), fmt) == 0
    overflow_start = fmt.max + math.ldexp(1.0, fmt.emax - fmt.mantissa_bits - 1)
    return {"largest power of 2 rounding to 0": f"2^{int(k[flushed].max())}",
            "just above it rounds to 0": bool(above_flush[k == k[flushed].max()][0]),
            "max + half ulp rounds to": f"{float(fpsim.round(overflow_start, fmt)):.6g}",
            "max + half ulp - 1 float64 ulp rounds to": f"{float(fpsim.round(np.nextafter(overflow_start, 0), fmt)):.6g}"}


def run(ctx):
    section = new_section(ctx, globals(), "Formats: range and precision")
    section.what_was_run(
        f"The properties of the built-in formats {', '.join(f.upper() for f in FORMATS)} (fpsim.Format), and "
        "their edges measured by rounding powers of two and their neighbours with fpsim.round (nearest-even).")
    rows, edges = [], []
    for name in FORMATS:
        fmt = fpsim.get_format(name)
        z = Zones.of(fmt)
        rows.append({"format": name.upper(), "bits": fmt.bits, "exponent bits": fmt.exponent_bits,
                     "mantissa bits": fmt.mantissa_bits, "bias": fmt.bias, "emin": fmt.emin, "emax": fmt.emax,
                     "max": fmt.max, "smallest normal": fmt.smallest_normal,
                     "smallest subnormal": fmt.smallest_subnormal, "eps": fmt.eps,
                     "decimal digits": round(fmt.decimal_digits, 2),
                     "binades": round(fmt.dynamic_range_binades, 1),
                     "flushes at or below": f"2^{z.flush_below:.0f}", "infinity": fmt.has_infinity})
        edges.append({"format": name.upper(), **measured_edges(fmt)})
    section.table(rows, caption="The formats (eps: distance from 1 to the next value; binades: log2(max / "
                                "smallest subnormal)).")
    section.table(edges, caption="Edges measured with fpsim.round: the largest power of two that rounds to zero "
                                 "(half the smallest subnormal: the tie goes to the even code, 0), and what the "
                                 "overflow midpoint and the value just below it round to.")
    section.data("formats.csv", rows)
    section.data("measured_edges.csv", edges)
    section.figure(number_line_figure(FORMATS), "number_line.png",
                   "Number line of FP32, TF32, FP16, BF16, E4M3 and E5M2 on a log2 axis: values in the grey zone "
                   "round to zero, orange are subnormal (losing precision), blue are normal; eps (2^-M) in the "
                   "labels.")
    fp16, bf16 = fpsim.FP16, fpsim.BF16
    section.text(
        f"BF16 has FP32's exponent range (normal from 2^{bf16.emin}, rounding to zero only at or below "
        f"2^{Zones.of(bf16).flush_below:.0f}) with {bf16.precision} significant bits; FP16 has "
        f"{fp16.precision} significant bits but its normals start at 2^{fp16.emin} and everything at or below "
        f"2^{Zones.of(fp16).flush_below:.0f} becomes zero, and its largest value is {fp16.max:g}. TF32 keeps "
        f"FP32's range with FP16's {fpsim.TF32.precision} significant bits (it is a matmul input format of "
        "NVIDIA tensor cores, stored in 32 bits).")
    return section


if __name__ == "__main__":
    raise SystemExit(analysis_main(globals()))
