"""The speed machinery: the BLAS thread tuner, the warm-up, the shared parameter buffer, the sparse first layer."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from scratchpilot import nn
from scratchpilot.nn import fast


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _drive(tuner, clock, cost, batches, change_at=None, new_cost=None):
    at = {1: 0, 2: 0}
    with tuner:
        for b in range(batches):
            if b == change_at:
                cost = new_cost
            at[tuner.current] += 1
            clock.t += cost[tuner.current]
            tuner.tick()
    return at


def test_tuner_keeps_the_faster_thread_count_and_follows_a_change():
    clock = FakeClock()
    tuner = fast.ThreadTuner(candidates=[1, 2], probe_batches=2, rounds=4, min_block=0.0, min_interval=1.0,
                             clock=clock)
    # two threads are faster on an idle machine; then another process takes a core and one thread wins
    at = _drive(tuner, clock, {1: 0.010, 2: 0.005}, 1200, change_at=600, new_cost={1: 0.010, 2: 0.030})
    assert tuner.choices[0][1] == 2
    assert tuner.choices[-1][1] == 1
    first_after_change = next(c for c in tuner.choices if c[0] > 600)
    assert first_after_change[1] == 1  # noticed at the next probe
    assert at[1] + at[2] == 1200
    # probing is a small share of the batches: each probe is 4 rounds of 3 batches per count, one every >= 1 s
    probes = len(tuner.choices)
    assert probes * 24 < 0.25 * 1200


def test_tuner_ignores_the_first_batch_after_a_switch():
    clock = FakeClock()
    tuner = fast.ThreadTuner(candidates=[1, 2], probe_batches=2, rounds=2, min_block=0.0, min_interval=100.0,
                             clock=clock)
    switched = {"last": None}

    with tuner:
        for _ in range(6 * 2):
            # a batch right after a change of thread count is very slow (waking threads); the rest are not
            slow = switched["last"] != tuner.current
            switched["last"] = tuner.current
            clock.t += (1.0 if slow else 0.0) + (0.002 if tuner.current == 1 else 0.001)
            tuner.tick()
    _, best, means = tuner.choices[0]
    assert best == 2 and means[2] == pytest.approx(0.001) and means[1] == pytest.approx(0.002)


def test_tuner_counts_stalls_a_median_would_hide():
    """With a core busy, two threads are quick in most batches but stall in some: the mean sees the stalls."""
    clock = FakeClock()
    tuner = fast.ThreadTuner(candidates=[1, 2], probe_batches=2, rounds=4, min_block=0.0, min_interval=100.0,
                             clock=clock)
    at_two = {"n": 0}
    with tuner:
        while not tuner.choices:
            if tuner.current == 2:
                at_two["n"] += 1
            stall = tuner.current == 2 and at_two["n"] in (3, 8, 12)  # 3 of the 8 counted batches at two
            clock.t += 0.010 if tuner.current == 1 else (0.030 if stall else 0.006)
            tuner.tick()
    _, best, means = tuner.choices[0]
    assert best == 1 and means[2] > 0.010, tuner.choices


def test_probe_blocks_last_long_enough_to_see_the_scheduler():
    clock = FakeClock()
    tuner = fast.ThreadTuner(candidates=[1, 2], probe_batches=2, rounds=2, min_block=0.05, clock=clock)
    batches = 0
    with tuner:
        while not tuner.choices:
            clock.t += 0.001
            tuner.tick()
            batches += 1
    assert batches >= 4 * 50  # four blocks of at least 50 ms of 1 ms batches


def test_a_recent_choice_carries_over_to_the_next_fit():
    clock = FakeClock()
    first = fast.ThreadTuner(candidates=[1, 2], probe_batches=2, rounds=2, min_block=0.0, min_interval=10.0,
                             clock=clock)
    _drive(first, clock, {1: 0.010, 2: 0.005}, 40)
    assert first.choices[-1][1] == 2
    second = fast.ThreadTuner(candidates=[1, 2], clock=clock, previous=first)
    with second:
        assert second.current == 2 and second._samples is None  # no new probe yet
    clock.t += 100.0  # long after: probe again
    third = fast.ThreadTuner(candidates=[1, 2], clock=clock, previous=first)
    with third:
        assert third._samples is not None


def test_fixed_threads_are_set_and_restored():
    before = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    with fast.ThreadTuner(fixed=1) as tuner:
        assert [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"] == [1] * len(before)
        tuner.tick()
        assert tuner.choices == []
    assert [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"] == before


def test_fit_records_its_thread_choice_and_rejects_bad_thread_counts():
    rng = np.random.default_rng(0)
    X, y = rng.random((20000, 500), dtype=np.float32), rng.integers(0, 3, 20000)
    model = nn.Sequential([nn.Dense(500, 200), nn.ReLU(), nn.Dense(200, 3)], seed=0)
    # a probe is 8 blocks of at least 20 ms: big batches, so that even an idle, fast machine finishes one
    model.fit(X, y, epochs=12, batch_size=1024, progress=False)
    assert model.thread_tuner.choices and model.thread_tuner.choices[0][1] in fast.candidate_threads()
    with pytest.raises(ValueError, match="threads"):
        model.fit(X, y, epochs=1, progress=False, threads=0)


def test_warm_up_runs_once_per_thread_count(monkeypatch):
    """The warm-up product runs the first time a thread count is asked for, and never again for it."""
    products = []
    real_blas_threads = fast.blas_threads

    def counting_blas_threads(n):
        products.append(n)  # warm_up runs its one product inside this block
        return real_blas_threads(n)

    monkeypatch.setattr(fast, "_warmed_up", set())
    monkeypatch.setattr(fast, "blas_threads", counting_blas_threads)
    for threads in (1, 1, 2, None, 2, 1, None):
        fast.warm_up(threads)
    assert products == [1, 2, None]


def test_sparse_input_dense_matches_dense_math():
    """The zero-column shortcut must give the same parameters as the plain products."""
    rng = np.random.default_rng(0)
    X = rng.random((256, 50)).astype(np.float32)
    X[:, rng.choice(50, 30, replace=False)] = 0  # many all-zero columns, as in MNIST borders
    y = rng.integers(0, 3, 256)
    params = []
    for first in (fast.SparseInputDense, nn.Dense):
        m = nn.Sequential([first(50, 8), nn.ReLU(), nn.Dense(8, 3)], optimizer=nn.SGD(0.1, momentum=0.9), seed=1)
        m.fit(X, y, epochs=2, batch_size=64, progress=False)
        params.append(m.layers[0].params["W"].copy())
    np.testing.assert_allclose(params[0], params[1], rtol=1e-5, atol=1e-6)
    assert fast.SparseInputDense(50, 8).config()["type"] == "Dense"


def test_one_flat_buffer_holds_every_parameter():
    model = nn.Sequential([nn.Dense(4, 3), nn.ReLU(), nn.Dense(3, 2)], seed=0)
    params, grads = model._buffers
    assert params.size == model.n_parameters() == 4 * 3 + 3 + 3 * 2 + 2
    for layer in (model.layers[0], model.layers[2]):
        assert all(np.shares_memory(p, params) for p in layer.params.values())
        assert all(np.shares_memory(g, grads) for g in layer.grads.values())


def test_a_carried_choice_carries_again():
    clock = FakeClock()
    tuner = fast.ThreadTuner(candidates=[1, 2], probe_batches=2, rounds=2, min_block=0.0, min_interval=10.0,
                             clock=clock)
    _drive(tuner, clock, {1: 0.010, 2: 0.005}, 40)
    for _ in range(3):  # fit after fit within the interval: none probes
        tuner = fast.ThreadTuner(candidates=[1, 2], clock=clock, previous=tuner)
        with tuner:
            assert tuner._samples is None and tuner.current == 2
        clock.t += 1.0


def test_sparse_input_dense_behind_other_layers_passes_the_gradient_on():
    rng = np.random.default_rng(4)
    X = rng.random((128, 20)).astype(np.float32)
    model = nn.Sequential([nn.Dense(20, 20), nn.ReLU(), fast.SparseInputDense(20, 3)], seed=0)
    model.layers[0].params["b"][10:] = -100  # half the hidden units are zero in every row
    W0 = model.layers[0].params["W"].copy()
    model.fit(X, rng.integers(0, 3, 128), epochs=1, batch_size=64, progress=False)
    assert not np.array_equal(model.layers[0].params["W"], W0)
