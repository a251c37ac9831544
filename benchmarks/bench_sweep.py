"""Sweep speed: a grid of 16 short runs on 2 local workers against 1, and what the sweep machinery costs.

Measured in one process, on this machine, each time against a reference in the same run:

* ``direct``: the 16 configurations trained one by one in this process, numba on one thread as in a
  pool worker (no store, no executor);
* ``1 worker`` / ``2 workers``: the same 16 through ``fpsim.sweep`` on a fresh local pool, each into a
  fresh store, the workers' start-up included, as a user pays it;
* speed-up = time(1 worker) / time(2 workers), and the cores the workers actually got (their CPU
  seconds over the wall time: on a shared machine, fewer than the workers when others are busy);
* overhead per run = (time(1 worker) - time(direct)) / 16, against a run, time(direct) / 16; and its
  parts: a worker's start-up (spawn, imports, data set, kernels: its first run on a fresh pool minus the
  same run on the started pool), one store write (a transaction; median of 200), and one round trip of
  a no-op task through a started pool (median of 200).

Each wall time is the fastest of ``--repeats`` interleaved repetitions (the machine is shared).

Usage: python benchmarks/bench_sweep.py [--steps 150] [--hidden 64] [--repeats 3]
"""

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numba

import fpsim
from fpsim.runs.sweep import expand_grid, local_pool, run_config, sweep
from fpsim.runs.store import RunStore


def timed(function, *args, **kwargs) -> float:
    start = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - start


def workers_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished children (pool workers count once joined)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def median_time(function, repeats: int) -> float:
    return statistics.median(timed(function) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps per run (default 150)")
    parser.add_argument("--hidden", type=int, default=64, help="width of the one hidden layer (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="times shown are the fastest of this many (default 3)")
    args = parser.parse_args()
    grid = {"policy": ["fp32", "bf16-pure"], "seed": list(range(8)), "hidden": [[args.hidden]],
            "steps": [args.steps]}
    configs = expand_grid(grid)
    numba.set_num_threads(1)  # as in a pool worker
    fpsim.train(**configs[0], progress=False)  # warm-up: data set loaded, kernels compiled or read from cache

    times = {"direct": [], 1: [], 2: []}
    cores_used = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):  # interleaved, so a busy spell of the machine hits all three alike
            times["direct"].append(timed(lambda: [fpsim.train(**config, progress=False) for config in configs]))
            for workers in (1, 2):
                cpu = workers_cpu_seconds()
                pool = local_pool(workers)
                wall = timed(sweep, configs, store=Path(folder) / f"{workers}-{repeat}.sqlite", executor=pool,
                             progress=False)
                pool.shutdown()
                times[workers].append(wall)
                cores_used[workers].append((workers_cpu_seconds() - cpu) / wall)

        record = fpsim.load_sweep(Path(folder) / "1-0.sqlite")[0]
        with RunStore(Path(folder) / "writes.sqlite") as store:
            counter = iter(range(10**6))
            write = median_time(lambda: store.write(dict(record, key=str(next(counter)))), 200)

    pool = local_pool(1)
    first = timed(lambda: pool.submit(run_config, configs[0]).result())
    start_up = first - timed(lambda: pool.submit(run_config, configs[0]).result())
    round_trip = median_time(lambda: pool.submit(abs, 0).result(), 200)
    pool.shutdown()

    direct, walls = min(times["direct"]), {workers: min(times[workers]) for workers in (1, 2)}
    n = len(configs)
    run = direct / n
    overhead = (walls[1] - direct) / n
    print(f"grid: {n} runs (policy fp32, bf16-pure x 8 seeds), hidden ({args.hidden},), {args.steps} steps; "
          f"fastest of {args.repeats}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end")
    print(f"direct, one by one : {direct:7.2f} s  ({run:.3f} s per run)")
    print(f"sweep, 1 worker    : {walls[1]:7.2f} s")
    print(f"sweep, 2 workers   : {walls[2]:7.2f} s")
    print(f"speed-up 2 vs 1 workers: {walls[1] / walls[2]:.2f}x")
    print("cores the workers got (their CPU seconds / wall seconds): "
          + ", ".join(f"{w} worker{'s' if w > 1 else ''} {max(cores_used[w]):.2f}" for w in (1, 2))
          + " (below the worker count: other processes held the cores)")
    print(f"overhead per run (1 worker - direct) / {n}: {overhead * 1e3:.0f} ms = {overhead / run:.0%} of a run")
    print(f"  worker start-up {start_up:.2f} s once per worker ({start_up / n * 1e3:.0f} ms per run here); "
          f"per run: store write {write * 1e3:.2f} ms, pool round trip {round_trip * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
