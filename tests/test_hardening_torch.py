"""Hardening of fpsim.torch (issue 18): emulation contexts that leave nothing behind, every dtype and layout
emulated or refused in one line, non-finite values counted by ``inspect``, and ``fpsim inspect``'s options."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from fpsim.cli import main  # noqa: E402
from fpsim.numerics.exact import round_exact  # noqa: E402
from fpsim.sim.policy import Policy  # noqa: E402
from fpsim.sim.scaling import ScaledCasts  # noqa: E402
from fpsim.torch import emulate, inspect  # noqa: E402
from fpsim.torch.placement import placement_of  # noqa: E402

POLICIES = ["bf16-mixed", "fp16-mixed", "fp32"]


def bits(tensor):
    return tensor.detach().contiguous().view(torch.int32 if tensor.dtype == torch.float32 else torch.int64)


def linear(n_in=8, n_out=4, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out).to(dtype)


def exact_round(values, fmt):
    """The oracle: each value's exact binary value rounded once to ``fmt`` (``fpsim.numerics.exact``)."""
    return np.vectorize(lambda v: round_exact(float(v), fmt))(np.asarray(values, dtype=np.float64))


# --- W1: a context leaves nothing behind that another one reads ------------------------------------------
def test_each_context_rounds_its_own_inputs_whatever_ran_before():
    model, x = linear(), torch.randn(3, 8)
    reused = {}
    for policy in POLICIES:
        with emulate(policy, model=model):
            reused[policy] = model(x)
    for policy in POLICIES:
        with emulate(policy, model=model):
            fresh = model(x.clone())
        assert torch.equal(bits(reused[policy]), bits(fresh)), policy


def test_a_tensor_made_under_fp16_is_not_low_precision_under_bf16():
    model, x = linear(8, 8), torch.randn(3, 8)
    with torch.no_grad(), emulate("fp16-mixed", model=model):
        hidden = model(x)  # FP16 values, known as such inside that context only
    copy = hidden.clone()
    with emulate("bf16-mixed"):
        reused, fresh = hidden * 3, copy * 3  # an FP32 tensor times 3: computed and kept in FP32
    assert torch.equal(bits(reused), bits(fresh)) and torch.equal(bits(fresh), bits(copy * 3))


def test_no_attribute_is_left_on_the_tensors():
    model, x = linear(), torch.randn(3, 8, requires_grad=True)
    with emulate("bf16-mixed", model=model):
        out = model(x)
        out.sum().backward()
    for tensor in (x, out, x.grad, model.weight, model.weight.grad):
        assert not [name for name in vars(tensor) if name.startswith("_fpsim")]


# --- W2: nesting is refused -----------------------------------------------------------------------------
def test_nested_contexts_are_refused_and_the_outer_one_still_holds():
    model, x = linear(), torch.randn(3, 8)
    with emulate("fp16-mixed", model=model):
        with pytest.raises(RuntimeError, match="do not nest") as error:
            with emulate("bf16-mixed", model=model):
                pass
        assert "\n" not in str(error.value)
        nested = model(x)
    with emulate("fp16-mixed", model=model):
        alone = model(x.clone())
    assert torch.equal(bits(nested), bits(alone))


# --- W3: every dtype emulated or refused ----------------------------------------------------------------
def operands(rows, columns, seed):
    """float64 values of 21 significant bits: bf16 rounds them, their bf16 products sum exactly in float64."""
    rng = np.random.default_rng(seed)
    return rng.choice([-1, 1], (rows, columns)) * (1 + rng.integers(0, 2 ** 20, (rows, columns)) * 2.0 ** -20)


def test_a_float64_models_operands_and_outputs_are_rounded():
    model = linear(dtype=torch.float64)
    x, weight, bias = operands(3, 8, 0), operands(4, 8, 1), operands(1, 4, 2)[0]
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(weight))
        model.bias.copy_(torch.from_numpy(bias))
    with emulate("bf16-mixed", model=model):
        out = model(torch.from_numpy(x))
    assert out.dtype == torch.float64
    expected = exact_round(exact_round(bias, "bf16") + exact_round(x, "bf16") @ exact_round(weight, "bf16").T,
                           "bf16")
    assert np.array_equal(out.detach().numpy(), expected)


def test_a_float64_models_fp32_operations_hold_fp32_values():
    x = torch.from_numpy(operands(3, 8, 3) * (1 + 2.0 ** -40))  # values float32 cannot hold
    with emulate("fp32"):
        out = torch.exp(x)
    assert np.array_equal(out.numpy(), exact_round(torch.exp(x).numpy(), "fp32"))


def test_a_float64_models_products_are_quantized_under_fp8():
    model, x = linear(dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    with torch.no_grad():
        plain = model(x)
        with emulate("fp8-current", model=model):
            out = model(x)
    casts = ScaledCasts(Policy.coerce("fp8-current"), None)
    cast_x = casts.cast(x.numpy(), "activations", "model", axis=1)
    cast_w = casts.cast(model.weight.detach().t().numpy(), "params", "model", axis=0)
    expected = torch.addmm(model.bias.detach(), torch.from_numpy(cast_x), torch.from_numpy(cast_w))
    assert not torch.equal(out, plain)
    assert np.array_equal(out.numpy(), exact_round(expected.numpy(), "fp32"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("policy", ["bf16-mixed", "fp8-current"])
def test_a_16_bit_model_is_refused_in_one_line(dtype, policy):
    model = linear(dtype=dtype)
    with pytest.raises(TypeError, match=f"{dtype}.*model.float()") as error:
        with emulate(policy, model=model):
            model(torch.randn(3, 8, dtype=dtype))
    assert "\n" not in str(error.value)


def test_integer_tensors_pass_through():
    embedding = nn.Embedding(10, 4)
    idx = torch.arange(6).reshape(2, 3)
    with emulate("bf16-mixed", model=embedding):
        shifted = idx * 3 + 1
        out = embedding(idx % 10)
    assert shifted.dtype == torch.int64 and torch.equal(shifted, torch.arange(6).reshape(2, 3) * 3 + 1)
    assert torch.equal(out, embedding.weight[idx % 10].detach())


# --- meta and sparse tensors ----------------------------------------------------------------------------
@pytest.mark.parametrize("with_model", [True, False])
def test_meta_tensors_are_a_dry_run_of_shapes(with_model):
    model = nn.Linear(8, 4, device="meta")
    x = torch.randn(3, 8, device="meta", requires_grad=True)
    with emulate("bf16-mixed", model=model if with_model else None):
        out = model(x) @ torch.randn(4, 5, device="meta")
        out.sum().backward()
    assert out.shape == (3, 5) and out.device.type == "meta" and x.grad.shape == (3, 8)


def test_sparse_inputs_are_refused_in_one_line():
    model = linear()
    with pytest.raises(TypeError, match="sparse.*to_dense") as error:
        with emulate("bf16-mixed", model=model):
            model(torch.randn(3, 8).to_sparse())
    assert "\n" not in str(error.value)


# --- W6: inspect counts non-finite values ---------------------------------------------------------------
def test_inspect_counts_infinities_and_claims_no_finite_window():
    model = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0], [2.0]]))
    result = inspect(model, torch.tensor([[-math.inf]]), formats=("fp16",))
    rows = {row["kind"]: row for row in result.rows}
    activations = rows["activations"]
    assert activations["nonfinite"] == 2 and activations["max_abs"] == math.inf
    assert activations["fp16"]["headroom"] == -math.inf
    assert rows["weight_grads"]["nonfinite"] == 2 and rows["activation_grads"]["nonfinite"] == 0
    assert result.nonfinite_gradients == 2
    table = result.table()
    assert "keep every gradient finite" not in table and "already inf or NaN" in table
    assert "inf" in table.splitlines()[2]


def test_inspect_counts_nan():
    model = nn.Linear(1, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[math.nan], [1.0], [-4.0]]))
    row = next(r for r in inspect(model, torch.ones(1, 1), formats=("bf16",)).rows if r["kind"] == "activations")
    assert row["nonfinite"] == 1 and row["max_abs"] == 4.0 and row["nonzero"] == 2


# --- inspect's default loss -----------------------------------------------------------------------------
class Output:
    def __init__(self, logits):
        self.logits = logits


@pytest.mark.parametrize("wrap", [lambda y: {"logits": y}, lambda y: (y, y * 0), lambda y: [y], Output])
def test_inspect_default_loss_reads_the_logits(wrap):
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = linear(3, 2)

        def forward(self, x):
            return wrap(self.layer(x))

    model, x = Wrapped(), torch.randn(4, 3)
    result = inspect(model, x, formats=("fp16",))
    grads = {(row["module"], row["kind"]): row for row in result.rows}
    assert grads[("layer", "activation_grads")]["max_abs"] == 1.0  # d(sum of logits) / d logits


def test_inspect_asks_for_loss_fn_when_it_finds_no_logits():
    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = linear(3, 2)

        def forward(self, x):
            return {"scores": self.layer(x)}

    with pytest.raises(TypeError, match="loss_fn") as error:
        inspect(Named(), torch.randn(4, 3))
    assert "\n" not in str(error.value)


# --- fpsim inspect --------------------------------------------------------------------------------------
def one_line_exit_2(argv, capsys):
    assert main(["inspect", *argv]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("fpsim") and "\n" not in err and "module" not in captured.out
    return err


def test_plot_writes_exactly_the_named_path(tmp_path, capsys):
    figure = tmp_path / "figure.svg"
    assert main(["inspect", "--model", "mlp", "--batch-size", "8", "--plot", str(figure)]) == 0
    assert figure.read_bytes().lstrip().startswith(b"<?xml") and [p.name for p in tmp_path.iterdir()] == ["figure.svg"]
    assert f"figure written to {figure}" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["keep", "keep.xyz", "keep.pgf"])
def test_plot_without_a_known_extension_is_refused_and_touches_nothing(name, tmp_path, capsys):
    (tmp_path / "keep.png").write_bytes(b"precious")
    err = one_line_exit_2(["--model", "mlp", "--plot", str(tmp_path / name)], capsys)
    assert ".png" in err and ".svg" in err
    assert (tmp_path / "keep.png").read_bytes() == b"precious" and [p.name for p in tmp_path.iterdir()] == ["keep.png"]


@pytest.mark.parametrize("batch", ["20000", "100000000"])
def test_a_batch_beyond_the_memory_budget_is_one_line_saying_what_it_needs(batch, capsys):
    err = one_line_exit_2(["--model", "char-gpt", "--batch-size", batch], capsys)
    assert "GiB" in err and "--batch-size" in err


@pytest.mark.parametrize("model, examples", [("mlp", 1437), ("cnn", 4000)])
def test_a_batch_beyond_the_data_set_is_refused(model, examples, capsys):
    err = one_line_exit_2(["--model", model, "--batch-size", str(examples + 1)], capsys)
    assert str(examples) in err and "--batch-size" in err


@pytest.mark.parametrize("seed", ["-1", str(2 ** 64)])
def test_a_bad_seed_is_one_line_naming_the_option(seed, capsys):
    assert "--seed" in one_line_exit_2(["--model", "mlp", "--seed", seed], capsys)


@pytest.mark.parametrize("activation", [torch.nn.functional.silu, torch.nn.functional.mish])
def test_fp32_runs_the_kernels_aten_runs_for_ops_that_also_have_a_decomposition(activation):
    """silu_backward and mish_backward have a CPU kernel and a CompositeImplicitAutograd one; the mode ran the
    decomposition, an FP32 ulp off the kernel (Llama's SwiGLU: 5 of 22 gradients identical to plain torch)."""
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    upstream = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))
    (plain,) = torch.autograd.grad(activation(x), x, upstream)
    with emulate("fp32"):
        (emulated,) = torch.autograd.grad(activation(x), x, upstream)
    assert torch.equal(plain, emulated)
    assert not placement_of(torch.ops.aten.silu_backward.default, "autocast-cuda").composite
    assert placement_of(torch.ops.aten.linear.default, "autocast-cuda").composite
