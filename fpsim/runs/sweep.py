"""Experiment sweeps: many ``fpsim.train`` runs, resumable, on a process pool or a Dask cluster.

A *configuration* is a dict of ``fpsim.train`` keyword arguments, ``policy``
included, e.g. ``{"policy": "fp16-mixed", "lr": 0.05, "seed": 3}``.  A *grid* is a
dict of lists, expanded as a product (``expand_grid``)::

    records = fpsim.sweep({"policy": ["fp32", "bf16-mixed"], "seed": [0, 1, 2]}, store="runs.sqlite")
    accuracy = [r["result"]["test_accuracy"] for r in records if r["status"] == "ok"]

How a sweep runs:

* Every configuration is completed with ``fpsim.train``'s defaults and keyed by
  ``config_key``: the SHA-256 of its canonical JSON (the policy resolved to its
  fields) together with fpsim's version (``numerics_version``), so a key names
  one result bit for bit.  Options ``fpsim.train`` does not take and unknown
  policies are refused before anything runs.
* Runs already stored (status ``"ok"``) are reused; the others go to the
  executor, one task per run, through one module-level function, ``run_config``.
  As each run finishes, the coordinating process (only it) writes the run to the
  store in its own transaction (``fpsim.runs.store``).  Interrupting loses no
  finished run, and running the same sweep again runs only what is missing.
* A run that raises is stored as ``"failed"`` with its error; the sweep goes on,
  and a later sweep retries it.
* Sweeps sharing a store share its runs: each run is claimed in the store just
  before it is submitted (``RunStore.claim``), at most as many at a time as the
  executor has workers (all at once on an executor that does not say), so a
  second sweep started beside a first takes the runs the first has not reached,
  skips those it holds (their records say ``"running"``, and who holds them) and
  reuses those it stored.  A claim of a killed sweep is taken over.
* The executor: by default a local process pool, one worker per core
  (``local_pool``); or any ``concurrent.futures.Executor``; or a
  ``dask.distributed.Client`` (``dask_client`` connects to a scheduler; needs the
  ``fpsim[dask]`` extra).

Multi-seed analyses call ``sweep`` directly: ``store=None`` runs in memory and
the records come back in configuration order, so ``sweep(configs, store=None,
executor=ex)`` is the one function that runs a list of trainings on any executor.
The command line is ``fpsim sweep GRID.toml --store runs.sqlite``.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from tqdm import tqdm

from ..numerics.threads import single_threaded_worker
from ..sim.config import TrainConfig
from .store import RunStore, load_sweep

__all__ = ["sweep", "load_sweep", "expand_grid", "read_grid", "normalize_config", "config_key",
           "numerics_version", "numerics_source_hash", "run_config", "local_pool", "dask_client"]


NUMERICS_LAYERS = ("numerics", "ops", "sim", "engines", "torch")
"""The subpackages whose source decides a training result: every ``.py`` file below them is hashed
(``numerics_source_hash``), so a module added to a layer can never be left out of a run's key."""


def numerics_version() -> str:
    """The version of fpsim's numerics that a run key includes: ``VERSION+SOURCE_HASH``.

    The package version alone would let a store serve results of older numerics
    while fpsim is changed between releases; the hash of the numerics source
    (``numerics_source_hash``) changes with any edit to it, so old results are
    never mixed with new ones.
    """
    from .. import __version__
    return f"{__version__}+{numerics_source_hash()}"


@functools.lru_cache(maxsize=None)
def numerics_source_hash() -> str:
    """The first 16 hex digits of SHA-256 over the sources of ``NUMERICS_LAYERS``, computed once.

    The files enter sorted by their path below ``fpsim/``, each as its path, its
    length and its bytes, so no two different sets of sources hash the same text.
    """
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent.parent
    for layer in NUMERICS_LAYERS:
        for path in sorted((package / layer).rglob("*.py")):
            source = path.read_bytes()
            digest.update(f"{path.relative_to(package).as_posix()} {len(source)}\n".encode())
            digest.update(source)
    return digest.hexdigest()[:16]


def expand_grid(grid: Mapping[str, list]) -> list[dict]:
    """The configurations of a grid: the product of its value lists.

    The first key varies slowest and the last fastest, like nested for loops
    written in the grid's key order.  Every value must be a list, even a single
    one (``{"seed": [0]}``), so that list-valued options stay unambiguous:
    ``{"hidden": [[16], [32, 32]]}`` is two configurations.
    """
    for name, values in grid.items():
        if not isinstance(values, list):
            raise ValueError(f"grid entry {name!r} must be a list of values, got {values!r} "
                             f"(write [{values!r}] for a single value)")
        if not values:
            raise ValueError(f"grid entry {name!r} is an empty list")
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def read_grid(path: str | os.PathLike) -> dict:
    """Read a grid from a TOML file: each top-level key is an ``fpsim.train`` option with a list of values.

    Example (``analyses/grids/example.toml``)::

        policy = ["fp32", "bf16-pure"]
        lr = [0.05, 0.1]
        seed = [0, 1, 2]
        hidden = [[32, 32]]
        steps = [300]
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ModuleNotFoundError("reading TOML grids needs Python 3.11+ or the 'tomli' package") from None
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise ValueError(f"cannot read grid {os.fspath(path)}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"malformed grid {os.fspath(path)}: {error}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"cannot read grid {os.fspath(path)}: not UTF-8 text (byte {error.start})") from None
    except RecursionError:
        raise ValueError(f"malformed grid {os.fspath(path)}: nested too deeply") from None


def normalize_config(config: Mapping) -> dict:
    """The full configuration a run key hashes: ``TrainConfig``'s canonical JSON form of ``config``.

    Unknown options and a missing ``policy`` are refused (``ValueError``/``TypeError``);
    ``progress`` is not an option: runs never draw progress bars.  Equivalent
    spellings of one run (``loss_scale`` 1024 and 1024.0, ``hidden`` 16 and [16],
    "DIGITS" and "digits", ``scaler`` None and {}, a preset name and its fields)
    give one configuration (see ``fpsim.sim.config``).
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"a sweep configuration is a dict of fpsim.train options, got {type(config).__name__}")
    full = TrainConfig.from_dict(dict(config))  # "progress" is not a TrainConfig field: refused as unknown
    if not isinstance(full.model, str):
        raise ValueError("a sweep runs built-in models only (a model factory cannot be stored or sent to a worker)")
    try:
        return json.loads(json.dumps(full.to_dict(), allow_nan=False))
    except (TypeError, ValueError) as error:
        raise TypeError(f"a sweep configuration holds JSON data only: {error}") from None


def config_key(config: Mapping) -> str:
    """The stable key of a run: SHA-256 (hex) of its full configuration and fpsim's numerics version.

    The hashed text is canonical JSON (sorted keys, no spaces; floats written as
    their shortest round-trip decimal) of ``normalize_config``, so the key is the
    same in every process, on every machine, for every order of the options and
    for every spelling of one run; an invalid configuration is refused here,
    before anything runs.
    """
    full = normalize_config(config)
    text = json.dumps({"config": full, "numerics": numerics_version()}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def run_config(config: dict) -> dict:
    """Run one configuration (in a worker): the one function every executor is given.

    Returns ``{"status": "ok", "error": None, "result": JSON text}`` or
    ``{"status": "failed", "error": "Type: message", "result": None}``; it never
    writes anywhere, the coordinating process stores what it returns.
    """
    from .. import train
    try:
        result = train(**config, progress=False)
        return {"status": "ok", "error": None, "result": json.dumps(result.to_dict())}
    except Exception as error:  # a failed run is a result to record, not a reason to stop the sweep
        return _failure(error)


def local_pool(workers: int | None = None) -> ProcessPoolExecutor:
    """A local process pool of ``workers`` processes (default: one per core).

    Workers are started with ``spawn``: forking a process that has already run
    fpsim's OpenMP kernels is unsafe.  (So a script using it needs the usual
    ``if __name__ == "__main__":`` guard.)  Each worker runs fpsim's numba
    kernels on one thread: a sweep is parallel across runs, and at fpsim's
    matrix sizes a second thread inside a run does not pay for itself (a run
    of the default 64-128-128-128-10 network took as long on 2 threads as on 1).
    """
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"a pool needs at least one worker, got {workers}")
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=single_threaded_worker)


def dask_client(address: str, *, timeout: float = 10.0):
    """Connect to the Dask scheduler at ``address`` (``tcp://HOST:PORT``) within ``timeout`` seconds.

    Needs the optional extra ``fpsim[dask]``.  Raises ``ConnectionError`` when
    the scheduler cannot be reached.  Close the client when done (it is a
    context manager).
    """
    try:
        from dask.distributed import Client
    except ImportError:
        raise ModuleNotFoundError("Dask sweeps need the dask extra: pip install 'fpsim[dask]'") from None
    _check_address(address)
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as error:
        raise ConnectionError(f"cannot reach the Dask scheduler at {address} within {timeout:g} s "
                              f"({type(error).__name__})") from None


def _check_address(address: str) -> None:
    """Refuse what is not a scheduler address before a Client is made (a failed Client complains again on exit)."""
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.registry import backends

    try:
        scheme, location = parse_address(address)
        if scheme not in backends:
            raise ValueError(f"unknown protocol {scheme!r}")
        if scheme in ("tcp", "tls") and not 0 < parse_host_port(location)[1] < 65536:
            raise ValueError("the port lies in 1..65535")
    except (ValueError, TypeError) as error:
        raise ConnectionError(f"not a Dask scheduler address: {address!r} ({error}); use e.g. tcp://HOST:8786") \
            from None


def sweep(configs, *, store=None, executor=None, progress: bool = True) -> list[dict]:
    """Run every configuration not yet in ``store``, storing each as it finishes; return all runs.

    ``configs``: a list of configurations, or a grid (a dict of lists, see
    ``expand_grid``).  ``store``: the path of the SQLite sweep store (created if
    missing), or None to run in memory.  ``executor``: None for ``local_pool()``
    (started only when some run is missing, and shut down after), any
    ``concurrent.futures.Executor``, or a ``dask.distributed.Client``.
    ``progress``: a progress bar on stderr.

    Returns one record per configuration, in the order given, with the keys of
    ``load_sweep``'s records (``key``, ``config``, ``status``, ``error``,
    ``result``) and ``reused``: True when the run was already stored and not run
    again.  A run another live sweep of the store was running, and had not stored
    by the end of this one, has the status ``"running"`` (``error`` says which sweep
    holds it, ``result`` is None).  Configurations with the same key are run once.
    Every configuration is checked before any run starts or the store is opened.
    """
    if isinstance(configs, Mapping):
        configs = expand_grid(configs)
    configs = [normalize_config(config) for config in configs]
    keys = [config_key(config) for config in configs]
    executor = _as_executor(executor)
    with RunStore(store) as runs:
        records = {key: dict(record, reused=True) for key, record in runs.finished(keys).items()}
        missing = {key: config for key, config in zip(keys, configs) if key not in records}
        if missing:
            held: dict[str, dict] = {}
            records.update(_run(missing, runs, executor, progress, held))
            records.update({key: dict(record, reused=True) for key, record in runs.finished(held).items()})
            for key in set(held) - set(records):  # still running in the sweep that holds it
                records[key] = {"key": key, "config": missing[key], "status": "running", "result": None,
                                "error": _holder(held[key]), "reused": False}
    return [records[key] for key in keys]


def _holder(claim: dict) -> str:
    """Which sweep holds a claimed run, in words."""
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(claim["started"]))
    return f"held by another sweep (process {claim['pid']} on {claim['host']}, since {started})"


MAX_POOL_RESTARTS = 3
"""How many times a sweep replaces a local process pool whose worker died (killed, out of memory) before it
stores the runs that were in flight as failed."""


def _run(missing: dict[str, dict], runs: RunStore, executor: Executor | None, progress: bool,
         held: dict[str, dict]) -> dict[str, dict]:
    """Run the ``missing`` configurations (by key) on ``executor``, storing each as it finishes; the runs
    another sweep holds go into ``held`` (key -> its claim), those it stored meanwhile come back reused.

    When a worker of a process pool dies, the pool breaks and every run in it
    fails with ``BrokenProcessPool``: those runs are not failures of their own,
    so a fresh pool of the same size runs them again (at most ``MAX_POOL_RESTARTS`` times).
    """
    owned = executor is None
    if owned:
        executor = local_pool(min(os.cpu_count() or 1, len(missing)))
    finished, pending, restarts = {}, dict(missing), 0
    try:
        with tqdm(total=len(missing), disable=not progress, desc="sweep", unit="run", file=sys.stderr) as bar:
            while pending:
                broken = _run_round(pending, runs, executor, finished, held, bar,
                                    give_up=restarts >= MAX_POOL_RESTARTS)
                if not broken:
                    break
                restarts += 1
                _discard_broken_pool(executor)
                executor, owned = local_pool(getattr(executor, "_max_workers", None)), True
    finally:
        if owned:
            # On an interrupt, do not wait for the runs in flight: what finished is stored.
            executor.shutdown(wait=not pending, cancel_futures=True)
    return finished


def _discard_broken_pool(pool: Executor) -> None:
    """Shut a broken process pool down and end its surviving workers.

    A worker that outlived the one that died may be blocked writing its result
    into a pipe nobody reads any more; the pool's manager thread joins it, and
    so would the interpreter at exit: without this, the process would hang.
    (Python 3.14 has ``ProcessPoolExecutor.kill_workers``; before it, the
    workers are only reachable as ``_processes``.)
    """
    workers = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for worker in workers:
        if worker.is_alive():
            worker.kill()


def _run_round(pending: dict, runs: RunStore, executor: Executor, finished: dict, held: dict, bar,
               give_up: bool) -> bool:
    """Claim and submit ``pending``, as many at a time as the executor has workers, and store each run as it
    finishes (removing it from ``pending``, as a run another sweep stored or holds is); True when the process
    pool broke, leaving in ``pending`` the runs to retry (``give_up``: store them as failed instead)."""
    waiting, futures, broken = list(pending), {}, False
    window = getattr(executor, "_max_workers", None) or len(pending)  # concurrent.futures pools say

    def submit_claimed() -> None:
        while waiting and len(futures) < window:
            key = waiting.pop(0)
            state, found = runs.claim(key)
            if state == "claimed":
                futures[executor.submit(run_config, pending[key])] = key
                continue
            if state == "finished":
                finished[key] = dict(found, reused=True)
            else:
                held[key] = found
            del pending[key]
            bar.update()

    try:
        submit_claimed()
    except BrokenProcessPool:
        return True
    try:
        while futures:
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            for future in done:
                key = futures.pop(future)
                if isinstance(future.exception(), BrokenProcessPool) and not give_up:
                    broken = True
                    continue
                outcome = _outcome(future)
                record = {"key": key, "config": pending[key], "status": outcome["status"],
                          "error": outcome["error"],
                          "result": None if outcome["result"] is None else json.loads(outcome["result"])}
                runs.write(record)
                finished[key] = dict(record, reused=False)
                del pending[key]
                failed = sum(r["status"] == "failed" for r in finished.values())
                if failed:
                    bar.set_postfix(failed=failed, refresh=False)
                bar.update()
            if not broken:
                try:
                    submit_claimed()
                except BrokenProcessPool:
                    broken = True
    finally:
        for future in futures:
            future.cancel()
    return broken


def _outcome(future: Future) -> dict:
    """What ``run_config`` returned, or the failure of the executor running it (a lost worker, ...)."""
    error = future.exception()
    if error is None:
        return future.result()
    if not isinstance(error, Exception):  # KeyboardInterrupt or SystemExit in a worker stops the sweep
        raise error
    return _failure(error)


def _failure(error: BaseException) -> dict:
    message = " ".join(str(error).split())
    return {"status": "failed", "error": f"{type(error).__name__}: {message}" if message else type(error).__name__,
            "result": None}


def _as_executor(executor) -> Executor | None:
    if executor is None or isinstance(executor, Executor):
        return executor
    if callable(getattr(executor, "get_executor", None)):  # a dask.distributed.Client
        return executor.get_executor()
    raise TypeError(f"executor must be a concurrent.futures.Executor or a dask.distributed.Client, "
                    f"got {type(executor).__name__}")


