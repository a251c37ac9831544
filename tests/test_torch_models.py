"""char-gpt's forced-condition options: ``GPTConfig.norm`` (no LayerNorm) and ``GPTConfig.stream_scale``."""

import math

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from fpsim.torch.emulate import emulate  # noqa: E402
from fpsim.torch.models import GPTConfig, build_gpt  # noqa: E402

TINY = {"vocab_size": 11, "block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 16}


class OpNames(TorchDispatchMode):
    """Collects the names of the ATen operators run inside it."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func._schema.name.split("::")[-1])
        return func(*args, **(kwargs or {}))


def tiny_gpt(seed=0, **options):
    return build_gpt(GPTConfig(**TINY, **options), torch.Generator().manual_seed(seed))


def tokens(seed=1):
    return torch.randint(0, TINY["vocab_size"], (3, TINY["block_size"]), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("options, message", [
    ({"norm": "post"}, r"GPTConfig.norm must be one of 'pre', 'none', got 'post'"),
    ({"norm": None}, r"GPTConfig.norm must be one of"),
    ({"stream_scale": 0.0}, r"GPTConfig.stream_scale must be a positive finite number, got 0.0"),
    ({"stream_scale": -2.0}, r"stream_scale must be a positive finite number"),
    ({"stream_scale": math.inf}, r"stream_scale must be a positive finite number"),
    ({"stream_scale": math.nan}, r"stream_scale must be a positive finite number"),
    ({"stream_scale": True}, r"stream_scale must be a positive finite number"),
    ({"stream_scale": "2"}, r"stream_scale must be a positive finite number"),
])
def test_bad_norm_or_stream_scale_is_one_line_error(options, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**TINY, **options)


def test_no_norm_model_has_no_layer_norm_module_nor_op_and_the_same_other_weights():
    model, reference = tiny_gpt(norm="none"), tiny_gpt()
    assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())
    with OpNames() as ops:
        logits = model(tokens())
    assert logits.shape == (3, TINY["block_size"], TINY["vocab_size"]) and torch.isfinite(logits).all()
    assert "native_layer_norm" not in ops.names and "addmm" in ops.names
    with OpNames() as ops:
        reference(tokens())
    assert "native_layer_norm" in ops.names
    # LayerNorms draw nothing at initialisation: every other weight is the pre-LN model's
    weights = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(p, weights.pop(name)), name
    assert weights and all(".ln_" in name for name in weights)


def test_no_norm_forward_is_the_unnormalised_residual_stream():
    model = tiny_gpt(norm="none")
    idx = tokens()
    with torch.no_grad():
        x = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(TINY["block_size"]))
        for block in model.transformer.h:
            x = x + block.attn(x)
            x = x + block.mlp(x)
        assert torch.equal(model(idx), model.lm_head(x))


def test_stream_scale_moves_the_stream_but_not_what_pre_ln_computes():
    # two large scales, so that LayerNorm's eps (1e-5 against a variance of ~1e-3 at s = 1) plays no part
    model, reference = tiny_gpt(stream_scale=2.0 ** 14), tiny_gpt(stream_scale=2.0 ** 10)
    seen = {}
    for name, m in (("scaled", model), ("reference", reference)):
        m.transformer.h[1].register_forward_pre_hook(lambda module, args, name=name: seen.update({name: args[0]}))
    with torch.no_grad():
        logits, expected, unscaled = model(tokens()), reference(tokens()), tiny_gpt()(tokens())
    # the stream entering block 1 is 2^4 times larger: the embedding and the branches of block 0 all scaled
    torch.testing.assert_close(seen["scaled"], 2.0 ** 4 * seen["reference"], rtol=1e-5, atol=0)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)  # LayerNorm divides the scale out
    torch.testing.assert_close(logits, unscaled, rtol=0, atol=0.02)  # and at s = 1 only its eps differs


def test_scaled_stream_overflows_fp16_in_the_forward_pass_but_not_bf16():
    model = tiny_gpt(stream_scale=2.0 ** 24)  # branch outputs of ~2^-7 at initialisation: ~2^17 > 65504
    with torch.no_grad():
        reference = tiny_gpt()(tokens())
        with emulate("fp16-amp", model=model):
            fp16 = model(tokens())
        with emulate("bf16-mixed", model=model):
            bf16 = model(tokens())
    assert not torch.isfinite(fp16).all()
    assert torch.isfinite(bf16).all() and (bf16 - reference).abs().max() < 0.05
