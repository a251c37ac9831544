"""The placement tables of both autocast backends: "autocast-cuda" (the default) and "autocast-cpu", against
the real torch.autocast("cpu") (issue 20, item 6)."""

import json
import math

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import fpsim  # noqa: E402
from fpsim.torch import emulate, placement  # noqa: E402
from fpsim.torch.products import flash_attention  # noqa: E402

aten = torch.ops.aten


def bits(tensor):
    return tensor.detach().float().contiguous().view(torch.int32)


def policy(preset, table):
    return fpsim.Policy.from_dict({"preset": preset, "placement": table})


def test_placement_names_the_old_spelling_read_as_autocast_cuda(tmp_path):
    assert fpsim.Policy().placement == "autocast-cuda" == fpsim.Policy(placement="autocast").placement
    saved = tmp_path / "old.json"
    saved.write_text(json.dumps({"preset": "bf16-mixed", "placement": "autocast"}))
    assert fpsim.Policy.coerce(str(saved)) == fpsim.Policy.preset("bf16-mixed")  # the preset itself, unrenamed
    assert policy("bf16-mixed", "autocast-cpu").to_dict()["placement"] == "autocast-cpu"
    with pytest.raises(ValueError, match="placement must be one of autocast-cuda, autocast-cpu, low-precision"):
        fpsim.Policy(placement="autocast-tpu")
    with pytest.raises(ValueError, match="keep placement='autocast-cuda'"):
        policy("fp8-current", "autocast-cpu")


def test_the_tables_differ_where_the_backends_lists_do():
    cuda, cpu = ("autocast-cuda", "autocast-cpu")
    for op, on_cuda, on_cpu in ((aten._softmax.default, placement.FP32, placement.PROMOTE),
                                (aten.native_layer_norm.default, placement.FP32, placement.PROMOTE),
                                (aten.pow.Tensor_Scalar, placement.FP32, placement.PROMOTE),
                                (aten.addmv.default, placement.MATMUL, placement.PROMOTE),
                                (aten.trace.default, placement.PROMOTE, placement.FP32),
                                (aten.mm.default, placement.MATMUL, placement.MATMUL),
                                (aten.nll_loss_forward.default, placement.FP32, placement.FP32)):
        assert (placement.placement_of(op, cuda).placement, placement.placement_of(op, cpu).placement) == (
            on_cuda, on_cpu), op
    assert placement.placement_of(aten.native_layer_norm.default, cpu).promote_from == (0,)
    assert placement.placement_of(aten.linear.default, cpu).composite  # decomposed, never placed whole
    with pytest.raises(ValueError, match="aten.reshape is a composite"):
        placement.op_table((placement.VIEW, (aten.reshape,)))


def test_softmax_and_layer_norm_of_a_product_follow_each_backends_autocast():
    """On the CPU softmax and a LayerNorm with FP32 weights take a BF16 product's output and return BF16; on
    CUDA they run in FP32.  autocast-cpu gives the real CPU autocast's values bit for bit, autocast-cuda not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16), nn.Linear(16, 16), nn.Softmax(dim=-1))
    x = torch.randn(8, 16)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            real = model(x)
        assert real.dtype == torch.bfloat16
        out = {}
        for table in ("autocast-cuda", "autocast-cpu"):
            with emulate(policy("bf16-mixed", table), model=model):
                out[table] = model(x)
    assert torch.equal(bits(out["autocast-cpu"]), bits(real))
    assert not torch.equal(out["autocast-cuda"], out["autocast-cuda"].bfloat16().float())  # FP32 softmax


def test_cpu_flash_attention_exp_is_the_kernels_for_16_bit_inputs():
    from fpsim.torch.products import FAST_EXP_VECTOR_FLOATS
    if torch.backends.cpu.get_cpu_capability() not in FAST_EXP_VECTOR_FLOATS:
        pytest.skip(f"ATen's fast exp is modelled on x86 ({', '.join(FAST_EXP_VECTOR_FLOATS)}) only")
    generator = torch.Generator().manual_seed(0)
    for keys, causal in ((32, True), (24, False), (8, False)):  # 24, 8: the vector loop's scalar tail
        q = torch.randn(2, 4, 32 if causal else 12, 16, generator=generator).bfloat16()
        k, v = (torch.randn(2, 4, keys, 16, generator=generator).bfloat16() for _ in range(2))
        real, real_lse = aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal)
        shares = {}
        for fast in (False, True):
            out, lse = flash_attention(q.float(), k.float(), v.float(), causal, None, fpsim.BF16, fast_exp=fast)
            shares[fast] = (bits(out.bfloat16()) == bits(real)).double().mean().item()
            if causal:  # a row of one key: its log-sum-exp is that score plus log(exp(0)); the kernel's exp(0) < 1
                assert (lse[:, :, 0] == real_lse[:, :, 0]).all().item() is fast
        assert shares[True] == 1.0, (keys, shares)
        width = FAST_EXP_VECTOR_FLOATS[torch.backends.cpu.get_cpu_capability()]
        # keys below one vector all take the scalar tail's std::exp (measured AVX512: 0.96, 0.98, 1.0; AVX2 0.96)
        assert shares[False] < 0.99 if keys >= width else shares[False] == 1.0, (keys, width, shares)
    x = torch.tensor([-math.inf, -100.0, -87.3, -1.0, 0.0])
    exp = torch.from_numpy(fpsim.torch.products.cpu_fast_exp(x.numpy()))
    assert exp[0] == exp[1] == 0 and 0 < exp[2] < 2e-38 and exp[4] == 0.99994659423828125
    torch.testing.assert_close(exp[2:], torch.exp(x[2:]), rtol=2 ** -8, atol=0)  # within a BF16 unit


def _tiny_gpt2():
    transformers = pytest.importorskip("transformers", reason="the Hugging Face model needs transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=2, n_positions=32, vocab_size=97, attn_implementation="sdpa")).eval()
    return model, torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(0))


FP16_AVX2 = pytest.mark.xfail(torch.backends.cpu.get_cpu_capability() != "AVX512", strict=False, reason=(
    "measured on an AVX2 CPU (torch 2.13): 65% of FP16 logits identical with autocast-cpu (AVX512: 100%); the flash "
    "attention matches there, the rest of CPU FP16 autocast's kernels on AVX2 is not modelled yet"))


@pytest.mark.parametrize("dtype, preset", [(torch.bfloat16, "bf16-mixed"),
                                           pytest.param(torch.float16, "fp16-mixed", marks=FP16_AVX2)])
def test_autocast_cpu_logits_agree_with_real_cpu_autocast(dtype, preset):
    model, ids = _tiny_gpt2()
    with torch.no_grad():
        with torch.autocast("cpu", dtype=dtype):
            real = model(input_ids=ids).logits
        shares = {}
        for table in ("autocast-cuda", "autocast-cpu"):
            with emulate(policy(preset, table), model=model):
                shares[table] = (bits(model(input_ids=ids).logits) == bits(real)).double().mean().item()
    # measured (2 x 16 tokens; benchmarks/cpu_autocast_compare.py, 2 x 32: the same): autocast-cpu 1.0,
    # autocast-cuda 0.43 (softmax, layer norms and GELU's pow in FP32 there)
    assert shares["autocast-cpu"] >= 0.99 and shares["autocast-cuda"] < 0.8, shares


class _Head(nn.Module):
    """A product and a softmax in one module (its own weight): an override covers both."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(16, 16))

    def forward(self, x):
        return torch.softmax(x @ self.weight, dim=-1)


def test_an_override_placed_by_the_cpu_table_runs_its_modules_ops_by_that_table():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), _Head())
    x = torch.randn(8, 16)
    run = fpsim.Policy.coerce({"preset": "bf16-mixed", "overrides": {"1": {"preset": "bf16-mixed",
                                                                            "placement": "autocast-cpu"}}})
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            real = model(x)
        with emulate(run, model=model):
            out = model(x)
        with emulate("bf16-mixed", model=model):
            cuda = model(x)
    assert torch.equal(bits(out), bits(real))  # module "1"'s softmax in BF16, as on the CPU
    assert not torch.equal(bits(cuda), bits(real))  # in FP32 under the run's CUDA table
