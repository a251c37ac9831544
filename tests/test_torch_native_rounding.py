"""fpsim.torch.native: the torch-native nearest-even rounding gives numba's kernel's bits (issue 20).

Every float32 pattern for FP16 and BF16 (slow); in CI a few million patterns, every exponent of both signs
with the mantissas that decide a rounding (ties, one below and above them, the extremes), every subnormal
and specials, for every format of ``FORMATS`` that float32 holds.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fpsim.numerics import kernels  # noqa: E402
from fpsim.numerics.formats import BF16, FORMATS, FP16, FP32, FP64, get_format  # noqa: E402
from fpsim.numerics.rounding import kernel_params  # noqa: E402
from fpsim.torch.native import native_constants, round_nearest_  # noqa: E402
from fpsim.torch.rounding import round_into  # noqa: E402

ROUNDED = [name for name, fmt in FORMATS.items()
           if fmt.fits_float32 and kernel_params(fmt, np.float32).dropped_bits >= 1]


def kernel_bits(patterns: np.ndarray, fmt) -> np.ndarray:
    out = np.empty_like(patterns)
    kernels.round_nearest_array(patterns.view(np.float32), out, kernel_params(fmt, np.float32).nearest_args())
    return out


def native_bits(patterns: np.ndarray, fmt) -> np.ndarray:
    values = torch.from_numpy(patterns.view(np.float32).copy())
    round_nearest_(values, values, fmt)
    return values.numpy().view(np.uint32)


def sampled_patterns() -> np.ndarray:
    """Random patterns, every subnormal's low 2^16, every top half, and per (sign, exponent) the mantissas
    that sit on, below and above each possible rounding point."""
    rng = np.random.default_rng(20)
    exponents = np.arange(256, dtype=np.uint32) << 23
    points = []
    for k in range(1, 24):  # bit k - 1 set and the ones below clear: a tie when k bits are dropped
        high = (rng.integers(0, 1 << (23 - k), 16, dtype=np.uint32) << np.uint32(k)) if k < 23 \
            else np.zeros(16, np.uint32)
        tie = high | np.uint32(1 << (k - 1))
        points += [tie, tie + np.uint32(1), tie - np.uint32(1)]
    mantissas = np.concatenate([np.array([0, 1, 2, 0x400000, 0x7FFFFE, 0x7FFFFF], np.uint32), *points]) & 0x7FFFFF
    structured = (exponents[:, None] | mantissas[None, :]).reshape(-1)
    return np.concatenate([
        rng.integers(0, 1 << 32, 1 << 21, dtype=np.uint64).astype(np.uint32),
        structured, structured | np.uint32(0x80000000),
        np.arange(1 << 16, dtype=np.uint32), np.arange(1 << 16, dtype=np.uint32) | np.uint32(0x80000000),
        np.arange(1 << 16, dtype=np.uint32) << np.uint32(16),
        (np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)) | np.uint32(0x8000),  # BF16's ties
        np.array([0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001, 0x7F800001, 0x7F7FFFFF, 0xFF7FFFFF], np.uint32)])


SAMPLE = sampled_patterns()


@pytest.mark.parametrize("name", ROUNDED)
def test_native_gives_the_kernels_bits_on_sampled_patterns(name):
    fmt = get_format(name)
    expected = kernel_bits(SAMPLE, fmt)
    got = native_bits(SAMPLE, fmt)
    wrong = np.flatnonzero(got != expected)
    assert wrong.size == 0, (f"{wrong.size} patterns differ, e.g. {SAMPLE[wrong[0]]:#010x}: "
                             f"{got[wrong[0]]:#010x} instead of {expected[wrong[0]]:#010x}")


def test_the_formats_covered_are_every_one_float32_holds():
    assert set(ROUNDED) >= {"tf32", "fp16", "bf16", "e4m3", "e5m2", "e3m2", "e2m3", "e2m1", "e8m0"}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", [FP16, BF16], ids=["fp16", "bf16"])
def test_native_gives_the_kernels_bits_on_every_float32_pattern(fmt):
    chunk = 1 << 24  # 64 MiB of patterns at a time
    for start in range(0, 1 << 32, chunk):
        patterns = np.arange(start, start + chunk, dtype=np.uint64).astype(np.uint32)
        expected, got = kernel_bits(patterns, fmt), native_bits(patterns, fmt)
        wrong = np.flatnonzero(got != expected)
        assert wrong.size == 0, (f"{fmt}: {patterns[wrong[0]]:#010x} gives {got[wrong[0]]:#010x}, "
                                 f"not {expected[wrong[0]]:#010x}")


def test_native_is_integer_only_so_flushing_subnormals_changes_nothing():
    """A float32 addition's subnormal rounding (the kernel's shifter) flushes to zero under FTZ / DAZ; the
    native path must not."""
    subnormals = np.arange(1, 1 << 20, 7, dtype=np.uint32)
    expected = kernel_bits(subnormals, BF16)
    assert np.count_nonzero(expected)  # BF16 has float32's subnormals: something to lose
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals")
    try:
        got = native_bits(subnormals, BF16)
    finally:
        torch.set_flush_denormal(False)
    np.testing.assert_array_equal(got, expected)


def test_round_into_takes_the_native_path_where_numpy_cannot_go():
    """A negated view has no numpy view (``.numpy()`` raises): round_into rounds it natively, in place."""
    values = torch.linspace(-70000.0, 70000.0, 1001)
    expected = np.empty(1001, np.float32)
    round_into(values.numpy(), expected, FP16)
    negated = (-values)._neg_view()  # the values of ``values``, lazily negated twice
    with pytest.raises(RuntimeError):
        negated.numpy()
    out = torch.empty(1001)
    round_into(negated, out, FP16)
    np.testing.assert_array_equal(out.numpy().view(np.uint32), expected.view(np.uint32))


def test_round_into_tensors_in_cpu_memory_and_meta_tensors():
    values = torch.tensor([1.0 + 2.0 ** -11, 65520.0, -1e-8, float("nan")])
    expected = np.array([1.0, np.inf, -0.0, np.nan], np.float32)
    round_into(values, values, FP16)
    np.testing.assert_array_equal(values.numpy(), expected)
    meta = torch.empty(4, device="meta")
    round_into(meta, meta, FP16)  # a dry run: nothing to round, nothing raised
    assert meta.is_meta


def test_native_refuses_what_it_does_not_cover():
    with pytest.raises(ValueError, match="within float32"):
        native_constants(FP64)
    with pytest.raises(ValueError, match="nothing to round"):
        native_constants(FP32)
    with pytest.raises(TypeError, match="float32"):
        round_into(torch.ones(3, dtype=torch.float64)._neg_view(), torch.ones(3, dtype=torch.float64), FP16)
