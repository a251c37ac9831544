"""``EmulatedTrainer``: the transformers ``Trainer`` with its training steps under an fpsim policy.

``EmulatedTrainer(model=..., args=TrainingArguments(..., use_cpu=True), train_dataset=...,
policy="bf16-mixed", recorder=None)`` trains as ``Trainer`` does, with what
``bf16=True`` / ``fp16=True`` would give replaced by the policy's formats (the
model stays float32; leave ``fp16``/``bf16`` off).  Each ``training_step`` (the
model's forward, ``compute_loss`` and ``accelerator.backward``) runs inside one
``fpsim.torch.emulate`` context; ``compute_loss``'s loss starts the backward
pass at the loss scale (the logged loss stays unscaled); at the end of the last
micro-batch of a gradient-accumulation window the gradients are unscaled and
checked (before ``max_grad_norm``'s clipping); the optimizer's step hooks skip an
overflowing step (gradients dropped: the optimizer changes nothing; the learning
rate schedule still advances, unlike accelerate's own scaler), store the weights
of a pure policy in 16 bits and update the loss scale
(``fpsim.integrations.steps.EmulatedSteps``).  ``prediction_step`` (evaluation)
runs in the policy's forward formats, unrecorded.  A policy means here what it
means for ``fpsim.integrations.lightning.EmulatedPrecision`` (its docstring).
Needs transformers (``pip install "fpsim[hf]"``).
"""

from __future__ import annotations

from . import require

require("torch", "torch", "fpsim.integrations.transformers")
transformers = require("transformers", "hf", "fpsim.integrations.transformers")

from .steps import EmulatedSteps  # noqa: E402


class EmulatedTrainer(transformers.Trainer):
    """``transformers.Trainer`` training under ``policy`` (module docstring); ``emulation`` is its ``EmulatedSteps``.

    policy: an ``fpsim.Policy`` or preset name.  recorder: an ``fpsim.sim.recorder.Recorder`` or None (one
    recorder step per optimizer step).  scaler: the dynamic loss scaler's options.  seed: the stochastic
    rounding's stream.  Every other argument is ``Trainer``'s.
    """

    def __init__(self, *args, policy, recorder=None, scaler=None, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.fp16 or self.args.bf16:
            raise ValueError("EmulatedTrainer gives the policy's formats itself: leave TrainingArguments' fp16 and "
                             "bf16 off (the model stays float32)")
        self.emulation = EmulatedSteps(policy, recorder=recorder, scaler=scaler, seed=seed)
        self.emulation.connect(self.model)

    def create_optimizer(self, model=None):
        return self.emulation.attach(super().create_optimizer(model))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        self.emulation.scale_gradient(result[0] if return_outputs else result)
        return result

    def training_step(self, model, inputs, num_items_in_batch=None):
        with self.emulation.emulating():
            loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients:  # the window's last backward pass: unscale before clipping
            self.emulation.unscale_(self.optimizer)
        return loss

    def prediction_step(self, *args, **kwargs):
        with self.emulation.evaluating():
            return super().prediction_step(*args, **kwargs)
