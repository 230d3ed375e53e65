"""Every command that loads a model file refuses a crafted or tampered one cleanly: exit 2, a message
naming the file (and the field), no traceback — the loader (sizes, config, history) and one metadata
check per app (digits: ``digits_metadata``; pilots: ``pilot_metadata``) are the places that check."""

from __future__ import annotations

import json

import model_files
import numpy as np
import pytest

from scratchpilot import nn
from scratchpilot.car.pilot import Pilot, PilotModelError
from scratchpilot.cli import main

#: every command that loads a model, with the model file as MODEL (it is refused before its data is read)
LOADERS = [
    ["digits", "evaluate", "--model", "MODEL", "--data", "mnist-test"],
    ["digits", "predict", "--model", "MODEL", "--data", "mnist-test", "--out", "OUT/p.csv"],
    ["digits", "combine", "MODEL", "--out", "OUT/e.npz"],
    ["report", "model", "MODEL", "mnist-test", "--out", "OUT/r.html"],
    ["car", "check", "--model", "MODEL", "--sessions", "OUT/none", "--sheet", "OUT/s.png"],
    ["serve", "--model", "MODEL", "--port", "0"],
]


def run(argv, model, out, capsys) -> str:
    """Run the CLI with MODEL and OUT filled in; assert a clean refusal; return stderr."""
    code = main([str(model) if a == "MODEL" else a.replace("OUT", str(out)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(model) in err and "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crafted")
    for name, build in model_files.CRAFTED.items():
        build(folder / f"{name}.npz")
    return folder


@pytest.mark.parametrize("argv", LOADERS, ids=lambda argv: " ".join(argv[:2]))
@pytest.mark.parametrize("name", sorted(model_files.CRAFTED))
def test_every_model_command_refuses_a_crafted_file(crafted, name, argv, tmp_path, capsys):
    run(argv, crafted / f"{name}.npz", tmp_path, capsys)


def _digits_model(path, **metadata):
    model = nn.Sequential([nn.Dense(784, 10)], seed=0)
    model.metadata = {"task": "digits", "labels": [str(d) for d in range(10)], "test_accuracy": 0.9,
                      "preprocessing": {"kind": "mnist"}, "train_config": {"name": "tiny", "epochs": 1},
                      **metadata}
    model.save(path)
    return path


@pytest.mark.parametrize("field, value", [
    ("test_accuracy", "abc"), ("test_accuracy", 7), ("labels", 5), ("labels", ["a", "b"]), ("n_train", -1),
    ("train_config", "x"), ("train_config", {"name": ["x"]}), ("preprocessing", [1]), ("trained_at", 3),
])
def test_digits_apps_refuse_metadata_of_the_wrong_type_naming_the_field(tmp_path, capsys, field, value):
    model = _digits_model(tmp_path / "bad-meta.npz", **{field: value})
    for argv in (LOADERS[0], LOADERS[3], LOADERS[5]):  # evaluate, report model, serve
        assert repr(field) in run(argv, model, tmp_path, capsys)


def test_serve_refuses_a_wrong_typed_accuracy_in_a_subprocess(tmp_path):
    import subprocess

    from support import SCRATCHPILOT_CLI

    model = _digits_model(tmp_path / "accuracy.npz", test_accuracy="abc")
    done = subprocess.run([*SCRATCHPILOT_CLI, "serve", "--model", str(model), "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "cannot serve" in done.stderr and "'test_accuracy'" in done.stderr and "Traceback" not in done.stderr


def test_a_digits_model_with_good_metadata_describes_itself(tmp_path):
    from scratchpilot.web.classifier import DigitClassifier

    classifier = DigitClassifier(_digits_model(tmp_path / "good.npz", n_train=60_000))
    assert classifier.info["accuracy"] == 0.9 and classifier.info["n_train"] == 60_000
    assert classifier.info["name"] == "tiny" and classifier.labels == [str(d) for d in range(10)]


@pytest.mark.parametrize("history", [{"loss": ["a", "b"]}, {"loss": 3}, [1, 2], {"accuracy": [0.5, None]}])
def test_a_tampered_history_is_refused_by_the_loader(tmp_path, capsys, history):
    path = _digits_model(tmp_path / "history.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    config = json.loads(arrays["config.json"].tobytes())
    config["history"] = history
    arrays["config.json"] = np.frombuffer(json.dumps(config).encode(), np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(nn.ModelFileError, match="history"):
        nn.load(path)
    assert "history" in run(LOADERS[3], path, tmp_path, capsys)  # report model


def _pilot_model(**metadata):
    model = nn.Sequential([nn.Dense(4, 3)], seed=0)
    model.metadata = {"task": "pilot", "labels": ["left", "forward", "right"],
                      "preprocessing": {"input_shape": [2, 2], "scale": True}, "history_lag": 0, **metadata}
    return model


@pytest.mark.parametrize("field, value", [
    ("labels", "abc"), ("labels", [1, 2, 3]), ("labels", ["a", "a", "b"]), ("history_lag", -1),
    ("history_lag", 1.5), ("history_lag", "2"), ("history_lag", True), ("history_lag", 10 ** 9),
    ("input_layout", 5), ("input_layout", "3d"),
])
def test_pilot_metadata_of_the_wrong_type_names_the_field(tmp_path, capsys, field, value):
    model = _pilot_model(**{field: value})
    with pytest.raises(PilotModelError, match=repr(field)):
        Pilot(model)
    model.save(tmp_path / "pilot.npz")
    assert repr(field) in run(LOADERS[4], tmp_path / "pilot.npz", tmp_path, capsys)  # car check


def test_an_image_pilot_needs_a_good_image_shape():
    with pytest.raises(PilotModelError, match="'image_shape'"):
        Pilot(_pilot_model(input_layout="image", image_shape=[2, "2", 1]))
    assert Pilot(_pilot_model(history_lag=2.0)).history_lag == 2  # a whole float is a whole number


def test_car_check_says_a_digits_model_is_not_a_pilot(tmp_path, capsys):
    err = run(LOADERS[4], _digits_model(tmp_path / "digits.npz"), tmp_path, capsys)
    assert "not a pilot model" in err and "'digits'" in err
