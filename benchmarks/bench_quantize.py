"""Speed of fpsim.quantize's block scalings against the plain FP8 cast, in one run, on one thread.

Input: ``--size`` float32 values of mixed magnitudes (log-uniform over 2^-30..2^20, random
signs), in rows of 4096 (blocks of 32 along the rows).  Each timing is the best of
``--rounds`` rounds of ``--repeats`` runs on one thread (``numba_threads(1)``), the cases taking
turns round by round so that all see the same load on a shared machine.  Printed: the rate
in G values/s and the time as a multiple of the plain FP8 casts timed in the same run,
``fpsim.round(x, "e4m3")`` and ml_dtypes' float32 -> float8_e4m3fn -> float32 round trip.
The targets: MX block scaling at >= 0.5 G values/s on one thread (issue 14); 128 x 128 block
scaling (DeepSeek-V3 / Transformer Engine weights: E4M3, TE's power-of-two scales) and the NVFP4
two-level encode (1 x 16 blocks, TE's order, and 16 x 16 weight tiles) at >= 0.3 G values/s
(issue 22); the NVFP4 recipe's stochastically rounded gradients and its 16-point Hadamard transform of
the weight-gradient operands (timed on 1/256 of the input: it is far slower) are printed beside them.  Each
time is per value, the Hadamard transform's scaled to the whole input.  Each rate counts the input values
quantized (the whole call: grouping, amaxes, scales, rounding, dequantization and putting the values back),
per second.

    python benchmarks/bench_quantize.py

Measured (2^22 values, one thread, best of rounds, wall time, a contended 2-core machine; rate and time
as a multiple of fpsim.round e4m3 in the same run), before -> after the nvfp4_te tile kernel:
nvfp4_te 1x16 0.33 G/s (2.25x) -> 0.53 (1.12x); nvfp4_te 16x16 0.17 (4.29x) -> 0.61 (0.98x);
e4m3 128x128 floor-scale 1.03 (0.72x) -> 0.87 (0.68x, unchanged code); mxfp8_e4m3 0.75 (0.99x) -> 0.62 (0.96x).
"""

from __future__ import annotations

import argparse

import ml_dtypes
import numpy as np

import fpsim
from fpsim.numerics.threads import numba_threads
from fpsim.ops.hadamard import hadamard
from timing import best_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1 << 24)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    size = args.size - args.size % 4096
    x = np.ldexp(rng.uniform(1, 2, size), rng.integers(-30, 20, size)) * rng.choice([-1, 1], size)
    x = x.astype(np.float32).reshape(-1, 4096)

    cases = {
        "fpsim.round e4m3 (plain cast)": lambda: fpsim.round(x, "e4m3"),
        "ml_dtypes float8_e4m3fn round trip": lambda: x.astype(ml_dtypes.float8_e4m3fn).astype(np.float32),
        "quantize mxfp8_e4m3 (floor)": lambda: fpsim.quantize(x, "mxfp8_e4m3"),
        "quantize mxfp8_e4m3 (rceil)": lambda: fpsim.quantize(x, "mxfp8_e4m3", scale_rounding="rceil"),
        "quantize mxfp8_e5m2 (floor)": lambda: fpsim.quantize(x, "mxfp8_e5m2"),
        "quantize mxfp6_e3m2 (floor)": lambda: fpsim.quantize(x, "mxfp6_e3m2"),
        "quantize mxfp4 (floor)": lambda: fpsim.quantize(x, "mxfp4"),
        "quantize mxfp4 (ceil)": lambda: fpsim.quantize(x, "mxfp4", scale_rounding="ceil"),
        "quantize e4m3 per tensor (fp32 scale)": lambda: fpsim.quantize(x, "e4m3"),
        "quantize nvfp4": lambda: fpsim.quantize(x, "nvfp4"),
        "quantize e4m3 128x128 (floor-scale)": lambda: fpsim.quantize(
            x, "e4m3", scaling="block", scale_format="e8m0", scale_rounding="floor-scale", block_size=(128, 128)),
        "quantize e4m3 1x128 (floor-scale)": lambda: fpsim.quantize(
            x, "e4m3", scaling="block", scale_format="e8m0", scale_rounding="floor-scale", block_size=128),
        "quantize nvfp4_te (1x16)": lambda: fpsim.quantize(x, "nvfp4_te"),
        "quantize nvfp4_te 16x16": lambda: fpsim.quantize(x, "nvfp4_te", block_size=(16, 16)),
        "quantize nvfp4_te (1x16, stochastic)": lambda: fpsim.quantize(x, "nvfp4_te", mode="stochastic", rng=rng),
        "hadamard 16 te (on 1/256 of x)": lambda: hadamard(x[:max(len(x) // 256, 1)], 16, "te"),
    }
    values = dict.fromkeys(cases, x.size)
    values["hadamard 16 te (on 1/256 of x)"] = x[:max(len(x) // 256, 1)].size
    seconds = dict.fromkeys(cases, float("inf"))
    with numba_threads(1):
        for _ in range(args.rounds):
            for name, function in cases.items():
                seconds[name] = min(seconds[name], best_time(function, args.repeats))
    cast, native = seconds["fpsim.round e4m3 (plain cast)"], seconds["ml_dtypes float8_e4m3fn round trip"]
    print(f"{x.size:,} float32 values, best of {args.rounds} x {args.repeats}, one thread")
    print(f"{'case':40} {'G values/s':>10} {'x fpsim.round':>14} {'x ml_dtypes':>12}   (time / time of the cast)")
    for name, t in seconds.items():  # times per value, as multiples of the cast's
        ratio = t / values[name] * x.size
        print(f"{name:40} {values[name] / t / 1e9:10.3f} {ratio / cast:13.2f}x {ratio / native:11.2f}x")
    mx = x.size / seconds["quantize mxfp8_e4m3 (floor)"] / 1e9
    print(f"MX block scaling (mxfp8_e4m3): {mx:.3f} G values/s on one thread "
          f"({'meets' if mx >= 0.5 else 'below'} the 0.5 G values/s target on this machine, now)")
    for name in ("quantize e4m3 128x128 (floor-scale)", "quantize nvfp4_te (1x16)", "quantize nvfp4_te 16x16"):
        rate = x.size / seconds[name] / 1e9
        print(f"{name}: {rate:.3f} G values/s on one thread, {seconds[name] / cast:.2f}x the plain E4M3 cast "
              f"({'meets' if rate >= 0.3 else 'below'} the 0.3 G values/s target on this machine, now)")


if __name__ == "__main__":
    main()
