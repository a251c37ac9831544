"""The claims the report judges, and how a claim is judged on a model.

A verdict is one of ``VERDICTS``, on one of ``MODELS`` (the built-in models'
labels, ``fpsim.sim.vocabulary``) or on no model.  The claims judged on several
models share one text (``CLAIM_*``), so the summary puts their verdicts in one
row group.

A policy is compared with a reference on the same seeds (``fpsim.report.stats.
paired_comparison``): the mean paired difference d = a - b with its 95% t
interval [low, high].  It trains "as well as" the reference when the whole
interval lies inside the model's band [-band, +band] (``within``; a TOST-style
equivalence check): one point of accuracy for the MLP and the conv net, 1% of the
reference's mean bits per character for the transformer
(``BuiltinModel.band``).  It is "better" at p < 0.05 when the paired t-test says
so and d points the model's better way (``BuiltinModel.gain``).
"""

from __future__ import annotations

from ..sim.vocabulary import BY_LABEL, MODELS as BUILTIN_MODELS
from .experiments import accuracy, bits_per_character
from .stats import mean_ci, paired_comparison

VERDICTS = ("holds", "holds under conditions", "not supported by the evidence")
"""The verdicts a claim can get."""

MODELS = tuple(model.label for model in BUILTIN_MODELS.values())
"""The models a claim gets a verdict on (``Verdict.model``), in the summary's order: MLP, conv net, transformer."""

CLAIM_RECIPE = "(a) the recipe (FP16 compute, FP32 master weights, loss scaling) trains as well as FP32"
CLAIM_ACCURACY = "(e) FP16 mixed precision raises test accuracy (regularisation)"
CLAIM_RANGE = "(f) BF16's range is more robust than FP16's"
CLAIM_DELAYED = "(g) FP8 per-tensor delayed scaling is not needed: current scaling trains as well (torchao, 2025)"
CLAIM_MX_FLOOR = "(h) the MX spec's floor-rounded scales make gradients diverge; rounding them up matches BF16"
CLAIM_PROMOTION = ("(i) FP8 training on Hopper needs FP32 promotion of the accumulator (DeepSeek-V3; Transformer "
                   "Engine's split accumulation)")
CLAIM_NVFP4 = ("(j) each component of the NVFP4 recipe (2-D weight scaling, stochastically rounded gradients, the "
               "random Hadamard transform, the last layers in BF16) helps, and the whole recipe trains within 1-1.5% "
               "of FP8's loss (NVIDIA, arXiv 2509.25149)")
CLAIM_BLOCKWISE = ("(k) DeepSeek-V3's blockwise FP8 (1x128 tiles, 128x128 weight blocks) trains within 0.25% of BF16's "
                   "loss, and 128x128 blocks for the activation gradients train worse than 1x128 tiles")

SIGNIFICANCE = 0.05
"""A paired difference is significant when its t-test p-value lies below this."""


def score(model: str, result: dict) -> float | None:
    """``model``'s score of a run (``BuiltinModel.score``); None for a run that diverged or left no finite
    loss: such a run is reported, not compared."""
    return BY_LABEL[model].score(result)


def final_score(model: str, result: dict) -> float | None:
    """The score of the weights a run ended with, whether or not it diverged: the test accuracy (0 when
    missing) for a classifier, the bits per character (None without a finite loss) for the transformer."""
    return bits_per_character(result) if BY_LABEL[model].score_name == "bits per character" else accuracy(result)


def band(model: str, reference_scores) -> float:
    """The "as well as" band of ``model`` around a reference that scored ``reference_scores``."""
    return BY_LABEL[model].band(reference_scores)


def within(test: dict | None, tolerance: float) -> bool:
    """Whether the 95% interval of the paired difference ``test`` lies inside [-tolerance, +tolerance]."""
    return test is not None and -tolerance <= test["low"] and test["high"] <= tolerance


def better(model: str, test: dict | None) -> bool:
    """Whether the paired difference ``test`` (a - b) says a scores better than b on ``model`` at p < 0.05."""
    return test is not None and BY_LABEL[model].gain(test["mean_difference"]) > 0 \
        and test["t_test_p"] < SIGNIFICANCE


def unit(model: str) -> tuple[str, float]:
    """The unit of ``model``'s score differences and the factor into it (points: 100)."""
    spec = BY_LABEL[model]
    return spec.unit, spec.unit_scale


def tolerance_text(model: str, tolerance: float) -> str:
    """``tolerance`` in ``model``'s unit: "+-1 points", "+-0.0312 bits per character"."""
    name, scale = unit(model)
    return f"+-{scale * tolerance:.3g} {name}"


def difference_text(model: str, test: dict | None, *, wilcoxon: bool = False, lower_is_better: bool = False) -> str:
    """A paired difference in one line: mean and 95% interval in ``model``'s unit, the t-test's p (and the
    Wilcoxon test's, ``wilcoxon``); ``lower_is_better``: say "(negative: better)" where lower scores are."""
    if test is None:
        return "not compared (a run diverged: no finite validation loss)"
    name, scale = unit(model)
    note = " (negative: better)" if lower_is_better and not BY_LABEL[model].higher_is_better else ""
    interval = f"95% CI {scale * test['low']:+.3f} to {scale * test['high']:+.3f}"
    tests = (f"; paired t p = {test['t_test_p']:.2g}, Wilcoxon p = {test['wilcoxon_p']:.2g}" if wilcoxon
             else f", paired t p = {test['t_test_p']:.2g}")
    return f"{scale * test['mean_difference']:+.3f} {name}{note} ({interval}{tests})"


def score_table(model: str, scores: dict[str, list], reference: str, *, no_score: str, wilcoxon: bool = False,
                columns: dict[str, dict] | None = None) -> tuple[list[dict], dict]:
    """Each policy of ``scores`` (name -> its runs' scores, seed by seed) against ``reference``'s runs on the
    same seeds: (rows, paired comparisons by (model, policy)).

    A row holds the mean score with its 95% t interval and, but for the reference, the paired difference
    (minus the reference) with its interval and p-values (``wilcoxon``: the Wilcoxon test's too).  A policy
    with a run without a score (None) gets a row saying how many (``no_score``: why, e.g. "no finite loss")
    and no comparison; so does every policy's comparison when the reference has one.  ``columns``: more
    columns per policy, after the seed count.
    """
    rows, tests = [], {}
    base = scores[reference]
    for name, values in scores.items():
        row = {"model": model, "policy": name, "seeds": len(values), **(columns or {}).get(name, {})}
        if None in values:
            rows.append({**row, "diverged": f"{values.count(None)} of {len(values)} seeds ({no_score})"})
            continue
        ci = mean_ci(values)
        row.update({"mean": ci["mean"], "95% CI low": ci["low"], "95% CI high": ci["high"]})
        if name != reference and None not in base:
            t = tests[(model, name)] = paired_comparison(values, base[:len(values)])
            row.update({f"minus {reference}": t["mean_difference"], "diff CI low": t["low"], "diff CI high": t["high"],
                        "paired t p": t["t_test_p"], **({"Wilcoxon p": t["wilcoxon_p"]} if wilcoxon else {})})
        rows.append(row)
    return rows, tests
