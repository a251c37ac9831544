"""How far a GEMM's accumulator lies from the exact product: test operands, the exact reference, error statistics.

For operands A (M, K) and B (K, N) whose entries lie in a format F, the exact
product X = A @ B is computed as ``math.fsum`` of each output's K products.  Every
product of two values of F is exact in float64 when 2 * precision(F) <= 53 and the
products' exponents lie inside float64's range (true of FP8, FP16, BF16, TF32 and FP32:
``exact_product`` refuses other formats), and fsum returns their sum rounded once to
float64 (CPython's ``math.fsum``: Shewchuk's exact partial sums), so X carries a
relative error of at most 2^-53, 2^29 times below FP32's unit roundoff.  For FP8
(E4M3) the plain float64 product is exact as well, but one method serves every format.

``correctly_rounded_fp32`` rounds the exact product once to FP32 (round to nearest,
ties to even): the best any FP32 accumulator can return.  ``errors`` summarises a
computed D against X by the relative error of each output, |d - x| / |x|, and ``gemm_errors`` measures
a set of accumulators (``fpsim.matmul``'s ``accumulate`` and ``order``) that way over a range of K, which
``error_figure`` draws.
"""

from __future__ import annotations

import math

import numpy as np

from ..numerics.formats import E4M3, FP32, Format, get_format
from ..numerics.rounding import round as round_to
from ..ops.reductions import matmul

OUTLIER_FACTOR = 100.0
"""The outlier channel's magnitude against the others (LLM activations carry a few input channels up to about
100 times the rest: Dettmers et al. 2022, LLM.int8(), section 3)."""

CORRECTLY_ROUNDED = "correctly rounded FP32"
"""The label of the exact product rounded once to FP32 among ``gemm_errors``' accumulators."""
DISTRIBUTIONS = ("normal", "outlier channel", "uniform positive")
"""The operands' distributions: iid standard normal entries; the same with one input channel of A (a column,
index K // 2) ``OUTLIER_FACTOR`` times larger; iid uniform on [0, 1) (no cancellation: every product adds to the
output's magnitude, so an accumulator's bias shows in every output)."""


def operands(distribution: str, fmt, M: int, K: int, N: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(A, B), float64 arrays of values of ``fmt``, drawn from ``distribution`` (``DISTRIBUTIONS``) with
    numpy's Generator seeded by (seed, K).  FP8 (E4M3) operands are scaled per tensor as the fp8 recipes'
    current scaling does, s = 448 / amax (in FP32), before rounding to E4M3; 16-bit ones are rounded as drawn.
    Rounding: to nearest, ties to even."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}, got {distribution!r}")
    fmt = get_format(fmt)
    rng = np.random.default_rng([seed, K])
    draw = rng.uniform if distribution == "uniform positive" else rng.standard_normal
    a, b = draw(size=(M, K)), draw(size=(K, N))
    if distribution == "outlier channel":
        a[:, K // 2] *= OUTLIER_FACTOR
    if fmt == E4M3:
        a, b = (x * float(round_to(E4M3.max / np.abs(x).max(), FP32)) for x in (a, b))
    return np.asarray(round_to(a, fmt), dtype=np.float64), np.asarray(round_to(b, fmt), dtype=np.float64)


def _products_exact(fmt: Format) -> bool:
    """Whether every product of two values of ``fmt`` is a float64 and K <= 2^20 of them sum without overflow."""
    return (2 * fmt.precision <= 53 and 2 * math.log2(fmt.smallest_subnormal) >= -1074
            and 2 * math.log2(fmt.max) + 20 < 1024)


def exact_product(A, B, fmt) -> np.ndarray:
    """A @ B with each output the exact sum of its products rounded once to float64 (``math.fsum``); the
    entries of A and B must be values of ``fmt``, a format whose products are exact in float64."""
    fmt = get_format(fmt)
    if not _products_exact(fmt):
        raise ValueError(f"exact_product needs operands whose products are exact in float64 (FP8, FP16, BF16, FP32); "
                         f"{fmt.name} has {fmt.precision} significant bits")
    A, B = np.asarray(A, dtype=np.float64), np.asarray(B, dtype=np.float64)
    if not (np.array_equal(round_to(A, fmt), A) and np.array_equal(round_to(B, fmt), B)):
        raise ValueError(f"exact_product: A and B must hold {fmt.name} values (round them first)")
    Bt = np.ascontiguousarray(B.T)
    return np.array([[math.fsum(row * column) for column in Bt] for row in A])


def correctly_rounded_fp32(A, B, exact: np.ndarray) -> np.ndarray:
    """The exact product A @ B rounded once to FP32 (nearest, ties to even), from ``exact`` (``exact_product``).

    Rounding the float64 ``exact`` to FP32 is that rounding except where ``exact`` is itself an FP32
    midpoint while the true sum is not (rounding to nearest is monotone, so the true sum lies on the side
    of the midpoint that the sign of the residual, the true sum minus ``exact``, says; fsum gives that
    residual's sign exactly); there the side is taken from the residual.
    """
    exact = np.asarray(exact, dtype=np.float64)
    down, up = round_to(exact, FP32, "down").astype(np.float64), round_to(exact, FP32, "up").astype(np.float64)
    result = round_to(exact, FP32).astype(np.float64)
    Bt = np.asarray(B, dtype=np.float64).T
    for i, j in zip(*np.nonzero((up != down) & (up - exact == exact - down))):
        residual = math.fsum([*(np.asarray(A[i], dtype=np.float64) * Bt[j]), -exact[i, j]])
        if residual:
            result[i, j] = up[i, j] if residual > 0 else down[i, j]
    return result


def errors(D, exact) -> dict:
    """The relative errors |d - x| / |x| of the outputs D against ``exact`` X (outputs with x = 0 left out):
    their median and maximum, and the mean of (|d| - |x|) / |x| (a bias: negative when the accumulator loses
    magnitude, as truncation does)."""
    D, exact = np.asarray(D, dtype=np.float64), np.asarray(exact, dtype=np.float64)
    d, x = D[exact != 0], exact[exact != 0]
    relative = np.abs(d - x) / np.abs(x)
    return {"median relative error": float(np.median(relative)), "max relative error": float(relative.max()),
            "magnitude bias": float(np.mean((np.abs(d) - np.abs(x)) / np.abs(x))), "outputs": int(x.size)}


def gemm_errors(fmt, accumulators: dict, distribution: str, ks, size: int) -> list[dict]:
    """One row per K of ``ks`` and accumulator (label -> (``accumulate``, ``order``) of ``fpsim.matmul``):
    ``errors`` of ``matmul(A, B, inputs=fmt, accumulate=, order=)`` (FP32 output) against the exact
    product, for ``operands(distribution, fmt, size, K, size)``; with ``CORRECTLY_ROUNDED`` as one more
    accumulator but for FP8 inputs, and for every accumulator the share of outputs equal to the correctly
    rounded FP32 product and the largest distance from it in FP32 spacings (``np.spacing`` at it)."""
    rows, n = [], size
    for K in ks:
        A, B = operands(distribution, fmt, n, K, n)
        exact = exact_product(A, B, fmt)
        rounded = correctly_rounded_fp32(A, B, exact)
        computed = {label: matmul(A, B, inputs=fmt, accumulate=acc, order=order)
                    for label, (acc, order) in accumulators.items()}
        if get_format(fmt) != E4M3:
            computed[CORRECTLY_ROUNDED] = rounded
        spacing = np.spacing(rounded.astype(np.float32)).astype(np.float64)
        for label, D in computed.items():
            rows.append({"inputs": fmt, "distribution": distribution, "K": K, "accumulator": label,
                         **errors(D, exact), "equal to correctly rounded FP32": float(np.mean(D == rounded)),
                         "max FP32 spacings from it": float(np.max(np.abs(D - rounded) / spacing))})
    return rows


def error_figure(colours: dict, panels):
    """Median (solid) and maximum (dashed) relative error against K, one line pair per accumulator (errors of 0
    left out), coloured by ``colours`` (label -> colour); ``panels``: (title, ``gemm_errors`` rows, a cited
    point (K, value, label) or None), side by side."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), sharey=True, squeeze=False)
    for ax, (title, rows, cited) in zip(axes[0], panels):
        for label in dict.fromkeys(r["accumulator"] for r in rows):
            own = [r for r in rows if r["accumulator"] == label]
            k = [r["K"] for r in own]
            for field, style in (("median relative error", "o-"), ("max relative error", "--")):
                values = [r[field] or np.nan for r in own]  # an error of 0 (exact) has no place on a log axis
                ax.plot(k, values, style, color=colours[label], ms=3, lw=1.5 if style == "o-" else 1,
                        label=label if style == "o-" else None)
        if cited:
            ax.plot(*cited[:2], "k*", ms=12, label=cited[2])
        ax.set(xscale="log", yscale="log", xlabel="K (products per output)", title=title)
        ks = sorted({r["K"] for r in rows})
        ax.set_xticks(ks, [f"2^{k.bit_length() - 1}" for k in ks])
        ax.minorticks_off()
    axes[0][0].set_ylabel("relative error |d - x| / |x| (solid: median, dashed: max)")
    axes[0][0].legend(loc="best")  # the first panel has every accumulator (V100 has no BF16 path)
    return fig
