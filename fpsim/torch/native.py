"""Rounding a float32 tensor to a format with torch's own integer operations, on the tensor's own device.

``round_nearest_`` is fpsim's nearest-even kernel for float32 input (``fpsim.numerics.kernels
._round_nearest_float32``, the one ``fpsim.round`` runs) written with torch's int32 tensor operations, so
that it runs wherever the tensor is (a GPU, a non-contiguous view): ``fpsim.torch.rounding.round_into``
takes it where a tensor has no numpy view.  It reads the same constants (``KernelParams.nearest_args``)
and gives the kernel's bits for every one of the 2^32 float32 patterns (``tests/test_torch_native_rounding
.py``: all of them for FP16 and BF16, a sample for every other format).  Tested on the CPU and the meta
device; CUDA is untested here (no GPU on the machines this was written on), though nothing in it is
particular to a device: int32 add, and, or, shifts, compares and selects, and an exact int -> float32
conversion of integers below 2^24.

The steps, on the pattern ``bits`` of x, ``mag`` its magnitude, k = 23 - (p - 1) dropped bits:
- a result of the format's normal range: ``(mag + 2^(k-1) - 1 + bit k of mag) & ~(2^k - 1)``, nearest even on
  the pattern (a carry moves into the exponent as the value moves into the next binade);
- below the format's smallest normal 2^emin (and for float32 subnormals): the significand ``sig`` (with its
  implicit bit) of x = sig * 2^(max(E, 1) - 150) is rounded to the format's subnormal spacing q = 2^Q,
  Q = emin - p + 1: n = round-half-even(sig / 2^s), s = Q + 150 - max(E, 1), by the same add-and-shift, and
  n * q is encoded (as the float32 pattern n << (Q + 149) when emin <= -126, where n * q lies in float32's
  subnormals or first binade and its pattern is linear in it; else as float32(n) with Q added to its
  exponent).  This is an integer version of the kernel's ``(|x| + shifter) - shifter``, which a float32
  addition would get wrong under flush-to-zero (``torch.set_flush_denormal``, a GPU's FTZ mode).  A format
  without subnormals flushes such results to 0 (to its smallest normal, unsigned formats);
- above ``max_bits`` the overflow pattern (inf; NaN without infinities; max when the format saturates); a
  NaN in or out gives ``nan_bits``, and so do zeros and negative numbers in an unsigned format.
Formats with emin < -127 (below float32's subnormals' binade) are refused: one spacing q no longer covers
the values below 2^-126.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ..numerics.formats import Format
from ..numerics.rounding import kernel_params

SIGN = -0x80000000  # the sign bit of an int32 pattern


@functools.lru_cache(maxsize=None)
def native_constants(fmt: Format) -> tuple:
    """(the kernel's ``nearest`` tuple for float32, Q): the constants of ``round_nearest_``.  ValueError for a
    format it does not cover (wider than float32, none of float32's bits dropped, emin below -127)."""
    if not fmt.fits_float32 or fmt.emin < -127:
        raise ValueError(f"the torch-native rounding covers formats within float32 (emin >= -127); "
                         f"{fmt} is not one")
    params = kernel_params(fmt, np.float32)
    if params.dropped_bits < 1:
        raise ValueError(f"{fmt} holds every float32 value: there is nothing to round")
    return params.nearest_args(), fmt.emin - fmt.precision + 1


def round_nearest_(values: torch.Tensor, out: torch.Tensor, fmt: Format) -> None:
    """``out[...] = fpsim.round(values, fmt)`` (nearest even) for float32 tensors of one shape and device, with
    int32 operations on that device (see the module docstring); ``out`` may be ``values``."""
    nearest, Q = native_constants(fmt)
    _, _, k, _, normal_bits, max_bits, inf_bits, overflow_bits, nan_bits, flush, unsigned = nearest
    bits = values.resolve_neg().view(torch.int32)  # a lazily negated view: its values materialized
    mag = bits & 0x7FFFFFFF
    low_mask = (1 << k) - 1
    normal = (mag + ((low_mask >> 1) + (((mag | 0x00800000) >> k) & 1))) & ~low_mask  # a NaN's sum may wrap
    exponent = mag >> 23
    significand = (mag & 0x007FFFFF) | ((exponent > 0).to(torch.int32) << 23)
    shift = (Q + 150 - exponent.clamp(min=1)).clamp(0, 26)  # >= 1 where the result is below 2^emin
    half = (torch.ones_like(shift) << shift) >> 1
    n = (significand + half - 1 + ((significand >> shift) & 1)) >> shift
    if fmt.emin <= -126:
        tiny = n << (Q + 149)
    else:
        tiny = torch.where(n == 0, 0, n.to(torch.float32).view(torch.int32) + (Q << 23))
    tiny = torch.where(tiny < (normal_bits if flush else 0), normal_bits if unsigned else 0, tiny)
    result = torch.where(mag >= max(normal_bits, 1 << 23), normal, tiny)
    result = torch.where(result > max_bits, overflow_bits, result)
    nan = torch.maximum(mag, result) > inf_bits
    if unsigned:
        nan |= bits <= 0  # +0 or a negative number
    result = torch.where(nan, int(np.int32(np.uint32(nan_bits))), result | (bits & SIGN))
    out.copy_(result.view(torch.float32))  # through a view, lazily negated or not, of any strides
