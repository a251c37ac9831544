"""Hardening, second round: policies, training options, the train command's Ctrl-C and sweeps sharing a store.

Each test failed before its fix: a partial ``scaling`` over a preset replaced the preset's recipes, margins and
history lengths failed at the first step or ran out of memory, ``--policy FILE.json`` was not read, options a
torch model ignores were dropped silently, ``lr`` beyond FP32 crashed the torch engine, loss scales had two
rules, Ctrl-C kept nothing, and two sweeps on one store both ran every run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import fpsim
from fpsim.cli import build_parser, main
from fpsim.engines import TrainingInterrupted
from fpsim.numerics.formats import FP32, Format
from fpsim.sim.config import TrainConfig
from fpsim.sim.loss_scaling import LossScaler
from fpsim.sim.policy import POLICIES, SCALED_POLICIES, Policy
from fpsim.sim.scaling import MAX_HISTORY_LEN, DelayedScaler, ScaledCasts, Scaling

ROOT = Path(__file__).resolve().parents[1]
TINY = {"hidden": [4], "steps": 3, "batch_size": 16, "shadow_every": 0, "progress": False}
TINY_CLI = ["--hidden", "4", "--steps", "3", "--batch-size", "16", "--shadow-every", "0", "--no-progress"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("fpsim: error: ") and err.count("\n") == 1, err
    return err


# --- W7: a partial scaling dict over a preset; names and describe() ---------------------------------------------

def help_policy_example() -> dict:
    """The JSON policy that ``fpsim train --help`` shows."""
    train = next(action for action in build_parser()._subparsers._group_actions[0].choices["train"]._actions
                 if "--policy" in action.option_strings)
    return json.loads(re.search(r"'(\{.*\})'", train.help).group(1))


def test_the_help_example_keeps_the_presets_weight_and_activation_scaling():
    example = help_policy_example()
    policy, preset = Policy.coerce(example), SCALED_POLICIES[example["preset"]]
    recipes, preset_recipes = ScaledCasts(policy).recipes, ScaledCasts(preset).recipes
    assert recipes["params"] == preset_recipes["params"] and recipes["activations"] == preset_recipes["activations"]
    assert recipes["gradients"] == Scaling.coerce(example["scaling"]["gradients"]) != preset_recipes["gradients"]
    assert policy.name == f"{preset.name}*" and policy.describe() != preset.describe()
    assert "gradients scaling mxfp8_e4m3 (scale rounding ceil)" in policy.describe()


def test_a_kind_given_replaces_only_that_kinds_scaling():
    policy = Policy.coerce({"preset": "fp8-delayed", "scaling": {"gradients": "tensor"}})
    assert dict(policy.scaling) == {"params": Scaling.delayed(), "activations": Scaling.delayed(),
                                    "gradients": Scaling("tensor")}
    unscaled = Policy.coerce({"preset": "fp8-current", "scaling": {"params": "none"}})
    assert dict(unscaled.scaling) == {"activations": Scaling("tensor"), "gradients": Scaling("tensor")}
    assert Policy.coerce({"preset": "mxfp8", "scaling": None}).scaling is None  # None drops the recipe


def test_a_preset_given_its_own_values_is_the_preset_and_a_changed_one_is_not():
    assert Policy.coerce({"preset": "fp16-amp", "loss_scale": "dynamic"}) == Policy.preset("fp16-amp")
    assert Policy.coerce({"preset": "mxfp8", "scaling": {"params": Scaling.block_of("mxfp8_e4m3")}}).name == "mxfp8"
    assert Policy.coerce({"preset": "fp16-amp", "loss_scale": 8.0}).name == "fp16-amp*"


def test_scaling_empty_and_none_train_differently_and_describe_differently():
    base = {"params": "e4m3", "activations": "e4m3", "gradients": "e5m2", "master": "fp32"}
    empty, none = Policy(**base, scaling={}), Policy(**base, scaling=None)
    assert empty.describe() != none.describe()
    assert "params scaling none" in empty.describe() and "scaling" not in none.describe()
    assert empty == Policy(**base, scaling={"params": "none", "gradients": Scaling("none")})  # one recipe
    runs = [fpsim.train(p, **TINY) for p in (empty, none)]
    assert runs[0].scaling and not runs[1].scaling  # the recipe's placement (products' operands) vs every tensor


def with_recipe(preset: str, kind: str, recipe: Scaling) -> Policy:
    """``preset`` with ``kind``'s recipe replaced (and the preset's name): it differs in that recipe only."""
    policy = SCALED_POLICIES[preset]
    return dataclasses.replace(policy, scaling={**dict(policy.scaling), kind: recipe})


@pytest.mark.parametrize("one, other", [
    (with_recipe("fp8-delayed", "gradients", Scaling.delayed(margin=1)), SCALED_POLICIES["fp8-delayed"]),
    (with_recipe("fp8-delayed", "gradients", Scaling.delayed(history_len=16)), SCALED_POLICIES["fp8-delayed"]),
    (with_recipe("fp8-delayed", "params", Scaling.delayed(amax_compute="most_recent")),
     SCALED_POLICIES["fp8-delayed"]),
    (with_recipe("mxfp8", "params", Scaling.block_of("mxfp8_e4m3", "even")), SCALED_POLICIES["mxfp8"]),
    (dataclasses.replace(POLICIES["fp16-mixed"], params=Format("fp16", 5, 10, subnormals=False)),
     POLICIES["fp16-mixed"]),
])
def test_describe_tells_apart_policies_that_train_differently(one, other):
    assert one != other and one.name == other.name
    assert one.describe() != other.describe()


# --- delayed scaling: margin and history length -------------------------------------------------------------------

@pytest.mark.parametrize("margin", [200, -200, 1e308, -1e308, 31, -120])
def test_a_margin_beyond_what_the_scale_can_take_is_refused_when_the_policy_is_made(margin):
    spec = {"preset": "fp8-delayed", "scaling": {"activations": {"kind": "delayed", "margin": margin}}}
    with pytest.raises(ValueError, match=r"^margin must .* e4m3 .* from -119 to 30 do; got") as caught:
        Policy.coerce(spec)
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="margin"):
        DelayedScaler(Scaling.delayed(margin=margin), "e4m3")


@pytest.mark.parametrize("margin", [-119, 30])
def test_the_margins_at_the_ends_of_the_range_train(margin):
    spec = {"preset": "fp8-delayed", "scaling": {"activations": {"kind": "delayed", "margin": margin}}}
    assert fpsim.train(spec, **TINY).steps_run == TINY["steps"]


def test_an_amax_too_small_for_the_fp32_scale_gives_fp32_max_as_transformer_engine_does():
    scaler = DelayedScaler(Scaling.delayed(), "e4m3")
    scaler.record(np.float32(1e-40))
    with np.errstate(over="ignore"):
        assert np.isinf(np.float32(448) / np.float32(1e-40))  # the scale TE's rule computes is beyond FP32
    assert scaler.update() == np.float32(FP32.max)
    casts = ScaledCasts(Policy.coerce({"preset": "fp8-delayed"}))
    tiny = np.full(4, 1e-40, dtype=np.float32)
    casts.cast(tiny, "activations", "m")
    casts.end_step()  # the next cast runs with the FP32-max scale instead of failing
    assert np.array_equal(casts.cast(tiny, "activations", "m"), fpsim.quantize(tiny, "e4m3", scale=FP32.max))


@pytest.mark.parametrize("history_len, message", [
    (2_000_000_000, "7.45 GiB per module and operand"), (10**11, "373 GiB"), (MAX_HISTORY_LEN + 1, "4 MiB"),
    (1e11, "history_len must be a positive integer")])
def test_a_history_too_long_for_memory_is_refused_with_the_bytes_it_needs(history_len, message):
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        Policy.coerce({"preset": "fp8-delayed", "scaling": {"params": {"kind": "delayed",
                                                                        "history_len": history_len}}})
    assert str(caught.value).startswith("history_len must")
    assert Scaling.delayed(history_len=np.int64(MAX_HISTORY_LEN)).history_len == MAX_HISTORY_LEN


# --- --policy FILE.json ----------------------------------------------------------------------------------------------

def test_policy_takes_a_json_file(tmp_path, capsys):
    path = tmp_path / "good.json"
    path.write_text(json.dumps({"preset": "fp16-mixed", "loss_scale": 1024}))
    out = tmp_path / "result.json"
    assert main(["train", "--policy", str(path), *TINY_CLI, "--out", str(out)]) == 0
    result = fpsim.TrainResult.load(out)
    assert result.policy == "fp16-mixed*" and result.config["policy"]["loss_scale"] == 1024.0
    named = tmp_path / "mine.json"
    named.write_text(json.dumps({"params": "bf16", "activations": "bf16", "gradients": "bf16", "master": "fp32"}))
    assert fpsim.train(str(named), **TINY).policy == "mine"
    assert fpsim.sweep([{"policy": str(path), **{k: v for k, v in TINY.items() if k != "progress"}}],
                       progress=False)[0]["config"]["policy"] == Policy.coerce(str(path)).to_dict()


@pytest.mark.parametrize("content, message", [
    (None, "no policy file"), ('{"preset": ', "is not valid JSON"), ('["fp32"]', "must hold a JSON dict"),
    ('{"preset": "fp64"}', "unknown policy 'fp64'"), ('{"colour": 1}', "unknown policy field(s) colour"),
    (b"\xff\xfe", "not UTF-8")])
def test_a_bad_policy_file_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "policy.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    assert main(["train", "--policy", str(path), *TINY_CLI]) == 2
    assert message in one_line_error(capsys)


def test_a_policy_path_that_is_not_a_regular_file_is_not_read(capsys):
    assert main(["train", "--policy", "/dev/zero", *TINY_CLI]) == 2  # would never end; it is no preset either
    assert "unknown policy '/dev/zero'" in one_line_error(capsys)


# --- options a model does not read; numbers FP32 cannot hold; one loss-scale rule -----------------------------------

def test_hidden_is_refused_for_a_torch_model():
    for model in ("cnn", "char-gpt", lambda: None):
        with pytest.raises(ValueError, match="hidden sets the MLP's layer widths"):
            TrainConfig(policy="fp32", model=model, hidden=(4,))
    assert TrainConfig(policy="fp32", model="cnn").hidden is None
    assert TrainConfig(policy="fp32").hidden == (128, 128, 128)


def test_the_cli_refuses_options_a_model_ignores_and_hands_the_others_over(monkeypatch, capsys):
    assert main(["train", "--policy", "fp32", "--model", "cnn", "--hidden", "8", "--no-progress"]) == 2
    assert "hidden" in one_line_error(capsys)
    assert main(["train", "--policy", "fp32", "--momentum", "0.5", "--no-progress"]) == 2
    assert "--momentum" in one_line_error(capsys)
    given = {}

    def recording_train(policy, **options):
        given.update(options)
        raise ValueError("stop here")

    monkeypatch.setattr(fpsim, "train", recording_train)
    assert main(["train", "--policy", "fp32", "--model", "cnn", "--shadow-every", "7", "--no-progress"]) == 2
    assert given["shadow_every"] == 7 and "hidden" not in given


def test_shadow_every_reaches_a_torch_model(capsys):
    pytest.importorskip("torch")
    result = fpsim.train("fp32", model="cnn", steps=2, batch_size=4, shadow_every=1, record_every=0,
                         progress=False)
    assert len(result.shadow) == 2


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("options, message", [
    ({"lr": 1e39}, "lr must be a positive finite number within FP32's range"),
    ({"lr": 1e-50}, "lr must be a positive finite number within FP32's range"),
    ({"lr": 1.0, "grad_scale": 2.0**-140}, "lr / grad_scale = 1.39e+42"),
    ({"optimizer": "adam", "grad_scale": 2.0**200}, "eps * grad_scale"),
])
def test_numbers_the_engines_compute_in_fp32_are_refused_beyond_it_by_both(model, options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        fpsim.train("fp32", model=model, steps=2, progress=False, **options)


def test_lr_at_fp32_max_is_a_run_that_diverges_not_a_crash():
    assert fpsim.train("fp32", lr=float(FP32.max), **TINY).status == "diverged"


def test_one_loss_scale_rule_for_policies_and_runs():
    assert Policy(loss_scale=" Dynamic") == Policy(loss_scale="dynamic")
    assert TrainConfig(policy="fp16-mixed", loss_scale="DYNAMIC").loss_scale == "dynamic"
    assert Policy(loss_scale=np.int64(8)).loss_scale == 8.0 == TrainConfig(policy="fp32", loss_scale=8).loss_scale
    for bad in ("auto", 0, -1.0, float("inf"), True):
        with pytest.raises(ValueError) as in_policy:
            Policy(loss_scale=bad)
        with pytest.raises(ValueError) as in_config:
            TrainConfig(policy="fp32", loss_scale=bad)
        assert str(in_policy.value) == str(in_config.value)


def test_the_cli_takes_dynamic_in_any_case(capsys):
    assert main(["train", "--policy", "fp16-mixed", "--loss-scale", "Dynamic", *TINY_CLI]) == 0


def test_scaler_counts_may_be_numpy_integers():
    scaler = LossScaler(growth_interval=np.int64(2), hysteresis=np.int32(2))
    assert (scaler.growth_interval, scaler.hysteresis) == (2, 2) and type(scaler.growth_interval) is int
    assert LossScaler.for_policy("dynamic", {"hysteresis": np.int64(3)}).hysteresis == 3
    with pytest.raises(ValueError, match="growth_interval must be an integer >= 1"):
        LossScaler(growth_interval=1.5)


# --- Ctrl-C in fpsim train ----------------------------------------------------------------------------------------

@pytest.fixture
def ctrl_c_at_step_3(monkeypatch):
    """The training step raises KeyboardInterrupt at step 3, as Ctrl-C would."""
    from fpsim.sim.step import TrainingStep

    take_step = TrainingStep.__call__

    def interrupted(self, step):
        if step == 3:
            raise KeyboardInterrupt
        return take_step(self, step)

    monkeypatch.setattr(TrainingStep, "__call__", interrupted)


def test_ctrl_c_keeps_the_steps_taken_as_an_interrupted_result(ctrl_c_at_step_3, tmp_path, capsys):
    out = tmp_path / "partial.json"
    assert main(["train", "--policy", "fp32", "--hidden", "4", "--steps", "50", "--no-progress",
                 "--out", str(out)]) == 130
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("fpsim: interrupted at step 3 of 50; the partial result")
    assert str(out) in captured.err
    partial = fpsim.TrainResult.load(out)
    assert partial.status == "interrupted" and partial.steps_run == 3 == len(partial.history)
    assert [r["step"] for r in partial.history] == [0, 1, 2] and not partial.diverged


def test_ctrl_c_without_out_says_nothing_was_kept(ctrl_c_at_step_3, capsys):
    assert main(["train", "--policy", "fp32", "--hidden", "4", "--steps", "50", "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted at step 3 of 50; nothing was kept" in err


def test_fpsim_train_raises_a_keyboard_interrupt_that_holds_the_partial_result(ctrl_c_at_step_3):
    with pytest.raises(TrainingInterrupted) as caught:
        fpsim.train("fp32", hidden=[4], steps=50, progress=False)
    assert isinstance(caught.value, KeyboardInterrupt) and caught.value.result.status == "interrupted"
    assert type(pickle.loads(pickle.dumps(caught.value))) is KeyboardInterrupt  # light across processes
    # a sweep's worker stops on it rather than storing a partial run
    with ThreadPoolExecutor(1) as executor, pytest.raises(KeyboardInterrupt):
        fpsim.sweep([{"policy": "fp32", "hidden": [4], "steps": 50}], executor=executor, progress=False)


def test_a_real_ctrl_c_during_fpsim_train(tmp_path):
    out = tmp_path / "partial.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "fpsim", "train", "--policy", "fp32", "--hidden", "4", "--steps", "1000000",
         "--shadow-every", "0", "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a background job inherits it ignored
    try:
        seen = b""
        while not re.search(rb"\| *[1-9]\d*/1000000", seen):  # the progress bar counts steps: they are running
            chunk = process.stderr.read1(256)
            assert chunk, "the run ended before it could be interrupted"
            seen += chunk
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
        process.wait()
    lines = [line for line in re.split(r"[\r\n]", stderr.decode()) if line.startswith("fpsim")]
    assert process.returncode == 130 and stdout == b""
    assert len(lines) == 1 and lines[0].startswith("fpsim: interrupted at step ")
    partial = fpsim.TrainResult.load(out)
    assert partial.status == "interrupted" and 0 <= partial.steps_run == len(partial.history) < 1000000


# --- sweeps sharing a store ------------------------------------------------------------------------------------

SWEEP_RUN = {"policy": "fp32", "hidden": [4], "steps": 5, "batch_size": 16, "shadow_every": 0}


class RecordingPool(ThreadPoolExecutor):
    """One worker thread that notes each configuration it runs; with ``gate``, the first run starts, sets
    ``gate[0]`` and waits for ``gate[1]`` (so another sweep can work while it holds its claim)."""

    def __init__(self, ran: list, gate=None):
        super().__init__(1)
        self.ran, self.gate = ran, gate

    def submit(self, fn, config):
        def job():
            if self.gate is not None and not self.gate[0].is_set():
                self.gate[0].set()
                assert self.gate[1].wait(120)
            self.ran.append(config["seed"])
            return fn(config)
        return super().submit(job)


def claims_of(store) -> list:
    with sqlite3.connect(store) as connection:
        rows = connection.execute("SELECT key, owner, host, pid FROM claims").fetchall()
    connection.close()
    return rows


def test_two_sweeps_on_one_store_run_each_run_once(tmp_path):
    store = tmp_path / "runs.sqlite"
    configs = [{**SWEEP_RUN, "seed": seed} for seed in range(4)]
    started, release = threading.Event(), threading.Event()
    first_ran, second_ran, first = [], [], {}

    def first_sweep():
        with RecordingPool(first_ran, (started, release)) as pool:
            first["records"] = fpsim.sweep(configs, store=store, executor=pool, progress=False)

    thread = threading.Thread(target=first_sweep)
    thread.start()
    try:
        assert started.wait(120), "the first sweep started its first run"
        with RecordingPool(second_ran) as pool:
            second = fpsim.sweep(configs, store=store, executor=pool, progress=False)
    finally:
        release.set()
        thread.join(120)
    assert first_ran == [0] and second_ran == [1, 2, 3], "each run ran once, in one of the sweeps"
    assert second[0]["status"] == "running" and second[0]["result"] is None
    assert second[0]["error"].startswith(f"held by another sweep (process {os.getpid()} on ")
    assert [r["status"] for r in second[1:]] == ["ok"] * 3 and not any(r["reused"] for r in second)
    records = first["records"]
    assert [r["status"] for r in records] == ["ok"] * 4 and [r["reused"] for r in records] == [False, True, True, True]
    assert [r["result"] for r in records[1:]] == [r["result"] for r in second[1:]]
    assert len(fpsim.load_sweep(store)) == 4 and claims_of(store) == []


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_claim_of_a_dead_sweep_is_taken_over_and_one_from_another_host_is_left(tmp_path, capsys):
    from fpsim.runs.store import RunStore
    from fpsim.runs.sweep import config_key

    store = tmp_path / "runs.sqlite"
    configs = [{**SWEEP_RUN, "seed": seed} for seed in range(2)]
    with RunStore(store) as runs:
        here = runs.host
    with sqlite3.connect(store) as connection:
        connection.executemany("INSERT INTO claims VALUES (?, ?, ?, ?, ?)", [
            (config_key(configs[0]), "killed", here, dead_pid(), 0.0),
            (config_key(configs[1]), "elsewhere", here + "-other", os.getpid(), 0.0)])
    connection.close()
    grid = tmp_path / "grid.toml"
    grid.write_text('policy = ["fp32"]\nhidden = [[4]]\nsteps = [5]\nbatch_size = [16]\nshadow_every = [0]\n'
                    'seed = [0, 1]\n')
    assert main(["sweep", str(grid), "--store", str(store), "--workers", "1", "-q"]) == 0
    out = capsys.readouterr().out
    assert f"2 runs in {store}: 1 done, 0 skipped (already stored), 0 failed, 1 left to another sweep" in out
    assert f"running elsewhere policy=fp32" in out and f"on {here}-other, since" in out
    assert [r["config"]["seed"] for r in fpsim.load_sweep(store)] == [0]
    assert [owner for _, owner, _, _ in claims_of(store)] == ["elsewhere"]


def test_an_interrupted_sweep_leaves_no_claim(ctrl_c_at_step_3, tmp_path):
    store = tmp_path / "runs.sqlite"
    with ThreadPoolExecutor(1) as executor, pytest.raises(KeyboardInterrupt):
        fpsim.sweep([{**SWEEP_RUN, "steps": 50}], store=store, executor=executor, progress=False)
    assert claims_of(store) == [] and fpsim.load_sweep(store) == []
