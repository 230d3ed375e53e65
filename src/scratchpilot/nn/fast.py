"""The speed machinery, kept apart from the layers a learner reads: BLAS threads, warm-up, one parameter buffer.

None of this changes what is computed, only how fast:

- :class:`ThreadTuner` picks the BLAS thread count while training runs. A fixed rule ("two threads from
  batch 16") was the fastest on an idle 2-core machine but collapsed when another process kept one core
  busy (each product then waits for the thread that shares its core): the tuner times a few batches at
  each thread count when ``fit`` starts and again every few seconds, and keeps the faster.
- :func:`warm_up` runs one large product per thread count, once per process: until a process has run a
  product of roughly 350×350 or larger, this OpenBLAS runs small products several times slower.
- :func:`pack_parameters` moves every parameter of a model into one contiguous buffer, so the optimiser
  updates them all in a few whole-array passes instead of a few per parameter.
- :class:`SparseInputDense` is a first layer that skips input columns that are zero in the whole batch.

Measurements behind these choices are in ``bench/results`` and the README.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time

import numpy as np

from .layers import Dense

_warmed_up: set[int | None] = set()


def _blas_controllers():
    """threadpoolctl's handles on the loaded BLAS libraries (empty without threadpoolctl)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # a core dependency, but keep the engine usable without it
        return []
    return ThreadpoolController().select(user_api="blas").lib_controllers


def candidate_threads() -> list[int]:
    """Thread counts worth trying: 1, 2 and every core (at most 8; more only adds synchronisation here)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return sorted({1, min(2, cores), min(cores, 8)})


def current_threads() -> int | None:
    """The BLAS thread count in force now (None without threadpoolctl)."""
    controllers = _blas_controllers()
    return controllers[0].num_threads if controllers else None


def warm_up(threads: int | None = None) -> None:
    """Run one 384×384 float32 product at ``threads`` BLAS threads, once per process and thread count.

    Until a process has run one product of roughly 350×350 or larger, OpenBLAS runs small products (a
    784×100 layer at batch 64, a conv layer's first products) several times slower than later. The cause
    lies inside OpenBLAS; one large product is the cheap remedy (figures in bench/results/notes.md).
    """
    if threads in _warmed_up:
        return
    a = np.ones((384, 384), dtype=np.float32)
    with blas_threads(threads):
        a @ a
    _warmed_up.add(threads)


@contextlib.contextmanager
def blas_threads(n: int | None):
    """Limit BLAS to ``n`` threads inside the block (no-op for ``None`` or without threadpoolctl)."""
    if n is None:
        yield
        return
    controllers = _blas_controllers()
    before = [c.num_threads for c in controllers]
    for c in controllers:
        c.set_num_threads(n)
    try:
        yield
    finally:
        for c, k in zip(controllers, before, strict=True):
            c.set_num_threads(k)


def set_blas_threads(n: int):
    """Limit BLAS threads for the rest of the process (e.g. a server answering one image at a time)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n, user_api="blas")


class ThreadTuner:
    """Choose the BLAS thread count by timing training batches, and re-check every so often.

    Call :meth:`tick` once per batch, after the batch (it reads the clock). A probe runs a block of at
    least ``probe_batches`` batches and ``min_block`` seconds at each candidate count, ``rounds`` times in
    alternation (the first batch after each switch is not counted: it pays for waking or parking threads),
    and keeps the count with the lowest mean batch time. The mean, not the median: with another process on
    a core, two threads are quick in most batches and stall for a scheduler slice in some, and the stalls
    are the cost; blocks of 20 ms or more see several slices, and several rounds keep one slow phase of the
    machine from landing on one candidate only. Between probes the choice stays fixed for
    ``max(min_interval, 20 × probe time)`` seconds, so probing costs a few per cent at most even when one
    candidate is much slower.

    ``fixed`` (an int) turns tuning off. ``choices`` records ``(batch index, threads, {threads: mean s})``
    after each probe, for tests and benchmarks.
    """

    def __init__(self, candidates=None, fixed: int | None = None, probe_batches: int = 2, rounds: int = 4,
                 min_block: float = 0.02, min_interval: float = 1.0, clock=time.perf_counter,
                 previous: ThreadTuner | None = None) -> None:
        self.candidates = list(candidates) if candidates is not None else candidate_threads()
        self.fixed = fixed
        #: the tuner of the model's last ``fit``: a choice it made recently enough is kept, not probed again
        #: (the tutorial's ``Network.SGD`` calls ``fit`` once per epoch)
        self.previous = previous
        self.probe_batches = int(probe_batches)
        self.rounds = int(rounds)
        self.min_block = float(min_block)
        self.min_interval = float(min_interval)
        self.clock = clock
        self._controllers = _blas_controllers()
        self._before = [c.num_threads for c in self._controllers]
        self.choices: list[tuple[int, int, dict[int, float]]] = []
        self.current = fixed if fixed is not None else self.candidates[-1]
        self._batch = 0
        self._order: list[int] = []
        self._samples: dict[int, list[float]] | None = None
        self._last = None
        self._probe_start = 0.0
        self._next_probe = 0.0
        self._skip = False

    # the tuner is a context manager so that the caller's thread setting is restored afterwards
    def __enter__(self) -> ThreadTuner:
        last = self.previous
        if self.fixed is not None or len(self.candidates) < 2:
            self._set(self.fixed if self.fixed is not None else self.candidates[0])
        elif (last is not None and last.choices and last.candidates == self.candidates
              and self.clock() < last._next_probe):
            self._set(last.current)
            self._next_probe = last._next_probe
            self.choices = list(last.choices)  # so that the fit after this one can carry it over too
        else:
            for n in self.candidates:
                warm_up(n)
            self._start_probe()
        self._last = self.clock()
        return self

    def __exit__(self, *exc) -> None:
        for c, k in zip(self._controllers, self._before, strict=True):
            c.set_num_threads(k)

    def resume(self) -> None:
        """Restart the clock: the time since the last :meth:`tick` was not spent on a batch."""
        self._last = self.clock()

    def _set(self, n: int | None) -> None:
        if n is None:
            return
        self.current = n
        for c in self._controllers:
            c.set_num_threads(n)

    def _start_probe(self) -> None:
        self._order = [n for _ in range(self.rounds) for n in self.candidates]  # one block each
        self._samples = {n: [] for n in self.candidates}
        self._probe_start = self.clock()
        self._begin_block()

    def _begin_block(self) -> None:
        n = self._order.pop(0)
        self._skip = n != self.current or not self._samples[n]
        self._set(n)
        self._block_batches, self._block_seconds = 0, 0.0

    def tick(self) -> None:
        """Account for the batch that just finished and set the thread count for the next one."""
        now = self.clock()
        elapsed, self._last = now - self._last, now
        self._batch += 1
        if self._samples is None:
            if self.fixed is None and len(self.candidates) > 1 and now >= self._next_probe:
                self._start_probe()
            return
        if self._skip:
            self._skip = False
        else:
            self._samples[self.current].append(elapsed)
            self._block_batches += 1
            self._block_seconds += elapsed
        # a block lasts probe_batches counted batches and at least min_block seconds: a busy machine's
        # scheduler hands out cores in slices of a few milliseconds, and a shorter block sees only one
        if self._block_batches < self.probe_batches or self._block_seconds < self.min_block:
            return
        if self._order:
            self._begin_block()
            return
        means = {k: statistics.fmean(v) for k, v in self._samples.items() if v}
        best = min(means, key=means.get)
        self._set(best)
        self.choices.append((self._batch, best, means))
        self._samples = None
        probe_time = now - self._probe_start
        self._next_probe = now + max(self.min_interval, 20 * probe_time)


def pack_parameters(model) -> tuple[np.ndarray, np.ndarray]:
    """Move every parameter (and its gradient) of ``model.layers`` into one contiguous buffer each,
    leaving views in the layers; returns ``(params, grads)``.

    A layer that another model packed before keeps its values (they are copied in); that model notices
    the layer moved (``layer._packed_by``) and packs again before its next step.
    """
    sizes = [p.size for layer in model.layers for p in layer.params.values()]
    params = np.empty(sum(sizes), dtype=model.dtype)
    grads = np.zeros(sum(sizes), dtype=model.dtype)
    offset = 0
    for layer in model.layers:
        for key, value in list(layer.params.items()):
            n = value.size
            view = params[offset:offset + n].reshape(value.shape)
            view[...] = value
            layer.params[key] = view
            layer.grads[key] = grads[offset:offset + n].reshape(value.shape)
            offset += n
        layer._packed_by = model
    return params, grads


class SparseInputDense(Dense):
    """A first ``Dense`` layer that skips the input columns that are zero in the whole batch (MNIST's empty
    borders) in both of its products. Same results as ``Dense``; saved as one.

    It pays on one BLAS thread, but with two threads the gathers cost more than they save, so it is not
    the default (figures in bench/results/notes.md). It pays only as a first layer, whose input needs no
    gradient.
    """

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._cols = None
        if training and x.ndim == 2 and x.shape[0] >= 32 and x.shape[1] == self.n_in:
            used = np.flatnonzero(x.any(axis=0))
            # gathering costs a good part of a dense product: worth it only when many columns are empty
            if used.size < 0.8 * self.n_in:
                self._cols, self._x = used, x[:, used]
                z = self._x @ np.take(self.params["W"], used, axis=0)
                z += self.params["b"]
                return z
        return super().forward(x, training)

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        if getattr(self, "_cols", None) is None:
            return super().backward(grad, input_grad)
        if self.trainable:  # rows of dW for all-zero input columns are exactly zero: x_col.T @ g = 0
            dW = self.grads["W"]
            dW.fill(0)
            dW[self._cols] = self._x.T @ grad
            np.sum(grad, axis=0, out=self.grads["b"])
        return grad @ self.params["W"].T if input_grad else None
