"""The CRISP-DM reports end to end: MNIST train vs test, a damaged Kaggle CSV, an image folder, driving
sessions (synthetic with injected faults, and the real donkeycar tub), a digits model and a pilot.

Every number checked against the report's JSON is computed again here in a different way; the pages
are rendered in headless Chromium and screenshots saved to test-artifacts/.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scratchpilot.cli import main
from scratchpilot.data import CsvFormatError, read_kaggle_csv, resolve_dataset, to_features, write_kaggle_csv

#: MNIST class counts as published in shared/data/README.md (checked there against the official files)
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ------------------------------------------------------------------------------------------- helpers


def render(browser, html_path: Path, screenshot: Path) -> dict:
    """Open a report from disk in Chromium, check that it is self-contained and drawn, and screenshot it."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors, requests = [], []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("request", lambda request: requests.append(request.url))
    page.goto(html_path.resolve().as_uri())
    page.wait_for_load_state("load")
    state = page.evaluate("""() => ({
        images: document.images.length,
        broken: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length,
        sections: document.querySelectorAll('section').length,
        height: document.body.scrollHeight,
        title: document.title})""")
    page.screenshot(path=str(screenshot), full_page=True)
    context.close()
    assert not errors, errors
    outside = [url for url in requests if not url.startswith(("file:", "data:"))]
    assert not outside, f"the page fetched {outside}: it must be self-contained"
    assert state["images"] > 0 and state["broken"] == 0, state
    assert screenshot.stat().st_size > 20_000
    return state


def assert_self_contained(html: str) -> None:
    assert "<script" not in html
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", html), "external resource referenced"
    assert "data:image/png;base64," in html


def finding(report: dict, check: str, split: str | None = None) -> dict:
    matches = [f for f in report["findings"] if f["check"] == check and (split is None or f["split"] == split)]
    assert len(matches) == 1, (check, split, [(f["check"], f["split"]) for f in report["findings"]])
    return matches[0]


def digest_rows(images: np.ndarray) -> list[bytes]:
    """One SHA-1 per image: an independent way of finding identical images."""
    flat = images.reshape(len(images), -1)
    return [hashlib.sha1(row.tobytes()).digest() for row in flat]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scratchpilot.cli", *args], capture_output=True, text=True,
                          timeout=300)


# -------------------------------------------------------------------------------------- MNIST, data


@pytest.mark.slow
def test_mnist_train_vs_test_data_report(tmp_path, shared_data, browser, artifacts_dir):
    """The acceptance run: full MNIST train compared with test, as a fresh process (its time: bench/report_speed.py)."""
    out, out_json = tmp_path / "mnist.html", tmp_path / "mnist.json"
    done = run_cli("report", "data", "mnist", "--out", str(out), "--json", str(out_json), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# Data report: mnist-train vs mnist-test")
    assert "## Findings" in done.stdout

    report = json.loads(out_json.read_text())
    train, test = resolve_dataset("mnist"), resolve_dataset("mnist-test")
    described = {d["name"]: d for d in report["description"]}
    assert described["mnist-train"]["records"] == 60_000 and described["mnist-test"]["records"] == 10_000
    assert described["mnist-train"]["class_counts"] == MNIST_TRAIN_COUNTS
    assert described["mnist-test"]["class_counts"] == MNIST_TEST_COUNTS
    for source in described["mnist-train"]["sources"] + described["mnist-test"]["sources"]:
        assert source["sha256"] == hashlib.sha256(Path(source["path"]).read_bytes()).hexdigest()
        assert source["bytes"] == Path(source["path"]).stat().st_size

    # duplicates and leakage, recounted with SHA-1 of every image
    train_digests, test_digests = digest_rows(train.images), digest_rows(test.images)
    for name, digests in (("mnist-train", train_digests), ("mnist-test", test_digests)):
        copies = len(digests) - len(set(digests))
        assert report["quality"]["splits"][name]["duplicates"]["extra_copies"] == copies
    train_set = set(train_digests)
    leaked = sum(d in train_set for d in test_digests)
    assert report["quality"]["comparison"]["images_of_other_in_primary"] == leaked
    assert finding(report, "leakage")["severity"] == ("error" if leaked else "ok")

    # constant pixels: positions where every image equals the first one
    constant = int(np.all(train.images == train.images[0], axis=0).sum())
    assert report["quality"]["splits"]["mnist-train"]["constant_pixels"]["count"] == constant
    assert finding(report, "constant_pixels", "mnist-train")["count"] == constant

    # imbalance from the published counts
    assert finding(report, "class_imbalance", "mnist-train")["ratio"] == pytest.approx(6742 / 5421)

    # label suspects: a plausible nearest-neighbour agreement, a shortlist sorted by suspicion
    suspects = report["quality"]["splits"]["mnist-train"]["label_suspects"]
    assert 0.93 < suspects["nearest_neighbour_agreement"] < 0.99
    ratios = [s["ratio"] for s in suspects["listed"]]
    assert ratios == sorted(ratios, reverse=True) and min(ratios) > 1
    first = suspects["listed"][0]
    assert first["label"] == int(train.labels[first["index"]]) and first["where"] == f"#{first['index']}"

    html = out.read_text()
    assert_self_contained(html)
    state = render(browser, out, artifacts_dir / "report-data-mnist.png")
    assert state["sections"] == 3 and state["title"] == "Data report: mnist-train vs mnist-test"


# ------------------------------------------------------------------------------------ damaged CSV


@pytest.fixture(scope="module")
def damaged_csv(tmp_path_factory, shared_data):
    """3,000 MNIST rows as a Kaggle train CSV with known damage; returns the path and what was done."""
    root = tmp_path_factory.mktemp("damaged")
    train = resolve_dataset("mnist")
    rng = np.random.default_rng(7)
    rows = np.sort(rng.choice(len(train), 3000, replace=False))
    images, labels = train.images[rows].reshape(-1, 784).copy(), train.labels[rows].copy()
    # duplicates: rows 0..7 copied over rows 500..507 (same labels), rows 8, 9 over 510, 511 with other labels
    images[500:508], labels[500:508] = images[0:8], labels[0:8]
    images[510:512], labels[510:512] = images[8:10], (labels[8:10] + 1) % 10
    # swapped labels on 20 rows away from every other change
    swapped = np.sort(rng.choice(np.arange(1000, 3000), 20, replace=False))
    labels[swapped] = (labels[swapped] + rng.integers(1, 10, 20)) % 10
    path = root / "damaged.csv"
    write_kaggle_csv(path, images, labels)
    lines = path.read_bytes().split(b"\n")

    def set_field(row: int, column: int, value: bytes) -> None:  # row 0-based data row, column 0-based field
        fields = lines[row + 1].split(b",")
        fields[column] = value
        lines[row + 1] = b",".join(fields)

    out_of_range = {(200, 301): b"300", (201, 1): b"12", (202, 785): b"256", (203, 10): b"-1"}
    for (row, column), value in out_of_range.items():
        set_field(row, column - 1, value)
    set_field(300, 400, b"")  # a missing value on line 302
    set_field(301, 401, b"1.5")  # not an integer, line 303
    lines[303] = lines[303].rsplit(b",", 1)[0]  # line 304 (data row 302) is one column short
    path.write_bytes(b"\n".join(lines))
    return {"path": path, "images": images, "labels": labels, "swapped_lines": set((swapped + 2).tolist()),
            "out_of_range": {(row + 2, column) for row, column in out_of_range}}


def test_damaged_csv_every_finding_reported(damaged_csv, tmp_path, browser, artifacts_dir, capsys):
    path = damaged_csv["path"]
    with pytest.raises(CsvFormatError):
        read_kaggle_csv(path)  # the strict reader refuses it; the report still reads what it can
    out, out_json = tmp_path / "damaged.html", tmp_path / "damaged.json"
    assert main(["report", "data", str(path), "--out", str(out), "--json", str(out_json), "--no-progress"]) == 0
    summary = capsys.readouterr().out
    assert "out-of-range values" in summary and "groups of identical images" in summary
    report = json.loads(out_json.read_text())
    split = "damaged.csv"

    out_of_range = finding(report, "out_of_range", split)
    assert out_of_range["severity"] == "error" and out_of_range["count"] == 4
    assert {(item["line"], item["column"]) for item in out_of_range["items"]} == damaged_csv["out_of_range"]
    assert {item["value"] for item in out_of_range["items"]} == {"300", "12", "256", "-1"}
    missing = finding(report, "missing", split)
    assert missing["count"] == 1 and (missing["items"][0]["line"], missing["items"][0]["column"]) == (302, 401)
    not_integer = finding(report, "not_integer", split)
    assert not_integer["items"][0]["line"] == 303 and not_integer["items"][0]["value"] == "1.5"
    short = finding(report, "column_count", split)
    assert short["items"][0]["line"] == 304 and "784 columns, expected 785" in short["items"][0]["message"]
    bad_lines = {202, 203, 204, 205, 302, 303, 304}
    described = report["description"][0]
    assert described["records_read"] == 3000 and described["records"] == 3000 - len(bad_lines)
    assert finding(report, "records_excluded", split)["count"] == len(bad_lines)

    # duplicates among the rows that survived, recounted independently
    keep = np.array([line not in bad_lines for line in range(2, 3002)])
    kept_images, kept_labels = damaged_csv["images"][keep], damaged_csv["labels"][keep]
    groups: dict[bytes, list[int]] = {}
    for i, digest in enumerate(digest_rows(kept_images)):
        groups.setdefault(digest, []).append(i)
    repeated = [g for g in groups.values() if len(g) > 1]
    duplicates = report["quality"]["splits"][split]["duplicates"]
    assert duplicates["groups"] == len(repeated) == 10
    assert duplicates["extra_copies"] == sum(len(g) - 1 for g in repeated)
    assert duplicates["conflicting_label_groups"] == sum(len(set(kept_labels[g])) > 1 for g in repeated) == 2
    assert finding(report, "conflicting_duplicates", split)["count"] == 2
    assert described["class_counts"] == np.bincount(kept_labels, minlength=10).tolist()

    # the swapped labels come out near the top of the suspects
    listed = report["quality"]["splits"][split]["label_suspects"]["listed"]
    lines = [int(item["where"].removeprefix("line ")) for item in listed]
    swapped = damaged_csv["swapped_lines"]
    assert len(swapped & set(lines)) >= 17, sorted(swapped - set(lines))
    assert len(swapped & set(lines[:40])) >= 13
    for item in listed[:5]:
        assert item["label"] == kept_labels[item["index"]]

    html = out.read_text()
    assert_self_contained(html)
    assert "pixel value 300 is outside 0..255" in html and "label 12 is outside 0..9" in html
    render(browser, out, artifacts_dir / "report-data-damaged-csv.png")


# ----------------------------------------------------------------------------------- image folder


def test_image_folder_report(tmp_path, shared_data, capsys):
    folder = tmp_path / "images"
    assert main(["digits", "export-images", "mnist-test", str(folder), "--limit", "300"]) == 0
    (folder / "3" / "broken.png").write_bytes(b"not a png")
    from PIL import Image

    Image.new("L", (20, 20)).save(folder / "5" / "small.png")
    capsys.readouterr()
    out_json = tmp_path / "folder.json"
    assert main(["report", "data", str(folder), "--out", str(tmp_path / "folder.html"), "--json", str(out_json),
                 "--no-progress"]) == 0
    report = json.loads(out_json.read_text())
    described = report["description"][0]
    test = resolve_dataset("mnist-test")
    assert described["kind"] == "image-folder" and described["records"] == 300 and described["records_read"] == 302
    assert described["class_counts"] == np.bincount(test.labels[:300], minlength=10).tolist()
    assert "3/broken.png" in finding(report, "unreadable")["items"][0]["message"]
    assert finding(report, "size")["items"][0]["file"] == "5/small.png"


# --------------------------------------------------------------------------------------- model


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory, shared_data):
    from scratchpilot.digits import models

    train, test = resolve_dataset("mnist"), resolve_dataset("mnist-test")
    config = models.TrainConfig(name="tiny", hidden=(32,), activation="relu", loss="softmax", init="he",
                                optimizer="sgd", lr=0.1, momentum=0.9, epochs=2, batch_size=128)
    model = models.train(config, train.images[:8000], train.labels[:8000], seed=0, progress=False,
                         validation=(test.images[:1000], test.labels[:1000]))
    path = tmp_path_factory.mktemp("model") / "tiny.npz"
    model.save(path)
    return path


def wilson(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    p = correct / n
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (p + z * z / (2 * n) - spread) / (1 + z * z / n), (p + z * z / (2 * n) + spread) / (1 + z * z / n)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    totals: dict[int, list[float]] = {}
    for c, ok in zip(confidence.tolist(), correct.tolist(), strict=True):
        b = min(max(math.ceil(c * n_bins) - 1, 0), n_bins - 1)  # bins (k/15, (k+1)/15]
        totals.setdefault(b, []).append((c, ok))
    return sum(len(items) / len(confidence) * abs(np.mean([ok for _, ok in items]) - np.mean([c for c, _ in items]))
               for items in totals.values())


def test_model_report_numbers_match_independent_computation(digits_model, tmp_path, browser, artifacts_dir,
                                                            capsys):
    from scratchpilot.nn import load

    out, out_json = tmp_path / "model.html", tmp_path / "model.json"
    assert main(["report", "model", str(digits_model), "mnist-test", "--out", str(out), "--json", str(out_json)]) == 0
    assert capsys.readouterr().out.startswith("# Model report: tiny.npz on mnist-test")
    report = json.loads(out_json.read_text())

    model, test = load(digits_model), resolve_dataset("mnist-test")
    probabilities = model.predict_proba(to_features(test.images))
    predicted, truth = probabilities.argmax(axis=1), test.labels
    correct = int(np.sum(predicted == truth))
    assert report["n"] == 10_000 and report["correct"] == correct
    assert report["accuracy"] == pytest.approx(correct / 10_000)
    assert report["accuracy_ci95"] == pytest.approx(wilson(correct, 10_000))
    confusion = np.zeros((10, 10), int)
    for t, p in zip(truth, predicted, strict=True):
        confusion[t, p] += 1
    assert report["confusion"] == confusion.tolist()
    for row in report["per_class"]:
        k = row["class"]
        assert row["precision"] == pytest.approx(np.mean(truth[predicted == k] == k))
        assert row["recall"] == pytest.approx(np.mean(predicted[truth == k] == k))
        assert row["support"] == int(np.sum(truth == k))
    confidence = probabilities.max(axis=1).astype(np.float64)
    assert report["calibration"]["ece"] == pytest.approx(expected_calibration_error(confidence, predicted == truth),
                                                         abs=1e-9)
    assert sum(b["count"] for b in report["calibration"]["bins"]) == 10_000
    mistakes = report["confident_mistakes"]
    assert len(mistakes) == min(200, 10_000 - correct)
    assert [m["confidence"] for m in mistakes] == sorted((m["confidence"] for m in mistakes), reverse=True)
    worst = mistakes[0]
    assert predicted[worst["index"]] != truth[worst["index"]]
    assert worst["confidence"] == pytest.approx(np.max(confidence[predicted != truth]))
    assert report["history"]["val_accuracy"] == pytest.approx(model.history["val_accuracy"])

    html = out.read_text()
    assert_self_contained(html)
    state = render(browser, out, artifacts_dir / "report-model-mnist.png")
    assert state["sections"] == 5


def test_bad_inputs_give_clear_errors(digits_model, tmp_path, capsys):
    assert main(["report", "data", str(tmp_path / "nothing.csv")]) == 2
    assert "no such CSV file" in capsys.readouterr().err
    assert main(["report", "data", "mnist-validation"]) == 2
    assert "unknown dataset 'mnist-validation'" in capsys.readouterr().err
    fake = tmp_path / "fake.npz"
    fake.write_bytes(b"PK not a model")
    assert main(["report", "model", str(fake), "mnist-test"]) == 2
    assert str(fake) in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", "data", str(empty)]) == 2
    assert "no subfolders" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ unit checks


def test_lenient_reader_positions_and_values(tmp_path, shared_data):
    from scratchpilot.report.lenient_csv import read_csv_lenient

    test = resolve_dataset("mnist-test")
    path = tmp_path / "t.csv"
    write_kaggle_csv(path, test.images[:50], test.labels[:50])
    lines = path.read_text().split("\n")
    def edit(line: int, column: int, value: str) -> None:  # 1-based file line and column
        fields = lines[line - 1].split(",")
        fields[column - 1] = value
        lines[line - 1] = ",".join(fields)

    edit(6, 1, "10")  # a label out of range
    edit(8, 100, " 7 ")  # a padded but valid pixel: accepted
    edit(9, 200, "0007")  # leading zeros: accepted
    lines[9] = lines[9].replace(",", ",,", 1)  # line 10: one column too many
    path.write_text("\r\n".join(lines))
    result = read_csv_lenient(path)
    assert [(p.kind, p.line, p.column) for p in result.problems] == [("out_of_range", 6, 1),
                                                                     ("column_count", 10, 786)]
    keep = [i for i in range(50) if i + 2 not in (6, 10)]
    expected = test.images[:50].reshape(-1, 784).copy()
    expected[6, 98], expected[7, 198] = 7, 7
    assert result.line_numbers.tolist() == [i + 2 for i in keep]
    assert np.array_equal(result.pixels, expected[keep])
    assert np.array_equal(result.labels, test.labels[keep])
    assert result.n_data_lines == 50 and result.n_bad_lines == 2


def test_quality_helpers_against_brute_force():
    from scratchpilot.report import quality

    rng = np.random.default_rng(3)
    images = rng.integers(0, 4, (300, 3, 3), dtype=np.uint8)  # small alphabet: many natural duplicates
    groups = quality.duplicate_groups(images)
    brute: dict[bytes, list[int]] = {}
    for i, image in enumerate(images):
        brute.setdefault(image.tobytes(), []).append(i)
    assert sorted(g.tolist() for g in groups) == sorted(g for g in brute.values() if len(g) > 1)
    other = rng.integers(0, 4, (100, 3, 3), dtype=np.uint8)
    index_a, index_b = quality.cross_duplicates(images, other)
    expected = sorted((i, j) for j, b in enumerate(other) for i, a in enumerate(images) if np.array_equal(a, b))
    assert sorted(zip(index_a.tolist(), index_b.tolist(), strict=True)) == expected
    balance = quality.class_imbalance(np.array([10, 30, 0]))
    assert balance["empty_classes"] == [2] and balance["ratio"] is None and balance["warning"]
    assert quality.class_imbalance(np.array([10, 14]))["ratio"] == pytest.approx(1.4)


def test_neighbour_votes_flag_a_swapped_label():
    from scratchpilot.report import quality

    rng = np.random.default_rng(0)
    centres = rng.integers(0, 256, (3, 8, 8))
    labels = np.repeat(np.arange(3), 40)
    images = np.clip(centres[labels] + rng.normal(0, 12, (120, 8, 8)), 0, 255).astype(np.uint8)
    labels[5] = 2  # an image of class 0 labelled 2
    votes = quality.neighbour_votes(images, labels, 3, np.random.default_rng(1), n_components=8)
    assert np.argmax(votes.ratio) == 5 and votes.other_class[5] == 0 and votes.ratio[5] > 2
    assert votes.distances[np.arange(120), labels].min() > 0  # leave-one-out: never its own neighbour


# ------------------------------------------------------------------------------------ driving


def _write_sessions(root: Path) -> dict:
    """Two simulator-shaped sessions with known faults; returns what each should show."""
    from scratchpilot.car.sessions import SessionWriter

    rng = np.random.default_rng(5)
    # session "faulty": 2 episodes of 150 frames at 50 fps
    labels = np.ones(300, np.int64)  # forward
    labels[40:60], labels[80:100] = 2, 3  # runs of left and right
    labels[120], labels[200] = 3, 2  # two single-frame blips
    episodes = np.repeat([0, 1], 150)
    times = np.concatenate([np.arange(150) * 0.02, np.arange(150) * 0.02])
    times[60:150] += 1.0  # a 1 s pause before frame 60
    times[100] = times[99] - 0.01  # the clock steps back once
    frames = rng.integers(0, 256, (300, 96, 96, 3), dtype=np.uint8)
    frames[30] = frames[29]
    frames[31] = frames[29]  # two frozen frames
    frames[64] = frames[63]  # one more, across a chunk boundary (chunks of 64 frames)
    frames[150] = frames[149]  # equal across the episode boundary: a duplicate, not a frozen frame
    with SessionWriter(root, source="sim", driver="test", name="faulty", chunk_frames=64, background=False) as w:
        for f, label, t, e in zip(frames, labels, times, episodes, strict=True):
            w.add(f, int(label), float(t), int(e))
    clean_labels = np.repeat([1, 2, 1, 3, 1], 20)
    with SessionWriter(root, source="sim", driver="expert", name="clean", chunk_frames=64, background=False) as w:
        for i, label in enumerate(clean_labels):
            w.add(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), int(label), i / 25, 0)
    duration = (times[:150].max() - times[:150].min()) + (times[150:].max() - times[150:].min())
    return {"faulty": {"labels": labels, "fps": 300 / duration}, "clean": {"labels": clean_labels, "fps": 100 / 3.96}}


def test_driving_sessions_report(tmp_path, browser, artifacts_dir, capsys):
    root = tmp_path / "sessions"
    expected = _write_sessions(root)
    out, out_json = tmp_path / "driving.html", tmp_path / "driving.json"
    assert main(["report", "data", str(root), "--out", str(out), "--json", str(out_json)]) == 0
    assert capsys.readouterr().out.startswith("# Data report: driving sessions in sessions")
    report = json.loads(out_json.read_text())
    sessions = {s["name"]: s for s in report["sessions"]}
    for name, facts in expected.items():
        assert sessions[name]["frames"] == len(facts["labels"])
        assert sessions[name]["label_counts"] == np.bincount(facts["labels"], minlength=5).tolist()
        assert sessions[name]["fps"] == pytest.approx(facts["fps"])
    faulty = sessions["faulty"]
    assert (faulty["gaps"], faulty["backward_steps"], faulty["frozen_frames"], faulty["label_blips"]) == (1, 1, 3, 2)
    assert faulty["longest_gap_s"] == pytest.approx(1.02)
    clean = sessions["clean"]
    assert (clean["gaps"], clean["backward_steps"], clean["frozen_frames"], clean["label_blips"]) == (0, 0, 0, 0)
    assert finding(report, "timestamps_backwards", "faulty")["severity"] == "error"
    assert finding(report, "timestamp_gaps", "faulty")["count"] == 1
    assert finding(report, "frozen_frames", "faulty")["count"] == 3
    assert finding(report, "label_blips", "faulty")["count"] == 2
    assert finding(report, "duplicates")["count"] == 4  # 3 frozen + 1 across the episode boundary
    assert finding(report, "unused_labels")["message"] == "labels never used: none, brake"
    total = np.bincount(np.concatenate([f["labels"] for f in expected.values()]), minlength=5)
    assert report["description"]["label_counts"] == total.tolist()
    assert finding(report, "class_imbalance")["ratio"] == pytest.approx(total[1] / total[2])

    assert_self_contained(out.read_text())
    state = render(browser, out, artifacts_dir / "report-data-driving.png")
    assert state["sections"] == 3


def test_pilot_model_report_on_real_tub(tmp_path, shared_data, browser, artifacts_dir, capsys):
    """A small pilot trained on the real donkeycar tub, assessed per label on the same sessions."""
    from scratchpilot import nn
    from scratchpilot.car.preprocess import default_spec, from_spec
    from scratchpilot.car.sessions import load_frames
    from scratchpilot.car.sessions.importers import import_tub

    root = tmp_path / "tub-sessions"
    import_tub(shared_data / "donkeycar-tub" / "tub.tar.gz", root)
    frames = load_frames([root])
    spec = default_spec(frames.features.shape[1:])
    features = from_spec(spec)(frames.features)
    labels = list(frames.label_names)
    model = nn.Sequential([nn.Dense(features.shape[1], 32), nn.ReLU(), nn.Dense(32, len(labels))],
                          loss=nn.SoftmaxCrossEntropy(), optimizer=nn.Adam(lr=1e-3), seed=0)
    model.fit(features[:800], frames.labels[:800], epochs=3, batch_size=32,
              validation_data=(features[800:], frames.labels[800:]), progress=False)
    model.metadata = {"task": "pilot", "labels": labels, "preprocessing": spec}
    model_path = tmp_path / "pilot.npz"
    model.save(model_path)

    out, out_json = tmp_path / "pilot.html", tmp_path / "pilot.json"
    assert main(["report", "model", str(model_path), str(root), "--out", str(out), "--json", str(out_json)]) == 0
    capsys.readouterr()
    report = json.loads(out_json.read_text())
    predicted = model.predict(features)
    assert report["task"] == "pilot" and report["labels"] == labels and report["n"] == 1000
    assert report["accuracy"] == pytest.approx(np.mean(predicted == frames.labels))
    by_label = {row["label"]: row for row in report["per_class"]}
    for k, name in enumerate(labels):
        assert by_label[name]["support"] == int(np.sum(frames.labels == k))
        if np.any(frames.labels == k):
            assert by_label[name]["recall"] == pytest.approx(np.mean(predicted[frames.labels == k] == k))
    assert report["per_session"][0]["frames"] == 1000
    assert_self_contained(out.read_text())
    render(browser, out, artifacts_dir / "report-model-pilot.png")


# ------------------------------------------------------------------------- damaged and hostile data files


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory, shared_data):
    """300 MNIST test rows as a Kaggle train CSV: its bytes and the rows."""
    test = resolve_dataset("mnist-test")
    path = tmp_path_factory.mktemp("small") / "small.csv"
    write_kaggle_csv(path, test.images[:300], test.labels[:300])
    return path.read_bytes(), test.images[:300], test.labels[:300]


def test_truncated_gzip_reports_the_rows_before_the_break(small_csv, tmp_path, capsys):
    import gzip

    text, images, labels = small_csv
    whole = gzip.compress(text)
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(whole[:len(whole) // 2])
    out_json = tmp_path / "cut.json"
    assert main(["report", "data", str(path), "--out", str(tmp_path / "cut.html"), "--json", str(out_json),
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "damaged gzip stream" in captured.out
    report = json.loads(out_json.read_text())
    damaged = finding(report, "damaged", "cut.csv.gz")
    assert damaged["severity"] == "error" and "the rest of cut.csv.gz cannot be read" in damaged["items"][0]["message"]
    n = report["description"][0]["records"]
    assert 20 < n < 300  # the whole lines before the break, every one of them as written
    assert damaged["items"][0]["line"] == n + 2
    assert report["description"][0]["class_counts"] == np.bincount(labels[:n], minlength=10).tolist()


@pytest.mark.parametrize("content, message", [
    (b"\x1f\x8b" + b"not gzip data at all" * 20, "bad.csv.gz: damaged gzip data"),  # gzip magic, then junk
    (b"\x1f\x8b\x08\x00" + bytes(6), "bad.csv.gz: damaged gzip data"),  # a header and nothing else
    (b"", "bad.csv.gz: empty file"),
])
def test_unreadable_gzip_is_a_clean_error(content, message, tmp_path, capsys):
    path = tmp_path / "bad.csv.gz"
    path.write_bytes(content)
    assert main(["report", "data", str(path), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


def test_decompression_bomb_is_refused(tmp_path, capsys, monkeypatch):
    import gzip

    from scratchpilot.data import _files

    monkeypatch.setattr(_files, "RATIO_FLOOR", 1 << 20)  # so that a 4 MB bomb is enough here
    bomb = tmp_path / "bomb.csv.gz"
    bomb.write_bytes(gzip.compress(("label," + ",".join(f"pixel{i}" for i in range(784)) + "\n").encode()
                                   + ("0," * 784 + "0\n").encode() * 2600))
    assert main(["report", "data", str(bomb), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert f"{bomb}: unpacks to more than 100 times its size" in err and "Traceback" not in err


def test_empty_idx_is_a_clean_error(tmp_path, capsys):
    from scratchpilot.data import write_idx

    path = write_idx(tmp_path / "empty-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    assert main(["report", "data", str(path), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "empty-images-idx3-ubyte: holds no images" in err and "Traceback" not in err


def test_report_reads_a_named_pipe_once(small_csv, tmp_path, capsys):
    import os
    import threading

    text, images, _ = small_csv
    fifo = tmp_path / "piped.csv"
    os.mkfifo(fifo)

    def feed():
        with open(fifo, "wb") as fh:  # blocks until the report opens it for reading
            fh.write(text)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    out_json = tmp_path / "piped.json"
    assert main(["report", "data", str(fifo), "--out", str(tmp_path / "p.html"), "--json", str(out_json),
                 "--no-progress"]) == 0
    writer.join(timeout=5)
    report = json.loads(out_json.read_text())
    assert report["description"][0]["records"] == 300 and report["quality"]["splits"]["piped.csv"][
        "value_problems"]["total"] == 0


def test_lenient_reader_bounds_what_it_reads(tmp_path):
    import zlib

    from fuzzing import check_parser

    from scratchpilot.report.lenient_csv import read_csv_lenient

    header = "label," + ",".join(f"pixel{i}" for i in range(784)) + "\n"
    # a bomb at the real defaults: 100 MB of text in a ~200 KB file, refused while it is read
    bomb = tmp_path / "bomb.csv.gz"
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    with open(bomb, "wb") as fh:
        fh.write(packer.compress(header.encode()))
        block = ("0," * 784 + "0\n").encode() * 640
        for _ in range(100):
            fh.write(packer.compress(block))
        fh.write(packer.flush())
    check_parser(lambda: read_csv_lenient(bomb), ValueError, str(bomb), max_bytes=48 << 20, max_seconds=20)
    with pytest.raises(ValueError, match="refused as a likely decompression bomb"):
        read_csv_lenient(bomb)
    # a 20 MB line of the right field count: looked at field by field, not with ten times its size in temporaries
    wide = tmp_path / "wide.csv"
    wide.write_bytes((header + "3," + ",".join(["1" * 25_000] * 784) + "\n" + "4," + "0," * 783 + "0\n").encode())
    result = check_parser(lambda: read_csv_lenient(wide), ValueError, str(wide), max_bytes=100 << 20)
    assert result.line_numbers.tolist() == [3] and result.problem_counts == {"out_of_range": 784}
    assert result.problems[0].value == "1" * 24 and result.problems[0].message.endswith("... is outside 0..255")


def test_lenient_reader_reads_a_pipe_once(small_csv):
    import gzip

    from support import pipe_path

    from scratchpilot.report.lenient_csv import read_csv_lenient

    text, images, labels = small_csv
    with pipe_path(gzip.compress(text)) as path:
        result = read_csv_lenient(path)
    assert np.array_equal(result.pixels, images.reshape(-1, 784)) and np.array_equal(result.labels, labels)
    assert result.n_problems == 0


def test_lenient_reader_reads_long_spellings_as_the_strict_one_does(tmp_path):
    # found by tests/test_fuzz_csv.py: 5,000 leading zeros are still the pixel 12 to the strict reader
    from scratchpilot.report.lenient_csv import read_csv_lenient

    header = "label," + ",".join(f"pixel{i}" for i in range(784))
    row = ["3"] + ["0"] * 784
    row[5], row[6] = "0" * 5000 + "12", "-" + "0" * 5000
    path = tmp_path / "zeros.csv"
    path.write_text(header + "\n" + ",".join(row) + "\n")
    strict = read_kaggle_csv(path)
    lenient = read_csv_lenient(path)
    assert lenient.n_problems == 0 and strict[0][0, 4] == lenient.pixels[0, 4] == 12
    np.testing.assert_array_equal(lenient.pixels, strict[0])
