"""The skip connection: gradients against finite differences, training, freezing and save/load."""

import model_files
import numpy as np
import pytest

from scratchpilot import nn


def block(channels=3):
    return nn.Residual([nn.Conv2D(channels, 4, 1), nn.ReLU6(), nn.DepthwiseConv2D(4, 3, padding="same"),
                        nn.ReLU(), nn.Conv2D(4, channels, 1)])


def small_model(dtype=np.float64, seed=0):
    return nn.Sequential([nn.Conv2D(1, 3, 3, padding="same"), nn.ReLU(), block(), nn.GlobalAvgPool2D(),
                          nn.Dense(3, 2)], seed=seed, dtype=dtype, input_shape=(5, 5, 1))


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(1)
    model = small_model()
    for layer in model.layers:  # biases off zero: an all-zero pixel would sit exactly on ReLU6's kink
        for value in layer.params.values():
            value[...] = rng.normal(scale=0.5, size=value.shape)
    x, y = rng.normal(size=(4, 5, 5, 1)), np.array([0, 1, 1, 0])
    errors = nn.gradient_check(model, x, y)
    assert {"p2.0.W", "p2.2.W", "p2.4.b", "input"} <= set(errors)
    assert max(errors.values()) < 1e-7, errors


def test_forward_is_input_plus_chain():
    rng = np.random.default_rng(2)
    res = block()
    nn.Sequential([res], input_shape=(4, 4, 3), dtype=np.float64, seed=0)
    x = rng.normal(size=(2, 4, 4, 3))
    chain = x
    for layer in res.layers:
        chain = layer.forward(chain)
    np.testing.assert_allclose(res.forward(x), x + chain)


def test_identity_gradient_survives_an_inner_relu_last():
    # an inner ReLU as the last layer masks its gradient in place when it may: the skip path must not see that
    res = nn.Residual([nn.Dense(3, 3), nn.ReLU()])
    model = nn.Sequential([res, nn.Dense(3, 2)], dtype=np.float64, seed=0)
    errors = nn.gradient_check(model, np.random.default_rng(3).normal(size=(5, 3)), np.array([0, 1, 0, 1, 1]))
    assert errors["input"] < 1e-7, errors


def test_shape_changing_chain_is_refused():
    with pytest.raises(ValueError, match="skip connection needs the shape kept"):
        nn.Sequential([nn.Residual([nn.Conv2D(3, 4, 1)])], input_shape=(4, 4, 3))


def test_trains_saves_and_loads(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(64, 5, 5, 1)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0).astype(int)
    model = small_model(np.float32)
    before = model.evaluate(x, y)["loss"]
    model.fit(x, y, epochs=15, batch_size=16, progress=False)
    assert model.evaluate(x, y)["loss"] < 0.7 * before
    model.save(tmp_path / "m.npz")
    again = nn.load(tmp_path / "m.npz")
    assert isinstance(again.layers[2], nn.Residual)
    np.testing.assert_array_equal(again.predict_proba(x), model.predict_proba(x))
    assert "Residual(5 layers)" in again.summary()


def test_freezing_the_block_freezes_its_layers():
    model = small_model(np.float32)
    res = model.layers[2]
    res.trainable = False
    assert not any(layer.trainable for layer in res.layers)
    frozen = [p.copy() for p in res.params.values()]
    x = np.random.default_rng(5).normal(size=(8, 5, 5, 1)).astype(np.float32)
    model.fit(x, np.arange(8) % 2, epochs=2, batch_size=4, progress=False)
    for old, new in zip(frozen, res.params.values(), strict=True):
        np.testing.assert_array_equal(old, new)


def test_a_bad_inner_layer_in_a_file_is_named(tmp_path):
    cfg = model_files.config([{"type": "Residual", "layers": [model_files.dense(3, 3), {"type": "Nope"}]}])
    model_files.write(tmp_path / "bad.npz", cfg, {})
    with pytest.raises(nn.ModelFileError, match=r"layer 0, inner layer 1: unknown layer"):
        nn.load(tmp_path / "bad.npz")


def test_inner_layers_count_towards_the_layer_limit(tmp_path, monkeypatch):
    monkeypatch.setattr("scratchpilot.nn.io.MAX_LAYERS", 4)
    model = nn.Sequential([nn.Residual([nn.Dense(3, 3), nn.ReLU(), nn.Dense(3, 3), nn.ReLU()])], seed=0)
    model.save(tmp_path / "m.npz")
    with pytest.raises(nn.ModelFileError, match="5 layers, more than the 4"):
        nn.load(tmp_path / "m.npz")
