"""Speed of fpsim.round against the native casts and gfloat, in one run, as ratios.

Input: 10 million float32 values of mixed magnitudes (log-uniform over 2^-30..2^20,
random signs).  Each timing is the best of ``--repeats`` runs.  gfloat (optional,
``pip install gfloat``) is timed on a 1-million-element slice and compared per element.

    python benchmarks/bench_rounding.py
"""

from __future__ import annotations

import argparse

import ml_dtypes
import numba
import numpy as np

import fpsim
from fpsim.numerics.threads import numba_threads
from timing import best_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = np.ldexp(rng.uniform(1, 2, args.size), rng.integers(-30, 20, args.size)) * rng.choice([-1, 1], args.size)
    x32, x64 = x.astype(np.float32), x

    native_bf16 = best_time(lambda: x32.astype(ml_dtypes.bfloat16).astype(np.float32), args.repeats)
    with np.errstate(over="ignore"):  # values above 65504 overflow to inf, as they should
        native_fp16 = best_time(lambda: x32.astype(np.float16).astype(np.float32), args.repeats)
    cases = {
        "bf16 nearest (float32 in)": (lambda: fpsim.round(x32, "bf16"), native_bf16),
        "fp16 nearest (float32 in)": (lambda: fpsim.round(x32, "fp16"), native_fp16),
        "bf16 stochastic (float32 in)": (lambda: fpsim.round(x32, "bf16", "stochastic", rng=1), native_bf16),
        "fp16 stochastic (float32 in)": (lambda: fpsim.round(x32, "fp16", "stochastic", rng=1), native_fp16),
        "e6m9 nearest (float64 in)": (lambda: fpsim.round(x64, "e6m9"), native_bf16),
    }
    print(f"{args.size:,} elements, best of {args.repeats}")
    print(f"native bf16 round trip (ml_dtypes): {args.size / native_bf16 / 1e6:8.1f} M elements/s")
    print(f"native fp16 round trip (numpy):     {args.size / native_fp16 / 1e6:8.1f} M elements/s")
    print(f"fpsim uses numba's threads (here {numba.get_num_threads()}); the native casts and gfloat run on one "
          "thread, so the 1-thread columns (and the gfloat ratios) compare like with like")
    print(f"{'fpsim case':32} {'M el/s':>8} {'x native':>9}   {'1 thread':>8} {'x native':>9}"
          "   (x native: time / native round trip of the same format; bf16 for e6m9)")
    fpsim_rates = {}
    for name, (function, native) in cases.items():
        seconds = best_time(function, args.repeats)
        with numba_threads(1):
            single = best_time(function, args.repeats)
        fpsim_rates[name] = args.size / single
        print(f"{name:32} {args.size / seconds / 1e6:8.1f} {seconds / native:8.2f}x   "
              f"{args.size / single / 1e6:8.1f} {single / native:8.2f}x")

    try:
        from gfloat import RoundMode, round_ndarray
        from gfloat.formats import format_info_bfloat16, format_info_binary16
    except ImportError:
        print("gfloat not installed: skipped (pip install gfloat)")
        return
    part = x64[:1_000_000]
    for name, info, ours in [("bf16", format_info_bfloat16, "bf16 nearest (float32 in)"),
                             ("fp16", format_info_binary16, "fp16 nearest (float32 in)")]:
        seconds = best_time(lambda: round_ndarray(info, part, RoundMode.TiesToEven), 1)
        rate = part.size / seconds
        print(f"gfloat round_ndarray {name}: {rate / 1e6:8.2f} M elements/s; fpsim on one thread is "
              f"{fpsim_rates[ours] / rate:6.0f}x faster")


if __name__ == "__main__":
    main()
