"""BLAS thread control.

Small matrix products (a mini-batch of 64 through a 784×100 layer) are dominated by thread start-up and
synchronisation: measured on a 2-core machine, OpenBLAS with all threads was 3–10× slower at batch 64
than with one. Training therefore runs with one BLAS thread for small batches; large inference batches
keep all of them. See ``bench/train_speed.py``.
"""

from __future__ import annotations

import contextlib

#: batches up to this size train with one BLAS thread
SINGLE_THREAD_MAX_BATCH = 256


def threads_for_batch(batch_size: int) -> int | None:
    """The BLAS thread count to use for a given batch size (None = library default)."""
    return 1 if batch_size <= SINGLE_THREAD_MAX_BATCH else None


@contextlib.contextmanager
def blas_threads(n: int | None):
    """Limit BLAS to ``n`` threads inside the block (no-op for ``None`` or without threadpoolctl)."""
    if n is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # threadpoolctl is a core dependency, but keep the engine usable without it
        yield
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield


def set_blas_threads(n: int):
    """Limit BLAS threads for the rest of the process (e.g. a server answering one image at a time)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n, user_api="blas")

