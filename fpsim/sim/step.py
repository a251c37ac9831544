"""One training step, the mixed-precision recipe both engines run (the one description of it).

With S the loss scale (``LossScaler.scale``; 1 without loss scaling) and ``grad_scale``
the run's stand-in for small gradients (``fpsim.TrainConfig.grad_scale``), a step is:

1. **cast**: the master weights rounded to the policy's params format, as the products
   use them (``WeightStore.working``; without master weights, or under a scaling recipe
   whose products cast them themselves, the stored weights as they are);
2. **forward, scale, backward**: the loss in the policy's formats, the backward pass
   seeded with ``S * grad_scale`` (the gradient of the scaled loss, as
   ``GradScaler.scale(loss).backward()`` starts it) (``Engine.forward_backward``);
3. **unscale**: each gradient divided by S in float64 and rounded once to FP32 (to FP64
   when the policy's gradient format is wider than FP32);
4. **check**: with loss scaling, a step whose gradients hold inf or NaN is skipped
   (weights and optimizer state unchanged) and a dynamic scaler backs off, else it may
   grow (``LossScaler.update``);
5. **update**: the optimizer turns the gradients into updates and each is rounded into
   the stored weights' format (``WeightStore.update``; ``RoundedUpdates``: nearest,
   stochastic or Kahan-compensated);
6. **record**: every ``shadow_every`` steps the gradients are compared with an FP64 shadow
   of the step (``Engine.observe_shadow``), and a scaling recipe's amax histories advance
   (``ScaledCasts.end_step``).  The engines count every rounding through the recorder as
   it happens; ``fpsim.sim.loop.run_steps`` wraps each step in its record.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..numerics.formats import FP32, FP64
from ..numerics.rounding import round as round_to
from .optimizers import apply_kahan_update, apply_update


class Engine(Protocol):
    """What an engine supplies to the step: its batches, its forward/backward pass and its FP64 shadow."""

    def next_batch(self):
        """The next training batch, in whatever form ``forward_backward`` takes."""

    def forward_backward(self, batch, weights, seed: float) -> tuple[float, list, object]:
        """Step 2: the loss of ``batch`` under the policy with ``weights`` (``WeightStore.working``), and the
        gradients of ``seed`` times it, one array per parameter (None where none flowed), plus what
        ``observe_shadow`` reads of this pass."""

    def observe_shadow(self, batch, grads: list, saved) -> None:
        """Step 6: hand the recorder the unscaled ``grads`` beside those of an FP64 shadow of the step."""


class WeightStore(Protocol):
    """What an engine's weights supply to the step."""

    def working(self):
        """Step 1: the weights as the products use them."""

    def update(self, grads: list) -> None:
        """Step 5: one optimizer step for the unscaled gradients ``grads``, rounded into the stored weights."""

    def finite(self) -> bool:
        """Whether every stored weight is finite (the divergence rule reads it)."""


class TrainingStep:
    """The recipe of the module docstring over an engine and its weights; ``step(i)`` takes step i and returns
    (loss, skipped)."""

    def __init__(self, engine: Engine, weights: WeightStore, policy, scaler, casts, *, grad_scale: float,
                 shadow_every: int):
        self.engine, self.weights, self.scaler, self.casts = engine, weights, scaler, casts
        self.grad_scale, self.shadow_every = grad_scale, shadow_every
        self.grad_format = FP32 if policy.gradients.fits_float32 else FP64

    def __call__(self, step: int) -> tuple[float, bool]:
        scale = self.scaler.scale if self.scaler is not None else 1.0
        batch = self.engine.next_batch()
        weights = self.weights.working()                                                          # 1. cast
        loss, grads, saved = self.engine.forward_backward(batch, weights, scale * self.grad_scale)  # 2.
        grads = [unscaled(grad, scale, self.grad_format) for grad in grads]                       # 3. unscale
        found_inf = self.scaler is not None and not all(np.isfinite(g).all() for g in grads if g is not None)
        if self.shadow_every and step % self.shadow_every == 0:                                   # 6. record
            self.engine.observe_shadow(batch, grads, saved)
        if not found_inf:                                                                         # 4. check
            self.weights.update(grads)                                                            # 5. update
        if self.scaler is not None:
            self.scaler.update(found_inf, step)
        if self.casts is not None:
            self.casts.end_step()
        return loss, found_inf


def unscaled(grad, scale: float, fmt):
    """Step 3: ``grad / scale`` in float64, rounded once to ``fmt`` (FP32 or FP64); None stays None.  At
    ``scale`` 1 a gradient already of ``fmt``'s dtype is its own unscaled value."""
    dtype = np.float32 if fmt is FP32 else np.float64
    if grad is None or (scale == 1.0 and grad.dtype == dtype):
        return grad
    return np.asarray(round_to(grad.astype(np.float64) / scale, fmt), dtype=dtype)


class RoundedUpdates:
    """Step 5's rounding of float64 updates into stored weights of ``policy.weights``, each counted by the recorder.

    ``policy.kahan``: ``apply_kahan_update`` with one compensation array per weight (``shapes``), which the
    recorder sees added to the weights, so an update deferred into it is not lost; else ``apply_update``
    with ``policy.update_rounding`` (stochastic rounding draws from ``rng``).  Results are of ``dtype``; with
    ``recorder`` None nothing is counted.
    """

    def __init__(self, policy, shapes, dtype, rng, recorder):
        self.fmt, self.rounding, self.dtype, self.rng, self.recorder = (policy.weights, policy.update_rounding,
                                                                         dtype, rng, recorder)
        self.compensation = [np.zeros(shape, dtype=dtype) for shape in shapes] if policy.kahan else None

    def apply(self, index: int, module: str, old: np.ndarray, update: np.ndarray) -> np.ndarray:
        """Weight ``index`` (of ``module``) after ``update``: the new stored values."""
        if self.compensation is None:
            new = np.asarray(apply_update(old, update, self.fmt, rounding=self.rounding, rng=self.rng),
                             dtype=self.dtype)
            if self.recorder is not None:
                self.recorder.updated(module, old, new, update, self.fmt)
            return new
        owed = self.compensation[index]
        new, compensation = (np.asarray(v, dtype=self.dtype) for v in apply_kahan_update(old, owed, update, self.fmt))
        if self.recorder is not None:
            self.recorder.updated(module, old + owed.astype(np.float64), new + compensation.astype(np.float64),
                                  update, self.fmt)
        self.compensation[index] = compensation
        return new


def by_module(modules: list[str], values: list) -> list[list]:
    """``values`` (one per parameter, ``modules[i]`` owning ``values[i]``) grouped by module, modules in order of
    first appearance: the per-module lists ``Recorder.observe_shadow`` takes."""
    groups: dict[str, list] = {}
    for module, value in zip(modules, values):
        groups.setdefault(module, []).append(value)
    return list(groups.values())
