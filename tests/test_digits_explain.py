"""``scratchpilot digits explain``: a CNN's feature maps, an MLP's first-layer weights, in one picture."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from web_support import png_bytes  # noqa: E402

from scratchpilot import nn  # noqa: E402
from scratchpilot.cli import main  # noqa: E402
from scratchpilot.data import load_mnist, to_features  # noqa: E402
from scratchpilot.digits import models  # noqa: E402


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    (X, y), (X_test, _) = load_mnist("digits", download=False, progress=False)
    root = tmp_path_factory.mktemp("explain")
    cnn = models.train(dataclasses.replace(models.CNN, hidden=(8, 16), dense_hidden=32, epochs=1), X[:3000], y[:3000],
                       progress=False)
    mlp = models.train(dataclasses.replace(models.BEST, hidden=(64,), epochs=1), X[:3000], y[:3000], progress=False)
    cnn.save(root / "cnn.npz")
    mlp.save(root / "mlp.npz")
    return root, X_test


def test_a_cnn_in_one_picture(trained, tmp_path):
    from PIL import Image

    root, X_test = trained
    out = tmp_path / "cnn.png"
    assert main(["digits", "explain", "--model", str(root / "cnn.npz"), "--index", "0", "--out", str(out),
                 "--json", str(tmp_path / "e.json")]) == 0
    drawn = json.loads((tmp_path / "e.json").read_text())
    # the three stages of this CNN: 28×28×8 before the first pool, 14×14×16, then 7×7×16 into the dense layer
    assert drawn["kind"] == "cnn" and [s["shape"] for s in drawn["stages"]] == [[28, 28, 8], [14, 14, 16], [7, 7, 16]]
    expected = nn.load(root / "cnn.npz").predict_proba(to_features(X_test[:1]))[0]
    assert np.allclose(drawn["probabilities"], expected) and drawn["label"] == str(int(expected.argmax()))
    picture = np.asarray(Image.open(out).convert("L"))
    assert picture.shape[0] > 400 and picture.shape[1] > 800 and picture.std() > 30  # not a blank page


def test_an_mlp_shows_its_first_layers_weights_from_a_picture_file(trained, tmp_path, capsys):
    root, X_test = trained
    (tmp_path / "seven.png").write_bytes(png_bytes(255 - X_test[0]))  # dark ink on white, as drawn on paper
    assert main(["digits", "explain", "--model", str(root / "mlp.npz"), "--image", str(tmp_path / "seven.png"),
                 "--out", str(tmp_path / "mlp.png"), "--json", str(tmp_path / "m.json")]) == 0
    drawn = json.loads((tmp_path / "m.json").read_text())
    assert drawn["kind"] == "mlp" and drawn["label"] == "7" and drawn["stages"] == []
    assert (tmp_path / "mlp.png").stat().st_size > 10_000
    (tmp_path / "blank.png").write_bytes(png_bytes(np.full((28, 28), 255, np.uint8)))
    assert main(["digits", "explain", "--model", str(root / "mlp.npz"), "--image", str(tmp_path / "blank.png"),
                 "--out", str(tmp_path / "b.png")]) == 2
    assert "blank.png" in capsys.readouterr().err and not (tmp_path / "b.png").exists()
    assert main(["digits", "explain", "--model", str(root / "mlp.npz"), "--index", "10000"]) == 2
    assert "mnist-test has 10,000 digits" in capsys.readouterr().err
