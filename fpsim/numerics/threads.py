"""Thread counts, set and restored in one place: numba's kernels, numpy's BLAS and (when loaded) torch.

numba's kernels give the same bits on any number of threads (each computes every
output on its own): their count is set for speed, since on a small problem a pool costs
more than it gains, and on a busy 2-core machine numba's pool contends with OpenBLAS's
spinning threads right after a numpy matmul (``benchmarks/bench_threads.py`` measures
it; ``fpsim.ops.reductions.PARALLEL_MIN_WORK``).  torch's CPU operations are
reproducible on one thread (on several, a scatter-add such as an embedding's backward
may sum in another order), so a training run takes ``one_thread``.

torch's thread count is the caller's: numba's pool is started on import of this module (``start_numba_pool``)
with torch's count put back, so that nothing fpsim does later (``emulate``, a kernel, asking numba for its
count) changes torch's or numba's count.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack, contextmanager, nullcontext

import numba


@contextmanager
def numba_threads(count: int):
    """numba's kernels on ``count`` threads inside the block, its previous count restored after it."""
    previous = numba.get_num_threads()
    numba.set_num_threads(count)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def start_numba_pool() -> None:
    """Start numba's thread pool now, torch's thread count (when torch is loaded) left as it was.

    With numba's OpenMP threading layer, starting the pool (the first parallel kernel, or the first
    ``numba.get_num_threads`` / ``set_num_threads``) calls ``omp_set_num_threads(NUMBA_NUM_THREADS)`` on the
    calling thread, and torch's CPU operations run on ``omp_get_max_threads()`` of the thread that calls them
    (ATen's ``ParallelOpenMP.cpp``, which sets that count only once per thread, on its first use).  A pool
    started after torch's first use changed torch's count for the rest of the process: after
    ``torch.set_num_threads(1)`` the first ``emulate`` ran torch on 2 threads and gave other LayerNorm
    gradients than plain torch (issue 20).  Once started, numba's kernels launch on their own count (``#pragma
    omp parallel num_threads``) and change no thread's default.  A process that loads torch after this: torch
    sets its own count on its first use.
    """
    torch = sys.modules.get("torch")
    count = torch.get_num_threads() if torch is not None else None
    numba.get_num_threads()  # starts the pool
    if count is not None:
        torch.set_num_threads(count)


start_numba_pool()


def single_threaded_worker() -> None:
    """A pool worker's initializer: its numba kernels run on one thread for the worker's life (the runs of a
    sweep already fill the cores)."""
    numba.set_num_threads(1)


def serial(work: int, parallel_min_work: int) -> bool:
    """Whether a kernel call of ``work`` runs on the calling thread alone: ``work`` below ``parallel_min_work``,
    or torch loaded and computing on one thread (a caller who set one thread for torch, as ``one_thread`` and
    the benchmarks do, gets no parallel region from fpsim either: on a loaded machine each region waits for its
    descheduled threads, measured 4 us against 4-8 ms for 65,536 values' largest magnitude)."""
    if work < parallel_min_work:
        return True
    torch = sys.modules.get("torch")
    return torch is not None and torch.get_num_threads() == 1


def threads_for(work: int, parallel_min_work: int):
    """numba's kernels on one thread where ``serial``, else on all its threads: the choice a kernel call makes
    for itself (numba only: nothing else runs inside one)."""
    return numba_threads(1) if serial(work, parallel_min_work) else nullcontext()


@contextmanager
def one_thread():
    """A whole run on one thread: numba's kernels, numpy's BLAS (through ``threadpoolctl``, which scikit-learn
    brings) and, when torch is imported, torch's operations; each previous count restored after the block.

    numba's pool is already started (``start_numba_pool``), so setting numba's count changes no other.
    """
    with ExitStack() as stack:
        stack.enter_context(numba_threads(1))
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # no control of BLAS threads: their count changes timings only
            pass
        else:
            stack.enter_context(threadpool_limits(limits=1, user_api="blas"))
        torch = sys.modules.get("torch")
        if torch is not None:
            previous = torch.get_num_threads()
            torch.set_num_threads(1)
            stack.callback(torch.set_num_threads, previous)
        yield
