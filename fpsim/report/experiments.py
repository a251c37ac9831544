"""Machinery the training analyses share: running trainings through ``fpsim.sweep``, and reading
what the runs recorded (log2 histograms, loss curves, per-policy summaries).

A histogram (``TrainResult.histograms``) counts, for one step, tensor kind and
layer, the values with ``2^e <= |x| < 2^(e+1)`` for consecutive exponents ``e``
from ``min_exponent``, taken before rounding; so the share of values below
``2^t`` (t an integer) is the share in bins ``e < t``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..runs.sweep import sweep
from ..sim.config import MLP_HIDDEN
from ..sim.policy import SCALED_POLICIES
from ..sim.recorder import Recorder
from ..sim.scaling import ScaledCasts, Scaling


def run_trainings(ctx, configs: list[dict]) -> list[dict]:
    """Run the training ``configs`` through ``fpsim.sweep`` on the report's shared store and executor.

    Returns the ``TrainResult`` dicts in the order of ``configs``; raises RuntimeError naming the
    failed runs if any failed (the analysis is then reported as failed).
    """
    records = sweep(configs, store=ctx.store, executor=ctx.executor(), progress=ctx.progress)
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(records)} training runs failed; first: {failed[0]['error']} "
                           f"(config {failed[0]['config']})")
    return [r["result"] for r in records]


def pow2_label(value: float) -> str:
    """``2^k`` for a power of two, else the number."""
    if value > 0:
        k = math.log2(value)
        if k == int(k):
            return f"2^{int(k)}"
    return f"{value:g}"


# --- histograms -------------------------------------------------------------------------------

def histogram_of(result: dict, kind: str, layer: int | None = None, step: int | None = None, modules=None):
    """Summed histogram of ``kind`` over the chosen layer(s) (or module paths ``modules``) and step(s):
    (exponents, counts, zeros).

    ``exponents[i]`` is e for the bin 2^e <= |x| < 2^(e+1); the histograms were taken before rounding.
    """
    chosen = [h for h in result["histograms"] if h["kind"] == kind
              and (layer is None or h["layer"] == layer) and (step is None or h["step"] == step)
              and (modules is None or h["module"] in modules)]
    if not chosen:
        raise ValueError(f"no histogram of {kind} (layer {layer}, modules {modules}, step {step}) in this result")
    low = min(h["min_exponent"] for h in chosen)
    high = max(h["min_exponent"] + len(h["counts"]) for h in chosen)
    counts = np.zeros(max(high - low, 0), dtype=np.int64)
    for h in chosen:
        start = h["min_exponent"] - low
        counts[start:start + len(h["counts"])] += np.asarray(h["counts"], dtype=np.int64)
    return np.arange(low, high), counts, sum(h["zeros"] for h in chosen)


def histogram_steps(result: dict) -> list[int]:
    return sorted({h["step"] for h in result["histograms"]})


def share_below(exponents, counts, power: int) -> float:
    """Share of the non-zero values with |x| < 2^power."""
    total = counts.sum()
    return float(counts[exponents < power].sum() / total) if total else 0.0


def share_after_scaling(exponents, counts, k: int, lowest: int, highest: int) -> dict:
    """Shares of the non-zero values that, multiplied by 2^k, fall below 2^lowest (lost), at or above
    2^(highest+1) (overflow) or between (kept); ``rescued``: lost without scaling but kept with it."""
    total = counts.sum()
    if not total:
        return {"k": k, "lost": 0.0, "overflow": 0.0, "kept": 0.0, "rescued": 0.0}
    scaled = exponents + k
    lost = counts[scaled < lowest].sum() / total
    over = counts[scaled > highest].sum() / total
    rescued = counts[(exponents < lowest) & (scaled >= lowest) & (scaled <= highest)].sum() / total
    return {"k": k, "lost": float(lost), "overflow": float(over), "kept": float(1 - lost - over),
            "rescued": float(rescued)}


# --- curves and summaries ------------------------------------------------------------------------

def loss_curve(result: dict, window: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Training loss per step (skipped and non-finite steps left out), smoothed by a running mean of ``window``."""
    steps = np.array([r["step"] for r in result["history"] if r["loss"] is not None and not r["skipped"]])
    loss = np.array([r["loss"] for r in result["history"] if r["loss"] is not None and not r["skipped"]])
    if loss.size >= window > 1:
        kernel = np.ones(window) / window
        loss = np.convolve(loss, kernel, mode="valid")
        steps = steps[window - 1:]
    return steps, loss


def accuracy(result: dict) -> float:
    """Test accuracy, 0 for a diverged run whose accuracy is missing."""
    return float(result["test_accuracy"]) if result["test_accuracy"] is not None else 0.0


# --- the shared grid ------------------------------------------------------------------------------
# Analyses that ask for the same configuration get the stored run (the sweep store is shared), so
# loss_scaling, bf16_range and claims use one grid of gradient magnitudes and one run length.

GRID_GRAD_SCALES = (1.0, 2.0 ** -8, 2.0 ** -16, 2.0 ** -24)
"""Gradient magnitudes of the grid: every gradient multiplied by these (fpsim.train's grad_scale)."""
QUICK_GRID_GRAD_SCALES = (1.0, 2.0 ** -16)
DIGITS_MLP = (64, *MLP_HIDDEN, 10)
"""The grid's MLP by its widths: digits' 64 inputs, the default hidden layers, 10 classes."""


def grid_steps(ctx) -> int:
    """Steps of each grid run (SGD, lr 0.05, batch 64 on digits: about 36 epochs in the full run)."""
    return ctx.pick(60, 800)


def grid_grad_scales(ctx) -> tuple:
    return ctx.pick(QUICK_GRID_GRAD_SCALES, GRID_GRAD_SCALES)


def grid_growth_interval(ctx) -> int:
    """Clean steps before the grid's dynamic loss scale doubles.

    GradScaler's default, 2000, is longer than a whole grid run (800 steps), so
    the scale would stay at its initial 2^16 and "dynamic" would mean constant
    2^16.  An eighth of the run lets it grow, overflow and back off as it does
    over a long training.
    """
    return grid_steps(ctx) // 8


def grid_config(ctx, policy, grad_scale: float, seed: int = 0, **options) -> dict:
    """A grid run: ``policy`` on digits, the default MLP and SGD, ``grid_steps`` steps.

    A dynamic loss scale (fp16-amp) grows every ``grid_growth_interval`` clean
    steps unless ``options`` give a ``scaler``; its other settings are GradScaler's.
    """
    if policy == "fp16-amp" and "scaler" not in options:
        options["scaler"] = {"growth_interval": grid_growth_interval(ctx)}
    return dict(policy=policy, grad_scale=grad_scale, steps=grid_steps(ctx), seed=seed, **options)


# --- BF16's range against its precision (bf16_range, claims (f)) ---------------------------------------

RANGE_POLICIES = ("fp32", "fp16-pure", "fp16-mixed", "fp16-amp", "bf16-pure", "bf16-mixed")
PRECISION_LRS = (0.001, 0.003, 0.01, 0.05, 0.2)
PRECISION_POLICIES = ("fp32", "fp16-pure", "bf16-pure")
"""16-bit weights without a master copy, and FP32 as the reference at each learning rate."""


def range_and_precision(ctx) -> dict:
    """The runs of the range-against-precision trade, summarised.

    ``range``: one row per policy in RANGE_POLICIES and grid gradient magnitude (lr 0.05): accuracy and
    underflow.  ``precision``: PRECISION_POLICIES at PRECISION_LRS (gradients as they are): lost
    updates and accuracy.
    """
    scales = grid_grad_scales(ctx)
    range_configs = [grid_config(ctx, p, gs) for gs in scales for p in RANGE_POLICIES]
    lrs = ctx.pick((0.003, 0.05), PRECISION_LRS)
    precision_configs = [dict(policy=p, lr=lr, steps=grid_steps(ctx), grad_scale=1.0, seed=0)
                         for p in PRECISION_POLICIES for lr in lrs]
    results = run_trainings(ctx, range_configs + precision_configs)
    range_rows = [{"policy": c["policy"], "grad_scale": c["grad_scale"], "test_accuracy": accuracy(r),
                   "weight_grad_underflow": r["weight_grad_underflow_fraction"],
                   "activation_grad_underflow": r["activation_grad_underflow_fraction"],
                   "lost_update_fraction": r["lost_update_fraction"], "skipped_steps": r["skipped_steps"]}
                  for c, r in zip(range_configs, results)]
    precision_rows = [{"policy": c["policy"], "lr": c["lr"], "test_accuracy": accuracy(r),
                       "lost_update_fraction": r["lost_update_fraction"],
                       "lost_update_magnitude_fraction": r["lost_update_magnitude_fraction"]}
                      for c, r in zip(precision_configs, results[len(range_configs):])]
    return {"steps": grid_steps(ctx), "grad_scales": list(scales), "lrs": list(lrs),
            "range": range_rows, "precision": precision_rows}


# --- the real models: char-gpt and the cnn (torch engine) ------------------------------------------
# Every analysis of these models builds its runs here, so that the report's shared sweep store runs each
# configuration once (transformer_underflow's policy comparison is claims_models' seed runs).

GPT_OPTIONS = {"n_layer": 2, "n_head": 4, "n_embd": 32, "block_size": 32, "tie_weights": False}
"""char-gpt in the full run: 2 pre-LayerNorm blocks of width 32, 4 heads, 32 characters of context,
sized so that the report's 40-odd transformer runs fit its time budget on 2 cores.  The head has its own
weight (GPT-2 ties it to the token embedding): the emulation recognises a weight gradient by the tensor
its parameter receives, and a tied weight receives the sum of two, so the head's would be counted as an
activation gradient."""
GPT_QUICK_OPTIONS = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "tie_weights": False}
GPT_TRAINING = {"optimizer": "adam", "lr": 3e-3}
"""Adam at nanoGPT's small-model learning rate order (betas 0.9, 0.999; eps 1e-8), no weight decay."""
CNN_TRAINING = {"optimizer": "adam", "lr": 1e-2}
"""Adam at 1e-2: 84% test accuracy on MNIST-1D after 500 FP32 steps, 92% after 1500 (3e-3: 56%, 84%)."""


def gpt_steps(ctx) -> int:
    return ctx.pick(40, 400)


def gpt_batch(ctx) -> int:
    return ctx.pick(8, 32)


def cnn_steps(ctx) -> int:
    return ctx.pick(60, 800)


def model_seeds(ctx) -> list[int]:
    """Seeds of the multi-seed comparisons on the real models (each seed: initial weights and batch order)."""
    return list(range(ctx.pick(2, 5)))


def gpt_config(ctx, policy, seed: int = 0, **options) -> dict:
    """A char-gpt run on the pydoc text (GPT_OPTIONS, GPT_TRAINING, ``gpt_steps`` steps of ``gpt_batch``
    windows); ``options`` override or add TrainConfig fields."""
    config = dict(policy=policy, model="char-gpt", model_options=ctx.pick(GPT_QUICK_OPTIONS, GPT_OPTIONS),
                  steps=gpt_steps(ctx), batch_size=gpt_batch(ctx), seed=seed, **GPT_TRAINING)
    return _dynamic_scaler(config | options)


def cnn_config(ctx, policy, seed: int = 0, **options) -> dict:
    """A cnn run on MNIST-1D (the model's defaults: 3 stride-2 convolutions of 32 channels), CNN_TRAINING,
    batch 64, ``cnn_steps`` steps."""
    config = dict(policy=policy, model="cnn", steps=cnn_steps(ctx), batch_size=64, seed=seed, **CNN_TRAINING)
    return _dynamic_scaler(config | options)


def _dynamic_scaler(config: dict) -> dict:
    """A dynamic loss scale (fp16-amp) that grows after an eighth of the run's steps of clean steps, as the
    MLP grid's does (``grid_growth_interval``: GradScaler's 2000 is longer than these runs)."""
    if config["policy"] == "fp16-amp" and "scaler" not in config:
        config["scaler"] = {"growth_interval": max(config["steps"] // 8, 1)}
    return config


def bits_per_character(result: dict) -> float | None:
    """Validation loss of a char-gpt run in bits per character (its ``test_loss`` is in nats); None when
    the run left no finite loss."""
    return result["test_loss"] / math.log(2) if result["test_loss"] is not None else None


def max_binade(result: dict, kind: str, module: str | None = None, step: int | None = None) -> int | None:
    """The largest e with a recorded |x| in [2^e, 2^(e+1)) among the histograms of ``kind`` (one module and
    step, or all); None when nothing non-zero was recorded."""
    tops = [h["min_exponent"] + len(h["counts"]) - 1 for h in result["histograms"] if h["kind"] == kind
            and h["counts"] and (module is None or h["module"] == module) and (step is None or h["step"] == step)]
    return max(tops) if tops else None


MODULE_KINDS = ("embedding", "attention", "MLP", "LayerNorm", "head", "residual stream", "loss")
"""What each module path of char-gpt is (``module_kind``): the kinds the transformer analyses group by."""


def kind_colour(kind: str) -> str:
    """One colour per module kind (MODULE_KINDS), the same in every figure."""
    import matplotlib

    return matplotlib.colormaps["tab10"](MODULE_KINDS.index(kind))


def module_kind(path: str) -> str:
    """The kind of char-gpt module ``path`` names: embedding (wte, wpe), attention (attn and its c_attn,
    c_proj), MLP (mlp and its c_fc, gelu, c_proj), LayerNorm (ln_1, ln_2, ln_f), head (lm_head); the ops
    of a block or of the model itself (residual sums, embedding sum) are the residual stream, and the ops
    outside the model's forward (the cross-entropy) the loss."""
    last = path.split(".")
    if last[-1] in ("wte", "wpe"):
        return "embedding"
    if "attn" in last:
        return "attention"
    if "mlp" in last:
        return "MLP"
    if last[-1].startswith("ln_"):
        return "LayerNorm"
    if last[-1] == "lm_head":
        return "head"
    if path == "(outside)":
        return "loss"
    return "residual stream"


def modules_by_kind(result: dict) -> dict:
    """{kind: [module paths]} of the modules in ``result``'s histograms, kinds in MODULE_KINDS order."""
    paths = dict.fromkeys(h["module"] for h in result["histograms"])
    grouped = {kind: [p for p in paths if module_kind(p) == kind] for kind in MODULE_KINDS}
    return {kind: paths for kind, paths in grouped.items() if paths}


FORCED_STREAM_SCALE = 2.0 ** 16
"""transformer_overflow's forced condition: char-gpt's residual stream carried 2^16 times larger
(``GPTConfig.stream_scale``: the embeddings and every branch output multiplied by it), so that its values lie
where T5's hidden states did (up to 2.75e5, about 2^18).  The pre-LayerNorm model computes the same function at
any scale, and is trained as by default (GPT_TRAINING, ``gpt_steps``)."""
FORCED_POLICIES = ("fp32", "fp16-amp", "bf16-mixed")


def forced_histogram_steps(ctx) -> list[int]:
    """Steps at which transformer_overflow's FP32 runs record histograms of their values (their largest |x|)."""
    return sorted({int(s) for s in np.linspace(0, gpt_steps(ctx) - 1, ctx.pick(5, 21))})


def forced_configs(ctx) -> list[dict]:
    """char-gpt with its stream at FORCED_STREAM_SCALE in each of FORCED_POLICIES, seed 0, trained as by
    default; the FP32 run records histograms at ``forced_histogram_steps``."""
    options = ctx.pick(GPT_QUICK_OPTIONS, GPT_OPTIONS) | {"stream_scale": FORCED_STREAM_SCALE}
    configs = [gpt_config(ctx, p, model_options=options) for p in FORCED_POLICIES]
    configs[0].update(histograms=True, histogram_steps=forced_histogram_steps(ctx))
    return configs


def first_forward_overflow(result: dict) -> int | None:
    """The first step whose forward pass overflowed (a value finite before rounding, inf after); None if none."""
    return next((h["step"] for h in result["history"] if h["overflow"]["activations"]), None)


def forward_overflows(result: dict) -> int:
    """Values that were finite before rounding to the activation format and inf/NaN after, over the run."""
    return sum(h["overflow"]["activations"] for h in result["history"])


# --- FP8 / MX scaling: variants of the presets, and what the scaled casts recorded ----------------------------

@dataclass(frozen=True)
class ScaleRounding:
    """A scaled preset whose block scales of some tensor kinds round another way than the preset's: the
    policy a run takes is the preset with those kinds' ``Scaling.block_of(block, rounding)``."""

    preset: str
    """The scaled preset (``fpsim.sim.policy.SCALED_POLICIES``), e.g. "mxfp8"."""
    rounding: tuple[tuple[str, str], ...]
    """(tensor kind, E8M0 scale rounding) pairs, e.g. (("gradients", "rceil"),)."""
    label: str
    """What the variant does, in words; its name is "PRESET LABEL"."""

    @property
    def name(self) -> str:
        return f"{self.preset} {self.label}"

    def policy(self) -> dict:
        """The policy as ``TrainConfig(policy=...)`` takes it: the preset's name, this name and every scaling."""
        scaling = dict(SCALED_POLICIES[self.preset].scaling)
        for kind, rounding in self.rounding:
            scaling[kind] = Scaling.block_of(scaling[kind].block, rounding)
        return {"preset": self.preset, "name": self.name, "scaling": {kind: s.to_dict() for kind, s in scaling.items()}}


def saturated_values(result: dict, kind: str | None = None) -> int:
    """Operand values the run's scaled casts saturated at the element format's max, over every step (of the
    tensor ``kind``, or all)."""
    return sum(sum(h.get("saturated", {}).values()) if kind is None else h.get("saturated", {}).get(kind, 0)
               for h in result["history"])


def cast_values(result: dict, kind: str | None = None) -> int:
    """Operand values the run's scaled casts cast, over every step (of the tensor ``kind``, or all)."""
    return sum(sum(t["values"]) for t in result["scaling"] if kind is None or t["kind"] == kind)


def operand_shares(result: dict) -> dict:
    """Per module with scaled casts: the share of its non-zero activation-gradient and activation operands
    flushed to zero, and of all its operands saturated."""
    saturated = {}
    for trace in result["scaling"]:
        entry = saturated.setdefault(trace["module"], [0, 0])
        entry[0] += sum(trace["saturated"])
        entry[1] += sum(trace["values"])
    out = {}
    for layer in result["layers"]:
        if layer["module"] not in saturated:
            continue
        grads, acts = layer["activation_grads"], layer["activations"]
        out[layer["module"]] = {
            "gradients flushed": grads["underflow"] / grads["nonzero"] if grads["nonzero"] else 0.0,
            "activations flushed": acts["underflow"] / acts["nonzero"] if acts["nonzero"] else 0.0,
            "saturated": saturated[layer["module"]][0] / max(saturated[layer["module"]][1], 1)}
    return out


def scripted_amax_jump(edges=(20, 40, 60)) -> list[dict]:
    """A tensor of 4096 standard normal values times an amplitude of 1 up to step ``edges[0]``, 64 up to
    ``edges[1]``, then 1/64 up to ``edges[2]``, cast by current and by delayed scaling (E4M3, the fp8 presets'
    recipes) each step: the shares saturated and flushed, and log2 of the scale's unit X."""
    rng = np.random.default_rng(0)
    rows = []
    for name in ("fp8-current", "fp8-delayed"):
        recorder = Recorder()
        casts = ScaledCasts(SCALED_POLICIES[name], recorder)
        for step in range(edges[-1]):
            amplitude = 1.0 if step < edges[0] else 64.0 if step < edges[1] else 1 / 64
            values = (rng.standard_normal(4096) * amplitude).astype(np.float32)
            recorder.start_step(step)
            casts.cast(values, "activations", "x")
            record = recorder.end_step(loss=0.0, loss_scale=1.0, skipped=False)
            casts.end_step()
            rows.append({"policy": name, "step": step, "amplitude": amplitude,
                         "saturated": record["saturated"]["activations"] / values.size,
                         "flushed": record["underflow"]["activations"] / values.size,
                         "log2 X": recorder.scaling[0]["log2_scale_min"][-1]})
    return rows


# --- what was run, from the configurations ----------------------------------------------------------------

OPTIMIZER_NAMES = {"sgd": "SGD", "momentum": "SGD with momentum", "adam": "Adam", "adamw": "AdamW"}
"""How the report writes each optimizer (``fpsim.sim.vocabulary.OPTIMIZERS``)."""


def describe_runs(configs: list[dict]) -> str:
    """What ``configs`` (runs differing only in policy and seed) train, read from their ``TrainConfig``:
    "fpsim.train on DATA, MODEL, OPTIMIZER lr LR, batch B, N steps, seeds 0..K for each of POLICIES" (an MLP
    named by its widths, inputs to classes)."""
    from ..sim.config import TrainConfig
    from ..sim.data import load_data

    full = [TrainConfig.from_dict(dict(c)) for c in configs]
    first = full[0]
    shared = {(c.model, c.data, c.hidden, c.optimizer, c.lr, c.batch_size, c.steps) for c in full}
    if len(shared) > 1:
        raise ValueError("describe_runs describes runs that differ only in policy and seed: describe each group")
    if first.model == "mlp":
        data = load_data(first.data)
        model = "MLP " + "-".join(map(str, (data.inputs, *first.hidden, data.outputs)))
    else:
        model = first.model
    seeds = sorted({c.seed for c in full})
    policies = ", ".join(dict.fromkeys(c.policy.name for c in full))
    return (f"fpsim.train on {first.data}, {model}, {OPTIMIZER_NAMES[first.optimizer]} lr {first.lr:g}, batch "
            f"{first.batch_size}, {first.steps} steps, seeds {seeds[0]}..{seeds[-1]} for each of {policies}")
