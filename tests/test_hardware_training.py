"""Training on a GPU's tensor-core model: ``Policy(accumulate="H100")`` in both engines."""

import dataclasses
import json

import numpy as np
import pytest

import fpsim
from fpsim.sim.policy import Policy


def h100(preset="fp8-current", **fields):
    return dataclasses.replace(Policy.preset(preset), name=f"{preset}-h100", accumulate="H100", **fields)


# --- the policy's fields ----------------------------------------------------------------------------------

def test_accumulate_names_a_gpu_model_canonically_and_round_trips_through_json():
    policy = h100(fast_accumulation="all", promote_every=64)
    assert policy.accumulate == policy.tensor_core == "H100:wgmma"
    assert dataclasses.replace(policy, accumulate="h100:WGMMA") == policy
    assert dataclasses.replace(policy, accumulate="H100:mma.sync").accumulate == "H100:mma.sync"
    assert Policy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy
    assert "H100:wgmma tensor core (FP8 products fast everywhere, promoted to FP32 every 64)" in policy.describe()
    assert Policy.preset("fp8-current").tensor_core is None
    assert Policy.coerce({"preset": "bf16-mixed", "accumulate": "A100"}).accumulate == "A100:mma.sync"
    describes = {h100(fast_accumulation=f).describe() for f in ("forward", "all", "none")}
    assert len(describes) == 3


@pytest.mark.parametrize("fields, message", [
    ({"accumulate": "X100"}, "unknown accumulate 'X100': use a format .* or a GPU model \\(V100, A100, A2, Ada, "
                             "L40S, H100, H200, B200"),
    ({"accumulate": "H100:tcgen05"}, "H100 has no instruction 'tcgen05': use mma.sync or wgmma"),
    ({"accumulate": "H100", "fast_accumulation": "backward"}, "fast_accumulation must be one of forward, all, none"),
    ({"accumulate": "H100", "promote_every": 0}, "promote_every must be a positive integer"),
    ({"accumulate": "H100", "promote_every": True}, "promote_every must be a positive integer"),
    ({"fast_accumulation": "all"}, "apply to a GPU accumulate"),
])
def test_bad_tensor_core_fields_are_one_line_errors(fields, message):
    with pytest.raises(ValueError, match=message) as error:
        dataclasses.replace(Policy.preset("bf16-mixed"), **fields)
    assert "\n" not in str(error.value)


def test_a_policy_whose_operands_no_tensor_core_path_takes_is_refused():
    with pytest.raises(ValueError, match="multiplies params \\(e2m1\\) with activations \\(e2m1\\)"):
        dataclasses.replace(Policy.preset("mxfp4"), accumulate="H100")
    with pytest.raises(ValueError, match="gradients \\(fp16\\) with params \\(bf16\\)"):
        dataclasses.replace(Policy.preset("bf16-mixed"), gradients="fp16", accumulate="A100")
    assert dataclasses.replace(Policy.preset("fp32"), accumulate="A100").tensor_core == "A100:mma.sync"  # TF32


def test_which_products_split():
    forward_default, fast, split = h100(), h100(fast_accumulation="all"), h100(fast_accumulation="none")
    e4m3, e5m2, bf16 = fpsim.get_format("e4m3"), fpsim.get_format("e5m2"), fpsim.BF16
    assert not forward_default.splits(True, e4m3, e4m3) and forward_default.splits(False, e5m2, e4m3)
    assert not fast.splits(False, e5m2, e4m3) and split.splits(True, e4m3, e4m3)
    assert not split.splits(False, bf16, bf16)  # 16-bit products never split
    assert not Policy.preset("fp8-current").splits(False, e5m2, e4m3)


# --- the numpy engine (the MLP) ---------------------------------------------------------------------------

def mlp_run(policy, seed=0):
    return fpsim.train(policy, model="mlp", steps=3, batch_size=16, seed=seed, shadow_every=0, progress=False)


def losses(result):
    return [record["loss"] for record in result.history]


@pytest.mark.parametrize("preset, gpu", [("bf16-mixed", "A100"), ("fp8-current", "H100"), ("mxfp8", "H100")])
def test_mlp_runs_on_a_tensor_core_are_reproducible_and_differ_from_fp32_accumulation(preset, gpu):
    policy = dataclasses.replace(Policy.preset(preset), accumulate=gpu)
    first, second, ieee = mlp_run(policy), mlp_run(policy), mlp_run(Policy.preset(preset))
    assert losses(first) == losses(second) and first.test_loss == second.test_loss
    assert first.test_loss != ieee.test_loss


def test_an_mlp_product_is_fpsim_matmul_on_its_rounded_operands():
    from fpsim.engines.mlp import Compute
    from fpsim.sim.scaling import ScaledCasts
    rng = np.random.default_rng(1)
    x, W = rng.standard_normal((8, 300)).astype(np.float32), rng.standard_normal((300, 5)).astype(np.float32)
    bf16 = dataclasses.replace(Policy.preset("bf16-mixed"), accumulate="A100")
    xb, Wb = fpsim.round(x, "bf16"), fpsim.round(W, "bf16")
    expected = fpsim.matmul(xb, Wb, inputs="bf16", accumulate="A100")
    assert np.array_equal(Compute(bf16).matmul(xb, Wb, "activations", "params", 0), expected)
    assert not np.array_equal(expected, fpsim.matmul(xb, Wb, inputs="bf16", accumulate="fp32"))
    # fp8-current: q = e4m3(RN32(x s)), s = RN32(448 / amax); the scales' inverses applied after the product
    policy = h100()
    got = Compute(policy, casts=ScaledCasts(policy)).matmul(x, W, "activations", "params", 0)
    q, inverse = [], []
    for values in (x, W):
        s = np.float32(448) / np.abs(values).max()
        q.append(fpsim.round(values * s, "e4m3", saturate=True))
        inverse.append(np.float32(1) / s)
    acc = fpsim.matmul(q[0], q[1], inputs="e4m3", accumulate="H100")
    expected = (acc.astype(np.float64) * np.float64(np.float32(np.float64(inverse[0]) * inverse[1]))).astype(np.float32)
    assert np.array_equal(got, expected)


def test_a_block_scaled_product_promotes_each_block_to_fp32():
    """MXFP8 on H100: each block of 32 along K multiplied on the tensor core from 0, scaled by its two E8M0
    factors, the blocks added in FP32 rounded to nearest (the q and X here from fpsim.quantize itself)."""
    from fpsim.engines.mlp import Compute
    from fpsim.sim.scaling import ScaledCasts
    rng = np.random.default_rng(4)
    x, W = rng.standard_normal((4, 96)).astype(np.float32), rng.standard_normal((96, 3)).astype(np.float32)
    policy = dataclasses.replace(Policy.preset("mxfp8"), accumulate="H100")
    got = Compute(policy, casts=ScaledCasts(policy)).matmul(x, W, "activations", "params", 0)
    (rx, sx), (rw, sw) = (fpsim.quantize(x, "mxfp8", axis=1, return_scales=True),
                          fpsim.quantize(W, "mxfp8", axis=0, return_scales=True))
    total = np.zeros((4, 3), dtype=np.float32)
    for r in range(3):
        run = slice(32 * r, 32 * (r + 1))
        qx, qw = rx[:, run] / sx[:, r:r + 1], rw[run] / sw[r:r + 1]  # exact: powers of two
        partial = fpsim.matmul(qx, qw, inputs="e4m3", accumulate="H100")
        term = (partial.astype(np.float64) * (sx[:, r:r + 1] * sw[r:r + 1])).astype(np.float32)
        total = term if r == 0 else (total.astype(np.float64) + term).astype(np.float32)
    assert np.array_equal(got, total)


@pytest.mark.parametrize("preset, inputs", [("mxfp8", "mxfp8")])
def test_an_mx_product_on_b200_is_its_block_scaled_mma(preset, inputs):
    """On B200 (tcgen05) an MX recipe's product is the block-scaled MMA of its elements and E8M0 scales
    (``fpsim.ops.block_scaled``), not the per-block FP32 promotion Hopper needs: the same as
    ``fpsim.matmul(inputs=PRESET, accumulate="B200")``, and not the promoted sum."""
    from fpsim.engines.mlp import Compute
    from fpsim.sim.scaling import ScaledCasts
    rng = np.random.default_rng(5)
    x, W = rng.standard_normal((4, 192)).astype(np.float32), rng.standard_normal((192, 3)).astype(np.float32)
    x[:, 7] *= 2.0 ** 12  # an outlier: the in-core alignment cuts what the promoted FP32 sums keep
    on = {gpu: Compute(p, casts=ScaledCasts(p)).matmul(x, W, "activations", "params", 0)
          for gpu in ("B200", "B200:mma.sync") for p in [dataclasses.replace(Policy.preset(preset), accumulate=gpu)]}
    assert np.array_equal(on["B200"], fpsim.matmul(x, W, inputs=inputs, accumulate="B200"))
    assert not np.array_equal(on["B200"], on["B200:mma.sync"])


# --- the torch engine ------------------------------------------------------------------------------------

torch = pytest.importorskip("torch")
from fpsim.sim.config import TrainConfig  # noqa: E402
from fpsim.sim.scaling import ScaledCasts  # noqa: E402
from fpsim.torch import emulate, engine  # noqa: E402

TINY_GPT = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16}
TINY_CNN = {"channels": 4, "n_conv": 2, "kernel_size": 3}


def torch_run(policy, model="char-gpt", seed=0):
    options = TINY_GPT if model == "char-gpt" else TINY_CNN
    config = TrainConfig(policy=policy, model=model, model_options=dict(options), optimizer="adam", lr=1e-3,
                         steps=2, batch_size=4, seed=seed, record_every=0, shadow_every=0)
    result, trained = engine.train_model(config)
    return result, [param.detach().clone() for param in trained.parameters()]


@pytest.mark.parametrize("model, preset, gpu", [
    pytest.param("char-gpt", "fp8-current", "H100", marks=pytest.mark.slow), ("char-gpt", "bf16-mixed", "A100"),
    pytest.param("cnn", "fp8-current", "H100", marks=pytest.mark.slow), ("cnn", "bf16-mixed", "H100")])
def test_torch_runs_on_a_tensor_core_are_bit_identical_and_differ_from_fp32_accumulation(model, preset, gpu):
    """FP8 products on Hopper keep 13 bits: two steps of these tiny models already differ from FP32 accumulation.
    With 16-bit inputs (24 / 25 bits kept) the tiny models' short sums round to the same 16-bit values: that the
    products differ is ``test_a_torch_product_truncates_as_the_tensor_core_does``'s to show."""
    policy = dataclasses.replace(Policy.preset(preset), name=f"{preset}-{gpu}", accumulate=gpu)
    (first, weights), (second, again) = torch_run(policy, model), torch_run(policy, model)
    assert losses(first) == losses(second) and first.test_loss == second.test_loss
    assert all(torch.equal(a, b) for a, b in zip(weights, again))
    if policy.params.bits == 8:
        _, ieee = torch_run(Policy.preset(preset), model)
        assert not all(torch.equal(a, b) for a, b in zip(weights, ieee))


def linear_step(policy, x, out_features=8, seed=0):
    """(y, dW, dx) of one Linear's forward and backward inside ``emulate`` under ``policy``."""
    linear = torch.nn.Linear(x.shape[1], out_features)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator))
        linear.bias.copy_(torch.randn(linear.bias.shape, generator=generator))
    x = x.clone().requires_grad_()
    casts = ScaledCasts(policy) if policy.scaling is not None else None
    with emulate(policy, model=linear, accumulate="exact" if policy.tensor_core else "native", casts=casts):
        y = linear(x)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1)))
    return y.detach(), linear.weight.grad, x.grad, linear


def test_a_torch_product_is_fpsim_matmul_on_its_rounded_operands():
    x = torch.randn(6, 200, generator=torch.Generator().manual_seed(2))
    policy = dataclasses.replace(Policy.preset("bf16-mixed"), accumulate="A100")
    y, _, _, linear = linear_step(policy, x)
    xb, Wb = fpsim.round(x.numpy(), "bf16"), fpsim.round(linear.weight.detach().numpy(), "bf16")
    product = fpsim.matmul(xb, Wb.T, inputs="bf16", accumulate="A100")
    expected = fpsim.round(product + fpsim.round(linear.bias.detach().numpy(), "bf16"), "bf16")  # FP32 epilogue
    assert np.array_equal(y.numpy(), expected)



def test_a_torch_product_truncates_as_the_tensor_core_does():
    """1 - 1 + 198 t (t = 2^-30): A100's first fused step (k = 8) aligns t to 1 and cuts it (24 bits kept), so
    6 t are lost; a sequential IEEE FP32 accumulator keeps them all (bf16 holds both results)."""
    x = torch.tensor([[1.0, -1.0] + [2.0 ** -30] * 198])
    linear = torch.nn.Linear(200, 1)
    with torch.no_grad():
        linear.weight.fill_(1.0)
        linear.bias.zero_()
    results = {}
    for gpu in (None, "A100"):
        policy = Policy.preset("bf16-mixed") if gpu is None else dataclasses.replace(Policy.preset("bf16-mixed"),
                                                                                      accumulate=gpu)
        with torch.no_grad(), emulate(policy, model=linear, accumulate="exact"):
            results[gpu] = float(linear(x))
    assert results == {None: 198 * 2.0 ** -30, "A100": 192 * 2.0 ** -30}


def test_fast_and_split_accumulation_differ_where_they_should():
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(3))
    runs = {fast: linear_step(h100(fast_accumulation=fast), x) for fast in ("forward", "all", "none")}
    # the forward product (K = 256) is fast under "forward" and "all", split under "none"
    assert torch.equal(runs["forward"][0], runs["all"][0]) and not torch.equal(runs["forward"][0], runs["none"][0])
    # the weight gradient (K = the batch, 256) is split under "forward" and "none", fast under "all"
    assert torch.equal(runs["forward"][1], runs["none"][1]) and not torch.equal(runs["forward"][1], runs["all"][1])


def test_convolutions_on_a_tensor_core_are_the_convolution_where_every_sum_is_exact():
    """Small integers: every product and sum exact on the tensor core, so the lowering (im2col, strides,
    padding, dilation, the backward's flipped kernel) must give torch's float64 convolution bit for bit."""
    import copy
    policy = dataclasses.replace(Policy.preset("bf16-mixed"), accumulate="A100")
    generator = torch.Generator().manual_seed(0)
    for conv, shape in [(torch.nn.Conv1d(3, 4, 5, stride=2, padding=2), (2, 3, 11)),
                        (torch.nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 1), dilation=(1, 2)), (2, 3, 7, 6))]:
        with torch.no_grad():
            for param in conv.parameters():
                param.copy_(torch.randint(-2, 3, param.shape, generator=generator).float())
        reference = copy.deepcopy(conv).double()
        x = torch.randint(-2, 3, shape, generator=generator).float().requires_grad_()
        with emulate(policy, model=conv, accumulate="exact"):
            y = conv(x)
            grad = torch.randint(-2, 3, y.shape, generator=generator).float()
            y.backward(grad)
        x64 = x.detach().double().requires_grad_()
        y64 = reference(x64)
        y64.backward(grad.double())
        assert torch.equal(y.double(), y64) and torch.equal(x.grad.double(), x64.grad)
        assert torch.equal(conv.weight.grad.double(), reference.weight.grad)
        assert torch.equal(conv.bias.grad.double(), reference.bias.grad)


def test_products_without_a_tensor_core_path_are_one_line_errors():
    with pytest.raises(ValueError, match="per-tensor scaling") as error:
        torch_run(dataclasses.replace(Policy.preset("fp8-rowwise"), accumulate="H100"), model="cnn")
    assert "\n" not in str(error.value)
    policy = dataclasses.replace(Policy.preset("bf16-mixed"), accumulate="A100")
    with pytest.raises(ValueError, match="has no tensor-core path"):
        with emulate(policy, accumulate="exact"):
            torch.mv(torch.ones(3, 3), torch.ones(3))
