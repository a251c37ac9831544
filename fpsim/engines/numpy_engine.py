"""``fpsim.train``: one simulated mixed-precision training run, and its ``TrainResult``.

One step is the recipe it simulates (``train_step``):

1. cast the master weights to the params format (no master: use the stored params);
2. forward and backward in the policy's compute formats, the loss multiplied by
   ``loss_scale * grad_scale``;
3. gradients to FP32, divided by the loss scale, checked for inf/NaN (when the
   policy scales the loss, a step with inf/NaN is skipped and the scaler backs off);
4. the optimizer multiplies them by the learning rate (its state in ``optimizer_state``);
5. the update is rounded into the master weights (or into the params directly).

Everything random (initial weights, batch order, stochastic rounding) comes
from ``seed``, so the same configuration gives a bit-identical result.

A run diverges, stops at that step and says so in its result, when a stored
weight becomes inf/NaN, or when the loss is non-finite and lowering the loss
scale is no longer possible: at once without loss scaling or with a constant
scale; with dynamic scaling such steps are skipped (as GradScaler skips them)
until the scale has backed off to its floor.  A run never loops without end:
it takes at most ``steps`` steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from ..numerics._kernels import one_thread
from ..sim.data import load_data
from ..numerics.formats import FP32, FP64
from ..sim.loss_scaling import LossScaler
from .mlp import MLP, Compute, Float64Compute, module_name
from ..sim.optimizers import apply_kahan_update, apply_update, make_optimizer
from ..sim.policy import Policy
from ..sim.recorder import Recorder, json_float
from ..numerics.rounding import round as round_to

FINAL_LOSS_STEPS = 50
"""``final_loss`` is the mean training loss over this many last (non-skipped) steps."""

EVAL_CHUNK = 1024
"""Rows per forward pass when evaluating the test set."""


@dataclass
class TrainResult:
    """What a training run produced and what the recorder saw.  ``to_dict()`` is JSON-able.

    Fractions are over the whole run (the weight-gradient one over its shadow
    steps); ``lost_update_fraction`` is the share of weight elements with a non-zero
    update whose stored value did not change (``lost_update_magnitude_fraction``:
    the share of the updates' total |magnitude| they carried).
    """

    config: dict
    """The full configuration (``fpsim.train``'s keyword arguments, the policy as given, as its fields, with
    ``loss_scale`` beside it): ``train(**config)`` reruns the run and records the same ``config``."""
    policy: str
    """The policy's name."""
    test_accuracy: float | None
    """Share of the test set classified right by the final weights (None for a regression)."""
    test_loss: float | None
    """Loss on the test set with the final weights (None if it is not finite)."""
    final_loss: float | None
    """Mean training loss over the last ``FINAL_LOSS_STEPS`` steps that were not skipped (None if diverged)."""
    weight_grad_underflow_fraction: float | None
    """On the FP64-shadow steps: the share of weight-gradient values, non-zero when the backward pass is redone in
    FP64 through the policy's own forward pass, that the policy delivered as zero: lost to underflow wherever in
    the backward pass it happened (None with ``shadow_every=0``)."""
    activation_grad_underflow_fraction: float
    """Activation-gradient values flushed to zero when rounded, over those non-zero before (every step)."""
    activation_underflow_fraction: float
    """Layer outputs flushed to zero when rounded, over those non-zero before (every step)."""
    overflow_count: int
    """Values that overflowed to inf/NaN when rounded, all kinds, all steps."""
    lost_update_fraction: float
    lost_update_magnitude_fraction: float
    skipped_steps: int
    final_loss_scale: float
    diverged: bool
    diverged_step: int | None
    """The step at which the run diverged (it stopped there), or None."""
    min_scale_hits: int = 0
    """Overflowing steps taken with the dynamic loss scale at its floor."""
    min_scale_step: int | None = None
    """The first of those, or None."""
    steps_run: int = 0
    """Steps executed (fewer than ``config["steps"]`` after a divergence)."""
    history: list = field(default_factory=list)
    """One dict per step: loss, loss_scale, skipped, and per kind the counts nonzero, underflow,
    subnormal, overflow, nonfinite; updated, lost_updates, update_magnitude, lost_update_magnitude."""
    layers: list = field(default_factory=list)
    """Per layer: its shape and run totals of every count (see ``fpsim.recorder``)."""
    layer_history: dict = field(default_factory=dict)
    """Per-layer counts summed over windows of ``record_every`` steps (arrays [window][layer][kind][stat])."""
    histograms: list = field(default_factory=list)
    """Histograms of log2|value| before rounding, per requested step, kind and layer."""
    shadow: list = field(default_factory=list)
    """On sampled steps: per layer, ||g - g64|| / ||g64|| against an FP64 shadow of the same step."""

    def to_dict(self) -> dict:
        """The result as plain JSON data."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainResult":
        """Inverse of ``to_dict``."""
        names = {f.name for f in dataclasses.fields(cls)}
        missing = {f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING} - set(data)
        if missing:
            raise ValueError(f"not a TrainResult: missing {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in data.items() if k in names})

    def save(self, path) -> None:
        """Write the result as JSON to ``path`` (written to a temporary file, then moved into place)."""
        path = os.fspath(path)
        temporary = f"{path}.tmp{os.getpid()}"
        with open(temporary, "w") as file:
            json.dump(self.to_dict(), file, allow_nan=False)
        os.replace(temporary, path)

    @classmethod
    def load(cls, path) -> "TrainResult":
        """Read a result that ``save`` wrote."""
        with open(os.fspath(path)) as file:
            return cls.from_dict(json.load(file))

    def summary(self) -> dict:
        """The headline numbers, for tables."""
        return {"policy": self.policy, "test_accuracy": self.test_accuracy, "test_loss": self.test_loss,
                "final_loss": self.final_loss,
                "weight_grad_underflow": self.weight_grad_underflow_fraction,
                "activation_grad_underflow": self.activation_grad_underflow_fraction,
                "lost_updates": self.lost_update_fraction, "overflows": self.overflow_count,
                "skipped_steps": self.skipped_steps, "final_loss_scale": self.final_loss_scale,
                "diverged_step": self.diverged_step}


def train(policy, *, data="digits", hidden=(128, 128, 128), optimizer="sgd", lr=0.05, steps=1500, batch_size=64,
          seed=0, grad_scale=1.0, histograms=False, progress=True, loss_scale=None, scaler=None, momentum=0.9,
          betas=(0.9, 0.999), eps=1e-8, histogram_steps=None, record_every=50, shadow_every=100) -> TrainResult:
    """Train an MLP under a precision policy and record what its formats did to it.

    Parameters
    ----------
    policy : a ``Policy``, a preset name (``fpsim.POLICIES``) or a dict of Policy fields.
    data : "digits" (default), "mnist:PATH" (local Keras-layout npz), "teacher", or a dict (``fpsim.data``).
    hidden : widths of the hidden layers (ReLU); the default model is 64-128-128-128-10 on digits.
    optimizer : "sgd", "momentum" or "adam"; ``momentum``, ``betas``, ``eps`` are their settings.
    lr : learning rate (> 0).  steps : number of steps (>= 1).  batch_size : examples per step.
    seed : everything random (initialisation, batch order, stochastic rounding) derives from it.
    grad_scale : multiplies the loss, so every gradient is that many times smaller (or larger),
        while the optimizer is made invariant to it (SGD: lr / grad_scale; Adam: eps * grad_scale):
        in exact arithmetic the run is unchanged.  2**-20 moves this model's gradients to where
        FP16 flushes most of them: a stand-in for small gradients, not a model of any particular network.
    histograms : keep histograms of log2|value| before rounding at ``histogram_steps``
        (default: the first step, 10%, 50% and the last).
    progress : show a progress bar on stderr.
    loss_scale : if given, replaces the policy's ``loss_scale`` (a positive constant or "dynamic").
    scaler : dict of dynamic loss-scaler settings (``fpsim.loss_scaling.SCALER_OPTIONS``).
    record_every : window (steps) of the per-layer count history; 0 for none.
    shadow_every : every this many steps, compare the gradients with an FP64 shadow; 0 for never.
    """
    given = Policy.coerce(policy)
    policy = given if loss_scale is None else dataclasses.replace(
        given, loss_scale=loss_scale, name=f"{given.name} (loss scale {loss_scale})")
    hidden = _check_hidden(hidden)
    _check_int("steps", steps, minimum=1)
    _check_int("batch_size", batch_size, minimum=1)
    _check_int("seed", seed, minimum=0)
    _check_int("record_every", record_every, minimum=0)
    _check_int("shadow_every", shadow_every, minimum=0)
    for name, value in (("lr", lr), ("grad_scale", grad_scale)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if histograms:
        histogram_steps = _check_histogram_steps(histogram_steps, steps)
    elif histogram_steps is not None:
        raise ValueError("histogram_steps needs histograms=True")
    # The policy as given, before the loss_scale override, so that train(**config) rebuilds the same run.
    config = {"policy": given.to_dict(), "data": data, "hidden": list(hidden), "optimizer": optimizer, "lr": lr,
              "steps": steps, "batch_size": batch_size, "seed": seed, "grad_scale": grad_scale,
              "histograms": bool(histograms), "loss_scale": loss_scale, "scaler": scaler, "momentum": momentum,
              "betas": list(betas) if isinstance(betas, (list, tuple)) else betas, "eps": eps,
              "histogram_steps": histogram_steps, "record_every": record_every, "shadow_every": shadow_every}
    optimizer_options = {"momentum": {"momentum": momentum}, "adam": {"betas": betas, "eps": eps}}
    optimizer_state = make_optimizer(optimizer, lr, grad_scale=grad_scale, state_format=policy.optimizer_state,
                                     **optimizer_options.get(str(optimizer).lower(), {}))
    loss_scaler = LossScaler.for_policy(policy.loss_scale, scaler)
    dataset = load_data(data)
    if batch_size > len(dataset.y_train):
        raise ValueError(f"batch_size {batch_size} exceeds the {len(dataset.y_train)} training examples")
    run = _Run(policy, dataset, hidden, optimizer_state, loss_scaler, grad_scale, seed,
               Recorder([module_name(i) for i in range(len(hidden) + 1)], histogram_steps=histogram_steps or (), record_every=record_every))
    # A step's products are small (batch 64 by a few hundred): on a busy 2-core machine a
    # step took 4-5x longer with two threads than with one (benchmarks/bench_train_step.py).
    with one_thread():
        return run.train(steps, batch_size, shadow_every, config, progress)


class _Run:
    """The state of one training run: weights, optimizer, scaler, recorder, random streams."""

    def __init__(self, policy, dataset, hidden, optimizer, scaler, grad_scale, seed, recorder):
        self.policy, self.dataset, self.optimizer, self.scaler = policy, dataset, optimizer, scaler
        self.grad_scale, self.recorder = grad_scale, recorder
        self.model = MLP((dataset.inputs, *hidden, dataset.outputs), dataset.task)
        self.compute = Compute(policy, recorder)
        init_rng, self.batch_rng, self.rounding_rng = (np.random.default_rng(s)
                                                       for s in np.random.SeedSequence(seed).spawn(3))
        store = policy.weights
        self.store_dtype = np.float32 if store.fits_float32 else np.float64
        self.weights = [[np.asarray(round_to(w, store), dtype=self.store_dtype) for w in layer]
                        for layer in self.model.init_weights(init_rng)]
        self.compensation = ([[np.zeros_like(w) for w in layer] for layer in self.weights]
                             if policy.kahan else None)
        # The data are rounded to the activations format once (inputs are data, not computed values).
        self.x_train = round_to(dataset.x_train, policy.activations).astype(self.compute.dtype)
        self.x_test = round_to(dataset.x_test, policy.activations).astype(self.compute.dtype)
        self.grad_format = FP32 if policy.gradients.fits_float32 else FP64
        self.grad_dtype = np.float32 if self.grad_format is FP32 else np.float64

    # --- the five steps ----------------------------------------------------
    def train_step(self, step: int, index, shadow: bool = False) -> tuple[float, bool]:
        """One step on the training examples ``index``; returns (loss, skipped).

        With ``shadow``, the recorder also gets the gradients' error against an
        FP64 shadow of this step (taken before the weights change).
        """
        x, y = self.x_train[index], self.dataset.y_train[index]
        compute, model = self.compute, self.model
        scale = self.scaler.scale if self.scaler is not None else 1.0
        # (1) the weights as the products use them
        params = self.compute_weights()
        # (2) forward and backward in the compute formats, the loss scaled
        output = model.forward(compute, x, params)
        loss = model.loss.forward(compute, output, y)
        output_grad = compute.round(model.loss.backward(compute, scale * self.grad_scale), "activation_grads",
                                    len(model.layers) - 1)
        grads = model.backward(compute, output_grad)
        # (3) to FP32, unscaled, checked
        grads = [[np.asarray(round_to(g.astype(np.float64) / scale, self.grad_format), dtype=self.grad_dtype)
                  for g in layer] for layer in grads]
        found_inf = self.scaler is not None and not all(np.isfinite(g).all() for layer in grads for g in layer)
        if shadow:
            self.recorder.observe_shadow(grads, *self._shadow_gradients(index))
        # (4) learning rate and optimizer state, (5) applied to the stored weights
        if not found_inf:
            for i, layer in enumerate(grads):
                for j, grad in enumerate(layer):
                    self._apply(i, j, self.optimizer.update((i, j), grad))
        if self.scaler is not None:
            self.scaler.update(found_inf, step)
        return loss, found_inf

    def compute_weights(self):
        """Step (1): the master weights rounded to the params format, or the stored params as they are."""
        if self.policy.master is None:
            return self.weights
        return [[np.asarray(round_to(w, self.policy.params), dtype=self.compute.dtype) for w in layer]
                for layer in self.weights]

    def _apply(self, i, j, update):
        fmt = self.policy.weights
        old = self.weights[i][j]
        if self.compensation is None:
            new = np.asarray(apply_update(old, update, fmt, rounding=self.policy.update_rounding,
                                          rng=self.rounding_rng), dtype=self.store_dtype)
            self.recorder.updated(module_name(i), old, new, update, fmt)
        else:
            old_compensation = self.compensation[i][j]
            new, compensation = apply_kahan_update(old, old_compensation, update, fmt)
            new, compensation = (np.asarray(v, dtype=self.store_dtype) for v in (new, compensation))
            self.recorder.updated(module_name(i), old + old_compensation.astype(np.float64), new + compensation.astype(np.float64),
                                  update, fmt)
            self.compensation[i][j] = compensation
        self.weights[i][j] = new

    # --- the loop ------------------------------------------------------------
    def train(self, steps, batch_size, shadow_every, config, progress) -> TrainResult:
        from tqdm import tqdm
        diverged_step = None
        batches = self._batches(batch_size)
        bar = tqdm(range(steps), desc=self.policy.name, disable=not progress, file=sys.stderr, leave=False)
        step = -1
        for step in bar:
            self.recorder.start_step(step)
            scale = self.scaler.scale if self.scaler is not None else 1.0
            loss, skipped = self.train_step(step, next(batches), shadow=shadow_every and step % shadow_every == 0)
            self.recorder.end_step(loss=loss, loss_scale=scale, skipped=skipped)
            weights_finite = all(np.isfinite(w).all() for layer in self.weights for w in layer)
            scaler_can_back_off = self.scaler is not None and self.scaler.dynamic and scale > self.scaler.min_scale
            if (not math.isfinite(loss) and not scaler_can_back_off) or not weights_finite:
                diverged_step = step
                break
            if progress and step % 50 == 0:
                bar.set_postfix(loss=f"{loss:.4f}", scale=f"{scale:g}", refresh=False)
        bar.close()
        self.recorder.finish()
        return self._result(config, step + 1, diverged_step)

    def _batches(self, batch_size):
        """Batch indices: each epoch a fresh permutation, cut into full batches (the remainder is dropped)."""
        n = len(self.dataset.y_train)
        while True:
            order = self.batch_rng.permutation(n)
            for start in range(0, n - batch_size + 1, batch_size):
                yield order[start:start + batch_size]

    def _shadow_gradients(self, index) -> tuple[list, list]:
        """This step's weight gradients in FP64 arithmetic, twice (called after the policy's backward pass).

        First the backward pass alone, redone in FP64 through the policy's own
        forward pass (its activations, ReLU masks and cast weights, still held
        by the model): where it is non-zero and the policy's gradient is zero,
        the backward pass lost the value to underflow.  Then the whole step from
        the stored weights and the unrounded data: the reference of the
        gradients' error, forward roundings included.
        """
        shadow = Float64Compute()
        backward_only = self.model.backward(shadow, self.model.loss.backward(shadow, self.grad_scale))
        return self._whole_step_in_float64(index, shadow), backward_only

    def _whole_step_in_float64(self, index, shadow) -> list:
        weights = [[w.astype(np.float64) for w in layer] for layer in self.weights]
        output = self.model.forward(shadow, self.dataset.x_train[index], weights)
        self.model.loss.forward(shadow, output, self.dataset.y_train[index])
        return self.model.backward(shadow, self.model.loss.backward(shadow, self.grad_scale))

    def evaluate(self):
        """Test accuracy (None for a regression) and test loss, in the policy's forward formats."""
        compute = Compute(self.policy)
        params = self.compute_weights()
        outputs = np.concatenate([self.model.forward(compute, self.x_test[i:i + EVAL_CHUNK], params)
                                  for i in range(0, len(self.x_test), EVAL_CHUNK)])
        loss = self.model.loss.forward(compute, outputs, self.dataset.y_test)
        return self.model.loss.score(outputs, self.dataset.y_test), json_float(loss)

    def _result(self, config, steps_run, diverged_step) -> TrainResult:
        recorder, history = self.recorder, self.recorder.history
        accuracy, test_loss = self.evaluate()
        kept = [r["loss"] for r in history if not r["skipped"]][-FINAL_LOSS_STEPS:]
        final_loss = (float(np.mean(kept)) if kept and diverged_step is None and None not in kept else None)
        layers = recorder.layer_summaries()
        for summary, layer in zip(layers, self.model.layers):
            summary["shape"] = [layer.n_in, layer.n_out]
        return TrainResult(
            config=config, policy=self.policy.name, test_accuracy=accuracy, test_loss=test_loss,
            final_loss=final_loss,
            weight_grad_underflow_fraction=recorder.weight_grad_flushed_fraction,
            activation_grad_underflow_fraction=recorder.fraction("activation_grads", "underflow"),
            activation_underflow_fraction=recorder.fraction("activations", "underflow"),
            overflow_count=sum(recorder.total(kind, "overflow") for kind in ("activations", "activation_grads",
                                                                             "weight_grads", "updates")),
            lost_update_fraction=recorder.lost_update_fraction,
            lost_update_magnitude_fraction=recorder.lost_update_magnitude_fraction,
            skipped_steps=sum(1 for r in history if r["skipped"]),
            final_loss_scale=self.scaler.scale if self.scaler is not None else 1.0,
            diverged=diverged_step is not None, diverged_step=diverged_step,
            min_scale_hits=self.scaler.min_scale_hits if self.scaler is not None else 0,
            min_scale_step=self.scaler.min_scale_step if self.scaler is not None else None,
            steps_run=steps_run, history=history, layers=layers, layer_history=recorder.layer_history,
            histograms=recorder.histograms, shadow=recorder.shadow)


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_hidden(hidden) -> tuple[int, ...]:
    if isinstance(hidden, (int, np.integer)) and not isinstance(hidden, bool):
        hidden = (hidden,)
    if not isinstance(hidden, (list, tuple)) or not hidden:
        raise ValueError(f"hidden must list at least one hidden layer width, e.g. (128, 128, 128); got {hidden!r}")
    for width in hidden:
        _check_int("every hidden layer width", width, minimum=1)
    return tuple(int(w) for w in hidden)


def _check_histogram_steps(histogram_steps, steps) -> list[int]:
    if histogram_steps is None:
        return sorted({0, steps // 10, steps // 2, steps - 1})
    if not isinstance(histogram_steps, (list, tuple)) or not histogram_steps:
        raise ValueError(f"histogram_steps must be a non-empty list of steps, got {histogram_steps!r}")
    for s in histogram_steps:
        _check_int("every histogram step", s, minimum=0)
        if s >= steps:
            raise ValueError(f"histogram step {s} is beyond the run's last step {steps - 1}")
    return sorted(set(int(s) for s in histogram_steps))
