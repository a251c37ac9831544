"""The recorder: one object that watches every tensor of a training step as it is rounded.

The model and the training step never count anything themselves; they hand
each rounding to ``Recorder.rounded(kind, layer, before, after, fmt)`` (the
values before rounding, and after) and each weight update to
``Recorder.updated(layer, before, after, update)``.  Per step, per layer and
per kind of tensor (``KINDS``), the recorder counts (``STATS``):

* ``nonzero``: values that were non-zero before rounding;
* ``underflow``: non-zero before rounding, zero after (flushed: information lost);
* ``subnormal``: non-zero after rounding but below the format's smallest normal
  (kept with fewer significant bits);
* ``overflow``: finite before rounding, inf or NaN after (``nonfinite`` counts
  every inf or NaN after rounding, including those that came in as such).

For the weight updates it counts the lost ones: elements with a non-zero update
whose stored value did not change, and the share of the update's total
magnitude they carried.  Optionally it keeps histograms of ``log2 |value|``
taken before rounding (what the format is about to cut), at chosen steps.  On
sampled steps it compares the weight gradients with FP64 shadows of the same
step: their relative error, and how many values that the FP64 backward pass
(through the policy's own forward pass) makes non-zero the policy delivered as
zero.  That last count sees an underflow wherever it happened: a
weight gradient computed from activation gradients that were already flushed
is zero before its own rounding, so the per-rounding count cannot see it.

Counting is a few vectorised numpy passes per tensor (the tensors of the
default model have at most 16k elements); histograms are taken only at the
requested steps.
"""

from __future__ import annotations

import math

import numpy as np

KINDS = ("activations", "activation_grads", "weight_grads", "updates")
"""Tensor kinds: layer outputs, gradients w.r.t. them, weight (and bias) gradients, updated weights."""

STATS = ("values", "nonzero", "underflow", "subnormal", "overflow", "nonfinite")
"""What is counted for every rounding (see the module docstring); ``values`` is the element count."""

UPDATE_STATS = ("updated", "lost", "update_magnitude", "lost_magnitude")
"""Per layer and step: elements with a non-zero update, those whose stored value did not change,
the sum of |update| over all its finite elements, and over the lost ones."""

_EXPONENT_MIN = -1075  # floor(log2) of the smallest float64 subnormal is -1074
_EXPONENT_BINS = 1024 - _EXPONENT_MIN


class Recorder:
    """Counts of a run's roundings, per step, layer and kind; optional histograms and FP64 shadow errors.

    ``histogram_steps``: steps at which to keep histograms of log2|value| (before
    rounding) of every kind and layer.  ``record_every``: length of the windows
    over which per-layer counts are summed into ``layer_history`` (0: none).
    """

    def __init__(self, layers: int, *, histogram_steps=(), record_every: int = 0):
        self.layers = layers
        self.histogram_steps = frozenset(histogram_steps)
        self.record_every = record_every
        self.history: list[dict] = []
        self._histograms: dict = {}
        self._scales: dict = {}
        self.shadow: list[dict] = []
        self._totals = np.zeros((layers, len(KINDS), len(STATS)), dtype=np.int64)
        self._update_totals = np.zeros((layers, len(UPDATE_STATS)), dtype=np.float64)
        self._window = np.zeros_like(self._totals)
        self._window_updates = np.zeros_like(self._update_totals)
        self._window_steps = 0
        self.layer_history: dict = {"kinds": list(KINDS), "stats": list(STATS),
                                    "update_stats": list(UPDATE_STATS), "steps": [], "counts": [],
                                    "updates": []}
        self.step = -1
        self._counts = np.zeros_like(self._totals)
        self._updates = np.zeros_like(self._update_totals)
        self._histogram_now = False

    # --- what the training step calls ---------------------------------------
    def start_step(self, step: int) -> None:
        """Begin recording step ``step`` (0-based)."""
        self.step = step
        self._counts[...] = 0
        self._updates[...] = 0.0
        self._histogram_now = step in self.histogram_steps

    def rounded(self, kind: str, layer: int, before: np.ndarray, after: np.ndarray, fmt) -> None:
        """Observe the rounding of ``before`` to ``after`` (in format ``fmt``) of a tensor of ``kind``."""
        counts = self._counts[layer, KINDS.index(kind)]
        was_nonzero = before != 0  # NaN counts as non-zero
        is_zero = after == 0
        finite_after = np.isfinite(after)
        counts[0] += before.size
        counts[1] += np.count_nonzero(was_nonzero)
        counts[2] += np.count_nonzero(was_nonzero & is_zero)
        counts[3] += np.count_nonzero(~is_zero & (np.abs(after) < fmt.smallest_normal))
        counts[4] += np.count_nonzero(~finite_after & np.isfinite(before))
        counts[5] += after.size - np.count_nonzero(finite_after)
        if self._histogram_now:
            self._histogram(kind, layer, before)

    def updated(self, layer: int, before: np.ndarray, after: np.ndarray, update: np.ndarray, fmt) -> None:
        """Observe a weight update: stored values ``before`` and ``after`` (format ``fmt``), update ``update``.

        The rounding of ``before - update`` to ``after`` is counted as kind
        "updates"; lost: ``update != 0`` and ``after == before``.  (With a
        Kahan-compensated update the training step passes ``weights +
        compensation`` as the stored value, so an update deferred into the
        compensation is not counted lost.)
        """
        self.rounded("updates", layer, before.astype(np.float64) - update, after, fmt)
        magnitude = np.where(np.isfinite(update), np.abs(update), 0.0)  # inf/NaN updates: counted as nonfinite
        was_updated = update != 0
        lost = was_updated & (after == before)
        row = self._updates[layer]
        row[0] += np.count_nonzero(was_updated)
        row[1] += np.count_nonzero(lost)
        row[2] += float(magnitude.sum())
        row[3] += float(magnitude[lost].sum())

    def observe_shadow(self, grads: list, exact: list, backward_only: list) -> None:
        """Compare, for this step, the policy's weight gradients with their FP64 shadows.

        ``grads[i]`` is layer i's gradient arrays (weights, bias) as the optimizer
        receives them (unscaled).  ``exact[i]``: the same from the whole step in
        FP64 arithmetic (stored weights, unrounded data); per layer the recorder
        keeps the relative error ``||g - g64|| / ||g64||`` (None when not finite
        or g64 = 0).  ``backward_only[i]``: from the policy's own forward pass
        with the backward pass in FP64; ``nonzero`` counts its non-zero elements
        and ``flushed`` those of them the policy delivered as zero: values lost
        to underflow somewhere along the backward pass.  (Against the whole-step
        shadow, ReLU units that switch sign between the two forward passes would
        count as flushed too.)
        """
        errors, nonzero, flushed = [], [], []
        with np.errstate(invalid="ignore", over="ignore"):
            for layer, exact_layer, backward_layer in zip(grads, exact, backward_only):
                pairs = [(g.astype(np.float64).ravel(), e.ravel()) for g, e in zip(layer, exact_layer)]
                difference = math.sqrt(sum(float(np.sum((g - e) ** 2)) for g, e in pairs))
                norm = math.sqrt(sum(float(np.sum(e ** 2)) for _, e in pairs))
                error = difference / norm if norm > 0 else math.nan
                errors.append(error if math.isfinite(error) else None)
                backward_pairs = [(g.ravel(), e.ravel()) for g, e in zip(layer, backward_layer)]
                nonzero.append(sum(int(np.count_nonzero(e)) for _, e in backward_pairs))
                flushed.append(sum(int(np.count_nonzero((e != 0) & (g == 0))) for g, e in backward_pairs))
        self.shadow.append({"step": self.step, "relative_error": errors, "nonzero": nonzero, "flushed": flushed})

    @property
    def weight_grad_flushed_fraction(self) -> float | None:
        """Over the shadow steps: weight-gradient elements non-zero in FP64 but zero in the policy (None: no shadow)."""
        if not self.shadow:
            return None
        nonzero = sum(sum(record["nonzero"]) for record in self.shadow)
        return sum(sum(record["flushed"]) for record in self.shadow) / nonzero if nonzero else 0.0

    def end_step(self, *, loss: float, loss_scale: float, skipped: bool) -> dict:
        """Close the step: append and return its history record."""
        totals_by_kind = self._counts.sum(axis=0)
        record = {"step": self.step, "loss": _json_float(loss), "loss_scale": loss_scale, "skipped": skipped}
        for s, stat in enumerate(STATS[1:], start=1):
            record[stat] = {kind: int(totals_by_kind[k, s]) for k, kind in enumerate(KINDS)}
        update_totals = self._updates.sum(axis=0)
        record["updated"] = int(update_totals[0])
        record["lost_updates"] = int(update_totals[1])
        record["update_magnitude"] = float(update_totals[2])
        record["lost_update_magnitude"] = float(update_totals[3])
        self.history.append(record)
        if self._histogram_now:
            self._scales[self.step] = loss_scale
        self._totals += self._counts
        self._update_totals += self._updates
        if self.record_every:
            self._window += self._counts
            self._window_updates += self._updates
            self._window_steps += 1
            if self._window_steps == self.record_every:
                self._flush_window()
        return record

    def finish(self) -> None:
        """Flush a partly filled ``layer_history`` window at the end of the run."""
        if self.record_every and self._window_steps:
            self._flush_window()

    # --- summaries -----------------------------------------------------------
    def total(self, kind: str, stat: str) -> int:
        """Run total of ``stat`` for ``kind`` over all layers."""
        return int(self._totals[:, KINDS.index(kind), STATS.index(stat)].sum())

    def fraction(self, kind: str, stat: str) -> float:
        """Run total of ``stat`` over the run's non-zero values of ``kind`` (0 when there were none)."""
        nonzero = self.total(kind, "nonzero")
        return self.total(kind, stat) / nonzero if nonzero else 0.0

    @property
    def lost_update_fraction(self) -> float:
        """Lost updates over all elements with a non-zero update, over the run."""
        updated = self._update_totals[:, 0].sum()
        return float(self._update_totals[:, 1].sum() / updated) if updated else 0.0

    @property
    def lost_update_magnitude_fraction(self) -> float:
        """Sum of |update| over lost elements over the sum over all, over the run."""
        magnitude = self._update_totals[:, 2].sum()
        return float(self._update_totals[:, 3].sum() / magnitude) if magnitude else 0.0

    def layer_summaries(self) -> list[dict]:
        """Per layer: run totals of every stat of every kind, and of the update statistics."""
        out = []
        for layer in range(self.layers):
            summary = {"layer": layer}
            for k, kind in enumerate(KINDS):
                summary[kind] = {stat: int(self._totals[layer, k, s]) for s, stat in enumerate(STATS)}
            for u, stat in enumerate(UPDATE_STATS):
                value = self._update_totals[layer, u]
                summary[stat] = float(value) if "magnitude" in stat else int(value)
            out.append(summary)
        return out

    # --- internals -----------------------------------------------------------
    @property
    def histograms(self) -> list[dict]:
        """The histograms taken, one per (step, kind, layer), in the order they were started.

        Each: ``counts[i]`` values with ``2^e <= |x| < 2^(e+1)`` for
        ``e = min_exponent + i``, taken before rounding; ``zeros`` and
        ``nonfinite`` count the rest; ``loss_scale`` is the step's scale (scaled
        gradients are recorded as they were, that is, multiplied by it).
        """
        out = []
        for (step, kind, layer), (counts, zeros, nonfinite) in self._histograms.items():
            used = np.flatnonzero(counts)
            low, high = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 0)
            out.append({"step": step, "kind": kind, "layer": layer, "loss_scale": self._scales.get(step),
                        "min_exponent": low + _EXPONENT_MIN, "counts": counts[low:high].tolist(),
                        "zeros": zeros, "nonfinite": nonfinite})
        return out

    def _histogram(self, kind, layer, before):
        values = np.asarray(before, dtype=np.float64).ravel()
        finite = np.isfinite(values)
        nonzero = finite & (values != 0)
        exponents = np.frexp(values[nonzero])[1] - 1  # floor(log2|x|): 2^e <= |x| < 2^(e+1)
        key = (self.step, kind, layer)
        counts, zeros, nonfinite = self._histograms.get(key, (np.zeros(_EXPONENT_BINS, dtype=np.int64), 0, 0))
        counts += np.bincount(exponents - _EXPONENT_MIN, minlength=_EXPONENT_BINS)
        self._histograms[key] = (counts, zeros + int(np.count_nonzero(finite & (values == 0))),
                                 nonfinite + int(values.size - np.count_nonzero(finite)))

    def _flush_window(self):
        self.layer_history["steps"].append(self.step)
        self.layer_history["counts"].append(self._window.tolist())
        self.layer_history["updates"].append(self._window_updates.tolist())
        self._window[...] = 0
        self._window_updates[...] = 0.0
        self._window_steps = 0


def _json_float(value: float):
    """A float for JSON: None stands for inf and NaN."""
    value = float(value)
    return value if math.isfinite(value) else None
