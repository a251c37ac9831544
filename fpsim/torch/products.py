"""The products ``emulate`` computes itself instead of ATen's kernel: exact accumulation, flash attention."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..numerics.formats import FP32, Format
from ..ops.reductions import matmul as fpsim_matmul
from .rounding import round_into

aten = torch.ops.aten
EXACT_OPS = (aten.mm, aten.addmm, aten.bmm, aten.baddbmm)
"""The products ``accumulate="exact"`` computes through ``fpsim.matmul`` (what Linear and matmul lower to)."""
CPU_FLASH_ATTENTION = aten._scaled_dot_product_flash_attention_for_cpu.default


def exact_product(func, args, kwargs, accumulate: Format):
    """mm / addmm / bmm / baddbmm through ``fpsim.matmul`` accumulating in ``accumulate``, sequential order; in
    addmm / baddbmm the bias is added in FP32 (beta * bias + alpha * product).  Any other product runs as
    ATen's kernel where ``accumulate`` is FP32 and raises ValueError otherwise."""
    op = func.overloadpacket
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
    out = torch.from_numpy(np.ascontiguousarray(product, dtype=a.dtype))
    if bias is not None:
        out = kwargs.get("beta", 1) * bias + kwargs.get("alpha", 1) * out
    return out


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


def flash_attention_of(args, kwargs, fmt: Format, fast_exp: bool):
    """``flash_attention`` called with the arguments ATen's CPU flash attention received."""
    return flash_attention(*args[:3], args[4] if len(args) > 4 else False, kwargs.get("scale"), fmt,
                           kwargs.get("attn_mask"), fast_exp)


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
