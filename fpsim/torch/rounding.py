"""Rounding a tensor's values to a format in its own memory: through its numpy view in CPU memory, else with
torch's own integer operations on its device (``fpsim.torch.native``)."""

from __future__ import annotations

import functools

import numpy as np
import torch

from ..numerics import kernels
from ..numerics.formats import FP32, Format
from ..numerics.rounding import kernel_params
from ..numerics.rounding import round as round_to
from ..numerics.threads import serial
from .native import round_nearest_


def round_into(values, out, fmt: Format) -> None:
    """``out[...] = fpsim.round(values, fmt)`` without a temporary (``out`` may be ``values``).

    ``values`` and ``out``: numpy arrays, or torch tensors of one shape and device.  A tensor in CPU memory
    is rounded through its numpy view; one that has none (on another device, or a negated / conjugated view)
    by ``fpsim.torch.native.round_nearest_`` on its own device, the same bits (float32 only: TypeError for
    another dtype there); a meta tensor is a dry run (nothing to round).  Float32 C-contiguous arrays and a
    format of fewer significant bits go straight to fpsim's nearest-even kernel, the one ``fpsim.round``
    runs for them: on numba's thread count when torch computes on several threads and the array is large
    (``PARALLEL_MIN_VALUES``), else on the calling thread; neither count is changed.
    """
    if isinstance(values, torch.Tensor):
        same, values, out = out is values, values.detach(), out.detach()
        if values.is_meta or out.is_meta:
            return
        if has_numpy_view(values) and has_numpy_view(out):
            values, out = values.numpy(), out.numpy()
        elif values.dtype != torch.float32 or out.dtype != torch.float32:
            raise TypeError(f"emulate rounds {values.dtype} tensors in CPU memory only; a {values.device} "
                            f"tensor must be float32 (model.float())")
        elif fmt == FP32:  # float32 values are FP32 values
            if not same:
                out.copy_(values)
            return
        else:
            round_nearest_(values, out, fmt)
            return
    if fmt == FP32 and values.dtype == np.float32:  # float32 values are FP32 values
        if out is not values:
            out[...] = values
        return
    nearest = _nearest_args(fmt)
    if nearest is None or values.dtype != np.float32 or out.dtype != np.float32 or not (
            values.flags.c_contiguous and out.flags.c_contiguous):
        out[...] = round_to(values, fmt)
        return
    kernel = kernels.round_nearest_array_serial if serial(values.size, PARALLEL_MIN_VALUES) else \
        kernels.round_nearest_array
    kernel(values.reshape(-1), out.reshape(-1).view(np.uint32), nearest)


PARALLEL_MIN_VALUES = 1 << 17
"""Below this many values (and whenever torch computes on one thread) the rounding runs on the calling thread:
a parallel region costs more than it saves there, and far more on a loaded machine, where each region waits
for its descheduled threads (measured: 65,536 float32 values to BF16, 38 us on one thread, 24 us on two idle
cores, ~5 ms per call on two cores shared with other processes)."""


def has_numpy_view(tensor: torch.Tensor) -> bool:
    """Whether ``tensor.numpy()`` is a view of its memory (dense, in CPU memory, no lazy negation or
    conjugation)."""
    return (tensor.device.type == "cpu" and tensor.layout == torch.strided
            and not tensor.is_neg() and not tensor.is_conj())


@functools.lru_cache(maxsize=None)
def _nearest_args(fmt: Format):
    """The nearest kernel's constants for float32 input, or None where it does not apply."""
    if not fmt.fits_float32:
        return None
    params = kernel_params(fmt, np.float32)
    return params.nearest_args() if params.dropped_bits >= 1 else None
