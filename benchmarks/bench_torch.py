"""Cost of fpsim.torch.emulate: an emulated char-gpt training step as a ratio to the plain FP32 torch step.

The step: zero the gradients, forward a batch of the pydoc text through char-gpt
(``fpsim.torch.models``, default GPTConfig: 2 layers, width 64, 4 heads,
context 64), cross-entropy, backward, AdamW update (plain torch, outside the
emulation).  Emulated under ``bf16-mixed`` and ``fp16-amp`` with native
accumulation, without a recorder and (one more line) with one; the plain FP32
step and, for reference, real ``torch.autocast("cpu", bfloat16)`` are timed in
the same run.  Each figure is the best of ``--repeats`` steps, the cases
interleaved round by round so that a load change hits all of them; wall time
and the process's CPU time (with one thread, the work done whatever the other
processes on the machine do).  Target (issue 12): emulated step <= 2x the FP32 step.

    python benchmarks/bench_torch.py [--batch-size 32] [--repeats 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.nn import functional as F

from fpsim.sim.data import load_data
from fpsim.sim.recorder import Recorder
from fpsim.torch import emulate
from fpsim.torch.models import get_model


REFERENCE = "fp32 (plain torch)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch (and numba) threads (default 1: on a shared machine, OpenMP teams of 2+ "
                             "threads wait for each other and the wall times measure the load)")
    args = parser.parse_args()
    threads = args.threads
    torch.set_num_threads(threads)
    spec = get_model("char-gpt")
    dataset = load_data(spec.data)
    config = spec.make_config(dataset)
    model = spec.build(config, torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = (torch.from_numpy(np.ascontiguousarray(a))
            for a in dataset.batch(np.random.default_rng(0), args.batch_size, config.block_size))

    def forward_backward():
        loss = F.cross_entropy(model(x).reshape(-1, config.vocab_size), y.reshape(-1))
        loss.backward()

    def step(context=None):
        optimizer.zero_grad(set_to_none=True)
        if context is None:
            forward_backward()
        else:
            with context():
                forward_backward()
        optimizer.step()

    recorder = Recorder()
    recorder.start_step(0)
    cases = {
        REFERENCE: lambda: step(),
        "torch.autocast cpu bf16 (real)": lambda: step(lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
        "emulate bf16-mixed": lambda: step(lambda: emulate("bf16-mixed", model=model)),
        "emulate fp16-amp": lambda: step(lambda: emulate("fp16-amp", model=model)),
        "emulate bf16-mixed + recorder": lambda: step(lambda: emulate("bf16-mixed", model=model, recorder=recorder)),
    }
    for case in cases.values():  # warm-up: numba compilation, allocator, autocast caches
        case()
    torch.set_num_threads(threads)  # numba's first parallel launch resets OpenMP's thread count
    wall = {name: [] for name in cases}
    cpu = {name: [] for name in cases}
    time.sleep(0.5)
    for _ in range(args.repeats):
        for name, case in cases.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            case()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    print(f"char-gpt step (batch {args.batch_size} x {config.block_size} characters, {torch.get_num_threads()} "
          f"torch thread(s)), best of {args.repeats}; wall and CPU time, each as a ratio to plain FP32:")
    for name in cases:
        print(f"  {name:<32} wall {min(wall[name]) * 1e3:8.1f} ms {min(wall[name]) / min(wall[REFERENCE]):5.2f}x"
              f"   cpu {min(cpu[name]) * 1e3:8.1f} ms {min(cpu[name]) / min(cpu[REFERENCE]):5.2f}x")


if __name__ == "__main__":
    main()
