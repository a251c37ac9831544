"""Op placement: which precision each ATen operation runs in under an emulated policy (one table).

Source: the autocast op reference of PyTorch's AMP documentation
(https://pytorch.org/docs/stable/amp.html#autocast-op-reference), "CUDA Ops
that can autocast to float16" (the lower-precision list, the same for bfloat16)
and "CUDA Ops that can autocast to float32", completed from ATen's own list
``AT_FORALL_LOWER_PRECISION_FP`` (aten/src/ATen/autocast_mode.h: convolution,
einsum, scaled_dot_product_attention).  The documentation names the public
functions (``linear``, ``conv2d``, ``cross_entropy``, ``layer_norm``); a
dispatch mode sees the ATen operators they lower to after the composite
decomposition (``linear`` -> ``t`` + ``addmm``/``mm``, ``cross_entropy`` ->
``_log_softmax`` + ``nll_loss_forward``, ``conv2d`` -> ``convolution``,
``scaled_dot_product_attention`` -> ``_scaled_dot_product_flash_attention_for_cpu``
on CPU), so the table names those operators; backward operators of the
matrix products (``convolution_backward``, the attention backwards) are
matrix products too.

Classes (``PLACEMENTS``):

* ``"matmul"``: autocast's lower-precision ops.  Inputs are rounded to the
  compute format (params / activations / gradients), the product is computed
  in float32 (or by ``fpsim.matmul`` with ``accumulate="exact"``), the output is
  rounded once.
* ``"fp32"``: autocast's float32 ops.  In the forward pass they compute and
  return FP32 whatever their inputs (softmax, layer_norm, exp, log, pow, sum,
  the losses...).  Autocast acts in the forward pass only; backward operators
  run in the precision of the tensors they receive (see ``"promote"``).
* ``"view"``: views and metadata (``view``, ``transpose``, ``permute``,
  ``detach``, ``expand``...): no arithmetic, nothing rounded.
* ``"move"``: operations that only gather, concatenate or pad values (``cat``,
  ``index_select``, the backwards of ``slice`` and ``select``): their output
  holds the inputs' values (and zeros), so it is in a low-precision format
  when all its inputs are, without rounding.
* ``"promote"``: everything else (elementwise arithmetic, activations,
  embedding, copies, mean...).  As under autocast, the op runs in the widest
  precision of its floating inputs: its output is rounded to the tensor kind's
  format when every floating input is already in that precision, and left in
  FP32 when one of them is FP32 (a residual sum of an FP32 stream and a
  lower-precision branch stays FP32, as it does on the hardware).

The policy's ``placement="low-precision"`` (pure 16-bit training, what
``model.half()`` does) overrides the table: every op except views rounds its
output, and the FP32 ops too.

The tables are keyed by ``torch.ops.aten`` operator packets (every overload of
an operator is placed alike), so a misspelt operator fails at import; an
in-place variant (``add_``, ``exp_``) is placed as its out-of-place operator,
and any other operator is ``"promote"``.  ``placement_of`` reads the tables
once per overload into an ``OpPlacement``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

aten = torch.ops.aten

MATMUL, FP32, VIEW, MOVE, PROMOTE = "matmul", "fp32", "view", "move", "promote"
PLACEMENTS = (MATMUL, FP32, VIEW, MOVE, PROMOTE)
"""The op classes, in the order of the module docstring."""


def _newer(name: str):
    """An operator that older releases of the supported torch range (from 2.4) may lack: None there."""
    return getattr(aten, name, None)


_MATMUL_OPS = (
    # CUDA ops that can autocast to float16 (as ATen operators), with their backwards
    aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.addbmm, aten.addmv, aten.addr, aten.mv, aten.dot, aten.vdot,
    aten.convolution, aten.convolution_backward, aten._convolution, aten.cudnn_convolution,
    aten.mkldnn_convolution, aten._prelu_kernel, aten._prelu_kernel_backward,
    # scaled_dot_product_attention, as each backend's kernel
    aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_flash_attention_for_cpu_backward,
    aten._scaled_dot_product_flash_attention, aten._scaled_dot_product_flash_attention_backward,
    aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_efficient_attention_backward,
    aten._scaled_dot_product_cudnn_attention, _newer("_scaled_dot_product_cudnn_attention_backward"),
    _newer("_scaled_dot_product_fused_attention_overrideable"),
    _newer("_scaled_dot_product_fused_attention_overrideable_backward"),
)

_FP32_OPS = (
    # CUDA ops that can autocast to float32 (as ATen operators)
    aten.pow, aten.acos, aten.asin, aten.cosh, aten.sinh, aten.tan, aten.erfinv, aten.exp, aten.expm1, aten.log,
    aten.log10, aten.log1p, aten.log2, aten.reciprocal, aten.rsqrt, aten.sum, aten.prod, aten.cumsum,
    aten.cumprod, aten._softmax, aten._log_softmax, aten.softplus, aten.native_layer_norm, aten.native_group_norm,
    aten.norm, aten.linalg_vector_norm, aten.renorm, aten.dist, aten._cdist_forward, aten._pdist_forward,
    aten.nll_loss_forward, aten.nll_loss2d_forward, aten.binary_cross_entropy_with_logits, aten.mse_loss,
    aten.l1_loss, aten.smooth_l1_loss, aten.huber_loss, aten.kl_div, aten.soft_margin_loss,
    aten.multi_margin_loss, aten.multilabel_margin_loss_forward, aten.hinge_embedding_loss,
    aten.margin_ranking_loss, aten.cosine_embedding_loss, aten.poisson_nll_loss, aten.triplet_margin_loss,
)

_VIEW_OPS = (
    # tensors that share their input's memory or describe it: nothing computed
    aten.view, aten._unsafe_view, aten.reshape, aten.t, aten.transpose, aten.permute, aten.expand, aten.squeeze,
    aten.unsqueeze, aten.select, aten.slice, aten.narrow, aten.split, aten.split_with_sizes, aten.unbind,
    aten.chunk, aten.diagonal, aten.as_strided, aten.alias, aten.detach, aten.unfold, aten.view_as_real,
    aten.view_as_complex, aten._reshape_alias, aten.lift_fresh, aten.lift_fresh_copy, aten._to_copy, aten.clone,
    aten.contiguous, aten.empty_like, aten.zeros_like, aten.ones_like, aten.full_like, aten.empty, aten.zeros,
    aten.ones, aten.full, aten.arange, aten.scalar_tensor, aten.empty_strided, aten.new_empty, aten.new_zeros,
    aten.new_ones, aten.new_full, aten.new_empty_strided, aten._local_scalar_dense, aten.is_same_size,
    aten.sym_size, aten.sym_stride, aten.sym_numel, aten.sym_storage_offset, aten.set_, aten.resize_,
    aten._has_compatible_shallow_copy_type, aten.equal,
)
"""Views and metadata, plus copies and constant tensors: they move or create values without arithmetic,
so rounding them would change nothing the next op does not round anyway."""

_MOVE_OPS = (
    aten.cat, aten.stack, aten.index_select, aten.gather, aten.index, aten._unsafe_index, aten.slice_backward,
    aten.select_backward, aten.slice_scatter, aten.select_scatter, aten.diagonal_backward, aten.constant_pad_nd,
    aten.flip, aten.roll, aten.repeat,
)


def op_table(*groups: tuple) -> dict:
    """{operator: value} from (value, operators) groups; an operator named twice is refused (ValueError)."""
    table = {}
    for value, ops in groups:
        for op in ops:
            if op is None:  # absent from this torch
                continue
            if op in table:
                raise ValueError(f"{op} is placed twice: as {table[op]} and as {value}")
            table[op] = value
    return table


PLACEMENT = op_table((MATMUL, _MATMUL_OPS), (MOVE, _MOVE_OPS), (FP32, _FP32_OPS), (VIEW, _VIEW_OPS))
"""ATen operator (an ``OpOverloadPacket``: all its overloads) -> placement; operators not named are
``"promote"``."""

FIRST_OUTPUT_ONLY = frozenset(op for op in (
    aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_flash_attention,
    aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_cudnn_attention,
    _newer("_scaled_dot_product_fused_attention_overrideable"),
) if op is not None)
"""Matrix-product ops whose other outputs (log-sum-exp, random seeds) stay FP32 on the hardware."""

FP32_INPUTS = op_table(
    ((5,), (aten._scaled_dot_product_flash_attention_for_cpu_backward,
            aten._scaled_dot_product_flash_attention_backward, _newer("_scaled_dot_product_cudnn_attention_backward"))),
    ((6,), (aten._scaled_dot_product_efficient_attention_backward,
            _newer("_scaled_dot_product_fused_attention_overrideable_backward"))),
)
"""Positions of the attention backwards' log-sum-exp input: FP32 on the hardware, never rounded."""

SCALED_OPERANDS: dict = op_table(
    ({0: -1, 1: -2}, (aten.mm, aten.bmm)), ({1: -1, 2: -2}, (aten.addmm, aten.baddbmm)),
    ({0: 1, 1: 1}, (aten.convolution,)), ({0: 1, 1: 1, 2: 1}, (aten.convolution_backward,)),
)
"""Under an FP8 / MX scaling recipe, the products whose operands are quantized: ATen operator ->
{argument position: the axis along which its rows or blocks run}.  For matrix products that is the
reduction axis (a's last, b's second to last); for convolutions the channel axis (the reduction runs over
channels and the kernel window; blocks run along the channels).  Attention is not listed: torchao's and
Transformer Engine's FP8 recipes leave it in high precision by default."""


class OpPlacement(NamedTuple):
    """What the tables say of one ATen overload."""

    placement: str
    """One of ``PLACEMENTS``."""
    first_output_only: bool
    """Only the first output is rounded (``FIRST_OUTPUT_ONLY``)."""
    mutates: bool
    """The op writes into one of its arguments (an in-place or ``out=`` variant)."""
    fp32_inputs: tuple
    """Argument positions never rounded (``FP32_INPUTS``)."""
    scaled_operands: dict | None
    """``SCALED_OPERANDS`` of the op, None where a scaling recipe quantizes nothing."""


@functools.lru_cache(maxsize=None)
def placement_of(func) -> OpPlacement:
    """The ``OpPlacement`` of an ATen ``OpOverload``.  An in-place variant is placed as its out-of-place
    operator; the other fields name operators exactly (a recipe quantizes ``addmm``'s operands, not
    ``addmm_``'s)."""
    op = func.overloadpacket
    placed = op
    if op not in PLACEMENT and op.__name__.endswith("_"):
        placed = getattr(aten, op.__name__.rstrip("_"), op)
    return OpPlacement(PLACEMENT.get(placed, PROMOTE), op in FIRST_OUTPUT_ONLY, func._schema.is_mutable,
                       FP32_INPUTS.get(op, ()), SCALED_OPERANDS.get(op))
