"""The numpy engine: the MLP trained under a precision policy, every product and its accumulation emulated.

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

import numpy as np

from ..numerics._kernels import one_thread
from ..numerics.formats import FP32, FP64
from ..numerics.rounding import round as round_to
from ..sim.config import MAX_PARAMETERS, TrainConfig
from ..sim.data import load_data
from ..sim.loss_scaling import LossScaler
from ..sim.scaling import ScaledCasts
from ..sim.optimizers import apply_kahan_update, apply_update, make_optimizer
from ..sim.recorder import Recorder, json_float
from ..sim.loop import run_steps
from ..sim.result import TrainResult, result_of_run
from .mlp import MLP, Compute, Float64Compute, ForwardPass, LossPass, module_name

EVAL_CHUNK = 1024
"""Rows per forward pass when evaluating the test set."""



def train_mlp(config: TrainConfig, *, progress: bool = True) -> TrainResult:
    """Train the MLP of ``config`` under its policy, every product emulated, and record what the formats did."""
    policy = config.effective_policy
    optimizer_options = {"momentum": {"momentum": config.momentum},
                         "adam": {"betas": config.betas, "eps": config.eps}}
    optimizer_state = make_optimizer(config.optimizer, config.lr, grad_scale=config.grad_scale,
                                     state_format=policy.optimizer_state,
                                     **optimizer_options.get(config.optimizer, {}))
    loss_scaler = LossScaler.for_policy(policy.loss_scale, config.scaler)
    dataset = load_data(config.data)
    if config.batch_size > len(dataset.y_train):
        raise ValueError(f"batch_size {config.batch_size} exceeds the {len(dataset.y_train)} training examples")
    widths = (dataset.inputs, *config.hidden, dataset.outputs)
    if sum(a * b for a, b in zip(widths, widths[1:])) > MAX_PARAMETERS:
        raise ValueError(f"a model of widths {'-'.join(map(str, widths))} has more than {MAX_PARAMETERS} weights: "
                         "choose smaller hidden layers")
    modules = [module_name(i) for i in range(len(config.hidden) + 1)]
    run = _Run(policy, dataset, config.hidden, optimizer_state, loss_scaler, config.grad_scale, config.seed,
               Recorder(modules, histogram_steps=config.histogram_steps or (), record_every=config.record_every))
    # A step's products are small (batch 64 by a few hundred): on a busy 2-core machine a
    # step took 4-5x longer with two threads than with one (benchmarks/bench_train_step.py).
    # inf/NaN are counted by the recorder and reported (divergence, skipped steps): numpy need not warn of them
    with one_thread(), np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        return run.train(config.steps, config.batch_size, config.shadow_every, config.to_dict(), progress)


class _Run:
    """The state of one training run: weights, optimizer, scaler, recorder, random streams."""

    def __init__(self, policy, dataset, hidden, optimizer, scaler, grad_scale, seed, recorder):
        self.policy, self.dataset, self.optimizer, self.scaler = policy, dataset, optimizer, scaler
        self.grad_scale, self.recorder = grad_scale, recorder
        self.model = MLP((dataset.inputs, *hidden, dataset.outputs), dataset.task)
        # Under a scaling recipe (FP8 / MX) the products cast their operands through one ScaledCasts,
        # whose delayed scalers the training steps update and the evaluation reads.
        self.casts = ScaledCasts(policy, recorder) if policy.scaling is not None else None
        self.compute = Compute(policy, recorder, self.casts)
        init_rng, self.batch_rng, self.rounding_rng = (np.random.default_rng(s)
                                                       for s in np.random.SeedSequence(seed).spawn(3))
        store = policy.weights
        self.store_dtype = np.float32 if store.fits_float32 else np.float64
        self.weights = [[np.asarray(round_to(w, store), dtype=self.store_dtype) for w in layer]
                        for layer in self.model.init_weights(init_rng)]
        self.compensation = ([[np.zeros_like(w) for w in layer] for layer in self.weights]
                             if policy.kahan else None)
        # The data are rounded to the activations format once (inputs are data, not computed values);
        # under a scaling recipe to FP32, the first product casting them.
        data_format = FP32 if self.casts is not None else policy.activations
        self.x_train = round_to(dataset.x_train, data_format).astype(self.compute.dtype)
        self.x_test = round_to(dataset.x_test, data_format).astype(self.compute.dtype)
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
        forward = model.forward(compute, x, params)
        loss = model.loss.forward(compute, forward.output, y)
        output_grad = compute.round(model.loss.backward(compute, loss, scale * self.grad_scale), "activation_grads",
                                    len(model.layers) - 1)
        grads = model.backward(compute, forward, output_grad)
        # (3) to FP32, unscaled, checked
        grads = [[np.asarray(round_to(g.astype(np.float64) / scale, self.grad_format), dtype=self.grad_dtype)
                  for g in layer] for layer in grads]
        found_inf = self.scaler is not None and not all(np.isfinite(g).all() for layer in grads for g in layer)
        if shadow:
            self.recorder.observe_shadow(grads, *self._shadow_gradients(index, forward, loss))
        # (4) learning rate and optimizer state, (5) applied to the stored weights
        if not found_inf:
            for i, layer in enumerate(grads):
                for j, grad in enumerate(layer):
                    self._apply(i, j, self.optimizer.update((i, j), grad))
        if self.scaler is not None:
            self.scaler.update(found_inf, step)
        if self.casts is not None:
            self.casts.end_step()
        return loss.value, found_inf

    def compute_weights(self):
        """Step (1): the master weights rounded to the params format, or the stored params as they are (also
        under a scaling recipe, whose products cast the master weights themselves)."""
        if self.policy.master is None or self.casts is not None:
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
        batches = self.dataset.batches(self.batch_rng, batch_size)
        steps_run, diverged_step = run_steps(
            steps, lambda step: self.train_step(step, next(batches), shadow=shadow_every and step % shadow_every == 0),
            lambda: all(np.isfinite(w).all() for layer in self.weights for w in layer),
            self.recorder, self.scaler, desc=self.policy.name, progress=progress)
        return self._result(config, steps_run, diverged_step)

    def _shadow_gradients(self, index, forward: ForwardPass, loss: LossPass) -> tuple[list, list]:
        """This step's weight gradients in FP64 arithmetic, twice.

        First the backward pass alone, redone in FP64 through the policy's own
        forward pass (``forward``, ``loss``: its activations, ReLU masks, cast
        weights and loss residual): where it is non-zero and the policy's
        gradient is zero, the backward pass lost the value to underflow.  Then
        the whole step from the stored weights and the unrounded data: the
        reference of the gradients' error, forward roundings included.
        """
        shadow = Float64Compute()
        backward_only = self.model.backward(shadow, forward, self.model.loss.backward(shadow, loss, self.grad_scale))
        return self._whole_step_in_float64(index, shadow), backward_only

    def _whole_step_in_float64(self, index, shadow) -> list:
        weights = [[w.astype(np.float64) for w in layer] for layer in self.weights]
        forward = self.model.forward(shadow, self.dataset.x_train[index], weights)
        loss = self.model.loss.forward(shadow, forward.output, self.dataset.y_train[index])
        return self.model.backward(shadow, forward, self.model.loss.backward(shadow, loss, self.grad_scale))

    def evaluate(self):
        """Test accuracy (None for a regression) and test loss, in the policy's forward formats."""
        compute = Compute(self.policy, casts=self.casts and self.casts.for_evaluation())
        params = self.compute_weights()
        outputs = np.concatenate([self.model.forward(compute, self.x_test[i:i + EVAL_CHUNK], params).output
                                  for i in range(0, len(self.x_test), EVAL_CHUNK)])
        loss = self.model.loss.forward(compute, outputs, self.dataset.y_test)
        return self.model.loss.score(outputs, self.dataset.y_test), json_float(loss.value)

    def _result(self, config, steps_run, diverged_step) -> TrainResult:
        accuracy, test_loss = self.evaluate()
        layers = self.recorder.layer_summaries()
        for summary, layer in zip(layers, self.model.layers):
            summary["shape"] = [layer.n_in, layer.n_out]
        return result_of_run(config, self.policy.name, self.recorder, self.scaler, steps_run=steps_run,
                             diverged_step=diverged_step, test_accuracy=accuracy, test_loss=test_loss, layers=layers)
