"""Thread counts, set and restored in one place: numba's kernels, numpy's BLAS and (when loaded) torch.

numba's kernels give the same bits on any number of threads (each computes every
output on its own): their count is set for speed, since on a small problem a pool costs
more than it gains, and on a busy 2-core machine numba's pool contends with OpenBLAS's
spinning threads right after a numpy matmul (``benchmarks/bench_threads.py`` measures
it; ``fpsim.ops.reductions.PARALLEL_MIN_WORK``).  torch's CPU operations are
reproducible on one thread (on several, a scatter-add such as an embedding's backward
may sum in another order), so a training run takes ``one_thread``.
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


@contextmanager
def numba_on_torch_threads(torch):
    """numba's kernels on torch's thread count inside the block, both counts restored after it.

    With numba's OpenMP threading layer a kernel launch sets OpenMP's thread count, which torch's operations
    then read: on torch's count neither changes the other's.  torch's is restored last, since restoring
    numba's may set OpenMP's.
    """
    numba_count, torch_count = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(min(torch_count, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(numba_count)
        torch.set_num_threads(torch_count)


def single_threaded_worker() -> None:
    """A pool worker's initializer: its numba kernels run on one thread for the worker's life (the runs of a
    sweep already fill the cores)."""
    numba.set_num_threads(1)


def threads_for(work: int, parallel_min_work: int):
    """numba's kernels on one thread when ``work`` is below ``parallel_min_work``, else on all its threads:
    the choice a kernel call makes for itself (numba only: nothing else runs inside one)."""
    return numba_threads(1) if work < parallel_min_work else nullcontext()


@contextmanager
def one_thread():
    """A whole run on one thread: numba's kernels, numpy's BLAS (through ``threadpoolctl``, which scikit-learn
    brings) and, when torch is imported, torch's operations; each previous count restored after the block.

    numba's count is set first: asking numba for it starts its pool, and with numba's OpenMP layer starting
    the pool sets OpenMP's thread count, which torch's operations read; started after torch's was set, it
    would give the first run in a process other torch threads than the runs after it.
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
