"""load_mnist from SCRATCHPILOT_DATA, dataset names and paths, the digits features, and `scratchpilot data`."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scratchpilot.cli import main as cli_main
from scratchpilot.data import (
    Dataset,
    DatasetError,
    load_mnist,
    read_idx,
    read_kaggle_csv,
    resolve_dataset,
    to_features,
    write_kaggle_csv,
)

MNIST_TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # shared/data/README.md
SCRATCHPILOT = str(Path(sys.executable).parent / "scratchpilot")


@pytest.fixture(scope="module")
def mnist_test(shared_data) -> Dataset:
    return resolve_dataset("mnist-test", download=False)


def test_load_mnist_reads_the_data_folder(shared_data):
    (X_train, y_train), (X_test, y_test) = load_mnist(download=False)
    assert X_train.shape == (60000, 28, 28) and X_test.shape == (10000, 28, 28)
    assert X_train.dtype == X_test.dtype == np.uint8
    assert y_train.dtype == y_test.dtype == np.int64
    assert np.bincount(y_test).tolist() == MNIST_TEST_CLASS_COUNTS
    assert y_test[:5].tolist() == [7, 2, 1, 0, 4]


def test_load_fashion(shared_data):
    (X_train, y_train), (X_test, y_test) = load_mnist("fashion", download=False)
    assert X_train.shape == (60000, 28, 28) and np.bincount(y_train).tolist() == [6000] * 10
    assert X_test.shape == (10000, 28, 28) and np.bincount(y_test).tolist() == [1000] * 10
    # not the digits by mistake
    (X_digits, _), _ = load_mnist("digits", download=False)
    assert not np.array_equal(X_train[:10], X_digits[:10])


def test_unknown_kind(shared_data):
    with pytest.raises(DatasetError, match="unknown dataset kind 'kmnist'"):
        load_mnist("kmnist")


def test_gunzipped_files_in_the_data_folder_are_used(shared_data, tmp_path):
    (tmp_path / "mnist").mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / "mnist" / name.removesuffix(".gz")).write_bytes(
            gzip.decompress((shared_data / "mnist" / name).read_bytes()))
    dataset = resolve_dataset("mnist-test", data_dir=tmp_path, cache_dir=tmp_path / "cache", download=False)
    assert dataset.sources == [tmp_path / "mnist" / "t10k-images-idx3-ubyte",
                               tmp_path / "mnist" / "t10k-labels-idx1-ubyte"]
    assert np.bincount(dataset.labels).tolist() == MNIST_TEST_CLASS_COUNTS


# ---------------------------------------------------------------------------------------- dataset names


def test_named_datasets(mnist_test, shared_data):
    assert mnist_test.name == "mnist-test" and len(mnist_test) == 10000
    assert mnist_test.images.shape == (10000, 28, 28) and mnist_test.labels.dtype == np.int64
    assert mnist_test.sources == [shared_data / "mnist" / "t10k-images-idx3-ubyte.gz",
                                  shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz"]
    assert mnist_test.class_names == tuple("0123456789")
    fashion = resolve_dataset("Fashion-Test", download=False)
    assert fashion.name == "fashion-test" and fashion.class_names[9] == "Ankle boot"


@pytest.mark.parametrize("name", ["digits.csv", "digits.csv.gz"])
def test_kaggle_csv_paths_train_and_test_format(mnist_test, tmp_path, name):
    train = write_kaggle_csv(tmp_path / f"train-{name}", mnist_test.images[:20], mnist_test.labels[:20])
    test = write_kaggle_csv(tmp_path / f"test-{name}", mnist_test.images[:20])
    labelled, unlabelled = resolve_dataset(str(train)), resolve_dataset(str(test))
    np.testing.assert_array_equal(labelled.images, mnist_test.images[:20])
    np.testing.assert_array_equal(labelled.labels, mnist_test.labels[:20])
    assert unlabelled.labels is None and unlabelled.images.shape == (20, 28, 28)
    assert labelled.sources == [train] and labelled.name == train.name


def test_idx_path_finds_its_labels_beside_it(shared_data, tmp_path):
    dataset = resolve_dataset(str(shared_data / "mnist" / "t10k-images-idx3-ubyte.gz"))
    assert dataset.sources[1] == shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz"
    assert np.bincount(dataset.labels).tolist() == MNIST_TEST_CLASS_COUNTS
    # the dotted spelling of the original distribution, without labels beside it
    alone = tmp_path / "t10k-images.idx3-ubyte"
    alone.write_bytes(gzip.decompress((shared_data / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes()))
    unlabelled = resolve_dataset(str(alone))
    assert unlabelled.labels is None and unlabelled.sources == [alone]
    shutil.copyfile(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz", tmp_path / "t10k-labels.idx1-ubyte.gz")
    assert resolve_dataset(str(alone)).sources[1] == tmp_path / "t10k-labels.idx1-ubyte.gz"


def test_fashion_idx_path_gets_fashion_class_names(shared_data):
    dataset = resolve_dataset(str(shared_data / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"))
    assert dataset.class_names[0] == "T-shirt/top"


def test_idx_with_wrong_contents(tmp_path):
    from scratchpilot.data import write_idx

    path = write_idx(tmp_path / "odd-images-idx3-ubyte", np.zeros((3, 20, 20), np.uint8))
    with pytest.raises(DatasetError, match=r"expected uint8 images of shape \(N, 28, 28\), found uint8 \(3, 20, 20\)"):
        resolve_dataset(str(path))
    write_idx(tmp_path / "odd-labels-idx1-ubyte", np.array([1, 2], np.uint8))
    with pytest.raises(DatasetError, match=r"is a labels file \(a 1-D IDX of 2 values\): pass the images file"):
        resolve_dataset(str(tmp_path / "odd-labels-idx1-ubyte"))


def test_images_or_labels_is_told_from_the_header_not_the_name(tmp_path):
    from scratchpilot.data import write_idx

    images = write_idx(tmp_path / "nolabels-images-idx3-ubyte", np.full((2, 28, 28), 9, np.uint8))
    dataset = resolve_dataset(str(images))
    assert len(dataset) == 2 and dataset.labels is None and dataset.sources == [images]
    labels = write_idx(tmp_path / "mislabelled-images-idx3-ubyte", np.array([1, 2], np.uint8))
    with pytest.raises(DatasetError, match="is a labels file"):
        resolve_dataset(str(labels))


def test_a_file_of_no_images_is_refused(tmp_path):
    from scratchpilot.data import write_idx

    images = write_idx(tmp_path / "empty-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    write_idx(tmp_path / "empty-labels-idx1-ubyte", np.zeros(0, np.uint8))
    with pytest.raises(DatasetError, match="empty-images-idx3-ubyte.*: holds no images"):
        resolve_dataset(str(images))


def test_mismatched_labels_beside_images(tmp_path):
    from scratchpilot.data import write_idx

    images = write_idx(tmp_path / "x-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    write_idx(tmp_path / "x-labels-idx1-ubyte", np.array([1, 2], np.uint8))
    with pytest.raises(DatasetError, match="3 images need 3 integer labels"):
        resolve_dataset(str(images))
    write_idx(tmp_path / "x-labels-idx1-ubyte", np.array([1, 2, 11], np.uint8))
    with pytest.raises(DatasetError, match="label 11 of image 2 is outside 0..9"):
        resolve_dataset(str(images))


def test_unknown_spec_lists_the_options():
    with pytest.raises(DatasetError) as error:
        resolve_dataset("emnist")
    message = str(error.value)
    assert message.startswith("unknown dataset 'emnist'")
    for option in ("mnist", "mnist-test", "fashion", "fashion-test", ".csv", ".csv.gz", "IDX"):
        assert option in message


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such CSV file"):
        resolve_dataset(str(tmp_path / "train.csv"))
    with pytest.raises(FileNotFoundError, match="no such IDX file"):
        resolve_dataset(str(tmp_path / "train-images-idx3-ubyte.gz"))
    (tmp_path / "x.csv").mkdir()
    with pytest.raises(IsADirectoryError, match="x.csv: is a folder, not a CSV file"):
        resolve_dataset(str(tmp_path / "x.csv"))


# -------------------------------------------------------------------------------------------- features


def test_to_features_scales_to_unit_range(mnist_test):
    features = to_features(mnist_test.images[:100])
    assert features.dtype == np.float32 and features.shape == (100, 784)
    np.testing.assert_array_equal(features, mnist_test.images[:100].reshape(100, 784) / np.float32(255))
    edges = to_features(np.array([[0, 128, 255]], dtype=np.uint8))
    assert edges[0, 0] == 0.0 and edges[0, 2] == 1.0 and edges[0, 1] == np.float32(128 / 255)
    np.testing.assert_array_equal(mnist_test.features()[:100], features)


def test_to_features_refuses_scaled_input():
    with pytest.raises(TypeError, match="already scaled"):
        to_features(np.zeros((2, 784), np.float32))
    with pytest.raises(ValueError, match="a batch"):
        to_features(np.zeros(784, np.uint8))
    assert to_features(np.zeros((0, 28, 28), np.uint8)).shape == (0, 784)


def test_dataset_checks_its_arrays():
    with pytest.raises(DatasetError, match="images must be uint8"):
        Dataset(np.zeros((2, 784), np.uint8), None, "flat")
    with pytest.raises(DatasetError, match=r"2 images but labels of shape \(3,\)"):
        Dataset(np.zeros((2, 28, 28), np.uint8), np.zeros(3, np.int64), "short")


# ------------------------------------------------------------------------------------------------- CLI


def test_export_csv_round_trip(mnist_test, tmp_path, capsys):
    out = tmp_path / "train.csv"
    assert cli_main(["data", "export-csv", "mnist-test", str(out), "--limit", "50"]) == 0
    assert "wrote 50 images of mnist-test" in capsys.readouterr().out
    X, y = read_kaggle_csv(out, expect_labels=True)
    np.testing.assert_array_equal(X, mnist_test.images[:50].reshape(50, 784))
    np.testing.assert_array_equal(y, mnist_test.labels[:50])


def test_export_csv_test_format_from_the_command_line(mnist_test, tmp_path):
    out = tmp_path / "test.csv.gz"
    run = subprocess.run([SCRATCHPILOT, "data", "export-csv", "mnist-test", str(out), "--no-labels",
                          "--limit", "30"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    X, y = read_kaggle_csv(out, expect_labels=False)
    np.testing.assert_array_equal(X, mnist_test.images[:30].reshape(30, 784))
    # and back again: a test-format CSV has no labels to export
    run = subprocess.run([SCRATCHPILOT, "data", "export-csv", str(out), str(tmp_path / "again.csv")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "scratchpilot: error: test.csv.gz has no labels; pass --no-labels" in run.stderr


def test_export_csv_bad_arguments(tmp_path, capsys):
    assert cli_main(["data", "export-csv", "mnist-tset", str(tmp_path / "x.csv")]) == 2
    assert "unknown dataset 'mnist-tset'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["data", "export-csv", "mnist-test", str(tmp_path / "x.csv"), "--limit", "0"])
    assert list(tmp_path.iterdir()) == []


def test_info_command_writes_json(tmp_path, capsys):
    report = tmp_path / "info.json"
    assert cli_main(["data", "info", "mnist-test", "--json", str(report)]) == 0
    assert "mnist-test: 10000 images of 28x28" in capsys.readouterr().out
    figures = json.loads(report.read_text())
    assert figures["n"] == 10000 and figures["class_counts"] == MNIST_TEST_CLASS_COUNTS


def _bad_idx_files(root: Path) -> dict[str, Path]:
    from scratchpilot.data import write_idx

    deep = root / "deep-images-idx3-ubyte"
    deep.write_bytes(bytes.fromhex("000008ff") + bytes.fromhex("00000001") * 255 + b"\x00")
    (root / "folder.csv").mkdir()
    return {"deep": deep, "empty": write_idx(root / "empty-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8)),
            "folder": root / "folder.csv"}


@pytest.mark.parametrize("which, message", [
    ("deep", "deep-images-idx3-ubyte: header declares 255 dimensions"),
    ("empty", "empty-images-idx3-ubyte: holds no images"),
    ("folder", "folder.csv: is a folder, not a CSV file"),
])
@pytest.mark.parametrize("command", ["info", "export-csv"])
def test_bad_files_are_clean_command_errors(tmp_path, capsys, which, message, command):
    path = _bad_idx_files(tmp_path)[which]
    argv = ["data", command, str(path)] + ([str(tmp_path / "out.csv")] if command == "export-csv" else [])
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out.csv").exists()


def test_import_stays_light():
    code = ("import sys, scratchpilot.data; "
            "print(sorted(m for m in ('pandas', 'tqdm', 'urllib.request') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "[]", run.stderr


def test_read_idx_is_what_load_mnist_returns(shared_data, mnist_test):
    np.testing.assert_array_equal(read_idx(shared_data / "mnist" / "t10k-images-idx3-ubyte.gz"), mnist_test.images)
