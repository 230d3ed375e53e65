"""The tutorial's Network: its data format, its methods, and its accuracy on real MNIST."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from scratchpilot.nn import Network, load


def _mnist(shared_data, split):
    prefix = "train" if split == "train" else "t10k"
    images = gzip.open(shared_data / "mnist" / f"{prefix}-images-idx3-ubyte.gz").read()
    labels = gzip.open(shared_data / "mnist" / f"{prefix}-labels-idx1-ubyte.gz").read()
    X = np.frombuffer(images, np.uint8, offset=16).reshape(-1, 784).astype(np.float32) / 255
    return X, np.frombuffer(labels, np.uint8, offset=8).astype(np.int64)


def test_tutorial_format_and_shapes():
    rng = np.random.default_rng(0)
    net = Network([4, 3, 2], seed=0)
    assert [b.shape for b in net.biases] == [(3, 1), (2, 1)]
    assert [w.shape for w in net.weights] == [(3, 4), (2, 3)]
    training = [(rng.random((4, 1)), np.eye(2)[:, [i % 2]]) for i in range(8)]
    test = [(rng.random((4, 1)), i % 2) for i in range(6)]
    a = net.feedforward(training[0][0])
    assert a.shape == (2, 1)
    # the column form and the batch form agree
    np.testing.assert_allclose(net.feedforward(training[0][0].T)[0], a[:, 0], rtol=1e-6)
    nabla_b, nabla_w = net.backprop(*training[0])
    assert [b.shape for b in nabla_b] == [(3, 1), (2, 1)]
    assert [w.shape for w in nabla_w] == [(3, 4), (2, 3)]
    assert isinstance(net.evaluate(test), int) and 0 <= net.evaluate(test) <= 6
    np.testing.assert_allclose(net.cost_derivative(np.array([0.2, 0.9]), np.array([0.0, 1.0])), [0.2, -0.1])


def test_backprop_matches_the_tutorial_per_example_formulas():
    """Backprop written out as in network.py (column vectors, one example) gives the same gradient."""
    rng = np.random.default_rng(1)
    net = Network([5, 4, 3], seed=2)
    x, y = rng.random((5, 1)), np.eye(3)[:, [1]]
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    ws = [w.astype(np.float64) for w in net.weights]
    bs = [b.astype(np.float64) for b in net.biases]
    activation, activations, zs = x, [x], []
    for b, w in zip(bs, ws, strict=True):
        z = w @ activation + b
        zs.append(z)
        activation = sigmoid(z)
        activations.append(activation)
    delta = (activations[-1] - y) * sigmoid(zs[-1]) * (1 - sigmoid(zs[-1]))
    expect_b, expect_w = [None, delta], [None, delta @ activations[-2].T]
    sp = sigmoid(zs[-2]) * (1 - sigmoid(zs[-2]))
    delta = (ws[-1].T @ delta) * sp
    expect_b[0], expect_w[0] = delta, delta @ activations[0].T
    nabla_b, nabla_w = net.backprop(x, y)
    for got, want in zip(nabla_b + nabla_w, expect_b + expect_w, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_update_mini_batch_is_eta_over_m_times_the_sum():
    rng = np.random.default_rng(3)
    net = Network([3, 2], seed=0)
    batch = [(rng.random((3, 1)), np.eye(2)[:, [i % 2]]) for i in range(4)]
    w0, b0 = net.weights[0].copy(), net.biases[0].copy()
    sum_w, sum_b = np.zeros_like(w0), np.zeros_like(b0)
    for x, y in batch:
        nb, nw = net.backprop(x, y)
        sum_w += nw[0]
        sum_b += nb[0]
    net.update_mini_batch(batch, eta=3.0)
    np.testing.assert_allclose(net.weights[0], w0 - 3.0 / 4 * sum_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.biases[0], b0 - 3.0 / 4 * sum_b, rtol=1e-5, atol=1e-6)


def test_blog_network_learns_mnist(shared_data, tmp_path, capsys):
    """A short run of the tutorial's set-up (784-30-10, batch 10, η = 3.0) on real MNIST."""
    X, y = _mnist(shared_data, "train")
    X_test, y_test = _mnist(shared_data, "test")
    net = Network([784, 30, 10], seed=0)
    scores = net.SGD((X, y), epochs=10, mini_batch_size=10, eta=3.0, test_data=(X_test, y_test))
    assert "Epoch 9: " in capsys.readouterr().out
    assert scores[-1] / len(y_test) >= 0.94, scores
    net.save(tmp_path / "blog.npz")
    assert np.array_equal(load(tmp_path / "blog.npz").predict(X_test), net.model.predict(X_test))


def test_tutorial_list_of_pairs_training(shared_data):
    X, y = _mnist(shared_data, "test")
    training = [(X[i].reshape(784, 1), np.eye(10)[:, [y[i]]]) for i in range(2000)]
    test = [(X[i].reshape(784, 1), int(y[i])) for i in range(2000, 3000)]
    net = Network([784, 30, 10], seed=1)
    before = net.evaluate(test)
    net.SGD(training, epochs=3, mini_batch_size=10, eta=3.0)
    assert net.evaluate(test) > max(before, 700)


def test_bad_sizes():
    with pytest.raises(ValueError, match="at least an input and an output"):
        Network([784])


def test_readable_backprop_equals_the_vectorised_engine():
    """The tutorial's δ recursion on a batch of columns gives the engine's gradients (summed, not averaged)."""
    rng = np.random.default_rng(3)
    net = Network([6, 5, 4, 3], seed=4)
    X = rng.random((7, 6)).astype(np.float32)
    Y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 7)]
    nabla_b, nabla_w = net.backprop(X.T, Y.T)
    model = net.model
    out = model.forward(X, training=True)
    _, grad = model.loss.forward_backward(out, Y)
    model.backward(grad)
    dense = [layer for layer in model.layers if layer.params]
    for layer, nb, nw in zip(dense, nabla_b, nabla_w, strict=True):
        np.testing.assert_allclose(nw, layer.grads["W"].T * 7, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(nb[:, 0], layer.grads["b"] * 7, rtol=1e-4, atol=1e-6)


def test_update_mini_batch_is_one_engine_step():
    rng = np.random.default_rng(5)
    batch = [(rng.random((6, 1)), np.eye(3)[:, [i % 3]]) for i in range(10)]
    a, b = Network([6, 5, 3], seed=6), Network([6, 5, 3], seed=6)
    a.update_mini_batch(batch, eta=3.0)
    X = np.stack([x[:, 0] for x, _ in batch]).astype(np.float32)
    Y = np.stack([t[:, 0] for _, t in batch]).astype(np.float32)
    b.model.optimizer.lr = 3.0
    b.model.train_step(X, Y)
    for wa, wb in zip(a.weights + a.biases, b.weights + b.biases, strict=True):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a.weights[0], Network([6, 5, 3], seed=6).weights[0])  # it did move
