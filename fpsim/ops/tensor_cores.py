"""Bit-exact models of NVIDIA tensor cores: the model of each path as data, and the readable exact reference.

What a tensor core computes for one output, d = c + sum_k a_k * b_k, in fused
steps of ``products_per_step`` (k) products (Fasi, Higham, Mikaitis, Pranesh,
"Numerical behavior of NVIDIA tensor cores", PeerJ CS 7:e330, 2021; Khattak and
Mikaitis, "Accurate Models of NVIDIA Tensor Cores", arXiv 2512.07004, 2025;
Xie et al., "MMA-Sim", arXiv 2511.10909, 2025):

1. Every product a_k * b_k is exact.  Its alignment exponent is e(a) + e(b),
   where e(x) = max(floor(log2 |x|), emin of x's format) (a subnormal input
   counts at its format's emin); the product's significand is then in [0, 4).
   The accumulator c (the previous step's result, or ``C``) has e(c) with the
   emin of the step's format.  Zero terms take no part in the alignment.
2. E = the largest alignment exponent among the step's non-zero terms
   (c included when ``c_in_alignment``).
3. Every term is cut to a multiple of 2^(E - f), f = ``fraction_bits``,
   toward zero (truncated, no guard or sticky bit); the carries above E are kept.
4. The cut terms are added exactly, normalised once, and rounded to
   ``step_format`` in ``rounding`` ("toward_zero" for FP32 outputs, "nearest"
   for FP16 outputs); an exponent beyond the format's range gives +-inf.  An
   exact zero is +0.  The result is the c of the next step.
5. When the step does not align c (``c_in_alignment`` False: B200's and, by
   inference, H100's ``mma.sync`` FP8 paths), the steps sum the products alone
   and c is added to each step's rounded sum by an IEEE addition rounded to
   nearest in the output format.

Inputs that are inf or NaN make the step's result the IEEE sum of the products
and c in float64 (0 * inf and inf - inf give NaN), as both published models do.

FP8 inputs (E4M3, E5M2, mixed) share one path ("fp8"); TF32 inputs given as
FP32 are truncated to TF32 by the hardware (``TF32_INPUT_ROUNDING``).  Each
record says where its parameters come from and which measured rows
(``tests/data/tensor-cores/``) it reproduces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from ..numerics.exact import round_exact, round_sum_exact
from ..numerics.formats import BF16, E4M3, E5M2, FP16, FP32, TF32, Format, get_format

E8M13 = Format("e8m13", 8, 13)
"""Hopper's FP8 accumulator: FP32's exponent range, 13 fraction bits (DeepSeek-V3 report, arXiv 2412.19437, 3.3.2)."""

TF32_INPUT_ROUNDING = "toward_zero"
"""How the hardware converts FP32 operands to TF32 (truncation: Fasi et al. 2021; MMA-Sim's truncate_to_tf32)."""

INPUT_PATHS: dict[str, tuple[Format, ...]] = {"fp16": (FP16,), "bf16": (BF16,), "tf32": (TF32,),
                                              "fp8": (E4M3, E5M2)}
"""The input formats each path takes (an FP8 path takes E4M3 and E5M2 operands, mixed too)."""

FASI = "Fasi, Higham, Mikaitis, Pranesh, PeerJ CS 7:e330 (2021)"
KHATTAK = "Khattak & Mikaitis, arXiv 2512.07004 (2025)"
MMA_SIM = "Xie et al., MMA-Sim, arXiv 2511.10909 (2025)"
DEEPSEEK = "DeepSeek-V3 report, arXiv 2412.19437, 3.3.2"


@dataclass(frozen=True)
class AccumulatorModel:
    """How one tensor-core path accumulates: one (GPU, instruction, input path, output format)."""

    gpu: str
    instruction: str
    """The PTX instruction family: "mma.sync" (also what ``wmma`` compiles to), "wgmma" or "tcgen05"."""
    inputs: str
    """The input path: "fp16", "bf16", "tf32" or "fp8" (see ``INPUT_PATHS``)."""
    output: Format
    """The format of C and D: FP32 or FP16."""
    products_per_step: int
    """k: products added in one fused step (one normalisation and rounding per step)."""
    fraction_bits: int
    """f: bits kept below the step's largest exponent (23 + the extra alignment bits; 13 for e8m13)."""
    step_format: Format
    """The format each step rounds to (the output format, or Hopper's/Ada's e8m13 for FP8 with FP32 output)."""
    rounding: str
    """The rounding of each step: "toward_zero" or "nearest"."""
    c_in_alignment: bool
    """True: c is aligned and cut with the products; False: added after each step by an IEEE FP add (nearest)."""
    source: str
    """Where the parameters come from."""
    measured: str
    """The measured rows that this record reproduces, with the match count, or why there are none."""

    @property
    def name(self) -> str:
        return f"{self.gpu}:{self.instruction}"

    @property
    def input_formats(self) -> tuple[Format, ...]:
        return INPUT_PATHS[self.inputs]

    def describe(self) -> str:
        """A few lines stating the model: k, bits, rounding, handling of c, source, measured rows."""
        c_handling = ("c aligned and cut with the products" if self.c_in_alignment else
                      "products alone per step; c added after by an IEEE add rounded to nearest")
        return "\n".join([
            f"{self.name}  inputs {self.inputs} -> output {self.output.name}",
            f"  products per fused step (k): {self.products_per_step}",
            f"  fraction bits kept below the largest exponent (f): {self.fraction_bits} (truncated, no sticky bit)",
            f"  each step rounds to {self.step_format.name}, {self.rounding}",
            f"  {c_handling}",
            f"  source: {self.source}",
            f"  measured: {self.measured}"])


def _record(gpu, instruction, inputs, output, k, f, rounding, source, measured, *, step_format=None,
            c_in_alignment=True) -> AccumulatorModel:
    return AccumulatorModel(gpu, instruction, inputs, output, k, f, step_format or output, rounding,
                            c_in_alignment, source, measured)


def _rows(file: str, matched: int = 400) -> str:
    return f"{file}.csv {matched}/400"


_INHERITED = "not measured here"

UNSOLVED_MATCHES = {"H100-e4m3-fp16": 315, "H100-e5m2-fp16": 339, "H200-e4m3-fp16": 314, "H200-e5m2-fp16": 337,
                    "B200-e4m3-fp16": 315, "B200-e5m2-fp16": 338}
"""Rows of the FP8 files with FP16 output (mma.sync) that the best model found matches, of 400 each.

Tried and worse: the c-aligned chain of every k in 1..32 with 13, 25 or more fraction bits, interleaved
halves (even/odd, pairs, fours, eights), FP16 or FP32 (RZ, RN) partial sums, per-term rounding
(truncation, floor, nearest) with 4..15 fraction bits, and c rounded RZ or kept FP32.  Also worse, of
H100-e4m3 / H100-e5m2 / B200-e4m3 / B200-e5m2: Hopper's e8m13 chain (k = 32, or two halves of 16, c
aligned) rounded to FP16 at the end, 244-285 rows of the six files; the products and c fused with 25 bits (FP32 RZ) then
rounded to FP16, 252/281/253/275; c added to the products' FP32 sum in FP32 (RN or RZ) then rounded,
252/281/253/275; the products' sum rounded toward zero to FP16 before c's add, 228/248/226/257; c ignored,
0-1 (so the GPU did use c: the measuring program passes it in C[0, 0] of the mma.sync f16 accumulator).
"""


def _volta_to_ada(gpu: str, extra_bits: int, fp8: bool) -> list[AccumulatorModel]:
    """The mma.sync paths of V100 (no extra alignment bit, k = 4) and of Ampere / Ada (one extra bit, k = 8)."""
    f = 23 + extra_bits
    k = 4 if gpu == "V100" else 8
    src = f"{FASI}; {KHATTAK} ({gpu}TC.m); {MMA_SIM} (fraction bits per architecture)"
    records = [
        _record(gpu, "mma.sync", "fp16", FP32, k, f, "toward_zero", src, _rows(f"{gpu}-fp16-fp32")),
        _record(gpu, "mma.sync", "fp16", FP16, k, f, "nearest", src, _rows(f"{gpu}-fp16-fp16")),
    ]
    if gpu == "V100":
        return records
    bf16_tf32 = f"{src}; TF32 k = 4: the k8 instruction runs as two halves (MMA-Sim's split-k)"
    records += [
        _record(gpu, "mma.sync", "bf16", FP32, 8, f, "toward_zero", bf16_tf32, _rows(f"{gpu}-bf16-fp32")),
        _record(gpu, "mma.sync", "tf32", FP32, 4, f, "toward_zero", bf16_tf32, _rows(f"{gpu}-tf32-fp32")),
    ]
    if fp8:
        fp8_src = (f"{MMA_SIM} (Ada FP8: 13 fraction bits, e8m13 output, k32 run as two halves of 16); "
                   f"{KHATTAK} (AdaTC.m, L40STC.m: fma 16, neab -10)")
        fp16_measured = _rows(f"{gpu}-e4m3-fp16") + ", " + _rows(f"{gpu}-e5m2-fp16") if gpu == "Ada" else \
            f"{_INHERITED} (the same sm_89 tensor core as Ada)"
        records += [
            _record(gpu, "mma.sync", "fp8", FP32, 16, 13, "toward_zero", fp8_src,
                    _rows(f"{gpu}-e4m3-fp32") + ", " + _rows(f"{gpu}-e5m2-fp32"), step_format=E8M13),
            _record(gpu, "mma.sync", "fp8", FP16, 16, 13, "nearest", fp8_src, fp16_measured),
        ]
    return records


def _hopper_blackwell(gpu: str, default: str) -> list[AccumulatorModel]:
    """H100 / H200 (default wgmma) and B200 (default tcgen05): two extra alignment bits, k = 16 for FP16/BF16."""
    src = f"{FASI} (Hopper: 2 extra bits); {KHATTAK} ({gpu}TC.m: fma 16, neab 2, TF32 fma 8); {MMA_SIM}"
    sync_fp8 = (f"found here on the B200 FP8 rows: products fused in steps of 32 with 25 fraction bits "
                f"(as {MMA_SIM} and {KHATTAK} give for Blackwell), c added after by an FP add rounded to "
                f"nearest (the published c-aligned, truncated model matches 252/400 rows of B200-e4m3-fp32)")
    records = []
    for instruction in ("mma.sync", default):
        measured = (lambda name: _rows(name)) if instruction == "mma.sync" else \
            (lambda name: f"{_INHERITED}: the measured FP16 / BF16 / TF32 rows ran wmma (mma.sync); "
                          f"{MMA_SIM} gives {default} the same 25 fraction bits")
        records += [
            _record(gpu, instruction, "fp16", FP32, 16, 25, "toward_zero", src, measured(f"{gpu}-fp16-fp32")),
            _record(gpu, instruction, "fp16", FP16, 16, 25, "nearest", src, measured(f"{gpu}-fp16-fp16")),
            _record(gpu, instruction, "bf16", FP32, 16, 25, "toward_zero", src, measured(f"{gpu}-bf16-fp32")),
            _record(gpu, instruction, "tf32", FP32, 8, 25, "toward_zero", src, measured(f"{gpu}-tf32-fp32")),
        ]
    if gpu == "B200":
        sync32 = _rows("B200-e4m3-fp32") + ", " + _rows("B200-e5m2-fp32")
        sync16 = (f"unsolved: {UNSOLVED_MATCHES['B200-e4m3-fp16']}/400 of B200-e4m3-fp16, "
                  f"{UNSOLVED_MATCHES['B200-e5m2-fp16']}/400 of B200-e5m2-fp16 (no model found fits)")
        default_src = f"{MMA_SIM} (tcgen05 kind::f8f6f4: 25 fraction bits over k = 32); {KHATTAK} (B200TC.m)"
        records += [
            _record(gpu, default, "fp8", FP32, 32, 25, "toward_zero", default_src, _INHERITED),
            _record(gpu, default, "fp8", FP16, 32, 25, "nearest", default_src, _INHERITED),
        ]
    else:
        sync32 = (f"{_INHERITED}: inferred from B200, whose mma.sync FP8 rows with FP16 output match H100's under "
                  "every model tried")
        e4m3, e5m2 = UNSOLVED_MATCHES[f"{gpu}-e4m3-fp16"], UNSOLVED_MATCHES[f"{gpu}-e5m2-fp16"]
        sync16 = f"unsolved: {e4m3}/400 of {gpu}-e4m3-fp16, {e5m2}/400 of {gpu}-e5m2-fp16 (no model found fits)"
        wgmma_src = f"{DEEPSEEK} (e8m13 accumulator); {MMA_SIM} (wgmma FP8: 13 fraction bits); {KHATTAK} ({gpu}TC.m)"
        records += [
            _record(gpu, default, "fp8", FP32, 32, 13, "toward_zero", wgmma_src,
                    _rows(f"{gpu}-e4m3-fp32") + ", " + _rows(f"{gpu}-e5m2-fp32") + " (C = 0)", step_format=E8M13),
            _record(gpu, default, "fp8", FP16, 32, 13, "nearest", wgmma_src, _INHERITED),
        ]
    records += [
        _record(gpu, "mma.sync", "fp8", FP32, 32, 25, "toward_zero", sync_fp8, sync32, c_in_alignment=False),
        _record(gpu, "mma.sync", "fp8", FP16, 32, 25, "nearest", sync_fp8, sync16, c_in_alignment=False),
    ]
    return records


MODELS: tuple[AccumulatorModel, ...] = tuple(
    _volta_to_ada("V100", 0, fp8=False) + _volta_to_ada("A100", 1, fp8=False) + _volta_to_ada("A2", 1, fp8=False)
    + _volta_to_ada("Ada", 1, fp8=True) + _volta_to_ada("L40S", 1, fp8=True)
    + _hopper_blackwell("H100", "wgmma") + _hopper_blackwell("H200", "wgmma") + _hopper_blackwell("B200", "tcgen05"))
"""Every modelled path, one record per (GPU, instruction, input path, output format)."""

GPUS: dict[str, str] = {}
"""Each GPU (as the records spell it) mapped to its default instruction (names match case-insensitively)."""
for _model in MODELS:
    GPUS.setdefault(_model.gpu, _model.instruction)
    if _model.instruction != "mma.sync":
        GPUS[_model.gpu] = _model.instruction
del _model


def parse_gpu(name) -> tuple[str, str] | None:
    """(gpu, instruction) for a GPU model name such as "H100", "h100:mma.sync" (case-insensitive), else None.

    Without an instruction the GPU's default is taken (wgmma on H100 / H200,
    tcgen05 on B200, mma.sync elsewhere).  An unknown instruction for a known
    GPU is a ValueError that lists the instructions it has.
    """
    if not isinstance(name, str):
        return None
    gpu_part, _, instruction = name.strip().partition(":")
    gpu = next((g for g in GPUS if g.lower() == gpu_part.strip().lower()), None)
    if gpu is None:
        return None
    instruction = instruction.strip().lower() or GPUS[gpu]
    known = sorted({m.instruction for m in MODELS if m.gpu == gpu})
    if instruction not in known:
        raise ValueError(f"{gpu} has no instruction {instruction!r}: use {' or '.join(known)}")
    return gpu, instruction


def input_path(fmt_a: Format, fmt_b: Format) -> str | None:
    """The input path ("fp16", "bf16", "tf32", "fp8") of two operand formats, or None if no path takes them."""
    for path, formats in INPUT_PATHS.items():
        if fmt_a in formats and fmt_b in formats and (path == "fp8" or fmt_a == fmt_b):
            return path
    return None


def accumulator_model(name: str, inputs="fp16", output="fp32") -> AccumulatorModel:
    """The record of GPU model ``name`` ("H100", "B200:mma.sync", ...) for ``inputs`` and ``output``.

    ``inputs`` is a path name ("fp16", "bf16", "tf32", "fp8") or an input
    format (E4M3 and E5M2 name the FP8 path); ``output`` is FP32 or FP16.
    Raises a one-line ValueError naming what the GPU offers when there is no
    such path.
    """
    parsed = parse_gpu(name)
    if parsed is None:
        raise ValueError(f"unknown GPU model {name!r}: use one of {', '.join(GPUS)} (optionally "
                         f"'GPU:instruction', e.g. 'H100:mma.sync')")
    gpu, instruction = parsed
    if inputs not in INPUT_PATHS:
        fmt = get_format(inputs)
        inputs = input_path(fmt, fmt)
    output = get_format(output)
    for model in MODELS:
        if (model.gpu, model.instruction, model.inputs, model.output) == (gpu, instruction, inputs, output):
            return model
    offered = sorted({f"{m.inputs}->{m.output.name}" for m in MODELS if (m.gpu, m.instruction) == (gpu, instruction)})
    raise ValueError(f"{gpu}:{instruction} has no path for inputs {inputs} with output {output.name}: "
                     f"it offers {', '.join(offered)}")


# --- the readable exact reference ---------------------------------------------------------------------------

def alignment_exponent(x: float, emin: int) -> int:
    """e(x) = max(floor(log2 |x|), emin) for a finite x != 0."""
    return max(math.frexp(x)[1] - 1, emin)


def fused_step(a, b, c: float, model: AccumulatorModel, fmt_a: Format, fmt_b: Format) -> float:
    """One fused step: c + sum of the products of the values in ``a`` and ``b``, as ``model`` computes it.

    Exact in Python integers and Fractions (steps 1-5 of the module docstring).
    """
    if not all(math.isfinite(v) for v in (*a, *b, c)):
        return _special_sum(a, b, c)
    terms = [(Fraction(x) * Fraction(y), alignment_exponent(x, fmt_a.emin) + alignment_exponent(y, fmt_b.emin))
             for x, y in zip(a, b) if x != 0 and y != 0]
    if model.c_in_alignment and c != 0:
        terms.append((Fraction(c), alignment_exponent(c, model.step_format.emin)))
    step = round_step(cut_sum(terms, model.fraction_bits), model.step_format, model.rounding)
    if model.c_in_alignment:
        return step
    return round_sum_exact(c, step, model.output, "nearest")


def cut_sum(terms, fraction_bits: int) -> Fraction:
    """Steps 2-4 before the rounding: the exact sum of the ``(value, alignment exponent)`` terms, each cut
    toward zero to a multiple of 2^(E - fraction_bits), E the largest exponent among them (0 for no term)."""
    if not terms:
        return Fraction(0)
    unit = Fraction(2) ** (max(exponent for _, exponent in terms) - fraction_bits)
    total = 0
    for term, _ in terms:
        cut = abs(term) // unit  # truncation toward zero: the bits below the unit are dropped
        total += cut if term > 0 else -cut
    return total * unit


def round_step(value: Fraction, fmt: Format, rounding: str) -> float:
    """value rounded to ``fmt``; +0 for zero; +-inf when the exponent leaves the format's range (any rounding)."""
    if value == 0:
        return 0.0
    if abs(value) >= Fraction(2) ** (fmt.emax + 1):
        return math.copysign(math.inf, value)
    return round_exact(value, fmt, rounding)


def _special_sum(a, b, c: float) -> float:
    """The IEEE float64 sum of the products and c (inf or NaN) when an operand is inf or NaN."""
    total = float(c)
    for x, y in zip(a, b):
        total += float(x) * float(y)
    return math.nan if math.isnan(total) else total


def reference_dot(a, b, c: float, model: AccumulatorModel, fmt_a: Format, fmt_b: Format) -> float:
    """d = c + sum_k a_k b_k through the chain of fused steps of ``model.products_per_step`` products.

    ``a`` and ``b`` hold values of ``fmt_a`` / ``fmt_b`` (TF32 operands already
    truncated), ``c`` a value of ``model.output``; each step's result is the c
    of the next.  K = 0 returns c.
    """
    k = model.products_per_step
    acc = float(c)
    for start in range(0, len(a), k):
        acc = fused_step(a[start:start + k], b[start:start + k], acc, model, fmt_a, fmt_b)
    return acc


def reference_blocked(a, b, c: float, model: AccumulatorModel, fmt_a: Format, fmt_b: Format, block: int) -> float:
    """``order="blocked:N"``: each run of ``block`` products through the chain from 0, the run results added
    to c (then to the running total) in FP32 rounded to nearest, as CUDA cores promote partial sums.

    ``model`` is an FP32-output path.
    """
    total = float(c)
    for start in range(0, len(a), block):
        run = reference_dot(a[start:start + block], b[start:start + block], 0.0, model, fmt_a, fmt_b)
        total = round_sum_exact(total, run, FP32, "nearest")
    return total
