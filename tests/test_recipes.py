"""The frontier recipes as presets: torchao's tensorwise and rowwise Float8Linear (emulated, CPU) bit for bit, the
formulas of Transformer Engine's Float8BlockScaling, MXFP8BlockScaling and NVFP4BlockScaling by hand, the JSON
round trip and two same-seed runs of every new preset."""

import dataclasses
import json

import numpy as np
import pytest

import fpsim
from fpsim.ops.hadamard import hadamard, rht_matrix
from fpsim.sim.policy import POLICIES, Policy
from fpsim.sim.scaling import ScaledCasts, Scaling

NEW_PRESETS = ("fp8-rowwise", "fp8-rowwise-fp32-scales", "fp8-blockwise", "mxfp8-te", "nvfp4-te")


def operand_casts(preset, kind, values, axis=-1, weight_gradient=False):
    return ScaledCasts(POLICIES[preset]).cast(np.asarray(values, dtype=np.float32), kind, "m", axis,
                                             weight_gradient=weight_gradient)


# --- torchao's Float8Linear (emulate=True: its casts and products on CPU) ------------------------------------------
def torchao_float8():
    pytest.importorskip("torchao", reason="torchao is not installed: pip install 'fpsim[test]' for these references")
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as error:  # pragma: no cover - a torchao without the float8 API
        pytest.skip(f"torchao.float8 is unavailable: {error}")
    return Float8LinearConfig, convert_to_float8_training


def small_mlp(torch, generator):
    model = torch.nn.Sequential(torch.nn.Linear(64, 32, bias=False), torch.nn.ReLU(),
                                torch.nn.Linear(32, 16, bias=False))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model


@pytest.mark.parametrize("recipe, preset", [("tensorwise", "fp8-current"), ("rowwise", "fp8-rowwise")])
def test_the_fp8_presets_are_torchaos_float8_linear_bit_for_bit_outputs_and_gradients(recipe, preset):
    torch = pytest.importorskip("torch")
    Float8LinearConfig, convert_to_float8_training = torchao_float8()
    from fpsim.torch import emulate
    generator = torch.Generator().manual_seed(0)
    reference = small_mlp(torch, generator)
    x = torch.randn(32, 64, generator=generator) * 3
    grad = torch.randn(32, 16, generator=generator) * 1e-2
    ours = small_mlp(torch, torch.Generator().manual_seed(0))
    config = dataclasses.replace(Float8LinearConfig.from_recipe_name(recipe), emulate=True)
    theirs = convert_to_float8_training(reference, config=config)
    expected = theirs(x)
    expected.backward(grad)
    with emulate(preset, model=ours):
        out = ours(x)
        out.backward(grad)
    assert torch.equal(out.detach(), expected.detach())
    for mine, reference_parameter in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(mine.grad, reference_parameter.grad)
    other = "fp8-rowwise-fp32-scales" if recipe == "rowwise" else "fp8-rowwise"  # the test can tell recipes apart
    with emulate(other, model=ours):
        assert not torch.equal(ours(x).detach(), expected.detach())


# --- Transformer Engine's recipes, by their formulas ---------------------------------------------------------------
def test_fp8_blockwise_scales_activations_per_1x128_and_weights_per_128x128_with_te_power_of_two_scales():
    """TE Float8BlockScaling: scale = 448 / amax in FP32, its mantissa dropped (a power of two), x * scale cast to
    E4M3, dequantized by 1 / scale.  Hand-checked: amax 3.0 -> 448 / 3 = 149.33 -> 128 (2^7); amax 0.75 ->
    597.3 -> 512."""
    x = np.zeros((2, 256), dtype=np.float32)
    x[0, :128], x[0, 128:] = 3.0, 0.75
    x[0, 5], x[0, 130] = 0.1, 0.1
    x[1] = 1.5  # 448 / 1.5 = 298.67 -> 256: 1.5 * 256 = 384, an E4M3 number (ceil would give 192)
    out = operand_casts("fp8-blockwise", "activations", x)
    e4m3 = fpsim.E4M3
    assert out[0, 5] == float(fpsim.round(np.float32(0.1 * 128), e4m3)) / 128  # 12.8 -> 13 -> 0.1015625
    assert out[0, 130] == float(fpsim.round(np.float32(0.1 * 512), e4m3)) / 512  # 51.2 -> 52 -> 0.1015625
    assert out[0, 5] == 0.1015625 and out[0, 130] == 0.1015625 and (out[1] == 1.5).all()
    # along the other axis: 1.4 * 2^-14 in a row of amax 3 (scale 128) is an E4M3 subnormal, 5.6 * 2^-9 -> 6 * 2^-9;
    # in a column of amax 1.5 (scale 256) a normal, 1.4 * 2^-6 -> 1.375 * 2^-6
    x[0, 10] = 1.4 * 2.0**-14
    assert operand_casts("fp8-blockwise", "activations", x)[0, 10] == 1.5 * 2.0**-14
    assert operand_casts("fp8-blockwise", "activations", x[:, :128], axis=0)[0, 10] == 1.375 * 2.0**-14
    weights = np.full((256, 256), 0.75, dtype=np.float32)
    weights[0, 0], weights[200, 200], weights[1, 1] = 3.0, 3.0, 0.1
    cast = operand_casts("fp8-blockwise", "params", weights)
    assert cast[1, 1] == 0.1015625 and cast[1, 129] == 0.75  # block (0, 0) scale 128; block (0, 1) scale 512
    assert cast[130, 1] == 0.75 and cast[1, 130] == cast[130, 1]
    assert (operand_casts("fp8-blockwise", "params", weights.T) == cast.T).all()  # W and W^T quantize alike


def test_mxfp8_te_rounds_its_e8m0_scale_up_from_amax_over_448():
    """TE MXFP8BlockScaling: X = 2^ceil(log2 RN32(amax * RN32(1 / 448))), where the OCP rule (mxfp8) takes
    X = 2^(floor(log2 amax) - 8).  Hand-checked: amax 470: TE X = 2 (470 / 448 = 1.049), 470 / 2 = 235 -> E4M3
    240 -> 480; OCP X = 1, 470 saturates at 448.  And 1.3 * 2^-8 (an E4M3 subnormal after scaling): TE
    0.00254 / 2^-9 = 1.3 -> 1 -> 2^-9 * 2 = 2^-8; OCP 2.6 -> 3 -> 3 * 2^-9."""
    x = np.ones((1, 32), dtype=np.float32)
    x[0, 0], x[0, 1] = 470.0, 1.3 * 2.0**-8
    te, spec = operand_casts("mxfp8-te", "activations", x), operand_casts("mxfp8", "activations", x)
    assert te[0, 0] == 480.0 and spec[0, 0] == 448.0
    assert te[0, 1] == 2.0**-8 and spec[0, 1] == 3 * 2.0**-9
    assert (te[0, 2:] == 1.0).all() and (spec[0, 2:] == 1.0).all()


def test_nvfp4_te_tiles_its_weights_16x16_and_its_activations_1x16():
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(32, 48)).astype(np.float32)
    cast = operand_casts("nvfp4-te", "params", weights)
    assert (operand_casts("nvfp4-te", "params", weights.T) == cast.T).all()
    assert (cast == fpsim.quantize(weights, "nvfp4_te", block_size=(16, 16))).all()
    acts = operand_casts("nvfp4-te", "activations", weights)
    assert (acts == fpsim.quantize(weights, "nvfp4_te")).all() and not (acts == cast).all()


def test_nvfp4_te_rounds_gradients_stochastically_and_only_gradients():
    rng = np.random.default_rng(2)
    values = rng.normal(size=(64, 64)).astype(np.float32)
    casts = ScaledCasts(POLICIES["nvfp4-te"])
    first, second = casts.cast(values, "gradients", "m"), casts.cast(values, "gradients", "m")
    assert not (first == second).all()  # a stream of random draws
    again = ScaledCasts(POLICIES["nvfp4-te"])
    assert (again.cast(values, "gradients", "m") == first).all()  # seeded: the same run, the same bits
    assert (casts.cast(values, "activations", "m") == casts.cast(values, "activations", "m")).all()
    block = np.full((1, 16), 0.3, np.float32)
    block[0, 0] = 1.0  # amax 1: 0.3 becomes 1.8 in E2M1 units, between 1.5 and 2 (nearest: 2, i.e. 1/3)
    many = np.stack([casts.cast(block, "gradients", "m")[0, 1:] for _ in range(1000)])
    nearest = fpsim.quantize(block, "nvfp4_te")[0, 1:]
    assert np.unique(many).size == 2  # the two E2M1 neighbours, 1.5 and 2 units
    assert abs(many.mean() - 0.3) < 0.002 < 0.03 < abs(nearest.mean() - 0.3)  # unbiased where nearest is not


def test_nvfp4_te_transforms_both_weight_gradient_operands_by_tes_16_point_hadamard():
    """Q(dy^T R) Q(R^T x) with R = diag(s) H_16 / 4 (TE's fixed signs): the product is dy^T x up to the
    quantization, and each operand is the quantization of its transform."""
    rng = np.random.default_rng(3)
    dy_t, x = rng.normal(size=(8, 32)).astype(np.float32), rng.normal(size=(32, 8)).astype(np.float32)
    policy = Policy.coerce({"preset": "nvfp4-te", "scaling": {"gradients": {"kind": "block", "block": "nvfp4_te",
                                                                            "hadamard": True}}})
    casts = ScaledCasts(policy)  # gradients to nearest here, so that the operands can be checked exactly
    a = casts.cast(dy_t, "gradients", "m", axis=-1, weight_gradient=True)
    b = casts.cast(x, "activations", "m", axis=0, weight_gradient=True)
    assert (a == fpsim.quantize(hadamard(dy_t, 16, "te"), "nvfp4_te")).all()
    assert (b == fpsim.quantize(hadamard(x, 16, "te", axis=0), "nvfp4_te", axis=0)).all()
    rotation = rht_matrix(16, "te")  # the transform is x_block R, blocks of 16 along the reduction axis
    assert np.allclose(hadamard(dy_t, 16, "te")[:, 16:], dy_t[:, 16:] @ rotation, rtol=1e-6, atol=1e-6)
    assert (casts.cast(dy_t, "gradients", "m", axis=-1) == fpsim.quantize(dy_t, "nvfp4_te")).all()  # dgrad: no RHT
    exact = dy_t.astype(np.float64) @ x
    assert np.abs(a.astype(np.float64) @ b - exact).max() < 0.5 * np.abs(exact).max()
    with pytest.raises(ValueError, match="multiple of 16"):
        casts.cast(dy_t[:, :20], "gradients", "m", axis=-1, weight_gradient=True)


@pytest.mark.parametrize("engine", ["torch", "mlp"])
def test_only_the_weight_gradient_products_ask_for_the_hadamard_transform(engine, monkeypatch):
    seen = []
    real_cast = ScaledCasts.cast

    def spy(self, values, kind, module, axis=-1, **options):
        seen.append((kind, options.get("weight_gradient", False)))
        return real_cast(self, values, kind, module, axis, **options)

    monkeypatch.setattr(ScaledCasts, "cast", spy)
    if engine == "torch":
        torch = pytest.importorskip("torch")
        from fpsim.torch import emulate
        layer = torch.nn.Linear(32, 16, bias=False)
        x = torch.randn(16, 32, requires_grad=True)
        with emulate({"preset": "nvfp4-te", "overrides": {}}, model=layer):
            layer(x).sum().backward()
    else:
        fpsim.train({"preset": "nvfp4-te", "overrides": {}}, model="mlp", steps=1, batch_size=32, hidden=(16,),
                    progress=False, shadow_every=0)
    forward = [("params", False), ("activations", False)]
    dgrad, wgrad = [("gradients", False), ("params", False)], [("activations", True), ("gradients", True)]
    if engine == "torch":  # one step: forward, then the backward's two products
        assert sorted(seen[:2]) == sorted(forward) and sorted(seen[2:]) == sorted(dgrad + wgrad)
    else:
        assert {("activations", True), ("gradients", True)} <= set(seen) and ("params", True) not in seen


def test_the_nvfp4_te_preset_keeps_its_last_layers_in_bf16():
    layers = [f"layers.{i}" for i in range(10)]
    assignment = POLICIES["nvfp4-te"].resolve_overrides(layers)
    assert [assignment.policy_of(p).name for p in layers] == ["nvfp4-te"] * 8 + ["bf16-mixed"] * 2


# --- every new preset -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", NEW_PRESETS)
def test_each_new_preset_round_trips_through_json_and_describes_its_components(preset):
    policy = POLICIES[preset]
    assert Policy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy
    described = {"fp8-rowwise": "row (power-of-two scales)",
                 "fp8-blockwise": "block 128x128, scale rounding floor-scale",
                 "mxfp8-te": "scale rounding rceil", "nvfp4-te": "stochastic rounding, Hadamard on weight gradients",
                 "fp8-rowwise-fp32-scales": "gradients scaling row"}[preset]
    assert described in policy.describe()


@pytest.mark.parametrize("change, message", [
    ({"kind": "block", "block": "nvfp4_te", "block_size": (16, 8)}, "square pair"),
    ({"kind": "row", "block_size": 16}, "belongs to a 'block' scaling"),
    ({"kind": "block", "block": "mxfp8", "power_of_two": True}, "needs kind 'tensor' or 'row'"),
    ({"kind": "row", "stochastic": 1}, "stochastic must be True or False"),
])
def test_a_bad_recipe_field_is_one_line(change, message):
    with pytest.raises(ValueError, match=message) as error:
        Scaling.coerce(change)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("model", ["char-gpt", "cnn"])
@pytest.mark.parametrize("preset", ["fp8-rowwise", "fp8-blockwise", "mxfp8-te", "nvfp4-te"])
def test_two_same_seed_runs_of_a_new_preset_are_bit_identical(preset, model):
    pytest.importorskip("torch")
    run = {"model": model, "steps": 2, "batch_size": 8, "seed": 3, "progress": False, "shadow_every": 0}
    if model == "char-gpt":
        run["model_options"] = {"n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 16}
    first, second = fpsim.train(preset, **run), fpsim.train(preset, **run)
    assert first.status == "ok" and first.to_dict() == second.to_dict()
