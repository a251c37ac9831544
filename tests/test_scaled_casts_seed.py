"""The stochastic rounding of a run's scaled casts draws from the run's seed (fpsim.sim.scaling.ScaledCasts), in
both engines: the same seed, the same bits; another seed, other draws."""

import dataclasses

import numpy as np
import pytest

import fpsim
from fpsim.engines import numpy_engine
from fpsim.sim.config import TrainConfig
from fpsim.sim.policy import POLICIES

NEAREST = dataclasses.replace(  # nvfp4-te with its gradients rounded to nearest: nothing random left in the casts
    POLICIES["nvfp4-te"], name="nvfp4-te, gradients to nearest",
    scaling={kind: dataclasses.replace(s, stochastic=False) for kind, s in POLICIES["nvfp4-te"].scaling})


def torch_run(policy, seed):
    """Two steps of a fixed module on two fixed batches (16 rows: the Hadamard transform's length), so that the
    seed reaches nothing but the stochastic rounding: the losses, per step, and the validation loss."""
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 32),
                                torch.nn.GELU(), torch.nn.Linear(32, 4))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = model.apply(lambda m: m.reset_parameters() if isinstance(m, torch.nn.Linear) else None)
    rng = np.random.default_rng(0)
    batches = [(torch.from_numpy(rng.standard_normal((16, 16)).astype(np.float32)),
                torch.from_numpy(rng.integers(0, 4, 16))) for _ in range(2)]
    result = fpsim.train(policy, model=model, data=batches, validation=batches, steps=2, batch_size=16,
                         optimizer="adam", lr=1e-2, seed=seed, progress=False)
    return [h["loss"] for h in result.history] + [result.test_loss]


SR_LAST_LAYER = dataclasses.replace(POLICIES["bf16-mixed"], name="bf16-mixed, nvfp4-te (SR gradients) last layer",
                                    overrides={"4": dataclasses.replace(POLICIES["nvfp4-te"], overrides=())})
"""A 16-bit run whose last Linear computes under a stochastically rounding scaled override."""


@pytest.mark.parametrize("policy", ["nvfp4-te", SR_LAST_LAYER], ids=["scaled run", "scaled override"])
def test_torch_runs_round_stochastically_from_their_seed(policy):
    same, again, other = torch_run(policy, 0), torch_run(policy, 0), torch_run(policy, 1)
    assert same == again  # bit-identical
    assert same[0] == other[0]  # the first forward pass casts nothing stochastically: the same init and batch
    assert same[1:] != other[1:]  # the first step's gradients were rounded from other draws


def test_without_stochastic_rounding_the_seed_reaches_nothing_here():
    assert torch_run(NEAREST, 0) == torch_run(NEAREST, 1)  # so above, the seed reached the stochastic rounding only


SR_HEAD = dataclasses.replace(POLICIES["bf16-mixed"], name="bf16-mixed, nvfp4 (SR gradients) last layer",
                              overrides={"layers.1": dataclasses.replace(NEAREST, name="nvfp4 SR", overrides=(),
                                                                       scaling=dict(POLICIES["nvfp4-te"].scaling))})
"""A 16-bit run whose last layer computes under a stochastically rounding scaled override (its casts made by the
layer's ``fpsim.engines.mlp.Compute``)."""


@pytest.mark.parametrize("policy", [POLICIES["nvfp4-te"], SR_HEAD], ids=["scaled run", "scaled override"])
def test_the_numpy_engine_seeds_its_casts_from_the_run(policy, monkeypatch):
    from fpsim.engines import mlp

    made = []

    def recording(real):
        def make(*args, **kwargs):
            casts = real(*args, **kwargs)
            made.append(casts)
            return casts
        return make

    monkeypatch.setattr(numpy_engine, "ScaledCasts", recording(numpy_engine.ScaledCasts))
    monkeypatch.setattr(mlp, "ScaledCasts", recording(mlp.ScaledCasts))

    def draws(seed):
        made.clear()
        fpsim.train(policy, hidden=(16,), steps=1, batch_size=16, seed=seed, progress=False)
        assert made  # the run made its casts
        return made[0].seed, np.random.default_rng(made[0].seed).random(4)

    assert draws(3)[0] == draws(3)[0]
    assert not np.array_equal(draws(3)[1], draws(4)[1])
