"""Importing a real donkeycar tub v2 and AutoRCCar-style .npz files as sessions."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scratchpilot.car.links import LABELS
from scratchpilot.car.sessions import Session
from scratchpilot.car.sessions.importers import (
    ImportFormatError,
    angle_to_label,
    import_any,
    import_autorccar,
    import_tub,
)

TUB_ARCHIVE = Path(os.environ["SCRATCHPILOT_DATA"]) / "donkeycar-tub" / "tub.tar.gz"


@pytest.fixture(scope="module")
def tub_folder(tmp_path_factory) -> Path:
    """The real tub unpacked (with its macOS ``._`` file), for tests that edit it."""
    if not TUB_ARCHIVE.is_file():
        pytest.fail(f"test data not found: {TUB_ARCHIVE} (set SCRATCHPILOT_DATA)")
    folder = tmp_path_factory.mktemp("tub-src")
    with tarfile.open(TUB_ARCHIVE) as tar:
        tar.extractall(folder, filter="data")
    return folder / "tub"


@pytest.fixture(scope="module")
def catalog(tub_folder) -> list[dict]:
    return [json.loads(line) for line in (tub_folder / "catalog_0.catalog").read_text().splitlines()]


def expected_labels(records, steer=0.15, throttle=0.05) -> np.ndarray:
    angle = np.array([r["user/angle"] for r in records])
    gas = np.array([r["user/throttle"] for r in records])
    names = np.where(angle <= -steer, "left", np.where(angle >= steer, "right",
                     np.where(gas >= throttle, "forward", np.where(gas <= -throttle, "brake", "none"))))
    return np.array([LABELS.index(n) for n in names])


def copy_tub(tub_folder, tmp_path) -> Path:
    copy = tmp_path / "tub"
    shutil.copytree(tub_folder, copy)
    return copy


def test_the_real_tub_archive_becomes_a_session(tmp_path, tub_folder, catalog):
    path = import_tub(TUB_ARCHIVE, tmp_path / "sessions")
    session = Session.open(path)
    assert path.name == "tub-tub" and session.meta["source"] == "donkeycar-tub" and session.meta["driver"] == "user"
    assert len(session) == 1000 and session.frame_shape == (120, 160, 3)
    assert np.array_equal(session.labels, expected_labels(catalog))
    assert np.bincount(session.labels, minlength=5).tolist() == [0, 368, 175, 457, 0]
    assert np.allclose(session.timestamps, [r["_timestamp_ms"] / 1000 for r in catalog])
    assert set(session.episodes.tolist()) == {0}
    frames = session.frames()
    for index in (0, 517, 999):
        image = np.asarray(Image.open(tub_folder / "images" / catalog[index]["cam/image_array"]).convert("RGB"))
        assert np.array_equal(frames[index], image)
    info = session.meta["import"]
    assert info["format"] == "donkeycar-tub-v2" and info["steer_threshold"] == 0.15 and info["records"] == 1000


def test_deleted_records_and_mac_litter_in_a_folder(tmp_path, tub_folder, catalog):
    tub = copy_tub(tub_folder, tmp_path)
    records = (tub / "catalog_0.catalog").read_text().splitlines()
    (tub / "catalog_0.catalog").write_text("\n".join(records[:300]) + "\n")  # 300 records are enough here
    lines = (tub / "manifest.json").read_text().splitlines()
    meta = json.loads(lines[4])
    meta["deleted_indexes"] = [3, 4, 5, 298]
    lines[4] = json.dumps(meta)
    (tub / "manifest.json").write_text("\n".join(lines) + "\n")
    (tub / "images" / "._3_cam_image_array_.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    path = import_tub(tmp_path, tmp_path / "sessions", name="edited")  # a folder holding one tub
    session = Session.open(path)
    kept = [r for r in catalog[:300] if r["_index"] not in {3, 4, 5, 298}]
    assert len(session) == 296
    assert np.allclose(session.timestamps, [r["_timestamp_ms"] / 1000 for r in kept])
    assert np.array_equal(session.labels, expected_labels(kept))
    assert session.meta["import"]["deleted_records"] == 4


def test_thresholds_are_configurable(tmp_path, tub_folder, catalog):
    tub = copy_tub(tub_folder, tmp_path)
    lines = (tub / "catalog_0.catalog").read_text().splitlines()
    (tub / "catalog_0.catalog").write_text("\n".join(lines[:150]) + "\n")  # 150 records are enough here
    path = import_tub(tub, tmp_path / "sessions", steer_threshold=0.5, throttle_threshold=0.9)
    labels = Session.open(path).labels
    assert np.array_equal(labels, expected_labels(catalog[:150], steer=0.5, throttle=0.9))
    assert set(labels.tolist()) == {LABELS.index("none"), LABELS.index("left"), LABELS.index("right")}


@pytest.mark.parametrize(("angle", "throttle", "label"), [
    (-0.15, 0.5, "left"), (-0.149, 0.5, "forward"), (0.15, 0.0, "right"), (0.0, 0.05, "forward"),
    (0.0, 0.049, "none"), (0.1, -0.3, "brake"), (1.0, -1.0, "right"),
])
def test_angle_to_label(angle, throttle, label):
    assert angle_to_label(angle, throttle) == label


def test_tub_errors_name_file_and_line(tmp_path, tub_folder):
    tub = copy_tub(tub_folder, tmp_path)
    catalog_file = tub / "catalog_0.catalog"
    good = catalog_file.read_text().splitlines()
    out = tmp_path / "sessions"

    catalog_file.write_text("\n".join(good[:4] + ['{"_index": 4, "cam/image_array": '] + good[5:]) + "\n")
    with pytest.raises(ImportFormatError, match=r"tub/catalog_0.catalog, line 5: not valid JSON"):
        import_tub(tub, out)
    broken = json.loads(good[6])
    broken["user/angle"] = "left"
    catalog_file.write_text("\n".join(good[:6] + [json.dumps(broken)] + good[7:]) + "\n")
    with pytest.raises(ImportFormatError, match=r"catalog_0.catalog, line 7: field 'user/angle' must be a number"):
        import_tub(tub, out)
    catalog_file.write_text("\n".join(good) + "\n")
    (tub / "images" / "9_cam_image_array_.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ImportFormatError, match=r"catalog_0.catalog, line 10 \(image 9_cam_image_array_.jpg\): "
                                                r"cannot decode"):
        import_tub(tub, out)
    (tub / "images" / "9_cam_image_array_.jpg").unlink()
    with pytest.raises(ImportFormatError, match=r"images/9_cam_image_array_.jpg: cannot read"):
        import_tub(tub, out)
    assert not out.exists() or list(out.iterdir()) == []  # failed imports leave no half sessions
    (tub / "manifest.json").write_text('["cam/image_array", "user/angle"]\n[]\n{}\n{}\n{"paths": []}\n')
    with pytest.raises(ImportFormatError, match=r"manifest.json, line 1: the tub records no user/throttle"):
        import_tub(tub, out)
    with pytest.raises(ImportFormatError, match="no manifest.json found"):
        import_tub(tub / "images", out)
    not_tar = tmp_path / "tub.tar.gz"
    not_tar.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ImportFormatError, match="tub.tar.gz: not a tub folder or a readable tar archive"):
        import_tub(not_tar, out)


def test_errors_inside_an_archive_name_the_member(tmp_path, tub_folder):
    tub = copy_tub(tub_folder, tmp_path)
    lines = (tub / "catalog_0.catalog").read_text().splitlines()
    lines[2] = lines[2].replace('"_index": 2', '"_index": 1')
    (tub / "catalog_0.catalog").write_text("\n".join(lines) + "\n")
    archive = tmp_path / "edited.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tub / "manifest.json", arcname="tub/manifest.json")  # the records fail before any image is read
        tar.add(tub / "catalog_0.catalog", arcname="tub/catalog_0.catalog")
    with pytest.raises(ImportFormatError, match=r"edited.tgz:tub/catalog_0.catalog, line 3: _index 1 appears twice"):
        import_tub(archive, tmp_path / "sessions")


def autorccar_file(path, count=12, image_shape=(120, 320), seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (count, image_shape[0] * image_shape[1])).astype(np.float32)
    classes = np.arange(count) % 4
    np.savez(path, train=pixels, train_labels=np.eye(4)[classes])
    return pixels, classes


def test_autorccar_npz_becomes_a_session(tmp_path):
    pixels, classes = autorccar_file(tmp_path / "test08.npz")
    session = Session.open(import_any(tmp_path / "test08.npz", tmp_path / "sessions", fps=8.0))
    assert session.name == "autorccar-test08" and session.frame_shape == (120, 320)
    assert np.array_equal(session.frames(), pixels.reshape(-1, 120, 320).astype(np.uint8))
    names = [session.label_names[k] for k in session.labels]
    assert names[:4] == ["left", "right", "forward", "brake"]
    assert np.allclose(session.timestamps, np.arange(12) / 8.0)
    assert "synthesised" in session.meta["import"]["timestamps"]

    dropped = Session.open(import_autorccar(tmp_path / "test08.npz", tmp_path / "sessions", reverse_label=None))
    assert len(dropped) == 9 and "brake" not in [dropped.label_names[k] for k in dropped.labels]

    images = np.random.default_rng(1).integers(0, 256, (5, 24, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", images=images, train_labels=np.array([0, 1, 2, 3, 2]))
    rgb = Session.open(import_autorccar(tmp_path / "rgb.npz", tmp_path / "sessions"))
    assert np.array_equal(rgb.frames(), images)


def test_autorccar_errors_name_file_and_row(tmp_path):
    out = tmp_path / "sessions"
    pixels, classes = autorccar_file(tmp_path / "a.npz", count=6)
    labels = np.eye(4)[classes]
    labels[4] = [1, 0, 1, 0]
    np.savez(tmp_path / "b.npz", train=pixels, train_labels=labels)
    with pytest.raises(ImportFormatError, match=r"b.npz: 'train_labels' row 4 is \[1.0, 0.0, 1.0, 0.0\], not one-hot"):
        import_autorccar(tmp_path / "b.npz", out)
    bad_pixels = pixels.copy()
    bad_pixels[3, 7] = 300.0
    np.savez(tmp_path / "c.npz", train=bad_pixels, train_labels=np.eye(4)[classes])
    with pytest.raises(ImportFormatError, match=r"c.npz: frame row 3 has pixel value 300.0"):
        import_autorccar(tmp_path / "c.npz", out)
    with pytest.raises(ImportFormatError, match="'train' rows have 38400 values, but image_shape 240x320 needs 76800"):
        import_autorccar(tmp_path / "a.npz", out, image_shape=(240, 320))
    np.savez(tmp_path / "d.npz", frames=pixels)
    with pytest.raises(ImportFormatError, match="d.npz: expected arrays 'train' \\(or 'images'\\) and 'train_labels'"):
        import_autorccar(tmp_path / "d.npz", out)
    np.savez(tmp_path / "e.npz", train=np.array([{"x": 1}], dtype=object), train_labels=np.eye(4)[:1])
    with pytest.raises(ImportFormatError, match="e.npz: 'train' holds Python objects .*never unpickled"):
        import_autorccar(tmp_path / "e.npz", out)
    np.savez(tmp_path / "f.npz", train=pixels[:5], train_labels=np.eye(4)[classes])
    with pytest.raises(ImportFormatError, match="f.npz: 5 frames but 6 labels"):
        import_autorccar(tmp_path / "f.npz", out)
    buffer = io.BytesIO()
    np.save(buffer, pixels)
    (tmp_path / "g.npz").write_bytes(buffer.getvalue())
    with pytest.raises(ImportFormatError, match="g.npz: a single .npy array, not an .npz archive"):
        import_autorccar(tmp_path / "g.npz", out)
    assert not out.exists() or list(out.iterdir()) == []


def test_a_text_file_named_npz_is_not_called_pickled(tmp_path, capsys):
    """np.load takes any file that is neither a zip nor an .npy for a pickle and offers to load it unsafely."""
    from scratchpilot.cli import main

    text = tmp_path / "notes.npz"
    text.write_text("frames from Tuesday\n")
    with pytest.raises(ImportFormatError, match=r"notes.npz: not an .npz archive.*starts with b'frames f"):
        import_autorccar(text, tmp_path / "sessions")
    assert main(["car", "sessions", str(tmp_path / "sessions"), "--import-npz", str(text)]) == 2
    err = capsys.readouterr().err
    assert "notes.npz: not an .npz archive" in err and "pickle" not in err and "Traceback" not in err


def _npy_header(shape, descr="<f4") -> bytes:
    """An ``.npy`` header alone: it claims ``shape`` but no data follows."""
    text = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


def _lying_header_npz(path):
    """A 500-byte AutoRCCar file whose 'train' header claims 10^12 floats (np.load allocates 3.6 TiB)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("train.npy", _npy_header((10 ** 6, 10 ** 6)))
        archive.writestr("train_labels.npy", _npy_header((10 ** 6, 4), "<f8"))


def _deflate_bomb_npz(path):
    """An AutoRCCar file whose 'train' entry claims to unpack to 2 GB from 150 kB, more than deflate can."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((1000, 38400), np.float32))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("train.npy", buffer.getvalue())  # the first entry: its local header is at offset 0
        archive.writestr("train_labels.npy", _npy_header((1000, 4), "<f8") + bytes(32_000))
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[22:26] = data[central + 24:central + 28] = (2_000_000_000).to_bytes(4, "little")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("craft", [_lying_header_npz, _deflate_bomb_npz])
def test_autorccar_files_that_lie_about_their_size_are_refused_in_bounded_memory(tmp_path, craft):
    from fuzzing import check_parser

    bad = tmp_path / "crafted.npz"
    craft(bad)
    assert bad.stat().st_size < 200_000
    out = tmp_path / "sessions"
    assert check_parser(lambda: import_autorccar(bad, out), ImportFormatError, f"{bad}: 'train'",
                        max_bytes=4 << 20) is None
    assert not out.exists() or list(out.iterdir()) == []
