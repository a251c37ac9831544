"""Op placement: which precision each ATen operation runs in under an emulated policy, one table per
autocast backend (``TABLES``, chosen by ``Policy.placement``).

``"autocast-cuda"`` (the default).  Source: the autocast op reference of PyTorch's AMP documentation
(https://pytorch.org/docs/stable/amp.html#autocast-op-reference), "CUDA Ops that can autocast to float16"
(the lower-precision list, the same for bfloat16) and "CUDA Ops that can autocast to float32", completed
from ATen's own list ``AT_FORALL_LOWER_PRECISION_FP`` (aten/src/ATen/autocast_mode.h: convolution, einsum,
scaled_dot_product_attention).

``"autocast-cpu"``.  Source: the CPU lists of ATen's aten/src/ATen/autocast_mode.cpp (``KERNEL_CPU(...,
lower_precision_fp)`` and ``KERNEL_CPU(..., fp32)``; "CPU Ops that can autocast to bfloat16" and "CPU Ops
that can autocast to float32" of the same documentation page), checked against the installed torch by
experiment: each op run under ``torch.autocast("cpu", torch.bfloat16)`` on float32 inputs (a
lower-precision op returns bfloat16) and on bfloat16 inputs (an FP32 op returns float32)
(``benchmarks/cpu_autocast_compare.py --probe`` prints the probe).  The CPU lists differ from CUDA's in
two ways that matter for transformers: softmax, log_softmax, layer_norm, group_norm, exp, log, pow, rsqrt,
sum, cumsum and the norms are in neither CPU list, so they run in the precision of their input (bfloat16
in, bfloat16 out) where CUDA runs them in FP32; and mv, dot, addmv, addr are not lower-precision ops on
the CPU when called directly (the table keeps mv and dot as products: ``matmul``, a listed op, lowers to
them).  The norms take a bfloat16 input with FP32 weights and return bfloat16 (their mixed-dtype CPU
kernels), so there their first input alone decides the promotion (``PROMOTE_FROM_INPUT``).
``_log_softmax`` stays FP32: cross_entropy (on the FP32 list) lowers to it; a direct log_softmax of a
bfloat16 tensor is bfloat16 under real CPU autocast.  Under this table the emulated attention also
computes exp as ATen's CPU flash kernel does for 16-bit inputs (``fpsim.torch.products.cpu_fast_exp``).
Measured against real CPU autocast (``benchmarks/cpu_autocast_compare.py``: GPT-2, Llama, BERT configs,
BF16 and FP16): the logits bit-identical, against 43-89 % under ``"autocast-cuda"``.  Known differences
left: direct mv / dot / log_softmax calls (above), and ATen's bfloat16 ``pow(x, 3)``, which rounds x*x to
bfloat16 before multiplying by x where every promoted op here rounds once.

The documentation names the public functions (``linear``, ``conv2d``, ``cross_entropy``, ``layer_norm``); a
dispatch mode sees the ATen operators they lower to after the composite decomposition (``linear`` ->
``t`` + ``addmm``/``mm``, ``cross_entropy`` -> ``_log_softmax`` + ``nll_loss_forward``, ``conv2d`` ->
``convolution``, ``scaled_dot_product_attention`` -> ``_scaled_dot_product_flash_attention_for_cpu`` on
CPU), so the tables name those operators; backward operators of the matrix products
(``convolution_backward``, the attention backwards) are matrix products too.  An operator with a
``CompositeImplicitAutograd`` kernel (``OpPlacement.composite``: ``linear``, ``layer_norm``, ``matmul``,
``scaled_dot_product_attention``, ``reshape``, ``to``...) never reaches the mode with autograd on, and
reaches it whole under ``torch.inference_mode()``: the mode then runs that kernel, so its parts are placed
exactly as with autograd on and inference gives the values training's forward gives.  So the tables name
no composite (``op_table`` refuses one); a composite loss of the FP32 lists (``l1_loss``, ``kl_div``,
``cosine_embedding_loss``...) is its parts, placed by the promotion rule.

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
``model.half()`` does) overrides the table (it reads CUDA's): every op except views rounds its output,
and the FP32 ops too.

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


_ATTENTION_OPS = (
    # scaled_dot_product_attention, as each backend's kernel
    aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_flash_attention_for_cpu_backward,
    aten._scaled_dot_product_flash_attention, aten._scaled_dot_product_flash_attention_backward,
    aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_efficient_attention_backward,
    aten._scaled_dot_product_cudnn_attention, _newer("_scaled_dot_product_cudnn_attention_backward"),
    _newer("_scaled_dot_product_fused_attention_overrideable"),
    _newer("_scaled_dot_product_fused_attention_overrideable_backward"),
)
_CONVOLUTION_OPS = (
    # conv1d/2d/3d, conv_transpose1d/2d/3d and prelu, with their backwards
    aten.convolution, aten.convolution_backward, aten._convolution, aten.cudnn_convolution,
    aten.mkldnn_convolution, aten._prelu_kernel, aten._prelu_kernel_backward,
)
_CUDA_MATMUL_OPS = (
    # CUDA ops that can autocast to float16 (as ATen operators), with their backwards
    aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.addbmm, aten.addmv, aten.addr, aten.mv, aten.dot, aten.vdot,
    *_CONVOLUTION_OPS, *_ATTENTION_OPS,
)
_CPU_MATMUL_OPS = (
    # KERNEL_CPU(..., lower_precision_fp): mm, bmm, baddbmm, addmm, addbmm, linear and matmul (-> mm, bmm, mv,
    # dot), the convolutions, prelu, scaled_dot_product_attention; not addmv, addr, vdot
    aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.addbmm, aten.mv, aten.dot, *_CONVOLUTION_OPS, *_ATTENTION_OPS,
)

_LOSS_OPS = (
    # the losses on both backends' FP32 lists that are kernels of their own (the others are composites)
    aten.nll_loss_forward, aten.nll_loss2d_forward, aten.binary_cross_entropy_with_logits, aten.mse_loss,
    aten.smooth_l1_loss, aten.huber_loss, aten.soft_margin_loss, aten.multi_margin_loss,
    aten.multilabel_margin_loss_forward,
)
_CUDA_FP32_OPS = (
    # CUDA ops that can autocast to float32 (as ATen operators)
    aten.pow, aten.acos, aten.asin, aten.cosh, aten.sinh, aten.tan, aten.erfinv, aten.exp, aten.expm1, aten.log,
    aten.log10, aten.log1p, aten.log2, aten.reciprocal, aten.rsqrt, aten.sum, aten.prod, aten.cumsum,
    aten.cumprod, aten._softmax, aten._log_softmax, aten.softplus, aten.native_layer_norm, aten.native_group_norm,
    aten.norm, aten.linalg_vector_norm, aten.renorm, aten.dist, aten._cdist_forward, aten._pdist_forward,
    *_LOSS_OPS,
)
_CPU_FP32_OPS = (
    # KERNEL_CPU(..., fp32) (as ATen operators; the linear-algebra and FFT ones kept to those a model meets)
    aten.prod, aten._cdist_forward, aten.trace, aten.polar, aten.grid_sampler_2d, aten.grid_sampler_3d,
    aten.avg_pool3d, aten.max_pool3d_with_indices, aten._adaptive_avg_pool3d, aten.adaptive_max_pool3d,
    aten.fractional_max_pool2d, aten.fractional_max_pool3d, aten.max_unpool2d, aten.max_unpool3d,
    aten.reflection_pad1d, aten.reflection_pad2d, aten.replication_pad1d, aten.replication_pad2d,
    aten.replication_pad3d, aten.binary_cross_entropy, aten._ctc_loss, aten._fft_r2c, aten._fft_c2r,
    aten._fft_c2c, aten.linalg_cholesky_ex, aten.linalg_inv_ex, aten.linalg_qr, aten._linalg_svd,
    aten._linalg_eigh, aten.linalg_eig, aten.linalg_lstsq, aten.cholesky_solve, aten.cholesky_inverse,
    aten.ormqr, aten.triangular_solve,
    *_LOSS_OPS,
    aten._log_softmax,  # not on the list: cross_entropy's part (see the module docstring)
)

_VIEW_OPS = (
    # tensors that share their input's memory or describe it: nothing computed
    aten.view, aten._unsafe_view, aten.t, aten.transpose, aten.permute, aten.expand, aten.squeeze,
    aten.unsqueeze, aten.select, aten.slice, aten.split, aten.split_with_sizes, aten.unbind,
    aten.diagonal, aten.as_strided, aten.alias, aten.detach, aten.unfold, aten.view_as_real,
    aten.view_as_complex, aten._reshape_alias, aten.lift_fresh, aten.lift_fresh_copy, aten._to_copy, aten.clone,
    aten.empty_like, aten.zeros_like, aten.ones_like, aten.full_like, aten.empty, aten.zeros,
    aten.ones, aten.full, aten.arange, aten.scalar_tensor, aten.empty_strided, aten.new_empty, aten.new_zeros,
    aten.new_ones, aten.new_full, aten.new_empty_strided, aten._local_scalar_dense, aten.is_same_size,
    aten.set_, aten.resize_, aten.equal,
)
"""Views and metadata, plus copies and constant tensors: they move or create values without arithmetic,
so rounding them would change nothing the next op does not round anyway."""

_MOVE_OPS = (
    aten.cat, aten.stack, aten.index_select, aten.gather, aten.index, aten._unsafe_index, aten.slice_backward,
    aten.select_backward, aten.slice_scatter, aten.select_scatter, aten.diagonal_backward, aten.constant_pad_nd,
    aten.flip, aten.roll, aten.repeat,
)

COMPOSITE = torch._C.DispatchKey.CompositeImplicitAutograd
"""The dispatch key of ATen's decompositions (an op's ``_op_dk(COMPOSITE, ...)`` runs its parts)."""


def _is_composite(overload) -> bool:
    """Whether ATen runs ``overload`` as its ``CompositeImplicitAutograd`` kernel (its decomposition): it has
    one, and no kernel of its own for CPU tensors, which ATen prefers (``silu_backward`` and ``mish_backward``
    have both: their decomposition, run in the mode's place, differed from the kernel by an FP32 ulp)."""
    name, has = overload.name(), torch._C._dispatch_has_kernel_for_dispatch_key
    return has(name, COMPOSITE) and not (has(name, "CPU") or has(name, "CompositeExplicitAutograd"))


def op_table(*groups: tuple) -> dict:
    """{operator: value} from (value, operators) groups; an operator named twice, or one that is only a
    composite (no overload of it reaches the mode: its parts do), is refused (ValueError)."""
    table = {}
    for value, ops in groups:
        for op in ops:
            if op is None:  # absent from this torch
                continue
            if op in table:
                raise ValueError(f"{op} is placed twice: as {table[op]} and as {value}")
            overloads = [getattr(op, name) for name in op.overloads()]
            if overloads and all(_is_composite(overload) for overload in overloads):
                raise ValueError(f"{op} is a composite: the mode places its parts, not it")
            table[op] = value
    return table


_SHARED = ((MOVE, _MOVE_OPS), (VIEW, _VIEW_OPS))
TABLES = {
    "autocast-cuda": op_table((MATMUL, _CUDA_MATMUL_OPS), (FP32, _CUDA_FP32_OPS), *_SHARED),
    "autocast-cpu": op_table((MATMUL, _CPU_MATMUL_OPS), (FP32, _CPU_FP32_OPS), *_SHARED),
}
"""Placement name -> {ATen operator (an ``OpOverloadPacket``: all its overloads) -> placement}; operators not
named are ``"promote"``.  ``"low-precision"`` reads ``"autocast-cuda"``'s (only its views matter there)."""
PLACEMENT = TABLES["autocast-cuda"]
"""The default table."""

PROMOTE_FROM_INPUT = {"autocast-cpu": frozenset(
    (aten.native_layer_norm, aten.native_group_norm, aten.native_batch_norm, aten._native_batch_norm_legit,
     aten._native_batch_norm_legit_no_training))}
"""Per table, the promoted ops whose first input alone decides their precision (a bfloat16 input with FP32
weights gives a bfloat16 output: the CPU norms' mixed-dtype kernels)."""

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
    promote_from: tuple | None
    """The argument positions whose formats decide a promoted op's precision (``PROMOTE_FROM_INPUT``);
    None: every floating input."""
    composite: bool
    """ATen runs the op as its ``CompositeImplicitAutograd`` kernel: the mode runs that and places its parts."""


@functools.lru_cache(maxsize=None)
def placement_of(func, placement: str = "autocast-cuda") -> OpPlacement:
    """The ``OpPlacement`` of an ATen ``OpOverload`` under the policy placement ``placement`` (a name of
    ``TABLES``, or ``"low-precision"``).  An in-place variant is placed as its out-of-place operator; the other
    fields name operators exactly (a recipe quantizes ``addmm``'s operands, not ``addmm_``'s)."""
    table = TABLES.get(placement, PLACEMENT)
    op = func.overloadpacket
    placed = op
    if op not in table and op.__name__.endswith("_"):
        placed = getattr(aten, op.__name__.rstrip("_"), op)
    promote_from = (0,) if placed in PROMOTE_FROM_INPUT.get(placement, ()) else None
    return OpPlacement(table.get(placed, PROMOTE), op in FIRST_OUTPUT_ONLY, func._schema.is_mutable,
                       FP32_INPUTS.get(op, ()), SCALED_OPERANDS.get(op), promote_from, _is_composite(func))
