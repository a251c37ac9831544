"""Precision policies: which format every tensor of a training step lives in.

A ``Policy`` is the whole numerical recipe of mixed-precision training as data.
The training step (``fpsim.sim.step``, where the recipe is stated) reads its fields:

1. cast: the master weights (``master``) to ``params`` (with no ``master``, the
   weights are stored in ``params`` and used as they are);
2. forward and backward: matrix products accumulated in ``accumulate``, their
   results rounded to ``activations`` (forward) or ``gradients`` (activation and
   weight gradients); softmax and cross-entropy in ``loss`` (FP32, as autocast
   does); the loss multiplied by ``loss_scale``;
3.-4. unscale and check: only with a ``loss_scale`` is a step with inf/NaN skipped;
5. update: the optimizer's state in ``optimizer_state``, the update rounded into the
   weights' format with ``update_rounding``, optionally Kahan-compensated (``kahan``).

Every preset accumulates matrix products in FP32 (IEEE, correctly rounded after each
product); a policy with ``accumulate="fp16"`` is one field away, and one with
``accumulate="H100"`` (any GPU model of ``fpsim.hardware``) computes every matrix
product as that GPU's tensor core does (``fpsim.matmul(accumulate=GPU)``: fused steps,
truncated alignment, FP32 output rounded toward zero), with ``fast_accumulation``
and ``promote_every`` saying where the FP8 products promote their partial sums to FP32.

A policy with a ``scaling`` recipe (FP8 / MX training, ``SCALED_POLICIES``) reads
step 2 as the FP8 recipes run it (torchao's ``Float8Linear``, Transformer Engine's
``fp8_autocast``, both over an FP32 model): only the operands of the matrix
products (linear layers and convolutions, forward and backward) are quantized,
the weights as ``params``, the activations entering a product as ``activations``
and the gradients entering one as ``gradients``, each scaled by its recipe
(``fpsim.sim.scaling.ScaledCasts``); the products' outputs and every other
operation (attention included, which both libraries leave in high precision by
default) stay in FP32.  Scaling ``none`` is that placement without scales: plain
FP8 casts.

Per-module precision (``overrides``): a policy may give some modules another policy, by module-path
patterns (``{"lm_head": "bf16-mixed"}``, ``{"last 15% of *": "bf16-mixed"}``); those modules' operations
compute under it, in both engines (``Policy.resolve_overrides`` is the one place the patterns are read).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import os
import re
from dataclasses import dataclass

from ..numerics.formats import BF16, E2M1, E4M3, E5M2, FORMATS, FP16, FP32, TF32, Format, get_format
from ..ops.quantize import PRESETS
from ..ops.reductions import _accumulate_format
from ..ops.tensor_cores import input_path, parse_gpu
from .loss_scaling import loss_scale_of
from .scaling import Scaling, delayed_scaled_max
from .vocabulary import OPERAND_KINDS

UPDATE_ROUNDINGS = ("nearest", "stochastic")
"""How an update is rounded into the stored weights: to nearest (ties to even) or stochastically."""

OP_PLACEMENTS = ("autocast-cuda", "autocast-cpu", "low-precision")
"""Which operations compute in the low-precision formats: ``"autocast-cuda"`` places them as CUDA's
``torch.autocast`` does (matrix products in 16 bits; softmax, norms, exp/log, sums and losses in FP32; other
ops in the precision of their inputs), ``"autocast-cpu"`` as CPU's ``torch.autocast("cpu")`` does (the same
products; only the losses and a few others in FP32: softmax, norms, exp/log and sums in the precision of
their inputs), each one table of ``fpsim.torch.placement`` with its source; ``"low-precision"`` runs every
operation in them (pure 16-bit, ``model.half()``)."""

PLACEMENT_ALIASES = {"autocast": "autocast-cuda"}
"""Older spellings of ``OP_PLACEMENTS``, read (saved policies, ``{"placement": "autocast"}``) as the name
they stand for."""

_FORMAT_FIELDS = ("params", "activations", "gradients", "accumulate", "optimizer_state", "loss")
"""The fields that hold a Format (``accumulate`` may instead name a GPU model: ``Policy.tensor_core``)."""

FAST_ACCUMULATIONS = ("forward", "all", "none")
"""Which FP8 products keep the tensor core's accumulator over the whole reduction (see ``Policy.fast_accumulation``)."""

MAX_POLICY_FILE_BYTES = 1 << 20
"""Largest JSON policy file read (a policy is a few hundred bytes; this refuses a wrong path, e.g. a data set)."""


@dataclass(frozen=True)
class Policy:
    """The formats of one training step's tensors, its loss scaling and its update rule."""

    name: str = "custom"
    """Label used in tables and reports."""
    params: Format = FP32
    """Format of the weights as used in the forward and backward products."""
    activations: Format = FP32
    """Format the layers' outputs are rounded to."""
    gradients: Format = FP32
    """Format the activation gradients and the weight gradients are rounded to."""
    accumulate: Format | str = FP32
    """Format of the partial sums inside every matrix product (IEEE: each product added exactly, the sum rounded
    to it), or the name of a GPU tensor-core model as ``fpsim.matmul`` takes it ("H100", "a100",
    "H100:mma.sync", ...; ``fpsim.hardware``), stored canonically as "GPU:instruction" ("H100:wgmma").  With a
    GPU model every matrix product (both engines; in the torch engine mm, addmm, bmm, baddbmm and the 1-D / 2-D
    convolutions, forward and backward; attention keeps FP32 accumulation, its tensor-core products not
    modelled) is ``fpsim.matmul(..., accumulate=GPU)`` on its rounded operands, the
    operands' formats picking the path (FP16, BF16, E4M3 / E5M2; FP32 operands enter the TF32 path,
    truncated, as PyTorch's ``allow_tf32`` and cuDNN's default for convolutions run them); the bias is added
    after, in FP32 (cuBLASLt's bias epilogue).  Every pair of operand formats a product meets (params with
    activations forward, gradients with params and with activations backward) must have a path."""
    fast_accumulation: str = "forward"
    """With a GPU ``accumulate``: which FP8 products (both operands E4M3 / E5M2) keep the tensor core's
    accumulator over their whole reduction ("fast accumulation"); the others split it, promoting the partial
    sum to FP32 every ``promote_every`` products (``fpsim.matmul(order=f"blocked:{promote_every}")``: the
    chain within each run, the runs added in FP32 rounded to nearest on the CUDA cores).  ``"forward"``
    (Transformer Engine's default, ``use_split_accumulator``: False for the forward GEMM, True for the two
    backward GEMMs, dgrad and wgrad; ``transformer_engine/pytorch/module/linear.py``), ``"all"`` (every
    product fast, torch ``_scaled_mm(use_fast_accum=True)``), ``"none"`` (every product split, DeepSeek-V3's
    promotion, arXiv 2412.19437 3.3.2).  16-bit and TF32 products never split: cuBLASLt's
    ``CUBLASLT_MATMUL_DESC_FAST_ACCUM`` and TE's ``use_split_accumulator`` are FP8-only options, and their
    tensor-core accumulator keeps FP32's 23 fraction bits and more (25 on Hopper), so nothing promotes them.
    Block-scaled products (MX, NVFP4) promote at every block anyway (see ``fpsim.torch.scaled``)."""
    promote_every: int = 128
    """Products per run of a split FP8 product (DeepSeek-V3's N_C = 128, the K of one wgmma tile); > 0."""
    master: Format | None = None
    """Format of a master copy of the weights that receives the updates; None: update ``params`` in place."""
    optimizer_state: Format = FP32
    """Format of the optimizer's state (momentum buffer, Adam's moments)."""
    loss: Format = FP32
    """Format of the softmax / cross-entropy (or squared error) and of its gradient."""
    loss_scale: float | str | None = None
    """None (no scaling, no inf/NaN check), a constant scale (> 0), or ``"dynamic"`` (GradScaler), as
    ``fpsim.sim.loss_scaling.loss_scale_of`` reads it (the one rule, ``TrainConfig``'s too).  A run's
    ``TrainConfig.loss_scale``, when given, wins over this one (``TrainConfig.effective_policy``)."""
    update_rounding: str = "nearest"
    """Rounding of the updated weights into their format: one of ``UPDATE_ROUNDINGS``."""
    kahan: bool = False
    """Keep a compensation buffer (in the weights' format) that carries what each update's rounding lost."""
    placement: str = "autocast-cuda"
    """Which operations run in the low-precision formats: one of ``OP_PLACEMENTS`` (read by the torch engine;
    ``PLACEMENT_ALIASES`` are read as the name they stand for)."""
    scaling: tuple | None = None
    """FP8 / MX scaling recipes: ((tensor kind, ``fpsim.sim.scaling.Scaling``), ...) for the products' operands
    (``fpsim.sim.vocabulary.OPERAND_KINDS``: params, activations, gradients), in that order; given as a dict
    kind -> Scaling (or its kind name, or its dict).  A kind left out is cast unscaled, so it is kept only when
    scaled: ``{}`` and ``{"params": "none"}`` are one recipe, every operand plainly cast.  None: no scaling, the
    16-bit recipe above.  With a recipe only the products' operands are quantized (see the module docstring)."""
    overrides: tuple = ()
    """Per-module policies: ((pattern, Policy), ...), given as a dict pattern -> policy (a Policy, a preset name
    or a dict of fields); see ``resolve_overrides`` for what a pattern selects and which one wins.  An override
    gives the modules it covers its compute fields (params, activations, gradients, accumulate, loss, placement,
    scaling: how their operations compute, forward and backward); the weights' storage (master), the optimizer
    state, the loss scaling and the update are the run's, this policy's."""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"policy name must be a non-empty string, got {self.name!r}")
        for field in _FORMAT_FIELDS:
            if field != "accumulate":
                object.__setattr__(self, field, get_format(getattr(self, field)))
        object.__setattr__(self, "accumulate", _accumulator(self.accumulate))
        self._check_tensor_core()
        if self.master is not None:
            object.__setattr__(self, "master", get_format(self.master))
        object.__setattr__(self, "loss_scale", loss_scale_of(self.loss_scale))
        if self.update_rounding not in UPDATE_ROUNDINGS:
            raise ValueError(f"update_rounding must be one of {', '.join(UPDATE_ROUNDINGS)}, "
                             f"got {self.update_rounding!r}")
        if not isinstance(self.kahan, bool):
            raise ValueError(f"kahan must be True or False, got {self.kahan!r}")
        if isinstance(self.placement, str):
            object.__setattr__(self, "placement", PLACEMENT_ALIASES.get(self.placement, self.placement))
        if self.placement not in OP_PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(OP_PLACEMENTS)}, got {self.placement!r}")
        if self.kahan and self.update_rounding == "stochastic":
            raise ValueError("choose either a Kahan-compensated update or stochastic rounding, not both")
        if self.scaling is not None:
            try:
                given = dict(self.scaling)
            except (TypeError, ValueError):
                raise ValueError(f"scaling must be a dict of tensor kind ({', '.join(OPERAND_KINDS)}) -> recipe, "
                                 f"e.g. {{'gradients': 'tensor'}}; got {self.scaling!r}") from None
            unknown = sorted(set(given) - set(OPERAND_KINDS))
            if unknown:
                raise ValueError(f"scaling for unknown tensor kind(s) {', '.join(unknown)}: use "
                                 f"{', '.join(OPERAND_KINDS)}")
            recipes = {kind: Scaling.coerce(given[kind]) for kind in OPERAND_KINDS if kind in given}
            object.__setattr__(self, "scaling", tuple((kind, scaling) for kind, scaling in recipes.items()
                                                      if scaling.kind != "none"))
            for kind, scaling in self.scaling:
                if scaling.kind == "block" and PRESETS[scaling.block].element != kind.format_of(self):
                    raise ValueError(f"{kind} are in {kind.format_of(self).name} but their block scaling "
                                     f"{scaling.block} has {PRESETS[scaling.block].element.name} elements: "
                                     f"make them agree")
                if scaling.kind == "delayed":
                    delayed_scaled_max(scaling.margin, kind.format_of(self))  # refuses a margin it cannot take
            if self.placement != "autocast-cuda" or self.master is None:
                raise ValueError("a scaling recipe quantizes the products' operands of an FP32 model: keep "
                                 "placement='autocast-cuda' and master weights (master='fp32')")
        object.__setattr__(self, "overrides", _checked_overrides(self.overrides))
        if self.scaling is None and any(kind_scaling.kind == "delayed" for _, override in self.overrides
                                        for _, kind_scaling in override.scaling or ()):
            raise ValueError("an override with delayed scaling needs a run policy with a scaling recipe (its "
                             "amax histories are updated with the run's): use current scaling in the override")

    def _check_tensor_core(self) -> None:
        """``fast_accumulation`` and ``promote_every`` valid (and left at their defaults without a GPU model);
        with one, a tensor-core path for every pair of operand formats a product meets."""
        if self.fast_accumulation not in FAST_ACCUMULATIONS:
            raise ValueError(f"fast_accumulation must be one of {', '.join(FAST_ACCUMULATIONS)}, "
                             f"got {self.fast_accumulation!r}")
        if isinstance(self.promote_every, bool) or not isinstance(self.promote_every, int) or self.promote_every < 1:
            raise ValueError(f"promote_every must be a positive integer, got {self.promote_every!r}")
        if self.tensor_core is None:
            if (self.fast_accumulation, self.promote_every) != ("forward", 128):
                raise ValueError(f"fast_accumulation and promote_every apply to a GPU accumulate (e.g. 'H100'); "
                                 f"policy {self.name!r} accumulates in {_describe_format(self.accumulate)}: "
                                 f"leave them at their defaults")
            return
        for first, second in (("params", "activations"), ("gradients", "params"), ("gradients", "activations")):
            a, b = getattr(self, first), getattr(self, second)
            if input_path(*tensor_core_operands(a, b)) is None:
                raise ValueError(f"accumulate={self.accumulate!r} multiplies fp16, bf16, e4m3 or e5m2 operands "
                                 f"(fp32 as tf32), in pairs of one format or both FP8; policy {self.name!r} "
                                 f"multiplies {first} ({a.name}) with {second} ({b.name}): choose formats it takes "
                                 f"or an IEEE accumulate (e.g. 'fp32')")

    @property
    def tensor_core(self) -> str | None:
        """The GPU model ("H100:wgmma") when ``accumulate`` names one, else None (an IEEE accumulation format)."""
        return self.accumulate if isinstance(self.accumulate, str) else None

    def splits(self, forward: bool, fmt_a: Format, fmt_b: Format) -> bool:
        """Whether a product of ``fmt_a`` by ``fmt_b`` operands (forward or backward) promotes its partial sums
        to FP32 every ``promote_every`` products (``fast_accumulation``: FP8 products only)."""
        if self.tensor_core is None or input_path(fmt_a, fmt_b) != "fp8":
            return False
        return self.fast_accumulation == "none" or (self.fast_accumulation == "forward" and not forward)

    @property
    def weights(self) -> Format:
        """Format the updates are applied in: ``master`` if there is one, else ``params``."""
        return self.master if self.master is not None else self.params

    @classmethod
    def preset(cls, name: str) -> "Policy":
        """The named preset (one of ``POLICIES``)."""
        if isinstance(name, str) and name.strip().lower() in POLICIES:
            return POLICIES[name.strip().lower()]
        raise ValueError(f"unknown policy {name!r}: use one of {', '.join(POLICIES)}, or the path of a JSON file "
                         "of Policy fields (FILE.json)")

    @classmethod
    def coerce(cls, spec) -> "Policy":
        """A Policy from a Policy, a preset name, the path of a JSON file of fields, or a dict of fields.

        A dict may name a ``"preset"`` to start from and override some of its
        fields, e.g. ``{"preset": "fp16-mixed", "loss_scale": 1024}``; formats may
        be given as names (``"bf16"``, ``"e6m9"``) or as dicts of Format fields.
        A string that is no preset's name is read as a file (``from_file``) when
        it ends in ``.json`` or names an existing file.
        """
        if isinstance(spec, Policy):
            return spec
        if isinstance(spec, str):
            if spec.strip().lower() not in POLICIES and (
                    spec.strip().lower().endswith(".json") or os.path.isfile(os.path.expanduser(spec))):
                return cls.from_file(spec)
            return cls.preset(spec)
        if isinstance(spec, dict):
            return cls.from_dict(spec)
        raise TypeError(f"policy must be a Policy, a preset name ({', '.join(POLICIES)}), a JSON file's path or a "
                        f"dict of fields; got {type(spec).__name__}")

    @classmethod
    def from_file(cls, path) -> "Policy":
        """The policy of a JSON file holding a dict of fields (``from_dict``'s); without a ``"name"`` or a
        ``"preset"``, the policy is named after the file (``good.json``: ``good``)."""
        path = os.path.expanduser(os.fspath(path))
        if not os.path.isfile(path):
            raise ValueError(f"no policy file {path!r} (and no preset of that name: use one of "
                             f"{', '.join(POLICIES)})")
        if os.path.getsize(path) > MAX_POLICY_FILE_BYTES:
            raise ValueError(f"policy file {path} is {os.path.getsize(path)} bytes, beyond the "
                             f"{MAX_POLICY_FILE_BYTES} a JSON dict of Policy fields needs: is it the right file?")
        try:
            with open(path, encoding="utf-8") as file:
                fields = json.load(file)
        except OSError as error:
            raise ValueError(f"cannot read policy file {path}: {error.strerror or error}") from None
        except UnicodeDecodeError as error:
            raise ValueError(f"policy file {path} is not UTF-8 text (byte {error.start})") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"policy file {path} is not valid JSON: {error}") from None
        except RecursionError:
            raise ValueError(f"policy file {path} is nested too deeply: give a flat dict") from None
        if not isinstance(fields, dict):
            raise ValueError(f"policy file {path} must hold a JSON dict of Policy fields, e.g. "
                             f'{{"preset": "fp16-mixed", "loss_scale": 1024}}; it holds a {type(fields).__name__}')
        if "name" not in fields and "preset" not in fields:
            fields["name"] = os.path.splitext(os.path.basename(path))[0] or "custom"
        return cls.from_dict(fields)

    @classmethod
    def from_dict(cls, fields: dict) -> "Policy":
        """Inverse of ``to_dict`` (also accepts a ``"preset"`` key, see ``coerce``).

        Over a preset, a ``scaling`` dict merges into the preset's recipes kind by kind
        (a kind given replaces that kind's recipe, the others keep the preset's); and a
        policy that then differs from the preset is named ``PRESET*`` unless a ``name`` is given.
        """
        fields = dict(fields)
        preset = fields.pop("preset", None)
        base = cls.preset(preset) if preset is not None else cls()
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise ValueError(f"unknown policy field(s) {', '.join(unknown)}: the fields are {', '.join(known)} "
                             f"(and 'preset')")
        for field in (*_FORMAT_FIELDS, "master"):
            if isinstance(fields.get(field), dict):
                fields[field] = Format(**fields[field])
        if isinstance(fields.get("scaling"), dict) and base.scaling is not None:
            fields["scaling"] = {**dict(base.scaling), **fields["scaling"]}
        policy = dataclasses.replace(base, **fields)
        if preset is not None and "name" not in fields and policy != base:
            policy = dataclasses.replace(policy, name=f"{base.name}*")  # must not pass for the preset itself
        return policy

    def to_dict(self) -> dict:
        """A JSON-able dict: formats by name when built in, else as a dict of their fields."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = _format_to_json(value) if isinstance(value, Format) else value
        if self.scaling is not None:
            out["scaling"] = {str(kind): scaling.to_dict() for kind, scaling in self.scaling}
        out["overrides"] = {pattern: policy.name if POLICIES.get(policy.name) == policy else policy.to_dict()
                            for pattern, policy in self.overrides}
        return out

    def resolve_overrides(self, layers) -> "ModulePolicies":
        """Each module's policy (``ModulePolicies.policy_of``), for a model whose modules holding parameters
        are ``layers``: paths in model order, as ``named_modules`` names them (the root is ``ROOT``, "model").
        A one-line ``ValueError`` for a pattern that selects none of them.

        A pattern is a module path in ``fnmatch`` glob syntax, written without the root (``"lm_head"``,
        ``"transformer.h.0"``, ``"transformer.h.*"``; ``"model"`` is the root, ``"*"`` every module); it
        covers the modules whose path matches and every module under them (a path is covered when it or
        one of its ancestors, the root included, matches).  ``"last K of PATTERN"`` (K a count, or a share
        such as ``"15%"``, rounded up) covers the last K of the ``layers`` that PATTERN covers, in model
        order, as Transformer Engine's NVFP4 recipe counts its last Linear layers (``"last 15% of *"``).
        A module covered by several patterns takes the policy of the last of them in ``overrides``' order,
        so a later, narrower pattern refines an earlier, broader one."""
        layers = list(layers)
        rules = []
        for pattern, policy in self.overrides:
            last = _LAST.fullmatch(pattern)
            covered = [path for path in layers if _covers(last.group(3) if last else pattern, path)]
            if last:
                count = int(last.group(1))
                count = math.ceil(count * len(covered) / 100) if last.group(2) else min(count, len(covered))
                covered = covered[len(covered) - count:] if count else []
            if not covered:
                shown = ", ".join(layers[:6]) + (", ..." if len(layers) > 6 else "")
                raise ValueError(f"override pattern {pattern!r} selects no layer of the model (its layers: "
                                 f"{shown or 'none'}); write module paths without the root, e.g. "
                                 f"{layers[-1] if layers else 'lm_head'!r}")
            rules.append((frozenset(covered) if last else pattern, policy))
        return ModulePolicies(self, tuple(rules))

    def describe(self) -> str:
        """One line: the format of each tensor, the loss scaling, the update rule, every scaling recipe with
        its settings and every override (its pattern and its policy's description); two policies that train
        differently never describe alike."""
        update = "kahan" if self.kahan else self.update_rounding
        formats = {field: _describe_format(getattr(self, field)) for field in _FORMAT_FIELDS if field != "accumulate"}
        formats["accumulate"] = self._describe_accumulate()
        return (f"{self.name}: params {formats['params']}, activations {formats['activations']}, gradients "
                f"{formats['gradients']}, accumulate {formats['accumulate']}, master "
                f"{_describe_format(self.master) if self.master else 'none'}, optimizer state "
                f"{formats['optimizer_state']}, loss {formats['loss']}, loss scale "
                f"{'none' if self.loss_scale is None else self.loss_scale}, update {update}, placement "
                + ("products' operands only (FP8 recipe)" if self.scaling is not None else self.placement)
                + "".join(f", {kind} scaling {_describe_scaling(dict(self.scaling).get(kind, Scaling()))}"
                          for kind in (OPERAND_KINDS if self.scaling is not None else ()))
                + "".join(f"; override {pattern!r}: {policy.describe()}" for pattern, policy in self.overrides))

    def _describe_accumulate(self) -> str:
        """The format, or the GPU model with the FP8 products' fast / split accumulation."""
        if self.tensor_core is None:
            return _describe_format(self.accumulate)
        split = {"forward": "fast forward, backward split", "all": "fast everywhere",
                 "none": "split everywhere"}[self.fast_accumulation]
        return f"{self.tensor_core} tensor core (FP8 products {split}, promoted to FP32 every {self.promote_every})"


ROOT = "model"
"""The root module's path, as ``fpsim.torch.tracking`` and the recorder name it (its children are named
without it: ``"lm_head"``, ``"transformer.h.0"``)."""

_LAST = re.compile(r"last\s+([0-9]+)(%?)\s+of\s+(\S.*)")


def _covers(glob: str, path: str) -> bool:
    """Whether ``path`` or one of its ancestors (the root included) matches ``glob``."""
    if fnmatch.fnmatchcase(ROOT, glob):
        return True
    parts = path.split(".") if path != ROOT else []
    return any(fnmatch.fnmatchcase(".".join(parts[:n]), glob) for n in range(len(parts), 0, -1))


def _checked_overrides(overrides) -> tuple:
    """``overrides`` as ((pattern, Policy), ...), each pattern checked and each policy coerced; one-line
    errors for anything else."""
    if isinstance(overrides, dict):
        overrides = tuple(overrides.items())
    try:
        pairs = tuple((pattern, spec) for pattern, spec in overrides)
    except (TypeError, ValueError):
        raise ValueError(f"overrides must be a dict of module pattern -> policy, e.g. {{'lm_head': 'bf16-mixed'}}; "
                         f"got {overrides!r}") from None
    out = []
    for pattern, spec in pairs:
        if not isinstance(pattern, str) or not pattern.strip() or pattern != pattern.strip():
            raise ValueError(f"an override pattern is a module path glob such as 'lm_head' or 'transformer.h.*' "
                             f"(no surrounding spaces), got {pattern!r}")
        if pattern.startswith("last ") and not _LAST.fullmatch(pattern):
            raise ValueError(f"override pattern {pattern!r}: write 'last K of PATTERN' with K a count or a "
                             f"share, e.g. 'last 2 of transformer.h.*' or 'last 15% of *'")
        last = _LAST.fullmatch(pattern)
        if last and (int(last.group(1)) < 1 or (last.group(2) and int(last.group(1)) > 100)):
            raise ValueError(f"override pattern {pattern!r}: K must be at least 1 (a share at most 100%)")
        try:
            policy = Policy.coerce(spec)
        except (TypeError, ValueError) as error:
            raise ValueError(f"override {pattern!r}: {error}") from None
        if policy.overrides:
            raise ValueError(f"override {pattern!r}: policy {policy.name} has overrides of its own; give one "
                             f"flat mapping of patterns in the run's policy")
        out.append((pattern, policy))
    return tuple(out)


class ModulePolicies:
    """The policy each module path computes under (``Policy.resolve_overrides`` makes it): ``policy_of(path)``
    is the policy of the last override covering ``path``, else the run's policy (``root``)."""

    def __init__(self, root: Policy, rules: tuple):
        self.root, self._rules, self._cache = root, rules, {}

    @property
    def policies(self) -> list:
        """The distinct policies modules may run under, the run's first."""
        return list(dict.fromkeys((self.root, *(policy for _, policy in self._rules))))

    def policy_of(self, path: str) -> Policy:
        """The policy of the module at ``path`` (paths outside the model: the run's)."""
        policy = self._cache.get(path)
        if policy is None:
            policy = self.root
            for rule, candidate in self._rules:
                if (path in rule) if isinstance(rule, frozenset) else _covers(rule, path):
                    policy = candidate
            self._cache[path] = policy
        return policy


def tensor_core_operands(fmt_a: Format, fmt_b: Format) -> tuple[Format, Format]:
    """The formats a tensor core multiplies for operands of ``fmt_a`` and ``fmt_b``: FP32 as TF32."""
    return tuple(TF32 if fmt == FP32 else fmt for fmt in (fmt_a, fmt_b))


def _accumulator(value) -> Format | str:
    """``accumulate`` checked: a GPU model's canonical name ("H100:wgmma"), or a Format; a one-line ValueError
    naming the formats and the GPU models otherwise."""
    gpu = parse_gpu(value)
    if gpu is not None:
        return f"{gpu[0]}:{gpu[1]}"
    if isinstance(value, dict):
        return Format(**value)
    return _accumulate_format(value)


def _describe_scaling(scaling: Scaling) -> str:
    """A recipe with the settings it uses: ``current``, ``delayed (history 1024, margin 0, amax max)``,
    ``mxfp8_e4m3 (scale rounding floor)``, ``nvfp4_te (block 16x16)``, ..."""
    if scaling.kind == "delayed":
        settings = [f"history {scaling.history_len}", f"margin {scaling.margin:g}", f"amax {scaling.amax_compute}"]
    elif scaling.kind == "block":
        size = scaling.block_size
        settings = [f"block {'x'.join(map(str, size)) if isinstance(size, tuple) else size}"] * (size is not None)
        if PRESETS[scaling.block].scale_format == "e8m0":  # the other scale formats round to nearest
            settings.append(f"scale rounding {scaling.scale_rounding}")
    else:
        settings = ["power-of-two scales"] * scaling.power_of_two
    settings += ["stochastic rounding"] * scaling.stochastic + ["Hadamard on weight gradients"] * scaling.hadamard
    name = scaling.block if scaling.kind == "block" else scaling.kind
    return name + (f" ({', '.join(settings)})" if settings else "")


def _describe_format(fmt: Format) -> str:
    """A built-in format by name, any other by its fields (a custom format may reuse a name)."""
    return fmt.name if FORMATS.get(fmt.name) == fmt else repr(fmt)


def _format_to_json(fmt: Format):
    if FORMATS.get(fmt.name) == fmt:
        return fmt.name
    return dataclasses.asdict(fmt)


def _compute(name: str, fmt: Format, **fields) -> Policy:
    """A policy computing in ``fmt`` (params, activations, gradients) with FP32 accumulation and loss."""
    return Policy(name=name, params=fmt, activations=fmt, gradients=fmt, accumulate=FP32, loss=FP32, **fields)


def _scaled(name: str, forward: Format, backward: Format, scaling: Scaling,
            backward_scaling: Scaling | None = None, weights: Scaling | None = None) -> Policy:
    """FP8 / MX compute (weights and activations in ``forward`` with ``scaling`` (the weights with ``weights``
    when given), gradients in ``backward`` with ``backward_scaling``, by default the same), FP32 master weights
    and optimizer state."""
    return Policy(name=name, params=forward, activations=forward, gradients=backward, accumulate=FP32, loss=FP32,
                  master=FP32, optimizer_state=FP32,
                  scaling={"params": weights or scaling, "activations": scaling,
                           "gradients": backward_scaling or scaling})


NVFP4_HIGH_PRECISION_LAYERS = "last 15% of *"
"""The ``nvfp4-te`` preset's override pattern: about the last 15 % of the layers in BF16 (arXiv 2509.25149,
section 4: the last blocks' Linear layers, about 15 % of them, kept in BF16; rounded up, at least one layer)."""


def _block(name: str, forward: str, backward: str) -> Policy:
    """Block scaling with ``fpsim.quantize`` presets: ``forward`` for weights and activations, ``backward`` for
    gradients."""
    return _scaled(name, PRESETS[forward].element, PRESETS[backward].element, Scaling.block_of(forward),
                   Scaling.block_of(backward))


POLICIES: dict[str, Policy] = {p.name: p for p in (
    _compute("fp32", FP32, master=None, optimizer_state=FP32),
    _compute("fp16-pure", FP16, master=None, optimizer_state=FP16),
    _compute("fp16-mixed", FP16, master=FP32, optimizer_state=FP32),
    _compute("fp16-amp", FP16, master=FP32, optimizer_state=FP32, loss_scale="dynamic"),
    _compute("bf16-pure", BF16, master=None, optimizer_state=BF16),
    _compute("bf16-mixed", BF16, master=FP32, optimizer_state=FP32),
    _compute("bf16-sr", BF16, master=None, optimizer_state=BF16, update_rounding="stochastic"),
    _compute("bf16-kahan", BF16, master=None, optimizer_state=BF16, kahan=True),
    _scaled("fp8-unscaled", E4M3, E5M2, Scaling("none")),
    _scaled("fp8-current", E4M3, E5M2, Scaling("tensor")),
    _scaled("fp8-delayed", E4M3, E5M2, Scaling.delayed()),
    _scaled("fp8-rowwise", E4M3, E4M3, Scaling("row", power_of_two=True)),
    _scaled("fp8-rowwise-fp32-scales", E4M3, E4M3, Scaling("row")),
    _scaled("fp8-blockwise", E4M3, E4M3, Scaling.block_of("mxfp8_e4m3", "floor-scale", block_size=128),
            weights=Scaling.block_of("mxfp8_e4m3", "floor-scale", block_size=(128, 128))),
    _block("mxfp8", "mxfp8_e4m3", "mxfp8_e4m3"),
    _scaled("mxfp8-te", E4M3, E4M3, Scaling.block_of("mxfp8_e4m3", "rceil")),
    _block("mxfp6", "mxfp6_e2m3", "mxfp6_e3m2"),
    _block("mxfp4", "mxfp4", "mxfp4"),
    _block("nvfp4", "nvfp4", "nvfp4"),
)}
POLICIES["nvfp4-te"] = dataclasses.replace(  # after the others: its override is a preset
    _scaled("nvfp4-te", E2M1, E2M1, Scaling.block_of("nvfp4_te", hadamard=True),
            Scaling.block_of("nvfp4_te", stochastic=True, hadamard=True),
            weights=Scaling.block_of("nvfp4_te", block_size=(16, 16))),
    overrides={NVFP4_HIGH_PRECISION_LAYERS: POLICIES["bf16-mixed"]})
"""Every preset by name: what ``fpsim.train``, ``TrainConfig``, ``Policy.coerce`` and ``fpsim train`` take.

The 16-bit presets.  ``fp32``: everything FP32.  ``-pure``: weights, activations,
gradients and optimizer state in the 16-bit format, updates rounded into the
16-bit weights, no loss scaling.  ``-mixed``: 16-bit compute, FP32 master weights
and optimizer state, no loss scaling.  ``fp16-amp``: fp16-mixed plus dynamic loss
scaling (the full recipe).  ``bf16-sr``: bf16-pure with stochastically rounded
updates.  ``bf16-kahan``: bf16-pure with a Kahan-compensated update.  All
accumulate in FP32 and compute the loss in FP32.

The FP8 / MX presets (a ``scaling`` recipe: products' operands only, FP32 master
weights and optimizer state; see the module docstring; ``SCALED_POLICIES`` lists
them).  ``fp8-unscaled``: plain saturating casts, E4M3 forward and E5M2 backward,
no scale.  ``fp8-current``: torchao's TENSORWISE default (E4M3 weights and
activations, E5M2 gradients, scale = max / amax now).  ``fp8-delayed``: Transformer
Engine's ``DelayedScaling`` with its HYBRID format (E4M3 forward, E5M2 backward),
history 1024, margin 0, amax "max".  ``fp8-rowwise``: torchao 0.18's ROWWISE
(``Float8LinearConfig.from_recipe_name("rowwise")``: E4M3 weights, activations and
gradients, one current scale per row along each product's reduction axis, rounded down
to a power of two, ``round_scales_to_power_of_2=True``; torchao takes that floor of a float32
log2, which can round a scale just below a power of two up to it, and clamps amax at 1e-12: fpsim
drops the mantissa exactly, as TE does).  ``fp8-rowwise-fp32-scales``:
the same with unrounded FP32 scales (fpsim's ``fp8-rowwise`` before this recipe took the
name).  ``fp8-blockwise``: DeepSeek-V3's FP8 recipe (arXiv 2412.19437, section 3.3) as
Transformer Engine's ``Float8BlockScaling`` runs it: E4M3 everywhere, activations and
gradients scaled per 1 x 128 tile along each product's reduction axis, weights per
128 x 128 block, each scale TE's power of two (the current FP32 scale 448 / amax rounded
down, ``force_pow_2_scales``: ``quantize``'s "floor-scale"); the products accumulate in
FP32 (DeepSeek's promotion every 128 products is the accumulation model's to add), the
optimizer state FP32 as in TE (DeepSeek keeps AdamW's moments in BF16:
``optimizer_state="bf16"``).  ``mxfp8``: MXFP8 (E4M3 everywhere, blocks of 32,
E8M0 scales rounded down, the OCP spec's rule).  ``mxfp8-te``: TE's
``MXFP8BlockScaling``: the same with the E8M0 scale rounded up when the FP32 quotient
amax / 448 is not a power of two (TE ``float_to_e8m0``, Blackwell's ``cvt.rp.ue8m0``:
``quantize``'s "rceil"); its row-wise (1 x 32) and column-wise (32 x 1) copies are
each quantized from the high-precision tensor, as every operand here is cast along its
product's reduction axis.  ``mxfp6``: MXFP6 with E2M3 (precision) forward and E3M2 (range) backward, the split
the FP8 recipes make between E4M3 and E5M2.  ``mxfp4``: MXFP4 (E2M1) everywhere.
``nvfp4``: NVFP4 (E2M1, blocks of 16, E4M3 block scales, an FP32 tensor scale)
everywhere.  ``nvfp4-te``: the NVFP4 pretraining recipe (NVIDIA, arXiv 2509.25149;
TE's ``NVFP4BlockScaling``): E2M1 elements with TE's two-level encode (``quantize``'s
``nvfp4_te``), weights in 16 x 16 tiles, activations and gradients in 1 x 16 blocks along
the reduction axis, gradients stochastically rounded, the 16-point random Hadamard
transform with TE's fixed signs on both inputs of the weight-gradient products, and the
layers ``NVFP4_HIGH_PRECISION_LAYERS`` selects in BF16 (``bf16-mixed``, an override).
Each component is a field to switch off: ``block_size`` (params), ``stochastic``
(gradients), ``hadamard`` (activations, gradients), ``overrides``.  Each block preset's name is also
``fpsim.quantize``'s name for its
element format when it has one (``quantize(x, "mxfp8")``).
"""

SCALED_POLICIES: dict[str, Policy] = {name: p for name, p in POLICIES.items() if p.scaling is not None}
"""A view of ``POLICIES``: the FP8 / MX presets (those with a scaling recipe), in their order."""
