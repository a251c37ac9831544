"""Plot helpers shared by the analyses: the zones of a format on the log2 number line, and the number-line figure.

On a log2 |x| axis a format with ``M`` mantissa bits and minimum exponent ``emin`` has:

* a flush zone, |x| <= 2^(emin - M - 1): half the smallest subnormal or less rounds to
  zero under round-to-nearest-even (the tie at exactly half goes to the even code, 0);
* a subnormal zone, 2^(emin - M - 1) < |x| < 2^emin: kept, with fewer than ``M + 1``
  significant bits (relative precision worsens as |x| shrinks);
* a normal zone, 2^emin <= |x| <= max, with ``M + 1`` significant bits (unit roundoff 2^-(M+1));
* overflow above max (plus half an ulp): inf, or NaN for a format without infinities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..numerics.formats import Format, get_format  # noqa: E402

ZONE_COLOURS = {"flush": "#bdbdbd", "subnormal": "#fdae6b", "normal": "#6baed6", "overflow": "#de2d26"}
"""One colour per zone, used by every figure that shows zones."""

FIGURE_STYLE = {"axes.grid": True, "grid.alpha": 0.3, "axes.titlesize": 10, "legend.fontsize": 8}
"""The report's matplotlib rcParams, applied around every analysis by ``fpsim.report.runner.run_one``."""


@dataclass(frozen=True)
class Zones:
    """A format's zones as log2 |x| boundaries (see the module docstring)."""

    fmt: Format
    flush_below: float
    """log2 of the largest magnitude that rounds to zero: emin - M - 1 (or emin - 1 without subnormals)."""
    normal_from: float
    """log2 of the smallest normal: emin."""
    max_log2: float
    """log2 of the largest finite value."""

    @classmethod
    def of(cls, fmt) -> "Zones":
        fmt = get_format(fmt)
        flush = math.log2(fmt.smallest_subnormal) - 1
        return cls(fmt, flush, float(fmt.emin), math.log2(fmt.max))


def shade_zones(ax, fmt, *, vertical: bool = True, alpha: float = 0.3, label: bool = True, lo=-200, hi=200):
    """Shade ``fmt``'s flush and subnormal zones (and overflow) on an axis whose x (or y) is log2 |x|."""
    z = Zones.of(fmt)
    span = ax.axvspan if vertical else ax.axhspan
    name = z.fmt.name.upper()
    span(lo, z.flush_below, color=ZONE_COLOURS["flush"], alpha=alpha,
         label=f"{name}: rounds to 0" if label else None)
    span(z.flush_below, z.normal_from, color=ZONE_COLOURS["subnormal"], alpha=alpha,
         label=f"{name}: subnormal" if label else None)
    span(z.max_log2, hi, color=ZONE_COLOURS["overflow"], alpha=alpha,
         label=f"{name}: overflow" if label else None)


def number_line_figure(formats, zoom=(-30, 20)):
    """The number line of ``formats`` on a log2 |x| axis: zones, edges and precision; full range and a zoom."""
    formats = [get_format(f) for f in formats]
    fig, axes = plt.subplots(2, 1, figsize=(12, 1.1 * len(formats) + 3.5),
                             gridspec_kw={"height_ratios": [1, 1]})
    lo = min(Zones.of(f).flush_below for f in formats) - 8
    hi = max(Zones.of(f).max_log2 for f in formats) + 8
    for ax, (left, right) in zip(axes, [(lo, hi), zoom]):
        for row, fmt in enumerate(formats):
            z = Zones.of(fmt)
            y = len(formats) - 1 - row
            bars = [(left, z.flush_below, "flush"), (z.flush_below, z.normal_from, "subnormal"),
                    (z.normal_from, z.max_log2, "normal"), (z.max_log2, right, "overflow")]
            for a, b, zone in bars:
                a, b = max(a, left), min(b, right)
                if b > a:
                    ax.barh(y, b - a, left=a, height=0.6, color=ZONE_COLOURS[zone],
                            edgecolor="white", hatch="//" if zone == "flush" else None)
            if left <= z.normal_from <= right:
                ax.text(z.normal_from, y + 0.34, f"2^{z.normal_from:.0f}", ha="center", fontsize=7)
            if left <= z.flush_below <= right:
                ax.text(z.flush_below, y - 0.5, f"2^{z.flush_below:.0f}", ha="center", fontsize=7)
            if left <= z.max_log2 <= right:
                ax.text(z.max_log2, y + 0.34, f"{fmt.max:.4g}", ha="center", fontsize=7)
        ax.set_yticks(range(len(formats)))
        ax.set_yticklabels([f"{f.name.upper()}  (e{f.exponent_bits}m{f.mantissa_bits}, eps 2^-{f.mantissa_bits})"
                            for f in reversed(formats)])
        ax.set_xlim(left, right)
        ax.set_ylim(-0.7, len(formats) - 0.3)
        ax.axvline(0, color="k", lw=0.6)
        ax.grid(False, axis="y")  # the rows are formats, not values
        ax.set_xlabel("log2 |x|")
    axes[0].set_title("Number line of each format: where |x| rounds to 0, is subnormal, normal, or overflows")
    axes[1].set_title(f"Zoom on 2^{zoom[0]} .. 2^{zoom[1]}")
    handles = [plt.Rectangle((0, 0), 1, 1, color=ZONE_COLOURS[z], hatch="//" if z == "flush" else None)
               for z in ZONE_COLOURS]
    fig.legend(handles, ["rounds to 0 (|x| <= half the smallest subnormal)", "subnormal (fewer significant bits)",
                         "normal (M+1 significant bits)", "overflow (inf, or NaN for E4M3)"],
               loc="lower center", ncol=4, fontsize=8, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def roofline_figure(breakdown: list[dict], curves: dict, cited: dict):
    """Left: modelled step time per precision, split by kind. Right: modelled speed-up over FP32 against
    batch size (one line per workload and precision), with cited measured speed-ups as horizontal lines."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    names = [row["precision"] for row in breakdown]
    bottom = np.zeros(len(names))
    for kind, colour in (("matmul", "#6baed6"), ("elementwise", "#fdae6b"), ("optimizer", "#74c476")):
        values = np.array([row[f"{kind} s"] * 1e3 for row in breakdown])
        left.bar(names, values, bottom=bottom, color=colour, label=kind)
        bottom += values
    for x, total in enumerate(bottom):
        left.text(x, total, f"{total:.1f} ms", ha="center", va="bottom", fontsize=9)
    left.set_ylabel("modelled step time (ms)")
    left.set_title(f"MODEL: {breakdown[0]['workload']}\non {breakdown[0]['gpu']} (roofline at datasheet peaks)")
    left.legend()
    styles = {"tf32": "--", "16-mixed": "-"}
    for (workload, precision), (batches, values) in curves.items():
        right.plot(batches, values, styles.get(precision, "-"), marker="o", ms=3,
                   label=f"model: {workload}, {precision} over fp32")
    for label, value in cited.items():
        right.axhline(value, color="k", lw=1, ls=":")
        right.text(0.99, value, f"cited measurement: {label} = {value:.2f}x", ha="right", va="bottom",
                   fontsize=8, transform=right.get_yaxis_transform())
    right.set_xscale("log", base=2)
    right.set_xlabel("batch size (sequences of 512 tokens for the encoder, samples for the MLP)")
    right.set_ylabel("speed-up over strict FP32")
    right.set_title("MODEL speed-up against batch size, beside cited measurements")
    right.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.tight_layout()
    return fig


def memory_figure(measured: list[dict], modelled: list[dict], ratio_curves: dict, cited_ratio: tuple[str, float]):
    """Left: measured (markers) and modelled (lines) peak bytes of a step against batch size, per policy.
    Right: the peak-memory ratio of a 16-bit policy over FP32 against batch size, with a cited ratio."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    colours = {}
    for name in dict.fromkeys(row["policy"] for row in measured):
        rows = [r for r in measured if r["policy"] == name]
        line, = left.plot([r["batch"] for r in rows], [r["peak bytes"] / 2 ** 20 for r in rows], "o", label=f"measured {name}")
        colours[name] = line.get_color()
        model_rows = [r for r in modelled if r["policy"] == name]
        left.plot([r["batch"] for r in model_rows], [r["peak bytes"] / 2 ** 20 for r in model_rows], "-",
                  color=colours[name], alpha=0.7, label=f"model {name}")
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("batch size")
    left.set_ylabel("peak bytes of a training step (MiB)")
    left.set_title("MLP step, Adam: measured (tracemalloc, real numpy containers) and modelled")
    left.legend(fontsize=7, ncol=2)
    for label, (batches, ratios) in ratio_curves.items():
        right.plot(batches, ratios, "o-" if "measured" in label else "-", ms=3, label=label)
    right.axhline(cited_ratio[1], color="k", ls=":", lw=1)
    right.text(0.99, cited_ratio[1], f"cited: {cited_ratio[0]} = {cited_ratio[1]:.2f}", ha="right", va="bottom",
               fontsize=8, transform=right.get_yaxis_transform())
    right.axhline(1.0, color="grey", lw=0.8)
    right.axhline(0.5, color="grey", lw=0.8, ls="--")
    right.set_ylim(0.3, 1.2)
    right.set_xscale("log", base=2)
    right.set_xlabel("batch size (sequences of 512 tokens for the encoder)")
    right.set_ylabel("peak memory, 16-bit policy / FP32")
    right.set_title("Does training memory barely change? Only while activations are small")
    right.legend(fontsize=7)
    fig.tight_layout()
    return fig


def seed_scatter(ax, values_by_policy: dict, ylabel: str) -> None:
    """One column of points per policy (one point per seed, jittered; None, a run without a value, left out)
    with its mean and 95% t interval (from two values on)."""
    from .stats import mean_ci

    rng = np.random.default_rng(0)  # the jitter only; fixed so the figure is reproducible
    for i, values in enumerate(values_by_policy.values()):
        values = [v for v in values if v is not None]
        ax.plot(i + rng.uniform(-0.12, 0.12, len(values)), values, "o", alpha=0.5)
        if len(values) > 1:
            ci = mean_ci(values)
            ax.errorbar(i + 0.3, ci["mean"], yerr=[[ci["mean"] - ci["low"]], [ci["high"] - ci["mean"]]], fmt="D",
                        color="k", capsize=4)
    ax.set_xticks(range(len(values_by_policy)))
    ax.set_xticklabels(list(values_by_policy))
    ax.set_ylabel(ylabel)
    ax.set_title(f"{len(next(iter(values_by_policy.values())))} seeds per policy; black: mean and 95% CI")


def legend_entries(axes) -> tuple[list, list]:
    """The legend handles and labels of all ``axes``, each label once (for one legend of a whole figure)."""
    handles, labels = [], []
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    return handles, labels


def paired_differences(ax, tests: list[dict], scale: float, band: float, reference: str, *, capsize: float,
                       colours: list[str] | None = None) -> None:
    """On ``ax``: each paired comparison of ``tests`` (at x = 0, 1, ...) as its mean difference with its 95%
    interval, times ``scale``; the "as well as ``reference``" band +-``band`` (already scaled) shaded, and 0."""
    for i, t in enumerate(tests):
        colour = {} if colours is None else {"color": colours[i]}
        ax.errorbar(i, scale * t["mean_difference"], yerr=[[scale * (t["mean_difference"] - t["low"])],
                                                           [scale * (t["high"] - t["mean_difference"])]],
                    fmt="o", capsize=capsize, **colour)
    ax.axhspan(-band, band, color="0.85", alpha=0.6, label=f"+-{band:.3g}: as well as {reference}")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(tests)))


def against_reference_figure(panels: list[tuple[str, str, list[str], list[dict], float, float, list[str]]],
                             reference: str):
    """One panel per (title, ylabel, labels, tests, scale, band, colours) of ``panels``, side by side: each
    policy's paired difference against ``reference`` with its 95% interval (``paired_differences``)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(14, 4.8))
    for ax, (title, ylabel, labels, tests, scale, band, colours) in zip(axes, panels):
        paired_differences(ax, tests, scale, band, reference, capsize=4, colours=colours)
        ax.set_xticklabels(labels, rotation=40, ha="right", fontsize=7)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def bars_by_module_figure(panels: list[tuple[str, list[str], list[tuple[str, list[float], str]]]], ylabel: str):
    """One panel per (title, modules, series) of ``panels``, side by side: a group of bars per module, one bar
    per (label, values, colour) of its ``series`` (two)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(14, 4.4))
    for ax, (title, modules, series) in zip(axes, panels):
        x = np.arange(len(modules))
        for offset, (label, values, colour) in enumerate(series):
            ax.bar(x + 0.4 * offset - 0.2, values, 0.4, color=colour, label=label)
        ax.set_xticks(x)
        ax.set_xticklabels(modules, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def scaling_lag_figure(jump: list[dict], edges, history: list[dict], current_saturated: int):
    """Left: the shares of a scripted tensor saturated and flushed by current and delayed scaling, step by
    step (``jump``: ``experiments.scripted_amax_jump``; ``edges``: the steps where the amplitude changes);
    right: the operand values delayed scaling saturated in each step of a run (``history``)."""
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.4))
    for name, style in (("fp8-current", "-"), ("fp8-delayed", "--")):
        rows = [r for r in jump if r["policy"] == name]
        axes[0].plot([r["step"] for r in rows], [100 * r["saturated"] for r in rows], style, color="tab:red",
                     label=f"{name}: saturated at 448")
        axes[0].plot([r["step"] for r in rows], [100 * r["flushed"] for r in rows], style, color="tab:blue",
                     label=f"{name}: flushed to 0")
    for edge in edges:
        axes[0].axvline(edge, color="0.6", lw=0.8)
    axes[0].set_xlabel("step (amplitude 1, then x64 at step 20, then x1/64 at step 40)")
    axes[0].set_ylabel("share of the tensor's values (%)")
    axes[0].set_title("A scripted jump in magnitude: 4096 normal values cast to E4M3")
    axes[0].legend(fontsize=8)
    for kind, colour in (("activations", "tab:orange"), ("gradients", "tab:green"), ("params", "tab:purple")):
        axes[1].plot([h["step"] for h in history], [h.get("saturated", {}).get(kind, 0) for h in history],
                     color=colour, label=f"fp8-delayed: {kind}")
    axes[1].set_yscale("symlog", linthresh=1)
    axes[1].set_xlabel("training step")
    axes[1].set_ylabel("operand values saturated in the step")
    axes[1].set_title(f"char-gpt, seed 0: delayed scaling saturates (current scaling: {current_saturated} values)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def recipe_figure(steps: list[tuple[str, str, str]], recorded: str, title: str):
    """The steps of a recipe as boxes, left to right: each (title, its tensors and their formats, what happens),
    and below them what a run recorded (``recorded``)."""
    import textwrap

    fig, ax = plt.subplots(figsize=(14, 3.8))
    ax.set_axis_off()
    width = 1 / len(steps)
    for i, (step, formats, note) in enumerate(steps):
        x = i * width
        ax.add_patch(plt.Rectangle((x + 0.005, 0.12), width - 0.03, 0.8, fill=True, color="#eef3fa", ec="#6baed6",
                                   transform=ax.transAxes))
        ax.text(x + 0.015, 0.87, step, fontsize=11, weight="bold", transform=ax.transAxes, va="top")
        ax.text(x + 0.015, 0.76, formats, fontsize=9, transform=ax.transAxes, va="top", family="monospace")
        ax.text(x + 0.015, 0.36, "\n".join(textwrap.wrap(note, 30)), fontsize=8, transform=ax.transAxes, va="top",
                style="italic")
        if i < len(steps) - 1:
            ax.annotate("", xy=(x + width + 0.004, 0.5), xytext=(x + width - 0.025, 0.5), xycoords="axes fraction",
                        arrowprops=dict(arrowstyle="->", lw=1.5))
    ax.text(0.0, 0.08, "\n".join(textwrap.wrap(recorded, 170)), fontsize=9, transform=ax.transAxes, va="top")
    ax.set_title(title, fontsize=11)
    return fig


def seed_comparison_figure(seeds: list[int], accuracy: dict[str, list[float]], p_values: dict[str, float]):
    """Left: each policy's test accuracy per seed (``seed_scatter``); right: each policy's paired difference
    against the first (the reference), seed by seed, with its paired t-test's p (``p_values``)."""
    from matplotlib.ticker import MaxNLocator

    reference, *others = accuracy
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    seed_scatter(left, {p: 100 * np.array(values) for p, values in accuracy.items()}, "test accuracy (%)")
    for i, p in enumerate(others):
        d = 100 * (np.array(accuracy[p]) - np.array(accuracy[reference]))
        right.plot(seeds, d, "o-" if i == 0 else "s--", alpha=0.7,
                   label=f"{p} - {reference} (p = {p_values[p]:.2g}, paired t)")
    right.axhline(0, color="k", lw=0.8)
    right.set_xlabel("seed")
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_ylabel("accuracy difference (points)")
    right.set_title("Paired differences against FP32, seed by seed")
    right.legend()
    fig.tight_layout()
    return fig


def histogram_grid(kinds: dict[str, str], columns: list, stages: list[int], fmt, histogram, *, column_title,
                   xlabel: str, xlim: tuple, title: str, size: tuple, rect: tuple):
    """A grid of log2 |x| histograms over ``fmt``'s zones: one row per tensor kind (``kinds``: kind -> label),
    one column per entry of ``columns``, one curve per step of ``stages``, each the share of the panel's non-zero
    values per binade.  ``histogram(kind, column, step)`` gives (exponents, counts), or None where the panel has
    no such tensor; ``column_title(column, label)`` names a panel."""
    fig, axes = plt.subplots(len(kinds), len(columns), figsize=size, sharex=True, sharey=True, squeeze=False)
    for row, (kind, label) in enumerate(kinds.items()):
        for col, column in enumerate(columns):
            ax = axes[row, col]
            shade_zones(ax, fmt, label=row == 0 and col == 0)
            for step in stages:
                found = histogram(kind, column, step)
                if found is not None:
                    e, c = found
                    ax.step(e + 0.5, 100 * c / max(c.sum(), 1), where="mid", label=f"step {step}")
            ax.set_title(column_title(column, label))
            if row == len(kinds) - 1:
                ax.set_xlabel(xlabel)
            if col == 0:
                ax.set_ylabel("% of non-zero values per binade")
    axes[0, 0].set_xlim(*xlim)
    fig.suptitle(title, fontsize=11)
    handles, labels = legend_entries(axes)
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, bbox_to_anchor=(0.5, -0.03))
    fig.tight_layout(rect=rect)
    return fig


def module_histograms_figure(result: dict, kinds: dict[str, str], stages: list[int], fmt, title: str):
    """The log2 |x| histograms a run recorded (``experiments.histogram_of``), one panel per tensor kind
    (``kinds``: kind -> label; rows) and module kind (columns; the residual stream and the loss left out), one
    curve per step of ``stages``, over ``fmt``'s zones."""
    from .experiments import histogram_of, modules_by_kind

    groups = modules_by_kind(result)
    shown = [kind for kind in groups if kind not in ("residual stream", "loss")]

    def histogram(kind, module_kind, step):
        try:
            return histogram_of(result, kind, step=step, modules=groups[module_kind])[:2]
        except ValueError:  # this kind has no tensor of this module kind (e.g. no weight in GELU)
            return None

    return histogram_grid(kinds, shown, stages, fmt, histogram, column_title=lambda kind, label: f"{kind}: {label}",
                          xlabel="log2 |g| (FP32, before any rounding)", xlim=(-44, 6), title=title,
                          size=(3.3 * len(shown), 6.4), rect=(0, 0.04, 1, 0.95))
