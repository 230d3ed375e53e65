"""Options and output paths are checked when the command line is parsed, before any work starts; finished
work (a trained model) is never lost to an output path that breaks later (issue 14, classes 1 and 2)."""

from __future__ import annotations

import argparse
import subprocess

import numpy as np
import pytest
from support import SCRATCHPILOT_CLI

from scratchpilot import options
from scratchpilot.cli import build_parser, main
from scratchpilot.errors import CommandError
from scratchpilot.nn import Dense, Sequential, load
from scratchpilot.util.files import save_or_rescue


def refused(argv, capsys) -> str:
    """Parse ``argv`` the way the command does; it must exit with status 2 and say why (no traceback)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# every numeric option the probe tried, and its neighbours: the message states the allowed range
@pytest.mark.parametrize("argv, message", [
    (["digits", "train", "--epochs", "0"], "argument --epochs: must be an integer ≥ 1, got 0"),
    (["digits", "train", "--epochs", "-3"], "argument --epochs: must be an integer ≥ 1, got -3"),
    (["digits", "train", "--epochs", "2.5"], "argument --epochs: must be an integer ≥ 1, got '2.5'"),
    (["digits", "train", "--ensemble", "0"], "argument --ensemble: must be an integer ≥ 1"),
    (["digits", "train", "--seed", "-1"], "argument --seed: must be an integer ≥ 0 and ≤ 4294967295"),
    (["digits", "kaggle", "--test", "t.csv", "--holdout", "1"], "argument --holdout: must be a number ≥ 0 and < 1"),
    (["digits", "kaggle", "--test", "t.csv", "--holdout", "1.5"], "got 1.5"),
    (["digits", "kaggle", "--test", "t.csv", "--holdout", "-0.5"], "got -0.5"),
    (["digits", "kaggle", "--test", "t.csv", "--holdout", "nan"], "must be a finite number"),
    (["digits", "export-images", "mnist", "out", "--limit", "0"], "argument --limit: must be an integer ≥ 1"),
    (["car", "drive", "--model", "m.npz", "--sim", "--tracks", "0"], "argument --tracks: must be an integer ≥ 1"),
    (["car", "train", "--history-lag", "-1"], "argument --history-lag: must be an integer ≥ 0 and ≤ 100"),
    (["car", "train", "--val-fraction", "2"], "argument --val-fraction: must be a number ≥ 0 and < 1, got 2"),
    (["car", "train", "--balance", "1.5"], "argument --balance: must be a number ≥ 0 and ≤ 1"),
    (["car", "train", "--hidden", "0"], "argument --hidden: must be an integer ≥ 1"),
    (["car", "train", "--patience", "0"], "argument --patience"),
    (["car", "train", "--augment", "-1"], "argument --augment: must be an integer ≥ 0"),
    (["car", "record", "--episodes", "0"], "argument --episodes"),
    (["car", "record", "--noise", "2"], "argument --noise: must be a number ≥ 0 and ≤ 1"),
    (["car", "record", "--duration", "0"], "argument --duration: must be a number > 0"),
    (["car", "drive", "--model", "m.npz", "--max-frame-age", "-1"], "argument --max-frame-age"),
    (["car", "drive", "--model", "m.npz", "--min-confidence", "inf"], "must be a finite number"),
    (["car", "stream", "--fps", "0"], "argument --fps: must be a number > 0 and ≤ 1000"),
    (["car", "stream", "--port", "70000"], "argument --port: must be an integer ≥ 0 and ≤ 65535"),
    (["demo", "--tracks", "0"], "argument --tracks"),
    (["demo", "--rounds", "-1"], "argument --rounds: must be an integer ≥ 0"),
    (["serve", "--workers", "0"], "argument --workers: must be an integer ≥ 1 and ≤ 256"),
    (["serve", "--threads", "x"], "argument --threads: must be an integer ≥ 1 and ≤ 256, got 'x'"),
    (["data", "export-csv", "mnist", "o.csv", "--limit", "-2"], "argument --limit"),
    (["report", "data", "mnist", "--seed", "-4"], "argument --seed"),
])
def test_numeric_options_are_refused_with_their_range(argv, message, capsys):
    assert message in refused(argv, capsys)


def test_no_numeric_option_is_left_unchecked():
    """Every int or float option of every command goes through a ranged type, so none can be forgotten."""
    parser = build_parser()
    unchecked = []

    def walk(p, path):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif action.type in (int, float):
                unchecked.append(" ".join([*path, action.option_strings[0] if action.option_strings
                                           else action.dest]))
    walk(parser, [])
    assert unchecked == []


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("a file, not a folder\n")
    return path


@pytest.mark.parametrize("make_argv, message", [
    (lambda f: ["digits", "train", "--out", f"{f}/model.npz"], "is a file, not a folder"),
    (lambda f: ["digits", "train", "--out", f"{f}/deeper/model.npz"], "is a file, not a folder"),
    (lambda f: ["digits", "train", "--out", str(f.parent)], "is a folder; give a file name"),
    (lambda f: ["digits", "train", "--out", "/proc/scratchpilot/model.npz"], "cannot write in /proc"),
    (lambda f: ["digits", "train", "--out", "model.pkl"], "unknown file type; use one of .npz"),
    (lambda f: ["digits", "evaluate", "--model", "m.npz", "--plot", "cm.jpeg2"], "use one of .png, .svg, .pdf"),
    (lambda f: ["digits", "evaluate", "--model", "m.npz", "--json", f"{f}/r.json"], "is a file, not a folder"),
    (lambda f: ["digits", "kaggle", "--test", "t.csv", "--save-model", f"{f}/m.npz"], "argument --save-model"),
    (lambda f: ["digits", "predict", "--model", "m", "--data", "d", "--out", "p.txt"], "use one of .csv, .csv.gz"),
    (lambda f: ["digits", "export-images", "mnist", str(f)], "is a file, not a folder"),
    (lambda f: ["car", "train", "--model", f"{f}/pilot.npz"], "argument --model"),
    (lambda f: ["car", "record", "--out", str(f)], "argument --out: "),
    (lambda f: ["car", "check", "--model", "m", "--sessions", "s", "--sheet", "s.jpg"], "use one of .png"),
    (lambda f: ["car", "drive", "--model", "m", "--sim", "--video", "v.mp4"], "use one of .gif"),
    (lambda f: ["demo", "--out", str(f)], "is a file, not a folder"),
    (lambda f: ["report", "data", "mnist", "--out", f"{f}/r.html"], "is a file, not a folder"),
    (lambda f: ["report", "model", "m.npz", "mnist", "--out", "r.pdf"], "use one of .html"),
    (lambda f: ["data", "export-csv", "mnist", f"{f}/x.csv"], "is a file, not a folder"),
    (lambda f: ["data", "fetch", "--cache-dir", str(f)], "is a file, not a folder"),
])
def test_bad_output_paths_are_refused_before_any_work(make_argv, message, a_file, capsys):
    assert message in refused(make_argv(a_file), capsys)
    assert a_file.read_text() == "a file, not a folder\n"  # nothing was written over it


def test_the_write_probe_leaves_nothing_behind(tmp_path):
    assert options.model_file(str(tmp_path / "new" / "m.npz")) == tmp_path / "new" / "m.npz"
    assert options.output_folder(str(tmp_path)) == tmp_path
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a probe file was created


def tiny_model():
    model = Sequential([Dense(4, 3)], seed=0)
    model.metadata["note"] = "finished work"
    return model


def test_a_write_that_fails_late_is_rescued(tmp_path, a_file):
    model = tiny_model()
    with pytest.raises(CommandError) as err:
        save_or_rescue(model.save, a_file / "model.npz", "trained model")
    message = str(err.value)
    assert f"cannot write the trained model to {a_file / 'model.npz'}" in message
    rescued = message.split("it was saved to ")[1].split(" instead")[0]
    again = load(rescued)  # the rescued file is the whole model
    assert again.metadata["note"] == "finished work"
    np.testing.assert_array_equal(again.layers[0].params["W"], model.layers[0].params["W"])


def test_digits_train_keeps_its_model_when_the_output_folder_breaks_during_training(tmp_path, monkeypatch, capsys):
    """The output path was fine when checked, then the folder was replaced by a file while the model trained:
    the command says where the model went instead, and exits with status 2 (no traceback)."""
    from scratchpilot.data import write_kaggle_csv
    from scratchpilot.digits import models

    rng = np.random.default_rng(0)
    write_kaggle_csv(tmp_path / "train.csv", rng.integers(0, 256, (20, 784), dtype=np.uint8),
                     np.arange(20) % 10)
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def train_then_break_the_folder(config, images, labels, **kwargs):
        out_dir.rmdir()
        out_dir.write_text("someone put a file here\n")
        model = Sequential([Dense(784, 10)], seed=0)
        model.history["accuracy"] = [0.5]
        return model

    monkeypatch.setattr(models, "train", train_then_break_the_folder)
    assert main(["digits", "train", "--data", str(tmp_path / "train.csv"), "--validate", "none",
                 "--out", str(out_dir / "model.npz")]) == 2
    err = capsys.readouterr().err
    assert "cannot write the trained model" in err and "Traceback" not in err
    rescued = err.split("it was saved to ")[1].split(" instead")[0]
    assert load(rescued).n_inputs == 784


def test_a_real_process_prints_no_traceback_for_a_bad_option(tmp_path):
    run = subprocess.run([*SCRATCHPILOT_CLI, "car", "train", "--val-fraction", "2", "--model", "p.npz"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 2
    assert "--val-fraction: must be a number ≥ 0 and < 1, got 2" in run.stderr
    assert "Traceback" not in run.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("start, stop, message", [("a", "5", "must be frame numbers"), ("1.5", "4", "must be frame"),
                                                  ("5", "2", "needs 0 ≤ START < STOP"), ("-1", "3", "needs 0 ≤")])
def test_exclude_and_restore_take_frame_numbers(start, stop, message, tmp_path, capsys):
    for option in ("--exclude", "--restore"):
        assert main(["car", "sessions", str(tmp_path), option, "s", start, stop]) == 2
        err = capsys.readouterr().err
        assert f"{option} s {start} {stop}: " in err and message in err
