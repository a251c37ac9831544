"""When numba's thread pool pays for ``fpsim.matmul``: the pool against one thread, as ratios, in one run.

``fpsim.ops.reductions.PARALLEL_MIN_WORK`` sends products with fewer
multiply-adds (M*K*N) than it to one thread.  This times, for the training
step's product (64x128 @ 128x128, BF16 inputs, FP32 accumulation: 2^20
multiply-adds) and for a 256^3 product with FP16 accumulation (2^24, the
threshold), the pool against one thread, each alone and each right after a
plain numpy float32 matmul of the same shapes (OpenBLAS's idle threads spin
for a while after it, and on few cores the two pools contend).  A ratio
above 1 means the pool is slower.

    python benchmarks/bench_threads.py [--repeats 7]
"""

from __future__ import annotations

import argparse

import numba
import numpy as np

import fpsim
from fpsim.numerics.threads import numba_threads
from fpsim.ops import reductions
from timing import best_time

CASES = [
    ("64x128 @ 128x128, inputs bf16, accumulate fp32 (2^20)", (64, 128, 128), dict(inputs="bf16", accumulate="fp32")),
    ("256x256 @ 256x256, inputs fp16, accumulate fp16 (2^24)", (256, 256, 256), dict(inputs="fp16", accumulate="fp16")),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    reductions.PARALLEL_MIN_WORK = 0  # every product on the pool; numba_threads(1) below overrides it
    print(f"numba threads: {numba.get_num_threads()}")
    for name, (m, k, n), kwargs in CASES:
        A = rng.standard_normal((m, k)).astype(np.float32)
        B = rng.standard_normal((k, n)).astype(np.float32)

        def pool(after_numpy: bool):
            if after_numpy:
                A @ B
            fpsim.matmul(A, B, **kwargs)

        def single(after_numpy: bool):
            if after_numpy:
                A @ B
            with numba_threads(1):
                fpsim.matmul(A, B, **kwargs)

        print(name)
        for after_numpy in (False, True):
            t_pool = best_time(lambda: pool(after_numpy), args.repeats)
            t_one = best_time(lambda: single(after_numpy), args.repeats)
            label = "right after a numpy matmul" if after_numpy else "alone"
            print(f"  {label:<28} pool {t_pool * 1e3:8.3f} ms   one thread {t_one * 1e3:8.3f} ms   "
                  f"pool / one thread {t_pool / t_one:5.2f}")


if __name__ == "__main__":
    main()
