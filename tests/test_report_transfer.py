"""``report model`` on a transfer model: real MNIST digits as PNG class folders, a small scratchpilot
backbone (an MLP cut before its last layer), trained with ``transfer train`` and checked against
``transfer evaluate`` and ``transfer predict`` on the same folder."""

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from scratchpilot.cli import main

PIL = pytest.importorskip("PIL.Image")
CLASSES = ("0", "1")
#: real ones stored in the "0" folder: the confident mistakes the report must show
MISLABELLED = 3
BIG = 100  # side of the mislabelled images: their thumbnails must be shrunk to 64 px


def _backbone(path, seed=0):
    from scratchpilot import nn

    network = nn.Sequential([nn.Flatten(), nn.Dense(784, 32), nn.ReLU(), nn.Dense(32, 10)], seed=seed,
                            input_shape=(28, 28, 1))
    network.save(path)
    return path


def _train(root, backbone, out, cache):
    assert main(["transfer", "train", str(root / "train"), "--out", str(out), "--backbone", str(backbone),
                 "--cut", "3", "--epochs", "30", "--batch-size", "4", "--no-progress", "--cache-dir", str(cache)]) == 0
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Training and evaluation folders, and a transfer model trained on the first."""
    from scratchpilot.data import load_mnist

    (images, labels), _ = load_mnist("digits", download=False, progress=False)
    root = tmp_path_factory.mktemp("transfer-report")
    for k in CLASSES:
        chosen = np.flatnonzero(labels == int(k))
        for part, members in (("train", chosen[:40]), ("eval", chosen[40:60])):
            (root / part / k).mkdir(parents=True)
            for i in members:
                PIL.fromarray(images[i]).save(root / part / k / f"{i}.png")
    for i in np.flatnonzero(labels == 1)[100:100 + MISLABELLED]:
        PIL.fromarray(images[i]).convert("RGB").resize((BIG, BIG), PIL.BILINEAR).save(
            root / "eval" / "0" / f"wrong-{i}.png")
    (root / "eval" / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "eval" / "0" / "notes.txt").write_text("not an image")
    cache = root / "cache"
    backbone = _backbone(root / "mlp.npz")
    model = _train(root, backbone, root / "m.npz", cache)
    return {"root": root, "eval": root / "eval", "model": model, "cache": cache, "backbone": backbone}


@pytest.fixture(scope="module")
def outcome(world, tmp_path_factory):
    """The report, and what ``transfer evaluate`` and ``transfer predict`` say on the same folder."""
    out = tmp_path_factory.mktemp("out")
    common = ["--model", str(world["model"]), "--no-progress", "--cache-dir", str(world["cache"])]
    assert main(["transfer", "evaluate", str(world["eval"]), *common, "--json", str(out / "e.json")]) == 0
    assert main(["transfer", "predict", str(world["eval"]), *common, "--top", "2",
                 "--json", str(out / "p.json")]) == 0
    assert main(["report", "model", str(world["model"]), str(world["eval"]), "--out", str(out / "r.html"),
                 "--json", str(out / "r.json"), "--cache-dir", str(world["cache"]), "--no-progress"]) == 0
    return {"evaluated": json.loads((out / "e.json").read_text()),
            "predicted": json.loads((out / "p.json").read_text()),
            "report": json.loads((out / "r.json").read_text()), "html": (out / "r.html").read_text()}


def test_accuracy_and_confusion_match_transfer_evaluate(outcome):
    evaluated, report, page = outcome["evaluated"], outcome["report"], outcome["html"]
    assert evaluated["n"] == 2 * 20 + MISLABELLED  # the broken PNG and the text file left out
    assert report["task"] == "transfer" and report["labels"] == list(CLASSES)
    assert report["n"] == evaluated["n"] and report["correct"] == evaluated["correct"]
    assert report["accuracy"] == pytest.approx(evaluated["accuracy"])
    assert report["accuracy_ci95"] == pytest.approx(evaluated["accuracy_ci95"])
    assert report["confusion"] == evaluated["confusion"]
    assert evaluated["confusion"][0][1] >= MISLABELLED  # the ones in the zeros folder, taken for ones
    low, high = evaluated["accuracy_ci95"]
    assert (f"Accuracy <b>{evaluated['accuracy']:.2%}</b> ({evaluated['correct']:,d} of {evaluated['n']:,d}); "
            f"95% Wilson interval <b>{low:.2%} – {high:.2%}</b>") in page
    for row in evaluated["per_class"]:  # the per-label table
        assert (f"<tr><td>{row['label']}</td><td class=\"num\">{row['precision']:.2%}</td>"
                f"<td class=\"num\">{row['recall']:.2%}</td>") in page
    confused = evaluated["confusion"][0][1]
    assert ("<tr><th>true</th><th>predicted as</th><th class=\"num\">count</th></tr>"
            f"<tr><td>0</td><td>1</td><td class=\"num\">{confused}</td></tr>") in page
    assert 'alt="confusion"' in page and 'alt="learning curves"' in page  # history from transfer train
    assert report["history"]["loss"] and "val_accuracy" in report["history"]


def test_calibration_matches_an_independent_computation(outcome):
    """ECE from ``transfer predict``'s probabilities and the folder names, 15 equal bins."""
    confidence, correct = [], []
    for row in outcome["predicted"]["predictions"]:
        top = row["top"][0]
        confidence.append(top["probability"])
        correct.append(top["label"] == Path(row["file"]).parent.name)
    confidence, correct = np.array(confidence), np.array(correct)
    assert len(confidence) == outcome["evaluated"]["n"]
    which = np.clip(np.ceil(confidence * 15).astype(int) - 1, 0, 14)  # bins (low, high], the first [0, high]
    ece = sum(np.sum(which == b) / len(confidence) * abs(correct[which == b].mean() - confidence[which == b].mean())
              for b in range(15) if np.any(which == b))
    report, page = outcome["report"], outcome["html"]
    assert report["calibration"]["ece"] == pytest.approx(ece, abs=1e-6)
    assert '<section id="calibration"><h2>5. Calibration</h2>' in page
    assert f"Expected calibration error <b>{ece:.2%}</b>" in page
    assert 'alt="reliability diagram"' in page and "Per label (one-vs-rest)" in page


def test_confident_mistakes_are_thumbnails_of_the_image_files(outcome, world):
    page, report = outcome["html"], outcome["report"]
    thumbs = re.findall(r'<div class="thumb"><img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="thumbnail">'
                        r'<div class="cap">([^<]+)<br>', page)
    mistakes = report["confident_mistakes"]
    assert len(thumbs) == len(mistakes) >= MISLABELLED
    assert [caption for _, caption in thumbs] == [m["where"] for m in mistakes]
    planted = {p.relative_to(world["eval"]).as_posix() for p in (world["eval"] / "0").glob("wrong-*.png")}
    assert len(planted) == MISLABELLED and planted <= {m["where"] for m in mistakes}
    for data, name in thumbs:
        shown = PIL.open(io.BytesIO(base64.b64decode(data)))
        source = PIL.open(world["eval"] / name)
        if name.startswith("0/wrong-"):  # 100 px RGB files, shrunk to 64 px and not enlarged again
            assert shown.size == (64, 64) and shown.mode == "RGB"
            expected = np.asarray(source.resize((64, 64), PIL.BILINEAR), dtype=np.float64)
            assert np.abs(np.asarray(shown, dtype=np.float64) - expected).mean() < 12
        else:  # 28 px digits, enlarged 3 times pixel for pixel
            assert shown.size == (84, 84)
            assert np.array_equal(np.asarray(shown)[::3, ::3], np.asarray(source))


def test_unreadable_images_are_skipped_and_counted(outcome):
    report, page = outcome["report"], outcome["html"]
    assert [b["file"] for b in report["images"]["unreadable"]] == ["1/broken.png"]
    assert report["images"]["skipped_not_images"] == ["0/notes.txt"]
    assert report["images"]["found"] == 2 * 20 + MISLABELLED + 1
    assert "<b>1 unreadable images were skipped</b> and 1 files that are not images" in page
    assert "<td>1/broken.png</td>" in page


def test_clear_errors(world, tmp_path, capsys):
    model, cache = world["model"], world["cache"]

    def fails(*argv) -> str:
        capsys.readouterr()
        assert main(["report", "model", *map(str, argv), "--out", str(tmp_path / "r.html"),
                     "--cache-dir", str(cache), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and not (tmp_path / "r.html").exists()
        return err

    unknown = tmp_path / "unknown"
    shutil.copytree(world["eval"] / "1", unknown / "7")
    assert "class folders ['7'] are not classes of the model" in fails(model, unknown)
    assert "is a transfer model: it is assessed on a folder" in fails(model, tmp_path / "nowhere")
    assert "is a transfer model" in fails(model, world["eval"] / "0" / "notes.txt")

    # the backbone file gone, or changed since training
    backbone = tmp_path / "mlp.npz"
    shutil.copy(world["backbone"], backbone)
    own = _train(world["root"], backbone, tmp_path / "own.npz", tmp_path / "cache")
    backbone.rename(tmp_path / "away.npz")
    assert "its backbone cannot be loaded" in fails(own, world["eval"])
    _backbone(backbone, seed=1)
    assert "is not the one this model was trained on" in fails(own, world["eval"])
    backbone.write_bytes(b"PK not a model")
    assert "its backbone cannot be loaded" in fails(own, world["eval"])
