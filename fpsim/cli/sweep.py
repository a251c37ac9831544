"""Run a grid of trainings, resumably: every combination of the grid's values, each stored as it finishes.

GRID.toml lists fpsim.train options, each with a list of values; the sweep runs
their product.  Runs already in the store are skipped, so an interrupted sweep
is finished by running the same command again.  A run that fails is stored with
its error (and retried by the next sweep); the others go on.  The exit status is
1 when some run failed.  Sweeps started together on one store share its runs: each
run is claimed in the store before it starts, and a run another sweep is running is
left to it (said at the end; a rerun afterwards finds it stored).

A grid (analyses/grids/example.toml is another):
  policy = ["fp32", "bf16-pure"]
  lr = [0.05, 0.1]
  seed = [0, 1]
  hidden = [[16]]           # one value, itself a list
  steps = [200]

Examples:
  fpsim sweep analyses/grids/example.toml --store runs.sqlite              one worker per core
  fpsim sweep grid.toml --store runs.sqlite --workers 1
  fpsim sweep grid.toml --store runs.sqlite --scheduler tcp://10.0.0.5:8786   a Dask cluster (fpsim[dask])
The Dask workers need fpsim installed.  Read the results in Python with
fpsim.load_sweep("runs.sqlite").
"""

from . import UsageError
from ..runs.sweep import config_key, dask_client, expand_grid, local_pool, read_grid, sweep


def configure(parser):
    parser.add_argument("grid", metavar="GRID.toml", help="the grid: fpsim.train options, each a list of values")
    parser.add_argument("--store", required=True, metavar="FILE.sqlite",
                        help="SQLite file of finished runs (created if missing)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N", help="local worker processes (default: one per core)")
    where.add_argument("--scheduler", metavar="ADDRESS", help="a Dask scheduler, e.g. tcp://HOST:8786")
    parser.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="how long to try reaching the Dask scheduler (default 10)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


MAX_WORKERS = 256
"""Most local worker processes a sweep starts."""


def run(args) -> int:
    if args.workers is not None and not 1 <= args.workers <= MAX_WORKERS:
        raise UsageError(f"--workers must be in 1..{MAX_WORKERS}, got {args.workers}")
    if not 0 < args.connect_timeout <= 3600:  # also refuses nan
        raise UsageError(f"--connect-timeout must be in (0, 3600] seconds, got {args.connect_timeout}")
    configs = expand_grid(read_grid(args.grid))
    for config in configs:  # refuse unknown options and policies before reaching for any worker
        config_key(config)
    if args.scheduler is not None:
        try:
            client = dask_client(args.scheduler, timeout=args.connect_timeout)
        except (ModuleNotFoundError, ConnectionError) as error:
            raise UsageError(str(error)) from None
        with client:
            return _sweep(configs, args, client)
    if args.workers is None:
        return _sweep(configs, args, None)
    pool = local_pool(args.workers)
    try:
        return _sweep(configs, args, pool)
    finally:  # on an interrupt, do not wait for the runs in flight: what finished is stored
        pool.shutdown(wait=False, cancel_futures=True)


def _sweep(configs, args, executor) -> int:
    records = sweep(configs, store=args.store, executor=executor, progress=not args.quiet)
    failed = [(config, record) for config, record in zip(configs, records) if record["status"] == "failed"]
    running = [(config, record) for config, record in zip(configs, records) if record["status"] == "running"]
    skipped = sum(record["reused"] for record in records)
    print(f"{len(records)} runs in {args.store}: {len(records) - skipped - len(failed) - len(running)} done, "
          f"{skipped} skipped (already stored), {len(failed)} failed"
          + (f", {len(running)} left to another sweep running them" if running else ""))
    for config, record in running:
        print(f"  running elsewhere {_describe(config)}: {record['error']}")
    for config, record in failed:
        print(f"  failed {_describe(config)}: {record['error']}")
    return 1 if failed else 0


def _describe(config: dict) -> str:
    return " ".join(f"{name}={value}" for name, value in config.items())
