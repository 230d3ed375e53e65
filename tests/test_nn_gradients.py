"""Backprop against finite differences, in float64, for every layer and loss."""

from __future__ import annotations

import numpy as np
import pytest

from scratchpilot.nn import (
    Dense,
    Dropout,
    Flatten,
    LeakyReLU,
    Quadratic,
    ReLU,
    Sequential,
    Sigmoid,
    SigmoidCrossEntropy,
    SoftmaxCrossEntropy,
    Tanh,
    gradient_check,
)

TOL = 1e-7


def _data(n=7, d=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = rng.integers(0, classes, n)
    return X, y


@pytest.mark.parametrize("activation", [Sigmoid, Tanh, LeakyReLU, ReLU])
@pytest.mark.parametrize("loss", [SoftmaxCrossEntropy, Quadratic, SigmoidCrossEntropy])
def test_dense_activation_loss_gradients(activation, loss):
    X, y = _data()
    if activation is ReLU:
        X = X + 0.3  # keep pre-activations away from the kink, where the derivative is undefined
    model = Sequential([Dense(5, 4, init="glorot"), activation(), Dense(4, 3, init="glorot")],
                       loss=loss(), seed=3, dtype=np.float64)
    errors = gradient_check(model, X, y)
    assert max(errors.values()) < TOL, errors


def test_dense_biases_nonzero_and_dense_targets():
    X, _ = _data()
    rng = np.random.default_rng(1)
    targets = rng.random((7, 3))
    model = Sequential([Dense(5, 3, init="normal"), Sigmoid()], loss=Quadratic(), seed=0, dtype=np.float64)
    assert np.any(model.layers[0].params["b"] != 0)
    errors = gradient_check(model, X, targets)
    assert max(errors.values()) < TOL, errors


def test_softmax_cross_entropy_one_hot_equals_labels():
    X, y = _data()
    model = Sequential([Dense(5, 3)], seed=0, dtype=np.float64)
    out = model.forward(X)
    loss_int, grad_int = SoftmaxCrossEntropy().forward_backward(out, y)
    loss_hot, grad_hot = SoftmaxCrossEntropy().forward_backward(out, np.eye(3)[y])
    assert loss_int == pytest.approx(loss_hot, rel=1e-12)
    np.testing.assert_allclose(grad_int, grad_hot, rtol=1e-12)
    assert max(gradient_check(model, X, np.eye(3)[y]).values()) < TOL


def test_flatten_gradient():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((4, 2, 3))
    y = rng.integers(0, 2, 4)
    model = Sequential([Flatten(), Dense(6, 2)], seed=0, dtype=np.float64)
    errors = gradient_check(model, X, y)
    assert max(errors.values()) < TOL, errors
    assert errors["input"] < TOL


def test_dropout_gradient_with_fixed_mask():
    """With the mask held fixed, dropout is linear: backprop must match finite differences."""
    X, y = _data()
    drop = Dropout(0.4)
    model = Sequential([Dense(5, 6), Tanh(), drop, Dense(6, 3)], seed=0, dtype=np.float64)
    state = np.random.default_rng(9).bit_generator.state

    def forward_with_mask():
        drop._rng = np.random.default_rng()
        drop._rng.bit_generator.state = state
        return model.forward(X, training=True)

    def loss():
        return model.loss.value(forward_with_mask(), y)

    out = forward_with_mask()
    _, grad = model.loss.forward_backward(out, y)
    for layer in reversed(model.layers):
        grad = layer.backward(grad)
    from scratchpilot.nn import numerical_gradient, relative_error

    W = model.layers[0].params["W"]
    assert relative_error(model.layers[0].grads["W"], numerical_gradient(loss, W)) < TOL
    # about 40% of units dropped, survivors scaled by 1/(1-0.4)
    mask = drop._mask
    np.testing.assert_allclose(np.unique(mask), [0.0, 1 / 0.6])
    assert 0.15 < np.mean(mask == 0) < 0.65


def test_dropout_is_identity_at_inference():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert np.array_equal(Dropout(0.5).forward(x, training=False), x)


def test_sigmoid_cross_entropy_stable_for_huge_logits():
    out = np.array([[1000.0, -1000.0]])
    loss, grad = SigmoidCrossEntropy().forward_backward(out, np.array([[1.0, 0.0]]))
    assert np.isfinite(loss) and loss == pytest.approx(0.0, abs=1e-12)
    loss, grad = SigmoidCrossEntropy().forward_backward(out, np.array([[0.0, 1.0]]))
    assert loss == pytest.approx(2000.0)
    assert np.all(np.isfinite(grad))


def test_softmax_stable_for_huge_logits():
    out = np.array([[1000.0, 0.0, -1000.0]], dtype=np.float32)
    loss, grad = SoftmaxCrossEntropy().forward_backward(out, np.array([2]))
    assert loss == pytest.approx(2000.0)
    assert np.all(np.isfinite(grad))
