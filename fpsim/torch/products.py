"""The products ``emulate`` computes itself instead of ATen's kernel: exact accumulation, a GPU's tensor core,
flash attention."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from torch.nn import functional as F

from ..numerics.formats import FP32, Format
from ..ops.reductions import matmul as fpsim_matmul
from ..sim.tensor_core import product as tensor_core_product
from .rounding import round_into

aten = torch.ops.aten
EXACT_OPS = (aten.mm, aten.addmm, aten.bmm, aten.baddbmm)
"""The products ``accumulate="exact"`` computes through ``fpsim.matmul`` (what Linear and matmul lower to)."""
CPU_FLASH_ATTENTION = aten._scaled_dot_product_flash_attention_for_cpu.default


TENSOR_CORE_OPS = (*EXACT_OPS, aten.convolution, aten.convolution_backward)
"""The products a GPU ``accumulate`` (``Policy.tensor_core``) computes on the tensor-core model."""


def exact_product(func, args, kwargs, policy, format_of):
    """A product of ``EXACT_OPS`` through ``fpsim.matmul`` accumulating in ``policy.accumulate``.

    IEEE ``accumulate``: mm / addmm / bmm / baddbmm in sequential order; any other product runs as ATen's
    kernel where ``accumulate`` is FP32 and raises ValueError otherwise.  A GPU model (``policy.tensor_core``):
    ``TENSOR_CORE_OPS`` on the tensor core (``tensor_core``); the attention kernels as the emulation runs them
    without one (FP32 accumulation: FlashAttention's tensor-core products are not modelled); any other product
    raises ValueError.  ``format_of(tensor)`` is the format an operand holds (None: FP32).  In addmm / baddbmm
    the bias is added in FP32 (beta * bias + alpha * product), as cuBLASLt's bias epilogue adds it.
    """
    op = func.overloadpacket
    accumulate = policy.accumulate
    if policy.tensor_core is not None:
        return tensor_core(func, args, kwargs, policy, format_of)
    if op not in EXACT_OPS:
        if accumulate != FP32:
            names = ", ".join(exact.__name__ for exact in EXACT_OPS)
            raise ValueError(f"accumulate='exact' covers {names} (Linear, matmul); "
                             f"{op.__name__} has no exact path: use a policy accumulating in FP32")
        return func(*args, **kwargs)
    bias, (a, b) = (None, args) if op in (aten.mm, aten.bmm) else (args[0], args[1:3])
    a, b = a.detach().numpy(), b.detach().numpy()
    if a.ndim == 2:
        product = fpsim_matmul(a, b, accumulate=accumulate)
    else:
        product = np.stack([fpsim_matmul(x, y, accumulate=accumulate) for x, y in zip(a, b)])
    return _with_bias(torch.from_numpy(np.ascontiguousarray(product, dtype=a.dtype)), bias, kwargs)


def _with_bias(out, bias, kwargs):
    return out if bias is None else kwargs.get("beta", 1) * bias + kwargs.get("alpha", 1) * out


def tensor_core(func, args, kwargs, policy, format_of):
    """``func`` (one of ``TENSOR_CORE_OPS``, or an attention kernel) with its products on ``policy``'s tensor
    core (``fpsim.sim.tensor_core.product``), forward or backward as autograd runs it (which decides a split FP8
    product, ``Policy.splits``).  Convolutions are lowered to products (``convolution``)."""
    op = func.overloadpacket
    forward = torch._C._current_autograd_node() is None

    def multiply(a, of_a, b, of_b):  # of_a, of_b: the op's arguments whose values a and b hold
        return to_torch(tensor_core_product(a.detach().numpy(), b.detach().numpy(), format_of(of_a) or FP32,
                                            format_of(of_b) or FP32, policy, forward=forward), a.dtype)

    if op in EXACT_OPS:
        bias, (a, b) = (None, args) if op in (aten.mm, aten.bmm) else (args[0], args[1:3])
        return _with_bias(multiply(a, a, b, b), bias, kwargs)
    if op in (aten.convolution, aten.convolution_backward):
        return convolution(func, args, multiply)
    if "scaled_dot_product" in op.__name__:
        query_format = format_of(args[0]) or FP32
        if query_format != FP32 and is_plain_attention(func, args, kwargs):
            return flash_attention_of(args, kwargs, query_format, policy)
        return func(*args, **kwargs)
    names = ", ".join(known.__name__ for known in TENSOR_CORE_OPS)
    raise ValueError(f"accumulate={policy.tensor_core!r} computes {names} on the tensor core; {op.__name__} has "
                     f"no tensor-core path: use a policy accumulating in FP32")


def to_torch(values: np.ndarray, dtype) -> torch.Tensor:
    """A float32 numpy result as a tensor of ``dtype`` (float32, or float64 holding the same values)."""
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(dtype)


def convolution(func, args, multiply):
    """A 1-D or 2-D convolution (not transposed, one group) or its backward as matrix products (im2col).

    ``multiply(a, of_a, b, of_b)`` computes one (M, K) @ (K, N) product of ``a`` and ``b``, which hold values
    of the op's arguments ``of_a`` and ``of_b``.  With x (B, C, *S), w (O, C, *k) and g (B, O, *S_out), the
    reductions are those of cuDNN's implicit GEMMs over channels-last (NHWC) tensors, the layout tensor cores
    convolve in, K ordered with the channel fastest: forward y[b, o, s] = sum over (k, c) of w[o, c, k]
    x[b, c, s * stride + k * dilation - padding], plus the bias in FP32; weight gradient dw[o, c, k] = sum over
    (b, s) of g[b, o, s] x[b, c, s * stride + k * dilation - padding]; input gradient dx[b, c, i] = sum over
    (k, o) of g[b, o, j] w[o, c, k], i = j * stride - padding + k * dilation: the convolution of g, zeros
    inserted between its values for a stride > 1 (a zero term leaves a tensor core's sum unchanged), with w
    flipped.  The bias gradient is g summed in FP32 (ATen's sum), a CUDA-core reduction.
    """
    backward = func.overloadpacket is aten.convolution_backward
    if backward:
        g, x, w, _, stride, padding, dilation, transposed, _, groups, mask = args[:11]
    else:
        x, w, bias, stride, padding, dilation, transposed, _, groups = args[:9]
    if transposed or groups != 1 or w.dim() not in (3, 4):
        raise ValueError("a GPU accumulate computes 1-D and 2-D convolutions (not transposed, groups=1) on the "
                         "tensor core; this one has no tensor-core path: use a policy accumulating in FP32")
    one_d = w.dim() == 3
    x4, w4 = (x.unsqueeze(2), w.unsqueeze(2)) if one_d else (x, w)  # (B, C, L) as (B, C, 1, L)
    if one_d:
        stride, padding, dilation = (1, *stride), (0, *padding), (1, *dilation)

    def unlift(tensor):
        return tensor.squeeze(2) if one_d else tensor

    if not backward:
        y = _conv(x4, x, w4, w, stride, padding, dilation, multiply)
        return unlift(y if bias is None else y + bias.reshape(1, -1, 1, 1))
    g4 = g.unsqueeze(2) if one_d else g
    O, kernel = w.shape[0], tuple(w4.shape[2:])
    grad_input = grad_weight = grad_bias = None
    if mask[0]:
        B, _, H_out, W_out = g4.shape
        spread = g4.new_zeros(B, O, (H_out - 1) * stride[0] + 1, (W_out - 1) * stride[1] + 1)
        spread[:, :, ::stride[0], ::stride[1]] = g4
        pads = []
        for axis in (1, 0):  # F.pad takes the last axis first; a negative pad crops
            reach = dilation[axis] * (kernel[axis] - 1)
            before = reach - padding[axis]
            pads += [before, x4.shape[2 + axis] + reach - before - spread.shape[2 + axis]]
        flipped = w4.flip(2, 3).transpose(0, 1)  # (C, O, *k)
        grad_input = unlift(_conv(F.pad(spread, pads), g, flipped, w, (1, 1), (0, 0), dilation, multiply))
    if mask[1]:
        columns = _columns(x4, kernel, stride, padding, dilation)  # (B*S_out, k*C)
        g_rows = g4.reshape(g4.shape[0], O, -1).transpose(0, 1).reshape(O, -1)  # (O, B*S_out)
        C = x4.shape[1]
        grad = multiply(g_rows, g, columns, x)  # (O, k*C)
        grad_weight = unlift(grad.reshape(O, *kernel, C).permute(0, 3, 1, 2).contiguous())
    if mask[2]:
        grad_bias = g4.sum(dim=(0, 2, 3))
    return grad_input, grad_weight, grad_bias


def _columns(x, kernel, stride, padding, dilation):
    """The unfolded input (B*S_out, k*C) of a 2-D convolution, channels fastest along a row (NHWC's order)."""
    B, C = x.shape[:2]
    columns = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (B, C*k, S_out)
    columns = columns.reshape(B, C, -1, columns.shape[-1]).permute(0, 3, 2, 1)  # (B, S_out, k, C)
    return columns.reshape(-1, columns.shape[2] * C)


def _conv(x, of_x, w, of_w, stride, padding, dilation, multiply):
    """y (B, O, H_out, W_out) of a 2-D convolution of x (B, C, H, W) with w (O, C, kh, kw), no bias: the
    (B*S_out, k*C) @ (k*C, O) product of the unfolded input and the weights."""
    B, O, kernel = x.shape[0], w.shape[0], tuple(w.shape[2:])
    out_size = [(size + 2 * pad - dil * (k - 1) - 1) // step + 1
                for size, pad, dil, k, step in zip(x.shape[2:], padding, dilation, kernel, stride)]
    weights = w.permute(0, 2, 3, 1).reshape(O, -1).t()  # (k*C, O)
    y = multiply(_columns(x, kernel, stride, padding, dilation), of_x, weights, of_w)  # (B*S_out, O)
    return y.reshape(B, *out_size, O).permute(0, 3, 1, 2).contiguous()


def is_plain_attention(func, args, kwargs) -> bool:
    """Whether ``func(*args, **kwargs)`` is ATen's CPU flash attention without dropout: the case
    ``flash_attention`` computes (with or without a mask, causal or not, grouped query heads or not).  With
    ``dropout_p > 0`` the kernel refuses to run (``scaled_dot_product_attention`` then takes ATen's math
    path, whose parts the mode places); it gets the call and raises its own error."""
    return func is CPU_FLASH_ATTENTION and not (len(args) > 3 and args[3])


def flash_attention(query, key, value, is_causal: bool, scale, fmt: Format, attn_mask=None, fast_exp=False):
    """(output, logsumexp) of ATen's CPU flash attention, its probabilities rounded to ``fmt`` before P @ V.

    FlashAttention (FA2 on CUDA, ATen's CPU kernel) computes S = scale * Q K^T (+ the additive ``attn_mask``,
    broadcast over batch and heads; -inf above the diagonal when ``is_causal``), and the row max m and the
    row sum l of exp(S - m), in FP32, converts P = exp(S - m) to the inputs' format for the second
    product, accumulates P V in FP32 and multiplies it by 1 / l at the end; this is that for one key block (the
    CPU kernel's hold 512 keys; longer sequences rescale block by block).  ``fast_exp``: exp as ATen's CPU
    kernel computes it for 16-bit inputs on an x86 CPU (``cpu_fast_exp`` on the keys its vector loop
    covers, FP32's exp on the rest: ``_fast_exp_columns``), else FP32's exp everywhere.  A row masked out entirely
    (every score -inf) gives zeros and a log-sum-exp of 0, as the kernel's m = 0, l = 1 for such a row.
    Grouped-query attention (key and value with fewer heads than the query, ``enable_gqa``): query head h
    reads key/value head h // (heads / key heads), ATen's ``repeat_interleave`` of the key/value heads.
    The log-sum-exp m + log l, which the backward kernel reads, is returned in the kernel's layout
    (B, nh, T) over (B, T, nh) memory.
    """
    scale = scale or 1.0 / math.sqrt(query.shape[-1])
    heads, key_heads = query.shape[-3], key.shape[-3]
    if key_heads != heads:
        if key_heads == 0 or heads % key_heads:
            raise ValueError(f"grouped-query attention needs the query's {heads} heads to be a multiple of the "
                             f"key's and value's {key_heads}")
        key, value = (t.repeat_interleave(heads // key_heads, dim=-3) for t in (key, value))
    scores = torch.matmul(query, key.transpose(-2, -1)).mul_(scale)  # (B, nh, T, S)
    if is_causal:
        scores.add_(_causal_mask(*scores.shape[-2:]))
    if attn_mask is not None:
        scores.add_(attn_mask)
    top = scores.amax(dim=-1, keepdim=True)
    top.masked_fill_(top == -math.inf, 0.0)  # a row masked out entirely: exp(-inf) = 0 everywhere
    scores.sub_(top)
    fast = _fast_exp_columns(scores.shape[-1]) if fast_exp else None
    probabilities = torch.exp(scores)
    if fast is not None and fast.any():
        probabilities[..., fast] = torch.from_numpy(cpu_fast_exp(scores[..., fast].numpy()))
    total = probabilities.sum(dim=-1, keepdim=True)
    total.masked_fill_(total == 0, 1.0)
    round_into(probabilities.numpy(), probabilities.numpy(), fmt)
    out = torch.matmul(probabilities, value).mul_(total.reciprocal())  # (B, nh, T, hs): the kernels' 1 / l
    B, heads, T = out.shape[:3]
    logsumexp = torch.empty(B, T, heads, dtype=out.dtype).permute(0, 2, 1)
    logsumexp.copy_((top + total.log()).squeeze(-1))
    return out, logsumexp


def flash_attention_of(args, kwargs, fmt: Format, policy):
    """``flash_attention`` called with the arguments ATen's CPU flash attention received, its exp as the
    policy's placement table says (CPU autocast: ``cpu_fast_exp``)."""
    return flash_attention(*args[:3], args[4] if len(args) > 4 else False, kwargs.get("scale"), fmt,
                           kwargs.get("attn_mask"), fast_exp=policy.placement == "autocast-cpu")


FAST_EXP_VECTOR_FLOATS = {"AVX2": 8, "AVX512": 16}
"""Floats per vector of the x86 CPU capabilities whose ``fexp_u20`` ``cpu_fast_exp`` is (torch's
``torch.backends.cpu.get_cpu_capability()``); on another CPU the emulation keeps FP32's exp."""
KEY_BLOCK = 512
"""Keys per block of ATen's CPU flash attention (its kvSplitSize)."""


@functools.lru_cache(maxsize=64)
def _fast_exp_columns(keys: int):
    """The key positions whose exp ATen's CPU flash kernel computes with its vector loop (``cpu_fast_exp``):
    in each block of ``KEY_BLOCK`` keys, the largest multiple of the vector width; the rest of a block (the
    loop's tail) takes the scalar std::exp.  None on a CPU without the fast exp."""
    width = FAST_EXP_VECTOR_FLOATS.get(torch.backends.cpu.get_cpu_capability())
    if width is None:
        return None
    position = torch.arange(keys)
    block_length = (keys - position // KEY_BLOCK * KEY_BLOCK).clamp(max=KEY_BLOCK)
    return position % KEY_BLOCK < block_length // width * width


_FAST_EXP = np.array([0x3FB8AA3B, 0xC2AEAC50, 0x42B17218], dtype=np.uint32).view(np.float32)
"""log2(e), ln(FLT_MIN) and ln(FLT_MAX) as the kernel spells them (float32 bit patterns)."""
_FAST_EXP_POLYNOMIAL = np.array([-0.079204240219773236, -0.22433836478672356, 0.30354260500649682,
                                 0.00010703434948458272], dtype=np.float32)
"""The correction c(f) = ((c3 f + c2) f + c1) f + c0 of 2^f ~ 1 + f - c(f), highest degree first."""


def cpu_fast_exp(x: np.ndarray) -> np.ndarray:
    """exp of float32 ``x`` as ATen's CPU flash attention computes it for bfloat16 / float16 inputs
    (``Vectorized<float>::fexp_u20``, aten/src/ATen/cpu/vec/vec256/vec256_float.h and vec512: "fast
    exponential intended for cases where outputs will be downcasted to FP16 / BF16 ... Accurate within 1 ULP
    for BF16"; the fp32 kernel uses a Sleef exp instead).

    Schraudolph's construction with a cubic correction, each step in float32: t = x * log2(e); f = t -
    floor(t); u = t - c(f) (Horner, fused multiply-adds); the result is the float32 whose bit pattern is
    trunc(2^23 * u + 2^23 * 127) (a fused multiply-add), 0 below ln(FLT_MIN) and +inf above ln(FLT_MAX).
    A float32 fused multiply-add is computed here in float64 (the product of two float32 is exact there)
    and rounded once more to float32.  Measured (AVX512): with it on ``_fast_exp_columns``, the outputs of
    ATen's bfloat16 flash attention bit for bit, where FP32's exp gives 94-98 % (tests/test_torch_placement_cpu.py).
    """
    x = np.asarray(x, dtype=np.float32)
    log2e, low, high = _FAST_EXP
    t = x * log2e
    with np.errstate(invalid="ignore"):  # -inf: masked out, set to 0 below
        f = (t - np.floor(t)).astype(np.float64)
        correction = np.full_like(f, _FAST_EXP_POLYNOMIAL[0])
        for coefficient in _FAST_EXP_POLYNOMIAL[1:]:
            correction = (f * correction + coefficient).astype(np.float32).astype(np.float64)  # fma(f, c, ci)
        u = (t - correction.astype(np.float32)).astype(np.float64)
        pattern = (u * 2.0 ** 23 + 2.0 ** 23 * 127).astype(np.float32)  # fma(2^23, u, 2^23 * 127)
        out = np.trunc(np.nan_to_num(pattern, nan=0.0, posinf=0.0, neginf=0.0)).astype(np.int32).view(np.float32)
    out[x < low] = 0.0
    out[x > high] = np.inf
    return out


@functools.lru_cache(maxsize=8)
def _causal_mask(rows: int, columns: int) -> torch.Tensor:
    """0 on and below the diagonal, -inf above: added to the scores (one pass, cheaper than masked_fill)."""
    return torch.full((rows, columns), -math.inf).triu(1)
