"""Speed of fpsim.matmul against a plain float32 numpy matmul of the same shapes, in one run, as ratios.

Operands: standard normal float32 matrices (seed 0).  Cases:
inputs FP16, output FP16, accumulation FP32 or FP16 in sequential order; also
BF16 inputs with FP32 accumulation (the training simulator's usual case), and
the FP16-accumulation case in the other orders and in mode "up" (the generic,
not vectorised kernel); and the tensor-core models: E4M3 inputs with
``accumulate="H100"`` (wgmma, e8m13), the same with promotion every 128
(``order="blocked:128"``), BF16 on ``"A100"`` and FP16 on ``"H100"``.  Each
timing is the best of ``--repeats`` calls after one warm-up call (which
compiles).  Targets: <= 10x for FP32 accumulation, <= 50x for FP16 sequential
accumulation, <= 40x for E4M3 on "H100".

``--threads N`` (default 1) limits numpy's BLAS (threadpoolctl) and numba to
N threads each, so that the ratios compare like with like.

    python benchmarks/bench_matmul.py [--size 256] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse

import numba
import numpy as np
from threadpoolctl import threadpool_limits

import fpsim
from timing import best_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="M = K = N")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="threads of numpy's BLAS and of numba each")
    args = parser.parse_args()
    threadpool_limits(args.threads)
    numba.set_num_threads(args.threads)
    print(f"threads: numpy BLAS {args.threads}, numba {numba.get_num_threads()}")
    rng = np.random.default_rng(0)
    n = args.size
    A = rng.standard_normal((n, n)).astype(np.float32)
    B = rng.standard_normal((n, n)).astype(np.float32)
    cases = [
        ("inputs fp16, accumulate fp32, output fp16, sequential", dict(inputs="fp16", accumulate="fp32", output="fp16")),
        ("inputs fp16, accumulate fp16, output fp16, sequential", dict(inputs="fp16", accumulate="fp16", output="fp16")),
        ("inputs bf16, accumulate fp32, sequential", dict(inputs="bf16", accumulate="fp32")),
        ("inputs fp16, accumulate fp16, blocked:32", dict(inputs="fp16", accumulate="fp16", order="blocked:32")),
        ("inputs fp16, accumulate fp16, pairwise", dict(inputs="fp16", accumulate="fp16", order="pairwise")),
        ("inputs fp16, accumulate fp16, sequential, mode up", dict(inputs="fp16", accumulate="fp16", mode="up")),
        ("inputs e4m3, accumulate H100 (wgmma, e8m13)", dict(inputs="e4m3", accumulate="H100")),
        ("inputs e4m3, accumulate H100, blocked:128", dict(inputs="e4m3", accumulate="H100", order="blocked:128")),
        ("inputs bf16, accumulate A100", dict(inputs="bf16", accumulate="A100")),
        ("inputs fp16, accumulate H100, output fp16", dict(inputs="fp16", accumulate="H100", output="fp16")),
    ]
    reference = best_time(lambda: A @ B, args.repeats * 10)
    print(f"{n}x{n} @ {n}x{n}; numpy float32 matmul: {reference * 1e3:.3f} ms (best of {args.repeats * 10})")
    for name, kwargs in cases:
        seconds = best_time(lambda: fpsim.matmul(A, B, **kwargs), args.repeats)
        print(f"  {name:<55} {seconds * 1e3:9.2f} ms   {seconds / reference:7.1f}x")
    reference_again = best_time(lambda: A @ B, args.repeats * 10)
    print(f"numpy float32 matmul again: {reference_again * 1e3:.3f} ms (ratios use the first; the spread shows noise)")

    def interleaved():
        A @ B
        fpsim.matmul(A, B, **cases[0][1])

    both = best_time(interleaved, args.repeats)
    print(f"numpy matmul then fpsim matmul (case 1), back to back: {both * 1e3:.2f} ms "
          f"= {both / reference:.1f}x: the two thread pools contend")


if __name__ == "__main__":
    main()
