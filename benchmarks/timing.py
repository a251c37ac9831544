"""Timing helper shared by the benchmark scripts (run them as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import time


def best_time(function, repeats: int) -> float:
    """Best wall time of ``repeats`` calls, in seconds (the first call also compiles; it is not counted).

    Waits half a second first: OpenBLAS's idle threads spin for a while after a
    numpy matmul and numba's OpenMP threads after a kernel, and on 2 cores each
    steals the other's time.
    """
    time.sleep(0.5)
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)
