"""``EmulatedSteps``: a policy's training recipe around a training loop that is not fpsim's.

The loop (Lightning's, the transformers ``Trainer``'s, your own) keeps its model,
optimizer and schedule; ``EmulatedSteps`` supplies what ``torch.autocast`` and
``GradScaler`` supply to it, as the torch engine's step does (``fpsim.torch.engine``):

1. ``connect(model)``: the weights are stored in ``policy.weights`` from the start
   (rounded in place once; FP32 master weights stay as they are);
2. ``emulating()``: forward and backward inside one ``fpsim.torch.emulate`` context
   (the FP32 master weights cast to ``policy.params`` at use, every op rounded to
   the policy's formats); ``scale_gradient(loss)`` starts the backward pass at the
   loss scale S (a hook multiplying the loss's gradient by S: the gradient of
   ``S * loss``, as ``GradScaler.scale(loss).backward()``, while the loss itself, as
   logged, stays unscaled);
3. ``unscale_(optimizer)``: the gradients divided by S (in float64, rounded once to
   FP32, as the engine does) and checked for inf/NaN; idempotent until the step, so
   a loop may call it before clipping, as with ``GradScaler.unscale_``;
4. ``attach(optimizer)``: the optimizer's step hooks finish each step.  Before the
   step: unscale if not yet done; with loss scaling a step whose gradients hold
   inf/NaN is skipped (every gradient set to None, so the optimizer leaves every
   parameter and its state alone).  After it: with weights stored in a 16-bit format
   (a "pure" policy) each parameter's update ``u = before - after`` (the optimizer's
   own FP32 step) is rounded into ``policy.weights`` as the engines round it
   (``fpsim.sim.step.RoundedUpdates``: nearest, stochastic from ``seed``, or
   Kahan-compensated), and the optimizer's state rounded to ``policy.optimizer_state``; then the loss scale is updated
   (``fpsim.sim.loss_scaling.LossScaler``: GradScaler's rule, the policy's dynamic
   or constant scale, ``scaler`` its options), an FP8 recipe's delayed scales step,
   and the recorder closes the step.

With a ``recorder`` (``fpsim.sim.recorder.Recorder``) each optimizer step is one of
its steps: the roundings of the forward and backward passes, the updates of the
stored weights (lost ones counted), the loss of the last backward pass, the loss
scale and whether the step was skipped.  ``evaluating()`` runs forward passes in
the policy's forward formats, unrecorded.  Under a pure policy the update is the
optimizer's FP32 step, so an update below FP32's resolution at the weight is
already gone before its rounding into 16 bits (the engine steps a float64 copy).
"""

from __future__ import annotations

import contextlib
import weakref
from contextlib import contextmanager

import numpy as np
import torch

from ..numerics.formats import FP32
from ..numerics.rounding import round as round_to
from ..sim.loss_scaling import LossScaler
from ..sim.policy import Policy
from ..sim.scaling import ScaledCasts
from ..sim.step import RoundedUpdates
from ..torch.emulate import OUTSIDE, ROOT, emulate
from ..torch.engine import round_optimizer_state


class EmulatedSteps:
    """One run's policy, loss scaler, FP8 casts and recorder, for a loop that calls its methods (module docstring).

    policy: an ``fpsim.Policy`` or preset name (``fpsim.POLICIES``, ``fpsim.SCALED_POLICIES``).  recorder: an
    ``fpsim.sim.recorder.Recorder`` or None.  scaler: options of the dynamic ``LossScaler`` (``init_scale``,
    ``growth_interval``, ...) for a policy that scales its loss.  seed: the stochastic rounding's stream.
    """

    def __init__(self, policy, *, recorder=None, scaler=None, seed: int = 0):
        self.policy = Policy.coerce(policy)
        self.recorder = recorder
        self.scaler = LossScaler.for_policy(self.policy.loss_scale, scaler)
        self.casts = ScaledCasts(self.policy, recorder, seed) if self.policy.scaling is not None else None
        self.accumulate = "native" if self.policy.accumulate == FP32 else "exact"
        self.rng = np.random.default_rng(seed)
        self.model = None
        self.step = 0
        self.loss = float("nan")  # the last backward pass's loss, for the recorder
        self._paths = {}  # id(parameter) -> its module path
        self._finite = {}  # id(parameter) -> whether its unscaled gradient is finite (unscaled this step)
        self._before = {}  # id(parameter) -> its stored values before the optimizer's step
        self._index = {}  # id(parameter) -> its position in the connected model's parameters
        self.rounded = None  # the updates' rounding into policy.weights (RoundedUpdates), set by connect
        self._skipped = False
        self._attached = weakref.WeakSet()  # the optimizers hooked (an id could be reused by a later one)
        self._context = None  # the open emulate context (an ExitStack), or None
        self.training = False  # whether the open context records (a training step) or not (evaluation)
        if recorder is not None:
            recorder.start_step(0)

    # --- the model and the contexts ----------------------------------------------------------
    def connect(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model whose module paths name the records and whose parameters are the weights; its weights
        rounded in place to ``policy.weights`` (how they are stored from the first step on)."""
        self.model = model
        named = list(model.named_parameters())
        self._paths = {id(param): name.rpartition(".")[0] or ROOT for name, param in named}
        self._index = {id(param): i for i, (_, param) in enumerate(named)}
        self.rounded = RoundedUpdates(self.policy, [tuple(param.shape) for _, param in named], np.float32, self.rng,
                                      self.recorder)
        if self.policy.weights != FP32:
            with torch.no_grad():
                for param in model.parameters():
                    view = param.detach().numpy()
                    view[...] = round_to(view, self.policy.weights)
        return model

    @property
    def active(self) -> bool:
        return self._context is not None

    def open(self, *, training: bool = True) -> None:
        """Enter the emulation (recorded when ``training``); nothing when one is open already."""
        if self._context is not None:
            return
        recorder, casts = self.recorder, self.casts
        if not training:
            recorder, casts = None, casts and casts.for_evaluation()
        stack = contextlib.ExitStack()
        stack.enter_context(emulate(self.policy, model=self.model, recorder=recorder, accumulate=self.accumulate,
                                    casts=casts))
        self._context, self.training = stack, training

    def close(self) -> None:
        """Leave the emulation if one is open."""
        context, self._context = self._context, None
        if context is not None:
            context.close()

    @contextmanager
    def emulating(self, *, training: bool = True):
        """A training step's forward and backward passes (or, ``training=False``, an evaluation) under the policy;
        inside an open context, that one continues."""
        if self._context is not None:
            yield
            return
        self.open(training=training)
        try:
            yield
        finally:
            self.close()

    def evaluating(self):
        """Forward passes in the policy's forward formats, unrecorded."""
        return self.emulating(training=False)

    # --- loss scaling --------------------------------------------------------------------------
    @property
    def loss_scale(self) -> float:
        return self.scaler.scale if self.scaler is not None else 1.0

    def scale_gradient(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` itself, its backward pass to start at the loss scale (a gradient hook); noted for the recorder."""
        if not (isinstance(loss, torch.Tensor) and loss.requires_grad):
            return loss
        self.loss = float(loss.detach())
        scale = self.loss_scale
        if scale != 1.0:
            loss.register_hook(lambda grad: grad * scale)
        return loss

    def unscale_(self, optimizer) -> bool:
        """Divide ``optimizer``'s gradients by the loss scale (once per step) and check them; returns whether any
        holds inf/NaN.  Runs on the gradients' memory through numpy, outside any emulation."""
        scale = self.loss_scale
        for param in _parameters(optimizer):
            if param.grad is None or id(param) in self._finite:
                continue
            grad = param.grad.detach().numpy()
            if scale != 1.0:
                grad[...] = (grad.astype(np.float64) / scale).astype(grad.dtype)
            self._finite[id(param)] = bool(np.isfinite(grad).all())
        return not all(self._finite.get(id(param), True) for param in _parameters(optimizer))

    # --- the optimizer's step ------------------------------------------------------------------
    def attach(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Hook ``optimizer``'s steps (once; see the module docstring); returns it."""
        if optimizer not in self._attached:
            self._attached.add(optimizer)
            optimizer.register_step_pre_hook(self._before_step)
            optimizer.register_step_post_hook(self._after_step)
        return optimizer

    def _before_step(self, optimizer, args, kwargs) -> None:
        self._skipped = self.unscale_(optimizer) and self.scaler is not None
        params = [param for param in _parameters(optimizer) if param.grad is not None]
        if self._skipped:
            for param in params:
                param.grad = None
            return
        if self.recorder is not None or self.policy.weights != FP32:
            self._before = {id(param): param.detach().numpy().copy() for param in params}

    def _after_step(self, optimizer, args, kwargs) -> None:
        if not self._skipped:
            with torch.no_grad():
                for param in _parameters(optimizer):
                    before = self._before.pop(id(param), None)
                    if before is not None:
                        self._store(param, before)
            if self.policy.optimizer_state != FP32:
                round_optimizer_state(optimizer, self.policy.optimizer_state)
        self._before.clear()
        for param in _parameters(optimizer):
            self._finite.pop(id(param), None)
        if self.scaler is not None:
            scale = self.scaler.scale
            self.scaler.update(self._skipped, self.step)
        else:
            scale = 1.0
        if self.casts is not None:
            self.casts.end_step()
        if self.recorder is not None:
            self.recorder.end_step(loss=self.loss, loss_scale=scale, skipped=self._skipped)
            self.recorder.start_step(self.step + 1)
        self.step += 1

    def _store(self, param, before: np.ndarray) -> None:
        """The optimizer's update of ``param`` (from ``before``) stored in ``policy.weights`` and recorded."""
        stepped = param.detach().numpy()
        update = before.astype(np.float64) - stepped
        path = self._paths.get(id(param), OUTSIDE)
        if self.policy.weights == FP32:
            if self.recorder is not None:
                self.recorder.updated(path, before, stepped, update, FP32)
            return
        if id(param) not in self._index:
            raise ValueError("the optimizer steps a parameter of no connected model: give the optimizer the "
                             "parameters of the model the precision plugin converted")
        param.copy_(torch.from_numpy(self.rounded.apply(self._index[id(param)], path, before, update)))


def _parameters(optimizer):
    return [param for group in optimizer.param_groups for param in group["params"]]
