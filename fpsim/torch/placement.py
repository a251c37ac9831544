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
"""

from __future__ import annotations

MATMUL, FP32, VIEW, MOVE, PROMOTE = "matmul", "fp32", "view", "move", "promote"
PLACEMENTS = (MATMUL, FP32, VIEW, MOVE, PROMOTE)
"""The op classes, in the order of the module docstring."""

_MATMUL_OPS = (
    # CUDA ops that can autocast to float16 (as ATen operators), with their backwards
    "mm", "addmm", "bmm", "baddbmm", "addbmm", "addmv", "addr", "mv", "dot", "vdot",
    "convolution", "convolution_backward", "_convolution", "cudnn_convolution", "mkldnn_convolution",
    "_prelu_kernel", "_prelu_kernel_backward",
    # scaled_dot_product_attention, as each backend's kernel
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention_for_cpu_backward",
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_backward",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_efficient_attention_backward",
    "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_cudnn_attention_backward",
    "_scaled_dot_product_fused_attention_overrideable",
    "_scaled_dot_product_fused_attention_overrideable_backward",
)

_FP32_OPS = (
    # CUDA ops that can autocast to float32 (as ATen operators)
    "pow", "acos", "asin", "cosh", "sinh", "tan", "erfinv", "exp", "expm1", "log", "log10", "log1p", "log2",
    "reciprocal", "rsqrt", "sum", "prod", "cumsum", "cumprod", "_softmax", "_log_softmax", "softplus",
    "native_layer_norm", "native_group_norm", "norm", "linalg_vector_norm", "renorm", "dist", "_cdist_forward",
    "_pdist_forward", "nll_loss_forward", "nll_loss2d_forward", "binary_cross_entropy_with_logits", "mse_loss",
    "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div", "soft_margin_loss", "multi_margin_loss",
    "multilabel_margin_loss_forward", "hinge_embedding_loss", "margin_ranking_loss", "cosine_embedding_loss",
    "poisson_nll_loss", "triplet_margin_loss",
)

_VIEW_OPS = (
    # tensors that share their input's memory or describe it: nothing computed
    "view", "_unsafe_view", "reshape", "t", "transpose", "permute", "expand", "squeeze", "unsqueeze",
    "select", "slice", "narrow", "split", "split_with_sizes", "unbind", "chunk", "diagonal", "as_strided",
    "alias", "detach", "unfold", "view_as_real", "view_as_complex", "_reshape_alias", "lift_fresh",
    "lift_fresh_copy", "_to_copy", "clone", "contiguous", "empty_like", "zeros_like", "ones_like",
    "full_like", "empty", "zeros", "ones", "full", "arange", "scalar_tensor", "empty_strided", "new_empty",
    "new_zeros", "new_ones", "new_full", "new_empty_strided", "_local_scalar_dense",
    "is_same_size", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "set_", "resize_",
    "_has_compatible_shallow_copy_type", "equal",
)
"""Views and metadata, plus copies and constant tensors: they move or create values without arithmetic,
so rounding them would change nothing the next op does not round anyway."""

_MOVE_OPS = (
    "cat", "stack", "index_select", "gather", "index", "_unsafe_index", "slice_backward", "select_backward",
    "slice_scatter", "select_scatter", "diagonal_backward", "constant_pad_nd", "flip", "roll", "repeat",
)

PLACEMENT: dict[str, str] = {
    **{name: MATMUL for name in _MATMUL_OPS},
    **{name: MOVE for name in _MOVE_OPS},
    **{name: FP32 for name in _FP32_OPS},
    **{name: VIEW for name in _VIEW_OPS},
}
"""ATen operator name (without overload) -> placement; operators not named here are ``"promote"``."""

FIRST_OUTPUT_ONLY = frozenset({
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
})
"""Matrix-product ops whose other outputs (log-sum-exp, random seeds) stay FP32 on the hardware."""

FP32_INPUTS = {
    "_scaled_dot_product_flash_attention_for_cpu_backward": (5,),
    "_scaled_dot_product_flash_attention_backward": (5,),
    "_scaled_dot_product_cudnn_attention_backward": (5,),
    "_scaled_dot_product_efficient_attention_backward": (6,),
    "_scaled_dot_product_fused_attention_overrideable_backward": (6,),
}
"""Positions of the attention backwards' log-sum-exp input: FP32 on the hardware, never rounded."""

SCALED_OPERANDS: dict[str, dict[int, int]] = {
    "mm": {0: -1, 1: -2}, "addmm": {1: -1, 2: -2}, "bmm": {0: -1, 1: -2}, "baddbmm": {1: -1, 2: -2},
    "convolution": {0: 1, 1: 1}, "convolution_backward": {0: 1, 1: 1, 2: 1},
}
"""Under an FP8 / MX scaling recipe, the products whose operands are quantized: ATen operator name ->
{argument position: the axis along which its rows or blocks run}.  For matrix products that is the
reduction axis (a's last, b's second to last); for convolutions the channel axis (the reduction runs over
channels and the kernel window; blocks run along the channels).  Attention is not listed: torchao's and
Transformer Engine's FP8 recipes leave it in high precision by default."""

_CACHE: dict = {}


def placement_of(func) -> tuple[str, bool, bool, tuple]:
    """(placement, first output only, mutates an argument, FP32 input positions) of an ATen ``OpOverload``,
    cached per overload."""
    found = _CACHE.get(func)
    if found is None:
        name = func._schema.name.split("::")[-1]
        # an in-place variant ("add_", "exp_") is placed as its out-of-place op
        placement = PLACEMENT.get(name) or PLACEMENT.get(name.rstrip("_"), PROMOTE)
        found = (placement, name in FIRST_OUTPUT_ONLY, func._schema.is_mutable, FP32_INPUTS.get(name, ()))
        _CACHE[func] = found
    return found


_SCALED_CACHE: dict = {}


def scaled_operands_of(func) -> dict[int, int] | None:
    """``SCALED_OPERANDS`` of an ATen ``OpOverload`` (None: not a product a scaling recipe quantizes), cached
    per overload, as ``placement_of``."""
    try:
        return _SCALED_CACHE[func]
    except KeyError:
        found = _SCALED_CACHE[func] = SCALED_OPERANDS.get(func._schema.name.split("::")[-1])
        return found
