"""Validation of ``fpsim.round`` against independent oracles.

Two oracles:

* the hardware dtypes (numpy ``float16``, ``ml_dtypes.bfloat16``, ``float8_e4m3fn``,
  ``float8_e5m2``): a float32 -> format cast rounds once, to nearest-even, so it must
  equal ``fpsim.round(x, fmt)`` bit for bit; so must numpy's float64 -> float16 cast;
* the exact reference ``fpsim.numerics.exact.round_exact`` (Python integers and fractions),
  for float64 inputs, every deterministic mode, and formats with no hardware dtype.

A float64 -> bfloat16 conversion through float32 rounds twice and is sometimes
wrong; ``double_rounding_study`` measures how often, and whether the installed
releases of ml_dtypes and torch convert that way (a fact of each release).
"""

from __future__ import annotations

import time

import ml_dtypes
import numpy as np
from tqdm import tqdm

from .exact import DETERMINISTIC_MODES, round_exact
from .formats import BF16, E4M3, E5M2, FP16, HARDWARE_DTYPES, Format, get_format
from .rounding import round as round_to_format

HARDWARE_FORMATS = (FP16, BF16, E4M3, E5M2)
EXACT_REFERENCE_FORMATS = ("fp16", "bf16", "tf32", "e4m3", "e5m2", "e3m2", "e6m9", "e5m7", "e11m20", "e11m50")


def _finite_values(fmt: Format, rng, n: int) -> np.ndarray:
    """Up to ``n`` random finite values of ``fmt`` (decoded from random codes), as float64."""
    from .bits import decode
    values = decode(rng.integers(0, 1 << fmt.bits, size=n, dtype=np.uint64), fmt)
    return values[np.isfinite(values)]


def _midpoints(values: np.ndarray, fmt: Format) -> np.ndarray:
    """The exact midpoint between each value of ``fmt`` and its neighbour of larger magnitude (float64)."""
    exponent = np.maximum(np.frexp(np.abs(values))[1] - 1, fmt.emin)
    return values + np.copysign(np.ldexp(1.0, exponent - fmt.mantissa_bits - 1), values)


def _neighbours_and_midpoints(fmt: Format, rng, n: int) -> np.ndarray:
    """Random finite values of ``fmt``, the midpoints above them, and the float32s next to those midpoints.

    Every midpoint of a format with at most 23 mantissa bits is a float32
    (it needs one bit more than the format), so ties are exercised exactly.
    """
    values = _finite_values(fmt, rng, n)
    with np.errstate(over="ignore"):
        midpoints = _midpoints(values, fmt).astype(np.float32)
        return np.concatenate([values.astype(np.float32), midpoints,
                               np.nextafter(midpoints, np.float32(np.inf)),
                               np.nextafter(midpoints, np.float32(-np.inf))])


def _special_values(formats, dtype=np.float32) -> np.ndarray:
    """Signed zeros, infinities, NaN, and the values of ``dtype`` around each format's max and smallest values."""
    points = [0.0, np.inf, np.nan]
    for fmt in formats:
        overflow_midpoint = fmt.max + np.ldexp(1.0, fmt.emax - fmt.mantissa_bits - 1)
        points += [fmt.max, overflow_midpoint, fmt.smallest_subnormal, fmt.smallest_subnormal / 2,
                   fmt.smallest_normal, fmt.smallest_normal - fmt.smallest_subnormal / 2]
    with np.errstate(over="ignore"):
        around = [np.array(points, dtype=dtype)]
        for _ in range(3):
            around += [np.nextafter(around[-1], dtype(np.inf)), np.nextafter(around[-1], dtype(-np.inf))]
    values = np.concatenate(around)
    return np.concatenate([values, -values])


def validation_inputs(n_inputs: int = 10_000_000, seed: int = 0) -> np.ndarray:
    """At least ``n_inputs`` float32 test inputs.

    A third log-uniform in magnitude over [1e-12, 1e6] with random signs, a third
    uniformly random bit patterns (every float32 class, NaNs included), and the
    rest ties between neighbours of FP16, BF16, E4M3 and E5M2, the float32s next
    to those ties, and the values around each format's limits.
    """
    rng = np.random.default_rng(seed)
    third = n_inputs // 3
    log_uniform = np.exp(rng.uniform(np.log(1e-12), np.log(1e6), third)) * rng.choice([-1.0, 1.0], third)
    random_patterns = rng.integers(0, 1 << 32, size=third, dtype=np.uint64).astype(np.uint32).view(np.float32)
    per_format = (n_inputs - 2 * third) // (4 * len(HARDWARE_FORMATS)) + 1
    ties = [_neighbours_and_midpoints(fmt, rng, per_format) for fmt in HARDWARE_FORMATS]
    return np.concatenate([log_uniform.astype(np.float32), random_patterns, *ties,
                           _special_values(HARDWARE_FORMATS)])


def mismatches(ours: np.ndarray, reference: np.ndarray) -> int:
    """Number of positions whose values differ (bit patterns compared; any NaN equals any NaN)."""
    ours, reference = np.asarray(ours, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    both_nan = np.isnan(ours) & np.isnan(reference)
    same = (ours.view(np.int64) == reference.view(np.int64)) | both_nan
    return int(np.count_nonzero(~same))


def hardware_round_trip(x: np.ndarray, fmt: Format) -> np.ndarray:
    """``x`` cast to the hardware dtype of ``fmt`` and back to float64."""
    with np.errstate(over="ignore", invalid="ignore"):
        return x.astype(HARDWARE_DTYPES[fmt.name]).astype(np.float64)


def run_validation(n_inputs: int = 10_000_000, seed: int = 0, exact_samples: int = 2000,
                   progress: bool = True) -> list[dict]:
    """Compare ``fpsim.round`` with the oracles; one row per (format, mode, input dtype, oracle).

    Rows: float32 inputs -> FP16/BF16/E4M3/E5M2 (nearest) against the hardware cast;
    float64 inputs -> FP16 (nearest) against numpy's single-rounding cast; and
    float64 inputs near ties of each format in ``EXACT_REFERENCE_FORMATS`` in every
    deterministic mode against the exact reference (``exact_samples`` per row).
    """
    x32 = validation_inputs(n_inputs, seed)
    with np.errstate(invalid="ignore"):  # signalling NaNs among the random patterns become quiet
        x64 = np.concatenate([x32.astype(np.float64),
                              _off_midpoints64(FP16, np.random.default_rng(seed + 1), n_inputs // 10)])
    jobs = [(fmt, "nearest", x32, "hardware") for fmt in HARDWARE_FORMATS]
    jobs.append((FP16, "nearest", x64, "hardware"))
    rng = np.random.default_rng(seed + 2)
    exact_inputs = {name: _exact_reference_inputs(get_format(name), rng, exact_samples)
                    for name in EXACT_REFERENCE_FORMATS}
    jobs += [(get_format(name), mode, exact_inputs[name], "exact") for name in EXACT_REFERENCE_FORMATS
             for mode in DETERMINISTIC_MODES]
    rows = []
    for fmt, mode, x, oracle in tqdm(jobs, desc="validate", unit="check", disable=not progress):
        ours = round_to_format(x, fmt, mode)
        if oracle == "hardware":
            reference = hardware_round_trip(x, fmt)
        else:
            reference = np.array([round_exact(float(v), fmt, mode) for v in x])
        rows.append({"format": fmt.name, "mode": mode, "input_dtype": str(x.dtype), "oracle": oracle,
                     "inputs": int(x.size), "mismatches": mismatches(ours, reference)})
    return rows


def _off_midpoints64(fmt: Format, rng, n: int) -> np.ndarray:
    """float64 values at midpoints between neighbours of ``fmt``, and one to three float64 ulps off them."""
    midpoints = _midpoints(_finite_values(fmt, rng, n // 3), fmt)
    midpoints = midpoints[np.isfinite(midpoints)]
    offsets = rng.integers(1, 4, size=midpoints.size) * np.spacing(np.abs(midpoints))
    return np.concatenate([midpoints, midpoints + offsets, midpoints - offsets])


def _exact_reference_inputs(fmt: Format, rng, n: int) -> np.ndarray:
    """float64 inputs for the exact-reference rows: values near the format's ties, limits, and random magnitudes."""
    near_ties = rng.choice(_off_midpoints64(fmt, rng, n), n // 2)
    with np.errstate(over="ignore"):
        log_uniform = np.ldexp(rng.uniform(1, 2, n // 2),
                               rng.integers(fmt.emin - fmt.mantissa_bits - 3, fmt.emax + 2, n // 2))
    return np.concatenate([near_ties, log_uniform * rng.choice([-1.0, 1.0], n // 2),
                           _special_values([fmt], np.float64)])


def exhaustive_float32(fmt, progress: bool = True, chunk_bits: int = 24) -> dict:
    """Round all 2^32 float32 bit patterns to ``fmt`` (FP16, BF16, E4M3 or E5M2), compared with the hardware cast."""
    fmt = get_format(fmt)
    if fmt.name not in HARDWARE_DTYPES:
        raise ValueError(f"exhaustive validation needs a hardware dtype; {fmt.name} has none")
    start = time.perf_counter()
    chunk = 1 << chunk_bits
    found = 0
    for first in tqdm(range(0, 1 << 32, chunk), desc=f"all float32 -> {fmt.name}", unit="chunk",
                      disable=not progress):
        x = np.arange(first, first + chunk, dtype=np.uint32).view(np.float32)
        ours = round_to_format(x, fmt)
        with np.errstate(over="ignore", invalid="ignore"):
            reference = x.astype(HARDWARE_DTYPES[fmt.name]).astype(np.float32)
        differ = ours.view(np.uint32) != reference.view(np.uint32)
        found += int(np.count_nonzero(differ & ~(np.isnan(ours) & np.isnan(reference))))
    return {"format": fmt.name, "inputs": 1 << 32, "mismatches": found,
            "seconds": round(time.perf_counter() - start, 1)}


def _library_casts_to_bf16(x: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """Each installed library's own float64 -> bfloat16 cast of ``x``, as (library, version, float64 result)."""
    casts = [("ml_dtypes", ml_dtypes.__version__, x.astype(ml_dtypes.bfloat16).astype(np.float64))]
    try:
        import torch
    except ImportError:
        return casts
    converted = torch.from_numpy(x).to(torch.bfloat16).to(torch.float64).numpy()
    return casts + [("torch", torch.__version__, converted)]


def double_rounding_study(n: int = 1_000_000, seed: int = 0) -> dict:
    """How often float64 -> bfloat16 conversions that round twice (through float32) are wrong.

    Inputs: float64 values one to three float64 ulps off BF16 midpoints, where a
    first rounding to float32 lands on the midpoint and the second rounding's
    tie-breaking then decides, and the midpoints themselves.  Three conversions:

    * ``fpsim.round``, once from the exact value;
    * the two-step conversion written out, RN_bf16(RN_fp32(x)) (numpy's IEEE
      float64 -> float32 cast, then ``fpsim.round`` from that float32): double
      rounding by construction;
    * each installed library's own cast (ml_dtypes; torch where installed).
      Whether a release rounds once or twice is a fact about that release,
      measured here and returned with its version (``rounds``: ``"once"`` if it
      agrees with fpsim everywhere, ``"twice"`` if with the two-step conversion
      everywhere, else ``"neither"``), never assumed.

    Correct results come from the exact reference on a sample and from
    ``fpsim.round`` on all.
    """
    rng = np.random.default_rng(seed)
    x = _off_midpoints64(BF16, rng, n)
    ours = round_to_format(x, BF16)
    two_step = round_to_format(x.astype(np.float32), BF16).astype(np.float64)
    sample = rng.choice(x.size, size=min(2000, x.size), replace=False)
    exact = np.array([round_exact(float(v), BF16) for v in x[sample]])
    casts = []
    for library, version, converted in _library_casts_to_bf16(x):
        differs = mismatches(converted, ours)
        rounds = "once" if differs == 0 else "twice" if mismatches(converted, two_step) == 0 else "neither"
        casts.append({"library": library, "version": version, "rounds": rounds, "differs_from_fpsim": differs,
                      "wrong_in_sample": mismatches(converted[sample], exact)})
    return {"inputs": int(x.size), "exact_sample": int(sample.size),
            "fpsim_wrong_in_sample": mismatches(ours[sample], exact),
            "two_step_wrong_in_sample": mismatches(two_step[sample], exact),
            "two_step_differs_from_fpsim": mismatches(two_step, ours),
            "casts": casts}
