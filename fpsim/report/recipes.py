"""The recipes section's machinery (analyses/recipes.py): the NVFP4 recipe taken apart, DeepSeek's blockwise FP8
with 2-D gradient blocks, and what a run says of its loss and of its gradients.

**The NVFP4 recipe's components** (NVIDIA, arXiv 2509.25149; the ``nvfp4-te`` preset): with every component off,
``nvfp4_variant(())`` is plain NVFP4 in Transformer Engine's encode (``nvfp4_te``: E2M1 elements, an E4M3 scale
per 1 x 16 block along each product's reduction axis, an FP32 tensor scale, rounded to nearest), every layer in
FP4; each component of ``NVFP4_COMPONENTS`` puts back the fields of ``nvfp4-te`` it names, so that
``nvfp4_variant(NVFP4_COMPONENTS)`` is ``nvfp4-te`` itself.

**Relative gap.** A variant's runs a_i and a reference's b_i on the same seeds: r_i = a_i / b_i - 1, its mean
with the 95% t interval and the t-test of mean(r) = 0 (``fpsim.report.stats.paired_comparison`` of a / b against
1).  The papers state their gaps that way: NVFP4 "within 1-1.5 %" of FP8's loss, DeepSeek's FP8 "below 0.25 %"
of BF16's.

**Gradient error** (``gradient_error``): on the steps the engine compares with an FP64 shadow of the same step
(``TrainConfig.shadow_every``; ``fpsim.sim.recorder.Recorder.observe_shadow``), each module's weight-gradient
error ||g - g64|| / ||g64||; a run's is the median over those steps and modules.
"""

from __future__ import annotations

import dataclasses
import statistics

import numpy as np

from ..sim.policy import POLICIES, Policy
from ..sim.scaling import Scaling
from .experiments import bits_per_character, cast_values, saturated_values
from .plots import seed_scatter
from .stats import mean_ci, paired_comparison

NVFP4_RECIPE = "nvfp4-te"
NVFP4_COMPONENTS = {
    "2-D weights": (("params", "block_size"),),
    "SR gradients": (("gradients", "stochastic"),),
    "RHT": (("activations", "hadamard"), ("gradients", "hadamard")),
    "last layers BF16": (),
}
"""Each component of the NVFP4 recipe: the (tensor kind, ``Scaling`` field) pairs of ``nvfp4-te`` it switches on
(16 x 16 weight tiles; stochastically rounded gradients; the 16-point random Hadamard transform on both inputs of
the weight-gradient products); "last layers BF16" is ``nvfp4-te``'s override (``NVFP4_HIGH_PRECISION_LAYERS``)."""
LAST_LAYERS = "last layers BF16"
SWITCHES = ("block_size", "stochastic", "hadamard")
"""The ``Scaling`` fields a component switches; off, each takes ``Scaling()``'s default (the preset's 1 x 16
blocks, rounding to nearest, no transform)."""

BLOCKWISE = "fp8-blockwise"
GRADIENT_TILES = (128, 128)
BLOCKWISE_2D_GRADIENTS = "fp8-blockwise, 128x128 gradient blocks"
"""``fp8-blockwise`` with its incoming gradients scaled per 128 x 128 block instead of 1 x 128 tiles: the variant
DeepSeek-V3 reports diverging on a 16B model (arXiv 2412.19437, appendix B.2)."""


def nvfp4_variant(components) -> Policy:
    """``nvfp4-te`` with only ``components`` (names of ``NVFP4_COMPONENTS``) on; its name says which.  ``()``: plain
    NVFP4 (1 x 16 blocks, nearest, no transform, every layer in FP4)."""
    unknown = [c for c in components if c not in NVFP4_COMPONENTS]
    if unknown:
        raise ValueError(f"unknown NVFP4 component(s) {', '.join(unknown)}: choose from {', '.join(NVFP4_COMPONENTS)}")
    full = POLICIES[NVFP4_RECIPE]
    kept = {pair for c in components for pair in NVFP4_COMPONENTS[c]}
    off = Scaling()
    scaling = {kind: dataclasses.replace(s, **{f: getattr(s if (kind, f) in kept else off, f) for f in SWITCHES})
               for kind, s in full.scaling}
    return dataclasses.replace(full, name=variant_name(components), scaling=scaling,
                               overrides=full.overrides if LAST_LAYERS in components else ())


def variant_name(components) -> str:
    """"nvfp4-te, none", "nvfp4-te, +RHT", ... ("nvfp4-te" for every component)."""
    if set(components) == set(NVFP4_COMPONENTS):
        return NVFP4_RECIPE
    return f"{NVFP4_RECIPE}, " + (" ".join(f"+{c}" for c in components) if components else "none")


def blockwise_2d_gradients() -> Policy:
    """``fp8-blockwise`` with 128 x 128 blocks for the incoming (activation) gradients (``BLOCKWISE_2D_GRADIENTS``)."""
    preset = POLICIES[BLOCKWISE]
    scaling = dict(preset.scaling)
    scaling["gradients"] = dataclasses.replace(scaling["gradients"], block_size=GRADIENT_TILES)
    return dataclasses.replace(preset, name=BLOCKWISE_2D_GRADIENTS, scaling=scaling)


def validation_loss(model: str, result: dict) -> float | None:
    """The validation loss a run ended with: bits per character for the transformer, the test cross-entropy
    (nats) for a classifier; None for a run that diverged or left no finite loss."""
    if result["status"] != "ok" or result["test_loss"] is None:
        return None
    return bits_per_character(result) if model == "transformer" else float(result["test_loss"])


def relative_gap(values, reference) -> dict | None:
    """The paired relative gap r_i = values_i / reference_i - 1 (see the module docstring): mean, 95% interval
    ``low``, ``high``, ``t_test_p``; None when a run of either has no loss."""
    if None in values or None in reference:
        return None
    a, b = np.asarray(values, dtype=float), np.asarray(reference[:len(values)], dtype=float)
    return paired_comparison(a / b, np.ones_like(a))


def gradient_error(result: dict) -> float | None:
    """The median over the FP64-shadow steps and modules of ||g - g64|| / ||g64|| (module docstring); None
    without a finite one."""
    errors = [e for record in result["shadow"] for e in record["relative_error"] if e is not None]
    return statistics.median(errors) if errors else None


def summary_row(model: str, name: str, results: list[dict]) -> dict:
    """One row per model and policy: the validation loss (mean and 95% interval over seeds), the runs that
    diverged, the scaled casts' saturated and flushed values, and the weight gradients' error against FP64."""
    losses = [validation_loss(model, r) for r in results]
    finite = [v for v in losses if v is not None]
    ci = mean_ci(finite) if finite else {"mean": None, "low": None, "high": None}
    errors = [e for e in (gradient_error(r) for r in results) if e is not None]
    cast = sum(cast_values(r) for r in results)
    row = {"model": model, "policy": name, "seeds": len(results), "diverged": losses.count(None),
           "loss mean": ci["mean"], "loss 95% CI low": ci["low"], "loss 95% CI high": ci["high"],
           "saturated (all seeds)": sum(saturated_values(r) for r in results),
           "saturated share": sum(saturated_values(r) for r in results) / cast if cast else 0.0,
           "gradients flushed (mean)": float(np.mean([r["activation_grad_underflow_fraction"] for r in results])),
           "gradient error vs FP64 (mean of medians)": float(np.mean(errors)) if errors else None}
    if model != "transformer":
        row["test accuracy (mean)"] = float(np.mean([r["test_accuracy"] or 0.0 for r in results]))
    return row


def _points_with_intervals(ax, values_by: dict, ylabel: str) -> None:
    """``fpsim.report.plots.seed_scatter`` of ``values_by`` on ``ax``, the labels below broken after their first
    comma."""
    seed_scatter(ax, values_by, ylabel)
    ax.set_xticks(range(len(values_by)), [n.replace(", ", ",\n", 1) for n in values_by], rotation=40, ha="right",
                  fontsize=7)


def loss_figure(panels, bound: float | None = None):
    """One panel per (title, ylabel, {label: losses seed by seed}, reference label) of ``panels``, side by side:
    each policy's losses (points) with their mean and 95% t interval (black), the reference's mean as a line and,
    with ``bound`` (a relative gap such as 0.015), the band up to (1 + bound) times it."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, (title, ylabel, losses, reference) in zip(axes[0], panels):
        _points_with_intervals(ax, losses, ylabel)
        base = float(np.mean([v for v in losses[reference] if v is not None]))
        ax.axhline(base, color="tab:green", lw=1, label=f"{reference}: mean")
        if bound is not None:
            ax.axhspan(base, base * (1 + bound), color="tab:green", alpha=0.15,
                       label=f"up to {100 * bound:g}% above {reference}")
        ax.set_title(title)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def blockwise_figure(panels):
    """Two rows of panels, one column per (title, loss label, {label: losses}, {label: gradient errors}) of
    ``panels``: the validation loss per policy (points per seed, mean and 95% interval), and below it the weight
    gradients' error against the FP64 shadow (``gradient_error``, the same, log scale)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(panels), figsize=(6.5 * len(panels), 8), squeeze=False)
    for column, (title, ylabel, losses, errors) in enumerate(panels):
        _points_with_intervals(axes[0][column], losses, ylabel)
        axes[0][column].set_title(title)
        _points_with_intervals(axes[1][column], errors, "weight-gradient error vs FP64 (median)")
        axes[1][column].set(title="", yscale="log")
    fig.tight_layout()
    return fig
