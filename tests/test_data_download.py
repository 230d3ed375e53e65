"""Downloads against a real HTTP server on 127.0.0.1 that serves shared/data, plus broken mirrors.

Mirror roots served (each laid out like the data folder, e.g. ``/good/mnist/t10k-labels-idx1-ubyte.gz``):
``/good/`` the real files, ``/corrupt/`` one byte flipped, ``/truncated/`` the connection closes
halfway through a body whose full length was announced, anything else 404.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from scratchpilot.data import ChecksumError, DownloadError, download, fetch, load_mnist, resolve_dataset

LABELS = "mnist/t10k-labels-idx1-ubyte.gz"
LABELS_SHA256 = "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
SCRATCHPILOT = str(Path(sys.executable).parent / "scratchpilot")  # the installed console command
MNIST_TRAIN_CLASS_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


class _MirrorHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        mirror, _, rest = self.path.lstrip("/").partition("/")
        if mirror == "good":
            self.path = "/" + rest
            return super().do_GET()
        file = Path(self.directory) / rest
        if mirror not in ("corrupt", "truncated") or not file.is_file():
            return self.send_error(404)
        body = bytearray(file.read_bytes())
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mirror == "corrupt":
            body[len(body) // 2] ^= 0xFF
            self.wfile.write(body)
        else:
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True


@pytest.fixture(scope="module")
def mirror(shared_data):
    """Base URL of the local server; ``mirror.requests`` lists the paths asked for (reset per test)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(_MirrorHandler, directory=str(shared_data)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def base(mirror):
    mirror.requests.clear()
    return f"http://127.0.0.1:{mirror.server_address[1]}"


def _writable_copy(shared_data: Path, cache: Path) -> Path:
    """A cache holding the MNIST files (copied without shared/data's read-only permissions)."""
    (cache / "mnist").mkdir(parents=True)
    for source in (shared_data / "mnist").iterdir():
        shutil.copyfile(source, cache / "mnist" / source.name)
    return cache


def test_download_verifies_and_places_the_file(base, tmp_path, shared_data):
    dest = download(f"{base}/good/{LABELS}", tmp_path / "sub" / "labels.gz", LABELS_SHA256, progress=False)
    assert dest == tmp_path / "sub" / "labels.gz"
    assert dest.read_bytes() == (shared_data / LABELS).read_bytes()
    assert list(dest.parent.iterdir()) == [dest]


def test_checksum_mismatch_leaves_nothing_behind(base, mirror, tmp_path):
    with pytest.raises(DownloadError) as error:
        download(f"{base}/corrupt/{LABELS}", tmp_path / "labels.gz", LABELS_SHA256, progress=False)
    message = str(error.value)
    assert f"{base}/corrupt/{LABELS}: checksum mismatch" in message and f"expected {LABELS_SHA256}" in message
    assert list(tmp_path.iterdir()) == []
    assert mirror.requests == [f"/corrupt/{LABELS}"]


def test_truncated_transfer_leaves_nothing_behind(base, tmp_path):
    with pytest.raises(DownloadError, match=f"{base}/truncated/{LABELS}: .*(truncated|IncompleteRead)"):
        download(f"{base}/truncated/{LABELS}", tmp_path / "labels.gz", LABELS_SHA256, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_mirrors_are_tried_in_order(base, mirror, tmp_path, caplog, shared_data):
    urls = [f"{base}/missing/{LABELS}", f"{base}/corrupt/{LABELS}", f"{base}/good/{LABELS}",
            f"{base}/good/never-asked"]
    with caplog.at_level(logging.WARNING, logger="scratchpilot.data.download"):
        dest = download(urls, tmp_path / "labels.gz", LABELS_SHA256, progress=False)
    assert dest.read_bytes() == (shared_data / LABELS).read_bytes()
    assert mirror.requests == [f"/missing/{LABELS}", f"/corrupt/{LABELS}", f"/good/{LABELS}"]
    assert "404" in caplog.records[0].getMessage() and "checksum mismatch" in caplog.records[1].getMessage()


def test_all_mirrors_failing_lists_each_reason(base, tmp_path):
    with pytest.raises(DownloadError) as error:
        download([f"{base}/missing/{LABELS}", f"{base}/corrupt/{LABELS}", "http://127.0.0.1:1/refused"],
                 tmp_path / "labels.gz", LABELS_SHA256, progress=False, timeout=5)
    lines = str(error.value).splitlines()
    assert lines[0] == "could not download labels.gz from any of 3 mirror(s):"
    assert "404" in lines[1] and "checksum mismatch" in lines[2] and "http://127.0.0.1:1/refused" in lines[3]
    assert not isinstance(error.value, ChecksumError)
    assert list(tmp_path.iterdir()) == []


def test_good_existing_file_is_kept_and_bad_one_replaced(base, mirror, tmp_path, shared_data):
    dest = tmp_path / "labels.gz"
    shutil.copyfile(shared_data / LABELS, dest)
    download(f"{base}/good/{LABELS}", dest, LABELS_SHA256, progress=False)
    assert mirror.requests == []
    dest.write_bytes(b"damaged")
    download(f"{base}/good/{LABELS}", dest, LABELS_SHA256, progress=False)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == LABELS_SHA256
    assert mirror.requests == [f"/good/{LABELS}"]


def test_progress_with_tqdm_and_without(base, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # tqdm draws on a terminal only
    download(f"{base}/good/{LABELS}", tmp_path / "a.gz", LABELS_SHA256, progress=True)
    assert "a.gz" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "tqdm", None)  # makes `from tqdm import tqdm` fail
    download(f"{base}/good/{LABELS}", tmp_path / "b.gz", LABELS_SHA256, progress=True)
    err = capsys.readouterr().err
    assert "b.gz" in err and "MiB 100%" in err


def test_load_mnist_downloads_into_the_cache_once(base, mirror, tmp_path, monkeypatch):
    monkeypatch.delenv("SCRATCHPILOT_DATA")
    monkeypatch.setenv("SCRATCHPILOT_MIRRORS", f"{base}/missing, {base}/good/")
    cache = tmp_path / "cache"
    (X_train, y_train), (X_test, y_test) = load_mnist("digits", cache_dir=cache, progress=False)
    assert X_train.shape == (60000, 28, 28) and X_test.shape == (10000, 28, 28) and X_train.dtype == np.uint8
    assert y_train.dtype == np.int64 and np.bincount(y_train).tolist() == MNIST_TRAIN_CLASS_COUNTS
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    assert sum(r.startswith("/good/") for r in mirror.requests) == 4
    mirror.requests.clear()
    (X_again, _), _ = load_mnist("digits", cache_dir=cache, download=False)
    np.testing.assert_array_equal(X_again, X_train)
    assert mirror.requests == []


def test_no_data_and_no_download_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("SCRATCHPILOT_DATA")
    with pytest.raises(FileNotFoundError) as error:
        load_mnist("fashion", cache_dir=tmp_path, download=False)
    assert str(tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz") in str(error.value)
    assert "scratchpilot data fetch" in str(error.value)


def test_resolve_named_dataset_through_a_mirror_parameter(base, tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHPILOT_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("SCRATCHPILOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SCRATCHPILOT_MIRRORS", f"{base}/good")
    dataset = resolve_dataset("fashion-test", progress=False)
    assert dataset.name == "fashion-test" and len(dataset) == 10000
    assert np.bincount(dataset.labels).tolist() == [1000] * 10
    assert dataset.class_names[0] == "T-shirt/top"
    assert dataset.sources[0] == tmp_path / "cache" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"


def test_fetch_redownloads_only_a_damaged_cache_file(base, mirror, tmp_path, shared_data):
    cache = _writable_copy(shared_data, tmp_path / "cache")
    (cache / LABELS).write_bytes(b"not the labels")
    paths = fetch("mnist", cache_dir=cache, progress=False, mirrors=[f"{base}/good"])
    assert mirror.requests == [f"/good/{LABELS}"]
    assert hashlib.sha256((cache / LABELS).read_bytes()).hexdigest() == LABELS_SHA256
    assert len(paths) == 4 and all(p.parent == cache / "mnist" for p in paths)


def test_fetch_command(base, tmp_path, shared_data):
    cache = _writable_copy(shared_data, tmp_path / "cache")
    (cache / LABELS).unlink()
    run = subprocess.run([SCRATCHPILOT, "data", "fetch", "mnist",
                          "--cache-dir", str(cache)], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "SCRATCHPILOT_MIRRORS": f"{base}/good",
                              "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    assert f"mnist: 4 files verified in {cache / 'mnist'}" in run.stdout
    assert run.stderr == ""  # tqdm draws its bar on a terminal only: a log gets no bar lines
    assert (cache / LABELS).read_bytes() == (shared_data / LABELS).read_bytes()


def test_fetch_command_failure_is_a_clean_error(base, tmp_path):
    run = subprocess.run([SCRATCHPILOT, "data", "fetch", "--no-progress",
                          "--cache-dir", str(tmp_path)], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "SCRATCHPILOT_MIRRORS": f"{base}/corrupt"})
    assert run.returncode == 2
    assert "scratchpilot: error: could not download train-images-idx3-ubyte.gz" in run.stderr
    assert "Traceback" not in run.stderr
    assert list(tmp_path.rglob("*.gz")) == [] and list(tmp_path.rglob("*.part")) == []
