"""The fast rounding kernel: integer operations on the bit pattern of the input.

It implements exactly the algorithm of ``fpsim.numerics.exact`` (read that first), on
the bits of an IEEE binary input (float32 or float64) rather than on fractions:

* the input magnitude is ``sig * 2^(E' - bias_in - mant_in)`` with integer
  significand ``sig`` (implicit bit included for normal inputs) and E' = max(E, 1);
* ``k``, the number of low significand bits below the target's spacing, follows
  from step 2 of the exact algorithm: ``k = mant_in + 1 - p + max(0, emin - e)``
  for a normal input of exponent e, and ``emin - p + bias_in + mant_in`` for a
  subnormal one;
* the dropped bits ``rem = sig mod 2^k`` and the half-spacing ``2^(k-1)`` decide
  the rounding; rounding up adds ``2^k`` to the bit pattern, whose carry moves
  into the exponent field exactly as the value moves into the next binade.

The result is a bit pattern of the same layout as the input, so no second
rounding happens anywhere.  Mode "nearest" has a branch-free twin,
``round_nearest_branchless``, which vectorises: on random data the branches
of the general kernel (normal result or not, overflow or not) mispredict
often.  Its one float operation, for results below the smallest normal, is a
hardware addition whose rounding is exactly the one wanted (see there).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange
from numba.extending import overload

NEAREST, NEAREST_AWAY, TOWARD_ZERO, UP, DOWN, STOCHASTIC = range(6)
MODE_CODES = {"nearest": NEAREST, "nearest_away": NEAREST_AWAY, "toward_zero": TOWARD_ZERO,
              "up": UP, "down": DOWN, "stochastic": STOCHASTIC}


@njit(cache=True, inline="always")
def _overflows_to_infinity(mode, negative):
    return (mode == NEAREST or mode == NEAREST_AWAY or mode == STOCHASTIC
            or (mode == UP and not negative) or (mode == DOWN and negative))


@njit(cache=True, inline="always")
def round_magnitude_bits(mag, negative, mant_in, bias_in, inf_in, p, emin, quantum, max_bits,
                         normal_bits, fn_nan, saturate, subnormals, unsigned, mode, r63):
    """Round one magnitude given as bits of the input layout; returns (bits, is_nan).

    ``mag`` is |x|'s bit pattern (sign cleared) in a layout with ``mant_in``
    mantissa bits, bias ``bias_in`` and infinity pattern ``inf_in``.  The
    target has precision ``p`` and minimum exponent ``emin``; ``quantum``,
    ``max_bits`` and ``normal_bits`` are the patterns of 2^(emin-p+1), of the
    target's max and of its smallest normal, in the input layout.  ``r63`` is a
    uniform random integer in [0, 2^63) used by stochastic rounding only.
    Without subnormals a result below the smallest normal flushes to zero, or
    becomes the smallest normal in an ``unsigned`` format, which has no zero.
    """
    if mag >= inf_in:
        if mag > inf_in:
            return mag, True  # NaN stays NaN
        if saturate:
            return max_bits, False
        return mag, fn_nan  # +-inf, or NaN in a format without infinities
    if mag == 0:
        return mag, False

    exponent_field = mag >> mant_in
    if exponent_field == 0:
        sig = mag
        k = emin - p + bias_in + mant_in
    else:
        sig = (mag & ((1 << mant_in) - 1)) | (1 << mant_in)
        k = mant_in + 1 - p + max(0, emin - (exponent_field - bias_in))

    result = mag
    if k > 62:
        # |x| < 2^-9 of the spacing: only directed and stochastic modes move up.
        if mode == STOCHASTIC:
            # r63 / 2^63 < sig / 2^k  <=>  r63 < ceil(sig / 2^(k-63)), without overflow
            shift = k - 63
            up = r63 < (((sig - 1) >> shift) + 1 if shift < 63 else 1)
        else:
            up = (mode == UP and not negative) or (mode == DOWN and negative)
        result = quantum if up else 0
    elif k > 0:
        rem = sig & ((1 << k) - 1)
        if rem != 0:
            half = 1 << (k - 1)
            if mode == NEAREST:
                up = rem > half or (rem == half and ((sig >> k) & 1) == 1)
            elif mode == NEAREST_AWAY:
                up = rem >= half
            elif mode == TOWARD_ZERO:
                up = False
            elif mode == UP:
                up = not negative
            elif mode == DOWN:
                up = negative
            else:
                up = (r63 >> (63 - k)) < rem
            if k <= mant_in:
                result = mag - rem + ((1 << k) if up else 0)
            else:  # |x| is below the spacing: the neighbours are 0 and one quantum
                result = quantum if up else 0

    if result > max_bits:
        if saturate or not _overflows_to_infinity(mode, negative):
            return max_bits, False
        return inf_in, fn_nan
    if not subnormals and result < normal_bits:
        return (normal_bits if unsigned else 0), False
    return result, False


@njit(cache=True, inline="always")
def normal_increment(sig, negative, k, mode, r63):
    """What to add to a pattern before clearing its k low bits, for a result in the normal range.

    ``sig`` supplies the significand bit k whose parity breaks ties in mode nearest.
    """
    low_mask = (1 << k) - 1
    if mode == NEAREST:
        return (low_mask >> 1) + ((sig >> k) & 1)  # 2^(k-1) - 1, plus one on an odd significand
    if mode == NEAREST_AWAY:
        return (low_mask >> 1) + 1
    if mode == STOCHASTIC:
        # 2^k - 1 - u with u = the top k bits of r63: carries into bit k exactly when u < rem,
        # the rule of the exact reference (uniform r63 / 2^63 < f), so probability rem / 2^k.
        return low_mask - (r63 >> (63 - k))
    if (mode == UP and not negative) or (mode == DOWN and negative):
        return low_mask
    return 0


@njit(cache=True, inline="always")
def round_pattern(b, total_bits, mant_in, bias_in, p, emin, quantum, max_bits, normal_bits, nan_bits,
                  fn_nan, saturate, subnormals, unsigned, mode, r63):
    """Round one value given by its bit pattern ``b`` (int64) in a float32 or float64 layout.

    Inputs whose result is a normal value of the target (``normal_bits <= |x| <=
    max_bits``) take the branch-free path: add the mode's increment to the
    pattern and clear the ``k = mant_in + 1 - p`` bits below the target's last
    one.  Everything else (subnormal results, overflow, zeros, inf, NaN) goes
    through ``round_magnitude_bits``.  An ``unsigned`` format (E8M0) has no zero
    and no negative numbers: they give NaN.
    """
    magnitude_mask = (1 << (total_bits - 1)) - 1
    mag = b & magnitude_mask
    negative = ((b >> (total_bits - 1)) & 1) == 1
    if unsigned and (negative or mag == 0):
        return nan_bits
    k_normal = mant_in + 1 - p
    # max(..., 1 << mant_in): E8M0's smallest normal, 2^-127, is a float32 subnormal, without the implicit bit
    if k_normal > 0 and max(normal_bits, 1 << mant_in) <= mag <= max_bits:
        # The tie-breaking parity is bit k of the significand: OR in the implicit bit, which
        # matters when k = mant_in (a target with p = 1).
        increment = normal_increment(mag | (1 << mant_in), negative, k_normal, mode, r63)
        mag = (mag + increment) & ~((1 << k_normal) - 1)
    else:
        inf_in = ((1 << (total_bits - 1 - mant_in)) - 1) << mant_in
        mag, is_nan = round_magnitude_bits(mag, negative, mant_in, bias_in, inf_in, p, emin, quantum,
                                           max_bits, normal_bits, fn_nan, saturate, subnormals, unsigned, mode,
                                           r63)
        if is_nan:
            return nan_bits
    return mag | (b & ~magnitude_mask)


def float_bits(x):
    """The bit pattern of a float32 or float64 scalar as an int64 (non-negative for float32); numba only."""
    raise NotImplementedError("float_bits is used inside numba kernels")


@overload(float_bits, inline="always")
def _float_bits(x):
    if x == numba.types.float32:
        return lambda x: np.int64(np.float32(x).view(np.uint32))
    return lambda x: np.float64(x).view(np.int64)


def is_float32(x):
    """Whether ``x`` is a float32 scalar, as a constant of the compiled code; numba only."""
    raise NotImplementedError("is_float32 is used inside numba kernels")


@overload(is_float32, inline="always")
def _is_float32(x):
    answer = x == numba.types.float32
    return lambda x: answer


@njit(cache=True, inline="always")
def round_nearest_branchless(x, nearest):
    """The bit pattern of ``x`` (float32 or float64) rounded to nearest, ties to even: ``round_pattern``'s
    result in mode "nearest" for a target with fewer significand bits than the input, with selects only,
    so that loops over it vectorise.

    ``nearest`` is ``KernelParams.nearest_args``: (total_bits, mant_in, k, shifter, normal_bits,
    max_bits, inf_bits, overflow_bits, nan_bits, flush, unsigned), patterns in the input layout.
    Normal results: as in ``round_pattern``, add ``normal_increment`` (2^(k-1) - 1 plus the last
    kept bit, implicit bit included) to the pattern and clear its k low bits; the carry moves
    into the exponent as the value moves into the next binade.  Results below 2^emin (``normal_bits``):
    (|x| + shifter) - shifter with shifter = 1.5 * 2^(emin - p + 1 + mant_in), whose ulp in
    the input type is the format's subnormal spacing, so the hardware addition rounds |x| to
    that spacing, ties to even, and the subtraction is exact; ``flush`` clears such results
    (no subnormals), or makes them the smallest normal in an ``unsigned`` format.  Above
    ``max_bits`` the result is ``overflow_bits`` (inf; NaN in a format without infinities;
    max with saturation); NaN in, or NaN out, gives ``nan_bits``, and so do zeros and
    negative numbers in an ``unsigned`` format.

    A float32 ``x`` takes ``_round_nearest_float32``, the same steps in 32-bit integers.
    """
    # a branch on a constant, which LLVM removes; an @overload choosing the implementation by type, inlined
    # twice in one kernel (matmul_blocked_nearest), makes numba warn (NumbaIRAssumptionWarning)
    if is_float32(x):
        return np.int64(_round_nearest_float32(x, nearest))
    return _round_nearest_int64(x, nearest)


@njit(cache=True, inline="always")
def _round_nearest_int64(x, nearest):
    """``round_nearest_branchless`` in int64 arithmetic, for float32 or float64 ``x``."""
    total_bits, mant_in, k, shifter, normal_bits, max_bits, inf_bits, overflow_bits, nan_bits, flush, unsigned = \
        nearest
    bits = float_bits(x)
    magnitude_mask = (np.int64(1) << (total_bits - 1)) - 1
    mag = bits & magnitude_mask
    low_mask = (np.int64(1) << k) - 1
    normal = (mag + normal_increment(mag | (np.int64(1) << mant_in), False, k, NEAREST, 0)) & ~low_mask
    tiny = float_bits((abs(x) + shifter) - shifter)
    if flush and tiny < normal_bits:
        tiny = normal_bits if unsigned else 0
    result = normal if mag >= max(normal_bits, np.int64(1) << mant_in) else tiny  # as in round_pattern
    result = overflow_bits if result > max_bits else result
    # bits <= 0: +0 or (float64) a negative number; bits > magnitude_mask: (float32) a negative number
    not_unsigned = unsigned and (bits <= 0 or bits > magnitude_mask)
    return nan_bits if (mag > inf_bits or result > inf_bits or not_unsigned) else result | (bits & ~magnitude_mask)


@njit(cache=True, inline="always")
def _round_nearest_float32(x, nearest):
    """``round_nearest_branchless`` of a float32 in int32 arithmetic (the bit pattern as a uint32).

    Twice the SIMD lanes of the int64 steps (AVX2 has 8 int32 lanes, and no one-instruction
    64-bit max or unsigned compare): ``round_nearest_array`` on 2^24 float32 values, one thread,
    runs 1.6-1.9x faster (measured; ``fpsim.round`` with its allocation 1.4-1.6x).  The
    patterns of a float32 magnitude are below 2^31, so signed compares order them; the one sum
    that can pass 2^31, ``mag + increment`` of a NaN, wraps and is then replaced by ``nan_bits``.
    Numba widens int32 arithmetic to int64; each step is cut back with ``np.int32(...)`` so that
    LLVM narrows the vector code, and the shift count is masked to 5 bits (k <= 23) so that the
    shift narrows too.
    """
    _, _, k, shifter, normal_bits, max_bits, inf_bits, overflow_bits, nan_bits, flush, unsigned = nearest
    i32 = np.int32
    k = i32(k & 31)
    bits = i32(np.float32(x).view(np.int32))
    mag = i32(bits & i32(0x7FFFFFFF))
    low_mask = i32((i32(1) << k) - i32(1))
    # normal_increment in mode nearest: 2^(k-1) - 1, plus bit k of the significand (implicit bit ORed in)
    increment = i32(i32(low_mask >> i32(1)) + i32(i32(i32(mag | i32(0x00800000)) >> k) & i32(1)))
    normal = i32(i32(mag + increment) & i32(~low_mask))
    tiny = i32(np.float32(np.float32(abs(x) + shifter) - shifter).view(np.int32))
    # a select, not a branch, on flush: LLVM did not take that branch out of quantize_pow2_blocks' loop
    tiny = i32(normal_bits if unsigned else 0) if tiny < i32(normal_bits if flush else 0) else tiny
    result = normal if mag >= i32(max(normal_bits, 1 << 23)) else tiny
    result = i32(overflow_bits) if result > i32(max_bits) else result
    nan = max(mag, result) > i32(inf_bits)
    if unsigned:
        nan = nan | (bits <= i32(0))  # +0 or a negative number
    return np.uint32(i32(nan_bits) if nan else i32(result | i32(bits & i32(-0x80000000))))


@njit(cache=True, inline="always")
def keeps_float32_range(nearest) -> bool:
    """Whether the target of ``nearest`` (float32 input) has float32's exponent range with its subnormals,
    its infinities and no saturation (BF16, TF32, Hopper's e8m13: an 8-bit exponent, fewer fraction bits)."""
    _, mant_in, k, _, normal_bits, max_bits, inf_bits, overflow_bits, _, flush, unsigned = nearest
    return (mant_in == 23 and normal_bits == 1 << 23 and max_bits + (1 << k) == inf_bits
            and overflow_bits == inf_bits and not flush and not unsigned)


@njit(cache=True, inline="always")
def _round_nearest_float32_range(x, nearest):
    """``_round_nearest_float32`` for a target that ``keeps_float32_range``: the normal step alone.

    With the same emin, a float32 subnormal has the target's subnormal spacing at its k-th bit, so clearing
    k low bits of any finite pattern (after adding 2^(k-1) - 1 plus the last kept bit) rounds it to nearest,
    ties to even, subnormals included; with the same emax, the carry out of the largest finite pattern is
    the infinity's, as IEEE overflow asks (the tie above max has an odd last kept bit, so it rounds up).
    NaN in gives ``nan_bits``, as in the general steps.  No float operation and one select: 1.8-2.9x faster
    than ``_round_nearest_float32`` on 262,144 random normal values (95-160 us against 280 us, one thread)."""
    k, nan_bits = nearest[2], nearest[8]
    i32 = np.int32
    k = i32(k & 31)
    bits = i32(np.float32(x).view(np.int32))
    mag = i32(bits & i32(0x7FFFFFFF))
    low_mask = i32((i32(1) << k) - i32(1))
    rounded = i32(i32(mag + i32(i32(low_mask >> i32(1)) + i32(i32(mag >> k) & i32(1)))) & i32(~low_mask))
    return np.uint32(i32(nan_bits) if mag > i32(0x7F800000) else i32(rounded | i32(bits & i32(-0x80000000))))


NEAREST_BLOCK = 4096
"""Values per block of ``round_nearest_array``: each block is rounded into a scratch array, then copied out."""


def _round_nearest_elements(values, bits_out, nearest):
    """``round_nearest_branchless`` of every element of ``values`` (float32 or float64) into ``bits_out``.

    ``bits_out`` may be ``values``' own memory (rounding in place).  Each block goes through a scratch array
    so that the rounding loop never writes where it reads: LLVM vectorises a loop behind a run-time overlap
    check, and an in-place loop fails it and runs scalar, its selects turned into branches that random data
    mispredicts (measured: 262,144 float32 values to BF16 in place, 10 ms scalar, 0.15 ms vectorised).
    Float32 values to a target that ``keeps_float32_range`` take ``_round_nearest_float32_range``, the same
    bits in fewer steps."""
    n = values.shape[0]
    same_range = is_float32(values[0]) and keeps_float32_range(nearest) if n else False
    for block in prange((n + NEAREST_BLOCK - 1) // NEAREST_BLOCK):
        start = block * NEAREST_BLOCK
        stop = min(start + NEAREST_BLOCK, n)
        scratch = np.empty_like(bits_out[start:stop])
        if same_range:
            for i in range(stop - start):
                scratch[i] = _round_nearest_float32_range(values[start + i], nearest)
        else:
            for i in range(stop - start):
                scratch[i] = round_nearest_branchless(values[start + i], nearest)
        bits_out[start:stop] = scratch


round_nearest_array = njit(cache=True, parallel=True)(_round_nearest_elements)
round_nearest_array_serial = njit(cache=True)(_round_nearest_elements)
"""``round_nearest_array`` on the calling thread only (no parallel region: for small arrays, and where the
caller computes on one thread)."""


@njit(cache=True, inline="always")
def splitmix63(key, index):
    """A uniform random integer in [0, 2^63) for position ``index`` of the stream ``key``.

    SplitMix64 (Steele, Lea and Flood 2014) of ``key + (index + 1) * golden gamma``:
    counter-based, so every element gets its own number whatever the thread
    schedule, and the same key gives the same numbers.
    """
    z = np.uint64(key) + np.uint64(index + 1) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return np.int64((z ^ (z >> np.uint64(31))) >> np.uint64(1))


@njit(cache=True, parallel=True)
def round_bits_array(bits_in, bits_out, random_key, total_bits, mant_in, bias_in, p, emin, quantum,
                     max_bits, normal_bits, nan_bits, fn_nan, saturate, subnormals, unsigned, mode):
    """Round every element of ``bits_in`` (an int view of float32 or float64 data) into ``bits_out``.

    Stochastic rounding draws element i's number as ``splitmix63(random_key, i)``.
    """
    for i in prange(bits_in.shape[0]):
        bits_out[i] = round_pattern(np.int64(bits_in[i]), total_bits, mant_in, bias_in, p, emin, quantum,
                                    max_bits, normal_bits, nan_bits, fn_nan, saturate, subnormals, unsigned,
                                    mode, splitmix63(random_key, i) if mode == STOCHASTIC else 0)


@njit(cache=True, inline="always")
def round_float64(x, params, mode, r63):
    """Round a float64 scalar inside other kernels; ``params`` is ``rounding.float64_params(fmt)``."""
    p, emin, quantum, max_bits, normal_bits, nan_bits, fn_nan, saturate, subnormals, unsigned = params
    b = round_pattern(np.float64(x).view(np.int64), 64, 52, 1023, p, emin, quantum, max_bits, normal_bits,
                      nan_bits, fn_nan, saturate, subnormals, unsigned, mode, r63)
    return np.int64(b).view(np.float64)
