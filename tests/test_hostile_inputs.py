"""The hostile probe of issue 14 replayed against the real command: one input of each class, each run in its
own ``scratchpilot`` process. None may print a Python traceback; each gets a clear message naming the input
(exit status 2), or does what it still can with it (exit status 0).

The detailed tests of each class live beside the code they guard (test_cli_options, test_data_idx,
test_data_kaggle, test_report, test_nn_io, test_nn_io_memory, test_model_file_cli, test_car_sessions,
test_car_import, test_web_connections); this file checks the whole path, process and all.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import zipfile
import zlib

import model_files
import numpy as np
import pytest
from support import SCRATCHPILOT_CLI
from test_car_sessions import make_session

from scratchpilot.data import write_idx, write_kaggle_csv
from scratchpilot.nn import Dense, Sequential


def digits_model(path):
    model = Sequential([Dense(784, 10)], seed=0)
    model.metadata = {"task": "digits", "labels": [str(i) for i in range(10)]}
    model.save(path)
    return path


def tampered_config(path, source, change):
    """``source`` re-saved with its config changed by ``change(config)`` (the arrays kept)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(path, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename == "config.json.npy":
                config = json.loads(np.lib.format.read_array(io.BytesIO(data)).tobytes())
                change(config)
                raw = np.frombuffer(json.dumps(config).encode(), np.uint8)
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, raw)
                data = buffer.getvalue()
            zout.writestr(item.filename, data)
    return path


def csv_bomb(path, unpacked=96 << 20):
    """A Kaggle test CSV that unpacks to ``unpacked`` bytes from well under a megabyte."""
    row = (",".join(["0"] * 784) + "\n").encode()
    header = (",".join(f"pixel{i}" for i in range(784)) + "\n").encode()
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as fh:
        fh.write(packer.compress(header))
        block = row * 1000
        for _ in range(unpacked // len(block)):
            fh.write(packer.compress(block))
        fh.write(packer.flush())
    return path


def case_output_path(tmp):
    (tmp / "notes.txt").write_text("a file\n")
    return ["digits", "train", "--out", str(tmp / "notes.txt" / "model.npz")], 2, "is a file, not a folder"


def case_numeric_option(tmp):
    return ["car", "train", "--sessions", str(tmp), "--val-fraction", "2"], 2, "--val-fraction: must be a number"


def case_idx_of_no_images(tmp):
    write_idx(tmp / "empty-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    write_idx(tmp / "empty-labels-idx1-ubyte", np.zeros(0, np.uint8))
    return ["data", "info", str(tmp / "empty-images-idx3-ubyte")], 2, "holds no images"


def case_damaged_gzip(tmp):
    (tmp / "junk.csv.gz").write_bytes(b"\x1f\x8b" + bytes(range(200)))
    return ["report", "data", str(tmp / "junk.csv.gz"), "--out", str(tmp / "r.html")], 2, "junk.csv.gz"


def case_csv_bomb(tmp):
    csv_bomb(tmp / "bomb.csv.gz")
    return (["digits", "kaggle", "--test", str(tmp / "bomb.csv.gz"), "--model", str(digits_model(tmp / "m.npz")),
             "--out", str(tmp / "s.csv")], 2, "decompression bomb")


def case_model_lying_about_its_size(tmp):
    model_files.huge_layer(tmp / "huge.npz")
    return ["digits", "evaluate", "--model", str(tmp / "huge.npz")], 2, "huge.npz"


def case_memory_before_checking(tmp):
    model_files.many_layers(tmp / "layers.npz")
    return ["digits", "predict", "--model", str(tmp / "layers.npz"), "--data", "mnist-test"], 2, "layers.npz"


def case_report_model_tampered(tmp):
    tampered_config(tmp / "t.npz", digits_model(tmp / "m.npz"),
                    lambda c: c.update(history={"loss": "abc"}, metadata={"labels": 5}))
    return ["report", "model", str(tmp / "t.npz"), "mnist-test", "--out", str(tmp / "r.html")], 2, "t.npz"


def case_pilot_metadata(tmp):
    make_session(tmp / "s", [0, 1, 2] * 4)
    return (["car", "check", "--model", str(digits_model(tmp / "m.npz")), "--sessions", str(tmp / "s"),
             "--sheet", str(tmp / "c.png")], 2, "not a pilot model")


def case_bad_session_manifest(tmp):
    good = make_session(tmp / "root", [0, 1, 2] * 4, name="good")
    bad = make_session(tmp / "root", [0, 1, 2] * 4, name="bad")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["chunks"][0]["start"] = "zero"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    assert good.exists()
    return ["car", "sessions", str(tmp / "root")], 0, "bad"


def case_truncated_chunk(tmp):
    path = make_session(tmp / "root", [0, 1, 2, 1] * 10, episodes=[i // 20 for i in range(40)])
    chunk = sorted(path.glob("chunk-*.npz"))[1]
    chunk.write_bytes(chunk.read_bytes()[:100])
    return (["car", "train", "--sessions", str(tmp / "root"), "--epochs", "1", "--val-fraction", "0",
             "--history-lag", "0", "--model", str(tmp / "p.npz")], 0, f"skipped {chunk.name}")


def case_deleted_manifest(tmp):
    path = make_session(tmp / "root", [0, 1, 2] * 4, name="lost")
    (path / "manifest.json").unlink()
    return ["car", "sessions", str(tmp / "root")], 0, "--repair"


def case_text_file_named_npz(tmp):
    (tmp / "notes.npz").write_text("not a model at all\n")
    return ["digits", "evaluate", "--model", str(tmp / "notes.npz")], 2, "not an .npz archive"


def case_folder_named_csv(tmp):
    (tmp / "x.csv").mkdir()
    return ["digits", "predict", "--model", str(digits_model(tmp / "m.npz")), "--data", str(tmp / "x.csv"),
            "--out", str(tmp / "p.csv")], 2, "is a folder"


def case_idx_of_255_dimensions(tmp):
    header = b"\x00\x00\x08" + bytes([255]) + (1).to_bytes(4, "big") * 255
    (tmp / "odd-images-idx3-ubyte").write_bytes(header + b"\x00")
    return ["data", "info", str(tmp / "odd-images-idx3-ubyte")], 2, "odd-images-idx3-ubyte"


CASES = {name.removeprefix("case_"): fn for name, fn in globals().items() if name.startswith("case_")}


@pytest.mark.parametrize("name", list(CASES))
def test_no_command_prints_a_traceback(name, tmp_path):
    argv, status, message = CASES[name](tmp_path)
    run = subprocess.run([*SCRATCHPILOT_CLI, *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    output = run.stdout + run.stderr
    assert "Traceback" not in output, output[-3000:]
    assert run.returncode == status, output[-3000:]
    assert message in output, output[-3000:]


def test_a_pipe_given_as_the_test_csv_is_read_once(tmp_path, shared_data):
    from scratchpilot.data import resolve_dataset

    test = resolve_dataset("mnist-test")
    write_kaggle_csv(tmp_path / "test.csv", test.images[:50].reshape(-1, 784))
    model = digits_model(tmp_path / "m.npz")
    run = subprocess.run([*SCRATCHPILOT_CLI, "digits", "kaggle", "--test", "/dev/stdin", "--model", str(model),
                          "--out", str(tmp_path / "s.csv")], input=(tmp_path / "test.csv").read_bytes(),
                         capture_output=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 51


def test_the_bomb_really_is_one(tmp_path):
    """The CSV bomb of the sweep: under 1 MB on disk, about 96 MB unpacked (so the refusal is the guard's)."""
    path = csv_bomb(tmp_path / "b.csv.gz")
    assert path.stat().st_size < 1 << 20
    with gzip.open(path) as fh:
        assert sum(len(block) for block in iter(lambda: fh.read(1 << 22), b"")) > 90 << 20


def test_a_pipe_given_as_the_data_is_read_as_a_csv(tmp_path, shared_data):
    """``--data /dev/stdin``: a pipe has no telling name; it is read (once) as the Kaggle CSV it holds."""
    from scratchpilot.data import resolve_dataset

    test = resolve_dataset("mnist-test")
    write_kaggle_csv(tmp_path / "test.csv", test.images[:30].reshape(-1, 784), test.labels[:30])
    model = digits_model(tmp_path / "m.npz")
    run = subprocess.run([*SCRATCHPILOT_CLI, "digits", "evaluate", "--model", str(model), "--data", "/dev/stdin"],
                         input=(tmp_path / "test.csv").read_bytes(), capture_output=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    assert "(" in run.stdout.decode() and "/ 30)" in run.stdout.decode()
