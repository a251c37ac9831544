"""B200's block-scaled tensor-core MMA (``tcgen05.mma`` kind::mxf8f6f4 / kind::mxf4 / kind::mxf4nvf4), bit-exact.

The hardware computes D = C + sum_k (a_k X_a(k)) (b_k X_b(k)), X the block scale of k's block along K, in
fused steps of ``products_per_step`` (one instruction's K), each truncated to FP32.  The model is MMA-Sim's
(Xie et al., arXiv 2511.10909; ``microsoft/MMA-Sim``: ``mmasim/simulator/nv.py`` class ``TCGen05MMASim``,
``mmasim/simulator/functions.py`` ``fused_dot_add`` / ``nv_fused_dot_add`` and
``nv_fused_dot_add_with_block_scale``), which its authors checked against B200 outputs:

* kind::mxf8f6f4 (MXFP8: E4M3 or E5M2 elements, one E8M0 scale per 32 along K; K = 32 per step): every
  non-zero product is a term of value a b X_a X_b and alignment exponent e(a) + e(b) + log2 X_a + log2 X_b
  (e(x) = max(floor(log2 |x|), emin); a subnormal element counts at its format's emin); c (FP32, emin -126)
  is a term too; E = the largest exponent; every term is cut toward zero to a multiple of 2^(E - 25); the
  cut terms are added exactly and the sum truncated to FP32 (``nv_fused_dot_add``, 25 fraction bits:
  ``arch_accum_fractional_bits["Blackwell"]``).  An inf or NaN in the float64 sum of the scaled products
  and c (a NaN scale, 0xFF, included) is the step's result.
* kind::mxf4 (MXFP4: E2M1, E8M0 per 32) and kind::mxf4nvf4 (NVFP4: E2M1, E4M3 per 16, the sign of a scale
  ignored; K = 64 per step): each group of 16 products is summed exactly, the sum multiplied by the two
  scales of its block; the group's alignment exponent is e(X_a) + e(X_b) (the scales' alone: a group whose
  products sum to 0 still sets E; a zero E4M3 scale takes no part); c as above; cut at 35 fraction bits
  (``TCGen05MMASim``: ``35 if kind.startswith("mxf4") else 25``); the sum truncated to FP32.  A NaN scale of
  the step or a NaN c gives NaN (``nv_fused_dot_add_with_block_scale``); an inf c stays inf (inferred: MMA-Sim
  does not handle it).

This matches the summary fpsim was given (k = 32 / 64, 25 / 35 bits, groups of 16) on every point; the
source adds two details stated above: zero-sum groups align, and the group exponent is the scales' only.

Each step's result is the c of the next.  K not a multiple of the step is padded with zero elements, as a
kernel pads its last tile: the padding blocks (no element of K) take no part.  No B200 rows were measured
for these paths.  ``reference_dot`` is the exact algorithm in Fractions; ``block_scaled_matmul`` runs the
numba kernels of ``_block_scaled_kernels``, which the tests hold against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from . import _block_scaled_kernels as kernels
from .tensor_cores import MMA_SIM, alignment_exponent, cut_sum, round_step
from ..numerics.formats import E2M1, E4M3, E5M2, E8M0, FP32, Format
from ._reduction_kernels import add_arrays
from .quantize import nvfp4_tensor_scale, quantize
from ..numerics.kernels import MODE_CODES
from ..numerics.rounding import float64_params, kernel_params
from ..numerics.rounding import round as round_to


@dataclass(frozen=True)
class BlockScaledModel:
    """One block-scaled tensor-core path: (GPU, instruction kind, element and scale formats)."""

    gpu: str
    instruction: str
    """The PTX instruction and kind, e.g. "tcgen05.mma kind::mxf8f6f4"."""
    inputs: str
    """The ``fpsim.quantize`` preset the operands are quantized with: "mxfp8", "mxfp8_e5m2", "mxfp4", "nvfp4"."""
    element: Format
    """The element format of A and B."""
    scale: Format
    """The block-scale format: E8M0, or E4M3 (UE4M3: its sign is ignored)."""
    block_size: int
    """Elements along K that share one scale."""
    products_per_step: int
    """k: products per fused step (one instruction's K)."""
    group_size: int
    """Products summed exactly before the scales multiply them and the alignment (1: each product aligns alone)."""
    fraction_bits: int
    """f: bits kept below the step's largest exponent, truncated."""
    source: str
    measured: str
    output: Format = FP32
    """The format of C and D (each step rounds to it toward zero)."""

    @property
    def name(self) -> str:
        return f"{self.gpu}:{self.instruction}"

    @property
    def c_in_alignment(self) -> bool:
        """Whether C is the MMA's accumulator input, aligned and cut with the first step's products (MX), or is
        added in the epilogue, D = RN32(alpha * acc + C) (NVFP4: its FP32 tensor scales alpha multiply the
        MMA's result, ``matmul_block_scaled``)."""
        return self.scale == E8M0

    def describe(self) -> str:
        """A few lines stating the model."""
        grouping = ("each product aligned alone, its exponent raised by the two scales' exponents"
                    if self.group_size == 1 else
                    f"each group of {self.group_size} products summed exactly, times its two scales; "
                    f"aligned at the scales' exponents")
        return "\n".join([
            f"{self.name}  inputs {self.inputs} ({self.element.name} elements, {self.scale.name} scale per "
            f"{self.block_size}) -> output {self.output.name}",
            f"  products per fused step (k): {self.products_per_step}",
            f"  {grouping}",
            f"  fraction bits kept below the largest exponent (f): {self.fraction_bits} (truncated, no sticky bit)",
            "  each step rounds to fp32, toward zero; " + ("c aligned and cut with the products"
                                                            if self.c_in_alignment else
                                                            "c added after: D = RN32(alpha * acc + c)"),
            f"  source: {self.source}",
            f"  measured: {self.measured}"])


_SOURCE = (f"{MMA_SIM}: mmasim/simulator/nv.py TCGen05MMASim, mmasim/simulator/functions.py "
           "{function} (microsoft/MMA-Sim)")
_MEASURED = "not measured: no rows exist for these paths"

BLOCK_SCALED_MODELS: tuple[BlockScaledModel, ...] = (
    BlockScaledModel("B200", "tcgen05.mma kind::mxf8f6f4", "mxfp8", E4M3, E8M0, 32, 32, 1, 25,
                     _SOURCE.format(function="nv_fused_dot_add"), _MEASURED),
    BlockScaledModel("B200", "tcgen05.mma kind::mxf8f6f4", "mxfp8_e5m2", E5M2, E8M0, 32, 32, 1, 25,
                     _SOURCE.format(function="nv_fused_dot_add"), _MEASURED),
    BlockScaledModel("B200", "tcgen05.mma kind::mxf4", "mxfp4", E2M1, E8M0, 32, 64, 16, 35,
                     _SOURCE.format(function="nv_fused_dot_add_with_block_scale"), _MEASURED),
    BlockScaledModel("B200", "tcgen05.mma kind::mxf4nvf4", "nvfp4", E2M1, E4M3, 16, 64, 16, 35,
                     _SOURCE.format(function="nv_fused_dot_add_with_block_scale"), _MEASURED),
)
"""Every modelled block-scaled path, one record per input preset."""

BLOCK_SCALED_INPUTS = {model.inputs: model for model in BLOCK_SCALED_MODELS}
"""The record of each ``inputs=`` preset name."""


def block_scaled_model(inputs: str) -> BlockScaledModel:
    """The record for ``inputs`` ("mxfp8" (E4M3 elements), "mxfp8_e4m3", "mxfp8_e5m2", "mxfp4", "nvfp4")."""
    key = "mxfp8" if inputs == "mxfp8_e4m3" else inputs
    if key not in BLOCK_SCALED_INPUTS:
        raise ValueError(f"no block-scaled path for inputs {inputs!r}: use {', '.join(BLOCK_SCALED_INPUTS)}")
    return BLOCK_SCALED_INPUTS[key]


# --- the readable exact reference ---------------------------------------------------------------------------

def reference_dot(a, scales_a, b, scales_b, c: float, model: BlockScaledModel) -> float:
    """d = c + sum_k a_k X_a b_k X_b through the chain of fused steps, exactly (the module docstring's rules).

    ``a``, ``b``: K element values; ``scales_a``, ``scales_b``: one scale per block of ``model.block_size``
    (ceil(K / block) of them; E8M0 values, NaN for 0xFF, or E4M3 values); ``c``: an FP32 value.
    """
    k = model.products_per_step
    acc = float(c)
    for start in range(0, len(a), k):
        step = range(start, min(start + k, len(a)))
        if model.group_size == 1:
            acc = _mxf8_step(a, scales_a, b, scales_b, acc, step, model)
        else:
            acc = _mxf4_step(a, scales_a, b, scales_b, acc, step, model)
    return acc


def _mxf8_step(a, scales_a, b, scales_b, c: float, step: range, model: BlockScaledModel) -> float:
    block = model.block_size
    plain = c + sum(float(a[i]) * float(b[i]) * float(scales_a[i // block]) * float(scales_b[i // block])
                    for i in step)
    if not math.isfinite(plain):
        return plain
    terms = [(Fraction(a[i]) * Fraction(b[i]) * Fraction(scales_a[i // block]) * Fraction(scales_b[i // block]),
              alignment_exponent(a[i], model.element.emin) + alignment_exponent(b[i], model.element.emin)
              + _scale_exponent(scales_a[i // block], model) + _scale_exponent(scales_b[i // block], model))
             for i in step if a[i] != 0 and b[i] != 0]
    if c != 0:
        terms.append((Fraction(c), alignment_exponent(c, FP32.emin)))
    return round_step(cut_sum(terms, model.fraction_bits), FP32, "toward_zero")


def _mxf4_step(a, scales_a, b, scales_b, c: float, step: range, model: BlockScaledModel) -> float:
    block, group = model.block_size, model.group_size
    end = -(-step.stop // block) * block  # the step's groups run to the end of its last block (zero padding)
    starts = range(step.start, min(step.start + model.products_per_step, end), group)
    pairs = [(abs(float(scales_a[g // block])), abs(float(scales_b[g // block]))) for g in starts]
    if math.isnan(c) or any(math.isnan(x) or math.isnan(y) for x, y in pairs):
        return math.nan
    if math.isinf(c):
        return c
    terms = []
    for g, (x, y) in zip(starts, pairs):
        if x != 0 and y != 0:
            total = sum(Fraction(a[i]) * Fraction(b[i]) for i in range(g, min(g + group, step.stop)))
            terms.append((total * Fraction(x) * Fraction(y), _scale_exponent(x, model) + _scale_exponent(y, model)))
    if c != 0:
        terms.append((Fraction(c), alignment_exponent(c, FP32.emin)))
    return round_step(cut_sum(terms, model.fraction_bits), FP32, "toward_zero")


def _scale_exponent(x: float, model: BlockScaledModel) -> int:
    """e(X) = max(floor(log2 |X|), emin of the scale format) of a non-zero scale."""
    return alignment_exponent(abs(x), model.scale.emin)


# --- the fast path and fpsim.matmul's entry ----------------------------------------------------------------

def block_scaled_matmul(qa, scales_a, qb, scales_b, inputs: str, *, C=None) -> np.ndarray:
    """C + (qa X_a) @ (qb X_b) as B200's block-scaled MMA computes it, from already quantized operands.

    ``qa`` (..., M, K) and ``qb`` (..., K, N): element values of the path's format (``block_scaled_model``);
    ``scales_a`` (..., M, ceil(K / block)) and ``scales_b`` (..., ceil(K / block), N): the block scales
    along K (E8M0 values as floats, NaN for 0xFF; or E4M3 values), the shapes ``fpsim.quantize(...,
    return_scales=True)`` gives along K; ``C`` broadcasts to (..., M, N) and is rounded to FP32 (nearest).
    Returns the float32 (..., M, N) result.
    """
    model = block_scaled_model(inputs)
    qa, qb = (np.asarray(x, dtype=np.float64) for x in (qa, qb))
    scales_a, scales_b = (np.asarray(x, dtype=np.float64) for x in (scales_a, scales_b))
    if qa.ndim < 2 or qb.ndim < 2 or qa.shape[-1] != qb.shape[-2]:
        raise ValueError(f"block_scaled_matmul: shapes {qa.shape} @ {qb.shape} are not (..., M, K) @ (..., K, N)")
    M, K, N = qa.shape[-2], qa.shape[-1], qb.shape[-1]
    blocks = -(-K // model.block_size)
    if scales_a.shape != qa.shape[:-1] + (blocks,) or scales_b.shape != qb.shape[:-2] + (blocks, N):
        raise ValueError(f"block_scaled_matmul: scales of shapes {scales_a.shape} and {scales_b.shape} do not "
                         f"give one scale per {model.block_size} along K = {K}")
    for name, values, fmt in (("A", qa, model.element), ("B", qb, model.element),
                              ("scales of A", scales_a, model.scale), ("scales of B", scales_b, model.scale)):
        held = np.isnan(values) | (np.asarray(round_to(values, fmt), dtype=np.float64) == values)
        if not held.all():
            raise ValueError(f"block_scaled_matmul: the {name} hold values that are not {fmt.name} values")
    batch = np.broadcast_shapes(qa.shape[:-2], qb.shape[:-2])
    c = np.zeros(batch + (M, N)) if C is None else \
        np.asarray(round_to(np.broadcast_to(np.asarray(C, dtype=np.float64), batch + (M, N)), FP32),
                   dtype=np.float64)
    out = np.empty(batch + (M, N))
    qa, qb = np.broadcast_to(qa, batch + (M, K)), np.broadcast_to(qb, batch + (K, N))
    scales_a = np.broadcast_to(scales_a, batch + (M, blocks))
    scales_b = np.broadcast_to(scales_b, batch + (blocks, N))
    for index in np.ndindex(*batch):
        out[index] = _product(qa[index], scales_a[index], qb[index], scales_b[index], c[index], model)
    return out.astype(np.float32)


def _product(a, sa, b, sb, c, model: BlockScaledModel) -> np.ndarray:
    """One (M, N) product by the kernels: K padded with zeros to a whole number of steps, padding blocks scale 0."""
    k, block = model.products_per_step, model.block_size
    K = a.shape[1]
    padded_k = max(-(-K // k), 1) * k
    a2 = np.zeros((a.shape[0], padded_k))
    a2[:, :K] = a
    b2 = np.zeros((padded_k, b.shape[1]))
    b2[:K] = b
    sa2 = np.zeros((a.shape[0], padded_k // block))
    sa2[:, :sa.shape[1]] = sa
    sb2 = np.zeros((padded_k // block, b.shape[1]))
    sb2[:sb.shape[0]] = sb
    c = np.ascontiguousarray(c)
    nearest = kernel_params(FP32, np.float64).nearest_args()
    if model.group_size == 1:
        return kernels.mxf8_matmul(a2, sa2, b2, sb2, c, model.element.emin, model.element.emin, k,
                                   model.fraction_bits, nearest)
    return kernels.mxf4_matmul(a2, sa2, b2, sb2, c, block, model.scale.emin, k, model.group_size,
                               model.fraction_bits, nearest)


def quantized_operands(A, B, inputs: str, mode: str = "nearest", rng=None):
    """(qa, X_a, qb, X_b, alpha): A and B block-quantized along K by ``fpsim.quantize`` with the preset ``inputs``.

    The element values q and the hardware's block scales X are read off the quantizer's own results: for MX,
    q = value / X (exact: X is a power of two); for NVFP4 the quantizer returns d = RN32(P s) (P the
    tensor's FP32 scale, s the E4M3 block scale), and s = E4M3(d / P), q = E2M1(value / d), each checked to
    give back d = RN32(P s) and value = RN32(q d); ``alpha`` = RN32(P_a P_b) (1 for MX).
    """
    model = block_scaled_model(inputs)
    preset = "mxfp8_e4m3" if model.inputs == "mxfp8" else model.inputs
    parts = []
    for x, axis in ((A, -1), (B, -2)):
        x = np.asarray(x, dtype=np.float64)
        values, scales = quantize(x, preset, axis=axis, return_scales=True, mode=mode, rng=rng)
        values = np.asarray(values, dtype=np.float64)
        spread = np.repeat(scales, model.block_size, axis=axis)  # each element's scale
        spread = spread[..., :x.shape[-1]] if axis == -1 else spread[..., :x.shape[-2], :]
        if model.scale == E8M0:
            with np.errstate(invalid="ignore"):
                parts += [np.where(np.isnan(spread), 0.0, values / spread), scales]
            continue
        tensor_scale = nvfp4_tensor_scale(float(np.max(np.abs(x), initial=0.0)))
        with np.errstate(invalid="ignore", divide="ignore"):
            block_scales = np.asarray(round_to(scales / tensor_scale, E4M3), dtype=np.float64)
            q = np.asarray(round_to(values / spread, E2M1), dtype=np.float64)
        back = np.float32(tensor_scale) * block_scales.astype(np.float32)
        if not (np.array_equal(back, scales.astype(np.float32))
                and np.array_equal((q.astype(np.float32) * spread.astype(np.float32)), values.astype(np.float32))):
            raise ValueError("nvfp4: the E4M3 block scales cannot be read back from this tensor's FP32 scales "
                             "(subnormal FP32 scales): pass the quantized values to block_scaled_matmul")
        parts += [q, block_scales, tensor_scale]
    if model.scale == E8M0:
        return parts[0], parts[1], parts[2], parts[3], 1.0
    return parts[0], parts[1], parts[3], parts[4], float(np.float32(parts[2]) * np.float32(parts[5]))


def matmul_block_scaled(A, B, inputs: str, *, C=None, mode: str = "nearest", rng=None) -> np.ndarray:
    """``fpsim.matmul(A, B, inputs=PRESET, accumulate="B200", C=C)``: quantize along K, then the block-scaled MMA.

    MX presets: C is the MMA's accumulator input (in the first step's alignment).  NVFP4: the tensor scales
    multiply the MMA's result in the epilogue, with C: D = RN32(alpha * acc + C) (one FP32 rounding of the
    exact value, as CUTLASS's LinearCombination fma), acc the MMA from 0.
    """
    qa, sa, qb, sb, alpha = quantized_operands(A, B, inputs, mode, rng)
    if block_scaled_model(inputs).c_in_alignment:
        return block_scaled_matmul(qa, sa, qb, sb, inputs, C=C)
    acc = block_scaled_matmul(qa, sa, qb, sb, inputs).astype(np.float64)
    scaled = (alpha * acc).ravel()  # exact: two FP32 values' product has 48 bits, well inside float64's range
    c = np.zeros(acc.shape) if C is None else np.asarray(round_to(np.asarray(C, dtype=np.float64), FP32),
                                                         dtype=np.float64)
    c = np.ascontiguousarray(np.broadcast_to(c, acc.shape), dtype=np.float64).ravel()
    summed = add_arrays(scaled, c, float64_params(FP32), MODE_CODES["nearest"], 0)  # the exact sum, rounded once
    return summed.reshape(acc.shape).astype(np.float32)
