"""``EmulatedPrecision``: a Lightning precision plugin that trains under an fpsim policy.

``Trainer(plugins=[EmulatedPrecision("bf16-mixed")])`` and
``Fabric(plugins=EmulatedPrecision("fp16-amp"))`` stand in for
``precision="bf16-mixed"`` / ``"16-mixed"``: the model stays float32 on the CPU
and every op holds the values the policy's formats give.  What a policy means
here (``fpsim.POLICIES``, ``fpsim.SCALED_POLICIES``):

* ``fp32``: nothing changes (observed by the recorder, if one is given);
* ``fp16-mixed``, ``bf16-mixed``: Lightning's ``"16-mixed"`` / ``"bf16-mixed"``
  without a scaler: FP32 master weights (the parameters) cast to 16 bits at use,
  products rounded as autocast places them, gradients in 16 bits;
* ``fp16-amp``: ``fp16-mixed`` with GradScaler's dynamic loss scale (2^16, halved
  and the step skipped on inf/NaN, doubled after 2000 clean steps; ``scaler=``
  sets these), a policy with a constant ``loss_scale`` that constant;
* ``fp16-pure``, ``bf16-pure``, ``bf16-sr``, ``bf16-kahan``: ``"16-true"`` /
  ``"bf16-true"``: the parameters hold 16-bit values (rounded once at setup and
  after each optimizer step, to nearest, stochastically or Kahan-compensated),
  and so does the optimizer's state;
* ``fp8-*``, ``mx*``, ``nvfp4``: the products' operands quantized by the recipe
  (one set of delayed scales for the run), everything else FP32, FP32 master weights.

The emulation opens at a forward pass with gradients enabled (Lightning's
``training_step``, a Fabric module's ``forward``) and stays open until the
backward pass that follows ends (``post_backward``): Lightning runs the backward
pass outside ``forward_context``, and the backward pass reads what its forward
pass recorded.  A forward pass without gradients (validation, ``torch.no_grad``)
runs in the forward formats, unrecorded, and closes at its end.  The loss
scaling, the unscaling before gradient clipping, the skipped steps and the
weight storage are ``fpsim.integrations.steps.EmulatedSteps``' (its docstring
states them), hooked into each optimizer Lightning steps; with a ``recorder``
each optimizer step is one recorder step.  Needs Lightning
(``pip install "fpsim[lightning]"``).
"""

from __future__ import annotations

from contextlib import contextmanager

from . import require

torch = require("torch", "torch", "fpsim.integrations.lightning")
pl = require("lightning.pytorch", "lightning", "fpsim.integrations.lightning")

from lightning.fabric.plugins import Precision as FabricPrecision  # noqa: E402
from torch.optim import LBFGS  # noqa: E402

from .steps import EmulatedSteps  # noqa: E402


class EmulatedPrecision(pl.plugins.Precision):
    """A precision plugin for Lightning's ``Trainer`` and ``Fabric``: training under ``policy`` (module docstring).

    policy: an ``fpsim.Policy`` or preset name.  recorder: an ``fpsim.sim.recorder.Recorder`` or None.
    scaler: the dynamic loss scaler's options.  seed: the stochastic rounding's stream.  ``steps`` is the
    run's ``EmulatedSteps`` (its ``scaler.scale``, ``step``, ``policy``).
    """

    precision = "32-true"  # the tensors Lightning sees are float32: the formats' values live in them

    def __init__(self, policy, recorder=None, *, scaler=None, seed: int = 0):
        self.steps = EmulatedSteps(policy, recorder=recorder, scaler=scaler, seed=seed)

    def convert_module(self, module):
        return self.steps.connect(module)

    @contextmanager
    def forward_context(self):
        opened = not self.steps.active
        if opened:
            self.steps.open(training=torch.is_grad_enabled())
        try:
            yield
        except BaseException:
            if opened:  # no backward pass follows a forward pass that raised
                self.steps.close()
            raise
        if opened and not self.steps.training:
            self.steps.close()

    def backward(self, tensor, model, *args, **kwargs):
        self.steps.scale_gradient(tensor)
        try:
            if isinstance(model, pl.LightningModule):  # the Trainer's: the module's backward hook (args[0]: optimizer)
                return super().backward(tensor, model, *args, **kwargs)
            return FabricPrecision.backward(self, tensor, model, *args, **kwargs)
        except BaseException:
            self.steps.close()  # post_backward will not run
            raise

    def pre_backward(self, tensor, module):
        if isinstance(module, pl.LightningModule):
            return super().pre_backward(tensor, module)
        return FabricPrecision.pre_backward(self, tensor, module)

    def post_backward(self, tensor, module):
        self.steps.close()  # the step's forward and backward passes are done
        if isinstance(module, pl.LightningModule):
            return super().post_backward(tensor, module)
        return FabricPrecision.post_backward(self, tensor, module)

    def optimizer_step(self, optimizer, model=None, closure=None, **kwargs):
        self.steps.attach(optimizer)
        if not isinstance(model, pl.LightningModule):  # Fabric: the backward pass has run
            return optimizer.step(**kwargs)
        if isinstance(optimizer, LBFGS):
            raise TypeError("EmulatedPrecision steps the optimizer after its closure (as AMP does): LBFGS, which "
                            "calls the closure itself, is not supported")
        closure_result = closure()
        skip = closure_result is None and model.automatic_optimization  # training_step returned no loss
        if not skip:
            self.steps.unscale_(optimizer)  # before clipping, as MixedPrecision unscales
        self._after_closure(model, optimizer)
        return closure_result if skip else optimizer.step(**kwargs)

    def unscale_gradients(self, optimizer) -> None:
        self.steps.unscale_(optimizer)

    def teardown(self) -> None:
        self.steps.close()
