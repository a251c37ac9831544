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
"""

from __future__ import annotations

import dataclasses
import json
import os
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

OP_PLACEMENTS = ("autocast", "low-precision")
"""Which operations compute in the low-precision formats: ``"autocast"`` places them as ``torch.autocast``
does (matrix products in 16 bits; softmax, norms, exp/log, sums and losses in FP32; other ops in the
precision of their inputs); ``"low-precision"`` runs every operation in them (pure 16-bit, ``model.half()``)."""

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
    GPU model every matrix product (both engines; in the torch engine mm, addmm, bmm, baddbmm and the
    convolutions, forward and backward) is ``fpsim.matmul(..., accumulate=GPU)`` on its rounded operands, the
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
    placement: str = "autocast"
    """Which operations run in the low-precision formats: one of ``OP_PLACEMENTS`` (read by the torch engine)."""
    scaling: tuple | None = None
    """FP8 / MX scaling recipes: ((tensor kind, ``fpsim.sim.scaling.Scaling``), ...) for the products' operands
    (``fpsim.sim.vocabulary.OPERAND_KINDS``: params, activations, gradients), in that order; given as a dict
    kind -> Scaling (or its kind name, or its dict).  A kind left out is cast unscaled, so it is kept only when
    scaled: ``{}`` and ``{"params": "none"}`` are one recipe, every operand plainly cast.  None: no scaling, the
    16-bit recipe above.  With a recipe only the products' operands are quantized (see the module docstring)."""

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
            if self.placement != "autocast" or self.master is None:
                raise ValueError("a scaling recipe quantizes the products' operands of an FP32 model: keep "
                                 "placement='autocast' and master weights (master='fp32')")

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
        return out

    def describe(self) -> str:
        """One line: the format of each tensor, the loss scaling, the update rule and every scaling recipe with
        its settings; two policies that train differently never describe alike."""
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
                          for kind in (OPERAND_KINDS if self.scaling is not None else ())))


    def _describe_accumulate(self) -> str:
        """The format, or the GPU model with the FP8 products' fast / split accumulation."""
        if self.tensor_core is None:
            return _describe_format(self.accumulate)
        split = {"forward": "fast forward, backward split", "all": "fast everywhere",
                 "none": "split everywhere"}[self.fast_accumulation]
        return f"{self.tensor_core} tensor core (FP8 products {split}, promoted to FP32 every {self.promote_every})"


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
    ``mxfp8_e4m3 (scale rounding floor)``, ..."""
    if scaling.kind == "delayed":
        return (f"delayed (history {scaling.history_len}, margin {scaling.margin:g}, "
                f"amax {scaling.amax_compute})")
    if scaling.kind == "block":
        uses_rounding = PRESETS[scaling.block].scale_format == "e8m0"  # the other scale formats round to nearest
        return scaling.block + (f" (scale rounding {scaling.scale_rounding})" if uses_rounding else "")
    return scaling.kind


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
            backward_scaling: Scaling | None = None) -> Policy:
    """FP8 / MX compute (weights and activations in ``forward`` with ``scaling``, gradients in ``backward`` with
    ``backward_scaling``, by default the same), FP32 master weights and optimizer state."""
    return Policy(name=name, params=forward, activations=forward, gradients=backward, accumulate=FP32, loss=FP32,
                  master=FP32, optimizer_state=FP32,
                  scaling={"params": scaling, "activations": scaling, "gradients": backward_scaling or scaling})


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
    _scaled("fp8-rowwise", E4M3, E4M3, Scaling("row")),
    _block("mxfp8", "mxfp8_e4m3", "mxfp8_e4m3"),
    _block("mxfp6", "mxfp6_e2m3", "mxfp6_e3m2"),
    _block("mxfp4", "mxfp4", "mxfp4"),
    _block("nvfp4", "nvfp4", "nvfp4"),
)}
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
history 1024, margin 0, amax "max".  ``fp8-rowwise``: torchao's ROWWISE (E4M3, one
current scale per row along the reduction axis).  ``mxfp8``: TE's
``MXFP8BlockScaling`` (E4M3 everywhere, blocks of 32, E8M0 floor scales).
``mxfp6``: MXFP6 with E2M3 (precision) forward and E3M2 (range) backward, the split
the FP8 recipes make between E4M3 and E5M2.  ``mxfp4``: MXFP4 (E2M1) everywhere.
``nvfp4``: NVFP4 (E2M1, blocks of 16, E4M3 block scales, an FP32 tensor scale)
everywhere.  Each block preset's name is also ``fpsim.quantize``'s name for its
element format when it has one (``quantize(x, "mxfp8")``).
"""

SCALED_POLICIES: dict[str, Policy] = {name: p for name, p in POLICIES.items() if p.scaling is not None}
"""A view of ``POLICIES``: the FP8 / MX presets (those with a scaling recipe), in their order."""
