"""Training products on a GPU's tensor-core model (``Policy.accumulate="H100"``, ...), for both engines.

``product(a, b, fmt_a, fmt_b, policy, forward=)`` is a plain product of two operands
that hold values of their formats: ``fpsim.matmul(a, b, accumulate=policy.tensor_core)``
with the operands given in their formats' dtypes (so that the formats pick the path:
FP16, BF16, E4M3 / E5M2; FP32 operands are truncated to TF32, ``inputs="tf32"``), over
the whole reduction, or, where ``Policy.splits`` says so (an FP8 product that is not
fast-accumulated), ``order=f"blocked:{policy.promote_every}"``: the tensor core's chain
over each run of ``promote_every`` products, the runs added in FP32 rounded to nearest.
The result is the FP32 output of the tensor core (float32).

``scaled_product(a, b, policy, forward=)`` is a product of an FP8 / MX recipe: each
operand cast (``operand``) by the run's ``ScaledCasts`` into its elements q (values of
the element format) and its FP32 dequantization factors X (one per tensor, row or block
along the reduction axis K), the elements multiplied on the tensor core, the factors
applied after, as the references do:

* per-tensor and per-row factors (torchao's TENSORWISE / ROWWISE, TE's current and
  delayed scaling): D_ij = RN32(acc_ij * RN32(Xa_i * Xb_j)), acc = ``product`` of the
  elements (split or fast as above).  cuBLASLt's FP8 GEMM applies the FP32
  ``A_SCALE`` / ``B_SCALE`` (the scale inverses, RN32(1 / s): torchao passes
  ``scale.reciprocal()``, TE its ``scale_inv``) to the FP32 accumulator in the
  epilogue; torch's ``_scaled_mm(scale_a, scale_b)`` with row-wise scales applies
  the outer product of the two vectors the same way.  The order of the two roundings
  (scale product first) is this model's choice; cuBLAS does not document it.
* per-block factors along K (MX blocks of 32, NVFP4's 16, DeepSeek-V3's 1 x 128):
  each block's partial product p_r = the tensor core's chain over the block from 0,
  then D_ij = sum over r, in order, of RN32(p_r,ij * RN32(Xa_ir * Xb_rj)), each
  addition in FP32 rounded to nearest: DeepSeek-V3's "the partial results ... are
  multiplied by the scaling factors and added to FP32 registers on CUDA cores"
  (arXiv 2412.19437, 3.3.2), the promotion at the block size, which is how Hopper
  (no block-scaled tensor-core instruction) runs block scaling.  With two block-scaled
  operands the blocks must have one size.
* on B200's default instruction (``accumulate="B200"``), two operands in MX blocks (E8M0
  factors, one per 32 along K) of one element format, E4M3, E5M2 or E2M1, run on
  ``tcgen05.mma ... block_scale``, which applies the scales inside the tensor core
  (``fpsim.ops.block_scaled``: the MMA-Sim model).  Other block-scaled products there
  (NVFP4's FP32 factors, mixed E4M3 x E5M2 operands, 1 x 128 blocks) take the promotion
  above.

The elements are recovered from the dequantized values r (``ScaledCasts.cast``: r = RN32(q / s)
for an FP32 scale s, q X exactly for a power-of-two X) as q = the element format's nearest value
to RN32(r / X), X = RN32(1 / s): r / X is q within a relative 2^-22 or so (three FP32 roundings),
and within an absolute 2^-22 where r is an FP32 subnormal (|r - q / s| <= 2^-150, s < 2^128), far
below half the spacing of the element format's values (a relative 2^-3 for E4M3, 2^-2 for E5M2;
2^-17 at E5M2's smallest subnormal), so the nearest element is q; for a power-of-two X every step
is exact.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..numerics.formats import E8M0, HARDWARE_DTYPES, Format
from ..numerics.rounding import round as round_to
from ..ops.block_scaled import BLOCK_SCALED_MODELS, block_scaled_matmul, block_scaled_model
from ..ops.reductions import matmul
from .policy import tensor_core_operands


def product(a, b, fmt_a: Format, fmt_b: Format, policy, *, forward: bool) -> np.ndarray:
    """a @ b ((..., M, K) @ (..., K, N), values of ``fmt_a`` / ``fmt_b``) on ``policy``'s tensor core, float32."""
    fmt_a, fmt_b = tensor_core_operands(fmt_a, fmt_b)
    order = f"blocked:{policy.promote_every}" if policy.splits(forward, fmt_a, fmt_b) else "sequential"
    if fmt_a == fmt_b:  # rounding values of the format to it changes nothing (TF32: the hardware's truncation)
        return matmul(a, b, inputs=fmt_a, accumulate=policy.tensor_core, order=order)
    return matmul(_in_dtype(a, fmt_a), _in_dtype(b, fmt_b), accumulate=policy.tensor_core, order=order)


def _in_dtype(values, fmt: Format) -> np.ndarray:
    """``values`` (already values of ``fmt``) in ``fmt``'s own dtype (exact), so that ``fpsim.matmul`` knows it
    (converted from float32: ml_dtypes' conversions from float64 take three times as long)."""
    dtype = HARDWARE_DTYPES.get(fmt.name)
    if dtype is None:
        raise ValueError(f"a tensor core takes no {fmt.name} operands (see fpsim.hardware)")
    return np.asarray(values, dtype=np.float32).astype(dtype)


class Operand(NamedTuple):
    """One operand of a scaled product as the tensor core takes it (``operand``)."""

    elements: np.ndarray
    """q: values of ``fmt`` (float32)."""
    factors: np.ndarray
    """X: the FP32 dequantization factors, a 0-d array, or one per row or block along the reduction axis."""
    block: int | None
    """Values per block along the reduction axis, None for per-tensor and per-row factors."""
    fmt: Format
    """The element format."""


def operand(casts, values, kind: str, module: str, axis: int, *, weight_gradient: bool = False) -> Operand:
    """``values`` cast by the run's ``ScaledCasts`` as an operand of ``kind`` whose reduction runs along ``axis``
    (``weight_gradient``: as ``ScaledCasts.cast`` takes it), as its elements and factors (recovered as the module
    docstring says).  2-D tiles (``Scaling.block_size`` a pair) are refused: their factors vary along both axes."""
    values = np.asarray(values)
    out, factors, block = casts.cast_with_scales(values.astype(np.float32, copy=False), kind, module, axis=axis,
                                                 weight_gradient=weight_gradient)
    if isinstance(block, tuple):
        raise ValueError(f"a tensor core's scaled product takes factors per tensor, row or block along the "
                         f"reduction; {kind} scaled in {block[0]} x {block[1]} tiles are not modelled: use an "
                         f"IEEE accumulate (e.g. 'fp32') for this recipe")
    per_value = factors if block is None else np.repeat(factors, block, axis=axis)[
        (slice(None),) * axis + (slice(0, values.shape[axis]),)]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        elements = round_to(out / per_value, casts.formats[kind], saturate=True)
    return Operand(np.asarray(elements, dtype=np.float32), factors, block, casts.formats[kind])


def scaled_product(a: Operand, b: Operand, policy, *, forward: bool) -> np.ndarray:
    """a @ b, (..., M, K) @ (..., K, N), as an FP8 / MX recipe's product on ``policy``'s tensor core (the module
    docstring): ``a``'s factors along its last axis, ``b``'s along its second to last; float32."""
    if a.block is None and b.block is None:
        return apply_factors(product(a.elements, b.elements, a.fmt, b.fmt, policy, forward=forward),
                             a.factors, b.factors)
    if a.block is not None and b.block is not None and a.block != b.block:
        raise ValueError(f"a tensor core's block-scaled product needs one block size for both operands; got "
                         f"blocks of {a.block} and of {b.block}")
    inputs = _block_scaled_inputs(a, b, policy)
    if inputs is not None:
        return block_scaled_matmul(a.elements, a.factors, b.elements, b.factors, inputs)
    block = a.block or b.block
    K = a.elements.shape[-1]
    (shape_a, shape_b) = a.elements.shape, b.elements.shape
    total = np.zeros(np.broadcast_shapes(shape_a[:-2], shape_b[:-2]) + (shape_a[-2], shape_b[-1]), dtype=np.float32)
    for r, start in enumerate(range(0, K, block)):
        run = slice(start, start + block)
        partial = product(a.elements[..., run], b.elements[..., run, :], a.fmt, b.fmt, policy, forward=True)
        term = apply_factors(partial, a.factors if a.block is None else a.factors[..., r:r + 1],
                             b.factors if b.block is None else b.factors[..., r:r + 1, :])
        total = term if r == 0 else (total.astype(np.float64) + term).astype(np.float32)  # FP32, to nearest
    return total


MX_ELEMENT_INPUTS = {model.element: model.inputs for model in BLOCK_SCALED_MODELS if model.scale == E8M0}
"""The block-scaled MMA path (``fpsim.ops.block_scaled``) of each MX element format (E4M3, E5M2, E2M1)."""


def _block_scaled_inputs(a: Operand, b: Operand, policy) -> str | None:
    """The ``inputs`` of B200's block-scaled MMA for ``a`` @ ``b`` (the module docstring), or None."""
    if policy.tensor_core != "B200:tcgen05" or a.fmt != b.fmt or a.fmt not in MX_ELEMENT_INPUTS:
        return None
    block = block_scaled_model(MX_ELEMENT_INPUTS[a.fmt]).block_size
    e8m0 = all(np.array_equal(round_to(x.factors, E8M0), x.factors, equal_nan=True) for x in (a, b))
    return MX_ELEMENT_INPUTS[a.fmt] if a.block == b.block == block and e8m0 else None


def apply_factors(acc: np.ndarray, xa, xb) -> np.ndarray:
    """RN32(acc * RN32(xa * xb)), xa and xb broadcast over acc (each product of two float32s exact in float64)."""
    factor = (np.asarray(xa, dtype=np.float64) * np.asarray(xb, dtype=np.float64)).astype(np.float32)
    return (acc.astype(np.float64) * factor).astype(np.float32)
