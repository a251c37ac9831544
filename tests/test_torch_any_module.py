"""emulate and inspect on any module: TorchScript, 16-bit dtypes, the meta device (issue 20, item 3)."""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from fpsim.sim.recorder import Recorder  # noqa: E402
from fpsim.torch import emulate, inspect  # noqa: E402
from fpsim.torch.tracking import OUTSIDE  # noqa: E402


class Seen:
    """A recorder keeping (kind, path) and the values after each rounding."""

    def __init__(self):
        self.entries = []

    def rounded(self, kind, path, before, after, fmt):
        self.entries.append((kind, path, np.array(after)))


def small(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 4))


def run(model, policy, recorder=None, module=None):
    torch.manual_seed(1)
    x = torch.randn(5, 8)
    model.zero_grad(set_to_none=True)
    with emulate(policy, model=module if module is not None else model, recorder=recorder):
        out = model(x)
        out.square().sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("script", ["script", "trace"])
@pytest.mark.parametrize("policy", ["bf16-mixed", "fp16-pure", "fp8-current"])
def test_a_torchscript_module_runs_with_one_warning_and_the_eager_numbers(script, policy):
    """``emulate(..., model=torch.jit.script(m))`` raised ``register_forward_pre_hook is not supported on
    ScriptModules``; now its numbers are the eager module's bit for bit, weight gradients by module path."""
    eager = small()
    scripted = torch.jit.script(small()) if script == "script" else torch.jit.trace(small(), torch.randn(5, 8))
    eager_seen, scripted_seen = Seen(), Seen()
    expected = run(eager, policy, eager_seen if policy != "fp8-current" else None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = run(scripted, policy, scripted_seen if policy != "fp8-current" else None)
    messages = [str(w.message) for w in caught if "TorchScript" in str(w.message)]
    assert len(messages) == 1 and "\n" not in messages[0] and OUTSIDE in messages[0]
    assert torch.equal(expected[0], got[0])
    for index, (a, b) in enumerate(zip(expected[1], got[1])):
        assert torch.equal(a, b), index
    if policy != "fp8-current":
        weight_paths = {path for kind, path, _ in scripted_seen.entries if kind == "weight_grads"}
        eager_paths = {path for kind, path, _ in eager_seen.entries if kind == "weight_grads"}
        assert {"0", "3"} <= weight_paths <= eager_paths and (script == "script" or weight_paths == eager_paths)
        assert {path for kind, path, _ in scripted_seen.entries if kind != "weight_grads"} == {OUTSIDE}


@pytest.mark.parametrize("policy", ["bf16-mixed", "fp16-pure"])
def test_a_scripted_module_compiled_before_gives_the_eager_gradients(policy):
    """A scripted module run a few times outside holds an optimised plan whose backward is one
    ``DifferentiableGraph`` node (TorchScript's autodiff): its Linear biases' gradients were summed from the
    unrounded incoming gradient.  emulate runs it op by op, and leaves TorchScript optimising outside."""
    scripted, x = torch.jit.script(small()), torch.randn(5, 8)
    for _ in range(3):  # the profiling executor optimises from the second run on
        scripted(x).square().sum().backward()
    expected = run(small(), policy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = [run(scripted, policy) for _ in range(2)]
    for grads in (got[0][1], got[1][1]):
        for index, (a, b) in enumerate(zip(expected[1], grads)):
            assert torch.equal(a, b), index
    assert torch._C._get_graph_executor_optimize()
    for _ in range(3):
        scripted(x)
    assert "DifferentiableGraph" in str(torch.jit.last_executed_optimized_graph())


def test_inspect_measures_a_torchscript_module():
    """``inspect(torch.jit.script(m), x)`` raised; now its output is measured under ``(outside)`` and its weight
    gradients under their module paths, the same values as the eager module's."""
    torch.manual_seed(1)
    x = torch.randn(5, 8)
    with pytest.warns(UserWarning, match="TorchScript"):
        scripted = inspect(torch.jit.script(small()), x)
    eager = inspect(small(), x)
    assert (OUTSIDE, "activations") in scripted.values and (OUTSIDE, "activation_grads") in scripted.values
    for path in ("0", "1", "3"):
        np.testing.assert_array_equal(scripted.values[(path, "weight_grads")], eager.values[(path, "weight_grads")])
    np.testing.assert_array_equal(scripted.values[(OUTSIDE, "activations")], eager.values[("3", "activations")])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("policy", ["fp16-mixed", "bf16-mixed", "fp8-current"])
def test_a_16_bit_model_is_refused_in_one_line_saying_model_float(dtype, policy):
    model = small().to(dtype)
    with pytest.raises(TypeError, match=r"model\.float\(\)") as raised:
        with emulate(policy, model=model, recorder=Recorder() if policy != "fp8-current" else None):
            model(torch.randn(5, 8, dtype=dtype))
    assert "\n" not in str(raised.value) and str(dtype) in str(raised.value)


@pytest.mark.parametrize("policy", ["fp16-mixed", "bf16-pure", "fp8-current", "nvfp4"])
def test_a_meta_model_is_a_dry_run(policy):
    """Shapes pass through, nothing is rounded or recorded (numpy's ``can't convert meta device type tensor``
    before)."""
    model = small().to("meta")
    seen = Seen()
    with emulate(policy, model=model, recorder=seen if policy in ("fp16-mixed", "bf16-pure") else None):
        out = model(torch.randn(5, 8, device="meta"))
        out.sum().backward()
    assert out.is_meta and out.shape == (5, 4) and model[0].weight.grad.is_meta
    assert seen.entries == []


def test_inspect_refuses_a_meta_model_in_one_line():
    with pytest.raises(ValueError, match="meta") as raised:
        inspect(small().to("meta"), torch.randn(5, 8, device="meta"))
    assert "\n" not in str(raised.value)


def test_a_hugging_face_model_on_the_meta_device_under_a_16_bit_policy_and_fp8():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    ids = torch.randint(0, 64, (2, 8), device="meta")
    for policy, recorder in (("fp16-mixed", Recorder()), ("fp8-current", None)):
        with emulate(policy, model=model, recorder=recorder):
            logits = model(input_ids=ids).logits
            logits.sum().backward()
        assert logits.is_meta and logits.shape == (2, 8, 64)


def test_fp32_is_plain_torch_bit_for_bit():
    """The in-process counterpart of tests/test_torch_threads.py's subprocess check, on a model with LayerNorm."""
    model = small()
    torch.manual_seed(1)
    x = torch.randn(5, 8)
    plain = model(x)
    plain.square().sum().backward()
    expected = [plain.detach()] + [p.grad.clone() for p in model.parameters()]
    got = run(model, "fp32", Seen())
    for a, b in zip(expected, (got[0], *got[1])):
        assert torch.equal(a, b)
