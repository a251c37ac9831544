"""Loss scaling: multiply the loss by S so that small gradients survive a narrow format.

The backward pass is linear in the loss, so every gradient comes out S times
larger; dividing the FP32 gradients by S afterwards gives back the true ones.
Values that would have fallen below the format's smallest subnormal (2^-24 for
FP16) are lifted into its range, at the risk of pushing the largest ones past
its max (65504 for FP16) to inf.  A step whose gradients hold inf or NaN is
skipped: the weights and the optimizer state stay as they were.

``LossScaler`` follows ``torch.amp.GradScaler`` (defaults: initial scale 2^16,
x2 after 2000 consecutive clean steps, x0.5 and the step skipped on inf/NaN),
with the options Megatron-LM and DeepSpeed add: a floor and a ceiling for the
scale, and hysteresis (back off only after ``hysteresis`` overflowing steps).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ..numerics.checks import integer, is_finite_number, positive_number

SCALER_OPTIONS = ("init_scale", "growth_factor", "backoff_factor", "growth_interval", "min_scale", "max_scale",
                  "hysteresis")
"""Settings of a dynamic ``LossScaler`` that a run's ``scaler=`` dict may give."""


class LossScaler:
    """The loss scale of a run and its update rule.

    ``dynamic=False`` keeps the scale constant (overflowing steps are still
    skipped).  With ``dynamic=True``, ``update(found_inf)`` after every step:

    * clean step: count it; after ``growth_interval`` clean steps in a row,
      ``scale = min(scale * growth_factor, max_scale)`` and the count restarts;
    * overflowing step: the clean count restarts and one hysteresis credit is
      spent; once the credits are gone, ``scale = max(scale * backoff_factor,
      min_scale)``.  Credits are refilled when the scale grows (as Megatron-LM's
      DynamicGradScaler does); ``hysteresis=1`` is GradScaler's immediate backoff.

    torch's GradScaler has no floor; the default floor here is 1.0 (as in
    Megatron-LM and DeepSpeed) so that a run whose gradients overflow even
    unscaled says so: ``min_scale_hits`` counts the overflowing steps taken at
    the floor and ``min_scale_step`` is the first of them.
    """

    def __init__(self, init_scale: float = 2.0 ** 16, *, dynamic: bool = True, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000, min_scale: float = 1.0,
                 max_scale: float | None = None, hysteresis: int = 1):
        positive_number("init_scale", init_scale)
        if dynamic:
            if not (is_finite_number(growth_factor) and growth_factor > 1):
                raise ValueError(f"growth_factor must be a number > 1, got {growth_factor!r}")
            if not (is_finite_number(backoff_factor) and 0 < backoff_factor < 1):
                raise ValueError(f"backoff_factor must be a number in (0, 1), got {backoff_factor!r}")
            growth_interval = integer("growth_interval", growth_interval, 1)
            hysteresis = integer("hysteresis", hysteresis, 1)
            positive_number("min_scale", min_scale)
            if max_scale is not None:
                positive_number("max_scale", max_scale)
                if max_scale < min_scale:
                    raise ValueError(f"max_scale ({max_scale}) is below min_scale ({min_scale})")
            if not min_scale <= init_scale <= (max_scale or math.inf):
                raise ValueError(f"init_scale {init_scale} must lie in [min_scale, max_scale] = "
                                 f"[{min_scale}, {max_scale or 'inf'}]")
        self.scale = float(init_scale)
        self.dynamic = dynamic
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = growth_interval
        self.min_scale = float(min_scale)
        self.max_scale = None if max_scale is None else float(max_scale)
        self.hysteresis = hysteresis
        self._clean_steps = 0
        self._credits = hysteresis
        self.min_scale_hits = 0
        self.min_scale_step: int | None = None

    def update(self, found_inf: bool, step: int) -> None:
        """Account for the step just taken (``found_inf``: its gradients held inf or NaN)."""
        if not self.dynamic:
            return
        if found_inf:
            self._clean_steps = 0
            if self.scale <= self.min_scale:
                self.min_scale_hits += 1
                if self.min_scale_step is None:
                    self.min_scale_step = step
            self._credits -= 1
            if self._credits <= 0:
                self.scale = max(self.scale * self.backoff_factor, self.min_scale)
            return
        self._clean_steps += 1
        if self._clean_steps == self.growth_interval:
            self._clean_steps = 0
            self._credits = self.hysteresis
            grown = self.scale * self.growth_factor
            if self.max_scale is not None:
                grown = min(grown, self.max_scale)
            if math.isfinite(grown):  # as GradScaler: never grow to inf
                self.scale = grown

    @classmethod
    def for_policy(cls, loss_scale, options: dict | None = None) -> "LossScaler | None":
        """The scaler a policy's ``loss_scale`` asks for: None, constant, or dynamic with ``options``."""
        if options is not None and not isinstance(options, Mapping):
            raise TypeError(f"scaler must be a dict of loss-scaler settings ({', '.join(SCALER_OPTIONS)}), "
                            f"got {options!r}")
        options = dict(options or {})
        if loss_scale is None:
            if options:
                raise ValueError("scaler options were given but the policy does not scale the loss")
            return None
        unknown = sorted(set(options) - set(SCALER_OPTIONS))
        if unknown:
            raise ValueError(f"unknown scaler option(s) {', '.join(unknown)}: use {', '.join(SCALER_OPTIONS)}")
        if loss_scale == "dynamic":
            return cls(dynamic=True, **options)
        if options:
            raise ValueError("scaler options apply to dynamic loss scaling only; this policy's scale is "
                             f"the constant {loss_scale}")
        return cls(loss_scale, dynamic=False)


def loss_scale_of(loss_scale) -> float | str | None:
    """A loss scale in its canonical form, the one rule for every place that takes one: None (no scaling),
    a positive finite number (as a float), or ``"dynamic"`` in any case, spaces around allowed."""
    if loss_scale is None:
        return None
    if isinstance(loss_scale, str):
        if loss_scale.strip().lower() == "dynamic":
            return "dynamic"
        raise ValueError(f"loss_scale must be a positive number or 'dynamic' (or None), got {loss_scale!r}")
    if not (is_finite_number(loss_scale) and loss_scale > 0):
        raise ValueError(f"loss_scale must be a positive finite number or 'dynamic' (or None), got {loss_scale!r}")
    return float(loss_scale)
