"""``TrainResult``: what a training run produced and what its recorder saw, the same for every engine."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from .vocabulary import RECORDED_KINDS, Kind

FINAL_LOSS_STEPS = 50
"""``final_loss`` is the mean training loss over this many last (non-skipped) steps."""

STATUSES = {
    "ok": "trained: some weights changed and nothing below happened",
    "diverged": "a stored weight or the loss became inf/NaN and the run stopped (at diverged_step)",
    "no updates": "no stored weight ever changed: every step was skipped, or every update was lost",
    "loss-scale floor": "the dynamic loss scale overflowed at its floor (min_scale_hits), so those steps were skipped",
    "interrupted": "stopped by Ctrl-C after steps_run steps: a partial run, not comparable with finished ones",
}
"""How a run ended (``TrainResult.status``); the first that applies, in this order, is given ("interrupted", for
a run stopped before its last step without diverging, stands before them all)."""


def run_status(*, diverged: bool, weights_changed: int, min_scale_hits: int) -> str:
    """The ``STATUSES`` entry of a run: the first of diverged, no updates, loss-scale floor that applies, else ok."""
    for status, applies in (("diverged", diverged), ("no updates", weights_changed == 0),
                            ("loss-scale floor", min_scale_hits > 0)):
        if applies:
            return status
    return "ok"


SUMMARY = ("policy", "status", "test_accuracy", "test_loss", "final_loss", "weight_grad_underflow_fraction",
           "activation_grad_underflow_fraction", "lost_update_fraction", "overflow_count", "skipped_steps",
           "final_loss_scale", "diverged_step", "saturated_count")
"""The headline numbers of ``TrainResult.summary()``, in its order."""


@dataclass
class TrainResult:
    """What a training run produced and what the recorder saw.  ``to_dict()`` is JSON-able.

    Fractions are over the whole run (the weight-gradient one over its shadow
    steps); ``lost_update_fraction`` is the share of weight elements with a non-zero
    update whose stored value did not change (``lost_update_magnitude_fraction``:
    the share of the updates' total |magnitude| they carried).
    """

    config: dict
    """The run's ``TrainConfig`` in its JSON form: ``fpsim.train(**config)`` reruns the run."""
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
    status: str = "ok"
    """How the run ended: one of ``STATUSES`` ("ok", "diverged", "no updates", "loss-scale floor", "interrupted")."""
    history: list = field(default_factory=list)
    """One dict per step: loss, loss_scale, skipped, and per kind the counts nonzero, underflow,
    subnormal, overflow, nonfinite; updated, lost_updates, update_magnitude, lost_update_magnitude; under a
    scaling recipe also ``saturated`` per operand kind."""
    layers: list = field(default_factory=list)
    """Per module: its path, shape and run totals of every count (see ``fpsim.sim.recorder``)."""
    layer_history: dict = field(default_factory=dict)
    """Per-module counts summed over windows of ``record_every`` steps (arrays [window][module][kind][stat])."""
    histograms: list = field(default_factory=list)
    """Histograms of log2|value| before rounding, per requested step, kind and layer."""
    shadow: list = field(default_factory=list)
    """On sampled steps: per layer, ||g - g64|| / ||g64|| against an FP64 shadow of the same step."""
    scaling: list = field(default_factory=list)
    """Under an FP8 / MX scaling recipe: per operand kind and module, the saturated values and the scales'
    range per step (``fpsim.sim.recorder.Recorder.scaling``); empty otherwise."""

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
        try:
            with open(temporary, "w") as file:
                json.dump(self.to_dict(), file, allow_nan=False)
            os.replace(temporary, path)
        except BaseException:  # a full disk, an interrupt: leave no half-written file behind
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise

    @classmethod
    def load(cls, path) -> "TrainResult":
        """Read a result that ``save`` wrote."""
        with open(os.fspath(path)) as file:
            return cls.from_dict(json.load(file))

    def summary(self) -> dict:
        """The headline numbers, for tables, each under its attribute's name."""
        return {name: getattr(self, name) for name in SUMMARY}

    @property
    def saturated_count(self) -> int:
        """Values that saturated at their element format's max in the casts of a scaling recipe (0 without one)."""
        return sum(sum(trace["saturated"]) for trace in self.scaling)


def has_diverged(loss: float, weights_finite: bool, scaler, scale: float) -> bool:
    """Whether a run must stop after a step: a stored weight became inf/NaN, or the loss is not finite and
    lowering the loss scale is no longer possible (no scaler, a constant scale, or a dynamic one at its floor)."""
    can_back_off = scaler is not None and scaler.dynamic and scale > scaler.min_scale
    return not weights_finite or (not math.isfinite(loss) and not can_back_off)


def result_of_run(config: dict, policy_name: str, recorder, scaler, *, steps_run: int, diverged_step: int | None,
                  test_accuracy: float | None, test_loss: float | None, layers: list) -> TrainResult:
    """The ``TrainResult`` of a finished run, from what its recorder and loss scaler saw (any engine).

    ``layers``: the recorder's ``layer_summaries()`` with what the engine adds (shapes, parameter counts).
    """
    history = recorder.history
    interrupted = diverged_step is None and steps_run < config["steps"]  # only Ctrl-C stops a run early (run_steps)
    kept = [r["loss"] for r in history if not r["skipped"]][-FINAL_LOSS_STEPS:]
    final_loss = float(np.mean(kept)) if kept and diverged_step is None and None not in kept else None
    min_scale_hits = scaler.min_scale_hits if scaler is not None else 0
    return TrainResult(
        config=config, policy=policy_name, test_accuracy=test_accuracy, test_loss=test_loss, final_loss=final_loss,
        weight_grad_underflow_fraction=recorder.weight_grad_underflow_fraction,
        activation_grad_underflow_fraction=recorder.fraction(Kind.ACTIVATION_GRADS, "underflow"),
        activation_underflow_fraction=recorder.fraction(Kind.ACTIVATIONS, "underflow"),
        overflow_count=sum(recorder.total(kind, "overflow") for kind in RECORDED_KINDS),
        lost_update_fraction=recorder.lost_update_fraction,
        lost_update_magnitude_fraction=recorder.lost_update_magnitude_fraction,
        skipped_steps=sum(1 for r in history if r["skipped"]),
        final_loss_scale=scaler.scale if scaler is not None else 1.0,
        diverged=diverged_step is not None, diverged_step=diverged_step,
        min_scale_hits=min_scale_hits, min_scale_step=scaler.min_scale_step if scaler is not None else None,
        steps_run=steps_run,
        status="interrupted" if interrupted else run_status(
            diverged=diverged_step is not None, min_scale_hits=min_scale_hits,
            weights_changed=sum(r["updated"] - r["lost_updates"] for r in history)),
        history=history, layers=layers, layer_history=recorder.layer_history,
        histograms=recorder.histograms, shadow=recorder.shadow, scaling=recorder.scaling)
