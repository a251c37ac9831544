"""The torch engine: ``train(config)`` trains a torch model under a precision policy.

The model is a built-in one (``fpsim.torch.models.MODELS``: ``char-gpt``,
``cnn``), a copy of a given ``torch.nn.Module``, or ``config.model(**config.model_options)``
for a factory, which is also handed, as keyword arguments, the fields of
``fpsim.torch.user_data.DataInfo`` it names among its parameters (vocabulary size,
context length, classes, input features: ``call_factory``).  The data are a
built-in classification data set (cross-entropy on the logits (B, K)) or a text
(next-character cross-entropy on the logits (B, T, V); the model says its
context length as ``model.config.block_size``), or the user's own
(``fpsim.torch.user_data``: ``(x, y)`` arrays, a ``Dataset``, a ``DataLoader``, an
iterable of batches, dicts as Hugging Face collators give), whose batches carry
their context length.  The loss of a batch is ``loss_fn(output, targets)`` when
given, else the model's own ``output.loss``, else the cross-entropy of its logits
(a tensor, ``.logits``, ``["logits"]`` or ``[0]``) against the targets
(``user_data.batch_loss``).

A step is the recipe of ``fpsim.sim.step`` (cast, forward, scale, backward, unscale,
check, update, record), the emulation standing in for ``torch.autocast`` as in nanoGPT's
``train.py`` with ``GradScaler``: the forward and backward passes run inside
``fpsim.torch.emulate(policy, model=, recorder=)``, which casts the FP32 master weights
(the model's own parameters) to ``policy.params`` at use; with weights stored in a
narrower format (a "pure" policy) the model holds the stored values.  Products
accumulate in float32 BLAS when ``policy.accumulate`` is FP32, else through
``fpsim.matmul`` (the emulation's ``accumulate="exact"``).  A ``torch.optim`` optimizer
(sgd, momentum, adam, adamw) turns the gradients into updates (``_Weights`` says how
they reach the stored weights).

``grad_scale`` multiplies the loss while the optimizer is made invariant to it
(SGD and momentum: ``lr / grad_scale``; Adam, AdamW: ``eps * grad_scale``), as
in the numpy engine.  Everything random comes from ``seed`` through a numpy
``SeedSequence`` (initial weights via a ``torch.Generator``, batches, stochastic
rounding, and torch's global generator, which a user's model may draw from (dropout), set for the run
and restored after it); the run takes ``fpsim.numerics.threads.one_thread``, on which every
operation these models use (the embedding's backward, a scatter-add, included) runs in
a fixed order, so the same configuration gives a bit-identical result (the tests compare
two runs bit for bit; ``torch.use_deterministic_algorithms`` is not needed: it would only
fill new tensors with NaN and import torch's compiler stack, seconds, on first use).

Every ``shadow_every`` steps the weight gradients are compared with an FP64
shadow of the same step: a float64 twin of the model with the stored weights
runs the same batch without emulation (the whole step, forward included).  The
numpy engine also redoes the backward pass alone through the policy's own
forward pass; torch keeps no float64 route through the policy's saved
activations, so here the whole-step shadow serves for both comparisons.  Its
"flushed" count (non-zero in FP64, zero in the policy) is therefore an upper
bound of the values lost to underflow: it also counts a ReLU unit (the cnn's)
whose sign differs between the two forward passes.  char-gpt has no ReLU.

A run diverges, stops at that step and says so, as in the numpy engine: when a
weight becomes inf/NaN, or when the loss is not finite and the loss scale
cannot back off any further.  The result is the numpy engine's ``TrainResult``:
for ``char-gpt`` ``test_loss`` is the validation loss in nats per character
(bits per character: divide by ln 2) and ``test_accuracy`` is None; for the
``cnn`` both are measured on the test set.  Evaluation runs under the policy's
forward formats, unrecorded.  For user data, ``test_loss`` and ``test_accuracy``
are measured on ``validation`` when given (``_Run.evaluate``) and are None
without it (the run's config then shows ``validation: None``: nothing was held out).
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch

from ..numerics.threads import one_thread
from ..numerics.formats import FP32
from ..numerics.rounding import round as round_to
from ..sim.config import MAX_BATCH_VALUES
from ..sim.data import load_data
from ..sim.loss_scaling import LossScaler
from ..sim.recorder import Recorder, json_float
from ..sim.loop import run_steps
from ..sim.result import TrainResult, result_of_run
from ..sim.scaling import ScaledCasts
from ..sim.step import RoundedUpdates, TrainingStep, by_module
from ..sim.vocabulary import OPTIMIZERS
from .emulate import ROOT, emulate
from .models import get_model
from .outputs import logits_of
from .user_data import (UserData, batch_loss, builtin_info, call_factory, cross_entropy, examples, forward,
                        targets_of, to_double)

EVAL_BATCH = 128
"""Validation windows (or test examples) per forward pass of the evaluation."""


def train(config, *, progress: bool = True) -> TrainResult:
    """Train ``config.model`` under ``config.policy``; see the module docstring for the recipe."""
    return train_model(config, progress=progress)[0]


def train_model(config, *, progress: bool = False) -> tuple[TrainResult, "torch.nn.Module"]:
    """``train``, also returning the trained model (its parameters: the weights as stored)."""
    policy = config.effective_policy
    _check_policy(policy)
    # spawn(5)'s first four children are spawn(4)'s: the fifth, the scaled casts' stochastic rounding, changes no
    # other stream
    init_seed, batch_seed, rounding_seed, forward_seed, casts_seed = np.random.SeedSequence(config.seed).spawn(5)
    # torch's global generator, which a model's dropout draws from, runs from the seed and is restored after
    with one_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_of(forward_seed))
        model, data = _build(config, torch.Generator().manual_seed(seed_of(init_seed)))
        run = _Run(config, policy, model, data, np.random.default_rng(batch_seed),
                   np.random.default_rng(rounding_seed), seed_of(batch_seed.spawn(1)[0]), seed_of(casts_seed))
        return run.train(progress), model


def _build(config, generator):
    """The model (built-in, from ``MODELS``, a copy of a given module, or from a factory told what the data
    decide, ``fpsim.torch.user_data.call_factory``) and its data: a built-in data set or a ``UserData``."""
    if not isinstance(config.model, str):
        if config.data is None:
            raise ValueError("a model given as a factory or a module needs data= (e.g. 'pydoc' for a character "
                             "model, 'mnist1d' for a classifier, or your own (x, y), Dataset, DataLoader or "
                             "batches)")
        if isinstance(config.data, (str, dict)):
            data = load_data(config.data)
            if data.task == "regression":
                raise ValueError(f"the torch engine trains classifiers and language models; {data.name!r} is a "
                                 f"regression (train it with model='mlp')")
            info = builtin_info(data)
        else:
            data = UserData(config.data)
            info = data.info()
        if config.validation is not None:
            UserData(config.validation, "validation")  # its form checked before anything runs
        if isinstance(config.model, torch.nn.Module):  # trained as a copy: the caller's module is left as it is
            if config.model_options:
                raise ValueError("model_options are a factory's arguments; a module given as model= is built "
                                 "already: drop them")
            return copy.deepcopy(config.model).float(), data
        # A factory initialises from torch's global generator: seed it from the run, then restore it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(generator.initial_seed())
            model = call_factory(config.model, config.model_options, info)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"the model factory returned {type(model).__name__}, not a torch.nn.Module")
        return model.float(), data
    spec = get_model(config.model)
    data = load_data(config.data if config.data is not None else spec.data)
    if data.task != spec.task:
        raise ValueError(f"model {config.model!r} needs a {spec.task} data set; {data.name!r} is a "
                         f"{data.task} data set")
    return spec.build(spec.make_config(data, config.model_options), generator), data


def seed_of(sequence: np.random.SeedSequence) -> int:
    """A ``torch.Generator`` seed (64 bits) from a numpy ``SeedSequence``."""
    return int(sequence.generate_state(1, np.uint64)[0])


def _check_policy(policy) -> None:
    for field in ("params", "activations", "gradients", "optimizer_state", "loss"):
        fmt = getattr(policy, field)
        if not fmt.fits_float32:
            raise ValueError(f"the torch engine computes in float32: policy {policy.name!r} has {field} in "
                             f"{fmt.name}, which float32 cannot hold; use model='mlp' (the numpy engine)")
    if not policy.weights.fits_float32:
        raise ValueError(f"the torch engine stores weights in float32: policy {policy.name!r} keeps them in "
                         f"{policy.weights.name}; use model='mlp' (the numpy engine)")


def make_optimizer(name: str, params, *, lr: float, grad_scale: float, momentum: float, betas, eps: float):
    """The ``torch.optim`` optimizer called ``name`` (one of ``fpsim.sim.vocabulary.OPTIMIZERS``) over ``params``,
    made invariant to ``grad_scale`` (AdamW with torch's default weight decay 0.01)."""
    name = str(name).lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr / grad_scale)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr / grad_scale, momentum=momentum)
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, betas=tuple(betas), eps=eps * grad_scale)
    raise ValueError(f"unknown optimizer {name!r} for the torch engine: use one of {', '.join(OPTIMIZERS)}")


def round_optimizer_state(optimizer, fmt) -> None:
    """Round, in place to nearest in ``fmt``, every floating state tensor of its parameter's shape."""
    for param, state in optimizer.state.items():
        for value in state.values():
            if torch.is_tensor(value) and value.is_floating_point() and value.shape == param.shape:
                _round_in_place(value, fmt)


def _round_in_place(tensor, fmt) -> None:
    view = tensor.detach().numpy()
    view[...] = round_to(view, fmt)


class _Weights:
    """The weights of record and the optimizer that updates them (``fpsim.sim.step.WeightStore``).

    ``params``: (module path, parameter) pairs of the model, each parameter once
    (a tied weight under its first name).  With FP32 weights the optimizer steps the
    model's parameters in its own FP32 arithmetic (as real AMP training does), and the
    recorder sees the change it made (``update = before - after``, so none counts as lost).
    Otherwise it steps float64 copies of the stored values, so that ``before - after``
    is its update to about 2^-53 relative, and each update is rounded into
    ``policy.weights`` (``fpsim.sim.step.RoundedUpdates``), as in the numpy engine.
    When ``policy.optimizer_state`` is narrower than the optimizer's tensors, every
    floating state tensor of a parameter's shape (momentum buffer, Adam's ``exp_avg``
    and ``exp_avg_sq``) is rounded to it to nearest after each step.
    """

    def __init__(self, policy, params, make, recorder, rounding_rng):
        self.policy, self.params, self.recorder = policy, params, recorder
        self.fmt = policy.weights
        self.native = self.fmt == FP32
        with torch.no_grad():
            for _, param in params:
                _round_in_place(param, self.fmt)  # the initial weights are stored in their format
        if self.native:
            self.stored = [param for _, param in params]
        else:
            self.stored = [param.detach().double().requires_grad_() for _, param in params]
        self.optimizer = make(self.stored)
        self.state_format = policy.optimizer_state
        self.rounded = RoundedUpdates(policy, [tuple(p.shape) for _, p in params], np.float32, rounding_rng,
                                      recorder)

    def working(self):
        """Step 1: nothing to do here: the model holds the stored weights and the emulation casts them to
        ``policy.params`` at use, as autocast does."""
        return None

    def update(self, grads) -> None:
        """Apply one optimizer step for the (unscaled, FP32) gradients ``grads`` (None: no gradient, as torch
        has it for a parameter the loss does not reach; the optimizer leaves it alone)."""
        before = [s.detach().clone() for s in self.stored]
        for stored, grad in zip(self.stored, grads):
            stored.grad = None if grad is None else torch.from_numpy(grad) if self.native \
                else torch.from_numpy(grad).double()
        self.optimizer.step()
        if self.state_format != FP32 or not self.native:
            round_optimizer_state(self.optimizer, self.state_format)
        with torch.no_grad():
            for i, ((module, param), stored, old) in enumerate(zip(self.params, self.stored, before)):
                old = old.numpy()
                update = old.astype(np.float64) - stored.detach().numpy()
                if self.native:
                    self.recorder.updated(module, old, stored.detach().numpy(), update, self.fmt)
                    continue
                new = torch.from_numpy(self.rounded.apply(i, module, old, update))
                stored.copy_(new)
                param.copy_(new)

    def finite(self) -> bool:
        return all(bool(torch.isfinite(param).all()) for _, param in self.params)


class _Run:
    """The state of one run: model, data, weights and optimizer, scaler, recorder, random streams."""

    def __init__(self, config, policy, model, data, batch_rng, rounding_rng, data_seed, casts_seed):
        self.config, self.policy, self.model, self.data = config, policy, model, data
        self.user_data = isinstance(data, UserData)
        self.language_model = not self.user_data and data.task == "language-model"
        self.batch_rng, self.data_seed = batch_rng, data_seed
        self.scaler = LossScaler.for_policy(policy.loss_scale, config.scaler)
        self.params = _named_parameters(model)
        histogram_steps = (config.histogram_steps or ()) if config.histograms else ()
        self.recorder = Recorder([module for module, _ in self.params], histogram_steps=histogram_steps,
                                 record_every=config.record_every)

        def make(tensors):
            return make_optimizer(config.optimizer, tensors, lr=config.lr, grad_scale=config.grad_scale,
                                  momentum=config.momentum, betas=config.betas, eps=config.eps)

        self.weights = _Weights(policy, self.params, make, self.recorder, rounding_rng)
        # FP8 / MX recipes (the run's or an override's): one ScaledCasts for the run (its delayed scalers' amax
        # histories span the steps; its stochastic rounding draws one stream from the run's seed)
        scaled = any(p.scaling is not None for p in (policy, *(p for _, p in policy.overrides)))
        self.casts = ScaledCasts(policy, self.recorder, casts_seed) if scaled else None
        self.shadow_model = None  # the float64 twin, made at the first shadow step
        # float32 BLAS accumulates in FP32; any other accumulation format needs fpsim.matmul's exact products
        self.accumulate = "native" if policy.accumulate == FP32 else "exact"
        if self.user_data:
            self.batches = data.training(config.batch_size, batch_rng, data_seed)
        elif self.language_model:
            self.block_size = getattr(getattr(model, "config", None), "block_size", None)
            if not isinstance(self.block_size, int):
                raise ValueError("a language model must say its context length as model.config.block_size "
                                 "(as nanoGPT's GPT does)")
            if config.batch_size * self.block_size > MAX_BATCH_VALUES:
                raise ValueError(f"batch_size {config.batch_size} of {self.block_size} characters is beyond the "
                                 f"{MAX_BATCH_VALUES} characters a step may take: choose a smaller batch_size")
        else:
            if config.batch_size > len(data.y_train):
                raise ValueError(f"batch_size {config.batch_size} exceeds the {len(data.y_train)} training examples "
                                 f"of {data.name!r}")
            self.x_train = torch.from_numpy(data.x_train.astype(np.float32))
            self.y_train = torch.from_numpy(data.y_train)
            self.batch_indices = data.batches(batch_rng, config.batch_size)

    # --- the engine's part of a step (fpsim.sim.step.Engine) ----------------------------------------
    def forward_backward(self, batch, weights, seed):
        """Step 2 of the recipe inside ``emulate``, the backward pass started at ``seed``; the gradients as numpy
        views of the parameters' ``.grad`` (None where none flowed)."""
        for _, param in self.params:
            param.grad = None
        with emulate(self.policy, model=self.model, recorder=self.recorder, accumulate=self.accumulate,
                     casts=self.casts):
            loss = batch_loss(forward(self.model, batch), batch, self.config.loss_fn)[0]
            loss.backward(torch.tensor(seed, dtype=loss.dtype))
        return float(loss.detach()), [None if p.grad is None else p.grad.numpy() for _, p in self.params], None

    def observe_shadow(self, batch, grads, saved) -> None:
        """Hand the recorder this step's weight gradients and those of its FP64 twin, per module."""
        if self.shadow_model is None:
            self.shadow_model = copy.deepcopy(self.model).double()
        shadow_params = [param for _, param in _named_parameters(self.shadow_model)]
        with torch.no_grad():
            for (_, param), twin in zip(self.params, shadow_params):
                twin.copy_(param)
                twin.grad = None
        double = to_double(batch)
        loss = batch_loss(forward(self.shadow_model, double), double, self.config.loss_fn)[0]
        loss.backward(torch.tensor(self.config.grad_scale, dtype=torch.float64))
        exact = [np.zeros(tuple(twin.shape)) if twin.grad is None else twin.grad.numpy() for twin in shadow_params]
        grads = [np.zeros(tuple(param.shape), dtype=np.float32) if grad is None else grad
                 for (_, param), grad in zip(self.params, grads)]
        modules = [module for module, _ in self.params]
        shadow_grads = by_module(modules, exact)
        self.recorder.observe_shadow(by_module(modules, grads), shadow_grads, shadow_grads)

    def next_batch(self):
        """The next training batch: ``(x, y)`` tensors of a built-in data set, or the user's data's next batch
        (``fpsim.torch.user_data``); the loss of either by ``user_data.batch_loss``'s rule (for a built-in
        data set without ``loss_fn``: the mean cross-entropy in nats, per token for a language model)."""
        if self.user_data:
            return next(self.batches)
        if self.language_model:
            x, y = self.data.batch(self.batch_rng, self.config.batch_size, self.block_size)
            return torch.from_numpy(x), torch.from_numpy(y)
        index = torch.from_numpy(next(self.batch_indices))
        return self.x_train[index], self.y_train[index]

    # --- the loop ----------------------------------------------------------------------------
    def train(self, progress: bool) -> TrainResult:
        step = TrainingStep(self, self.weights, self.policy, self.scaler, self.casts,
                            grad_scale=self.config.grad_scale, shadow_every=self.config.shadow_every)
        steps_run, diverged_step = run_steps(self.config.steps, step, self.recorder, desc=self.policy.name,
                                             progress=progress)
        return self._result(steps_run, diverged_step)

    def evaluate(self) -> tuple[float | None, float | None]:
        """(accuracy, mean loss) in the policy's forward formats, unrecorded, on the validation text or the test
        set of a built-in data set (accuracy None for a language model), or on the user's ``validation`` data
        ((None, None) without it); ``_evaluate`` says how."""
        if self.user_data:
            if self.config.validation is None:
                return None, None
            return self._evaluate(UserData(self.config.validation, "validation").evaluation(EVAL_BATCH,
                                                                                             self.data_seed))
        if self.language_model:
            x, y = (torch.from_numpy(a) for a in self.data.validation_windows(self.block_size))
        else:
            x = torch.from_numpy(self.data.x_test.astype(np.float32))
            y = torch.from_numpy(self.data.y_test)
        accuracy, loss = self._evaluate((x[s:s + EVAL_BATCH], y[s:s + EVAL_BATCH]) for s in range(0, len(x),
                                                                                                 EVAL_BATCH))
        return (None if self.language_model else accuracy), loss

    def _evaluate(self, batches) -> tuple[float | None, float | None]:
        """(accuracy, loss) over ``batches``, every example once.  With the engine's cross-entropy: the loss in
        nats summed over the targets (a target of -100 left out) divided by their number, and the share of
        those targets whose largest logit is the target's; with ``loss_fn`` or the model's own ``.loss``: the
        batches' losses weighted by their examples, and accuracy None."""
        total, count, correct, engine_loss = 0.0, 0, 0, True
        casts = self.casts.for_evaluation() if self.casts is not None else None
        with torch.no_grad(), evaluation_mode(self.model), emulate(self.policy, model=self.model,
                                                                   accumulate=self.accumulate, casts=casts):
            for batch in batches:
                output = forward(self.model, batch)
                loss, engine_loss = batch_loss(output, batch, self.config.loss_fn)
                if not engine_loss:
                    total, count = total + float(loss) * examples(batch), count + examples(batch)
                    continue
                targets = targets_of(batch)
                kept = targets != -100
                total += float(cross_entropy(output, targets, reduction="sum"))
                count += int(kept.sum())
                correct += int((logits_of(output).argmax(-1) == targets)[kept].sum())
        if count == 0:
            raise ValueError("validation holds no example (or only targets of -100)")
        return (correct / count if engine_loss else None), json_float(total / count)

    def _result(self, steps_run, diverged_step) -> TrainResult:
        accuracy, test_loss = self.evaluate()
        layers = self.recorder.layer_summaries()
        sizes = {}
        for module, param in self.params:
            sizes[module] = sizes.get(module, 0) + param.numel()
        for summary in layers:
            summary["parameters"] = sizes.get(summary["module"], 0)
        return result_of_run(self.config.to_dict(), self.policy.name, self.recorder, self.scaler,
                             steps_run=steps_run, diverged_step=diverged_step, test_accuracy=accuracy,
                             test_loss=test_loss, layers=layers)


@contextlib.contextmanager
def evaluation_mode(model):
    """``model.eval()`` (no dropout; batch norm on its running statistics) for the evaluation, each module's
    own mode restored after: the run trains in the mode the model comes in (a module built fresh is in
    training mode; call ``.eval()`` on it to train without dropout)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.train(training)


def _named_parameters(model) -> list[tuple[str, "torch.nn.Parameter"]]:
    """(module path, parameter) for every parameter, once, in ``named_parameters`` order (a tied weight under
    its first owner; the root module is ``ROOT``, as the emulation names them)."""
    return [(name.rpartition(".")[0] or ROOT, param) for name, param in model.named_parameters()]
