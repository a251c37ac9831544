"""The numpy engine: the MLP trained under a precision policy, every product and its accumulation emulated.

A step is the recipe of ``fpsim.sim.step`` (cast, forward, scale, backward, unscale, check,
update, record); this engine supplies the MLP's forward and backward passes in the
policy's compute formats (``fpsim.engines.mlp``), its weights (``_Weights``: master weights
or params, updated by ``fpsim.sim.optimizers``) and its FP64 shadow.  Everything random
(initial weights, batch order, stochastic rounding) comes from ``seed``, so the same
configuration gives a bit-identical result.  A run stops where it diverges
(``fpsim.sim.result.has_diverged``) and takes at most ``steps`` steps.
"""

from __future__ import annotations

import numpy as np

from ..numerics.threads import one_thread
from ..numerics.formats import FP32
from ..numerics.rounding import round as round_to
from ..sim.config import MAX_PARAMETERS, TrainConfig
from ..sim.data import load_data
from ..sim.loss_scaling import LossScaler
from ..sim.scaling import ScaledCasts
from ..sim.optimizers import make_optimizer
from ..sim.recorder import Recorder, json_float
from ..sim.loop import run_steps
from ..sim.step import RoundedUpdates, TrainingStep, by_module
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
    """One training run's engine side of ``fpsim.sim.step``: model, data, batches, formats, recorder."""

    def __init__(self, policy, dataset, hidden, optimizer, scaler, grad_scale, seed, recorder):
        self.policy, self.dataset, self.scaler, self.grad_scale, self.recorder = (policy, dataset, scaler,
                                                                                 grad_scale, recorder)
        self.model = MLP((dataset.inputs, *hidden, dataset.outputs), dataset.task)
        # Under a scaling recipe (FP8 / MX) the products cast their operands through one ScaledCasts,
        # whose delayed scalers the training steps update and the evaluation reads.
        # spawn(4)'s first three children are spawn(3)'s: the fourth, the casts' stochastic rounding, changes no
        # other stream
        init_seed, batch_seed, rounding_seed, casts_seed = np.random.SeedSequence(seed).spawn(4)
        self.casts_seed = int(casts_seed.generate_state(1, np.uint64)[0])
        self.casts = ScaledCasts(policy, recorder, self.casts_seed) if policy.scaling is not None else None
        self.compute = Compute(policy, recorder, self.casts, seed=self.casts_seed)
        init_rng, self.batch_rng, rounding_rng = (np.random.default_rng(s)
                                                  for s in (init_seed, batch_seed, rounding_seed))
        self.weights = _Weights(policy, self.model.init_weights(init_rng), optimizer, self.compute.dtype,
                                rounding_rng, recorder, uses_master=self.casts is None)
        # The data are rounded to the activations format once (inputs are data, not computed values);
        # under a scaling recipe to FP32, the first product casting them.
        data_format = FP32 if self.casts is not None else policy.activations
        self.x_train = round_to(dataset.x_train, data_format).astype(self.compute.dtype)
        self.x_test = round_to(dataset.x_test, data_format).astype(self.compute.dtype)
        self.batches = None

    # --- the engine's part of a step (fpsim.sim.step.Engine) ---------------
    def next_batch(self):
        """The indices of the next batch of training examples."""
        return next(self.batches)

    def forward_backward(self, index, params, seed):
        """Step 2 of the recipe on the examples ``index``: (loss, flat gradients, the passes the shadow reads)."""
        compute, model = self.compute, self.model
        forward = model.forward(compute, self.x_train[index], params)
        loss = model.loss.forward(compute, forward.output, self.dataset.y_train[index])
        output_grad = compute.round(model.loss.backward(compute, loss, seed), "activation_grads",
                                    len(model.layers) - 1)
        grads = model.backward(compute, forward, output_grad)
        return loss.value, [g for layer in grads for g in layer], (forward, loss)

    def observe_shadow(self, index, grads, saved) -> None:
        """The recorder gets the gradients' error against an FP64 shadow of this step (see ``_shadow_gradients``)."""
        self.recorder.observe_shadow(by_module(self.weights.modules, grads), *self._shadow_gradients(index, *saved))

    # --- the loop ------------------------------------------------------------
    def train(self, steps, batch_size, shadow_every, config, progress) -> TrainResult:
        self.batches = self.dataset.batches(self.batch_rng, batch_size)
        step = TrainingStep(self, self.weights, self.policy, self.scaler, self.casts, grad_scale=self.grad_scale,
                            shadow_every=shadow_every)
        steps_run, diverged_step = run_steps(steps, step, self.recorder, desc=self.policy.name, progress=progress)
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
        weights = [[w.astype(np.float64) for w in layer] for layer in self.weights.stored]
        forward = self.model.forward(shadow, self.dataset.x_train[index], weights)
        loss = self.model.loss.forward(shadow, forward.output, self.dataset.y_train[index])
        return self.model.backward(shadow, forward, self.model.loss.backward(shadow, loss, self.grad_scale))

    def evaluate(self):
        """Test accuracy (None for a regression) and test loss, in the policy's forward formats."""
        compute = Compute(self.policy, casts=self.casts and self.casts.for_evaluation(), seed=self.casts_seed)
        params = self.weights.working()
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


class _Weights:
    """The MLP's stored weights (``policy.weights``: the master weights, or the params themselves), their
    optimizer and the rounding of its updates (``fpsim.sim.step.WeightStore``)."""

    def __init__(self, policy, initial, optimizer, compute_dtype, rng, recorder, *, uses_master: bool):
        self.policy, self.optimizer, self.compute_dtype = policy, optimizer, compute_dtype
        self.uses_master = uses_master and policy.master is not None
        store = policy.weights
        dtype = np.float32 if store.fits_float32 else np.float64
        self.stored = [[np.asarray(round_to(w, store), dtype=dtype) for w in layer] for layer in initial]
        self.keys = [(i, j) for i, layer in enumerate(self.stored) for j in range(len(layer))]
        self.modules = [module_name(i) for i, _ in self.keys]
        self.rounded = RoundedUpdates(policy, [self.stored[i][j].shape for i, j in self.keys], dtype, rng, recorder)

    def working(self):
        """Step 1: the master weights rounded to the params format, or the stored params as they are (also
        under a scaling recipe, whose products cast the master weights themselves)."""
        if not self.uses_master:
            return self.stored
        return [[np.asarray(round_to(w, self.policy.params), dtype=self.compute_dtype) for w in layer]
                for layer in self.stored]

    def update(self, grads) -> None:
        """Step 5: the optimizer's update of each weight (``grads`` flat, in ``keys`` order), rounded into it."""
        for index, ((i, j), module, grad) in enumerate(zip(self.keys, self.modules, grads)):
            update = self.optimizer.update((i, j), grad)
            self.stored[i][j] = self.rounded.apply(index, module, self.stored[i][j], update)

    def finite(self) -> bool:
        return all(np.isfinite(w).all() for layer in self.stored for w in layer)
