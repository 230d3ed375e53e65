"""``scratchpilot export --onnx``: onnxruntime gives scratchpilot's probabilities (within 1e-5) and labels."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from scratchpilot import nn  # noqa: E402
from scratchpilot.cli import main  # noqa: E402
from scratchpilot.data import load_mnist, to_features  # noqa: E402
from scratchpilot.digits import models  # noqa: E402


@pytest.fixture(scope="module")
def mnist(shared_data):
    return load_mnist("digits", download=False, progress=False)


def run_onnx(path, x: np.ndarray):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["probabilities", "label"], {"input": x})


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_onnxruntime_matches_scratchpilot_on_1000_mnist_digits(arch, mnist, tmp_path):
    (X_train, y_train), (X_test, _) = mnist
    config = dataclasses.replace(models.BEST, hidden=(64,), epochs=1) if arch == "mlp" else \
        dataclasses.replace(models.CNN, hidden=(8, 16), dense_hidden=32, epochs=1)
    model = models.train(config, X_train[:3000], y_train[:3000], progress=False)
    model.save(tmp_path / "m.npz")
    assert main(["export", str(tmp_path / "m.npz"), "--onnx", str(tmp_path / "m.onnx"),
                 "--json", str(tmp_path / "e.json")]) == 0
    x = to_features(X_test[:1000])
    probabilities, labels = run_onnx(tmp_path / "m.onnx", x)
    ours = nn.load(tmp_path / "m.npz").predict_proba(x)
    assert np.abs(probabilities - ours).max() <= 1e-5
    assert (labels == ours.argmax(axis=1)).all()
    one, _ = run_onnx(tmp_path / "m.onnx", x[:1])  # the batch dimension is free
    assert np.abs(one - ours[:1]).max() <= 1e-5
    proto = onnx.load(tmp_path / "m.onnx")
    onnx.checker.check_model(proto)
    props = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert props["scratchpilot.preprocessing"]["kind"] == "mnist" and props["scratchpilot.labels"][3] == "3"
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["opset"] == 17 and proto.opset_import[0].version == 17 and result["input"] == ["batch", 784]


def test_every_exported_layer_type_against_scratchpilot(tmp_path):
    """Image input (NHWC), odd sizes, strided "same" padding, every pooling, every activation, BatchNorm
    with trained-looking statistics, sigmoid outputs."""
    rng = np.random.default_rng(0)
    layers = [nn.Conv2D(3, 5, kernel=3, stride=2, padding="same"), nn.BatchNorm(5), nn.LeakyReLU(0.1),
              nn.Conv2D(5, 6, kernel=(2, 3), padding=1), nn.ReLU6(), nn.MaxPool2D(2), nn.Conv2D(6, 4, kernel=1),
              nn.Tanh(), nn.AvgPool2D((2, 1)), nn.Flatten(), nn.Dense(2 * 3 * 4, 12), nn.Sigmoid(),
              nn.Dropout(0.3), nn.Dense(12, 3 * 3 * 2), nn.Reshape((3, 3, 2)), nn.ReLU(), nn.GlobalAvgPool2D(),
              nn.Dense(2, 4)]
    model = nn.Sequential(layers, loss=nn.SigmoidCrossEntropy(), input_shape=(13, 11, 3), seed=1)
    for layer in model.layers:
        if isinstance(layer, nn.BatchNorm):
            layer.state["running_mean"][:] = rng.normal(size=5)
            layer.state["running_var"][:] = rng.uniform(0.5, 2, size=5)
            layer.params["gamma"][:] = rng.uniform(0.5, 1.5, size=5)
    model.save(tmp_path / "any.npz")
    assert main(["export", str(tmp_path / "any.npz"), "--onnx", str(tmp_path / "any.onnx"), "--check"]) == 0
    x = rng.random((7, 13, 11, 3), dtype=np.float32)
    probabilities, labels = run_onnx(tmp_path / "any.onnx", x)
    ours = model.predict_proba(x)
    assert np.abs(probabilities - ours).max() <= 1e-5 and (labels == ours.argmax(axis=1)).all()


def test_what_cannot_be_exported_is_named_and_nothing_is_written(tmp_path, capsys):
    model = nn.Sequential([nn.Reshape((4, 4, 2)), nn.DepthwiseConv2D(2, kernel=3), nn.Flatten(), nn.Dense(8, 2)],
                          input_shape=(32,))
    model.save(tmp_path / "dw.npz")
    assert main(["export", str(tmp_path / "dw.npz"), "--onnx", str(tmp_path / "dw.onnx")]) == 2
    assert "layer 1 (DepthwiseConv2D) has no ONNX export yet" in capsys.readouterr().err
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["export", str(tmp_path / "broken.npz"), "--onnx", str(tmp_path / "broken.onnx")]) == 2
    assert "broken.npz" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.onnx"))
