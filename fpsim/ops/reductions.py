"""``fpsim.matmul``, ``fpsim.dot`` and ``fpsim.sum``: products and sums with a chosen accumulation format and order.

Semantics, for one output value c = sum_k a_k * b_k:

* ``inputs`` (if given) rounds A and B to that format first (in ``mode``).
* ``order="sequential"``: acc = round(a_0 * b_0), then for k = 1..K-1
  acc = round(acc + a_k * b_k), the product added exactly and the sum rounded
  once to ``accumulate`` (a fused multiply-add, as GPU tensor cores and FMA
  loops accumulate).
* ``order="pairwise"``: the K products are rounded to ``accumulate``, then summed
  level by level (v0+v1, v2+v3, ...; an odd last one moves up unchanged), each
  sum rounded.
* ``order="blocked:N"``: sequential within each run of N consecutive k, then
  sequential over the block results: total = block_0, total = round(total + block_b)
  (how tiled GPU kernels accumulate).
* ``output`` (if given) rounds the result once more.
* ``C`` (if given, broadcast to the result's shape) is added to the ordered sum
  with one more rounding to ``accumulate``, as a BLAS ``beta * C`` epilogue.
* ``accumulate`` may name a GPU model instead of a format: ``"V100"``, ``"A100"``,
  ``"A2"``, ``"Ada"``, ``"L40S"``, ``"H100"``, ``"H200"``, ``"B200"``
  (case-insensitive), optionally ``"GPU:instruction"`` (``"H100:mma.sync"``,
  ``"B200:mma.sync"``): the product is then computed as that GPU's tensor core
  computes it (``fpsim.ops.tensor_cores``): the input format picks the path
  (FP16, BF16, TF32 (FP32 operands are truncated to it, as the hardware does),
  E4M3 / E5M2), ``output`` FP16 picks the FP16-output path (anything else: the
  FP32 path, then ``output`` rounds once more in ``mode``), and ``C``, rounded
  to the path's output format, enters the first fused step as the hardware's
  accumulator input.  ``order="sequential"`` is the hardware's chain of fused
  steps over all K; ``order="blocked:N"`` runs the chain (FP32 path) from 0 over
  each run of N products and adds the run results to C in FP32 rounded to
  nearest: the CUDA-core promotion of DeepSeek-V3 and of split accumulation.
  ``mode`` rounds the inputs and ``output``; the accumulation is the hardware's.
* ``inputs`` may name a block-scaled preset with ``accumulate="B200"``: ``"mxfp8"`` (E4M3; also
  ``"mxfp8_e4m3"``), ``"mxfp8_e5m2"``, ``"mxfp4"``, ``"nvfp4"``: A and B are quantized along K by
  ``fpsim.quantize`` and multiplied by B200's block-scaled ``tcgen05.mma`` (``fpsim.ops.block_scaled``);
  the result is FP32.  Any other GPU or format with these inputs is a one-line error naming B200.
* Operands may carry batch dimensions, broadcast as numpy does:
  ``(..., M, K) @ (..., K, N)`` gives ``(..., M, N)``.

Every rounding is from the exact value (see ``fpsim.ops._reduction_kernels``), in
``mode``; stochastic rounding draws one random number per rounding from ``rng``
(a Generator or int seed; one key per call, then ``fpsim.numerics.kernels.splitmix63``
numbers indexed by output and step), so the same seed gives the same bits.

Kernels (``fpsim.ops._reduction_kernels``), the first that applies:

* accumulate FP32 or FP64, mode "nearest", products exact in that type (e.g.
  FP16/FP8 inputs for FP32): plain hardware ``acc += a*b``, which IEEE 754
  makes the exact sum rounded once;
* products exact in float64 (input precision <= 26 bits, exponent range small
  enough) and an accumulator of <= 51 bits with <= 10 exponent bits: TwoSum and
  round-to-odd in float64, then one rounding (vectorised for "nearest");
* anything else (for instance float64 operands that are not float32 values, or
  an FP64 accumulator in a directed mode) a slow exact ``Fraction`` evaluation
  of the same order and the same random numbers.

Products with fewer than ``PARALLEL_MIN_WORK`` multiply-adds run on one thread.
"""

from __future__ import annotations

import math
import os
import re
from fractions import Fraction

import numpy as np

from ..numerics.checks import is_integer
from ..numerics.kernels import MODE_CODES
from ..numerics.threads import threads_for
from . import _reduction_kernels as kernels
from . import _tensor_core_kernels as tc_kernels
from . import block_scaled, tensor_cores
from ..numerics.exact import check_mode, round_exact, round_sum_exact
from ..numerics.formats import FP16, FP32, FP64, HARDWARE_DTYPES, TF32, Format, get_format, widen_ml_dtypes
from ..numerics.rounding import as_generator, float64_params, kernel_params, random_key, stochastic_uniform
from ..numerics.rounding import round as round_to

PARALLEL_MIN_WORK = 1 << 24
"""Products with fewer multiply-adds (M*K*N) than this run on one thread.

On small products numba's thread pool costs more than it gains, and right
after a numpy matmul OpenBLAS's idle threads spin and the two pools contend;
on a 2-core machine the pool pays for that risk from about this size on.
``benchmarks/bench_threads.py`` measures both sides (the training step's 2^20
product and a 2^24 one, alone and after a numpy matmul).
"""


MAX_ORDER_DIGITS = 18
"""A block size of more digits than this exceeds every K that fits in memory: it is taken as one block."""


def parse_order(order: str, K: int) -> tuple[str, int]:
    """("sequential", K), ("blocked", N) or ("pairwise", 0) for "sequential", "blocked:N", "pairwise".

    A block size beyond K is K (one block: the same sums), so any N >= 1 is accepted.
    """
    if order == "sequential":
        return "sequential", max(K, 1)
    if order == "pairwise":
        return "pairwise", 0
    match = re.fullmatch(r"blocked:([0-9]+)", order) if isinstance(order, str) else None
    if match:
        digits = match[1].lstrip("0")
        if digits:
            block = int(digits) if len(digits) <= MAX_ORDER_DIGITS else K
            return "blocked", max(min(block, K), 1)
    raise ValueError(f"unknown order {order!r}: use 'sequential', 'pairwise' or 'blocked:N' with N >= 1")


def _array_format(array: np.ndarray) -> Format:
    """The format of an array's dtype (FP64 for anything that is not a known float dtype)."""
    for name, dtype in HARDWARE_DTYPES.items():
        if array.dtype == dtype:
            return get_format(name)
    return FP64


def _prepare_input(x, inputs, mode, rng, name):
    """Array of the values that enter the products (float64), and their format."""
    array = np.asarray(x)
    fmt = _array_format(array)
    array = widen_ml_dtypes(array)
    if array.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers; got dtype {array.dtype}")
    if inputs is not None:
        return np.asarray(round_to(array, inputs, mode, rng=rng), dtype=np.float64), inputs
    wide = array.astype(np.float64)
    may_be_inexact = array.dtype.kind in "iu" or array.dtype.itemsize > 8  # 64-bit integers, long double
    if may_be_inexact and not np.array_equal(wide.astype(array.dtype), array, equal_nan=array.dtype.kind == "f"):
        raise ValueError(f"{name} holds values that float64 cannot hold exactly ({array.dtype}): pass "
                         "inputs=FORMAT to round them once to a format first")
    return wide, fmt


def _products_exact_in(fmt_a: Format, fmt_b: Format, layout: Format) -> bool:
    """Whether every product of a value of ``fmt_a`` and one of ``fmt_b`` is a value of ``layout`` (or inf/NaN)."""
    quantum_exp = (fmt_a.emin - fmt_a.mantissa_bits) + (fmt_b.emin - fmt_b.mantissa_bits)
    return (fmt_a.precision + fmt_b.precision <= layout.precision
            and quantum_exp >= layout.emin - layout.mantissa_bits
            and (fmt_a.emax + 1) + (fmt_b.emax + 1) <= layout.emax)


def _exponent_span(values: np.ndarray, fmt: Format) -> tuple[int, int]:
    """(e_low, e_high): every non-zero finite value of ``fmt`` here is a multiple of 2^e_low and below 2^e_high."""
    magnitudes = np.abs(values[np.isfinite(values) & (values != 0)])
    if magnitudes.size == 0:
        return 0, 0
    exponents = np.frexp(magnitudes)[1]  # |v| < 2^exponent, top bit at exponent - 1
    return int(max(exponents.min() - 1, fmt.emin)) - fmt.mantissa_bits, int(exponents.max())


def _value_products_exact_in(a: np.ndarray, b: np.ndarray, fmt_a: Format, fmt_b: Format, layout: Format) -> bool:
    """Whether every product of these particular values is a value of ``layout``.

    ``_products_exact_in`` asks it of whole formats; BF16 x BF16 fails there (its
    products reach 2^-266, below float32) although activations and weights seldom
    come near the ends of the range.  Checked on the data: enough precision, the
    products' lowest bits at or above the layout's smallest subnormal, and their
    magnitudes below 2^(emax + 1).
    """
    if fmt_a.precision + fmt_b.precision > layout.precision:
        return False
    low_a, high_a = _exponent_span(a, fmt_a)
    low_b, high_b = _exponent_span(b, fmt_b)
    return low_a + low_b >= layout.emin - layout.mantissa_bits and high_a + high_b <= layout.emax + 1


def _effective_input_format(values: np.ndarray, fmt: Format) -> Format:
    """FP32 if a float64 operand (given without ``inputs``) holds only float32 values, else ``fmt``."""
    if fmt.precision > 24 and np.array_equal(values.astype(np.float32).astype(np.float64), values,
                                             equal_nan=True):
        return FP32
    return fmt


def _fits_float64_kernel(fmt_a: Format, fmt_b: Format, accumulate: Format) -> bool:
    """Exact products in float64, and an accumulator that round-to-odd serves and float64 cannot overflow in."""
    return (_products_exact_in(fmt_a, fmt_b, FP64) and accumulate.precision <= 51
            and accumulate.exponent_bits <= 10)


def _native_layout(fmt: Format):
    """FP32 or FP64 when ``fmt`` is exactly that IEEE format (so hardware arithmetic rounds to it), else None."""
    for layout in (FP32, FP64):
        if (fmt.exponent_bits, fmt.mantissa_bits, fmt.subnormals, fmt.specials) == \
                (layout.exponent_bits, layout.mantissa_bits, True, "ieee"):
            return layout
    return None


def matmul(A, B, *, C=None, inputs=None, accumulate=FP32, output=None, mode: str = "nearest",
           order: str = "sequential", rng=None):
    """C + A @ B with every partial sum rounded to ``accumulate`` in the stated ``order``.

    A is (..., M, K), B is (..., K, N) (real arrays; batch dimensions broadcast
    as numpy's); ``C`` (optional) broadcasts to (..., M, N).  ``accumulate`` is
    a format or a GPU model name (see the module docstring for the exact
    semantics of ``inputs``, ``accumulate``, ``output``, ``C``, ``order`` and
    ``mode``).  Returns an (..., M, N) array: float32 when every format
    involved (``inputs``, or the arrays' own formats when it is None;
    ``accumulate``; ``output``) fits float32, float64 otherwise.  IEEE special
    values propagate: 0 * inf and inf - inf give NaN.
    """
    mode = check_mode(mode)
    if isinstance(inputs, str) and inputs.strip().lower() in BLOCK_SCALED_NAMES:
        return _block_scaled(A, B, C, inputs.strip().lower(), accumulate, output, mode, order, rng)
    gpu = tensor_cores.parse_gpu(accumulate)
    if gpu is None:
        accumulate = _accumulate_format(accumulate)
    inputs = None if inputs is None else get_format(inputs)
    output = None if output is None else get_format(output)
    shape_a, shape_b = np.shape(A), np.shape(B)
    if len(shape_a) < 2 or len(shape_b) < 2:
        raise ValueError(f"matmul needs arrays of at least 2 dimensions (..., M, K) and (..., K, N); "
                         f"got shapes {shape_a} and {shape_b}")
    if shape_a[-1] != shape_b[-2]:
        raise ValueError(f"matmul: inner dimensions differ: {shape_a} @ {shape_b}")
    out_shape = _broadcast(shape_a[:-2], shape_b[:-2], "the batch dimensions of A and B") + \
        (shape_a[-2], shape_b[-1])
    if C is not None and _broadcast(np.shape(C), out_shape, "C and the product") != out_shape:
        raise ValueError(f"C of shape {np.shape(C)} does not broadcast to the product's shape {out_shape}")
    kind, block = parse_order(order, shape_a[-1])
    if gpu is not None and kind == "pairwise":
        raise ValueError(f"a GPU model accumulates in its own order: use order='sequential' or 'blocked:N' "
                         f"with accumulate={accumulate!r}")
    _check_memory(shape_a, shape_b, out_shape, C is not None)
    rng = as_generator(rng)  # one stream for the whole call: the roundings draw distinct numbers
    if mode == "stochastic" and rng is None:
        raise ValueError("stochastic rounding needs rng: a numpy Generator or an integer seed")
    with threads_for(math.prod(out_shape) * shape_a[-1], PARALLEL_MIN_WORK):
        a, fmt_a = _prepare_input(A, inputs, _input_mode(gpu, inputs, mode), rng, "A")
        b, fmt_b = _prepare_input(B, inputs, _input_mode(gpu, inputs, mode), rng, "B")
        c = None if C is None else np.broadcast_to(_real_array(C, "C"), out_shape)
        if gpu is not None:
            return _tensor_core_product(a, b, c, fmt_a, fmt_b, gpu, output, mode, kind, block, rng)
        formats = [fmt_a, fmt_b, accumulate] + ([output] if output is not None else [])
        result_dtype = np.float32 if all(f.fits_float32 for f in formats) else np.float64
        products = _batched(a, b, lambda x, y: _matmul(x, y, fmt_a, fmt_b, accumulate, mode, kind, block, rng))
        if c is not None:
            products = _add_rounded(products, c, accumulate, mode, rng)
        if output is not None:
            products = round_to(products, output, mode, rng=rng)
        return np.asarray(products).astype(result_dtype)


BLOCK_SCALED_NAMES = ("mxfp8", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp4", "nvfp4")
"""``inputs=`` names of the block-scaled tensor-core paths (``fpsim.ops.block_scaled``)."""


def _block_scaled(A, B, C, inputs, accumulate, output, mode, order, rng):
    """C + A @ B with A, B block-quantized along K by the preset ``inputs``, on B200's block-scaled MMA."""
    gpu = tensor_cores.parse_gpu(accumulate) if isinstance(accumulate, str) else None
    if gpu != ("B200", "tcgen05"):
        raise ValueError(f"inputs={inputs!r} runs on B200's block-scaled tcgen05.mma only: use accumulate='B200'")
    if order != "sequential" or (output is not None and get_format(output) != FP32):
        raise ValueError(f"inputs={inputs!r} on B200 accumulates in its own order to FP32: leave order and "
                         f"output unset (or output='fp32')")
    return block_scaled.matmul_block_scaled(A, B, inputs, C=C, mode=mode, rng=as_generator(rng))


def _accumulate_format(accumulate) -> Format:
    """The format ``accumulate`` names; a one-line error naming formats and GPU models otherwise."""
    try:
        return get_format(accumulate)
    except ValueError:
        raise ValueError(f"unknown accumulate {accumulate!r}: use a format (fp32, fp16, bf16, an 'eXmY' string, ...) "
                         f"or a GPU model ({', '.join(tensor_cores.GPUS)}, optionally 'GPU:instruction')") from None


def _broadcast(shape_1: tuple, shape_2: tuple, what: str) -> tuple:
    """numpy's broadcast of two shapes; a one-line ValueError naming ``what`` when they do not broadcast."""
    try:
        return tuple(np.broadcast_shapes(shape_1, shape_2))
    except ValueError:
        raise ValueError(f"matmul: {what} do not broadcast: {shape_1} and {shape_2}") from None


def _check_memory(shape_a: tuple, shape_b: tuple, out_shape: tuple, with_c: bool) -> None:
    """A one-line ValueError before anything is allocated if the product needs more memory than the machine has.

    Counted: float64 copies of A and B, the float64 result and its output copy, and C broadcast to the result.
    """
    needed = 8 * (math.prod(shape_a) + math.prod(shape_b) + (3 if with_c else 2) * math.prod(out_shape))
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > available:
        raise ValueError(f"matmul of {shape_a} @ {shape_b} would need {needed / 2**30:.1f} GiB of memory; this "
                         f"machine has {available / 2**30:.1f} GiB: multiply smaller blocks")


def _input_mode(gpu, inputs, mode: str) -> str:
    """The rounding of the operands to ``inputs``: the hardware's truncation for TF32 on a GPU model, else ``mode``."""
    return tensor_cores.TF32_INPUT_ROUNDING if gpu is not None and inputs == TF32 else mode


def _real_array(x, name: str) -> np.ndarray:
    """``x`` as a float64 array of real numbers (ml_dtypes' formats widened exactly)."""
    array = widen_ml_dtypes(np.asarray(x))
    if array.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers; got dtype {array.dtype}")
    return array.astype(np.float64)


def _batched(a: np.ndarray, b: np.ndarray, product, c: np.ndarray | None = None) -> np.ndarray:
    """``product`` of 2-D blocks over the broadcast batch dimensions of a (..., M, K) and b (..., K, N).

    ``product(a2, b2)`` returns the (M, N) float64 result; with ``c`` (already
    broadcast to the result's shape) it is ``product(a2, b2, c2)``.  With a 2-D
    ``b`` the batch is folded into M: one call.
    """
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    extra = () if c is None else (c,)
    if b.ndim == 2:
        folded = [np.ascontiguousarray(x.reshape(math.prod(x.shape[:-1]), x.shape[-1])) for x in (a, *extra)]
        return product(folded[0], b, *folded[1:]).reshape(a.shape[:-1] + (N,))
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a = np.broadcast_to(a, batch + (M, K))
    b = np.broadcast_to(b, batch + (K, N))
    out = np.empty(batch + (M, N))
    for index in np.ndindex(*batch):
        out[index] = product(np.ascontiguousarray(a[index]), np.ascontiguousarray(b[index]),
                             *(np.ascontiguousarray(x[index]) for x in extra))
    return out


def _add_rounded(values: np.ndarray, c: np.ndarray, fmt: Format, mode: str, rng) -> np.ndarray:
    """round(values + c) once from the exact sum, elementwise, to ``fmt`` in ``mode``."""
    flat_values, flat_c = values.ravel(), np.ascontiguousarray(c, dtype=np.float64).ravel()
    if fmt.precision <= 51 and fmt.exponent_bits <= 10:
        key = random_key(rng) if mode == "stochastic" else 0
        summed = kernels.add_arrays(flat_values, flat_c, float64_params(fmt), MODE_CODES[mode], key)
    elif _native_layout(fmt) == FP64 and mode == "nearest":
        summed = flat_values + flat_c  # IEEE float64 addition is the exact sum rounded to nearest
    else:
        key = random_key(rng) if mode == "stochastic" else 0
        summed = np.array([round_sum_exact(x, y, fmt, mode, uniform=stochastic_uniform(key, i)
                                           if mode == "stochastic" else None)
                           for i, (x, y) in enumerate(zip(flat_values.tolist(), flat_c.tolist()))])
    return summed.reshape(values.shape)


def _matmul(a, b, fmt_a, fmt_b, accumulate, mode, kind, block, rng):
    """The (M, N) float64 ordered sums of two 2-D operands (values of ``fmt_a`` / ``fmt_b``)."""
    M, K = a.shape
    N = b.shape[1]
    if K == 0:
        return np.zeros((M, N))
    return _accumulate(a, b, fmt_a, fmt_b, accumulate, mode, "pairwise" if kind == "pairwise" else "blocked",
                       block, rng)


def _tensor_core_product(a, b, c, fmt_a, fmt_b, gpu, output, mode, kind, block, rng):
    """C + A @ B as the GPU model ``gpu`` = (name, instruction) computes it, then ``output`` if not its own."""
    path = tensor_cores.input_path(fmt_a, fmt_b)
    name = f"{gpu[0]}:{gpu[1]}"
    if path is None:
        raise ValueError(f"accumulate={name!r} multiplies fp16, bf16, tf32, e4m3 or e5m2 operands; got "
                         f"{fmt_a.name} and {fmt_b.name}: pass inputs=FORMAT (float32 operands: inputs='tf32')")
    model = tensor_cores.accumulator_model(name, path, FP16 if output == FP16 and kind == "sequential" else FP32)
    out_shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
    c = np.zeros(out_shape) if c is None else np.asarray(round_to(c, model.output, mode, rng=rng), dtype=np.float64)
    step = model.step_format
    run = block if kind == "blocked" else max(a.shape[-1], 1)
    constants = (model.products_per_step, model.fraction_bits, step.emin, model.c_in_alignment,
                 model.rounding == "toward_zero", step.precision, nearest_constants(step),
                 math.ldexp(1.0, step.emax + 1), nearest_constants(model.output), run, kind == "blocked",
                 nearest_constants(FP32),
                 not (np.isfinite(a).all() and np.isfinite(b).all() and np.isfinite(c).all()))
    work = _tensor_core_operand_dtype(fmt_a, fmt_b, model)
    exponent_type, no_term = tc_kernels.exponent_type(fmt_a.emin, fmt_a.emax, fmt_b.emin, fmt_b.emax)

    def product(a2, b2, c2):
        return tc_kernels.tensor_core_matmul(a2.astype(work), b2.astype(work), c2, np.empty(b2.shape, exponent_type),
                                             no_term, fmt_a.emin, fmt_b.emin, *constants)

    result = _batched(a, b, product, np.broadcast_to(c, out_shape))
    if output is not None and output != model.output:
        result = round_to(result, output, mode, rng=rng)
    return np.asarray(result).astype(np.float32)


def _tensor_core_operand_dtype(fmt_a: Format, fmt_b: Format, model) -> type:
    """float32 when the kernel's products and scaled terms are exact in it (FP8, FP16 operands), else float64.

    Exact: every product is a float32 value, and the largest scale 2^(f - E), with E at least
    emin_a + emin_b when a step has a product, is a float32 value (see ``_tensor_core_kernels``).
    """
    exact = _products_exact_in(fmt_a, fmt_b, FP32) and model.fraction_bits - fmt_a.emin - fmt_b.emin <= FP32.emax
    return np.float32 if exact else np.float64


def nearest_constants(fmt: Format) -> tuple:
    """The ``nearest`` tuple of ``fpsim.numerics.kernels.round_nearest_branchless`` for float64 values and ``fmt``
    (p <= 51)."""
    return kernel_params(fmt, np.float64).nearest_args()


def _accumulate(a, b, fmt_a, fmt_b, accumulate, mode, kind, block, rng):
    """The (M, N) float64 array of accumulated values, by the fastest exact kernel that applies."""
    M, K = a.shape
    N = b.shape[1]
    fmt_a, fmt_b = _effective_input_format(a, fmt_a), _effective_input_format(b, fmt_b)
    native = _native_layout(accumulate)
    if kind == "blocked" and mode == "nearest" and native is not None and (
            _products_exact_in(fmt_a, fmt_b, native) or _value_products_exact_in(a, b, fmt_a, fmt_b, native)):
        dtype = np.float32 if native == FP32 else np.float64
        return kernels.matmul_native_nearest(a.astype(dtype), b.astype(dtype), block)
    key = random_key(rng) if mode == "stochastic" else 0
    if _fits_float64_kernel(fmt_a, fmt_b, accumulate):
        params = float64_params(accumulate)
        code = MODE_CODES[mode]
        if kind == "blocked" and mode == "nearest":
            return kernels.matmul_blocked_nearest(np.ascontiguousarray(a), np.ascontiguousarray(b),
                                                  nearest_constants(accumulate), block)
        if kind == "blocked":
            return kernels.matmul_blocked(np.ascontiguousarray(a), np.ascontiguousarray(b), params, code,
                                          block, key)
        return kernels.matmul_pairwise(np.ascontiguousarray(a), np.ascontiguousarray(b.T), params, code, key)
    return _accumulate_exact(a, b, accumulate, mode, kind, block, key)


def _accumulate_exact(a, b, accumulate, mode, kind, block, key):
    """Slow path: the same order and random numbers as the kernels, in exact Fractions."""
    M, K = a.shape
    N = b.shape[1]
    R = K + (K + block - 1) // block - 1 if kind == "blocked" else 2 * K - 1
    out = np.empty((M, N))
    for i in range(M):
        for j in range(N):
            uniforms = (stochastic_uniform(key, (i * N + j) * R + step) for step in range(R))
            products = [_exact_product(a[i, k], b[k, j]) for k in range(K)]
            out[i, j] = _ordered_sum(products, accumulate, mode, kind, block, uniforms)
    return out


def _exact_product(x: float, y: float):
    """x * y as a Fraction, or the IEEE float result (inf, NaN, signed zero) when it is not finite non-zero."""
    if math.isfinite(x) and math.isfinite(y) and x != 0 and y != 0:
        return Fraction(x) * Fraction(y)
    return float(x) * float(y)


def _add_exact(x, y, fmt, mode, uniforms) -> float:
    """round(x + y) once (one random number used in any case)."""
    return round_sum_exact(x, y, fmt, mode, uniform=next(uniforms) if mode == "stochastic" else None)


def _round(x, fmt, mode, uniforms) -> float:
    return round_exact(x, fmt, mode, uniform=next(uniforms) if mode == "stochastic" else None)


def _ordered_sum(terms, fmt, mode, kind, block, uniforms) -> float:
    """The terms (exact products) summed in the stated order, each step rounded once to ``fmt``."""
    if kind == "pairwise":
        values = [_round(t, fmt, mode, uniforms) for t in terms]
        while len(values) > 1:
            merged = [_add_exact(values[t], values[t + 1], fmt, mode, uniforms) for t in range(0, len(values) - 1, 2)]
            values = merged + values[len(values) - len(values) % 2:]
        return values[0]
    total = None
    for start in range(0, len(terms), block):
        acc = _round(terms[start], fmt, mode, uniforms)
        for term in terms[start + 1:start + block]:
            acc = _add_exact(acc, term, fmt, mode, uniforms)
        total = acc if total is None else _add_exact(total, acc, fmt, mode, uniforms)
    return total


def dot(a, b, *, C=None, accumulate=FP32, inputs=None, output=None, mode: str = "nearest",
        order: str = "sequential", rng=None):
    """C + sum_k a_k * b_k of two 1-D arrays (``C`` a scalar or None), accumulated as ``matmul`` does;
    returns a numpy scalar."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 1 or b.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"dot needs two 1-D arrays of the same length; got shapes {a.shape} and {b.shape}")
    if C is not None and np.ndim(C) != 0:
        raise ValueError(f"dot's C must be a scalar; got shape {np.shape(C)}")
    return matmul(a[None, :], b[:, None], C=None if C is None else np.reshape(C, (1, 1)), inputs=inputs,
                  accumulate=accumulate, output=output, mode=mode, order=order, rng=rng)[0, 0]


def sum(x, fmt=FP32, *, axis=None, mode: str = "nearest", order: str = "sequential", rng=None):
    """Sum of ``x`` (all of it, or along ``axis``) accumulated in ``fmt`` in the stated ``order``.

    The values of ``x`` are first rounded to ``fmt`` in ``mode`` (as the
    elementwise operations do), then summed as ``matmul`` sums products (here
    x_k * 1, exact).  Returns a numpy scalar for ``axis=None``.
    """
    fmt = get_format(fmt)
    array = np.asarray(x)
    if axis is None:
        rows = array.reshape(1, -1)
        shape = ()
    else:
        if not is_integer(axis):
            raise ValueError(f"axis must be None or one integer axis, got {axis!r}")
        moved = np.moveaxis(array, axis, -1)
        shape = moved.shape[:-1]
        rows = moved.reshape(math.prod(shape), moved.shape[-1])
    ones = np.ones((rows.shape[1], 1))
    result = matmul(rows, ones, inputs=fmt, accumulate=fmt, mode=mode, order=order, rng=rng)
    result = result.reshape(shape)
    return result[()] if result.ndim == 0 else result
