"""The recorder: one object that watches every tensor of a training step as it is rounded.

The model and the training step never count anything themselves; they hand
each rounding to ``Recorder.rounded(kind, module, before, after, fmt)`` (the
values before rounding, and after) and each weight update to
``Recorder.updated(module, before, after, update, fmt)``.  A *module* is a path
as PyTorch names submodules (``"blocks.2.attn"``; the MLP's layers are
``"layers.0"``, ``"layers.1"``, ...), so both engines fill the same record.
Per step, per module and per kind of tensor (``fpsim.sim.vocabulary.RECORDED_KINDS``), the
recorder counts (``STATS``):

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

Under an FP8 / MX scaling recipe (``fpsim.sim.scaling.ScaledCasts``) a product's operands
are recorded in the scaled domain (the values the element format holds), and
``Recorder.scaled`` keeps, per step, module and operand kind (``OPERAND_KINDS``: "params",
"activations", "gradients"), the values cast, those that saturated at the format's
max, and the range of log2 of the scales (``scaling``: one trace per module and kind).

Counting is a few vectorised numpy passes per tensor; histograms are taken
only at the requested steps.  Every count is stored under its name
(``STAT_INDEX``), never by position, so the order of ``STATS`` is free to change.
"""

from __future__ import annotations

import math

import numpy as np

from .vocabulary import RECORDED_KINDS

STATS = ("values", "nonzero", "underflow", "subnormal", "overflow", "nonfinite")
"""What is counted for every rounding (see the module docstring); ``values`` is the element count."""

UPDATE_STATS = ("updated", "lost", "update_magnitude", "lost_magnitude")
"""Per layer and step: elements with a non-zero update, those whose stored value did not change,
the sum of |update| over all its finite elements, and over the lost ones."""

STAT_INDEX = {stat: i for i, stat in enumerate(STATS)}
UPDATE_STAT_INDEX = {stat: i for i, stat in enumerate(UPDATE_STATS)}

_EXPONENT_MIN = -1075  # floor(log2) of the smallest float64 subnormal is -1074
_EXPONENT_BINS = 1024 - _EXPONENT_MIN


class Recorder:
    """Counts of a run's roundings, per step, module and kind; optional histograms and FP64 shadow errors.

    ``modules``: the module paths known in advance, in the order summaries list
    them; a path first seen in ``rounded`` or ``updated`` is appended.
    ``histogram_steps``: steps at which to keep histograms of log2|value| (before
    rounding) of every kind and module.  ``record_every``: length of the windows
    over which per-module counts are summed into ``layer_history`` (0: none).
    """

    def __init__(self, modules=(), *, histogram_steps=(), record_every: int = 0):
        self.modules: list[str] = []
        self._module_index: dict[str, int] = {}
        self.histogram_steps = frozenset(histogram_steps)
        self.record_every = record_every
        self.history: list[dict] = []
        self._histograms: dict = {}
        self._scales: dict = {}
        self.shadow: list[dict] = []
        self._totals = np.zeros((0, len(RECORDED_KINDS), len(STATS)), dtype=np.int64)
        self._update_totals = np.zeros((0, len(UPDATE_STATS)), dtype=np.float64)
        self._window = np.zeros_like(self._totals)
        self._window_updates = np.zeros_like(self._update_totals)
        self._window_steps = 0
        self._windows: list[tuple[int, list, list]] = []
        self.step = -1
        self._counts = np.zeros_like(self._totals)
        self._updates = np.zeros_like(self._update_totals)
        self._histogram_now = False
        self._scaled_now: dict = {}
        self._scale_traces: dict = {}
        self.policies: dict[str, str] = {}
        """Module path -> the name of the policy its operations ran under, for runs with per-module overrides
        (``ran_under``; empty when every module ran under the run's policy)."""
        for module in modules:
            self.index(module)

    def index(self, module: str) -> int:
        """The row of ``module`` in every per-module array (appended, with zero counts, when new)."""
        row = self._module_index.get(module)
        if row is None:
            if not isinstance(module, str):
                raise TypeError(f"a module is named by its path (a str), got {module!r}")
            row = self._module_index[module] = len(self.modules)
            self.modules.append(module)
            for name in ("_totals", "_update_totals", "_window", "_window_updates", "_counts", "_updates"):
                array = getattr(self, name)
                setattr(self, name, np.concatenate([array, np.zeros((1, *array.shape[1:]), array.dtype)]))
        return row

    # --- what the training step calls ---------------------------------------
    def start_step(self, step: int) -> None:
        """Begin recording step ``step`` (0-based)."""
        self.step = step
        self._counts[...] = 0
        self._updates[...] = 0.0
        self._histogram_now = step in self.histogram_steps

    def rounded(self, kind: str, module: str, before: np.ndarray, after: np.ndarray, fmt) -> None:
        """Observe the rounding of ``before`` to ``after`` (in format ``fmt``) of a tensor of ``kind`` in ``module``."""
        row = self.index(module)  # before reading self._counts: a new module reallocates it
        counts = self._counts[row, RECORDED_KINDS.index(kind)]
        was_nonzero = before != 0  # NaN counts as non-zero
        is_zero = after == 0
        finite_after = np.isfinite(after)
        for stat, value in (
                ("values", before.size),
                ("nonzero", np.count_nonzero(was_nonzero)),
                ("underflow", np.count_nonzero(was_nonzero & is_zero)),
                ("subnormal", np.count_nonzero(~is_zero & (np.abs(after) < fmt.smallest_normal))),
                ("overflow", np.count_nonzero(~finite_after & np.isfinite(before))),
                ("nonfinite", after.size - np.count_nonzero(finite_after))):
            counts[STAT_INDEX[stat]] += value
        if self._histogram_now:
            self._histogram(kind, module, before)

    def ran_under(self, module: str, policy: str) -> None:
        """Note that ``module``'s operations run under the policy named ``policy`` (a per-module override, or
        the run's policy where none applies)."""
        self.policies[module] = policy

    def scaled(self, kind: str, module: str, values: int, saturated: int, log2_scales) -> None:
        """Observe a scaled cast of ``values`` values of operand ``kind`` in ``module``: ``saturated`` of them
        beyond the element format's max, ``log2_scales`` (lowest, highest) log2 of the unit X (None: no
        finite scale)."""
        entry = self._scaled_now.setdefault((kind, module), [0, 0, math.inf, -math.inf])
        entry[0] += values
        entry[1] += saturated
        if log2_scales is not None:
            entry[2], entry[3] = min(entry[2], log2_scales[0]), max(entry[3], log2_scales[1])

    def updated(self, module: str, before: np.ndarray, after: np.ndarray, update: np.ndarray, fmt) -> None:
        """Observe a weight update of ``module``: stored values ``before`` and ``after`` (format ``fmt``), update ``update``.

        The rounding of ``before - update`` to ``after`` is counted as kind
        "updates"; lost: ``update != 0`` and ``after == before``.  (With a
        Kahan-compensated update the training step passes ``weights +
        compensation`` as the stored value, so an update deferred into the
        compensation is not counted lost.)
        """
        self.rounded("updates", module, before.astype(np.float64) - update, after, fmt)
        magnitude = np.where(np.isfinite(update), np.abs(update), 0.0)  # inf/NaN updates: counted as nonfinite
        was_updated = update != 0
        lost = was_updated & (after == before)
        row = self._updates[self.index(module)]  # index() ran in rounded() above: the array is current
        for stat, value in (("updated", np.count_nonzero(was_updated)), ("lost", np.count_nonzero(lost)),
                            ("update_magnitude", float(magnitude.sum())),
                            ("lost_magnitude", float(magnitude[lost].sum()))):
            row[UPDATE_STAT_INDEX[stat]] += value

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
    def weight_grad_underflow_fraction(self) -> float | None:
        """Over the shadow steps: weight-gradient elements non-zero in FP64 but zero in the policy (None: no shadow)."""
        if not self.shadow:
            return None
        nonzero = sum(sum(record["nonzero"]) for record in self.shadow)
        return sum(sum(record["flushed"]) for record in self.shadow) / nonzero if nonzero else 0.0

    def end_step(self, *, loss: float, loss_scale: float, skipped: bool) -> dict:
        """Close the step: append and return its history record."""
        totals_by_kind = self._counts.sum(axis=0)
        record = {"step": self.step, "loss": json_float(loss), "loss_scale": loss_scale, "skipped": skipped}
        for stat in STATS[1:]:
            record[stat] = {kind: int(totals_by_kind[k, STAT_INDEX[stat]])
                            for k, kind in enumerate(RECORDED_KINDS)}
        update_totals = dict(zip(UPDATE_STATS, self._updates.sum(axis=0)))
        record["updated"] = int(update_totals["updated"])
        record["lost_updates"] = int(update_totals["lost"])
        record["update_magnitude"] = float(update_totals["update_magnitude"])
        record["lost_update_magnitude"] = float(update_totals["lost_magnitude"])
        if self._scaled_now:
            record["saturated"] = {}
            for (kind, module), (values, saturated, low, high) in self._scaled_now.items():
                record["saturated"][kind] = record["saturated"].get(kind, 0) + saturated
                trace = self._scale_traces.setdefault((kind, module), {
                    "kind": kind, "module": module, "steps": [], "values": [], "saturated": [],
                    "log2_scale_min": [], "log2_scale_max": []})
                for name, value in (("steps", self.step), ("values", values), ("saturated", saturated),
                                    ("log2_scale_min", json_float(low)), ("log2_scale_max", json_float(high))):
                    trace[name].append(value)
            self._scaled_now = {}
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
        """Run total of ``stat`` for ``kind`` over all modules."""
        return int(self._totals[:, RECORDED_KINDS.index(kind), STAT_INDEX[stat]].sum())

    def fraction(self, kind: str, stat: str) -> float:
        """Run total of ``stat`` over the run's non-zero values of ``kind`` (0 when there were none)."""
        nonzero = self.total(kind, "nonzero")
        return self.total(kind, stat) / nonzero if nonzero else 0.0

    @property
    def lost_update_fraction(self) -> float:
        """Lost updates over all elements with a non-zero update, over the run."""
        updated = self._update_totals[:, UPDATE_STAT_INDEX["updated"]].sum()
        return float(self._update_totals[:, UPDATE_STAT_INDEX["lost"]].sum() / updated) if updated else 0.0

    @property
    def lost_update_magnitude_fraction(self) -> float:
        """Sum of |update| over lost elements over the sum over all, over the run."""
        magnitude = self._update_totals[:, UPDATE_STAT_INDEX["update_magnitude"]].sum()
        return float(self._update_totals[:, UPDATE_STAT_INDEX["lost_magnitude"]].sum() / magnitude) if magnitude else 0.0

    def layer_summaries(self) -> list[dict]:
        """Per module: its path, its position (``layer``), the policy it ran under (``policy``, in runs with
        per-module overrides: None for a module no operation ran in), run totals of every stat of every kind
        and of the update statistics."""
        out = []
        for layer, module in enumerate(self.modules):
            summary = {"layer": layer, "module": module}
            if self.policies:
                summary["policy"] = self.policies.get(module)
            for k, kind in enumerate(RECORDED_KINDS):
                summary[kind] = {stat: int(self._totals[layer, k, s]) for s, stat in enumerate(STATS)}
            for u, stat in enumerate(UPDATE_STATS):
                value = self._update_totals[layer, u]
                summary[stat] = float(value) if "magnitude" in stat else int(value)
            out.append(summary)
        return out

    @property
    def scaling(self) -> list[dict]:
        """Per (operand kind, module) cast under a scaling recipe, in the order first seen: ``steps``, and per
        step the ``values`` cast, those ``saturated``, ``log2_scale_min`` and ``log2_scale_max`` of X."""
        return list(self._scale_traces.values())

    # --- internals -----------------------------------------------------------
    @property
    def histograms(self) -> list[dict]:
        """The histograms taken, one per (step, kind, module), in the order they were started.

        Each: ``counts[i]`` values with ``2^e <= |x| < 2^(e+1)`` for
        ``e = min_exponent + i``, taken before rounding; ``zeros`` and
        ``nonfinite`` count the rest; ``loss_scale`` is the step's scale (scaled
        gradients are recorded as they were, that is, multiplied by it).
        """
        out = []
        for (step, kind, module), (counts, zeros, nonfinite) in self._histograms.items():
            used = np.flatnonzero(counts)
            low, high = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 0)
            out.append({"step": step, "kind": kind, "module": module, "layer": self._module_index[module],
                        "loss_scale": self._scales.get(step),
                        "min_exponent": low + _EXPONENT_MIN, "counts": counts[low:high].tolist(),
                        "zeros": zeros, "nonfinite": nonfinite})
        return out

    def _histogram(self, kind, module, before):
        values = np.asarray(before, dtype=np.float64).ravel()
        finite = np.isfinite(values)
        nonzero = finite & (values != 0)
        exponents = np.frexp(values[nonzero])[1] - 1  # floor(log2|x|): 2^e <= |x| < 2^(e+1)
        key = (self.step, kind, module)
        counts, zeros, nonfinite = self._histograms.get(key, (np.zeros(_EXPONENT_BINS, dtype=np.int64), 0, 0))
        counts += np.bincount(exponents - _EXPONENT_MIN, minlength=_EXPONENT_BINS)
        self._histograms[key] = (counts, zeros + int(np.count_nonzero(finite & (values == 0))),
                                 nonfinite + int(values.size - np.count_nonzero(finite)))

    @property
    def layer_history(self) -> dict:
        """Per-module counts summed over windows of ``record_every`` steps: ``counts[window][module][kind][stat]``
        and ``updates[window][module][update stat]``, ``steps`` the last step of each window, ``modules`` the
        paths (a module first seen in a later window has zero counts in the earlier ones)."""
        def padded(window: np.ndarray) -> list:
            return np.concatenate([window, np.zeros((len(self.modules) - len(window), *window.shape[1:]),
                                                    window.dtype)]).tolist()
        return {"modules": list(self.modules), "kinds": list(RECORDED_KINDS), "stats": list(STATS),
                "update_stats": list(UPDATE_STATS), "steps": [step for step, _, _ in self._windows],
                "counts": [padded(counts) for _, counts, _ in self._windows],
                "updates": [padded(updates) for _, _, updates in self._windows]}

    def _flush_window(self):
        self._windows.append((self.step, self._window.copy(), self._window_updates.copy()))
        self._window[...] = 0
        self._window_updates[...] = 0.0
        self._window_steps = 0


def json_float(value: float):
    """A float for JSON: None stands for inf and NaN."""
    value = float(value)
    return value if math.isfinite(value) else None
