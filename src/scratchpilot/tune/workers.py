"""``--workers K``: K worker processes on one storage, each with its share of the cores for BLAS.

Each worker is a fresh interpreter (multiprocessing's "spawn"), started with ``OPENBLAS_NUM_THREADS`` and
its kin set to its share, so that no worker's BLAS starts more threads than its cores. The workers share
nothing but the study's storage; the parent only watches the study and prints progress.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Callable

_BLAS_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, where the system tells)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Each of ``workers`` processes' BLAS threads: an equal share of the cores, at least one."""
    return max(1, (cores or usable_cores()) // max(1, workers))


@contextlib.contextmanager
def _blas_environment(threads: int):
    saved = {name: os.environ.get(name) for name in _BLAS_VARIABLES}
    os.environ.update({name: str(threads) for name in _BLAS_VARIABLES})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_workers(target: Callable, settings: dict, workers: int, *, watch: Callable[[], bool] | None = None,
                poll_s: float = 2.0, threads: int | None = None) -> list[int]:
    """Run ``target(settings, index, threads)`` in ``workers`` processes and wait for them; ``watch()`` is
    called every ``poll_s`` seconds meanwhile (it prints progress). ``threads``: each worker's BLAS threads
    (default :func:`threads_per_worker`). Ctrl-C stops every worker (each fails only its running trial) and
    is raised again. Returns the workers' exit codes."""
    context = multiprocessing.get_context("spawn")
    threads = threads or threads_per_worker(workers)
    processes = []
    with _blas_environment(threads):
        for index in range(workers):
            process = context.Process(target=target, args=(settings, index, threads), name=f"tune-worker-{index}")
            process.start()
            processes.append(process)
    try:
        while any(p.is_alive() for p in processes):
            if watch is not None:
                watch()
            for p in processes:
                p.join(timeout=poll_s / len(processes))
        if watch is not None:
            watch()
    except KeyboardInterrupt:
        for p in processes:
            if p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGINT)
        deadline = time.monotonic() + 30
        for p in processes:
            p.join(timeout=max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
        raise
    return [p.exitcode for p in processes]
