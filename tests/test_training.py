"""The training simulator: the effects each policy must show (lost updates in pure BF16 and their recovery by
stochastic rounding and Kahan summation; FP16 gradient underflow and its recovery by loss scaling or BF16; a loss
scale's underflow and overflow edges; divergence), determinism, recording, bad input.

The phenomena are checked on the digits data with smaller runs than the
defaults (two hidden layers of 64 instead of three of 128, 300 to 600 steps
instead of 1500) so that the whole file stays within its time budget; each
test's docstring says what it runs.  The same checks on the default model and
step count are behind ``@pytest.mark.slow``.
"""

import json
import math

import numpy as np
import pytest

import fpsim
from fpsim.cli import main
from fpsim.sim.recorder import STATS, Recorder
from fpsim.sim.vocabulary import RECORDED_KINDS as KINDS
from fpsim import TrainResult, train

SMALL = {"hidden": (64, 64), "progress": False}
TINY_GRADIENTS = 2.0 ** -20  # grad_scale that puts the FP32 weight gradients below FP16's 2^-24


def _below(histogram, exponent):
    """Share of a histogram's non-zero values with |x| < 2^exponent."""
    counts = np.array(histogram["counts"])
    exponents = histogram["min_exponent"] + np.arange(len(counts))
    return counts[exponents < exponent].sum() / counts.sum()


def _max_exponent(result, step, kinds=("activation_grads", "weight_grads"), layers=None):
    """floor(log2) of the largest value of ``kinds`` (in ``layers``, default all) before rounding at ``step``."""
    return max(h["min_exponent"] + len(h["counts"]) - 1 for h in result.histograms
               if h["step"] == step and h["kind"] in kinds and (layers is None or h["layer"] in layers))


# --- the effects each policy must show --------------------------------------------


def test_pure_bf16_loses_small_updates_and_sr_and_kahan_recover_them():
    """SGD at lr 0.003, 600 steps, hidden (64, 64), seed 0: pure BF16 loses most updates and lags
    bf16-mixed; stochastic rounding and Kahan summation recover at least 3/4 of the gap."""
    runs = {name: train(name, lr=0.003, steps=600, **SMALL)
            for name in ("bf16-pure", "bf16-mixed", "bf16-sr", "bf16-kahan")}
    pure, mixed = runs["bf16-pure"], runs["bf16-mixed"]
    assert pure.lost_update_fraction > 0.5
    assert mixed.lost_update_fraction < 0.05
    gap = mixed.test_accuracy - pure.test_accuracy
    assert gap > 0.15
    for name in ("bf16-sr", "bf16-kahan"):
        assert runs[name].test_accuracy >= pure.test_accuracy + 0.75 * gap, name
    # Kahan defers rather than loses: few updates vanish from weights + compensation
    assert runs["bf16-kahan"].lost_update_fraction < 0.2
    # stochastic rounding leaves most elements unchanged at each step but keeps their mean
    assert runs["bf16-sr"].lost_update_fraction > 0.5


@pytest.fixture(scope="module")
def fp32_tiny():
    """FP32 at grad_scale 2^-20, 300 steps, hidden (64, 64), histograms at steps 0, 150, 299."""
    return train("fp32", steps=300, grad_scale=TINY_GRADIENTS, histograms=True, histogram_steps=[0, 150, 299],
                 **SMALL)


def test_tiny_gradients_underflow_fp16_without_scaling_and_amp_or_bf16_recover(fp32_tiny):
    """grad_scale 2^-20, 300 SGD steps at lr 0.05, hidden (64, 64): the FP32 weight gradients lie below
    2^-24; fp16-mixed flushes them and learns little; fp16-amp and bf16-mixed match FP32."""
    weight_grads = [h for h in fp32_tiny.histograms if h["kind"] == "weight_grads"]
    for h in weight_grads:
        assert _below(h, -24) > 0.75, (h["step"], h["layer"])
    assert np.mean([_below(h, -24) for h in weight_grads]) > 0.9
    reference = fp32_tiny.test_accuracy
    assert reference > 0.9
    mixed = train("fp16-mixed", steps=300, grad_scale=TINY_GRADIENTS, **SMALL)
    assert mixed.weight_grad_underflow_fraction > 0.5
    assert mixed.activation_grad_underflow_fraction > 0.5
    assert mixed.test_accuracy < 0.3
    amp = train("fp16-amp", steps=300, grad_scale=TINY_GRADIENTS, **SMALL)
    assert abs(amp.test_accuracy - reference) <= 0.02
    assert amp.weight_grad_underflow_fraction < 0.05 and amp.skipped_steps == 0
    bf16 = train("bf16-mixed", steps=300, grad_scale=TINY_GRADIENTS, **SMALL)
    assert abs(bf16.test_accuracy - reference) <= 0.02
    assert bf16.weight_grad_underflow_fraction < 0.01 and bf16.activation_grad_underflow_fraction == 0


def test_constant_loss_scale_window_has_an_underflow_edge_and_an_overflow_edge(fp32_tiny):
    """fp16-mixed with constant loss scales 2^k, grad_scale 2^-20, 300 steps, hidden (64, 64).

    Bisection finds the lowest and highest k that reach FP32's accuracy (within
    3 points).  Below the window gradients underflow (no step skipped); above
    it they overflow (steps skipped).  The edges sit where the FP32 run's first
    step predicts: nothing can survive until 2^k times the largest output
    gradient exceeds 2^-25 (half FP16's smallest subnormal), and the upper edge
    is within two binades of where 2^k times the largest gradient passes 2^16.
    """
    reference = fp32_tiny.test_accuracy
    runs = {}

    def run(k):
        if k not in runs:
            runs[k] = train("fp16-mixed", steps=300, grad_scale=TINY_GRADIENTS, loss_scale=2.0 ** k, **SMALL)
        return runs[k]

    def works(k):
        return run(k).test_accuracy >= reference - 0.03

    def edge(failing, working):
        while abs(working - failing) > 1:
            middle = (failing + working) // 2
            failing, working = (failing, middle) if works(middle) else (middle, working)
        return working

    assert not works(0) and works(20) and not works(48)
    low, high = edge(0, 20), edge(48, 20)
    below, above = run(low - 1), run(high + 1)
    assert below.skipped_steps == 0 and below.activation_grad_underflow_fraction > 0.5
    assert above.skipped_steps > 0 and above.overflow_count > 0
    assert run(high).skipped_steps < 30
    output = _max_exponent(fp32_tiny, 0, kinds=("activation_grads",), layers=(2,))  # 2^e <= max < 2^(e+1)
    assert low >= -25 - output  # below: 2^k max|dL/dlogits| <= 2^-25, every gradient flushed
    largest = _max_exponent(fp32_tiny, 0)
    assert abs((high + 1) - (16 - largest)) <= 2  # 2^(16 - largest) * max|g| >= 2^16 overflows FP16
    assert high - low >= 16  # FP16 spans 40 binades, these gradients about 20


def test_divergence_is_marked_and_the_run_finishes():
    """A huge learning rate: without loss scaling the run stops at the first non-finite loss or weight;
    with dynamic scaling the steps are skipped until the scale reaches its floor, then it stops."""
    pure = train("fp16-pure", lr=50.0, steps=200, hidden=(32,), progress=False)
    assert pure.diverged and pure.diverged_step is not None and pure.steps_run == pure.diverged_step + 1 < 200
    assert pure.final_loss is None and len(pure.history) == pure.steps_run
    json.dumps(pure.to_dict(), allow_nan=False)  # no NaN leaks into the result
    amp = train("fp16-amp", lr=1000.0, steps=200, hidden=(32,), progress=False)
    assert amp.diverged and amp.min_scale_hits >= 1 and amp.final_loss_scale == 1.0
    assert amp.skipped_steps >= 16  # 2^16 backed off to the floor 1, one halving per skipped step
    assert amp.diverged_step == amp.min_scale_step


# --- determinism, results, recording ----------------------------------------------


def test_same_seed_gives_a_bit_identical_result_and_the_config_reproduces_it(tmp_path):
    """30 steps, hidden (16,), stochastic rounding and histograms on: everything random comes from the seed."""
    options = dict(steps=30, hidden=(16,), histograms=True, shadow_every=10, record_every=7, progress=False)
    first = train("bf16-sr", seed=3, **options)
    assert first.to_dict() == train("bf16-sr", seed=3, **options).to_dict()
    assert first.to_dict() != train("bf16-sr", seed=4, **options).to_dict()
    again = train(**first.config, progress=False)
    assert again.to_dict() == first.to_dict()
    path = tmp_path / "result.json"
    first.save(path)
    loaded = TrainResult.load(path)
    assert loaded == first and TrainResult.from_dict(json.loads(path.read_text())).to_dict() == first.to_dict()


def test_result_records_every_step_layer_and_kind():
    """fp16-amp, 20 steps, hidden (16, 8), per-layer windows of 5 steps, histograms at steps 0 and 19."""
    result = train("fp16-amp", steps=20, hidden=(16, 8), histograms=True, histogram_steps=[0, 19], record_every=5,
                   shadow_every=10, progress=False)
    assert len(result.history) == 20 and result.steps_run == 20
    record = result.history[0]
    assert record["loss_scale"] == 2.0 ** 16 and record["skipped"] is False
    for stat in STATS[1:]:
        assert set(record[stat]) == set(KINDS)
    # per layer (64-16-8-10, batch 64): output values, and weight plus bias gradient values per step
    assert [layer["shape"] for layer in result.layers] == [[64, 16], [16, 8], [8, 10]]
    for layer, (n_in, n_out) in zip(result.layers, [(64, 16), (16, 8), (8, 10)]):
        assert layer["activations"]["values"] == 20 * 64 * n_out
        assert layer["weight_grads"]["values"] == 20 * (n_in + 1) * n_out
        assert layer["updated"] <= 20 * (n_in + 1) * n_out
    counts = np.array(result.layer_history["counts"])
    assert counts.shape == (4, 3, len(KINDS), len(STATS)) and result.layer_history["steps"] == [4, 9, 14, 19]
    totals = counts.sum(axis=0)
    for layer in result.layers:
        for k, kind in enumerate(KINDS):
            assert [layer[kind][s] for s in STATS] == totals[layer["layer"], k].tolist()
    assert {(h["step"], h["kind"], h["layer"]) for h in result.histograms} == {
        (s, k, layer) for s in (0, 19) for k in KINDS for layer in range(3)}
    for h in result.histograms:
        if h["kind"] == "weight_grads":
            n_in, n_out = result.layers[h["layer"]]["shape"]
            assert sum(h["counts"]) + h["zeros"] + h["nonfinite"] == (n_in + 1) * n_out
    assert [s["step"] for s in result.shadow] == [0, 10]
    assert all(len(s["relative_error"]) == 3 for s in result.shadow)


def test_histograms_predict_the_underflow_counts():
    """fp16-mixed at grad_scale 2^-14, 10 steps, hidden (32,): per step and layer, the values the recorder
    counts as flushed to FP16 are those its histogram puts below half FP16's smallest subnormal (2^-25).
    (Updates go to the FP32 master weights, so they are left out.)"""
    steps = 10
    result = train("fp16-mixed", steps=steps, hidden=(32,), grad_scale=2.0 ** -14, histograms=True,
                   histogram_steps=list(range(steps)), record_every=1, progress=False)
    counts = np.array(result.layer_history["counts"])  # [step][layer][kind][stat]
    underflow = STATS.index("underflow")
    checked = 0
    for h in result.histograms:
        if h["kind"] == "updates":
            continue
        values = np.array(h["counts"])
        exponents = h["min_exponent"] + np.arange(len(values))
        surely_flushed = values[exponents < -25].sum()  # |x| < 2^-25 rounds to 0
        at_half = values[exponents == -25].sum()  # [2^-25, 2^-24): only 2^-25 itself (a tie) rounds to 0
        counted = counts[h["step"], h["layer"], KINDS.index(h["kind"]), underflow]
        assert surely_flushed <= counted <= surely_flushed + at_half
        checked += counted
    assert checked > 0  # the check saw underflows


def test_recorder_counts_by_definition():
    recorder = Recorder(["layers.0"])
    recorder.start_step(0)
    before = np.array([0.0, 1e-9, 2.0 ** -25, 3e-8, 1e-5, 7e4, np.inf, np.nan, 1.0])
    after = fpsim.round(before, fpsim.FP16)
    recorder.rounded("activations", "layers.0", before, after, fpsim.FP16)
    w = np.array([1.0, 1.0, 1.0, 2.0])
    u = np.array([2.0 ** -12, 2.0 ** -9, 0.0, 2.0 ** -11])
    recorder.updated("layers.0", w, fpsim.round(w - u, fpsim.FP16), u, fpsim.FP16)
    record = recorder.end_step(loss=math.nan, loss_scale=1.0, skipped=False)
    assert record["loss"] is None
    assert {stat: record[stat]["activations"] for stat in STATS[1:]} == {
        "nonzero": 8, "underflow": 2, "subnormal": 2, "overflow": 1, "nonfinite": 3}
    # 1 - 2^-12 and 2 - 2^-11 are ties (half a spacing) that round back to the even 1 and 2: lost
    assert record["updated"] == 3 and record["lost_updates"] == 2
    assert record["lost_update_magnitude"] == 2.0 ** -12 + 2.0 ** -11
    assert recorder.lost_update_fraction == 2 / 3


def test_fp64_shadow_measures_the_policy_gradient_error():
    """20 steps, hidden (32,): FP32's gradients are near exact, BF16's (8 bits) worse than FP16's (11 bits)."""
    errors = {}
    for name in ("fp32", "fp16-mixed", "bf16-mixed"):
        result = train(name, steps=20, hidden=(32,), shadow_every=5, progress=False)
        errors[name] = max(e for s in result.shadow for e in s["relative_error"])
        assert result.weight_grad_underflow_fraction < 0.01
    assert errors["fp32"] < 1e-5 < errors["fp16-mixed"] < errors["bf16-mixed"] < 0.1


def test_other_data_and_optimizers():
    """A few steps each: teacher-student regression with Adam, MNIST from a small npz with momentum."""
    regression = train("bf16-mixed", data={"name": "teacher", "train": 512, "test": 128}, optimizer="adam",
                       lr=1e-3, steps=60, hidden=(32,), progress=False)
    assert regression.test_accuracy is None and regression.test_loss < regression.history[0]["loss"]
    assert regression.config["data"]["name"] == "teacher"


def test_mnist_training(tmp_path):
    """MNIST-layout npz written here: noise images with a bright band whose row gives the label; 40 steps."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=200)
    images = (rng.random((200, 28, 28)) * 60).astype(np.uint8)
    for image, label in zip(images, labels):
        image[2 * label:2 * label + 3, :] = 255
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=images[:150], y_train=labels[:150], x_test=images[150:], y_test=labels[150:])
    result = train("fp16-amp", data=f"mnist:{path}", optimizer="momentum", momentum=0.9, lr=0.01, steps=40,
                   batch_size=32, hidden=(16,), progress=False)
    assert result.layers[0]["shape"] == [784, 16] and result.test_accuracy > 0.5


# --- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"policy": "fp8-amp"}, "fp32, fp16-pure, fp16-mixed, fp16-amp, bf16-pure, bf16-mixed, bf16-sr, bf16-kahan"),
    ({"policy": {"params": "fp12"}}, "unknown format"),
    ({"optimizer": "lamb"}, "sgd, momentum, adam"),
    ({"lr": -0.1}, "lr must be a positive"),
    ({"lr": math.nan}, "lr must be a positive"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"hidden": ()}, "at least one hidden layer"),
    ({"hidden": (64, 0)}, "hidden layer width"),
    ({"batch_size": 5000}, "exceeds"),
    ({"grad_scale": 0.0}, "grad_scale"),
    ({"loss_scale": -4.0}, "loss_scale"),
    ({"histogram_steps": [1]}, "histograms=True"),
    ({"histograms": True, "histogram_steps": [10]}, "beyond the run"),
    ({"data": "cifar10"}, "digits, mnist, teacher"),
    ({"scaler": {"hysteresis": 2}}, "does not scale"),
])
def test_bad_input_is_refused_clearly(kwargs, message):
    options = {"policy": "fp32", "steps": 5, "hidden": (8,), "progress": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        train(options.pop("policy"), **options)


# --- command line -------------------------------------------------------------------


def test_cli_trains_prints_a_summary_and_writes_json(tmp_path, capsys):
    out = tmp_path / "result.json"
    status = main(["train", "--policy", "fp16-amp", "--steps", "20", "--hidden", "16", "--grad-scale", "2**-10",
                   "--no-progress", "--out", str(out)])
    assert status == 0
    text = capsys.readouterr().out
    assert "test_accuracy" in text and "lost_update_fraction" in text and f"wrote {out}" in text
    result = TrainResult.load(out)
    assert result.config["grad_scale"] == 2.0 ** -10 and result.policy == "fp16-amp" and len(result.history) == 20
    status = main(["train", "--policy", '{"preset": "fp16-mixed", "loss_scale": 256}', "--steps", "5",
                   "--hidden", "8", "--no-progress"])
    assert status == 0 and "fp16-mixed*" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--policy", "fp12-amp"], "unknown policy"),
    (["--policy", "fp32", "--steps", "0"], "steps"),
    (["--policy", "fp32", "--lr", "-1"], "lr"),
    (["--policy", "fp32", "--hidden", "a,b"], "--hidden"),
    (["--policy", "fp32", "--hidden", ""], "hidden layer"),
    (["--policy", "fp32", "--grad-scale", "tiny"], "not a number"),
    (["--policy", "fp32", "--optimizer", "lamb"], "sgd, momentum, adam"),
    (["--policy", "{bad json"], "not valid JSON"),
    (["--policy", "fp32", "--out", "/nonexistent/dir/r.json"], "does not exist"),
    (["--steps", "5"], "--policy"),
])
def test_cli_bad_flags_exit_2(flags, message, capsys):
    assert main(["train", *flags, "--no-progress"]) == 2
    assert message in capsys.readouterr().err


# --- the same effects at full size (slow) -------------------------------------------


@pytest.mark.slow
def test_full_size_bf16_lost_updates():
    """The default model and length: hidden (128, 128, 128), 1500 SGD steps at lr 0.003, batch 64."""
    runs = {name: train(name, lr=0.003, progress=False)
            for name in ("fp32", "fp16-pure", "bf16-pure", "bf16-mixed", "bf16-sr", "bf16-kahan")}
    assert runs["bf16-pure"].lost_update_fraction > 0.9 and runs["fp16-pure"].lost_update_fraction > 0.5
    assert runs["bf16-mixed"].test_accuracy - runs["bf16-pure"].test_accuracy > 0.08
    assert abs(runs["bf16-mixed"].test_accuracy - runs["fp32"].test_accuracy) <= 0.01
    for name in ("bf16-sr", "bf16-kahan"):
        assert runs[name].test_accuracy >= runs["bf16-mixed"].test_accuracy - 0.02


@pytest.mark.slow
def test_full_size_tiny_gradients():
    """Default model and steps at grad_scale 2^-20: fp16-mixed learns little; fp16-amp and bf16-mixed match FP32."""
    runs = {name: train(name, grad_scale=TINY_GRADIENTS, progress=False)
            for name in ("fp32", "fp16-mixed", "fp16-amp", "bf16-mixed")}
    assert runs["fp16-mixed"].weight_grad_underflow_fraction > 0.9 and runs["fp16-mixed"].test_accuracy < 0.3
    for name in ("fp16-amp", "bf16-mixed"):
        assert abs(runs[name].test_accuracy - runs["fp32"].test_accuracy) <= 0.01


def test_flushed_weight_gradients_are_counted_against_the_policys_own_forward_pass():
    """BF16's range holds every gradient of this model even x 2^-24, so (almost) nothing may count as flushed.

    Against an FP64 redo of the whole step, ReLU units that switch sign between the two forward passes looked
    like flushed gradients (1.6e-4 of them here); the count compares with the FP64 backward pass through the
    policy's own forward pass instead.  What remains is exact cancellation in a rounded sum (1 value here)."""
    run = fpsim.train("bf16-mixed", steps=40, shadow_every=1, grad_scale=2.0 ** -24)
    assert run.activation_grad_underflow_fraction == 0
    assert run.weight_grad_underflow_fraction < 1e-5
    assert fpsim.train("fp32", steps=20, shadow_every=1, grad_scale=2.0 ** -24).weight_grad_underflow_fraction == 0


def test_recorder_files_counts_by_module_path_and_adds_new_modules():
    recorder = Recorder(["blocks.0.attn"], record_every=1)
    one = np.array([1.0, 2.0 ** -30])
    recorder.start_step(0)
    recorder.rounded("activations", "blocks.0.attn", one, fpsim.round(one, fpsim.FP16), fpsim.FP16)
    recorder.end_step(loss=1.0, loss_scale=1.0, skipped=False)
    recorder.start_step(1)
    recorder.rounded("weight_grads", "head", one, fpsim.round(one, fpsim.FP16), fpsim.FP16)  # first seen now
    recorder.end_step(loss=1.0, loss_scale=1.0, skipped=False)
    assert recorder.modules == ["blocks.0.attn", "head"]
    summaries = {s["module"]: s for s in recorder.layer_summaries()}
    assert summaries["blocks.0.attn"]["activations"]["underflow"] == 1
    assert summaries["head"]["weight_grads"] == {"values": 2, "nonzero": 2, "underflow": 1, "subnormal": 0,
                                                 "overflow": 0, "nonfinite": 0}
    history = recorder.layer_history
    assert history["modules"] == ["blocks.0.attn", "head"] and history["steps"] == [0, 1]
    counts = np.array(history["counts"])  # the first window is padded with a zero row for "head"
    assert counts.shape == (2, 2, len(KINDS), len(STATS)) and not counts[0, 1].any()
    with pytest.raises(TypeError, match="path"):
        recorder.rounded("activations", 3, one, one, fpsim.FP16)
