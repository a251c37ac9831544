"""Scaling recipes as data: Transformer Engine's delayed rule on scripted amaxes, the FP8 / MX policy presets."""

import json

import numpy as np
import pytest

import fpsim
from fpsim.sim.policy import POLICIES, SCALED_POLICIES, Policy
from fpsim.sim.scaling import DelayedScaler, Scaling


def te_amax_and_scale_update(history, scale, fp8_max, margin, algo):
    """Transformer Engine's ``amax_and_scale_update`` kernel (delayed_scaling.cu), transcribed index by index."""
    length = len(history)
    rolled = np.zeros(length, dtype=np.float32)
    amax = np.float32(0)
    for i in range(length):
        a = history[i + 1] if i < length - 1 else history[0]
        amax = max(amax, a)
        rolled[i] = a if i > 0 else 0
    if algo == "most_recent":
        amax = history[0]
    scaled_max = np.float32(fp8_max) * np.float32(2.0**-margin)
    new_scale = scaled_max / amax if np.isfinite(amax) and amax > 0 else scale  # float32 division, as in CUDA
    return rolled, np.float32(new_scale)


AMAXES = [1.0, 3.0, 0.5, 0.0, 700.0, 2.0**-20, np.inf, 0.25, 1e-3, 5.0, 0.1, 0.1, 0.1, 0.1, 0.1, np.nan, 3.3]


@pytest.mark.parametrize("history_len", [1, 2, 4, 1024])
@pytest.mark.parametrize("margin", [0, 1, 3])
@pytest.mark.parametrize("algo", ["max", "most_recent"])
@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_delayed_scaling_follows_transformer_engine_on_a_scripted_amax_sequence(history_len, margin, algo, fmt):
    scaler = DelayedScaler(Scaling.delayed(history_len=history_len, margin=margin, amax_compute=algo), fmt)
    history, scale = np.zeros(history_len, dtype=np.float32), np.float32(1.0)
    for step, amax in enumerate(AMAXES):
        scaler.record(amax)
        scaler.record(amax / 2)  # a second cast of the tensor in the same step: the larger amax counts
        if not np.isnan(amax):  # CUDA's fmaxf drops a NaN amax
            history[0] = max(history[0], np.float32(amax))
        history, scale = te_amax_and_scale_update(history, scale, fpsim.get_format(fmt).max, margin, algo)
        assert scaler.update() == scale, step
        np.testing.assert_array_equal(scaler.history, history)


def test_delayed_scaling_lags_a_jump_in_magnitude():
    """After a jump, the step's cast still uses the old scale: 448 / 1 with amax 100 overflows E4M3."""
    scaler = DelayedScaler(Scaling.delayed(history_len=16), "e4m3")
    scales = []
    for amax in [1.0] * 3 + [100.0] * 3 + [1.0] * 20:
        scales.append(float(scaler.scale))  # the scale this step's tensors are cast with
        scaler.record(amax)
        scaler.update()
    after_jump = float(np.float32(448.0) / np.float32(100.0))
    assert scales[3] == 448.0  # the first step of amax 100 is cast with 448: 100 * 448 saturates E4M3
    assert scales[4:22] == [after_jump] * 18  # the jump stays in the 16-step history for 16 updates
    assert scales[22] == 448.0


def test_tensor_scaling_is_quantize_per_tensor():
    x = np.array([0.5, -3.0, 100.0], dtype=np.float32)
    values, scale = fpsim.quantize(x, "e4m3", return_scales=True)
    assert float(scale) == float(np.float32(448.0) / np.float32(100.0))


def test_policy_presets_round_trip_through_json():
    assert list(SCALED_POLICIES) == ["fp8-unscaled", "fp8-current", "fp8-delayed", "fp8-rowwise",
                                     "fp8-rowwise-fp32-scales", "fp8-blockwise", "mxfp8", "mxfp8-te", "mxfp6",
                                     "mxfp4", "nvfp4", "nvfp4-te"]
    assert SCALED_POLICIES == {name: p for name, p in POLICIES.items() if p.scaling is not None}  # a view
    for policy in SCALED_POLICIES.values():
        assert Policy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy
        assert hash(Policy.coerce(policy.to_dict())) == hash(policy)
    p = SCALED_POLICIES
    assert p["fp8-current"].params == fpsim.E4M3 and p["fp8-current"].gradients == fpsim.E5M2
    assert dict(p["fp8-delayed"].scaling)["gradients"] == Scaling("delayed", history_len=1024, margin=0.0)
    assert dict(p["mxfp4"].scaling)["activations"] == Scaling("block", block="mxfp4")
    assert "activations scaling mxfp8_e4m3" in p["mxfp8"].describe()
    assert POLICIES["fp32"].scaling is None and "scaling" not in POLICIES["fp32"].describe()


def test_a_policy_takes_scaling_as_a_dict_of_kinds():
    policy = Policy.coerce({"preset": "bf16-mixed", "scaling": {"gradients": {"kind": "delayed", "margin": 1},
                                                                 "activations": "tensor"}})
    assert policy.scaling == (("activations", Scaling("tensor")), ("gradients", Scaling.delayed(margin=1)))


@pytest.mark.parametrize("spec, message", [
    (dict(kind="dynamic"), "unknown scaling kind"),
    (dict(kind="delayed", history_len=0), "history_len must be a positive integer"),
    (dict(kind="delayed", margin=float("inf")), "margin must be a finite number"),
    (dict(kind="delayed", amax_compute="mean"), "amax_compute must be one of max, most_recent"),
    (dict(kind="block"), "needs block= a quantize preset"),
    (dict(kind="tensor", block="mxfp4"), "needs block= a quantize preset"),
    (dict(kind="block", block="mxfp3"), "unknown block preset"),
    (dict(kind="block", block="mxfp4", scale_rounding="up"), "scale_rounding must be one of"),
])
def test_bad_scalings_say_what_to_change(spec, message):
    with pytest.raises(ValueError, match=message):
        Scaling(**spec)


def test_bad_scaling_in_a_policy_names_the_kinds():
    with pytest.raises(ValueError, match="unknown tensor kind"):
        Policy(scaling={"weights": "tensor"})
    with pytest.raises(ValueError, match="unknown scaling field"):
        Policy(scaling={"params": {"kind": "tensor", "window": 3}})
    with pytest.raises(ValueError, match="needs a 'delayed' scaling"):
        DelayedScaler(Scaling("tensor"), "e4m3")
