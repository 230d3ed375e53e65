"""Convolution, pooling and normalisation layers: direct loop references and float64 gradient checks."""

from __future__ import annotations

import numpy as np
import pytest

from scratchpilot import nn
from scratchpilot.nn import conv as conv_module

TOL = 1e-7


def _conv_reference(x, W, b, stride, pads):
    """The definition, one output value at a time: y[n,h,w,o] = b[o] + Σ x[n, s·h+i, s·w+j, c] W[i,j,c,o]."""
    (t, bo), (l, r) = pads
    xp = np.pad(x, ((0, 0), (t, bo), (l, r), (0, 0)))
    kh, kw, _, cout = W.shape
    ho = (xp.shape[1] - kh) // stride + 1
    wo = (xp.shape[2] - kw) // stride + 1
    y = np.zeros((x.shape[0], ho, wo, cout))
    for n in range(x.shape[0]):
        for h in range(ho):
            for w in range(wo):
                patch = xp[n, h * stride:h * stride + kh, w * stride:w * stride + kw, :]
                for o in range(cout):
                    y[n, h, w, o] = b[o] + np.sum(patch * W[:, :, :, o])
    return y


def _conv_input_grad_reference(x_shape, W, g, stride, pads):
    """∂L/∂x by the chain rule, one output value at a time (the scatter the layer avoids)."""
    (t, bo), (l, r) = pads
    n, h, w, c = x_shape
    dxp = np.zeros((n, h + t + bo, w + l + r, c))
    kh, kw = W.shape[:2]
    for i in range(n):
        for oh in range(g.shape[1]):
            for ow in range(g.shape[2]):
                dxp[i, oh * stride:oh * stride + kh, ow * stride:ow * stride + kw, :] += W @ g[i, oh, ow]
    return dxp[:, t:t + h, l:l + w]


@pytest.mark.parametrize("stride, padding", [(1, "valid"), (1, "same"), (2, "same"), (2, "valid"), (1, 2)])
def test_conv_forward_and_backward_equal_the_loop_reference(stride, padding):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 6, 3))
    layer = nn.Conv2D(3, 4, kernel=3, stride=stride, padding=padding)
    layer.build(rng, np.float64)
    layer.params["b"][...] = rng.standard_normal(4)
    pads = conv_module.conv_padding(padding, (3, 3), (stride, stride), (7, 6), "test")
    y = layer.forward(x, training=True)
    np.testing.assert_allclose(y, _conv_reference(x, layer.params["W"], layer.params["b"], stride, pads),
                               rtol=1e-12, atol=1e-12)
    assert y.shape[1:] == layer.output_shape((7, 6, 3))
    g = rng.standard_normal(y.shape)
    dx = layer.backward(g)
    np.testing.assert_allclose(dx, _conv_input_grad_reference(x.shape, layer.params["W"], g, stride, pads),
                               rtol=1e-12, atol=1e-12)


def test_same_padding_gives_ceil_of_size_over_stride():
    layer = nn.Conv2D(1, 1, kernel=3, stride=2, padding="same")
    assert layer.output_shape((7, 8, 1)) == (4, 4, 1)
    assert nn.Conv2D(1, 1, kernel=5, padding="same").output_shape((28, 28, 1)) == (28, 28, 1)


def test_conv_blocks_and_large_batches_give_the_same_answer(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 6, 6, 2)).astype(np.float32)
    layer = nn.Conv2D(2, 3, kernel=3, padding="same")
    layer.build(rng, np.float32)
    whole = layer.forward(x, training=True)
    g = rng.standard_normal(whole.shape).astype(np.float32)
    dx_whole = layer.backward(g).copy()
    dW_whole = layer.grads["W"].copy()
    # blocks of 2 images of 6·6 positions × 18 columns, and a column matrix too big to keep whole: 5 blocks,
    # and the backward pass gathers the columns again
    monkeypatch.setattr(conv_module, "CACHE_BLOCK_ELEMENTS", 2 * 36 * 18)
    monkeypatch.setattr(conv_module, "MAX_COLUMN_ELEMENTS", 2 * 36 * 18)
    chunked = layer.forward(x, training=True)
    assert layer._cache[3] is None  # the column matrix was not kept whole
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.backward(g), dx_whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.grads["W"], dW_whole, rtol=1e-5, atol=1e-5)


def test_depthwise_forward_equals_a_loop():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 5, 3))
    layer = nn.DepthwiseConv2D(3, kernel=3, stride=2, padding="same")
    layer.build(rng, np.float64)
    y = layer.forward(x)
    pads = conv_module.conv_padding("same", (3, 3), (2, 2), (6, 5), "test")
    # a depthwise conv is a full conv whose kernel is zero between different channels
    W_full = np.zeros((3, 3, 3, 3))
    for c in range(3):
        W_full[:, :, c, c] = layer.params["W"][:, :, c]
    np.testing.assert_allclose(y, _conv_reference(x, W_full, layer.params["b"], 2, pads), atol=1e-12)


def test_pooling_forward_equals_a_loop():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 7, 6, 3))
    for cls, reduce in ((nn.MaxPool2D, np.max), (nn.AvgPool2D, np.mean)):
        for pool, stride in ((2, None), (3, 2)):
            layer = cls(pool, stride)
            y = layer.forward(x)
            s = stride or pool
            ho, wo = (7 - pool) // s + 1, (6 - pool) // s + 1
            assert y.shape == (2, ho, wo, 3) and y.shape[1:] == layer.output_shape((7, 6, 3))
            for h in range(ho):
                for w in range(wo):
                    expected = reduce(x[:, h * s:h * s + pool, w * s:w * s + pool, :], axis=(1, 2))
                    np.testing.assert_allclose(y[:, h, w, :], expected, atol=1e-12)
    np.testing.assert_allclose(nn.GlobalAvgPool2D().forward(x), x.mean(axis=(1, 2)))


def test_max_pool_gradient_goes_to_the_maximum_only():
    x = np.array([[1.0, 5.0], [2.0, 3.0]]).reshape(1, 2, 2, 1)
    layer = nn.MaxPool2D(2)
    layer.forward(x)
    dx = layer.backward(np.full((1, 1, 1, 1), 7.0))
    np.testing.assert_array_equal(dx.reshape(2, 2), [[0.0, 7.0], [0.0, 0.0]])


def _check(layers, x, y, input_shape, training=False, loss=None):
    model = nn.Sequential(layers, loss=loss or nn.SoftmaxCrossEntropy(), seed=5, dtype=np.float64,
                          input_shape=input_shape)
    errors = nn.gradient_check(model, x, y, training=training)
    assert max(errors.values()) < TOL, errors
    return model, errors


@pytest.mark.parametrize("stride, padding", [(1, "valid"), (1, "same"), (2, "same"), (2, 1)])
def test_conv_gradients(stride, padding):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 6, 5, 2))
    y = rng.integers(0, 3, 3)
    conv = nn.Conv2D(2, 3, kernel=3, stride=stride, padding=padding, init="glorot")
    out = conv.output_shape((6, 5, 2))
    layers = [conv, nn.Tanh(), nn.Flatten(), nn.Dense(int(np.prod(out)), 3, init="glorot")]
    _check(layers, x, y, (6, 5, 2))


@pytest.mark.parametrize("stride, padding", [(1, "same"), (2, "same"), (1, "valid")])
def test_depthwise_gradients(stride, padding):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 6, 6, 2))
    y = rng.integers(0, 3, 3)
    dw = nn.DepthwiseConv2D(2, kernel=3, stride=stride, padding=padding, init="glorot")
    layers = [dw, nn.Tanh(), nn.GlobalAvgPool2D(), nn.Dense(2, 3, init="glorot")]
    _check(layers, x, y, (6, 6, 2))


@pytest.mark.parametrize("pool_cls", [nn.MaxPool2D, nn.AvgPool2D])
@pytest.mark.parametrize("pool, stride", [(2, None), (3, 2)])
def test_pooling_gradients(pool_cls, pool, stride):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 7, 7, 2))  # continuous values: no ties for the max
    y = rng.integers(0, 3, 2)
    layers = [nn.Conv2D(2, 2, kernel=2, init="glorot"), pool_cls(pool, stride), nn.Flatten()]
    shape = layers[1].output_shape(layers[0].output_shape((7, 7, 2)))
    layers.append(nn.Dense(int(np.prod(shape)), 3, init="glorot"))
    _check(layers, x, y, (7, 7, 2))


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_gradients_on_conv_channels_and_dense_features(training):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 5, 5, 2))
    y = rng.integers(0, 3, 4)
    layers = [nn.Conv2D(2, 3, kernel=3, padding="same", init="glorot"), nn.BatchNorm(3), nn.Tanh(),
              nn.Flatten(), nn.Dense(75, 6, init="glorot"), nn.BatchNorm(6), nn.Tanh(), nn.Dense(6, 3)]
    model = nn.Sequential(layers, seed=5, dtype=np.float64, input_shape=(5, 5, 2))
    for bn in (layers[1], layers[5]):  # not the identity: the check must see γ, β and running statistics
        bn.params["gamma"][...] = rng.uniform(0.5, 1.5, bn.n_features)
        bn.params["beta"][...] = rng.standard_normal(bn.n_features)
        bn.state["running_mean"][...] = rng.standard_normal(bn.n_features)
        bn.state["running_var"][...] = rng.uniform(0.5, 2.0, bn.n_features)
    errors = nn.gradient_check(model, x, y, training=training)
    if training:  # batch statistics cancel a bias just before them: both gradients are zero up to rounding
        assert np.abs(layers[0].grads["b"]).max() < 1e-12
        errors.pop("p0.b")
        errors.pop("p4.b")
    assert max(errors.values()) < TOL, errors
    assert {"p1.gamma", "p1.beta", "p5.gamma", "p5.beta"} <= set(errors)


def test_batchnorm_training_uses_batch_statistics_and_updates_running_ones():
    rng = np.random.default_rng(8)
    x = rng.normal(3.0, 2.0, (64, 4))
    bn = nn.BatchNorm(4, momentum=0.5)
    bn.build(rng, np.float64)
    y = bn.forward(x, training=True)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(y.std(axis=0), 1, atol=1e-4)
    np.testing.assert_allclose(bn.state["running_mean"], 0.5 * x.mean(axis=0))
    np.testing.assert_allclose(bn.state["running_var"], 0.5 + 0.5 * x.var(axis=0, ddof=1))
    before = bn.state["running_mean"].copy()
    inference = bn.forward(x, training=False)
    np.testing.assert_array_equal(bn.state["running_mean"], before)
    expected = (x - before) / np.sqrt(bn.state["running_var"] + bn.eps)
    np.testing.assert_allclose(inference, expected)


def test_relu6_reshape_and_flatten_of_any_rank():
    x = np.array([[-1.0, 3.0, 7.0, 6.0]])
    layer = nn.ReLU6()
    np.testing.assert_array_equal(layer.forward(x), [[0.0, 3.0, 6.0, 6.0]])
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), [[0.0, 1.0, 0.0, 0.0]])
    r = nn.Reshape((2, 2, 1))
    assert r.forward(x).shape == (1, 2, 2, 1) and r.backward(np.ones((1, 2, 2, 1))).shape == (1, 4)
    assert r.output_shape((4,)) == (2, 2, 1) and nn.Reshape((-1, 2)).output_shape((3, 2, 2)) == (6, 2)
    with pytest.raises(ValueError, match="cannot reshape"):
        r.output_shape((5,))
    f = nn.Flatten()
    assert f.forward(np.zeros((2, 3, 4, 5, 6))).shape == (2, 360) and f.output_shape((3, 4, 5, 6)) == (360,)


def test_relu6_gradient():
    rng = np.random.default_rng(9)
    x = rng.uniform(-3, 9, (5, 4))
    x[np.abs(x) < 0.05] += 0.2
    x[np.abs(x - 6) < 0.05] += 0.2
    layers = [nn.ReLU6(), nn.Dense(4, 3, init="glorot")]
    _check(layers, x, rng.integers(0, 3, 5), (4,))


def test_layers_refuse_bad_arguments_with_their_name():
    with pytest.raises(ValueError, match="Conv2D: out_channels"):
        nn.Conv2D(1, 0)
    with pytest.raises(ValueError, match="padding"):
        nn.Conv2D(1, 2, padding="full")
    with pytest.raises(ValueError, match="DepthwiseConv2D: stride"):
        nn.DepthwiseConv2D(2, stride=0)
    with pytest.raises(ValueError, match="MaxPool2D: pool"):
        nn.MaxPool2D((2, 2, 2))
    with pytest.raises(ValueError, match="BatchNorm: momentum"):
        nn.BatchNorm(3, momentum=1.0)


def test_max_pool_ties_send_the_gradient_once():
    x = np.ones((1, 4, 4, 2))
    layer = nn.MaxPool2D(2)
    layer.forward(x)
    dx = layer.backward(np.ones((1, 2, 2, 2)))
    assert dx.sum() == 8 and dx[0, 0, 0, 0] == 1 and dx[0, 1, 1, 0] == 0  # the first of each window
    overlapping = nn.MaxPool2D(3, 1)
    overlapping.forward(x)
    assert overlapping.backward(np.ones((1, 2, 2, 2))).sum() == 8
