"""``fpsim.torch.inspect``: where a model's tensors sit in each format's range, from one FP32 step.

One forward and one backward pass in plain FP32 torch (no emulation), then, per
module and tensor kind, statistics of the values a precision policy would have
to hold.  Kinds, as the recorder has them: ``"activations"`` (the output of
every leaf module, i.e. one without children), ``"activation_grads"`` (the
gradient of the loss with respect to that output) and ``"weight_grads"`` (the
gradients of the module's own parameters).  ``nonfinite`` counts the values
that are inf or NaN already in FP32; ``max_abs`` is the largest magnitude of the
others (inf when one is infinite), ``min_abs`` the smallest non-zero finite one,
and the shares below are of the finite values.  For each format F:

* ``underflow``: share of the non-zero values that ``round(x, F)`` flushes to zero;
* ``subnormal``: share of the non-zero values that round to a non-zero value
  below F's smallest normal (held with fewer significant bits);
* ``overflow``: share of the finite values that round to inf (or NaN in a
  format without infinities);
* ``headroom``: log2(F.max / max|x|) in binades (negative: the largest value overflows; -inf when a
  value is infinite).

Every rounding is ``fpsim.round`` to nearest, ties to even, from the FP32 value.

The loss-scale window (``loss_scale_window``): gradients scale exactly with
the loss scale S = 2^k (every backward op is linear in the incoming gradient),
so the FP16 gradients of a step with scale 2^k are round(g * 2^k, FP16) for the
FP32 gradients g (activation and weight gradients of every module).  With
``overflows(k)`` = some g * 2^k rounds to inf and ``flushed(k)`` = the share of
non-zero g that round to zero (non-increasing in k):

* ``k_max`` = the largest k with no overflow;
* ``k_min`` = the smallest k <= k_max with flushed(k) = flushed(k_max): scaling
  beyond 2^k_min saves no further gradient from underflow;
* the window is [k_min, k_max] and ``flushed`` = flushed(k_max) is the least
  underflow any scale without overflow achieves (0 when the whole gradient
  range fits FP16's).

The window is that of the finite gradients: a gradient already inf or NaN in
FP32 is so at every scale, and the table then says that no scale keeps every
gradient finite (``Inspection.nonfinite_gradients`` counts them).

The default loss (no ``loss_fn``) is the sum of the model's output, or of its
logits when the output holds several tensors: ``output.logits`` (a Hugging
Face ``ModelOutput``), ``output["logits"]`` (a dict) or ``output[0]`` (a tuple
or list).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from ..numerics.formats import FP16, Format, get_format
from ..numerics.rounding import round as round_to
from ..sim.vocabulary import Kind
from .emulate import tensors_of
from .outputs import logits_of

KINDS = (Kind.ACTIVATIONS, Kind.ACTIVATION_GRADS, Kind.WEIGHT_GRADS)
"""The kinds one FP32 pass measures (no update is taken)."""
DEFAULT_FORMATS = ("fp16", "bf16", "e4m3", "e5m2")
_LOSS_SCALE_RANGE = 160  # k searched in [k_max - 160, k_max]: covers FP32's 277 binades from FP16's top
PLOT_FORMATS = ("png", "pdf", "svg", "svgz", "eps", "ps", "jpg", "jpeg", "tif", "tiff", "webp")
"""The figure formats ``Inspection.plot`` writes (matplotlib's, less those needing LaTeX or raw pixels), named by
the path's extension."""
BYTES_PER_KEPT_VALUE = 32
"""An upper estimate of the peak memory ``inspect`` takes per value it keeps (``kept_values``): the kept float32
copy and its flat array, the model's own tensors and autograd's saved ones, the statistics' temporaries
(measured: about 22 bytes for char-gpt at a batch of 400, 12 for cnn at 1000)."""


@dataclass
class Inspection:
    """The result of ``inspect``: one row per module and kind, the loss-scale window, the values."""

    formats: tuple
    rows: list = field(default_factory=list)
    """Dicts: module, kind, values, nonfinite (inf or NaN), nonzero (finite), max_abs, min_abs (smallest
    non-zero finite |x|), and per format name a dict of underflow, subnormal, overflow (shares) and headroom
    (binades)."""
    loss_scale_window: dict | None = None
    """k_min, k_max, flushed (share) for FP16 gradients; None without non-zero gradients."""
    values: dict = field(default_factory=dict, repr=False)
    """(module, kind) -> the FP32 values (a flat numpy array), for plots."""

    @property
    def nonfinite_gradients(self) -> int:
        """How many gradient values (activation and weight gradients) are inf or NaN in FP32."""
        return sum(row["nonfinite"] for row in self.rows if row["kind"] != "activations")

    def table(self) -> str:
        """The rows as a text table: magnitudes, then per format underflow / subnormal / overflow % and headroom."""
        names = [fmt.name for fmt in self.formats]
        header = ["module", "kind", "inf/nan", "max|x|", "min|x|>0"] + [f"{name} uf/sub/of % hr" for name in names]
        lines = [header]
        for row in self.rows:
            cells = [row["module"], row["kind"], str(row["nonfinite"]), _number(row["max_abs"]),
                     _number(row["min_abs"])]
            for name in names:
                stats = row[name]
                cells.append(f"{100 * stats['underflow']:5.1f}/{100 * stats['subnormal']:5.1f}/"
                             f"{100 * stats['overflow']:5.1f} {stats['headroom']:+6.1f}")
            lines.append(cells)
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
        text.insert(1, "  ".join("-" * width for width in widths))
        window, nonfinite = self.loss_scale_window, self.nonfinite_gradients
        if window is not None or nonfinite:
            text.append("")
        if nonfinite:
            text.append(f"{nonfinite} gradient values are already inf or NaN in FP32: no loss scale keeps every "
                        f"gradient finite")
        if window is not None:
            which = "every finite gradient" if nonfinite else "every gradient"
            text.append(f"FP16 loss scales 2^k that keep {which} finite with the least underflow: "
                        f"k in [{window['k_min']}, {window['k_max']}] "
                        f"({100 * window['flushed']:.2f}% of non-zero gradients still flush)")
        text.append("inf/nan: values already non-finite in FP32; uf: flushed to zero, sub: subnormal (shares of "
                    "non-zero finite values), of: overflow (of finite values); hr: headroom log2(max/max|x|) in "
                    "binades")
        return "\n".join(text)

    def plot(self, path) -> None:
        """Histograms of log2|x| per kind over all modules, each format's subnormal and overflow zones shaded,
        written to exactly ``path`` in the format its extension names (``plot_format``)."""
        file_format = plot_format(path)
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        figure, axes = plt.subplots(len(KINDS), 1, figsize=(9, 2.6 * len(KINDS)), sharex=True)
        magnitudes = [np.abs(v[np.isfinite(v) & (v != 0)]) for v in self.values.values()]
        magnitudes = [m for m in magnitudes if m.size]
        low = min((math.log2(m.min()) for m in magnitudes), default=-30.0)
        high = max((math.log2(m.max()) for m in magnitudes), default=0.0)
        tops = [math.log2(fmt.max) for fmt in self.formats if math.log2(fmt.max) < high + 40]  # not BF16's 2^128
        axes[0].set_xlim(low - 6, max([high, *tops]) + 3)
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for axis, kind in zip(axes, KINDS):
            arrays = [v for (module, k), v in self.values.items() if k == kind]
            magnitudes = np.abs(np.concatenate(arrays)) if arrays else np.zeros(0)
            magnitudes = magnitudes[(magnitudes > 0) & np.isfinite(magnitudes)]
            if magnitudes.size:
                axis.hist(np.log2(magnitudes), bins=120, color="0.3")
            for fmt, colour in zip(self.formats, colours):
                low, normal, top = (math.log2(fmt.smallest_subnormal), math.log2(fmt.smallest_normal),
                                    math.log2(fmt.max))
                axis.axvspan(low - 1, normal, color=colour, alpha=0.12)
                axis.axvline(low - 1, color=colour, lw=1, ls=":")
                axis.axvline(top, color=colour, lw=1, label=f"{fmt.name}: flush <= 2^{low - 1:.0f}, "
                                                            f"subnormal < 2^{normal:.0f}, max 2^{top:.1f}")
            axis.set_ylabel(f"{kind}\ncount")
        axes[0].legend(fontsize=7, loc="upper left")
        axes[-1].set_xlabel("log2 |x| (FP32 forward and backward)")
        figure.tight_layout()
        figure.savefig(path, format=file_format)
        plt.close(figure)


def inspect(model, inputs, *, loss_fn=None, formats=DEFAULT_FORMATS) -> Inspection:
    """One FP32 forward and backward of ``model`` on ``inputs``, measured against ``formats`` (see module doc).

    inputs: a tensor or a tuple of positional inputs, passed as ``model(*inputs)``, or a dict of keyword inputs,
    passed as ``model(**inputs)`` (what a Hugging Face tokenizer or collator gives:
    ``inspect(model, {"input_ids": ids, "attention_mask": mask})``).  loss_fn:
    ``loss_fn(output) -> scalar tensor``; None: the sum of the output or of its logits
    (``default_loss``).  The model's ``.grad`` fields are left as this backward pass makes them.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    formats = tuple(get_format(fmt) for fmt in ((formats,) if isinstance(formats, str) else formats))
    if not formats:
        raise ValueError("inspect needs at least one format")
    values = _capture(model, inputs, loss_fn)
    order = {path: i for i, (path, _) in enumerate(model.named_modules())}
    result = Inspection(formats=formats)
    for (path, kind) in sorted(values, key=lambda key: (KINDS.index(key[1]), order.get(key[0], 0))):
        flat = np.concatenate([t.reshape(-1).numpy() for t in values[(path, kind)]])
        result.values[(path, kind)] = flat
        result.rows.append({"module": path, "kind": kind, **value_statistics(flat, formats)})
    gradients = [v for (path, kind), v in result.values.items() if kind != "activations"]
    if gradients:
        result.loss_scale_window = loss_scale_window(np.concatenate(gradients))
    return result


def kept_values(model, inputs, *, loss_fn=None) -> int:
    """How many values ``inspect(model, inputs, loss_fn=loss_fn)`` keeps (activations, their gradients, weight
    gradients), from the same forward and backward pass without the statistics; ``BYTES_PER_KEPT_VALUE`` times
    it estimates the memory the inspection takes."""
    return sum(tensor.numel() for tensors in _capture(model, inputs, loss_fn).values() for tensor in tensors)


def _capture(model, inputs, loss_fn) -> dict:
    """(module path, kind) -> the FP32 tensors of one forward and backward of ``model`` (see ``inspect``)."""
    if not isinstance(inputs, (tuple, Mapping)):
        inputs = (inputs,)
    values: dict = {}
    handles = []

    def capture(path):
        def hook(module, args, output):
            for tensor in tensors_of(output):
                if tensor.is_floating_point():
                    values.setdefault((path, "activations"), []).append(tensor.detach().float().clone())
                    if tensor.requires_grad:
                        tensor.register_hook(lambda grad: values.setdefault((path, "activation_grads"), []).append(
                            grad.detach().float().clone()))
        return hook

    leaves = [(name or "model", module) for name, module in model.named_modules() if not any(module.children())]
    for path, module in leaves:
        handles.append(module.register_forward_hook(capture(path)))
    try:
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            output = model(**inputs) if isinstance(inputs, Mapping) else model(*inputs)
            loss = default_loss(output) if loss_fn is None else loss_fn(output)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError("loss_fn must return a scalar tensor")
            loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    seen = set()
    for name, module in model.named_modules():
        for parameter in module.parameters(recurse=False):
            if parameter.grad is not None and id(parameter) not in seen:
                seen.add(id(parameter))
                values.setdefault((name or "model", "weight_grads"), []).append(parameter.grad.detach().float())
    return values


def plot_format(path) -> str:
    """The figure format ``path``'s extension names (one of ``PLOT_FORMATS``); ValueError, one line, otherwise:
    the figure is written to exactly ``path``, never to a name matplotlib would complete."""
    extension = os.path.splitext(os.fspath(path))[1][1:].lower()
    if extension not in PLOT_FORMATS:
        raise ValueError(f"the figure's format is its file's extension: name a file ending in "
                         f"{', '.join('.' + name for name in PLOT_FORMATS)}")
    return extension


def default_loss(output) -> torch.Tensor:
    """The sum of ``output`` (a tensor) or of its logits (``fpsim.torch.outputs.logits_of``: ``output.logits``,
    ``output["logits"]`` or ``output[0]``); TypeError, one line, when none of them is a tensor."""
    logits = logits_of(output)
    if logits is None:
        raise TypeError(f"inspect's default loss sums the model's logits, and its {type(output).__name__} output "
                        f"has none (no tensor as .logits, ['logits'] or [0]): pass loss_fn=lambda output: ...")
    return logits.sum()


def value_statistics(x: np.ndarray, formats) -> dict:
    """values, nonfinite, nonzero, max_abs, min_abs and, per format name, underflow / subnormal / overflow
    shares and headroom of the values ``x`` (see the module docstring)."""
    finite = x[np.isfinite(x)]
    magnitudes = np.abs(finite)
    nonzero = magnitudes[magnitudes > 0]
    infinite = np.isinf(x).any()
    out = {"values": int(x.size), "nonfinite": int(x.size - finite.size), "nonzero": int(nonzero.size),
           "max_abs": math.inf if infinite else float(magnitudes.max()) if magnitudes.size else 0.0,
           "min_abs": float(nonzero.min()) if nonzero.size else 0.0}
    for fmt in formats:
        rounded = np.abs(round_to(finite, fmt))
        kept = rounded[magnitudes > 0]
        out[fmt.name] = {
            "underflow": _share(np.count_nonzero(kept == 0), nonzero.size),
            "subnormal": _share(np.count_nonzero((kept > 0) & (kept < fmt.smallest_normal)), nonzero.size),
            "overflow": _share(np.count_nonzero(~np.isfinite(rounded)), finite.size),
            "headroom": _headroom(fmt, out["max_abs"]),
        }
    return out


def loss_scale_window(gradients: np.ndarray, fmt: Format = FP16) -> dict | None:
    """k_min, k_max and flushed of the loss scales 2^k for ``gradients`` in ``fmt`` (see the module docstring)."""
    g = np.abs(gradients[np.isfinite(gradients)].astype(np.float64))
    g = g[g > 0]
    if not g.size:
        return None
    largest = float(g.max())
    k_max = math.floor(math.log2(fmt.max / largest)) + 1
    while not np.isfinite(round_to(math.ldexp(largest, k_max), fmt)):  # at most two steps down
        k_max -= 1

    def flushed(k: int) -> int:
        return int(np.count_nonzero(round_to(np.ldexp(g, k), fmt) == 0))

    least = flushed(k_max)
    low, high = k_max - _LOSS_SCALE_RANGE, k_max  # flushed(low) >= least; find the smallest k with equality
    while low < high:
        middle = (low + high) // 2
        if flushed(middle) == least:
            high = middle
        else:
            low = middle + 1
    return {"k_min": low, "k_max": k_max, "flushed": least / g.size}


def _headroom(fmt: Format, max_abs: float) -> float:
    """log2(fmt.max / max_abs): inf for no non-zero value, -inf for an infinite one."""
    if max_abs == math.inf:
        return -math.inf
    return math.log2(fmt.max / max_abs) if max_abs > 0 else math.inf


def _share(count: int, total: int) -> float:
    return count / total if total else 0.0


def _number(value: float) -> str:
    return f"{value:.3g}" if value else "0"
