"""Rounding a CPU tensor's values to a format in its own memory, through its numpy view."""

from __future__ import annotations

import functools

import numpy as np

from ..numerics import kernels
from ..numerics.formats import FP32, Format
from ..numerics.rounding import kernel_params
from ..numerics.rounding import round as round_to


def round_into(values: np.ndarray, out: np.ndarray, fmt: Format) -> None:
    """``out[...] = fpsim.round(values, fmt)`` without a temporary (``out`` may be ``values``).

    Float32 C-contiguous arrays and a format of fewer significant bits go straight to fpsim's
    nearest-even kernel, the one ``fpsim.round`` runs for them, on as many threads as torch uses.
    """
    if fmt == FP32 and values.dtype == np.float32:  # float32 values are FP32 values
        if out is not values:
            out[...] = values
        return
    nearest = _nearest_args(fmt)
    if nearest is None or values.dtype != np.float32 or out.dtype != np.float32 or not (
            values.flags.c_contiguous and out.flags.c_contiguous):
        out[...] = round_to(values, fmt)
        return
    kernels.round_nearest_array(values.reshape(-1), out.reshape(-1).view(np.uint32), nearest)


@functools.lru_cache(maxsize=None)
def _nearest_args(fmt: Format):
    """The nearest kernel's constants for float32 input, or None where it does not apply."""
    if not fmt.fits_float32:
        return None
    params = kernel_params(fmt, np.float32)
    return params.nearest_args() if params.dropped_bits >= 1 else None
