"""TrainConfig: validated once, canonical, a JSON round trip, one key per run however it is spelled."""

import json

import numpy as np
import pytest

import fpsim
from fpsim import TrainConfig
from fpsim.runs.sweep import config_key


@pytest.mark.parametrize("one, other", [
    ({"policy": "fp16-mixed", "loss_scale": 1024}, {"policy": "fp16-mixed", "loss_scale": 1024.0}),
    ({"policy": "fp32", "hidden": 16}, {"policy": "fp32", "hidden": [16]}),
    ({"policy": "fp32", "data": "DIGITS"}, {"policy": "fp32", "data": "digits"}),
    ({"policy": "fp32", "data": None}, {"policy": "fp32"}),
    ({"policy": "fp16-amp", "scaler": None}, {"policy": "fp16-amp", "scaler": {}}),
    ({"policy": "fp16-amp", "scaler": {"growth_interval": 10, "init_scale": 1024}},
     {"policy": "fp16-amp", "scaler": {"init_scale": 1024.0, "growth_interval": np.int64(10)}}),
    ({"policy": "FP16-Mixed", "optimizer": "ADAM"}, {"policy": "fp16-mixed", "optimizer": "adam"}),
    ({"policy": "fp32", "lr": np.float32(0.5)}, {"policy": "fp32", "lr": 0.5}),
    ({"policy": "bf16-pure"}, {"policy": fpsim.POLICIES["bf16-pure"].to_dict()}),
    ({"policy": "fp32", "steps": np.int32(10), "betas": [0.9, 0.999]}, {"policy": "fp32", "steps": 10}),
])
def test_equivalent_spellings_are_one_configuration_and_one_key(one, other):
    assert TrainConfig.from_dict(one) == TrainConfig.from_dict(other)
    assert config_key(one) == config_key(other)


def test_different_runs_have_different_keys():
    assert config_key({"policy": "fp32"}) != config_key({"policy": "fp32", "seed": 1})
    assert config_key({"policy": "fp32"}) != config_key({"policy": "fp32", "loss_scale": 2.0})


def test_json_round_trip():
    config = TrainConfig.from_dict({"policy": {"preset": "fp16-mixed", "loss_scale": 512}, "hidden": (8, 4),
                                    "histograms": True, "optimizer": "momentum", "scaler": None, "seed": 3})
    text = json.dumps(config.to_dict(), allow_nan=False)
    assert TrainConfig.from_dict(json.loads(text)) == config
    assert config.histogram_steps == (0, 150, 750, 1499)
    assert config.effective_policy is config.policy


def test_loss_scale_override_names_the_policy():
    config = TrainConfig.from_dict({"policy": "fp16-mixed", "loss_scale": 1024})
    assert config.effective_policy.loss_scale == 1024.0
    assert config.effective_policy.name == "fp16-mixed (loss scale 1024)"
    assert config.to_dict()["policy"]["loss_scale"] is None  # the policy as given


def test_the_configs_loss_scale_wins_over_the_policys_and_both_read_it_by_one_rule():
    from fpsim.sim.policy import Policy

    policy = Policy(name="mine", loss_scale=" Dynamic ")
    assert policy.loss_scale == "dynamic" == TrainConfig(policy="fp32", loss_scale="DYNAMIC").loss_scale
    assert TrainConfig(policy=policy, loss_scale=np.int64(256)).effective_policy.loss_scale == 256.0
    assert TrainConfig(policy=policy).effective_policy.loss_scale == "dynamic"  # None keeps the policy's
    for bad in ("auto", 0, float("inf"), True):
        with pytest.raises(ValueError, match="loss_scale must be a positive"):
            Policy(loss_scale=bad)
        with pytest.raises(ValueError, match="loss_scale must be a positive"):
            TrainConfig(policy="fp32", loss_scale=bad)


def test_each_model_takes_its_engines_optimizers():
    from fpsim.sim.optimizers import make_optimizer
    from fpsim.sim.vocabulary import MODELS, OPTIMIZERS

    assert set(MODELS["mlp"].optimizers) < set(OPTIMIZERS)
    for name in MODELS["mlp"].optimizers:
        assert TrainConfig(policy="fp32", optimizer=name.upper()).optimizer == name
        make_optimizer(name, 0.1, state_format=fpsim.FP32)
    for name in set(OPTIMIZERS) - set(MODELS["mlp"].optimizers):
        with pytest.raises(ValueError, match="unknown optimizer .*: use one of sgd, momentum, adam$"):
            TrainConfig(policy="fp32", optimizer=name)
        with pytest.raises(ValueError, match="use one of sgd, momentum, adam$"):
            make_optimizer(name, 0.1, state_format=fpsim.FP32)
        assert TrainConfig(policy="fp32", model="cnn", optimizer=name).optimizer == name


def test_numpy_integers_are_integers_in_every_layer():
    from fpsim.numerics.checks import is_integer
    from fpsim.sim.loss_scaling import LossScaler
    from fpsim.sim.scaling import Scaling

    assert is_integer(np.int64(3)) and is_integer(np.uint8(3)) and is_integer(3)
    assert not any(is_integer(v) for v in (True, 3.0, np.float64(3), "3", None))
    assert fpsim.Format("mine", np.int64(5), np.int32(2)).exponent_bits == 5
    assert LossScaler(growth_interval=np.int64(7)).growth_interval == 7
    assert Scaling.delayed(history_len=np.int64(4)).history_len == 4
    assert TrainConfig(policy="fp32", hidden=np.int64(8), seed=np.uint32(1)).hidden == (8,)
    np.testing.assert_array_equal(fpsim.quantize(np.ones(64), "mxfp4", block_size=np.int64(32), axis=np.int64(0)),
                                  fpsim.quantize(np.ones(64), "mxfp4", block_size=32, axis=0))


@pytest.mark.parametrize("options, message", [
    ({"policy": "fp32", "lr": 0}, "lr must be a positive finite number"),
    ({"policy": "fp32", "lr": float("nan")}, "lr must be a positive finite number"),
    ({"policy": "fp32", "lr": True}, "lr must be a positive finite number"),
    ({"policy": "fp32", "steps": 0}, "steps must be an integer >= 1"),
    ({"policy": "fp32", "steps": 2.0}, "steps must be an integer >= 1"),
    ({"policy": "fp32", "hidden": []}, "hidden must list at least one"),
    ({"policy": "fp32", "optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'"),
    ({"policy": "fp32", "model": "resnet"}, "unknown model 'resnet'"),
    ({"policy": "fp32", "model_options": {"n_layer": 2}}, "the MLP takes no model_options"),
    ({"policy": "fp32", "betas": 0.9}, "betas must be two numbers"),
    ({"policy": "fp32", "momentum": 1.5}, r"momentum must be a number in \[0, 1\)"),
    ({"policy": "fp32", "scaler": {"init_scale": 8.0}}, "the policy does not scale the loss"),
    ({"policy": "fp16-amp", "scaler": {"growth_interval": 0}}, "scaler growth_interval must be an integer"),
    ({"policy": "fp32", "histogram_steps": [1]}, "histogram_steps needs histograms=True"),
    ({"policy": "fp32", "histograms": True, "steps": 5, "histogram_steps": [5]}, "beyond the run's last step"),
    ({"policy": "fp32", "loss_scale": "auto"}, "loss_scale must be a positive number or 'dynamic'"),
    ({"policy": "fp32", "data": "imagenet"}, "unknown data set 'imagenet'"),
    ({"policy": "fp32", "colour": "red"}, "unknown training option 'colour'"),
    ({"policy": "fp32", "data": "pydoc"}, "'pydoc' is text"),
    ({"policy": {"preset": "bf16-pure", "placement": "low-precision"}}, "placement='low-precision' is for the torch"),
    ({"policy": "fp32", "steps": 10**7}, "steps must be at most"),
])
def test_bad_options_are_one_line_errors_before_anything_runs(options, message):
    with pytest.raises(ValueError, match=message) as caught:
        fpsim.train(**options, progress=False)
    assert "\n" not in str(caught.value)


def test_a_result_records_its_config_and_reruns_from_it():
    first = fpsim.train("bf16-mixed", hidden=8, steps=3, batch_size=16, lr=np.float32(0.25), progress=False)
    assert first.config == TrainConfig.from_dict({"policy": "bf16-mixed", "hidden": [8], "steps": 3,
                                                  "batch_size": 16, "lr": 0.25}).to_dict()
    again = fpsim.train(**first.config, progress=False)
    assert again.to_dict() == first.to_dict()


def test_a_torch_model_without_torch_is_one_line_naming_the_extra(monkeypatch):
    import importlib.util

    from fpsim import engines
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(engines.importlib.util, "find_spec",
                        lambda name, *args: None if name == "torch" else real_find_spec(name, *args))
    with pytest.raises(ValueError, match=r'torch engine, which needs PyTorch: pip install "fpsim\[torch\]"'):
        fpsim.train("fp32", model="cnn", steps=1, progress=False)
