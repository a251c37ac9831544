"""Scaling recipes for FP8 / MX training as data: how a tensor is scaled before it is rounded.

A ``Scaling`` names one of the recipes in use (defaults and their sources beside each):

``none``      the tensor is rounded to its format as it is.
``tensor``    per-tensor current scaling: scale = max / amax of the tensor now, FP32
              (torchao's TENSORWISE recipe, its default; Transformer Engine's
              ``Float8CurrentScaling``); ``fpsim.quantize(x, fmt, scaling="tensor")``.
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
    scale = FP32 max                              if that is inf (an amax too small for FP32)
    (RN32: rounding to FP32, as TE computes in float; exact for whole-number margins)
    H = [0, H[2], ..., H[L-1], H[0]]             (the oldest drops out)

The scale starts at 1, so a step's tensors are cast with the scale computed after the
step before (the lag that makes delayed scaling overflow after a jump in magnitude).
The margin is checked against the element format (``delayed_scaled_max``): the
numerator RN32(max * 2^-margin) must be finite and large enough that the scale stays
positive for every finite FP32 amax (RN32(RN32(max * 2^-margin) / FP32 max) > 0), so
a margin is refused when the policy is made, not at the first step.  The history is
``history_len`` FP32 numbers per module and operand, at most ``MAX_HISTORY_LEN``.

``ScaledCasts`` applies a policy's recipes in a training step, for both engines: it is
the one place where a product's operand is scaled, rounded to its element format
(saturating at its max, as every recipe's cast does) and scaled back, and where the
recorder is told what that did.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import numpy as np

from ..numerics.checks import is_finite_number, is_integer
from ..numerics.formats import FP32, get_format
from ..numerics.rounding import round as round_to
from ..ops.arithmetic import div, mul
from ..ops.quantize import PRESETS, SCALE_ROUNDINGS, preset_named, quantize
from .vocabulary import OPERAND_KINDS, Kind

SCALING_KINDS = ("none", "tensor", "delayed", "row", "block")
"""The recipes (see the module docstring); ``tensor``, ``row`` and ``block`` are ``fpsim.quantize``'s scalings."""
AMAX_COMPUTE = ("max", "most_recent")

MAX_HISTORY_LEN = 1 << 20
"""Longest amax history of a ``delayed`` scaling: 2^20 FP32 amaxes, 4 MiB per module and operand (TE's default
is 1024); each step also copies it once to roll it."""


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
    """``block``: the ``fpsim.quantize`` preset, by its ``PRESETS`` key ("mxfp8" is kept as "mxfp8_e4m3");
    None for the other kinds."""
    scale_rounding: str = "floor"
    """``block`` with E8M0 scales: "floor" (OCP MX spec), "ceil", "even" or "rceil" (torchao)."""

    def __post_init__(self):
        if self.kind not in SCALING_KINDS:
            raise ValueError(f"unknown scaling kind {self.kind!r}: use one of {', '.join(SCALING_KINDS)}")
        history_len = self.history_len
        if not is_integer(history_len) or history_len < 1:
            raise ValueError(f"history_len must be a positive integer, got {history_len!r}")
        if history_len > MAX_HISTORY_LEN:
            raise ValueError(f"history_len must be at most {MAX_HISTORY_LEN}: a history of {history_len} FP32 "
                             f"amaxes needs {_bytes(4 * history_len)} per module and operand, got {history_len}")
        if not is_finite_number(self.margin):
            raise ValueError(f"margin must be a finite number, got {self.margin!r}")
        if self.amax_compute not in AMAX_COMPUTE:
            raise ValueError(f"amax_compute must be one of {', '.join(AMAX_COMPUTE)}, got {self.amax_compute!r}")
        if (self.kind == "block") != (self.block is not None):
            raise ValueError("a 'block' scaling needs block= a quantize preset "
                             f"({', '.join(PRESETS)}); the other kinds take none")
        if self.block is not None:
            if preset_named(self.block) is None:
                raise ValueError(f"unknown block preset {self.block!r}: use one of {', '.join(PRESETS)}")
            object.__setattr__(self, "block", preset_named(self.block))
        if self.scale_rounding not in SCALE_ROUNDINGS:
            raise ValueError(f"scale_rounding must be one of {', '.join(SCALE_ROUNDINGS)}, got {self.scale_rounding!r}")
        object.__setattr__(self, "history_len", int(history_len))
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


_MARGIN_SEARCH = 1000
"""|margin| beyond which no element format in FP32's range qualifies; keeps 2^-margin a normal float64."""


def delayed_scaled_max(margin: float, fmt) -> np.float32:
    """RN32(max * 2^-margin), the numerator of a delayed scale for elements in ``fmt``, once ``margin`` is checked:
    it must leave the numerator finite and the scale positive for every finite FP32 amax (see the module
    docstring); otherwise a one-line ``ValueError`` naming ``margin`` and the whole margins that qualify."""
    fmt = get_format(fmt)
    if is_finite_number(margin) and abs(margin) <= _MARGIN_SEARCH and _keeps_scale_positive_finite(margin, fmt):
        return np.float32(mul(fmt.max, 2.0 ** -float(margin), FP32))
    low, high = _margin_range(fmt)
    raise ValueError(f"margin must keep the delayed scale (max * 2^-margin) / amax a positive finite FP32 number "
                     f"for {fmt.name} elements (max {fmt.max:g}), as whole margins from {low} to {high} do; "
                     f"got {margin!r}")


def _keeps_scale_positive_finite(margin: float, fmt) -> bool:
    scaled_max = mul(fmt.max, 2.0 ** -float(margin), FP32)
    return bool(np.isfinite(scaled_max) and div(scaled_max, FP32.max, FP32) > 0)


def _margin_range(fmt) -> tuple[int, int]:
    """The lowest and highest whole margins ``_keeps_scale_positive_finite`` accepts for ``fmt`` (bisection: the
    accepted margins are an interval, the numerator falling as the margin grows)."""
    center = math.floor(math.log2(fmt.max))  # the numerator is about 1 here: accepted
    lowest, highest = center, center
    for step in (1 << k for k in range(9, -1, -1)):
        if lowest - step >= -_MARGIN_SEARCH and _keeps_scale_positive_finite(lowest - step, fmt):
            lowest -= step
        if highest + step <= _MARGIN_SEARCH and _keeps_scale_positive_finite(highest + step, fmt):
            highest += step
    return lowest, highest


def _bytes(count: int) -> str:
    """A byte count for a message: 4 MiB, 7.5 GiB, ..."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{count} bytes"


class DelayedScaler:
    """One tensor's amax history and FP32 scale under a ``delayed`` Scaling: Transformer Engine's rule.

    ``record(amax)`` after each cast of the step; ``update()`` once after the step,
    which returns the scale for the next step's casts (``scale`` holds it).
    """

    def __init__(self, scaling: Scaling, fmt):
        if scaling.kind != "delayed":
            raise ValueError(f"DelayedScaler needs a 'delayed' scaling, got {scaling.kind!r}")
        self.scaling = scaling
        self.scaled_max = delayed_scaled_max(scaling.margin, fmt)
        self.history = np.zeros(scaling.history_len, dtype=np.float32)
        self.scale = np.float32(1.0)

    def record(self, amax) -> None:
        """Note the amax of one cast in this step (several casts of the tensor keep the largest)."""
        self.history[0] = max(self.history[0], np.float32(amax))

    def update(self) -> np.float32:
        """End of step: the scale from the history (kept when amax is 0, inf or NaN), and the history rolled."""
        history = self.history
        amax = history[0] if self.scaling.amax_compute == "most_recent" else history.max()
        if np.isfinite(amax) and amax > 0:
            scale = np.float32(div(self.scaled_max, amax, FP32))
            self.scale = scale if np.isfinite(scale) else np.float32(FP32.max)  # TE: an inf scale is FP32 max
        self.history = np.roll(history, -1)  # [H[1], ..., H[L-1], H[0]], then the oldest, H[1], makes room
        self.history[0] = 0
        return self.scale


class ScaledCasts:
    """A run's scaled casts: the policy's recipe per tensor kind and the delayed scalers' state.

    ``cast(values, kind, module, axis)`` is what a product does to an operand of ``kind``
    ("params", "activations" or "gradients") under the policy's ``scaling``: with X the
    value of one unit of the element format after scaling (X = 1 / s for a per-tensor or
    per-row FP32 scale s, the block scale for block formats, 1 for ``none``), the
    operand becomes X * q(x / X), q rounding to the kind's format with saturation.
    Rows and blocks run along ``axis``, the product's reduction axis.  Delayed scalers
    are kept per (kind, module): a module's weights, input activations and output
    gradients each have their amax history, as in Transformer Engine.

    With a recorder, each cast is recorded in the scaled domain: ``Recorder.rounded``
    sees x / X before and q after (so underflow, subnormals and histograms are counted
    against the element format itself), and ``Recorder.scaled`` the values that
    saturated (``count_saturated``) and the range of log2 X.  ``end_step()`` after each
    training step updates the delayed scales; ``learning=False`` (evaluation) uses them
    without recording amaxes.
    """

    def __init__(self, policy, recorder=None):
        recipes = dict(policy.scaling or ())
        self.recipes = {kind: recipes.get(kind, Scaling()) for kind in OPERAND_KINDS}
        self.formats = {kind: kind.format_of(policy) for kind in OPERAND_KINDS}
        self.recorder = recorder
        self.learning = True
        self._delayed: dict[tuple[str, str], DelayedScaler] = {}

    def cast(self, values: np.ndarray, kind: str, module: str, axis: int = -1) -> np.ndarray:
        """``values`` quantized as an operand of ``kind`` in ``module`` and dequantized (float32 in, float32 out)."""
        return self.cast_with_scales(values, kind, module, axis)[0]

    def cast_with_scales(self, values: np.ndarray, kind: str, module: str, axis: int = -1):
        """``cast``, with what a tensor core applies after the product (``fpsim.sim.tensor_core``): (dequantized
        values, the FP32 dequantization factors X (RN32(1 / s) for an FP32 scale s; a 0-d array per tensor,
        ``axis`` holding one per row or per block), the values per block along ``axis`` or None)."""
        recipe, fmt = self.recipes[kind], self.formats[kind]
        block = None  # values per scale along ``axis`` when the scales are per block
        if recipe.kind == "none":
            out, unit = round_to(values, fmt, saturate=True), np.float64(1.0)
            factors = unit
        elif recipe.kind == "delayed":
            scaler = self._delayed_scaler(kind, module, fmt)
            out, unit = quantize(values, fmt, scale=float(scaler.scale)), 1.0 / np.float64(scaler.scale)
            factors = div(1.0, scaler.scale, FP32)
            if self.learning:
                scaler.record(np.max(np.abs(values), initial=0.0))
        elif recipe.kind == "block":
            preset = PRESETS[recipe.block]
            rounding = recipe.scale_rounding if preset.scale_format == "e8m0" else None
            out, unit = quantize(values, recipe.block, axis=axis, scale_rounding=rounding, return_scales=True)
            factors = unit  # powers of two, or NVFP4's FP32 d
            block = preset.block_size
        else:  # per-tensor or per-row current scaling: x * s, so X = 1 / s
            out, scales = quantize(values, fmt, scaling=recipe.kind, axis=axis, return_scales=True)
            unit = 1.0 / scales
            factors = div(1.0, scales, FP32)
        out = np.asarray(out, dtype=values.dtype)
        if self.recorder is not None:
            self._observe(kind, module, values, out, np.asarray(unit, dtype=np.float64), axis, block, fmt)
        return out, np.asarray(factors, dtype=np.float32), block

    def for_evaluation(self) -> "ScaledCasts":
        """The same recipes and delayed scales, read without recording (amaxes or counts)."""
        view = copy.copy(self)
        view.recorder, view.learning = None, False
        return view

    def end_step(self) -> None:
        """After a training step: each delayed scaler's new scale from its amax history."""
        for scaler in self._delayed.values():
            scaler.update()

    def _delayed_scaler(self, kind, module, fmt) -> DelayedScaler:
        scaler = self._delayed.get((kind, module))
        if scaler is None:
            scaler = self._delayed[(kind, module)] = DelayedScaler(self.recipes[kind], fmt)
        return scaler

    def _observe(self, kind, module, values, out, unit, axis, block, fmt) -> None:
        """Record a cast in the scaled domain (x / X, q), in float32: exact for power-of-two scales, and for
        the FP32 scales of current and delayed scaling within an ulp (the counts are what is kept)."""
        finite = unit[np.isfinite(unit) & (unit > 0)]
        log2_range = (math.log2(finite.min()), math.log2(finite.max())) if finite.size else None
        per_value = (unit if block is None else _per_value(unit, values.shape, axis, block)).astype(np.float32)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore", under="ignore"):
            before, after = values / per_value, out / per_value
        recorded = Kind(kind).recorded_as
        if recorded is not None:
            self.recorder.rounded(recorded, module, before, after, fmt)
        self.recorder.scaled(kind, module, values.size, count_saturated(before, fmt), log2_range)


def count_saturated(values: np.ndarray, fmt) -> int:
    """How many of ``values`` round to nearest beyond ``fmt``'s max (to inf or NaN without saturation): those
    above max + ulp(max) / 2, and at that midpoint when max's significand is odd (ties to even go up)."""
    midpoint = fmt.max + math.ldexp(0.5, fmt.emax - fmt.mantissa_bits)
    magnitude = np.abs(values)
    beyond = magnitude >= midpoint if fmt.max_significand % 2 else magnitude > midpoint
    return int(np.count_nonzero(beyond))


def _per_value(scales: np.ndarray, shape: tuple, axis: int, block: int) -> np.ndarray:
    """Block scales (``axis`` holding the blocks) repeated over each block's values, to ``shape``."""
    repeated = np.repeat(scales, block, axis=axis)
    if repeated.shape[axis] == shape[axis]:
        return repeated
    return np.take(repeated, np.arange(shape[axis]), axis=axis)  # a short last block
