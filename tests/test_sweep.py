"""Sweeps: grid expansion, stable keys, the store, executors, resuming, and the CLI's errors.

Every run here is a real ``fpsim.train`` with a tiny network and few steps, and
the reference is always the same configuration trained directly, one by one.
"""

import importlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fpsim
from fpsim.cli import main
from fpsim.runs.sweep import (config_key, expand_grid, local_pool, normalize_config, read_grid, run_config,
                         sweep)

sweep_module = importlib.import_module("fpsim.runs.sweep")  # the module: fpsim.runs.sweep is the function
ROOT = Path(__file__).resolve().parents[1]
TINY = {"hidden": [16], "steps": 20, "batch_size": 32}
GRID = {"policy": ["fp32", "bf16-sr"], "seed": [0, 1], **{name: [value] for name, value in TINY.items()}}


def as_json(result: dict) -> str:
    """Canonical text of a result: equal texts mean bit-identical floats (JSON writes round-trip decimals)."""
    return json.dumps(result, sort_keys=True)


@pytest.fixture(scope="module")
def one_by_one():
    """Each configuration of GRID trained directly in this process: key -> result JSON."""
    return {config_key(config): as_json(fpsim.train(**config, progress=False).to_dict())
            for config in expand_grid(GRID)}


def write_grid(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fpsim", "sweep", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- grids and keys ---------------------------------------------------------------------------------

def test_expand_grid_is_the_product_with_the_last_key_fastest():
    assert expand_grid({"policy": ["a", "b"], "seed": [0, 1, 2], "hidden": [[16, 16]]}) == [
        {"policy": p, "seed": s, "hidden": [16, 16]} for p in ("a", "b") for s in (0, 1, 2)]


@pytest.mark.parametrize("grid, message", [
    ({"policy": "fp32"}, "must be a list"),
    ({"policy": ["fp32"], "hidden": (16,)}, "must be a list"),
    ({"policy": ["fp32"], "seed": []}, "empty"),
])
def test_expand_grid_refuses_values_that_are_not_lists(grid, message):
    with pytest.raises(ValueError, match=message):
        expand_grid(grid)


def test_config_key_names_the_full_configuration():
    base = {"policy": "fp32", "seed": 3, **TINY}
    key = config_key(base)
    assert len(key) == 64 and int(key, 16) >= 0
    assert config_key(dict(reversed(list(base.items())))) == key, "order of the options"
    assert config_key({**base, "lr": 0.05, "hidden": (16,)}) == key, "explicit default, tuple for list"
    assert config_key({**base, "grad_scale": 1}) == config_key({**base, "grad_scale": 1.0}), "int for float"
    assert config_key({**base, "policy": {"preset": "fp32"}}) == key, "a preset by name or as fields"
    assert config_key({**base, "seed": 4}) != key
    assert config_key({**base, "lr": 0.05000000000000001}) != key, "one ulp of lr"
    assert config_key({**base, "policy": {"preset": "fp32", "loss_scale": 2.0}}) != key
    assert normalize_config(base)["lr"] == 0.05 and "progress" not in normalize_config(base)


def test_config_key_includes_the_numerics_version(monkeypatch):
    config = {"policy": "fp32", **TINY}
    key = config_key(config)
    monkeypatch.setattr(sweep_module, "numerics_version", lambda: "another version")
    assert config_key(config) != key


def test_config_key_is_the_same_in_another_process():
    config = {"policy": "bf16-sr", "seed": 7, "lr": 0.1, **TINY}
    code = f"from fpsim.runs.sweep import config_key; print(config_key({config!r}))"
    other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert other.stdout.strip() == config_key(config)


def test_config_key_includes_a_hash_of_the_numerics_source(monkeypatch):
    config = {"policy": "fp32", **TINY}
    key = config_key(config)
    assert sweep_module.numerics_version() == f"{fpsim.__version__}+{sweep_module.numerics_source_hash()}"
    monkeypatch.setattr(sweep_module, "numerics_source_hash", lambda: "0" * 16)
    assert config_key(config) != key


def test_numerics_source_hash_changes_with_any_byte_of_the_numerics_layers(tmp_path, monkeypatch):
    import shutil
    package = tmp_path / "fpsim"
    shutil.copytree(ROOT / "fpsim", package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(sweep_module, "__file__", str(package / "runs" / "sweep.py"))
    source_hash = sweep_module.numerics_source_hash.__wrapped__  # uncached
    assert source_hash() == sweep_module.numerics_source_hash()
    with open(package / "engines" / "mlp.py", "ab") as model:
        model.write(b"\n")
    changed = source_hash()
    assert changed != sweep_module.numerics_source_hash()
    (package / "sim" / "new_module.py").write_text("X = 1\n")  # a module nobody listed
    assert source_hash() != changed
    (package / "report" / "notes.py").write_text("X = 1\n")  # outside the numerics layers
    assert source_hash() == source_hash()


def fpsim_imports(path: Path) -> set:
    """The fpsim modules (as paths below fpsim/) that the module at ``path`` imports relatively."""
    import ast
    found = set()
    package = path.parent
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            base = package
            for _ in range(node.level - 1):
                base = base.parent
            names = [node.module] if node.module else [alias.name for alias in node.names]
            for name in names:
                target = base.joinpath(*name.split("."))
                for candidate in (target.with_suffix(".py"), target / "__init__.py"):
                    if candidate.exists():
                        found.add(candidate)
    return found


def test_numerics_layers_hold_everything_training_imports():
    package = ROOT / "fpsim"
    closure, todo = set(), [package / "engines" / "numpy_engine.py"]
    while todo:
        path = todo.pop()
        if path not in closure:
            closure.add(path)
            todo.extend(fpsim_imports(path))
    layers = {path.relative_to(package).parts[0] for path in closure if path.parent != package}
    assert layers <= set(sweep_module.NUMERICS_LAYERS), layers - set(sweep_module.NUMERICS_LAYERS)


def test_a_stored_run_is_not_reused_by_other_numerics(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor
    store, config = tmp_path / "runs.sqlite", {"policy": "fp32", **TINY}
    with ThreadPoolExecutor(1) as executor:
        def run() -> bool:
            record, = sweep([config], store=store, executor=executor, progress=False)
            assert record["status"] == "ok"
            return record["reused"]
        assert [run(), run()] == [False, True]
        monkeypatch.setattr(sweep_module, "numerics_source_hash", lambda: "0" * 16)
        assert [run(), run()] == [False, True]
    assert len(fpsim.load_sweep(store)) == 2


@pytest.mark.parametrize("options", [{"policy": name} for name in fpsim.POLICIES] + [
    {"policy": "fp16-mixed", "loss_scale": 1024},
    {"policy": "fp16-mixed", "loss_scale": "dynamic", "scaler": {"growth_interval": 1}},
    {"policy": {"preset": "fp16-mixed", "loss_scale": 256}, "loss_scale": 8.0},
    {"policy": "bf16-mixed", "optimizer": "adam", "betas": (0.8, 0.99), "grad_scale": 2, "hidden": (4,)},
])
def test_a_result_config_reruns_the_same_run(options):
    first = fpsim.train(**options, steps=2, batch_size=16, progress=False)
    again = fpsim.train(**first.config, progress=False)
    assert again.config == first.config
    assert again.policy == first.policy
    assert again.to_dict() == first.to_dict()
    assert config_key(first.config) == config_key({**options, "steps": 2, "batch_size": 16})


@pytest.mark.parametrize("config, error, message", [
    ({"policy": "fp32", "polcy": "fp16"}, ValueError, "unknown training option 'polcy'"),
    ({"policy": "fp32", "progress": True}, ValueError, "unknown training option 'progress'"),
    ({"seed": 0}, ValueError, "needs a 'policy'"),
    ({"policy": "fp33"}, ValueError, "unknown policy"),
    ({"policy": "fp32", "seed": object()}, ValueError, "seed must be an integer"),
    ({"policy": "fp32", "data": {"name": "teacher", "noise": object()}}, TypeError, "JSON"),
])
def test_bad_configuration_is_refused_before_anything_runs(tmp_path, config, error, message):
    store = tmp_path / "runs.sqlite"
    with pytest.raises(error, match=message):
        sweep([{"policy": "fp32", **TINY}, config], store=store, progress=False)
    assert not store.exists()


def test_example_grid_is_valid():
    configs = expand_grid(read_grid(ROOT / "analyses" / "grids" / "example.toml"))
    assert len({config_key(config) for config in configs}) == len(configs) > 1


# --- executors give the one-by-one results ------------------------------------------------------------

def test_local_pool_gives_the_one_by_one_results(tmp_path, one_by_one):
    store = tmp_path / "runs.sqlite"
    records = sweep(GRID, store=store, progress=False)  # the default executor: a local pool
    assert [r["key"] for r in records] == list(one_by_one)
    assert all(r["status"] == "ok" and r["error"] is None and not r["reused"] for r in records)
    assert {r["key"]: as_json(r["result"]) for r in records} == one_by_one
    stored = fpsim.load_sweep(store)
    assert {r["key"]: as_json(r["result"]) for r in stored} == one_by_one
    assert all(set(r) == {"key", "config", "status", "error", "result"} for r in stored)
    assert all(config_key(r["config"]) == r["key"] for r in stored)
    assert "test_accuracy" in stored[0]["result"]
    result_type = type(fpsim.train(**expand_grid(GRID)[0], progress=False))
    assert as_json(result_type.from_dict(records[0]["result"]).to_dict()) == one_by_one[records[0]["key"]]


def test_dask_local_cluster_gives_the_one_by_one_results(tmp_path, one_by_one):
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        records = sweep(GRID, store=None, executor=client, progress=False)
        assert {r["key"]: as_json(r["result"]) for r in records} == one_by_one
        # the command line reaches the same cluster by its address
        grid = write_grid(tmp_path / "grid.toml", 'policy = ["fp32", "bf16-sr"]\nseed = [0, 1]\n'
                                                  'hidden = [[16]]\nsteps = [20]\nbatch_size = [32]\n')
        store = tmp_path / "runs.sqlite"
        assert main(["sweep", str(grid), "--store", str(store), "--scheduler", cluster.scheduler_address, "-q"]) == 0
    assert {r["key"]: as_json(r["result"]) for r in fpsim.load_sweep(store)} == one_by_one


def test_any_executor_and_duplicates_run_once(one_by_one):
    from concurrent.futures import ThreadPoolExecutor
    configs = expand_grid(GRID)
    with ThreadPoolExecutor(2) as executor:
        records = sweep([configs[1], configs[0], configs[1]], executor=executor, progress=False)
    assert [r["key"] for r in records] == [config_key(c) for c in (configs[1], configs[0], configs[1])]
    assert records[0] == records[2]
    assert all(as_json(r["result"]) == one_by_one[r["key"]] for r in records)


# --- failures, resuming ------------------------------------------------------------------------------

def test_a_failed_run_is_stored_and_the_sweep_goes_on(tmp_path, one_by_one):
    store = tmp_path / "runs.sqlite"
    configs = expand_grid(GRID)[:2]
    bad = {"policy": "fp32", "data": "mnist:/no/such/mnist.npz", **TINY}  # valid, fails when it runs
    assert run_config(bad)["status"] == "failed"
    with local_pool(2) as pool:
        records = sweep([configs[0], bad, configs[1]], store=store, executor=pool, progress=False)
    assert [r["status"] for r in records] == ["ok", "failed", "ok"]
    assert records[1]["result"] is None and "/no/such/mnist.npz" in records[1]["error"]
    assert "\n" not in records[1]["error"]
    assert as_json(records[2]["result"]) == one_by_one[records[2]["key"]]
    # a second sweep reuses the finished runs and retries the failed one, which replaces its row
    again = sweep([configs[0], bad, configs[1]], store=store, progress=False)
    assert [r["reused"] for r in again] == [True, False, True] and again[1]["status"] == "failed"
    stored = {r["key"]: r for r in fpsim.load_sweep(store)}
    assert len(stored) == len(fpsim.load_sweep(store)) == 3
    assert [stored[r["key"]]["status"] for r in records] == ["ok", "failed", "ok"]


def test_a_killed_sweep_resumes_with_only_the_missing_runs(tmp_path, capsys):
    grid = write_grid(tmp_path / "grid.toml", 'policy = ["fp32"]\nseed = [0, 1, 2, 3, 4, 5]\n'
                                              'hidden = [[16]]\nsteps = [60]\nbatch_size = [32]\n')
    store = tmp_path / "runs.sqlite"
    process = subprocess.Popen([sys.executable, "-m", "fpsim", "sweep", str(grid), "--store", str(store),
                                "--workers", "1", "-q"], cwd=ROOT, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        stored = []
        while len(stored) < 2 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
            try:
                stored = fpsim.load_sweep(store)
            except (FileNotFoundError, ValueError):  # not created yet, or being written
                pass
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the coordinator and its worker, mid-sweep
        process.wait()
    before = fpsim.load_sweep(store)
    assert 2 <= len(before) < 6, "the sweep was killed partway"
    assert main(["sweep", str(grid), "--store", str(store), "--workers", "2", "-q"]) == 0
    assert f"6 runs in {store}: {6 - len(before)} done, {len(before)} skipped" in capsys.readouterr().out
    after = fpsim.load_sweep(store)
    assert len(after) == len({r["key"] for r in after}) == 6
    assert after[:len(before)] == before, "finished runs are kept as they were"
    assert {r["key"] for r in after} == {config_key(c) for c in expand_grid(read_grid(grid))}


# --- the command line's errors leave the store as it was ----------------------------------------------

@pytest.fixture(scope="module")
def filled_store(tmp_path_factory):
    store = tmp_path_factory.mktemp("store") / "runs.sqlite"
    sweep([{"policy": "fp32", **TINY}], store=store, progress=False)
    return store


@pytest.mark.parametrize("grid_text, extra, message", [
    ('policy = ["fp32"\n', (), "malformed grid"),
    ('policy = ["fp32"]\nlearning_rate = [0.1]\n', (), "unknown training option 'learning_rate'"),
    ('policy = "fp32"\n', (), "must be a list"),
    ('policy = ["fp32"]\nseed = [5]\n', ("--scheduler", "tcp://127.0.0.1:{port}", "--connect-timeout", "1"),
     "cannot reach the Dask scheduler"),
])
def test_cli_error_is_one_line_exit_2_and_the_store_is_untouched(tmp_path, filled_store, grid_text, extra,
                                                                 message):
    grid = write_grid(tmp_path / "grid.toml", grid_text)
    before = filled_store.read_bytes()
    done = cli(str(grid), "--store", str(filled_store), *(a.format(port=closed_port()) for a in extra))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("fpsim: error: ") and message in done.stderr
    assert filled_store.read_bytes() == before


def test_a_file_that_is_not_a_store_is_refused_and_kept(tmp_path):
    notes = tmp_path / "notes.sqlite"
    notes.write_text("not a database\n")
    with pytest.raises(ValueError, match="not a usable sweep store"):
        sweep([{"policy": "fp32", **TINY}], store=notes, progress=False)
    with pytest.raises(ValueError, match="not a usable sweep store"):
        fpsim.load_sweep(notes)
    assert notes.read_text() == "not a database\n"
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE runs (id INTEGER)")
    connection.close()
    with pytest.raises(ValueError, match="not a sweep store"):
        sweep([{"policy": "fp32", **TINY}], store=other, progress=False)
    with pytest.raises(FileNotFoundError):
        fpsim.load_sweep(tmp_path / "missing.sqlite")
