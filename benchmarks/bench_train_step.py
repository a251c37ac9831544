"""Time per training step of every precision preset against the ``fp32`` preset, in one run.

Model: the default MLP (digits, 64-128-128-128-10, batch 64, SGD), recorder on
(its counts are always on), FP64 shadow off.  The time per step is the
difference between a run of ``--long`` steps and one of ``--short`` steps,
divided by the difference, so set-up, data loading and the test evaluation
cancel.  Presets are timed in turns, ``--repeats`` rounds, and each keeps its
best; the ratio is against fp32's best.  Target (issue 4, section 9): fp16-amp
within 3x of fp32.

    python benchmarks/bench_train_step.py [--short 20] [--long 120] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import fpsim


def step_time(policy: str, short: int, long: int) -> float:
    """Seconds per step of ``policy`` on the default model (difference of two run lengths)."""
    times = []
    for steps in (short, long):
        start = time.perf_counter()
        fpsim.train(policy, steps=steps, shadow_every=0, record_every=0, progress=False)
        times.append(time.perf_counter() - start)
    return (times[1] - times[0]) / (long - short)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", type=int, default=20)
    parser.add_argument("--long", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    presets = list(fpsim.POLICIES)
    for policy in presets:  # warm-up: compile or load every kernel the presets use
        fpsim.train(policy, steps=2, shadow_every=0, progress=False)
    best = {policy: float("inf") for policy in presets}
    for _ in range(args.repeats):
        for policy in presets:
            best[policy] = min(best[policy], step_time(policy, args.short, args.long))
    print(f"{'preset':12s} {'ms/step':>8s} {'x fp32':>7s}")
    for policy in presets:
        print(f"{policy:12s} {best[policy] * 1e3:8.2f} {best[policy] / best['fp32']:7.2f}")
    ratio = best["fp16-amp"] / best["fp32"]
    print(f"fp16-amp / fp32 = {ratio:.2f} (target <= 3): {'met' if ratio <= 3 else 'NOT met'}")


if __name__ == "__main__":
    main()
