"""Scaling recipes for FP8 / MX training as data: how a tensor is scaled before it is rounded.

A ``Scaling`` names one of the recipes in use (defaults and their sources beside each):

``none``      the tensor is rounded to its format as it is.
``current``   per-tensor current scaling: scale = max / amax of the tensor now, FP32
              (torchao's TENSORWISE recipe, its default; Transformer Engine's
              ``Float8CurrentScaling``); ``fpsim.quantize(x, fmt)``.
``delayed``   per-tensor delayed scaling, Transformer Engine's ``DelayedScaling(margin=0,
              amax_history_len=1024, amax_compute_algo="max")``: the scale comes from a
              history of the amaxes of earlier steps (``DelayedScaler`` below).
``row``       one current scale per row (torchao's ROWWISE / axiswise recipe);
              ``fpsim.quantize(x, fmt, scaling="row")``.
``block``     block scaling with a ``fpsim.quantize`` preset (``"mxfp8_e4m3"``, ``"mxfp4"``,
              ``"nvfp4"``, ...) and, for E8M0 scales, its ``scale_rounding``
              (torchao's MXFP8 recipe, TE's ``MXFP8BlockScaling``).

Transformer Engine's delayed rule (``transformer_engine/common/recipe/delayed_scaling.cu``,
``amax_and_scale_update``), per tensor, with H the amax history of ``history_len``
FP32 entries (H[0] collects the amax of every cast in the current step, the others
the earlier steps', oldest first), once per step after the casts:

    amax = max(H)  ("max")  or  H[0]  ("most_recent")
    scale = RN32(RN32(max * 2^-margin) / amax)   if amax is finite and > 0, else unchanged
    (RN32: rounding to FP32, as TE computes in float; exact for whole-number margins)
    H = [0, H[2], ..., H[L-1], H[0]]             (the oldest drops out)

The scale starts at 1, so a step's tensors are cast with the scale computed after the
step before (the lag that makes delayed scaling overflow after a jump in magnitude).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..numerics.formats import FP32, get_format
from ..ops.arithmetic import div, mul
from ..ops.quantize import PRESETS, SCALE_ROUNDINGS

SCALING_KINDS = ("none", "current", "delayed", "row", "block")
AMAX_COMPUTE = ("max", "most_recent")


@dataclass(frozen=True)
class Scaling:
    """How one tensor kind is scaled before it is rounded to its format (see the module docstring)."""

    kind: str = "none"
    """One of ``SCALING_KINDS``."""
    history_len: int = 1024
    """``delayed``: amaxes kept (TE ``amax_history_len``, default 1024)."""
    margin: float = 0.0
    """``delayed``: the scale is divided by 2^margin (TE ``margin``, default 0)."""
    amax_compute: str = "max"
    """``delayed``: ``"max"`` of the history or its ``"most_recent"`` entry (TE ``amax_compute_algo``)."""
    block: str | None = None
    """``block``: the ``fpsim.quantize`` preset; None for the other kinds."""
    scale_rounding: str = "floor"
    """``block`` with E8M0 scales: "floor" (OCP MX spec), "ceil", "even" or "rceil" (torchao)."""

    def __post_init__(self):
        if self.kind not in SCALING_KINDS:
            raise ValueError(f"unknown scaling kind {self.kind!r}: use one of {', '.join(SCALING_KINDS)}")
        if isinstance(self.history_len, bool) or not isinstance(self.history_len, (int, np.integer)) \
                or self.history_len < 1:
            raise ValueError(f"history_len must be a positive integer, got {self.history_len!r}")
        if isinstance(self.margin, bool) or not isinstance(self.margin, (int, float)) or not math.isfinite(self.margin):
            raise ValueError(f"margin must be a finite number, got {self.margin!r}")
        if self.amax_compute not in AMAX_COMPUTE:
            raise ValueError(f"amax_compute must be one of {', '.join(AMAX_COMPUTE)}, got {self.amax_compute!r}")
        if (self.kind == "block") != (self.block is not None):
            raise ValueError("a 'block' scaling needs block= a quantize preset "
                             f"({', '.join(PRESETS)}); the other kinds take none")
        if self.block is not None and self.block not in PRESETS:
            raise ValueError(f"unknown block preset {self.block!r}: use one of {', '.join(PRESETS)}")
        if self.scale_rounding not in SCALE_ROUNDINGS:
            raise ValueError(f"scale_rounding must be one of {', '.join(SCALE_ROUNDINGS)}, got {self.scale_rounding!r}")
        object.__setattr__(self, "history_len", int(self.history_len))
        object.__setattr__(self, "margin", float(self.margin))

    @classmethod
    def delayed(cls, history_len: int = 1024, margin: float = 0.0, amax_compute: str = "max") -> "Scaling":
        """Transformer Engine's ``DelayedScaling`` (its defaults)."""
        return cls("delayed", history_len=history_len, margin=margin, amax_compute=amax_compute)

    @classmethod
    def block_of(cls, preset: str, scale_rounding: str = "floor") -> "Scaling":
        """Block scaling with a ``fpsim.quantize`` preset."""
        return cls("block", block=preset, scale_rounding=scale_rounding)

    def to_dict(self) -> dict:
        """A JSON-able dict of the fields."""
        return asdict(self)

    @classmethod
    def coerce(cls, spec) -> "Scaling":
        """A Scaling from a Scaling, a kind name, or a dict of fields."""
        if isinstance(spec, Scaling):
            return spec
        if isinstance(spec, str):
            return cls(spec)
        if isinstance(spec, dict):
            unknown = sorted(set(spec) - set(cls.__dataclass_fields__))
            if unknown:
                raise ValueError(f"unknown scaling field(s) {', '.join(unknown)}: the fields are "
                                 f"{', '.join(cls.__dataclass_fields__)}")
            return cls(**spec)
        raise TypeError(f"a scaling is a Scaling, a kind ({', '.join(SCALING_KINDS)}) or a dict of fields; "
                        f"got {type(spec).__name__}")


class DelayedScaler:
    """One tensor's amax history and FP32 scale under a ``delayed`` Scaling: Transformer Engine's rule.

    ``record(amax)`` after each cast of the step; ``update()`` once after the step,
    which returns the scale for the next step's casts (``scale`` holds it).
    """

    def __init__(self, scaling: Scaling, fmt):
        if scaling.kind != "delayed":
            raise ValueError(f"DelayedScaler needs a 'delayed' scaling, got {scaling.kind!r}")
        self.scaling = scaling
        self.history = np.zeros(scaling.history_len, dtype=np.float32)
        self.scale = np.float32(1.0)
        self.scaled_max = np.float32(mul(get_format(fmt).max, 2.0**-scaling.margin, FP32))

    def record(self, amax) -> None:
        """Note the amax of one cast in this step (several casts of the tensor keep the largest)."""
        self.history[0] = max(self.history[0], np.float32(amax))

    def update(self) -> np.float32:
        """End of step: the scale from the history (kept when amax is 0, inf or NaN), and the history rolled."""
        history = self.history
        amax = history[0] if self.scaling.amax_compute == "most_recent" else history.max()
        if np.isfinite(amax) and amax > 0:
            self.scale = np.float32(div(self.scaled_max, amax, FP32))
        self.history = np.roll(history, -1)  # [H[1], ..., H[L-1], H[0]], then the oldest, H[1], makes room
        self.history[0] = 0
        return self.scale

