"""``fpsim.quantize``: scaled quantization (per tensor, per row, per block) to FP8, FP6 and FP4 formats.

A *group* shares one scale: the whole tensor (``scaling="tensor"``), each row, i.e. every
slice along ``axis`` (``"row"``), or each run of ``block_size`` consecutive values along
``axis`` (``"block"``; a row's last block may be shorter, as if padded with zeros), or, with
``block_size=(r, c)``, each r x c tile of the last two axes (2-D block scaling: DeepSeek-V3's and
Transformer Engine's 128 x 128 weight blocks, NVFP4's 16 x 16 weight tiles, so that W and W^T
quantize alike; edge tiles may be smaller, as if padded with zeros; the scales have the tile
grid's shape (..., ceil(rows / r), ceil(cols / c))).  A is a
group's largest magnitude, ``max`` and ``emax`` the element format's largest value and its
exponent, q() the element format's rounding (``mode``; overflows saturate to +-max unless
``saturate=False``), RN32() rounding to nearest FP32.  The result is the dequantized tensor.

``scale_format="fp32"``: per-tensor or per-row *current scaling*, as torchao's TENSORWISE and
ROWWISE recipes and Transformer Engine's Float8CurrentScaling compute it (torchao
``float8/float8_utils.py: amax_to_scale``; TE ``Float8CurrentScaling``)::

    s = RN32(max / A)            (A = 0: s = 1; kept in FP32's positive range [2^-149, FP32's max])
    result = RN32(q(RN32(x * s)) / s)

or, with ``scale=s`` given (per-tensor *delayed scaling*, Transformer Engine's
``DelayedScaling``: s comes from the amaxes of earlier steps, ``fpsim.sim.scaling``), the
same with that s, whatever A is now: values above max / s saturate.

The input is taken exactly, whatever its dtype: x and A are the input's values (a float64 input
is not rounded to FP32 first), and each RN32() rounds the exact result of its operation once, in
every scale format, in ``quantize`` and ``quantize_reference`` alike.  For float32 input this is
the recipes' FP32 arithmetic; a float64 input gives the FP32 recipe applied to its exact values.

``scale_format="e8m0"``: a power-of-two scale X = 2^e per group, the OCP Microscaling
Formats (MX) v1.0 specification, section 6.3, and torchao's ``ScaleCalculationMode``
(``prototype/mx_formats``)::

    "floor" (the spec):  e = floor(log2 A) - emax
    "ceil":              e = ceil(log2 A) - emax
    "even":              e = floor(log2 R(A)) - emax, R rounding A to the element's
                         precision (its mantissa bits + 1), ties away from zero
    "rceil":             e = ceil(log2 RN32(RN32(A) * RN32(1 / max)))   (cuBLAS's 1D block
                         scaling, Blackwell's cvt.rp.ue8m0; A / X <= max, nothing saturates)
    "floor-scale":       X = 1 / 2^floor(log2 min(RN32(max / A), FP32 max)), and X = 1 for A = 0
                         (Transformer Engine's Float8BlockScaling, force_pow_2_scales: the FP32
                         current scale rounded down to a power of two by dropping its mantissa;
                         TE tests/pytorch/references/quantize_scale_calc.py: scale_from_amax_tensor)
    e < -127: e = -127 (an all-zero group too); e > 127, A inf or NaN: X = NaN, the group NaN
    (as microxcaling and torchao; the spec's X = NaN means every element NaN)
    result = q(x / X) * X        (exact but q: X is a power of two; in float32 results, q * X
                                 can exceed FP32's max at the top of its range and gives inf)

Floor can put A / X up to 2^(emax+1) > max (E4M3: up to 511), which saturates; the ceil
variants do not (arXiv 2506.08027 reports floor diverging in training, ceil matching BF16).
floor-scale is not ceil: it keeps A / X in (max / 2, max], ceil in (2^emax / 2, 2^emax]; with
A = m 2^k, 1 < m <= 1.75 (E4M3: max = 1.75 * 2^8) it gives X = 2^(k-8) where ceil gives 2^(k-7)
(A = 1.5: 2^-8, A / X = 384, against ceil's 2^-7, A / X = 192); elsewhere they agree but at A = 0.

``scale_format="e4m3"``: NVFP4's two-level scaling (NVIDIA, "Introducing NVFP4 for efficient
and accurate low-precision inference", 2025; Transformer Engine's NVFP4 recipe; torchao
``nvfp4_tensor.py: nvfp4_quantize`` with a per-tensor scale), T the whole tensor's amax::

    P = RN32(T / (448 * max))   (1 when that is below 2^-126: the tensor quantizes to ~0; NaN when
                                 T is inf or NaN, or a float64 T makes it overflow FP32)
    s = E4M3(clamp(RN32(RN32(A / max) / P), 2^-6, 448))     the stored block scale
    d = RN32(P * s)
    result = RN32(q(RN32(x / d)) * d)

``scale_format="e4m3-te"`` (preset ``nvfp4_te``): the same two-level encode in Transformer Engine's
FP32 operation order (TE ``tests/pytorch/nvfp4`` reference quantizer ``_quantize_blockwise_reference``
and ``nvfp4_global_encode_scale_te``; dequantization ``common/cast/nvfp4/dequantize_nvfp4.cuh``)::

    G = min(RN32(448 * max / T), FP32 max)   (G = 0, i.e. T huge: 1)      the tensor's encode scale
    s = E4M3(min(RN32(A * RN32(G * RN32(1 / max))), 448))   the stored block scale; no lower clamp:
                                 s may be an E4M3 subnormal, or 0 (the block then dequantizes to 0)
    e = min(RN32(1 / RN32(s * RN32(1 / G))), FP32 max)      the element multiplier
    d = RN32(RN32(s * T) * RN32(1 / (448 * max)))            TE's dequantization scale
    result = RN32(q(clamp(RN32(x * e), -max, max)) * d)     (no clamp when saturate=False)
    T inf or NaN: the whole result NaN.

It is the ``nvfp4`` recipe but for FP32 roundings (the values agree within a few FP32 ulps where
every block scale is a normal E4M3 number) and for blocks far below T: ``nvfp4`` (torchao) clamps
the block scale up to 2^-6, TE lets it round to a subnormal or 0, flushing blocks with A / T below
about 2^-19.  ``nvfp4`` is unchanged.

``return_scales=True`` also returns the scales: s for "fp32" (x ~ result's q / s, the recipes'
``scale``), X for "e8m0", d for "e4m3" and "e4m3-te" (x ~ q * X or q * d, torchao's ``get_hp_scales``);
shaped like ``x`` with ``axis`` holding the groups (one for "row"), a 0-d array for "tensor".

``quantize_reference`` computes the same with Python fractions and ``round_exact``, one
number at a time; the tests hold the two against each other and against graphcore's gfloat.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from . import _quantize_kernels as kernels
from ..numerics.threads import threads_for
from ..numerics.checks import is_finite_number, is_integer
from ..numerics.exact import DETERMINISTIC_MODES, check_mode, floor_log2, round_exact
from ..numerics.formats import E2M1, E2M3, E3M2, E4M3, E5M2, FP32, FP64, Format, get_format
from ..numerics.rounding import PARALLEL_MIN_ELEMENTS, _as_float_array, kernel_params
from ..numerics.rounding import round as round_to

SCALINGS = ("tensor", "row", "block")
SCALE_FORMATS = ("fp32", "e8m0", "e4m3", "e4m3-te")
SCALE_ROUNDINGS = tuple(kernels.SCALE_ROUNDING_CODES)


@dataclass(frozen=True)
class Preset:
    """A named block format: element format, block size, scale format (and its source)."""

    element: Format
    block_size: int
    scale_format: str
    source: str


PRESETS: dict[str, Preset] = {
    "mxfp8_e4m3": Preset(E4M3, 32, "e8m0", "OCP MX v1.0, table 1: MXFP8 (E4M3), k = 32, E8M0 scale"),
    "mxfp8_e5m2": Preset(E5M2, 32, "e8m0", "OCP MX v1.0, table 1: MXFP8 (E5M2), k = 32, E8M0 scale"),
    "mxfp6_e3m2": Preset(E3M2, 32, "e8m0", "OCP MX v1.0, table 1: MXFP6 (E3M2), k = 32, E8M0 scale"),
    "mxfp6_e2m3": Preset(E2M3, 32, "e8m0", "OCP MX v1.0, table 1: MXFP6 (E2M3), k = 32, E8M0 scale"),
    "mxfp4": Preset(E2M1, 32, "e8m0", "OCP MX v1.0, table 1: MXFP4 (E2M1), k = 32, E8M0 scale"),
    "nvfp4": Preset(E2M1, 16, "e4m3", "NVIDIA NVFP4: E2M1, blocks of 16, E4M3 block scale, FP32 tensor scale"),
    "nvfp4_te": Preset(E2M1, 16, "e4m3-te", "NVIDIA NVFP4 in Transformer Engine's FP32 operation order "
                       "(tests/pytorch/nvfp4 reference quantizer, common/cast/nvfp4/dequantize_nvfp4.cuh)"),
}
"""``fpsim.quantize``'s named formats: ``fpsim.quantize(x, "mxfp4")``.  The block-scaled training presets
(``fpsim.POLICIES``: ``mxfp8``, ``mxfp6``, ``mxfp4``, ``nvfp4``) use these by name."""

DEFAULT_VARIANTS = {"mxfp8": "mxfp8_e4m3"}
"""An MX family's name for its default variant: MXFP8 means E4M3 elements, as in Transformer Engine's
``MXFP8BlockScaling`` and torchao's MX recipes (and the ``mxfp8`` training preset).  MXFP6 has none: its two
variants are asked for by name."""


def preset_named(name) -> str | None:
    """The ``PRESETS`` key ``name`` stands for (a key, or a family of ``DEFAULT_VARIANTS``; case and spaces
    ignored), or None when it names no preset; a one-line ValueError for a family without a default."""
    key = name.strip().lower() if isinstance(name, str) else None
    key = DEFAULT_VARIANTS.get(key, key)
    if key in PRESETS:
        return key
    variants = [preset for preset in PRESETS if key is not None and preset.startswith(f"{key}_")]
    if variants:
        raise ValueError(f"{name!r} has {len(variants)} element formats: use {' or '.join(variants)}")
    return None


@dataclass(frozen=True)
class _Spec:
    element: Format
    scaling: str
    block_size: int | tuple[int, int]
    scale_format: str
    scale_rounding: str


def _resolve(fmt, scaling, block_size, scale_format, scale_rounding) -> _Spec:
    """The quantizer's settings: a preset's, overridden by those given; ValueError for anything unknown."""
    preset_key = preset_named(fmt)
    if preset_key is not None:
        preset = PRESETS[preset_key]
        element, defaults = preset.element, ("block", preset.block_size, preset.scale_format)
    else:
        try:
            element = get_format(fmt)
        except ValueError:
            raise ValueError(f"unknown format {fmt!r}: use a preset ({', '.join(PRESETS)}) or an element "
                             "format such as 'e4m3'") from None
        defaults = ("tensor", 32, "fp32")
    scaling = defaults[0] if scaling is None else scaling
    block_size = defaults[1] if block_size is None else block_size
    scale_format = defaults[2] if scale_format is None else scale_format
    if scaling not in SCALINGS:
        raise ValueError(f"unknown scaling {scaling!r}: use one of {', '.join(SCALINGS)}")
    if scale_format not in SCALE_FORMATS:
        raise ValueError(f"unknown scale_format {scale_format!r}: use one of {', '.join(SCALE_FORMATS)}")
    block_size = _checked_block_size(block_size, scaling)
    if scale_rounding is not None and scale_format != "e8m0":
        raise ValueError(f"scale_rounding applies to scale_format='e8m0' only (got scale_format={scale_format!r})")
    scale_rounding = "floor" if scale_rounding is None else scale_rounding
    if scale_rounding not in SCALE_ROUNDINGS:
        raise ValueError(f"unknown scale_rounding {scale_rounding!r}: use one of {', '.join(SCALE_ROUNDINGS)}")
    if not element.signed or element.precision >= 24 or not element.fits_float32:
        raise ValueError(f"quantize needs a signed element format narrower than FP32, got {element.name}")
    return _Spec(element, scaling, block_size, scale_format, scale_rounding)


def _checked_block_size(block_size, scaling: str) -> int | tuple[int, int]:
    """A positive integer, or a pair of them (2-D tiles, block scaling only); ValueError otherwise."""
    def positive(n) -> bool:
        return is_integer(n) and n >= 1

    if isinstance(block_size, (tuple, list)):
        if len(block_size) != 2 or not all(map(positive, block_size)):
            raise ValueError(f"a 2-D block_size is a pair of positive integers (rows, cols), got {block_size!r}")
        if scaling != "block":
            raise ValueError(f"a 2-D block_size (rows, cols) needs scaling='block', got scaling={scaling!r}")
        return int(block_size[0]), int(block_size[1])
    if not positive(block_size):
        raise ValueError(f"block_size must be a positive integer or a pair (rows, cols) of them, got {block_size!r}")
    return int(block_size)


@dataclass(frozen=True)
class _Layout:
    """Where the rows of ``_rows`` came from: ``shape`` the rows' shape before flattening (``axis`` moved last,
    or, for tiles, (..., tile rows, tile columns, r, c) zero-padded), and for tiles the unpadded last two sizes."""

    shape: tuple
    axis: int
    ndim: int
    tiled: tuple[int, int] | None = None


def _rows(array: np.ndarray, spec: _Spec, axis: int) -> tuple[np.ndarray, int, int, _Layout]:
    """``array`` as 2-D rows whose consecutive runs of ``block`` values are the groups.

    Returns (rows, block, groups per row, layout), the layout for putting results back.  An
    empty row is one (all-zero) group, so that every row has a scale.  A block longer than the
    rows is one group per row, as the same block padded with zeros would be: a block size is
    never allocated.  2-D tiles (``block_size`` = (r, c)) over the last two axes become one row
    each, r * c values, row-major within the tile; the edge tiles are padded with zeros (at most
    r - 1 rows and c - 1 columns; a zero changes no amax and quantizes to zero).
    """
    if not is_integer(axis):
        raise ValueError(f"axis must be an integer, got {axis!r}")
    if isinstance(spec.block_size, tuple):
        return _tile_rows(array, spec.block_size, axis)
    ndim = array.ndim
    if array.ndim == 0:
        array = array.reshape(1)
    if not -array.ndim <= axis < array.ndim:
        raise ValueError(f"axis {axis} is out of range for an array with {array.ndim} dimension(s)")
    moved = np.moveaxis(array, axis, -1)
    if spec.scaling == "tensor":
        rows = moved.reshape(1, moved.size)
        block = max(rows.shape[1], 1)
    else:
        rows = moved.reshape(math.prod(moved.shape[:-1]), moved.shape[-1])
        block = max(rows.shape[1], 1) if spec.scaling == "row" else min(spec.block_size, max(rows.shape[1], 1))
    return (np.ascontiguousarray(rows), block, max(-(-rows.shape[1] // block), 1),
            _Layout(moved.shape, int(axis), ndim))


def _tile_rows(array: np.ndarray, tile: tuple[int, int], axis: int):
    """``_rows`` for 2-D tiles (r, c) over the last two axes (a tile longer than its axis is the whole axis)."""
    if array.ndim < 2:
        raise ValueError(f"a 2-D block_size {tile} tiles the last two axes: x needs 2 or more dimensions, "
                         f"got shape {array.shape}")
    if axis not in (-1, array.ndim - 1):
        raise ValueError(f"2-D tiles run over the last two axes: leave axis at -1 (got axis={axis})")
    lead, (n_rows, n_cols) = array.shape[:-2], array.shape[-2:]
    r, c = min(tile[0], max(n_rows, 1)), min(tile[1], max(n_cols, 1))
    grid = (max(-(-n_rows // r), 1), max(-(-n_cols // c), 1))
    padded = np.zeros(lead + (grid[0] * r, grid[1] * c), dtype=array.dtype)
    padded[..., :n_rows, :n_cols] = array
    tiles = padded.reshape(lead + (grid[0], r, grid[1], c)).swapaxes(-3, -2)
    layout = _Layout(tiles.shape, -1, array.ndim, (n_rows, n_cols))
    return np.ascontiguousarray(tiles).reshape(-1, r * c), r * c, 1, layout


def _restore(rows: np.ndarray, layout: _Layout) -> np.ndarray:
    """Undo ``_rows``."""
    values = rows.reshape(layout.shape)
    if layout.tiled is not None:
        grid_rows, grid_cols, r, c = layout.shape[-4:]
        values = values.swapaxes(-3, -2).reshape(layout.shape[:-4] + (grid_rows * r, grid_cols * c))
        return np.ascontiguousarray(values[..., :layout.tiled[0], :layout.tiled[1]])
    return np.moveaxis(values, -1, layout.axis) if layout.ndim else values.reshape(())


def _scale_shape(scales: np.ndarray, spec: _Spec, layout: _Layout) -> np.ndarray:
    """Per-group scales (rows, groups per row) shaped like the input with ``axis`` holding the groups, or the
    tile grid (..., tile rows, tile columns)."""
    if layout.tiled is not None:
        return scales.reshape(layout.shape[:-2])
    if spec.scaling == "tensor" or layout.ndim == 0:
        return scales.reshape(())
    shape = layout.shape
    return np.moveaxis(scales.reshape(shape[:-1] + (scales.shape[1],)), -1, layout.axis)


def quantize(x, fmt, *, scaling: str | None = None, axis: int = -1, block_size: int | None = None,
             scale_format: str | None = None, scale_rounding: str | None = None, saturate: bool = True,
             return_scales: bool = False, mode: str = "nearest", rng=None, scale: float | None = None):
    """Quantize ``x`` with scales to the element format ``fmt`` and return the dequantized values.

    Parameters
    ----------
    x : array_like of real numbers, taken exactly whatever its dtype: a float64 value is not rounded to
        FP32 first; the scales and the scaled values are the module docstring's FP32 roundings of exact
        results, so ``quantize`` and ``quantize_reference`` agree for every input dtype.
    fmt : a preset (``PRESETS``: "mxfp8_e4m3" (also "mxfp8"), "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3",
        "mxfp4", "nvfp4", "nvfp4_te"), which sets the element format, ``scaling="block"``, the block size
        and the scale format; or an element format (anything ``fpsim.get_format`` takes).
    scaling : "tensor" (default for a format), "row" or "block" (default for a preset).
    axis : the axis (an integer) along which rows and blocks run (the reduction axis of a matmul);
        2-D tiles run over the last two axes (leave axis at -1).
    block_size : values per block (default 32, or the preset's), or a pair (rows, cols): 2-D tiles over
        the last two axes; a block longer than its axis is the whole axis.
    scale_format : "fp32" (default for a format), "e8m0", "e4m3" or "e4m3-te"; see the module docstring.
    scale_rounding : for "e8m0": "floor" (the OCP spec, default), "ceil", "even", "rceil" or "floor-scale"
        (Transformer Engine's power-of-two FP32 scale).
    saturate : overflowing elements become +-max (the MX and FP8 recipes); False lets them
        become inf, or NaN in a format without infinities.
    return_scales : also return the scales (see the module docstring for their meaning).
    mode, rng : the element rounding, as in ``fpsim.round`` (the scales round as stated above).
    scale : a given per-tensor FP32 scale s (a positive FP32 number) instead of max / A: delayed
        scaling; only with ``scaling="tensor"`` and ``scale_format="fp32"``.

    Returns float32 values for float32 input, float64 otherwise (``fpsim.round``'s rule),
    and, with ``return_scales``, a float64 array of the scales.  Deterministic: the same
    input, settings and ``rng`` seed give the same bits.
    """
    spec = _resolve(fmt, scaling, block_size, scale_format, scale_rounding)
    scale = _given_scale(scale, spec)
    mode = check_mode(mode)
    array, exact_inputs = _as_float_array(x)
    if exact_inputs is not None:
        raise ValueError("quantize reads float64 values: pass integers below 2^53 and no long doubles")
    pow2 = spec.scale_format == "e8m0" and mode == "nearest" and \
        (spec.scale_rounding != "floor-scale" or array.dtype == np.float32)
    nvfp4_te = spec.scale_format == "e4m3-te" and mode == "nearest" and array.dtype == np.float32 and array.size > 0
    if (pow2 or nvfp4_te) and isinstance(spec.block_size, tuple):
        values, scales = _tiles_fused(array, spec, saturate, axis)
        return (values, scales) if return_scales else values
    rows, block, groups, layout = _rows(array, spec, axis)
    if spec.scale_format == "fp32" and mode == "nearest" and array.dtype == np.float32 and array.size > 0 \
            and rows.shape[1] % block == 0:
        out, scales = _fp32_fused(rows, block, spec, saturate, scale)
    elif pow2:
        out, scales = _pow2_fused(rows, block, groups, spec, saturate)
    elif nvfp4_te:  # 1-D blocks: tiles of one row
        out, scales = _nvfp4_te_fused(rows.reshape((1,) + rows.shape), (1, block), (rows.shape[0], groups), spec,
                                      saturate)
        out, scales = out[0], scales[0]
    else:
        out, scales = _grouped(rows, block, groups, spec, saturate, mode, rng, scale)
    values = _restore(out.astype(array.dtype, copy=False), layout)
    if not return_scales:
        return values
    return values, _scale_shape(scales, spec, layout)


def _given_scale(scale, spec: _Spec) -> float | None:
    """A delayed scale checked: a positive FP32 number, for per-tensor FP32 scaling only."""
    if scale is None:
        return None
    if spec.scaling != "tensor" or spec.scale_format != "fp32":
        raise ValueError("a given scale= is a per-tensor FP32 scale: use scaling='tensor' and scale_format='fp32'")
    if not (is_finite_number(scale) and scale > 0) or float(np.float32(scale)) != float(scale):
        raise ValueError(f"scale must be a positive finite FP32 number, got {scale!r}")
    return float(scale)


def _mx_arguments(spec: _Spec):
    """(rounding code, emax, mantissa bits, float32(1 / max), float32(max)) for ``_quantize_kernels.mx_exponent``."""
    element = spec.element
    return (kernels.SCALE_ROUNDING_CODES[spec.scale_rounding], element.emax, element.mantissa_bits,
            np.float32(1.0 / element.max), np.float32(element.max))


def _pow2_fused(rows: np.ndarray, block: int, groups: int, spec: _Spec, saturate: bool):
    """E8M0 scaling in mode nearest: the numba kernel, which also writes the scales."""
    scales = np.empty((rows.shape[0], groups), dtype=np.float64)
    out = np.empty_like(rows)
    nearest = kernel_params(spec.element, rows.dtype).nearest_args(saturate)
    with threads_for(rows.size, PARALLEL_MIN_ELEMENTS):
        kernels.quantize_pow2_blocks(rows, out, scales, block, *_mx_arguments(spec), nearest)
    return out, scales


def _fp32_fused(rows: np.ndarray, block: int, spec: _Spec, saturate: bool, scale: float | None):
    """FP32 scales in mode nearest for float32 ``rows`` (not empty) of whole groups: the numba kernels, amaxes
    (magnitude patterns: NaN above inf) then values, with ``_grouped``'s scales in float32 arithmetic (s =
    RN32(max / A): max and A are FP32 values, so the float32 quotient is the correctly rounded one)."""
    f32, flat = np.float32, rows.reshape(-1)
    groups = flat.size // block
    with threads_for(flat.size, PARALLEL_MIN_ELEMENTS):
        if scale is not None:
            scales = np.full(groups, f32(scale))
        else:
            largest = np.array([kernels.largest_magnitude(flat)], dtype=np.uint32) if groups == 1 else \
                kernels.largest_magnitudes(flat, block)
            with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
                scales = np.clip(f32(spec.element.max) / largest.view(f32), f32(FP32.smallest_subnormal),
                                 f32(FP32.max))
            scales = np.where(largest == 0, f32(1), np.where(largest < 0x7F800000, scales, f32(np.nan)))
        out = np.empty_like(flat)
        kernels.quantize_fp32_scaled(flat, out, scales, block,
                                     kernel_params(spec.element, np.float32).nearest_args(saturate))
    return out.reshape(rows.shape), scales.astype(np.float64).reshape(rows.shape[0], groups // rows.shape[0])


def _tiles_fused(array: np.ndarray, spec: _Spec, saturate: bool, axis: int):
    """2-D tiles in mode nearest, E8M0 or "e4m3-te" scales: the numba tile kernels on the input in place of
    ``_rows``'s padded tile copy (same checks; ``_rows`` defines the grouping, the tests hold the two together)."""
    _tile_rows(array[..., :0, :0] if array.ndim >= 2 else array, spec.block_size, axis)  # the checks, no copy
    lead, (n_rows, n_cols) = array.shape[:-2], array.shape[-2:]
    tile = min(spec.block_size[0], max(n_rows, 1)), min(spec.block_size[1], max(n_cols, 1))
    grid = (max(-(-n_rows // tile[0]), 1), max(-(-n_cols // tile[1]), 1))
    matrices = np.ascontiguousarray(array).reshape(math.prod(lead), n_rows, n_cols)
    if spec.scale_format == "e4m3-te":
        out, scales = _nvfp4_te_fused(matrices, tile, grid, spec, saturate)
        return out.reshape(array.shape), scales.reshape(lead + grid)
    out = np.empty_like(matrices)
    scales = np.empty((matrices.shape[0],) + grid, dtype=np.float64)
    if matrices.size == 0:
        scales[...] = _pow2_scales(np.zeros(1), spec)[0]
    else:
        nearest = kernel_params(spec.element, matrices.dtype).nearest_args(saturate)
        with threads_for(matrices.size, PARALLEL_MIN_ELEMENTS):
            kernels.quantize_pow2_tiles(matrices, out, scales, *tile, *_mx_arguments(spec), nearest)
    return out.reshape(array.shape), scales.reshape(lead + grid)


def _nvfp4_te_fused(matrices: np.ndarray, tile: tuple[int, int], grid: tuple[int, int], spec: _Spec,
                    saturate: bool):
    """"e4m3-te" for float32 ``matrices`` (batch, rows, cols), not empty, in mode nearest: (values, d of shape
    (batch,) + ``grid``) from the numba kernel (float32 arithmetic); all NaN when the tensor's amax T is not
    finite (as ``_nvfp4_te``)."""
    f32, element = np.float32, spec.element
    scales = np.empty((matrices.shape[0],) + grid, dtype=np.float64)
    with threads_for(matrices.size, PARALLEL_MIN_ELEMENTS):
        largest = kernels.largest_magnitude(matrices.reshape(-1))
    if largest >= np.uint32(0x7F800000):
        scales[...] = np.nan
        return np.full_like(matrices, np.nan), scales
    tensor_amax = np.uint32(largest).view(f32)
    with np.errstate(divide="ignore", over="ignore"):
        encode = min(f32(E4M3.max * element.max) / tensor_amax, f32(FP32.max))
    encode = f32(1) if encode == 0 else encode
    multiplier = f32(encode * (f32(1) / f32(element.max)))
    out = np.empty_like(matrices)
    with threads_for(matrices.size, PARALLEL_MIN_ELEMENTS):
        kernels.quantize_nvfp4_te_tiles(matrices, out, scales, *tile, tensor_amax, multiplier, f32(1) / encode,
                                        f32(1) / f32(E4M3.max * element.max), f32(element.max),
                                        kernel_params(E4M3, matrices.dtype).nearest_args(True),
                                        kernel_params(element, matrices.dtype).nearest_args(saturate), saturate)
    return out, scales


def _pow2_scales(amax: np.ndarray, spec: _Spec) -> np.ndarray:
    """The E8M0 scales X of groups whose largest magnitudes are ``amax`` (float64, exact), as float64.

    floor-scale is computed here from the exact RN32(max / A), for any input dtype (the kernel's
    rule divides float32 values); the other rules by ``_quantize_kernels.mx_exponents``.
    """
    if spec.scale_rounding != "floor-scale":
        exponents = kernels.mx_exponents(amax.reshape(-1), *_mx_arguments(spec)).reshape(amax.shape)
        return np.where(exponents == kernels.NAN_EXPONENT, np.nan, np.ldexp(1.0, exponents.clip(-127, 127)))
    with np.errstate(divide="ignore", invalid="ignore"):
        fp32_scale = np.minimum(_fp32_of(np.divide, spec.element.max, amax).astype(np.float64), FP32.max)
    exponents = 1 - np.frexp(fp32_scale)[1]  # -floor(log2 s)
    scales = np.where(exponents > 127, np.nan, np.ldexp(1.0, np.minimum(exponents, 127)))
    return np.where(amax == 0, 1.0, np.where(np.isfinite(amax), scales, np.nan))


def _grouped(rows: np.ndarray, block: int, groups_per_row: int, spec: _Spec, saturate: bool, mode: str, rng,
             scale: float | None = None):
    """Any scale format and mode, with numpy over (rows, groups, block) and fpsim's correctly rounded arithmetic."""
    n = rows.shape[1]
    padded = np.zeros((rows.shape[0], groups_per_row * block), dtype=np.float64)
    padded[:, :n] = rows
    groups = padded.reshape(rows.shape[0], groups_per_row, block)
    amax = np.max(np.abs(groups), axis=-1, initial=0.0)
    element = spec.element
    with np.errstate(over="ignore"):  # a float64 value beyond FP32's range is not an FP32 value
        fp32_inputs = rows.dtype == np.float32 or np.array_equal(rows.astype(np.float32), rows, equal_nan=True)
    if spec.scale_format == "e8m0":
        scales = _pow2_scales(amax, spec)
        quantized = round_to(groups / scales[..., None], element, mode, saturate=saturate, rng=rng)
        out = quantized * scales[..., None]
    elif spec.scale_format == "fp32":
        if scale is not None:
            scales = np.full(amax.shape, scale)
        else:
            scales = np.clip(_fp32_of(np.divide, element.max, amax), FP32.smallest_subnormal, FP32.max)
            scales = np.where(amax == 0, 1.0, np.where(np.isfinite(amax), scales, np.nan))
        out = _scaled_in_float32(groups, fp32_inputs, scales, np.multiply, np.divide, element, mode, saturate, rng)
    elif spec.scale_format == "e4m3-te":
        out, scales = _nvfp4_te(groups, amax, fp32_inputs, element, mode, saturate, rng)
    else:
        tensor_scale = nvfp4_tensor_scale(np.max(amax, initial=0.0), element)
        ratios = _fp32_of(np.divide, _fp32_of(np.divide, amax, element.max), tensor_scale)
        block_scales = round_to(np.clip(ratios, E4M3.smallest_normal, E4M3.max), E4M3)
        scales = _fp32_of(np.multiply, tensor_scale, block_scales)
        out = _scaled_in_float32(groups, fp32_inputs, scales, np.divide, np.multiply, element, mode, saturate, rng)
    values = np.asarray(out).reshape(rows.shape[0], groups_per_row * block)[:, :n]  # (0 rows: no -1 to infer)
    return values, np.asarray(scales, dtype=np.float64)


def nvfp4_tensor_scale(tensor_amax: float, element: Format = E2M1) -> float:
    """NVFP4's per-tensor FP32 scale P = RN32(T / (448 * max)) of a tensor of amax T (module docstring, "e4m3")."""
    tensor_scale = float(_fp32_of(np.divide, tensor_amax, E4M3.max * element.max))
    if not math.isfinite(tensor_scale):
        return math.nan
    return 1.0 if tensor_scale < FP32.smallest_normal else tensor_scale


def _nvfp4_te(groups, amax, fp32_inputs: bool, element: Format, mode: str, saturate: bool, rng):
    """(values, d) of the two-level encode in Transformer Engine's FP32 order (module docstring, "e4m3-te")."""
    tensor_amax = float(np.max(amax, initial=0.0))
    if not math.isfinite(tensor_amax):
        return np.full(groups.shape, np.nan, dtype=np.float32), np.full(amax.shape, np.nan)
    f32 = np.float32
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        encode = min(_fp32_of(np.divide, E4M3.max * element.max, tensor_amax)[()], f32(FP32.max))
        encode = f32(1) if encode == 0 else encode
        decode = f32(1) / encode
        multiplier = encode * (f32(1) / f32(element.max))
        raw = np.minimum(_fp32_of(np.multiply, amax, multiplier), f32(E4M3.max))
        block_scales = np.asarray(round_to(raw, E4M3), dtype=np.float32)
        encodes = np.minimum(f32(1) / (block_scales * decode), f32(FP32.max))[..., None]
        decodes = _fp32_of(np.multiply, block_scales, tensor_amax) * (f32(1) / f32(E4M3.max * element.max))
        scaled = groups.astype(np.float32) * encodes if fp32_inputs else _fp32_of(np.multiply, groups, encodes)
        if saturate:
            scaled = np.clip(scaled, -f32(element.max), f32(element.max))
        quantized = np.asarray(round_to(scaled, element, mode, saturate=saturate, rng=rng), dtype=np.float32)
        return quantized * decodes[..., None], decodes


def _scaled_in_float32(groups, fp32_inputs: bool, scales, apply, undo, element, mode, saturate, rng) -> np.ndarray:
    """RN32(undo(q(RN32(apply(x, s))), s)) for FP32 scales s, one per group, and the exact inputs x: in float32
    arithmetic, whose IEEE multiply and divide are the FP32 roundings of the formulas, when every x is an FP32
    value (``fp32_inputs``; 10x faster than fpsim.mul / fpsim.div on float64 arrays); else RN32(apply(x, s))
    with ``_fp32_of``."""
    scales32 = np.asarray(scales, dtype=np.float32)[..., None]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if fp32_inputs:
            scaled = apply(groups.astype(np.float32), scales32)
        else:
            scaled = _fp32_of(apply, groups, scales32)
        return undo(np.asarray(round_to(scaled, element, mode, saturate=saturate, rng=rng), dtype=np.float32),
                    scales32)


_EXACT_OPERATIONS = {np.multiply: operator.mul, np.divide: operator.truediv}


def _fp32_of(operation, a, b) -> np.ndarray:
    """RN32(a op b) for ``operation`` np.multiply or np.divide: the exact result for float64 operands ``a``, ``b``
    (broadcast) rounded once to nearest FP32, a float32 array.

    The float64 result r is the exact one rounded to nearest, so the exact one lies between r's float64
    neighbours; where both of them round to the same FP32 value, rounding being monotonic, the exact one
    rounds to it too, and so does r (which also keeps the exact result's sign where it underflows to 0).
    The others, within a float64 ulp of an FP32 midpoint, are computed with fractions.
    """
    a, b = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        r = operation(a, b)
        out = np.array(r, dtype=np.float32)
        unsure = (np.nextafter(r, -np.inf).astype(np.float32) != np.nextafter(r, np.inf).astype(np.float32)) \
            & ~np.isnan(r)
        if operation is np.multiply and unsure.any():
            unsure &= ~_exact_products(a, b, r)
    exact = _EXACT_OPERATIONS[operation]
    for index in map(tuple, np.argwhere(unsure)):  # both finite, b != 0: r is finite and not exactly 0
        out[index] = round_exact(exact(Fraction(float(a[index])), Fraction(float(b[index]))), FP32)
    return out


def _significant_bits(values: np.ndarray) -> np.ndarray:
    """The bits of each float64 significand from its leading 1 to its last 1 (0 for zero)."""
    integers = (np.frexp(values)[0] * 2.0**53).astype(np.int64)
    lowest = np.abs(integers & -integers).astype(np.float64)   # the lowest set bit, 2^trailing zeros
    return np.where(values == 0, 0, 53 - (np.frexp(lowest)[1] - 1))


def _exact_products(a: np.ndarray, b: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Where the float64 product r = a * b is exact: both significands fit 53 bits together and r is a normal
    float64 (or 0 from a zero factor); there astype(float32) is the correctly rounded RN32 of a * b, midpoints
    included (products of an FP32 scale and an E4M3 value are often FP32 midpoints, exactly)."""
    with np.errstate(invalid="ignore"):
        fits = _significant_bits(a) + _significant_bits(b) <= 53
        return np.isfinite(a) & np.isfinite(b) & fits & ((np.abs(r) >= 2.0**-1022) | (a == 0) | (b == 0))


# ---- the exact reference -------------------------------------------------------------


def quantize_reference(x, fmt, *, scaling: str | None = None, axis: int = -1, block_size: int | None = None,
                       scale_format: str | None = None, scale_rounding: str | None = None,
                       saturate: bool = True, mode: str = "nearest", scale: float | None = None):
    """``quantize`` (with ``return_scales=True``) from exact rationals, one value at a time: the specification.

    Each step of the module docstring's formulas is computed with ``fractions.Fraction``
    and rounded with ``round_exact``; only the grouping of values is shared with
    ``quantize``.  Deterministic modes only; slow: for tests on small arrays.
    """
    spec = _resolve(fmt, scaling, block_size, scale_format, scale_rounding)
    scale = _given_scale(scale, spec)
    if mode not in DETERMINISTIC_MODES:
        raise ValueError(f"the reference takes a deterministic mode: {', '.join(DETERMINISTIC_MODES)}")
    array = np.asarray(x)
    result_format = FP32 if array.dtype == np.float32 else FP64
    array = array.astype(np.float64)
    rows, block, groups_per_row, layout = _rows(array, spec, axis)
    out = np.empty(rows.shape, dtype=np.float64)
    scales = np.empty((rows.shape[0], groups_per_row), dtype=np.float64)
    tensor_amax = _amax([float(v) for v in rows.reshape(-1)])
    for r in range(rows.shape[0]):
        for g in range(groups_per_row):
            values = [float(v) for v in rows[r, g * block:(g + 1) * block]]
            group_scale, rounded = _reference_group(values, spec, saturate, mode, tensor_amax, result_format, scale)
            scales[r, g] = group_scale
            out[r, g * block:(g + 1) * block] = rounded
    return _restore(out, layout), _scale_shape(scales, spec, layout)


def _amax(values: list[float]):
    """The largest magnitude as a Fraction, or inf / NaN when one of ``values`` is."""
    if any(math.isnan(v) for v in values):
        return math.nan
    if any(math.isinf(v) for v in values):
        return math.inf
    return max((abs(Fraction(v)) for v in values), default=Fraction(0))


def _rn32(value) -> Fraction | float:
    """``value`` (a Fraction, or inf / NaN) rounded to nearest FP32; a Fraction unless not finite."""
    rounded = round_exact(value, FP32)
    return Fraction(rounded) if math.isfinite(rounded) else rounded


def _reference_group(values, spec: _Spec, saturate: bool, mode: str, tensor_amax, result_format: Format,
                     given_scale: float | None = None):
    """(scale, dequantized values) of one group; q * X is rounded to ``result_format`` (the input's precision);
    ``given_scale``: the FP32 scale of delayed scaling."""
    element = spec.element
    amax = _amax(values)

    def q(v):
        return round_exact(v, element, mode, saturate=saturate)

    if spec.scale_format == "e8m0":
        exponent = _reference_exponent(amax, spec)
        if exponent is None:
            return math.nan, [math.nan] * len(values)
        scale = Fraction(2) ** exponent
        return float(scale), [_signed(round_exact(_as_fraction(q(Fraction(v) / scale)) * scale, result_format), v)
                              for v in values]
    # a group's own inf or NaN makes its scale NaN; the tensor's amax T only enters NVFP4's two levels
    uses_tensor_amax = spec.scale_format in ("e4m3", "e4m3-te")
    if given_scale is None and not (isinstance(amax, Fraction) and (isinstance(tensor_amax, Fraction)
                                                                     or not uses_tensor_amax)):
        return math.nan, [math.nan] * len(values)
    if spec.scale_format == "fp32":
        if given_scale is not None:
            scale = Fraction(given_scale)
        else:
            scale = Fraction(1) if amax == 0 else \
                max(Fraction(round_exact(element.max / amax, FP32, saturate=True)), Fraction(FP32.smallest_subnormal))
        # (with a given scale an inf or NaN input goes through q as it is)
        return float(scale), [_signed(_rn32(_as_fraction(q(_rn32(Fraction(v) * scale) if math.isfinite(v)
                                                           else v)) / scale), v) for v in values]
    if spec.scale_format == "e4m3-te":
        return _reference_nvfp4_te(values, amax, tensor_amax, element, q, saturate)
    tensor_scale = _rn32(tensor_amax / (Fraction(E4M3.max) * Fraction(element.max)))
    if not isinstance(tensor_scale, Fraction):  # a float64 T beyond FP32's range
        return math.nan, [math.nan] * len(values)
    if tensor_scale < Fraction(FP32.smallest_normal):
        tensor_scale = Fraction(1)
    ratio = _rn32(_rn32(amax / Fraction(element.max)) / tensor_scale)
    clamped = min(max(ratio, Fraction(E4M3.smallest_normal)), Fraction(E4M3.max))
    scale = _rn32(tensor_scale * Fraction(round_exact(clamped, E4M3)))
    return float(scale), [_signed(_rn32(_as_fraction(q(_rn32(Fraction(v) / scale))) * scale), v)
                          for v in values]


def _reference_nvfp4_te(values, amax: Fraction, tensor_amax: Fraction, element: Format, q, saturate: bool):
    """(d, dequantized values) of one block in Transformer Engine's FP32 order, from exact rationals."""
    top = Fraction(FP32.max)

    def capped(value):  # min(value, FP32 max): RN32 results beyond it are inf
        return top if not isinstance(value, Fraction) or value > top else value

    product = Fraction(E4M3.max) * Fraction(element.max)
    encode = top if tensor_amax == 0 else capped(_rn32(product / tensor_amax))
    encode = Fraction(1) if encode == 0 else encode
    decode = _rn32(1 / encode)
    multiplier = _rn32(encode * _rn32(Fraction(1) / Fraction(element.max)))
    block_scale = Fraction(round_exact(min(capped(_rn32(amax * multiplier)), Fraction(E4M3.max)), E4M3))
    divisor = _rn32(block_scale * decode)
    encode_block = top if divisor == 0 else capped(_rn32(1 / divisor))
    d = _rn32(_rn32(block_scale * tensor_amax) * _rn32(1 / product))
    bound = Fraction(element.max)

    def scaled(v):
        value = _rn32(Fraction(v) * encode_block)
        return min(max(value, -bound), bound) if saturate else value

    return float(d), [_signed(_rn32(_as_fraction(q(scaled(v))) * d), v) for v in values]


def _signed(value, x: float) -> float:
    """``value`` as a float; a zero takes the sign of the input ``x`` (the scales are positive, Fractions unsigned)."""
    return math.copysign(0.0, x) if value == 0 else float(value)


def _as_fraction(value: float):
    """A rounded element as a Fraction; inf and NaN (an overflow without saturation) stay floats."""
    return Fraction(value) if math.isfinite(value) else value


def _reference_exponent(amax, spec: _Spec) -> int | None:
    """The E8M0 exponent of a group (None for NaN), from the formulas in the module docstring."""
    element = spec.element
    if not isinstance(amax, Fraction):
        return None
    if spec.scale_rounding == "floor-scale":
        if amax == 0:
            return 0
        fp32_scale = _rn32(Fraction(element.max) / amax)
        exponent = -floor_log2(min(fp32_scale, Fraction(FP32.max)) if isinstance(fp32_scale, Fraction)
                               else Fraction(FP32.max))
        return None if exponent > 127 else exponent
    if amax == 0:
        return -127
    if spec.scale_rounding == "rceil":
        v = _rn32(_rn32(amax) * _rn32(Fraction(1) / Fraction(element.max)))
        if not isinstance(v, Fraction):
            return None
        exponent = floor_log2(v) + (v != Fraction(2) ** floor_log2(v)) if v > 0 else -127
    else:
        a = amax
        if spec.scale_rounding == "even":
            a = Fraction(round_exact(amax, Format("r", 11, element.mantissa_bits), "nearest_away"))
        exponent = floor_log2(a) - element.emax
        if spec.scale_rounding == "ceil" and a != Fraction(2) ** floor_log2(a):
            exponent += 1
    if exponent < -127:
        return -127
    return None if exponent > 127 else exponent
