"""The torch engine: reproducible runs, the recipe's weights and updates, loss scaling, the models train."""

import dataclasses
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fpsim.sim.data import load_data  # noqa: E402
from fpsim.sim.loss_scaling import LossScaler  # noqa: E402
from fpsim.sim.config import TrainConfig  # noqa: E402
from fpsim.sim.policy import Policy  # noqa: E402
from fpsim.torch import engine  # noqa: E402
from fpsim.torch.models import SPECS, CNNConfig, GPTConfig, build_cnn, build_gpt  # noqa: E402

TINY_GPT = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16}


def Config(**options) -> TrainConfig:
    """A TrainConfig for a tiny char-gpt run with Adam (options override)."""
    defaults = {"policy": "fp32", "model": "char-gpt", "model_options": dict(TINY_GPT), "optimizer": "adam",
                "lr": 1e-3, "steps": 4, "batch_size": 4, "record_every": 0, "shadow_every": 0}
    return TrainConfig(**{**defaults, **options})


def test_models_have_their_documented_shapes_and_a_seeded_initialisation():
    state = torch.random.get_rng_state()
    config = GPTConfig(vocab_size=11, **TINY_GPT)
    gpt = build_gpt(config, torch.Generator().manual_seed(3))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is not used
    assert gpt(torch.zeros(2, 5, dtype=torch.long)).shape == (2, 5, 11)
    assert gpt.lm_head.weight is gpt.transformer.wte.weight  # tied, one parameter
    assert [name for name, _ in gpt.named_parameters()].count("transformer.wte.weight") == 1
    assert _weights(gpt) == _weights(build_gpt(config, torch.Generator().manual_seed(3)))
    assert abs(float(gpt.transformer.h[0].mlp.c_fc.weight.detach().std()) - 0.02) < 0.002
    assert float(gpt.transformer.h[0].mlp.c_proj.weight.detach().std()) < 0.016  # 0.02 / sqrt(2 n_layer)
    with pytest.raises(ValueError, match="longer than block_size"):
        gpt(torch.zeros(1, TINY_GPT["block_size"] + 1, dtype=torch.long))
    cnn = build_cnn(CNNConfig(), torch.Generator().manual_seed(0))
    assert cnn(torch.zeros(4, 40)).shape == (4, 10) and CNNConfig().out_length == 5
    assert sum(p.numel() for p in cnn.parameters()) == 12_106  # as its docstring says


def _weights(model) -> dict:
    return {name: param.detach().numpy().tobytes() for name, param in model.named_parameters()}


def test_two_fp16_amp_char_gpt_runs_with_the_same_seed_are_bit_identical():
    config = Config(policy="fp16-amp", steps=3, histograms=True, histogram_steps=(0, 2), record_every=2)
    first, first_model = engine.train_model(config)
    second, second_model = engine.train_model(config)
    assert _weights(first_model) == _weights(second_model)
    assert first.to_dict() == second.to_dict()
    assert {(h["step"], h["kind"]) for h in first.histograms} >= {(0, "weight_grads"), (2, "activations")}
    assert len(first.layer_history["steps"]) == 2 and len(first.history) == 3
    other, other_model = engine.train_model(dataclasses.replace(config, seed=1))
    assert _weights(other_model) != _weights(first_model)


def test_the_run_restores_torch_threads():
    before = torch.get_num_threads()
    engine.train(Config(steps=1), progress=False)
    assert torch.get_num_threads() == before


def _plain_training(config, steps):
    """The same model, batches and optimizer as the engine's fp32 run, with no emulation and no engine."""
    data = load_data("pydoc")
    init_seed, batch_seed, _ = np.random.SeedSequence(config.seed).spawn(3)
    model_config = GPTConfig(vocab_size=data.vocab_size, **config.model_options)
    model = build_gpt(model_config, torch.Generator().manual_seed(engine.seed_of(init_seed)))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    batch_rng = np.random.default_rng(batch_seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            x, y = (torch.from_numpy(a) for a in data.batch(batch_rng, config.batch_size, model_config.block_size))
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model


def test_fp32_policy_under_emulation_equals_plain_training_bit_for_bit():
    config = Config(policy="fp32", steps=3)
    result, model = engine.train_model(config)
    assert _weights(model) == _weights(_plain_training(config, 3))
    assert result.lost_update_fraction == 0 and result.overflow_count == 0


def _grad_scaler_trajectory(overflows, **options):
    """GradScaler's scale after each step of a run whose gradients overflow where ``overflows`` says."""
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", **options)
    trajectory = []
    for overflow in overflows:
        optimizer.zero_grad()
        loss = (param * (math.inf if overflow else 1.0)).sum()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        trajectory.append(scaler.get_scale())
    return trajectory


def test_grad_scaler_and_loss_scaler_follow_the_same_trajectory():
    overflows = [False, False, False, True, False, True, True, False, False, False, False, False, False, True,
                 False, False, False]
    options = {"init_scale": 2.0 ** 10, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 3}
    ours = LossScaler(**options, min_scale=2.0 ** -20)
    trajectory = []
    for step, overflow in enumerate(overflows):
        ours.update(overflow, step)
        trajectory.append(ours.scale)
    expected = _grad_scaler_trajectory(overflows, **options)
    assert trajectory == expected
    assert len(set(expected)) > 2  # the script both grows and backs off the scale


def test_an_overflowing_loss_scale_skips_steps_and_backs_off():
    result = engine.train(Config(policy="fp16-amp", steps=4, scaler={"init_scale": 2.0 ** 40}), progress=False)
    skipped = [record["skipped"] for record in result.history]
    assert skipped[0] and result.skipped_steps == sum(skipped) >= 1
    assert [record["loss_scale"] for record in result.history][:2] == [2.0 ** 40, 2.0 ** 39]
    assert not result.diverged
    constant = engine.train(Config(policy="fp16-mixed", loss_scale=2.0 ** 40, steps=2), progress=False)
    assert constant.skipped_steps == 2 and constant.final_loss_scale == 2.0 ** 40 and not constant.diverged
    assert constant.history[0]["updated"] == 0  # a skipped step changes no weight


def test_pure_bf16_loses_tiny_updates_and_stochastic_rounding_loses_fewer():
    config = Config(policy="bf16-pure", lr=1e-6, steps=3)
    nearest = engine.train(config, progress=False)
    stochastic = engine.train(dataclasses.replace(config, policy="bf16-sr"), progress=False)
    mixed = engine.train(dataclasses.replace(config, policy="bf16-mixed"), progress=False)
    # Adam's updates are about lr = 1e-6: below half BF16's spacing at every weight but the zero biases and
    # the 1% of the N(0, 0.02^2) initial weights below 2^8 lr in magnitude.
    assert nearest.lost_update_fraction > 0.9
    assert stochastic.lost_update_fraction < nearest.lost_update_fraction - 0.001
    assert mixed.lost_update_fraction == 0
    modules = {layer["module"] for layer in nearest.layers if layer.get("updated")}
    assert "transformer.wte" in modules and "transformer.h.0.attn.c_attn" in modules


def test_pure_weights_stay_in_their_format_and_the_optimizer_state_is_rounded():
    _, model = engine.train_model(Config(policy="bf16-pure", steps=2))
    for param in model.parameters():
        values = param.detach()
        assert torch.equal(values, values.to(torch.bfloat16).float())


def test_round_optimizer_state_rounds_the_moments_only():
    param = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    optimizer = torch.optim.Adam([param], lr=0.1)
    param.grad = torch.tensor([1e-3, 1 / 3, 1e-9], dtype=torch.float64)
    optimizer.step()
    engine.round_optimizer_state(optimizer, Policy.preset("fp16-pure").optimizer_state)
    state = optimizer.state[param]
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(state[key], state[key].half().double())
    assert state["exp_avg_sq"][2] == 0  # (1 - 0.999) * 1e-18 is far below FP16's smallest subnormal
    assert int(state["step"]) == 1


@pytest.mark.parametrize("change, message", [
    ({"model_options": {"n_layers": 2}}, "unknown model option"),
    ({"model_options": {"vocab_size": 7}}, "set by the data"),
    ({"data": "digits"}, "language-model data set"),
    ({"model": "cnn", "model_options": {}, "data": "digits", "batch_size": 5000}, "exceeds the 1437 training"),
    ({"policy": {"preset": "fp32", "params": "fp64"}}, "float32 cannot hold"),
])
def test_bad_configs_say_what_to_change(change, message):
    with pytest.raises(ValueError, match=message):
        engine.train(dataclasses.replace(Config(steps=1), **change), progress=False)


def _tiny_classifier(width=8):
    return torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Linear(width, 10))


def test_a_model_factory_trains_seeded_and_leaves_torch_global_generator_alone():
    config = Config(model=_tiny_classifier, model_options={"width": 16}, data="digits", steps=3, batch_size=8)
    state = torch.random.get_rng_state()
    (first, first_model), (second, second_model) = engine.train_model(config), engine.train_model(config)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert _weights(first_model) == _weights(second_model) and first.history == second.history
    assert first_model[0].weight.shape == (16, 64) and 0 <= first.test_accuracy <= 1
    with pytest.raises(ValueError, match="needs data="):
        engine.train(Config(model=_tiny_classifier, model_options={}, steps=1), progress=False)


def test_the_cnn_learns_its_data_above_chance():
    assert SPECS["cnn"].data == "mnist1d"
    pytest.importorskip("mnist1d")
    result = engine.train(Config(model="cnn", model_options={}, lr=3e-3, steps=150, batch_size=64), progress=False)
    assert result.test_accuracy > 0.3  # chance is 0.1
    assert result.final_loss < math.log(10)


def test_fp64_shadow_sees_fp16_flush_the_small_weight_gradients():
    config = Config(steps=2, shadow_every=1, grad_scale=2.0 ** -16)
    fp32 = engine.train(config, progress=False)
    fp16 = engine.train(dataclasses.replace(config, policy="fp16-mixed"), progress=False)
    amp = engine.train(dataclasses.replace(config, policy="fp16-amp"), progress=False)
    assert [record["step"] for record in fp32.shadow] == [0, 1]
    assert fp32.weight_grad_underflow_fraction == 0
    assert max(max(record["relative_error"]) for record in fp32.shadow) < 1e-5  # float32 against float64
    assert fp16.weight_grad_underflow_fraction > 0.5  # gradients 2^-16 times smaller: most below FP16's range
    assert amp.weight_grad_underflow_fraction < 0.01  # the loss scale 2^16 brings them back


@pytest.mark.parametrize("options, message", [
    ({"model_options": {"n_layer": 10**8}}, "GPTConfig of about .* weights is beyond"),
    ({"batch_size": 10**8}, "characters a step may take"),
])
def test_absurd_sizes_are_refused_before_anything_is_built(options, message):
    with pytest.raises(ValueError, match=message):
        engine.train(TrainConfig(policy="fp32", model="char-gpt", steps=1, **options), progress=False)


def test_the_first_run_in_a_process_gives_the_bits_of_the_runs_after_it():
    """numba's thread pool, started during the first run, once changed torch's thread count for that run."""
    import subprocess
    import sys

    script = ("import fpsim\n"
              "options = dict(model='char-gpt', model_options={'n_layer': 1, 'n_head': 2, 'n_embd': 32, "
              "'block_size': 16}, optimizer='adam', lr=3e-3, steps=4, batch_size=8, shadow_every=0, progress=False)\n"
              "first, second = (fpsim.train('bf16-mixed', **options) for _ in range(2))\n"
              "print(first.to_dict() == second.to_dict())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "True", done.stderr[-2000:]
