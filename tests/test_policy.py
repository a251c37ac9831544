"""Precision policies, the loss scaler and the optimizers' update rules (no training here: fast)."""

import math

import numpy as np
import pytest

import fpsim
from fpsim.sim.loss_scaling import LossScaler
from fpsim.sim.optimizers import apply_kahan_update, apply_update, make_optimizer
from fpsim.sim.vocabulary import MODELS
from fpsim.sim.policy import Policy

# --- policies -----------------------------------------------------------------


def test_presets_are_the_issue_list_and_round_trip_through_json():
    assert list(fpsim.POLICIES) == ["fp32", "fp16-pure", "fp16-mixed", "fp16-amp", "bf16-pure", "bf16-mixed",
                                    "bf16-sr", "bf16-kahan", *fpsim.SCALED_POLICIES]
    for name, policy in fpsim.POLICIES.items():
        assert fpsim.Policy.preset(name) is policy
        assert Policy.from_dict(policy.to_dict()) == policy
        assert Policy.coerce(name) == Policy.coerce(policy.to_dict()) == policy


def test_preset_contents():
    p = fpsim.Policy.preset
    assert p("fp32").params == fpsim.FP32 and p("fp32").master is None and p("fp32").loss_scale is None
    assert p("fp16-pure").params == p("fp16-pure").optimizer_state == fpsim.FP16 and p("fp16-pure").master is None
    assert p("fp16-mixed").master == fpsim.FP32 and p("fp16-mixed").loss_scale is None
    assert p("fp16-amp").master == fpsim.FP32 and p("fp16-amp").loss_scale == "dynamic"
    assert p("bf16-mixed").params == fpsim.BF16 and p("bf16-mixed").master == fpsim.FP32
    assert p("bf16-sr").update_rounding == "stochastic" and p("bf16-sr").master is None
    assert p("bf16-kahan").kahan and p("bf16-kahan").master is None
    for policy in fpsim.POLICIES.values():  # autocast keeps the loss in FP32; tensor cores accumulate in FP32
        assert policy.loss == fpsim.FP32 and policy.accumulate == fpsim.FP32


def test_policy_from_a_preset_with_overrides_and_custom_formats():
    policy = Policy.coerce({"preset": "fp16-mixed", "loss_scale": 1024, "accumulate": "fp16"})
    assert policy.loss_scale == 1024.0 and policy.accumulate == fpsim.FP16 and policy.name == "fp16-mixed*"
    custom = Policy(params="e6m9", activations=fpsim.Format("odd", 6, 9, subnormals=False))
    assert Policy.from_dict(custom.to_dict()) == custom


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="fp16-amp.*bf16-kahan"):
        Policy.preset("fp8-amp")


@pytest.mark.parametrize("fields, message", [
    ({"params": "fp12"}, "unknown format"),
    ({"loss_scale": -1.0}, "loss_scale"),
    ({"loss_scale": "auto"}, "loss_scale"),
    ({"update_rounding": "down"}, "nearest, stochastic"),
    ({"kahan": True, "update_rounding": "stochastic"}, "not both"),
    ({"master_weights": "fp32"}, "unknown policy field"),
])
def test_bad_policy_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        Policy.coerce(fields)


def test_policy_of_wrong_type():
    with pytest.raises(TypeError, match="preset name"):
        Policy.coerce(3)


# --- loss scaler ---------------------------------------------------------------


def test_scaler_defaults_follow_gradscaler():
    scaler = LossScaler()
    assert scaler.scale == 2.0 ** 16
    for step in range(1999):
        scaler.update(False, step)
    assert scaler.scale == 2.0 ** 16
    scaler.update(False, 1999)
    assert scaler.scale == 2.0 ** 17  # x2 after 2000 clean steps
    scaler.update(True, 2000)
    assert scaler.scale == 2.0 ** 16  # x0.5 on overflow
    for step in range(1999):  # the clean count restarted at the overflow
        scaler.update(False, 2001 + step)
    assert scaler.scale == 2.0 ** 16


def test_scaler_hysteresis_floor_and_ceiling():
    scaler = LossScaler(8.0, hysteresis=3, min_scale=2.0, max_scale=16.0, growth_interval=2)
    scaler.update(True, 0)
    scaler.update(True, 1)
    assert scaler.scale == 8.0  # two overflows spend two of three credits
    scaler.update(True, 2)
    assert scaler.scale == 4.0
    scaler.update(True, 3)  # credits stay spent: back off at once
    assert scaler.scale == 2.0 and scaler.min_scale_hits == 0
    scaler.update(True, 4)
    assert scaler.scale == 2.0 and scaler.min_scale_hits == 1 and scaler.min_scale_step == 4
    for step in range(5, 13):
        scaler.update(False, step)
    assert scaler.scale == 16.0  # grew x2 per 2 clean steps, capped at max_scale
    scaler.update(True, 13)
    scaler.update(True, 14)
    assert scaler.scale == 16.0  # growth refilled the credits


def test_constant_scaler_never_changes():
    scaler = LossScaler.for_policy(1024.0)
    for step in range(5):
        scaler.update(step % 2 == 0, step)
    assert scaler.scale == 1024.0 and not scaler.dynamic
    assert LossScaler.for_policy(None) is None


@pytest.mark.parametrize("options, message", [
    ({"growth_factor": 1.0}, "growth_factor"),
    ({"backoff_factor": 1.5}, "backoff_factor"),
    ({"growth_interval": 0}, "growth_interval"),
    ({"hysteresis": 0}, "hysteresis"),
    ({"min_scale": 4.0, "max_scale": 2.0}, "below min_scale"),
    ({"init_scale": 0.5}, "init_scale"),
    ({"initial_scale": 2.0}, "unknown scaler option"),
])
def test_bad_scaler_options(options, message):
    with pytest.raises(ValueError, match=message):
        LossScaler.for_policy("dynamic", options)


def test_scaler_options_need_dynamic_scaling():
    with pytest.raises(ValueError, match="dynamic"):
        LossScaler.for_policy(128.0, {"hysteresis": 2})
    with pytest.raises(ValueError, match="does not scale"):
        LossScaler.for_policy(None, {"hysteresis": 2})


# --- optimizers ------------------------------------------------------------------


def test_optimizers_are_invariant_to_grad_scale_in_exact_arithmetic():
    rng = np.random.default_rng(1)
    grads = [rng.normal(size=5) for _ in range(3)]
    for name in MODELS["mlp"].optimizers:
        plain = make_optimizer(name, 0.1, state_format=fpsim.FP64)
        scaled = make_optimizer(name, 0.1, grad_scale=2.0 ** -20, state_format=fpsim.FP64)
        for g in grads:
            np.testing.assert_allclose(scaled.update("w", g * 2.0 ** -20), plain.update("w", g), rtol=1e-12)


def test_momentum_and_adam_match_their_formulas():
    g1, g2 = np.array([1.0, -2.0]), np.array([0.5, 0.25])
    momentum = make_optimizer("momentum", 0.1, state_format=fpsim.FP64, momentum=0.9)
    momentum.update(0, g1)
    np.testing.assert_allclose(momentum.update(0, g2), 0.1 * (0.9 * g1 + g2))
    adam = make_optimizer("adam", 0.01, state_format=fpsim.FP64, betas=(0.9, 0.99), eps=1e-8)
    adam.update(0, g1)
    m = 0.9 * 0.1 * g1 + 0.1 * g2
    v = 0.99 * 0.01 * g1 ** 2 + 0.01 * g2 ** 2
    expected = 0.01 * (m / (1 - 0.9 ** 2)) / (np.sqrt(v / (1 - 0.99 ** 2)) + 1e-8)
    np.testing.assert_allclose(adam.update(0, g2), expected, rtol=1e-12)


def test_optimizer_state_is_rounded_to_its_format():
    momentum = make_optimizer("momentum", 1.0, state_format=fpsim.BF16)
    momentum.update(0, np.array([1.0 + 2.0 ** -10]))
    assert momentum.velocity[0][0] == 1.0  # 1 + 2^-10 is not a bf16 value: rounded to 1
    adam = make_optimizer("adam", 1.0, state_format=fpsim.FP16)
    adam.update(0, np.array([2.0 ** -13]))
    assert adam.moments[0][2][0] == 0.0  # (1 - 0.999) * 2^-26 underflows in fp16: Adam's v dies


def test_bad_optimizer_and_learning_rate():
    with pytest.raises(ValueError, match="sgd, momentum, adam"):
        make_optimizer("lamb", 0.1, state_format=fpsim.FP32)
    with pytest.raises(ValueError, match="positive"):
        make_optimizer("sgd", -0.1, state_format=fpsim.FP32)
    with pytest.raises(ValueError, match="momentum"):
        make_optimizer("momentum", 0.1, state_format=fpsim.FP32, momentum=1.5)
    with pytest.raises(ValueError, match="do not apply"):
        make_optimizer("sgd", 0.1, state_format=fpsim.FP32, betas=(0.9, 0.9))


def lost_by_the_rule(w: float, u: float, fmt) -> bool:
    """apply_update's docstring, literally: is u lost when w - u is rounded to nearest in ``fmt``?"""
    p, emin = fmt.precision, fmt.emin
    e = max(math.floor(math.log2(abs(w))), emin) if w else emin
    half = 2.0 ** (e - p)
    if abs(w) == 2.0 ** e and e > emin and u * w > 0:  # a power of two, moved towards zero
        return abs(u) <= half / 2
    last_bit = int(abs(w) / 2.0 ** (e - p + 1)) % 2
    return abs(u) < half or (abs(u) == half and last_bit == 0)


@pytest.mark.parametrize("fmt", [fpsim.FP16, fpsim.BF16], ids=str)
def test_an_update_is_lost_below_half_the_spacing_of_ws_binade(fmt):
    """Weights of every kind (normal, powers of two, subnormal, zero; both signs, even and odd significands)
    against updates just below, at and just above both thresholds of the rule, both signs."""
    rng = np.random.default_rng(0)
    p, emin = fmt.precision, fmt.emin
    exponents = [emin, emin + 1, -3, 0, 5]
    significands = [2 ** (p - 1), 2 ** (p - 1) + 1, 2 ** (p - 1) + 2, 2 ** p - 1,
                    *rng.integers(2 ** (p - 1), 2 ** p, 4)]
    weights = [s * 2.0 ** (e - p + 1) for e in exponents for s in significands]
    weights += [s * 2.0 ** (emin - p + 1) for s in (0, 1, 2, 2 ** (p - 1) - 1)]  # zero and subnormals
    w, u = [], []
    for weight in weights + [-x for x in weights]:
        e = max(math.floor(math.log2(abs(weight))), emin) if weight else emin
        for threshold in (2.0 ** (e - p), 2.0 ** (e - p - 1)):
            for factor in (1 - 2.0 ** -6, 1.0, 1 + 2.0 ** -6):
                w += [weight, weight]
                u += [threshold * factor, -threshold * factor]
    w, u = np.array(w), np.array(u)
    lost = apply_update(w, u, fmt) == w
    expected = np.array([lost_by_the_rule(a, b, fmt) for a, b in zip(w, u)])
    assert lost.any() and not lost.all()
    assert np.array_equal(lost, expected), [(a, b) for a, b, x, y in zip(w, u, lost, expected) if x != y][:5]


def test_small_updates_are_lost_to_nearest_and_kept_by_kahan_and_on_average_by_stochastic_rounding():
    w = np.full(4000, 1.0)
    u = np.full(4000, 2.0 ** -10)  # a quarter of bf16's spacing at 1 (2^-7 above, 2^-8 below)
    assert np.array_equal(apply_update(w, u, fpsim.BF16), w)  # lost: |u| < half a spacing
    stochastic = apply_update(w, u, fpsim.BF16, rounding="stochastic", rng=0)
    assert set(np.unique(stochastic)) == {1.0 - 2.0 ** -8, 1.0}
    assert abs(np.mean(1.0 - stochastic) - 2.0 ** -10) < 4 * math.sqrt(0.25 * 0.75) * 2.0 ** -8 / math.sqrt(4000)
    weights, compensation = w.copy(), np.zeros_like(w)
    for _ in range(8):  # 8 updates of 2^-10 = 2^-7, two spacings below 1
        weights, compensation = apply_kahan_update(weights, compensation, u, fpsim.BF16)
    assert np.all(weights + compensation == 1.0 - 2.0 ** -7)
    assert np.all(weights == 1.0 - 2.0 ** -7)
