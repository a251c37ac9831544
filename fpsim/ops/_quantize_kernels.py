"""Numba kernels of ``fpsim.quantize``: the E8M0 scale rule, the fused power-of-two block and 2-D tile
quantizers, and NVFP4 in Transformer Engine's FP32 order (float32 input; 1-D blocks and 2-D tiles, with the
tensor's amax from ``largest_magnitude``).

``mx_exponent`` is the one implementation of the E8M0 scale rules (the Fraction
reference in ``fpsim.ops.quantize`` is the independent one).  ``quantize_pow2_blocks``
does a whole power-of-two-scaled quantization, for each block: its amax from the
magnitude bit patterns (integer max: NaN > inf > every finite pattern), its scale
exponent, then x * 2^-e rounded by
``_kernels.round_nearest_branchless`` and multiplied back by 2^e.  Both products
are exact (see ``fpsim.ops.quantize``), so the only rounding is the element
format's, as in the reference.

The loops over a block's values run over unsigned indices: numba wraps negative
indices, and that check, kept in a loop over a signed range offset by a block's
start, stops LLVM from vectorizing 32-value loops (4x slower, measured).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange
from numba.extending import overload

from ..numerics.kernels import float_bits, round_nearest_branchless

FLOOR, CEIL, EVEN, RCEIL, FLOOR_SCALE = range(5)
SCALE_ROUNDING_CODES = {"floor": FLOOR, "ceil": CEIL, "even": EVEN, "rceil": RCEIL, "floor-scale": FLOOR_SCALE}
NAN_EXPONENT = 128
"""``mx_exponent``'s answer for a NaN scale (E8M0 code 0xFF)."""


def layout(like):
    """(mantissa bits, exponent bias, pattern of inf) of the float type of ``like`` (float32 or float64); numba only."""
    raise NotImplementedError("layout is used inside numba kernels")


@overload(layout, inline="always")
def _layout(like):
    if like == numba.types.float32:
        return lambda like: (23, 127, np.int64(0x7F800000))
    return lambda like: (52, 1023, np.int64(0x7FF0000000000000))


def as_type_of(value, like):
    """``value`` converted to the float type (float32 or float64) of ``like``; numba only."""
    raise NotImplementedError("as_type_of is used inside numba kernels")


@overload(as_type_of, inline="always")
def _as_type_of(value, like):
    if like == numba.types.float32:
        return lambda value, like: np.float32(value)
    return lambda value, like: np.float64(value)


def float_of_bits(bits, like):
    """The float of the type of ``like`` (float32 or float64) whose bit pattern is ``bits``; numba only."""
    raise NotImplementedError("float_of_bits is used inside numba kernels")


@overload(float_of_bits, inline="always")
def _float_of_bits(bits, like):
    if like == numba.types.float32:
        return lambda bits, like: np.uint32(bits).view(np.float32)
    return lambda bits, like: np.int64(bits).view(np.float64)


def magnitude_bits(x):
    """The bit pattern of |x|: a uint32 for a float32 (so that a max over them vectorizes 8 wide), an int64 for a
    float64; numba only."""
    raise NotImplementedError("magnitude_bits is used inside numba kernels")


@overload(magnitude_bits, inline="always")
def _magnitude_bits(x):
    if x == numba.types.float32:
        return lambda x: np.uint32(np.float32(x).view(np.uint32) & np.uint32(0x7FFFFFFF))
    return lambda x: np.float64(x).view(np.int64) & np.int64(0x7FFFFFFFFFFFFFFF)


@njit(cache=True, inline="always")
def mx_exponent(largest, like, rounding, emax, mantissa_bits, reciprocal_max, element_max):
    """The E8M0 scale exponent of a block whose largest magnitude has the bit pattern ``largest``; NAN_EXPONENT for NaN.

    ``largest`` is in the layout of ``like`` (float32 or float64).  With A its value:
    floor: floor(log2 A) - emax; ceil: ceil(log2 A) - emax; even: floor(log2 of A rounded
    to ``mantissa_bits`` + 1 significant bits, ties away) - emax; rceil: ceil(log2 v) with
    v = float32(float32(A) * reciprocal_max), ``reciprocal_max`` = float32(1 / max); floor-scale
    (float32 ``like`` only: float32(A) must be A): -floor(log2 min(float32(element_max / A), FP32 max)),
    ``element_max`` = float32(max), and 0 for A = 0 (Transformer Engine's X = 1).
    Below -127 the exponent is -127 (A = 0 included); above 127, or A inf / NaN, NaN.
    The binade is read from the exponent field: exact for normal A, and a subnormal A
    only reaches exponents below -127, which clamp.
    """
    mant_in, bias_in, inf_bits = layout(like)
    if largest >= inf_bits:
        return NAN_EXPONENT
    if rounding == FLOOR_SCALE:
        if largest == 0:
            return 0
        s = np.float32(element_max / np.float32(float_of_bits(largest, like)))
        if not s <= np.float32(3.4028234663852886e38):  # max / A overflows: Transformer Engine takes FP32's max
            s = np.float32(3.4028234663852886e38)
        sbits = np.int64(np.float32(s).view(np.uint32))
        if sbits < 0x00800000:  # a subnormal s: 1 / 2^floor(log2 s) is 2^127 in [2^-127, 2^-126), above 2^127 below
            return 127 if sbits >= 0x00400000 else NAN_EXPONENT
        return 127 - (sbits >> 23)
    if largest == 0:
        return -127
    if rounding == RCEIL:
        v = np.float32(np.float32(float_of_bits(largest, like)) * reciprocal_max)
        if not v <= np.float32(3.4028234663852886e38):
            return NAN_EXPONENT
        vbits = np.int64(np.float32(v).view(np.uint32))
        if vbits < 0x00800000:  # a float32 subnormal v: up to 2^-127 gives 2^-127, above it 2^-126
            e = -127 if vbits <= 0x00400000 else -126
        else:
            e = (vbits >> 23) - 127 + (1 if (vbits & 0x007FFFFF) != 0 else 0)
    else:
        if rounding == EVEN:  # round the significand to mantissa_bits, ties away; a carry moves the exponent
            largest = largest + (np.int64(1) << (mant_in - 1 - mantissa_bits))
        e = (largest >> mant_in) - bias_in - emax
        if rounding == CEIL and (largest & ((np.int64(1) << mant_in) - 1)) != 0:
            e += 1
    if e < -127:
        return -127
    return NAN_EXPONENT if e > 127 else e


@njit(cache=True)
def mx_exponents(amax, rounding, emax, mantissa_bits, reciprocal_max, element_max):
    """``mx_exponent`` of every element of the float64 array ``amax`` (an int64 array)."""
    out = np.empty(amax.shape[0], dtype=np.int64)
    for i in range(amax.shape[0]):
        out[i] = mx_exponent(float_bits(amax[i]) & 0x7FFFFFFFFFFFFFFF, amax[i], rounding, emax, mantissa_bits,
                             reciprocal_max, element_max)
    return out


@njit(cache=True, inline="always")
def pow2(e, like):
    """2^e (|e| <= 127: a float32, 2^-127 a subnormal one) in the type of ``like``; NaN for NAN_EXPONENT."""
    bits = np.int64(0x7FF8000000000000) if e == NAN_EXPONENT else (np.int64(e) + 1023) << 52
    return as_type_of(np.int64(bits).view(np.float64), like)


BLOCKS_PER_TASK = 256
"""Blocks that ``quantize_pow2_blocks`` handles as one task (32-value blocks: 32 KB of float32,
which stays in the L1/L2 cache between the task's passes), and tiles of one strip that
``quantize_nvfp4_te_tiles`` does (16 x 16 tiles: 256 KB, in the L2 cache)."""


@njit(cache=True, parallel=True)
def quantize_pow2_blocks(x, out, scales, block, rounding, emax, mantissa_bits, reciprocal_max, element_max, nearest):
    """Quantize every block of ``block`` consecutive values in each row of ``x`` (2-D, float32 or float64).

    The last block of a row may be shorter.  ``scales`` (rows, blocks; float64) receives each
    block's scale 2^e (``mx_exponent``; NaN for NAN_EXPONENT); ``nearest`` is the element
    format's ``KernelParams.nearest_args`` for ``x``'s dtype.  The work goes in tasks of up to
    ``BLOCKS_PER_TASK`` blocks of one row, each in three passes (amaxes, scales, values): the
    branchy scale code stays out of the loops over values, which vectorize, and a task's values
    are still in the cache when the third pass reads them again.  A task finds its row and first
    block with one integer division, where the former three passes over the whole array took two
    per block (2^19 blocks in 2^24 values).  Measured against those passes (and the int64
    ``round_nearest_branchless``), 2^24 float32 values on one thread: the kernel 1.7x faster,
    ``fpsim.quantize`` 1.6-2x (``benchmarks/bench_quantize.py``).
    """
    rows, n = x.shape
    blocks = scales.shape[1]
    flat_x, flat_out, flat_scales = x.reshape(-1), out.reshape(-1), scales.reshape(-1)
    like = flat_x[0] if flat_x.shape[0] else x.dtype.type(0)
    tasks_per_row = -(-blocks // BLOCKS_PER_TASK)
    for task in prange(rows * tasks_per_row):
        row, first = task // tasks_per_row, task % tasks_per_row * BLOCKS_PER_TASK
        count = min(BLOCKS_PER_TASK, blocks - first)
        largest = np.empty(count, dtype=np.int64)
        factors = np.empty(count, dtype=x.dtype)
        inverses = np.empty(count, dtype=x.dtype)
        for j in range(count):
            start, stop = _block_range(row, first + j, block, n)
            amax = magnitude_bits(as_type_of(0.0, like))
            for i in range(start, stop):
                amax = max(amax, magnitude_bits(flat_x[i]))
            largest[j] = amax
        for j in range(count):
            e = mx_exponent(largest[j], like, rounding, emax, mantissa_bits, reciprocal_max, element_max)
            flat_scales[row * blocks + first + j] = pow2(e, 1.0)
            factors[j] = pow2(e, like)
            inverses[j] = pow2(-e if e != NAN_EXPONENT else e, like)
        for j in range(count):
            start, stop = _block_range(row, first + j, block, n)
            factor, inverse = factors[j], inverses[j]
            for i in range(start, stop):
                flat_out[i] = float_of_bits(round_nearest_branchless(flat_x[i] * inverse, nearest), like) * factor


@njit(cache=True, inline="always")
def _block_range(row, b, block, n):
    """Flat (start, stop) of block ``b`` of row ``row`` of a row-major (rows, n) array, as unsigned integers
    (see the module doc)."""
    return np.uint64(row * n + b * block), np.uint64(row * n + min(b * block + block, n))


@njit(cache=True, parallel=True)
def quantize_pow2_tiles(x, out, scales, tile_rows, tile_cols, rounding, emax, mantissa_bits, reciprocal_max,
                        element_max, nearest):
    """``quantize_pow2_blocks`` for 2-D tiles: ``x`` and ``out`` (batch, rows, cols), C-contiguous, float32 or
    float64; each ``tile_rows`` x ``tile_cols`` tile (edge tiles smaller) shares one scale, written to ``scales``
    (batch, tile rows, tile columns; float64).

    A task is one strip of tiles (``tile_rows`` rows of one matrix) in two passes, amaxes then values, each
    row by row over contiguous runs of ``tile_cols`` values: no padded or transposed copy of the input.
    """
    batch, rows, cols = x.shape
    grid_rows, grid_cols = scales.shape[1], scales.shape[2]
    flat_x, flat_out, flat_scales = x.reshape(-1), out.reshape(-1), scales.reshape(-1)
    like = flat_x[0] if flat_x.shape[0] else x.dtype.type(0)
    for task in prange(batch * grid_rows):
        matrix, strip = task // grid_rows, task % grid_rows
        first, last = strip * tile_rows, min(strip * tile_rows + tile_rows, rows)
        largest = np.zeros(grid_cols, dtype=np.int64)
        factors = np.empty(grid_cols, dtype=x.dtype)
        inverses = np.empty(grid_cols, dtype=x.dtype)
        for i in range(first, last):
            for t in range(grid_cols):
                start, stop = _block_range(matrix * rows + i, t, tile_cols, cols)
                amax = magnitude_bits(as_type_of(0.0, like))
                for k in range(start, stop):
                    amax = max(amax, magnitude_bits(flat_x[k]))
                largest[t] = max(largest[t], np.int64(amax))
        for t in range(grid_cols):
            e = mx_exponent(largest[t], like, rounding, emax, mantissa_bits, reciprocal_max, element_max)
            flat_scales[task * grid_cols + t] = pow2(e, 1.0)
            factors[t] = pow2(e, like)
            inverses[t] = pow2(-e if e != NAN_EXPONENT else e, like)
        for i in range(first, last):
            for t in range(grid_cols):
                start, stop = _block_range(matrix * rows + i, t, tile_cols, cols)
                factor, inverse = factors[t], inverses[t]
                for k in range(start, stop):
                    flat_out[k] = float_of_bits(round_nearest_branchless(flat_x[k] * inverse, nearest), like) * factor


LARGEST_CHUNK = 1 << 16
"""Values per task of ``largest_magnitude``."""


@njit(cache=True, parallel=True)
def largest_magnitude(x):
    """The bit pattern of the largest |v| in the 1-D float32 array ``x`` (0 when empty): an integer max over
    the magnitude patterns, whose order is that of the magnitudes, with NaN's above inf's, so that a NaN
    anywhere gives a pattern above inf's.  One pass, in chunks of ``LARGEST_CHUNK`` values (a task each), where
    ``max(x.max(), -x.min())`` takes two and gives -0 for a tensor of zeros whose largest value is -0."""
    chunks = -(-x.shape[0] // LARGEST_CHUNK)
    partial = np.zeros(chunks, dtype=np.uint32)
    for chunk in prange(chunks):
        largest = magnitude_bits(np.float32(0))
        for i in range(np.uint64(chunk * LARGEST_CHUNK), np.uint64(min(chunk * LARGEST_CHUNK + LARGEST_CHUNK,
                                                                           x.shape[0]))):
            largest = max(largest, magnitude_bits(x[i]))
        partial[chunk] = largest
    largest = np.uint32(0)
    for chunk in range(chunks):
        largest = max(largest, partial[chunk])
    return largest


@njit(cache=True, parallel=True)
def quantize_nvfp4_te_tiles(x, out, scales, tile_rows, tile_cols, tensor_amax, multiplier, decode,
                            reciprocal_product, element_max, scale_nearest, element_nearest, clamp):
    """NVFP4 in Transformer Engine's FP32 order (``fpsim.ops.quantize``, "e4m3-te") for float32 ``x`` and
    ``out`` (batch, rows, cols), C-contiguous: each ``tile_rows`` x ``tile_cols`` tile (edge tiles smaller;
    1-D blocks are tiles of one row) with A its amax has s = E4M3(min(A * multiplier, 448)),
    e = min(1 / (s * decode), FP32 max) (FP32 max where s * decode is 0), d = (s * T) * reciprocal_product,
    and out = q(clamp(x * e)) * d, every operation a float32 one (IEEE: the RN32 of the formulas, as the
    inputs are FP32 numbers).  ``scales`` (batch, tile rows, tile columns; float64) receives d; a finite T only.

    A task is up to ``BLOCKS_PER_TASK`` tiles of one strip (``tile_rows`` rows of one matrix) in three
    passes, as in ``quantize_pow2_blocks``: amaxes (row by row over runs of ``tile_cols`` values), the
    scales (a loop of selects over the task's tiles, which vectorises), the values (row by row again); the
    input is read in place, without a padded tile copy.  Measured on 2^22 values, one thread (CPU time):
    1 x 16 blocks 1.7x faster than one task per block (the former kernel, whose scale code ran once per 16
    values between two 16-value loops), and 16 x 16 tiles 4.5x faster than that kernel on ``_rows``'s
    padded tile copy.
    """
    batch, rows, cols = x.shape
    grid_rows, grid_cols = scales.shape[1], scales.shape[2]
    flat_x, flat_out, flat_scales = x.reshape(-1), out.reshape(-1), scales.reshape(-1)
    like = np.float32(0)
    top = np.float32(3.4028234663852886e38)
    tasks_per_strip = -(-grid_cols // BLOCKS_PER_TASK)
    for task in prange(batch * grid_rows * tasks_per_strip):
        strip, first_tile = task // tasks_per_strip, task % tasks_per_strip * BLOCKS_PER_TASK
        matrix = strip // grid_rows
        first = strip % grid_rows * tile_rows
        last = min(first + tile_rows, rows)
        count = min(BLOCKS_PER_TASK, grid_cols - first_tile)
        largest = np.zeros(count, dtype=np.uint32)
        encodes = np.empty(count, dtype=np.float32)
        decodes = np.empty(count, dtype=np.float32)
        for i in range(first, last):
            for t in range(count):
                start, stop = _block_range(matrix * rows + i, first_tile + t, tile_cols, cols)
                amax = largest[t]
                for k in range(start, stop):
                    amax = max(amax, magnitude_bits(flat_x[k]))
                largest[t] = amax
        for t in range(count):
            raw = min(np.float32(float_of_bits(largest[t], like) * multiplier), np.float32(448.0))
            s = float_of_bits(round_nearest_branchless(raw, scale_nearest), like)
            product = np.float32(s * decode)
            encodes[t] = top if product == 0 else min(np.float32(np.float32(1) / product), top)
            decodes[t] = np.float32(np.float32(s * tensor_amax) * reciprocal_product)
            flat_scales[strip * grid_cols + first_tile + t] = decodes[t]
        for i in range(first, last):
            for t in range(count):
                start, stop = _block_range(matrix * rows + i, first_tile + t, tile_cols, cols)
                encode, d = encodes[t], decodes[t]
                for k in range(start, stop):
                    scaled = np.float32(flat_x[k] * encode)
                    if clamp:
                        scaled = min(max(scaled, -element_max), element_max)
                    flat_out[k] = np.float32(float_of_bits(round_nearest_branchless(scaled, element_nearest),
                                                           like) * d)


@njit(cache=True, parallel=True)
def largest_magnitudes(x, group):
    """``largest_magnitude`` of each run of ``group`` consecutive values of the 1-D float32 array ``x`` (the
    last run may be shorter), one task per run: a uint32 pattern per run."""
    runs = -(-x.shape[0] // group)
    out = np.zeros(runs, dtype=np.uint32)
    for run in prange(runs):
        largest = magnitude_bits(np.float32(0))
        for i in range(np.uint64(run * group), np.uint64(min(run * group + group, x.shape[0]))):
            largest = max(largest, magnitude_bits(x[i]))
        out[run] = largest
    return out


SCALED_CHUNK = 1 << 14
"""Values per task of ``quantize_fp32_scaled``."""


@njit(cache=True, parallel=True)
def quantize_fp32_scaled(x, out, scales, group, nearest):
    """out = RN32(q(RN32(x * s)) / s) for the 1-D float32 array ``x``, s = ``scales[i // group]`` (float32, one
    per run of ``group`` consecutive values) and q the element format's rounding (``nearest``: its
    ``KernelParams.nearest_args`` for float32): FP32 current scaling with ``fpsim.quantize``'s FP32 order, its
    product and quotient the float32 IEEE ones.  Tasks of ``SCALED_CHUNK`` values, each looping over the runs
    it meets, so that one scale (a whole tensor's) still spreads over the threads."""
    n = x.shape[0]
    like = np.float32(0)
    for task in prange(-(-n // SCALED_CHUNK)):
        start, stop = task * SCALED_CHUNK, min(task * SCALED_CHUNK + SCALED_CHUNK, n)
        while start < stop:
            run = start // group
            end = min(stop, run * group + group)
            s = scales[run]
            for i in range(np.uint64(start), np.uint64(end)):
                out[i] = float_of_bits(round_nearest_branchless(x[i] * s, nearest), like) / s
            start = end
