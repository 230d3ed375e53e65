"""Models you can build, cut, freeze and inspect: shapes checked at build time, weights kept, frozen layers."""

from __future__ import annotations

import numpy as np
import pytest

from scratchpilot import nn


def _data(n=96, d=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)
    return X, y


def _small_cnn(seed=0):
    layers = [nn.Conv2D(1, 4, 3, padding="same"), nn.BatchNorm(4), nn.ReLU(), nn.MaxPool2D(2),
              nn.Flatten(), nn.Dense(4 * 4 * 4, 5), nn.ReLU(), nn.Dense(5, 3)]
    return nn.Sequential(layers, optimizer=nn.SGD(0.05, momentum=0.9), seed=seed, input_shape=(8, 8, 1))


def test_shapes_are_worked_out_and_a_misfit_names_the_layer_and_both_shapes():
    model = _small_cnn()
    assert model.output_shapes[:5] == [(8, 8, 4), (8, 8, 4), (8, 8, 4), (4, 4, 4), (64,)]
    assert model.n_inputs == 64 and model.n_outputs == 3
    with pytest.raises(ValueError, match=r"layer 3 \(Dense.*expects inputs of shape \(10,\).*"
                                         r"layer 2 \(MaxPool2D.*gives \(4, 4, 4\)"):
        nn.Sequential([nn.Conv2D(1, 4, 3, padding="same"), nn.ReLU(), nn.MaxPool2D(2), nn.Dense(10, 3)],
                      input_shape=(8, 8, 1))
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2D.*expects images \(H, W, 3\).*the input gives"):
        nn.Sequential([nn.Conv2D(3, 4, 3)], input_shape=(8, 8, 1))
    with pytest.raises(ValueError, match="X has shape"):
        model.predict(np.zeros((2, 64), dtype=np.float32))


def test_summary_lists_shapes_parameter_counts_and_trainable_flags():
    model = _small_cnn()
    model.layers[0].trainable = False
    text = model.summary()
    assert "Conv2D(1, 4, 3x3, same)" in text and "(N, 8, 8, 4)" in text and "(N, 3)" in text
    conv_line = next(line for line in text.splitlines() if line.lstrip().startswith("0 "))
    assert conv_line.split()[-2:] == ["40", "no"]
    assert f"total={model.n_parameters():,d}" in text and "frozen=40" in text


def test_a_model_built_from_trained_layers_keeps_their_weights_and_both_models_stay_correct():
    X, y = _data()
    old = nn.Sequential([nn.Dense(6, 3), nn.ReLU(), nn.Dense(3, 3)], optimizer=nn.SGD(0.1), seed=1)
    old.fit(X, y, epochs=3, batch_size=16, progress=False)
    before_old = old.predict_proba(X)
    W = old.layers[0].params["W"].copy()
    new = nn.Sequential(old.layers[:2] + [nn.Dense(3, 5)], seed=2)
    np.testing.assert_array_equal(new.layers[0].params["W"], W)  # not re-initialised
    np.testing.assert_array_equal(old.predict_proba(X), before_old)
    # the layers are shared (as in Keras): training the old model moves them for both, and each model's
    # optimiser updates the weights its forward pass uses
    old.fit(X, y, epochs=2, batch_size=16, progress=False)
    assert not np.array_equal(old.layers[0].params["W"], W)
    np.testing.assert_array_equal(new.layers[0].params["W"], old.layers[0].params["W"])
    assert old.evaluate(X, y)["accuracy"] >= 0.6
    hidden = np.maximum(X @ old.layers[0].params["W"] + old.layers[0].params["b"], 0)
    np.testing.assert_allclose(new.forward(X), hidden @ new.layers[2].params["W"] + new.layers[2].params["b"],
                               rtol=1e-5, atol=1e-6)
    new.fit(X, y % 5, epochs=1, batch_size=16, progress=False)  # and the new model trains its own head
    assert np.isfinite(new.history["loss"][-1])


def test_cut_and_freeze_keeps_the_old_layers_outputs_bit_exact():
    rng = np.random.default_rng(3)
    X = rng.random((64, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    base = _small_cnn(seed=4)
    base.fit(X, y, epochs=2, batch_size=16, progress=False)
    body = base.layers[:5]
    for layer in body:
        layer.trainable = False
    features = nn.Sequential(body, input_shape=(8, 8, 1))
    before = features.forward(X).copy()
    params_before = [p.copy() for layer in body for p in list(layer.params.values()) + list(layer.state.values())]
    head = nn.Sequential(body + [nn.Dense(64, 4)], optimizer=nn.SGD(0.1, momentum=0.9), seed=5,
                         input_shape=(8, 8, 1))
    assert head.n_parameters(trainable_only=True) == 64 * 4 + 4
    head.fit(X, y, epochs=3, batch_size=16, progress=False)
    np.testing.assert_array_equal(features.forward(X), before)  # BatchNorm's statistics did not move either
    after = [p for layer in body for p in list(layer.params.values()) + list(layer.state.values())]
    for a, b in zip(after, params_before, strict=True):
        np.testing.assert_array_equal(a, b)
    assert head.history["loss"][-1] < head.history["loss"][0]


def test_a_frozen_layer_gets_no_gradient_and_backprop_stops_below_the_lowest_trainable_layer():
    X, y = _data()
    model = nn.Sequential([nn.Dense(6, 4), nn.ReLU(), nn.Dense(4, 4), nn.ReLU(), nn.Dense(4, 3)], seed=0)
    first, middle = model.layers[0], model.layers[2]
    first.trainable = False
    calls = []
    original = first.backward
    first.backward = lambda g, input_grad=True: calls.append(1) or original(g, input_grad)
    model.train_step(X[:8], y[:8])
    assert calls == []  # nothing below the lowest trainable layer runs backward
    middle.trainable = False
    first.trainable = True
    W_middle = middle.params["W"].copy()
    first.grads["W"][...] = 0
    model.train_step(X[:8], y[:8])
    assert calls == [1] and np.abs(first.grads["W"]).sum() > 0  # gradient flows through the frozen middle
    np.testing.assert_array_equal(middle.params["W"], W_middle)


def test_frozen_layer_gradient_check():
    rng = np.random.default_rng(6)
    X, y = rng.standard_normal((5, 4)), rng.integers(0, 3, 5)
    model = nn.Sequential([nn.Dense(4, 5, init="glorot"), nn.Tanh(), nn.Dense(5, 4, init="glorot"), nn.Tanh(),
                           nn.Dense(4, 3)], seed=0, dtype=np.float64)
    model.layers[2].trainable = False
    errors = nn.gradient_check(model, X, y)
    assert "p2.W" not in errors and max(errors.values()) < 1e-7, errors


def test_frozen_weights_are_not_decayed_or_moved_by_momentum():
    X, y = _data()
    model = nn.Sequential([nn.Dense(6, 4), nn.ReLU(), nn.Dense(4, 3)],
                          optimizer=nn.SGD(0.1, momentum=0.9, weight_decay=0.01), seed=0)
    model.fit(X, y, epochs=1, batch_size=16, progress=False)  # momentum now non-zero everywhere
    model.layers[0].trainable = False
    W = model.layers[0].params["W"].copy()
    model.fit(X, y, epochs=1, batch_size=16, progress=False)
    np.testing.assert_array_equal(model.layers[0].params["W"], W)


def test_save_load_round_trip_of_every_new_layer(tmp_path):
    rng = np.random.default_rng(7)
    X = rng.random((32, 8, 8, 2)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    layers = [nn.Conv2D(2, 4, 3, stride=2, padding="same"), nn.BatchNorm(4), nn.ReLU6(),
              nn.DepthwiseConv2D(4, 3, padding=1), nn.AvgPool2D(2), nn.MaxPool2D(1), nn.GlobalAvgPool2D(),
              nn.Reshape((2, 2)), nn.Flatten(), nn.BatchNorm(4), nn.Dense(4, 3)]
    model = nn.Sequential(layers, seed=0, input_shape=(8, 8, 2))
    model.fit(X, y, epochs=2, batch_size=8, progress=False)
    model.layers[3].trainable = False
    assert np.abs(model.layers[1].state["running_mean"]).sum() > 0
    model.save(tmp_path / "m.npz")
    again = nn.load(tmp_path / "m.npz")
    assert again.input_shape == (8, 8, 2) and again.summary() == model.summary()
    assert not again.layers[3].trainable
    np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))
    np.testing.assert_array_equal(again.layers[1].state["running_var"], model.layers[1].state["running_var"])


def test_ensemble_averages_probabilities_and_saves_as_one_file(tmp_path):
    X, y = _data()
    members = []
    for seed in (0, 1):
        m = nn.Sequential([nn.Dense(6, 8), nn.ReLU(), nn.Dense(8, 3)], seed=seed)
        m.fit(X, y, epochs=2, batch_size=16, progress=False)
        members.append(m)
    ensemble = nn.Ensemble(members)
    expected = (members[0].predict_proba(X) + members[1].predict_proba(X)) / 2
    np.testing.assert_allclose(ensemble.predict_proba(X), expected, rtol=1e-6)
    ensemble.metadata = {"labels": ["a", "b", "c"]}
    ensemble.save(tmp_path / "e.npz")
    again = nn.load(tmp_path / "e.npz")
    assert isinstance(again, nn.Ensemble) and len(again.members) == 2 and again.metadata["labels"] == ["a", "b", "c"]
    np.testing.assert_allclose(again.predict_proba(X), expected, rtol=1e-6)
    assert again.evaluate(X, y)["accuracy"] == pytest.approx(np.mean(expected.argmax(1) == y))
    with pytest.raises(ValueError, match="member 1 maps"):
        nn.Ensemble([members[0], nn.Sequential([nn.Dense(5, 3)])])


def test_the_same_layer_object_twice_is_refused():
    relu = nn.ReLU()
    with pytest.raises(ValueError, match="layer 3 .* same object as an earlier layer"):
        nn.Sequential([nn.Dense(6, 5), relu, nn.Dense(5, 5), relu, nn.Dense(5, 3)])


def test_batchnorm_on_a_batch_of_one_row_uses_the_running_statistics():
    rng = np.random.default_rng(9)
    bn = nn.BatchNorm(3)
    bn.build(rng, np.float64)
    bn.state["running_var"][...] = 4.0
    out = bn.forward(np.full((1, 3), 10.0), training=True)
    np.testing.assert_allclose(out, 10.0 / np.sqrt(4.0 + bn.eps))
    np.testing.assert_array_equal(bn.state["running_var"], 4.0)  # untouched
    assert np.abs(bn.backward(np.ones((1, 3)))).sum() > 0  # the gradient still flows
    X = rng.standard_normal((33, 4)).astype(np.float32)  # 33 rows at batch 16: a last batch of one
    model = nn.Sequential([nn.Dense(4, 3), nn.BatchNorm(3), nn.ReLU(), nn.Dense(3, 2)], seed=0)
    model.fit(X, (X[:, 0] > 0).astype(int), epochs=2, batch_size=16, progress=False)
    assert np.isfinite(model.layers[1].state["running_var"]).all() and model.layers[1].state["running_var"].min() > 0.01


def test_ensemble_members_must_share_their_loss():
    a = nn.Sequential([nn.Dense(4, 3)], seed=0)
    b = nn.Sequential([nn.Dense(4, 3), nn.Sigmoid()], loss=nn.Quadratic(), seed=0)
    with pytest.raises(ValueError, match="member 1 is trained with Quadratic, member 0 with SoftmaxCrossEntropy"):
        nn.Ensemble([a, b])
