"""Cost of a GPU's tensor-core model in training: the char-gpt ``fp8-current`` step with ``accumulate="H100"``
as a ratio to the same step with FP32 accumulation (issue 21's target: <= 4x).

The step: zero the gradients, forward a batch of the pydoc text through char-gpt
(``fpsim.torch.models``, default GPTConfig: 2 layers, width 64, 4 heads, context 64),
cross-entropy, backward inside ``fpsim.torch.emulate``, AdamW update (plain torch).  Both
cases run the ``fp8-current`` recipe (``ScaledCasts``, no recorder); the FP32 case
multiplies the dequantized operands in float32 BLAS, the H100 case multiplies their E4M3 /
E5M2 elements on the H100 (wgmma) model (``fpsim.sim.tensor_core``), fast accumulation
forward, split backward (TE's default), and, one more line, fast everywhere.  Each figure
is the best of ``--repeats`` steps, the cases interleaved round by round; wall and CPU time.
``--profile`` prints where the H100 step's time goes (cProfile, top functions by own time).

    python benchmarks/bench_hardware_training.py [--batch-size 32] [--repeats 5] [--threads 1] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import pstats
import time

import numpy as np
import torch
from torch.nn import functional as F

import fpsim
from fpsim.sim.data import load_data
from fpsim.sim.scaling import ScaledCasts
from fpsim.torch import emulate
from fpsim.torch.models import get_model

REFERENCE = "fp8-current, FP32 accumulation"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = get_model("char-gpt")
    dataset = load_data(spec.data)
    config = spec.make_config(dataset)
    model = spec.build(config, torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = (torch.from_numpy(np.ascontiguousarray(a))
            for a in dataset.batch(np.random.default_rng(0), args.batch_size, config.block_size))
    fp8 = fpsim.Policy.preset("fp8-current")
    policies = {
        REFERENCE: (fp8, "native"),
        "fp8-current, H100 (forward fast, backward split)": (
            dataclasses.replace(fp8, name="fp8-current-h100", accumulate="H100"), "exact"),
        "fp8-current, H100 (fast everywhere)": (
            dataclasses.replace(fp8, name="fp8-current-h100-fast", accumulate="H100", fast_accumulation="all"),
            "exact"),
    }

    def step(policy, accumulate):
        optimizer.zero_grad(set_to_none=True)
        with emulate(policy, model=model, accumulate=accumulate, casts=ScaledCasts(policy)):
            loss = F.cross_entropy(model(x).reshape(-1, config.vocab_size), y.reshape(-1))
            loss.backward()
        optimizer.step()

    for policy, accumulate in policies.values():  # warm-up: numba compilation
        step(policy, accumulate)
    torch.set_num_threads(args.threads)
    wall = {name: [] for name in policies}
    cpu = {name: [] for name in policies}
    for _ in range(args.repeats):
        for name, (policy, accumulate) in policies.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            step(policy, accumulate)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    print(f"char-gpt step (batch {args.batch_size} x {config.block_size} characters, {torch.get_num_threads()} "
          f"torch thread(s)), best of {args.repeats}; wall and CPU time, each as a ratio to {REFERENCE}:")
    for name in policies:
        print(f"  {name:<50} wall {min(wall[name]) * 1e3:8.1f} ms {min(wall[name]) / min(wall[REFERENCE]):5.2f}x"
              f"   cpu {min(cpu[name]) * 1e3:8.1f} ms {min(cpu[name]) / min(cpu[REFERENCE]):5.2f}x")
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(step, *list(policies.values())[1])
        pstats.Stats(profile).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
