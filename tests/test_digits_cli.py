"""The digits commands end to end, through the real CLI entry point, on real MNIST slices."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scratchpilot.cli import main
from scratchpilot.data import read_submission, resolve_dataset, to_features, write_kaggle_csv
from scratchpilot.nn import load


@pytest.fixture(scope="module")
def csvs(tmp_path_factory, shared_data):
    """A 6,000-row Kaggle train CSV and a 2,000-row test CSV (no labels) cut from MNIST."""
    root = tmp_path_factory.mktemp("kaggle")
    train, test = resolve_dataset("mnist"), resolve_dataset("mnist-test")
    write_kaggle_csv(root / "train.csv", train.images[:6000].reshape(-1, 784), train.labels[:6000])
    write_kaggle_csv(root / "test.csv", test.images[:2000].reshape(-1, 784))
    write_kaggle_csv(root / "test_labelled.csv", test.images[:2000].reshape(-1, 784), test.labels[:2000])
    return root, test.labels[:2000]


@pytest.fixture(scope="module")
def model_path(csvs):
    root, _ = csvs
    out = root / "m.npz"
    assert main(["digits", "train", "--data", str(root / "train.csv"), "--validate", str(root / "test_labelled.csv"),
                 "--epochs", "3", "--out", str(out), "--json", str(root / "train.json")]) == 0
    return out


def test_train_writes_model_and_json(model_path, csvs):
    root, _ = csvs
    figures = json.loads((root / "train.json").read_text())
    assert figures["config"] == "best" and figures["epochs"] == 3
    assert figures["validation_accuracy"] > 0.88
    model = load(model_path)
    assert model.metadata["preprocessing"]["kind"] == "mnist"
    assert model.metadata["labels"] == [str(d) for d in range(10)]
    assert len(model.history["loss"]) == 3
    # the reference profile a deployment is watched against: the CSV's raw digits, answers on the validation CSV
    profile = model.metadata["profile"]
    assert profile["kind"] == "digits" and profile["features"]["background"]["mean"] == 0.0
    assert profile["features"]["ink_mass"]["n"] == 5000 and "test_labelled.csv (2,000 images)" in \
        profile["classes"]["held_out"]
    assert abs(sum(profile["classes"]["shares"]) - 1) < 1e-9 and len(profile["classes"]["labels"]) == 10


def test_evaluate_numbers_match_an_independent_count(model_path, csvs, tmp_path, capsys):
    root, labels = csvs
    out = tmp_path / "eval.json"
    plot = tmp_path / "confusion.png"
    assert main(["digits", "evaluate", "--model", str(model_path), "--data", str(root / "test_labelled.csv"),
                 "--json", str(out), "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    assert "precision" in text and "true\\pred" in text
    result = json.loads(out.read_text())
    predictions = load(model_path).predict(to_features(resolve_dataset(str(root / "test_labelled.csv")).images))
    assert result["n"] == 2000
    assert result["accuracy"] == pytest.approx(np.mean(predictions == labels))
    confusion = np.array(result["confusion"])
    assert confusion.sum() == 2000 and confusion[3, 5] == np.sum((labels == 3) & (predictions == 5))
    recall_7 = np.sum((labels == 7) & (predictions == 7)) / np.sum(labels == 7)
    assert result["per_class"][7]["recall"] == pytest.approx(recall_7)
    low, high = result["accuracy_ci95"]
    assert low < result["accuracy"] < high
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kaggle_with_model_scores_submission(model_path, csvs, tmp_path):
    root, labels = csvs
    sub, figures = tmp_path / "submission.csv", tmp_path / "k.json"
    assert main(["digits", "kaggle", "--model", str(model_path), "--test", str(root / "test.csv"),
                 "--labels", str(root / "test_labelled.csv"), "--out", str(sub), "--json", str(figures)]) == 0
    submitted = read_submission(sub, expected_rows=2000)
    assert sub.read_text().startswith("ImageId,Label\n1,")
    result = json.loads(figures.read_text())
    assert result["test_accuracy"] == pytest.approx(np.mean(submitted == labels))
    assert result["test_accuracy"] > 0.88


def test_kaggle_trains_with_holdout(csvs, tmp_path, capsys):
    root, _ = csvs
    sub = tmp_path / "s.csv"
    assert main(["digits", "kaggle", "--train", str(root / "train.csv"), "--test", str(root / "test.csv"),
                 "--epochs", "1", "--out", str(sub), "--save-model", str(tmp_path / "k.npz")]) == 0
    assert "validation accuracy on 600 held-out rows" in capsys.readouterr().out
    assert len(read_submission(sub)) == 2000
    assert load(tmp_path / "k.npz").metadata["validation_accuracy"] > 0.8


def test_predict_and_export_images(model_path, csvs, tmp_path):
    root, labels = csvs
    out = tmp_path / "pred.csv"
    assert main(["digits", "predict", "--model", str(model_path), "--data", str(root / "test.csv"),
                 "--out", str(out)]) == 0
    assert len(read_submission(out)) == 2000
    images = tmp_path / "images"
    assert main(["digits", "export-images", str(root / "test_labelled.csv"), str(images), "--limit", "40"]) == 0
    for digit in range(10):
        assert len(list((images / str(digit)).glob("*.png"))) == np.sum(labels[:40] == digit)


@pytest.mark.parametrize("argv, message", [
    (["digits", "evaluate", "--model", "missing.npz"], "no such model file"),
    (["digits", "train", "--data", "no-such-dataset"], "no-such-dataset"),
    (["digits", "kaggle", "--test", "TEST"], "give --train"),
    (["digits", "kaggle", "--train", "TEST", "--test", "TEST"], "test-format CSV"),
])
def test_user_errors_are_clean(argv, message, csvs, capsys):
    root, _ = csvs
    argv = [str(root / "test.csv") if a == "TEST" else a for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_non_digits_model_is_refused(tmp_path, capsys):
    from scratchpilot.nn import Dense, Sequential

    Sequential([Dense(5, 2)], seed=0).save(tmp_path / "other.npz")
    assert main(["digits", "evaluate", "--model", str(tmp_path / "other.npz")]) == 2
    assert "not a digits model" in capsys.readouterr().err


# ------------------------------------------------------------------------- bad data files, pipes


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, csvs):
    """One file of each class of damaged input the readers refuse, and the message naming it."""
    import gzip
    import struct

    from scratchpilot.data import write_idx

    root, _ = csvs
    bad = tmp_path_factory.mktemp("bad")
    deep = bad / "deep-images-idx3-ubyte"
    deep.write_bytes(struct.pack(">HBB255I", 0, 8, 255, *([1] * 255)) + b"\x00")
    whole = gzip.compress((root / "test_labelled.csv").read_bytes())
    (bad / "cut.csv.gz").write_bytes(whole[:len(whole) // 2])
    (bad / "folder.csv").mkdir()
    return {
        "empty": (write_idx(bad / "empty-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8)), "holds no images"),
        "deep": (deep, "header declares 255 dimensions"),
        "cut": (bad / "cut.csv.gz", "damaged gzip data"),
        "folder": (bad / "folder.csv", "is a folder, not a CSV file"),
    }


@pytest.mark.parametrize("which", ["empty", "deep", "cut", "folder"])
@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_bad_data_files_are_clean_errors(command, which, bad_files, model_path, tmp_path, capsys):
    path, message = bad_files[which]
    argv = {"train": ["digits", "train", "--data", str(path), "--epochs", "1", "--validate", "none",
                      "--out", str(tmp_path / "m.npz")],
            "evaluate": ["digits", "evaluate", "--model", str(model_path), "--data", str(path)],
            "predict": ["digits", "predict", "--model", str(model_path), "--data", str(path),
                        "--out", str(tmp_path / "p.csv")]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{path}" in err and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_kaggle_bomb_is_refused(model_path, tmp_path, capsys, monkeypatch):
    import gzip

    from scratchpilot.data import _files

    monkeypatch.setattr(_files, "RATIO_FLOOR", 1 << 20)  # so that a 4 MB bomb is enough
    bomb = tmp_path / "bomb.csv.gz"
    bomb.write_bytes(gzip.compress((",".join(f"pixel{i}" for i in range(784)) + "\n").encode()
                                   + ("0," * 783 + "0\n").encode() * 2600))
    assert main(["digits", "kaggle", "--model", str(model_path), "--test", str(bomb),
                 "--out", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert f"{bomb}: unpacks to more than 100 times its size" in err and "Traceback" not in err
    assert not (tmp_path / "s.csv").exists()


def test_kaggle_reads_the_test_csv_from_a_pipe(model_path, csvs, tmp_path):
    import subprocess

    from support import SCRATCHPILOT_CLI

    root, labels = csvs
    sub = tmp_path / "s.csv"
    # input= gives the child's stdin through a pipe: it can be read only once
    run = subprocess.run([*SCRATCHPILOT_CLI, "digits", "kaggle", "--model", str(model_path), "--test", "/dev/stdin",
                          "--out", str(sub)], input=(root / "test.csv").read_bytes(), capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr.decode()
    assert len(read_submission(sub, expected_rows=2000)) == 2000
    expected = load(model_path).predict(to_features(resolve_dataset(str(root / "test.csv")).images))
    np.testing.assert_array_equal(read_submission(sub), expected)
