"""BLAS thread control.

Measured on this project's 2-core machine (OpenBLAS 0.3.31 from the NumPy wheel, ``bench/train_speed.py``):

- Batches of 16 and more train faster with two BLAS threads: 784-100-10 at batch 64 takes 0.77 s per epoch
  with two threads and 0.83 s with one; 784-512-256-10 at batch 128 takes 3.3 s against 4.3 s.
- Batches under 16 train faster with one (batch 10: 2.3 s against 2.8 s): there each product is too small
  to pay for waking a second thread.
- Single images (the web server, the car's pilot loop) run on one thread: see ``set_blas_threads``.

An earlier version kept one thread up to batch 256, after the note that many threads are 3–10× slower at
batch 64. With this OpenBLAS on this machine that did not reproduce: two threads were faster at batch 64
both before and after :func:`warm_up` (0.83 s against 0.93 s per epoch cold).
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

#: batches smaller than this train with one BLAS thread
MULTI_THREAD_MIN_BATCH = 16
#: thread count for mini-batch training (measured on 2 cores; more threads only add synchronisation here)
TRAINING_THREADS = 2
#: batches above this size use the library's default (all cores)
DEFAULT_THREADS_MIN_BATCH = 512

_warmed_up = False


def threads_for_batch(batch_size: int) -> int | None:
    """The BLAS thread count to use for a given batch size (None = library default)."""
    if batch_size < MULTI_THREAD_MIN_BATCH:
        return 1
    if batch_size < DEFAULT_THREADS_MIN_BATCH:
        return min(TRAINING_THREADS, os.cpu_count() or 1)
    return None


def warm_up() -> None:
    """Run one 384×384 float32 product, once per process (about 3 ms).

    Measured here: until a process has run one product of roughly 350×350 or larger, OpenBLAS runs
    the batch-64 forward product of a 784×100 layer at 11–19 GFLOP/s instead of 34 (521 µs against
    297 µs per call); after it, every later product is fast, at any thread count. The cause lies inside
    OpenBLAS (it is not page faults, alignment or huge pages); the remedy is cheap, so training pays it.
    """
    global _warmed_up
    if _warmed_up:
        return
    a = np.ones((384, 384), dtype=np.float32)
    a @ a
    _warmed_up = True


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
