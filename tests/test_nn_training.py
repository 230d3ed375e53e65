"""Hand-computed optimiser steps, training behaviour, validation errors, import isolation."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from scratchpilot.nn import (
    SGD,
    Adam,
    CosineDecay,
    Dense,
    EarlyStopping,
    Quadratic,
    ReLU,
    Sequential,
    Sigmoid,
    StepDecay,
    Tanh,
)


def _one_unit(optimizer, w=(0.5, -0.25), b=0.1):
    """z = x·w + b, linear output, quadratic cost: every step can be done by hand."""
    model = Sequential([Dense(2, 1)], loss=Quadratic(), optimizer=optimizer, seed=0, dtype=np.float64)
    model.layers[0].params["W"][:, 0] = w
    model.layers[0].params["b"][:] = b
    return model


X1 = np.array([[1.0, 2.0], [3.0, -1.0]])
Y1 = np.array([[1.0], [0.0]])


def _hand_gradient(w, b):
    # C = 1/(2N) Σ (x·w + b − y)²  →  ∂C/∂w = 1/N Σ (a − y) x,  ∂C/∂b = 1/N Σ (a − y)
    a = X1 @ w + b
    err = a - Y1[:, 0]
    return (X1.T @ err) / 2, err.mean()


def test_one_sgd_step_by_hand():
    w, b, eta = np.array([0.5, -0.25]), 0.1, 0.1
    model = _one_unit(SGD(lr=eta))
    loss, _ = model.train_step(X1, Y1)
    gw, gb = _hand_gradient(w, b)
    a = X1 @ w + b
    assert loss == pytest.approx(0.5 * np.mean((a - Y1[:, 0]) ** 2))
    np.testing.assert_allclose(model.layers[0].params["W"][:, 0], w - eta * gw, rtol=1e-12)
    assert model.layers[0].params["b"][0] == pytest.approx(b - eta * gb)
    # the numbers themselves, for a reader checking by pencil: a = (0.1, 1.85), err = (−0.9, 1.85)
    np.testing.assert_allclose(gw, [2.325, -1.825])
    assert gb == pytest.approx(0.475)


def test_momentum_and_nesterov_two_steps_by_hand():
    for nesterov in (False, True):
        eta, mu = 0.05, 0.9
        model = _one_unit(SGD(lr=eta, momentum=mu, nesterov=nesterov))
        w, b = np.array([0.5, -0.25]), 0.1
        vw, vb = np.zeros(2), 0.0
        for _ in range(2):
            model.train_step(X1, Y1)
            gw, gb = _hand_gradient(w, b)
            vw, vb = mu * vw - eta * gw, mu * vb - eta * gb
            if nesterov:
                w, b = w + mu * vw - eta * gw, b + mu * vb - eta * gb
            else:
                w, b = w + vw, b + vb
        np.testing.assert_allclose(model.layers[0].params["W"][:, 0], w, rtol=1e-12)
        assert model.layers[0].params["b"][0] == pytest.approx(b, rel=1e-12)


def test_adam_two_steps_by_hand():
    eta, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    model = _one_unit(Adam(lr=eta, beta1=b1, beta2=b2, eps=eps))
    w, b = np.array([0.5, -0.25]), 0.1
    m, v = np.zeros(3), np.zeros(3)
    for t in (1, 2):
        model.train_step(X1, Y1)
        gw, gb = _hand_gradient(w, b)
        g = np.append(gw, gb)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        step = eta * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        w, b = w - step[:2], b - step[2]
    np.testing.assert_allclose(model.layers[0].params["W"][:, 0], w, rtol=1e-9)
    assert model.layers[0].params["b"][0] == pytest.approx(b, rel=1e-9)


def test_weight_decay_applies_to_weights_not_biases():
    eta, lam = 0.1, 0.5
    model = _one_unit(SGD(lr=eta, weight_decay=lam))
    w, b = np.array([0.5, -0.25]), 0.1
    model.train_step(X1, Y1)
    gw, gb = _hand_gradient(w, b)
    np.testing.assert_allclose(model.layers[0].params["W"][:, 0], w - eta * (gw + lam * w), rtol=1e-12)
    assert model.layers[0].params["b"][0] == pytest.approx(b - eta * gb)


def test_schedules():
    step = StepDecay(step_size=2, gamma=0.5)
    assert [step(e) for e in range(5)] == [1, 1, 0.5, 0.5, 0.25]
    cos = CosineDecay(total_epochs=4, min_factor=0.1)
    assert cos(0) == pytest.approx(1.0)
    assert cos(2) == pytest.approx(0.1 + 0.9 * 0.5)
    assert cos(4) == pytest.approx(0.1) and cos(9) == pytest.approx(0.1)
    opt = SGD(lr=0.2, schedule=step)
    opt.start_epoch(3)
    assert opt.lr == pytest.approx(0.1)


def test_xor_is_learned():
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    y = np.array([0, 1, 1, 0])
    model = Sequential([Dense(2, 8, init="glorot"), Tanh(), Dense(8, 2, init="glorot")],
                       optimizer=SGD(lr=0.5, momentum=0.9), seed=0)
    history = model.fit(X, y, epochs=300, batch_size=4, progress=False)
    assert list(model.predict(X)) == [0, 1, 1, 0]
    assert history["loss"][-1] < 0.05 < history["loss"][0]


def test_fit_is_reproducible_with_seed_and_logs_history():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 4)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)

    def run():
        m = Sequential([Dense(4, 8), ReLU(), Dense(8, 2)], optimizer=SGD(0.1, momentum=0.9), seed=42)
        return m, m.fit(X, y, epochs=3, batch_size=16, validation_data=(X[:50], y[:50]), progress=False)

    (m1, h1), (m2, h2) = run(), run()
    assert np.array_equal(m1.layers[0].params["W"], m2.layers[0].params["W"])
    assert h1["loss"] == h2["loss"]
    assert set(h1) >= {"loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds"}
    assert all(len(v) == 3 for v in h1.values())
    assert m1.layers[0].params["W"].dtype == np.float32


def test_early_stopping_restores_best():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 3)).astype(np.float32)
    y = rng.integers(0, 2, 64)  # pure noise: validation loss soon gets worse
    Xv, yv = rng.standard_normal((64, 3)).astype(np.float32), rng.integers(0, 2, 64)
    model = Sequential([Dense(3, 64), ReLU(), Dense(64, 2)], optimizer=SGD(0.5, momentum=0.9), seed=0)
    stopper = EarlyStopping(patience=2)
    history = model.fit(X, y, epochs=200, batch_size=8, validation_data=(Xv, yv), early_stopping=stopper,
                        progress=False)
    assert len(history["loss"]) < 200
    assert len(history["loss"]) == stopper.best_epoch + 1 + 2
    assert model.evaluate(Xv, yv)["loss"] == pytest.approx(min(history["val_loss"]), rel=1e-5)


def test_early_stopping_can_restore_the_best_epoch_after_a_full_fit():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 3)).astype(np.float32)
    y = rng.integers(0, 2, 64)
    Xv, yv = rng.standard_normal((64, 3)).astype(np.float32), rng.integers(0, 2, 64)
    model = Sequential([Dense(3, 64), ReLU(), Dense(64, 2)], optimizer=SGD(0.5, momentum=0.9), seed=0)
    stopper = EarlyStopping(patience=50)  # never triggers in 12 epochs
    history = model.fit(X, y, epochs=12, batch_size=8, validation_data=(Xv, yv), early_stopping=stopper,
                        progress=False)
    assert len(history["loss"]) == 12 and stopper.best_epoch < 11
    assert model.evaluate(Xv, yv)["loss"] == pytest.approx(history["val_loss"][-1], rel=1e-5)
    stopper.restore(model)
    assert model.evaluate(Xv, yv)["loss"] == pytest.approx(min(history["val_loss"]), rel=1e-5)


def test_callback_can_stop():
    X = np.zeros((10, 2), dtype=np.float32)
    y = np.zeros(10, dtype=int)
    model = Sequential([Dense(2, 2)], seed=0)
    seen = []
    model.fit(X, y, epochs=10, progress=False, callbacks=[lambda m, e, logs: seen.append(e) or e == 2])
    assert seen == [0, 1, 2]


def test_divergence_is_reported():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((32, 2)).astype(np.float32) * 1e3
    y = rng.standard_normal((32, 1)).astype(np.float32) * 1e3
    model = Sequential([Dense(2, 16), Dense(16, 1)], loss=Quadratic(), optimizer=SGD(lr=10.0), seed=0)
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="lower the learning rate"):
        model.fit(X, y, epochs=5, batch_size=8, progress=False)


@pytest.mark.parametrize("X, y, match", [
    (np.zeros((4, 3)), np.zeros(4, int), r"expects \(N, 2\)"),
    (np.zeros(4), np.zeros(4, int), "batch-major"),
    (np.zeros((4, 2)), np.zeros(5, int), "5 rows but X has 4"),
    (np.zeros((4, 2)), np.array([0, 1, 2, 3]), r"labels must be in 0\.\.2"),
    (np.zeros((4, 2)), np.array([0, -1, 0, 0]), r"labels must be in 0\.\.2"),
    (np.full((4, 2), np.nan), np.zeros(4, int), "NaN"),
    (np.zeros((4, 2)), np.array([0.5, 1, 0, 0]), "integer class labels"),
    (np.zeros((4, 2)), np.zeros((4, 2)), r"targets \(N, 3\)"),
])
def test_bad_training_input_is_refused_clearly(X, y, match):
    model = Sequential([Dense(2, 3)], seed=0)
    with pytest.raises(ValueError, match=match):
        model.fit(X, y, epochs=1, progress=False)


def test_mismatched_layer_widths_are_refused():
    with pytest.raises(ValueError, match=r"layer 2 \(Dense\(n_in=5.*expects inputs of shape \(5,\).*"
                                         r"layer 1 \(Sigmoid\(\)\) gives \(4,\)"):
        Sequential([Dense(3, 4), Sigmoid(), Dense(5, 2)])


def test_import_nn_pulls_in_only_numpy():
    code = ("import sys; before = set(sys.modules); import scratchpilot.nn; "
            "new = {m.split('.')[0] for m in set(sys.modules) - before}; print(sorted(new))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    roots = set(eval(out))  # a list literal printed by the child
    allowed = {"scratchpilot", "numpy"}
    third_party = {m for m in roots - allowed if m not in sys.stdlib_module_names and not m.startswith("_")}
    assert not third_party, f"import scratchpilot.nn imported {third_party}"
    sub = subprocess.run([sys.executable, "-c", "import sys, scratchpilot.nn; "
                          "print(sorted(m for m in sys.modules if m.startswith('scratchpilot')))"],
                         capture_output=True, text=True, check=True).stdout
    assert all(m == "scratchpilot" or m.startswith("scratchpilot.nn") for m in eval(sub))


def test_cosine_default_half_period():
    assert CosineDecay(10)(5) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


def test_schedule_spans_one_fit_call():
    X = np.zeros((8, 2), dtype=np.float32)
    y = np.zeros(8, dtype=int)
    model = Sequential([Dense(2, 2)], optimizer=SGD(lr=0.4, schedule=StepDecay(step_size=1, gamma=0.5)), seed=0)
    model.fit(X, y, epochs=3, progress=False)
    model.fit(X, y, epochs=2, progress=False)  # fine-tuning starts the schedule again
    assert model.history["lr"] == pytest.approx([0.4, 0.2, 0.1, 0.4, 0.2])


def test_each_epoch_visits_every_example_once_in_batches(monkeypatch):
    import scratchpilot.nn.model as model_module

    monkeypatch.setattr(model_module, "GATHER_BYTES", 3 * 4 * 8)  # 3 batches of 4 rows of 8 bytes per gather
    X = np.arange(34, dtype=np.float32).reshape(34, 1) * np.ones((1, 2), np.float32)
    y = np.zeros(34, dtype=int)
    model = Sequential([Dense(2, 2)], seed=0)
    seen = []
    real_step = model.train_step
    model.train_step = lambda xb, yb: seen.append(xb[:, 0].astype(int).tolist()) or real_step(xb, yb)
    model.fit(X, y, epochs=2, batch_size=4, progress=False)
    assert [len(batch) for batch in seen] == ([4] * 8 + [2]) * 2
    for epoch in (seen[:9], seen[9:]):
        assert sorted(v for batch in epoch for v in batch) == list(range(34))
    assert seen[:9] != seen[9:]  # reshuffled
