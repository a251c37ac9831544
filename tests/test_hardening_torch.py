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
