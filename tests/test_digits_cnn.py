"""The digits CNN through the real commands: train (one model and an ensemble), evaluate, Kaggle, report, serve."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scratchpilot import nn
from scratchpilot.cli import main
from scratchpilot.data import read_submission, resolve_dataset, to_features, write_kaggle_csv
from scratchpilot.digits import models
from scratchpilot.digits.augment import affine_augmenter


@pytest.fixture(scope="module")
def csvs(tmp_path_factory, shared_data):
    """A 6,000-row Kaggle train CSV, a 1,000-row labelled test CSV and the same without labels."""
    root = tmp_path_factory.mktemp("cnn")
    train, test = resolve_dataset("mnist"), resolve_dataset("mnist-test")
    write_kaggle_csv(root / "train.csv", train.images[:6000].reshape(-1, 784), train.labels[:6000])
    write_kaggle_csv(root / "test_labelled.csv", test.images[:1000].reshape(-1, 784), test.labels[:1000])
    write_kaggle_csv(root / "test.csv", test.images[:1000].reshape(-1, 784))
    return root, test.labels[:1000]


@pytest.fixture(scope="module")
def cnn_path(csvs):
    root, _ = csvs
    out = root / "cnn.npz"
    assert main(["digits", "train", "--arch", "cnn", "--data", str(root / "train.csv"), "--validate",
                 str(root / "test_labelled.csv"), "--epochs", "2", "--out", str(out),
                 "--json", str(root / "cnn.json")]) == 0
    return out


def test_cnn_trains_through_the_command_and_saves_its_recipe(cnn_path, csvs):
    root, _ = csvs
    figures = json.loads((root / "cnn.json").read_text())
    assert figures["arch"] == "cnn" and figures["epochs"] == 2
    assert figures["validation_accuracy"] > 0.8  # 6,000 images, two epochs (the full run: see the README)
    model = nn.load(cnn_path)
    assert any(isinstance(layer, nn.Conv2D) for layer in model.layers)
    assert model.metadata["train_config"]["arch"] == "cnn" and model.metadata["train_config"]["augment_degrees"] == 10
    assert model.n_inputs == 784 and len(model.history["val_accuracy"]) == 2
    bn = next(layer for layer in model.layers if isinstance(layer, nn.BatchNorm))
    assert np.abs(bn.state["running_mean"]).sum() > 0  # running statistics were learnt and saved


def test_evaluate_kaggle_and_report_accept_the_cnn(cnn_path, csvs, tmp_path):
    root, labels = csvs
    model = nn.load(cnn_path)
    predictions = model.predict(to_features(resolve_dataset(str(root / "test_labelled.csv")).images))
    out = tmp_path / "eval.json"
    assert main(["digits", "evaluate", "--model", str(cnn_path), "--data", str(root / "test_labelled.csv"),
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["accuracy"] == pytest.approx(np.mean(predictions == labels))
    submission = tmp_path / "submission.csv"
    assert main(["digits", "kaggle", "--model", str(cnn_path), "--test", str(root / "test.csv"),
                 "--out", str(submission)]) == 0
    np.testing.assert_array_equal(read_submission(submission, expected_rows=1000), predictions)
    report = tmp_path / "model.html"
    assert main(["report", "model", str(cnn_path), str(root / "test_labelled.csv"), "--out", str(report),
                 "--json", str(tmp_path / "report.json")]) == 0
    assert "Conv2D(1, 32, 5x5, same)" in report.read_text()
    reported = json.loads((tmp_path / "report.json").read_text())["accuracy"]
    assert reported == pytest.approx(np.mean(predictions == labels))


def test_serve_answers_with_the_cnn(cnn_path, csvs):
    from web_support import BackgroundServer, post_json

    from scratchpilot.web.app import create_app

    test = resolve_dataset("mnist-test")
    with BackgroundServer(create_app(cnn_path), threads=2) as running:
        status, body, _ = post_json(f"{running.url}/api/predict", {"pixels": test.images[0].reshape(-1).tolist()})
        assert status == 200 and len(body["probabilities"]) == 10
        expected = nn.load(cnn_path).predict(to_features(test.images[:1]))[0]
        assert body["label"] == str(expected) or body["label"] == int(expected)
        status, info, _ = post_json(f"{running.url}/api/predict", {"pixels": [0] * 10})
        assert status == 400


def test_ensemble_of_two_cnns_is_one_model_file(csvs, tmp_path):
    root, labels = csvs
    out = tmp_path / "ensemble.npz"
    assert main(["digits", "train", "--arch", "cnn", "--ensemble", "2", "--data", str(root / "train.csv"),
                 "--validate", str(root / "test_labelled.csv"), "--epochs", "1", "--out", str(out),
                 "--json", str(tmp_path / "e.json")]) == 0
    figures = json.loads((tmp_path / "e.json").read_text())
    assert [m["seed"] for m in figures["members"]] == [0, 1]
    ensemble = nn.load(out)
    assert isinstance(ensemble, nn.Ensemble) and len(ensemble.members) == 2
    X = to_features(resolve_dataset(str(root / "test_labelled.csv")).images)
    mean = (ensemble.members[0].predict_proba(X) + ensemble.members[1].predict_proba(X)) / 2
    assert figures["validation_accuracy"] == pytest.approx(np.mean(mean.argmax(1) == labels))
    assert main(["digits", "evaluate", "--model", str(out), "--data", str(root / "test_labelled.csv")]) == 0
    report = tmp_path / "ensemble.json"
    assert main(["report", "model", str(out), str(root / "test_labelled.csv"), "--out", str(tmp_path / "e.html"),
                 "--json", str(report)]) == 0
    assert json.loads(report.read_text())["accuracy"] == pytest.approx(np.mean(mean.argmax(1) == labels))
    assert "ensemble of 2 models" in (tmp_path / "e.html").read_text()


def test_bad_combinations_are_refused(csvs, capsys):
    root, _ = csvs
    assert main(["digits", "train", "--arch", "cnn", "--blog", "--data", str(root / "train.csv")]) == 2
    with pytest.raises(SystemExit):  # refused while parsing (test_cli_options)
        main(["digits", "train", "--ensemble", "0", "--data", str(root / "train.csv")])
    assert "argument --ensemble: must be an integer ≥ 1, got 0" in capsys.readouterr().err


def test_affine_augmentation_keeps_the_digit_and_moves_it():
    rng = np.random.default_rng(0)
    X = to_features(resolve_dataset("mnist-test").images[:64])
    np.testing.assert_array_equal(affine_augmenter(0, 0, 0)(X, rng), X)  # the identity draw changes nothing
    moved = affine_augmenter(10, 0.1, 2)(X, rng)
    assert moved.shape == X.shape and moved.dtype == X.dtype
    assert 0.75 < moved.sum() / X.sum() < 1.3  # ink is resampled, not lost
    assert np.abs(moved - X).mean() > 0.02
    # rotation about the centre: a 90° turn maps the top-centre pixel to the left-centre
    dot = np.zeros((1, 784), np.float32)
    dot[0, 2 * 28 + 14] = 1.0
    turned = affine_augmenter(90, 0, 0)(dot, _FixedDraws([1.0], [1.0], [0.0, 0.0]))
    y, x = np.unravel_index(turned.argmax(), (28, 28))
    assert abs(x - 14) + abs(y - 14) > 8 and abs(y - 14) < 3  # now on the horizontal centre line


class _FixedDraws:
    """A stand-in generator whose uniform draws are given in order (angle, scale, shifts)."""

    def __init__(self, *values) -> None:
        self.values = list(values)

    def uniform(self, low, high, size):
        value = np.asarray(self.values.pop(0), dtype=float)
        return low + (high - low) * (value if np.ndim(size) == 0 else value.reshape(size))


def test_cnn_layers_match_the_documented_recipe():
    model = models.build_model(models.CNN)
    assert [type(layer).__name__ for layer in model.layers[:5]] == ["Reshape", "Conv2D", "BatchNorm", "ReLU",
                                                                    "MaxPool2D"]
    assert model.output_shapes[12] == (3, 3, 128) and model.n_outputs == 10


def test_combine_and_test_time_augmentation(cnn_path, csvs, tmp_path):
    root, labels = csvs
    out = tmp_path / "pair.npz"
    assert main(["digits", "combine", str(cnn_path), str(cnn_path), "--out", str(out)]) == 0
    pair = nn.load(out)
    X = to_features(resolve_dataset(str(root / "test_labelled.csv")).images)
    np.testing.assert_allclose(pair.predict_proba(X), nn.load(cnn_path).predict_proba(X), rtol=1e-5, atol=1e-6)
    figures = tmp_path / "tta.json"
    assert main(["digits", "evaluate", "--model", str(cnn_path), "--data", str(root / "test_labelled.csv"),
                 "--tta", "--json", str(figures)]) == 0
    expected = models.predict_proba_tta(nn.load(cnn_path), X).argmax(1)
    result = json.loads(figures.read_text())
    assert result["tta"] and result["accuracy"] == pytest.approx(np.mean(expected == labels))
    one = np.zeros((1, 784), np.float32)
    one[0, 0] = 1.0  # a corner pixel: the shift that would wrap it around must drop it instead
    model = nn.Sequential([nn.Dense(784, 10)], seed=0)
    seen = []
    model.predict_proba = lambda x: seen.append(x.copy()) or np.ones((1, 10), np.float32)
    models.predict_proba_tta(model, one)
    assert [float(x.sum()) for x in seen] == [1.0, 1.0, 0.0, 1.0, 0.0]


def test_kaggle_trains_a_cnn_and_writes_the_submission(csvs, tmp_path):
    root, labels = csvs
    out, figures = tmp_path / "submission.csv", tmp_path / "kaggle.json"
    assert main(["digits", "kaggle", "--arch", "cnn", "--train", str(root / "train.csv"), "--test",
                 str(root / "test.csv"), "--epochs", "1", "--out", str(out), "--labels",
                 str(root / "test_labelled.csv"), "--json", str(figures), "--save-model", str(tmp_path / "k.npz")]) == 0
    result = json.loads(figures.read_text())
    submitted = read_submission(out, expected_rows=1000)
    assert result["test_accuracy"] == pytest.approx(np.mean(submitted == labels)) and result["test_accuracy"] > 0.5
    assert any(isinstance(layer, nn.Conv2D) for layer in nn.load(tmp_path / "k.npz").layers)


def test_a_model_that_takes_images_is_refused_with_the_reason(tmp_path, capsys):
    image_model = nn.Sequential([nn.Conv2D(1, 2, 3), nn.ReLU(), nn.GlobalAvgPool2D(), nn.Dense(2, 10)],
                                input_shape=(28, 28, 1))
    image_model.save(tmp_path / "images.npz")
    assert main(["digits", "evaluate", "--model", str(tmp_path / "images.npz"), "--data", "mnist-test"]) == 2
    assert "inputs of shape (28, 28, 1)" in capsys.readouterr().err
