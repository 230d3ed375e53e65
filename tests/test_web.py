"""The digits web app: JSON API over a real waitress server on 127.0.0.1, bad input, the serve command."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from web_support import (
    SCRATCHPILOT,
    BackgroundServer,
    http,
    multipart,
    png_bytes,
    png_claiming,
    post_json,
    small_model_path,
)

from scratchpilot import nn
from scratchpilot.data import load_mnist
from scratchpilot.web.api import MAX_BODY_BYTES
from scratchpilot.web.app import create_app
from scratchpilot.web.classifier import DigitClassifier
from scratchpilot.web.fastpath import JsonPredictRoute


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, shared_data) -> Path:
    return small_model_path(tmp_path_factory)


@pytest.fixture(scope="module")
def app(model_path):
    return create_app(model_path)


@pytest.fixture(scope="module")
def server(app):
    with BackgroundServer(app, threads=4) as running:
        yield running.url


@pytest.fixture(scope="module")
def mnist_test(shared_data):
    _, (images, labels) = load_mnist("digits", download=False, progress=False)
    return images, labels


def predict(server, payload):
    return post_json(f"{server}/api/predict", payload)


def dark_on_light_png(digit: np.ndarray, scale: int = 8) -> bytes:
    big = Image.fromarray(255 - digit).resize((28 * scale, 28 * scale), Image.Resampling.BILINEAR)
    return png_bytes(np.asarray(big))


# ------------------------------------------------------------------------------------ the happy paths


def test_health_and_model_info(server):
    status, body, headers = http("GET", f"{server}/healthz")
    assert status == 200 and body == {"status": "ok", "model": "small 784-128-10"}
    assert headers["Server"] == "scratchpilot"  # waitress, not Flask's development server
    status, info, _ = http("GET", f"{server}/api/model")
    assert status == 200
    assert info["architecture"] == "784-128-10" and info["parameters"] == 784 * 128 + 128 + 128 * 10 + 10
    assert 0.9 < info["accuracy"] < 1 and info["accuracy_on"] == "mnist-test"
    assert info["trained_at"].startswith("20") and info["saved_at"].startswith("20")
    assert info["labels"] == [str(d) for d in range(10)] and info["epochs"] == 3


def test_index_page_and_static_files(server):
    status, page, headers = http("GET", f"{server}/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert '<canvas id="pad"' in page and "/static/app.js" in page and "784-128-10" in page
    assert "http://" not in page and "https://" not in page  # nothing from a CDN
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        status, text, headers = http("GET", f"{server}/static/{name}")
        assert status == 200 and kind in headers["Content-Type"] and len(text) > 1000


def test_pixels_of_mnist_digits_are_classified(server, mnist_test):
    images, labels = mnist_test
    correct = 0
    for digit, label in zip(images[:30], labels[:30], strict=True):
        status, body, _ = predict(server, {"pixels": digit.reshape(-1).tolist(), "preview": True})
        assert status == 200, body
        assert set(body) == {"label", "probabilities", "labels", "model", "preview"}
        assert len(body["probabilities"]) == 10 and abs(sum(body["probabilities"]) - 1) < 1e-4
        assert body["label"] == int(np.argmax(body["probabilities"]))
        assert len(body["preview"]) == 784 and max(body["preview"]) == 255
        correct += body["label"] == label
    assert correct >= 27


def test_pixel_forms_agree(server, mnist_test):
    digit = mnist_test[0][0]
    flat = predict(server, {"pixels": digit.reshape(-1).tolist()})[1]
    rows = predict(server, {"pixels": digit.tolist()})[1]
    floats = predict(server, {"pixels": [min(v + 0.2, 255.0) for v in digit.reshape(-1).tolist()]})[1]
    assert flat["probabilities"] == rows["probabilities"] == floats["probabilities"]
    assert "preview" not in flat  # pixels come back only when asked for
    raw = predict(server, {"pixels": digit.reshape(-1).tolist(), "preprocess": False})[1]
    assert raw["label"] == flat["label"] == mnist_test[1][0]
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes(digit)).decode()
    assert "preview" not in predict(server, {"image": data_url, "preview": False})[1]


def test_preprocess_false_feeds_the_pixels_unchanged(server, model_path, mnist_test):
    digit = mnist_test[0][1]
    expected = nn.load(model_path).predict_proba(digit.reshape(1, 784).astype(np.float32) / 255)[0]
    status, body, _ = predict(server, {"pixels": digit.reshape(-1).tolist(), "preprocess": False, "preview": True})
    assert status == 200 and body["preview"] == digit.reshape(-1).tolist()
    assert np.allclose(body["probabilities"], expected, atol=1e-5)


def test_upload_and_data_url_of_a_drawn_digit(server, mnist_test):
    images, labels = mnist_test
    for digit, label in zip(images[2:5], labels[2:5], strict=True):
        png = dark_on_light_png(digit)
        body, content_type = multipart("image", "digit.png", png, "image/png")
        status, answer, _ = http("POST", f"{server}/api/predict", body, content_type)
        assert status == 200 and answer["label"] == label, answer
        url = "data:image/png;base64," + base64.b64encode(png).decode()
        status, from_url, _ = predict(server, {"image": url})
        assert status == 200 and from_url["probabilities"] == answer["probabilities"]
        # the preview is the white-on-black digit, centred: dark corners, bright middle
        preview = np.array(answer["preview"], dtype=np.uint8).reshape(28, 28)
        assert preview[:3, :3].max() == 0 and preview[8:20, 8:20].max() == 255


def test_transparent_canvas_png(server, mnist_test):
    digit, label = mnist_test[0][5], mnist_test[1][5]
    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[..., 3] = digit  # black strokes on a transparent canvas, as a browser exports an unfilled canvas
    status, answer, _ = predict(server, {"image": "data:image/png;base64,"
                                         + base64.b64encode(png_bytes(rgba, "RGBA")).decode()})
    assert status == 200 and answer["label"] == label


def test_flask_test_client_agrees(app, mnist_test):
    client = app.test_client()
    response = client.post("/api/predict", json={"pixels": mnist_test[0][7].reshape(-1).tolist()})
    assert response.status_code == 200 and response.get_json()["label"] == mnist_test[1][7]


@pytest.mark.parametrize("body", [
    "digit", "digit-preview", "digit-raw", b'{"pixels": [0, 1]}', b'{"pixels": [' + b"0, " * 783 + b"NaN]}",
    b'{"pixels": [' + b"0, " * 783 + b"1" + b"0" * 30 + b"]}", b"[" * 5000 + b"]" * 5000, b"{not json",
    b'{"pixels": ' + json.dumps([0] * 784).encode() + b"}", b'{"image": "data:image/png;base64,aGVsbG8="}',
    b'{"pixels": [0], "preview": 1}', b"",
    b'{"pixels": [' + b"[" * 1000 + b"]" * 1000 + b", 0" * 783 + b"]}",  # deeper than json.loads goes
    b'{"pixels": ["' + b"x" * 100_000 + b'"' + b", 0" * 783 + b"]}",
])
def test_json_fast_path_answers_exactly_as_the_flask_route(app, mnist_test, body):
    """JSON predictions skip Flask (:class:`JsonPredictRoute`); both paths give the same answers."""
    from werkzeug.test import Client

    digit = mnist_test[0][3].reshape(-1).tolist()
    body = {"digit": {"pixels": digit}, "digit-preview": {"pixels": digit, "preview": True},
            "digit-raw": {"pixels": digit, "preprocess": False}}.get(body, body)
    body = body if isinstance(body, bytes) else json.dumps(body).encode()
    assert isinstance(app.wsgi_app, JsonPredictRoute)
    fast = Client(app).post("/api/predict", data=body, content_type="application/json")
    flask = Client(app.wsgi_app.flask_wsgi_app).post("/api/predict", data=body, content_type="application/json")
    assert (fast.status, fast.get_json()) == (flask.status, flask.get_json())
    assert fast.status_code < 500
    if fast.status_code != 200:
        assert len(fast.get_data()) < 1000  # bad input is named, not echoed back
    for response in (fast, flask):
        assert response.headers["Content-Type"] == "application/json"
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_a_bug_on_the_json_fast_path_is_a_logged_500_json(model_path, mnist_test, caplog):
    from werkzeug.test import Client

    classifier = DigitClassifier(model_path)
    classifier.predict = lambda digit: 1 / 0
    response = Client(create_app(model_path, classifier)).post(
        "/api/predict", json={"pixels": mnist_test[0][0].reshape(-1).tolist()})
    assert response.status_code == 500 and response.get_json() == {"error": "internal server error", "status": 500}
    assert "ZeroDivisionError" in caplog.text and "ZeroDivisionError" not in response.get_data(as_text=True)


# ------------------------------------------------------------------------------------ bad input, one by one


def test_non_image_upload_is_400(server):
    body, content_type = multipart("image", "notes.txt", b"these are not the pixels you are looking for")
    status, answer, headers = http("POST", f"{server}/api/predict", body, content_type)
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert "not an image" in answer["error"] and "notes.txt" in answer["error"]


def test_upload_without_image_field_is_400(server):
    body, content_type = multipart("file", "digit.png", png_bytes(np.zeros((28, 28), np.uint8)))
    status, answer, _ = http("POST", f"{server}/api/predict", body, content_type)
    assert status == 400 and "'image'" in answer["error"]


def test_body_over_2_mb_is_413_json(server):
    payload = b'{"pixels": [' + b"0, " * (MAX_BODY_BYTES // 3 + 10) + b"0]}"
    assert len(payload) > MAX_BODY_BYTES
    status, answer, headers = post_json(f"{server}/api/predict", payload)
    assert status == 413 and headers["Content-Type"] == "application/json" and "2 MB" in answer["error"]
    body, content_type = multipart("image", "big.png", os.urandom(MAX_BODY_BYTES + 1))
    status, answer, _ = http("POST", f"{server}/api/predict", body, content_type)
    assert status == 413 and answer["status"] == 413


def test_huge_declared_or_chunked_bodies_are_413(server):
    host, port = server.removeprefix("http://").rsplit(":", 1)
    # a 3 MB chunked body reaches the app (JSON answer); a 50 MB declared one is refused by waitress at once
    chunked = b"".join(b"%x\r\n%s\r\n" % (65536, b"1" * 65536) for _ in range(46)) + b"0\r\n\r\n"
    for head, body in ((b"Transfer-Encoding: chunked", chunked), (b"Content-Length: 50000000", b"")):
        with socket.create_connection((host, int(port)), timeout=10) as connection:
            connection.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               + head + b"\r\n\r\n" + body)
            assert connection.recv(200).startswith(b"HTTP/1.1 413 "), head


def test_decompression_bomb_is_400(server):
    for side in (20000, 6000):
        body, content_type = multipart("image", "bomb.png", png_claiming(side, side), "image/png")
        status, answer, _ = http("POST", f"{server}/api/predict", body, content_type)
        assert status == 400 and "too large" in answer["error"], answer
    url = "data:image/png;base64," + base64.b64encode(png_claiming(20000, 20000)).decode()
    status, answer, _ = predict(server, {"image": url})
    assert status == 400 and "too large" in answer["error"]


@pytest.mark.parametrize("pixels, message", [
    ([0] * 783, "784 numbers"),
    ([0] * 785, "784 numbers"),
    ([[0] * 28] * 27, "784 numbers"),
    ([[0] * 27] * 28, "28 rows of 28"),
    ([0] * 783 + [256], r"\[783\] is 256"),
    ([0] * 10 + [-1] + [0] * 773, r"\[10\] is -1"),
    ([0] * 783 + [1e300], "0..255"),
    ([0] * 783 + [10**400], "outside 0..255"),
    ([0] * 783 + ["255"], "'255'"),
    ([0] * 783 + [True], "True"),
    ([0] * 783 + [None], "None"),
    ("0" * 784, "list"),
    ({"a": 1}, "list"),
])
def test_bad_pixels_are_400(server, pixels, message):
    status, answer, _ = predict(server, {"pixels": pixels})
    assert status == 400, answer
    assert answer["status"] == 400 and __import__("re").search(message, answer["error"]), answer["error"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinite_pixels_are_400(server, literal):
    body = ('{"pixels": [' + "0, " * 100 + literal + ", 0" * 683 + "]}").encode()
    status, answer, _ = post_json(f"{server}/api/predict", body)
    assert status == 400 and "[100]" in answer["error"] and "finite" in answer["error"]


@pytest.mark.parametrize("payload", [
    {"pixels": [0] * 784},
    {"pixels": [255] * 784},
    {"pixels": [0] * 784, "preprocess": False},
    {"image": "data:image/png;base64," + base64.b64encode(png_bytes(np.full((280, 280), 255, np.uint8))).decode()},
])
def test_blank_drawing_is_422_nothing_drawn(server, payload):
    status, answer, _ = predict(server, payload)
    assert status == 422 and "nothing drawn" in answer["error"]


def test_blank_upload_is_422(server):
    body, content_type = multipart("image", "blank.png", png_bytes(np.zeros((100, 100, 4), np.uint8)))
    status, answer, _ = http("POST", f"{server}/api/predict", body, content_type)
    assert status == 422 and "nothing drawn" in answer["error"]


def test_unknown_route_is_404_json(server):
    for method, path in (("GET", "/nope"), ("POST", "/api/nope"), ("GET", "/static/missing.js")):
        status, answer, headers = http(method, f"{server}{path}")
        assert status == 404 and headers["Content-Type"] == "application/json", (method, path)
        assert answer == {"error": f"not found: {method} {path}", "status": 404}


def test_wrong_method_is_405_json(server):
    for method, path in (("GET", "/api/predict"), ("DELETE", "/api/predict"), ("POST", "/api/model"),
                         ("PUT", "/healthz")):
        status, answer, headers = http(method, f"{server}{path}")
        assert status == 405 and answer["status"] == 405 and method in answer["error"], (method, path)
        assert "Allow" in headers


@pytest.mark.parametrize("body, content_type, status", [
    (b"pixels=1,2,3", "application/x-www-form-urlencoded", 415),
    (b"\x89PNG", "image/png", 415),
    (b"", None, 415),
    (b"{not json", "application/json", 400),
    (b"", "application/json", 400),
    (b"[1, 2, 3]", "application/json", 400),
    (b'"pixels"', "application/json", 400),
    (b"\xff\xfe\x00garbage", "application/json", 400),
    (b"[" * 100_000 + b"]" * 100_000, "application/json", 400),  # nesting deeper than Python's recursion limit
    (b'{"pixels": [0], "preprocess": "yes"}', "application/json", 400),
    (b'{"pixels": [0], "preview": 1}', "application/json", 400),
    (b'{"image": 42}', "application/json", 400),
    (b'{"image": "http://example.com/digit.png"}', "application/json", 400),
    (b'{"image": "data:image/png;base64,***not base64***"}', "application/json", 400),
    (b'{"image": "data:image/png;base64,aGVsbG8="}', "application/json", 400),
    (b'{"image": "data:text/plain;base64,aGVsbG8="}', "application/json", 400),
    (b'{"something": "else"}', "application/json", 400),
    (b"--x\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc\r\n--x--\r\n",
     "multipart/form-data; boundary=x", 400),
    (b"not really multipart", "multipart/form-data; boundary=x", 400),
    (b"no boundary at all", "multipart/form-data", 400),
])
def test_malformed_requests_get_clear_4xx(server, body, content_type, status):
    got, answer, headers = http("POST", f"{server}/api/predict", body, content_type)
    assert got == status, answer
    assert headers["Content-Type"] == "application/json" and answer["error"]


def test_fuzzed_bodies_never_get_a_5xx(server, mnist_test):
    """Hundreds of malformed bodies: random bytes, mangled JSON, truncated and bit-flipped images."""
    rng = np.random.default_rng(0)
    png = dark_on_light_png(mnist_test[0][0], scale=2)
    buffer = io.BytesIO()
    Image.fromarray(255 - mnist_test[0][0]).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    valid_json = json.dumps({"pixels": mnist_test[0][0].reshape(-1).tolist()}).encode()
    statuses = []

    def flip(data: bytes, n: int) -> bytes:
        mangled = bytearray(data)
        for position in rng.integers(0, len(mangled), n):
            mangled[position] = rng.integers(0, 256)
        return bytes(mangled)

    for i in range(240):
        kind = i % 6
        if kind == 0:
            body, content_type = rng.bytes(int(rng.integers(0, 3000))), "application/json"
        elif kind == 1:
            body, content_type = flip(valid_json, 3), "application/json"
        elif kind == 2:
            body, content_type = valid_json[: int(rng.integers(0, len(valid_json)))], "application/json"
        elif kind == 3:
            image = png if i % 2 else jpeg
            body, content_type = multipart("image", "x.png", flip(image, int(rng.integers(1, 20))))
        elif kind == 4:
            image = png if i % 2 else jpeg
            body, content_type = multipart("image", "x.png", image[: int(rng.integers(0, len(image)))])
        else:
            mangled = base64.b64encode(flip(png, 5)).decode()
            body, content_type = json.dumps({"image": "data:image/png;base64," + mangled}).encode(), \
                "application/json"
        status, answer, _ = http("POST", f"{server}/api/predict", body, content_type)
        assert status < 500, (i, answer)
        assert isinstance(answer, dict) and ("label" in answer or "error" in answer)
        statuses.append(status)
    assert set(statuses) <= {200, 400, 422} and statuses.count(400) > 150


# ------------------------------------------------------------------------------------ classifier & CLI


def test_classifier_is_safe_from_many_threads(model_path, mnist_test):
    """Server threads share one model, whose layers keep per-call state: the classifier lets one forward
    run at a time, and concurrent calls give exactly the answers of sequential ones."""
    classifier = DigitClassifier(model_path)
    images = mnist_test[0][:64]
    sequential = [classifier.predict(image) for image in images]
    results: list = [None] * len(images)
    # watch the model's forward: how many threads are inside it at once
    forward, count_lock, inside, most = classifier.model.forward, threading.Lock(), [0], [0]

    def watched_forward(X, training=False):
        with count_lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            time.sleep(0.001)  # gives up the GIL: without the classifier's lock another thread comes in
            return forward(X, training)
        finally:
            with count_lock:
                inside[0] -= 1

    classifier.model.forward = watched_forward

    def work(offset: int) -> None:
        for i in range(offset, len(images), 8):
            for _ in range(5):
                answer = classifier.predict(images[i])
                if results[i] is not None and results[i] != answer:
                    results[i] = "inconsistent"
                    return
                results[i] = answer

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == sequential
    assert most[0] == 1, f"{most[0]} threads ran the shared model's forward at once"


def test_classifier_rejects_models_that_are_not_digits_models(tmp_path):
    path = tmp_path / "wide.npz"
    nn.Sequential([nn.Dense(100, 10)]).save(path)
    with pytest.raises(nn.ModelFileError, match="784"):
        DigitClassifier(path)


def run_cli(*args, env=None, timeout=60):
    return subprocess.run([*SCRATCHPILOT, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_serve_refuses_missing_and_corrupt_model_files(tmp_path):
    result = run_cli("serve", "--model", str(tmp_path / "missing.npz"), "--port", "0")
    assert result.returncode == 2 and "missing.npz: no such model file" in result.stderr
    assert "Traceback" not in result.stderr
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04" + os.urandom(500))
    result = run_cli("serve", "--model", str(corrupt), "--port", "0")
    assert result.returncode == 2 and "corrupt.npz" in result.stderr and "cannot serve" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_rejects_bad_port():
    result = run_cli("serve", "--port", "70000")
    assert result.returncode == 2 and "--port: must be an integer ≥ 0 and ≤ 65535, got 70000" in result.stderr


def test_serve_command_uses_the_cached_default_model(tmp_path, model_path):
    """``scratchpilot serve`` with no --model serves the cached default model, in a real process."""
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    (cache / "models" / "digits-default.npz").write_bytes(model_path.read_bytes())
    env = {**os.environ, "SCRATCHPILOT_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([*SCRATCHPILOT, "serve", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = process.stdout.readline()
        second = process.stdout.readline()
        assert "digits-default.npz" in first and "784-128-10" in first, (first, process.stderr.read())
        # the prediction log, by default in the cache
        assert second.strip() == f"prediction log: {cache / 'logs' / 'serve'}", second
        lines = [process.stdout.readline() for _ in range(2)]
        url = next(line for line in lines if "serving on " in line).split("serving on ")[1].split()[0].rstrip("/")
        status, body, _ = http("GET", f"{url}/healthz")
        assert status == 200 and body["model"] == "small 784-128-10"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode in (0, 130)


def test_server_stops_cleanly(app):
    running = BackgroundServer(app, threads=2).__enter__()
    assert http("GET", f"{running.url}/healthz")[0] == 200
    running.stop()
    assert not running._thread.is_alive()  # stop() waits for the serving thread, which has ended
    with pytest.raises(OSError):
        http("GET", f"{running.url}/healthz", timeout=2)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads worker ids from Linux /proc")
def test_serve_with_two_worker_processes(model_path, mnist_test, tmp_path):
    process = subprocess.Popen([*SCRATCHPILOT, "serve", "--model", str(model_path), "--port", "0", "--workers", "2",
                                "--no-log"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        process.stdout.readline()
        process.stdout.readline()  # no reference profile (the small test model has none)
        ready = process.stdout.readline()
        assert "2 processes" in ready, (ready, process.stderr.read() if process.poll() is not None else "")
        url = ready.split("serving on ")[1].split()[0].rstrip("/")
        workers = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        assert len(workers) == 2
        answers = [predict(url, {"pixels": digit.reshape(-1).tolist()}) for digit in mnist_test[0][:20]]
        assert all(status == 200 for status, _, _ in answers)
        assert sum(body["label"] == label for (_, body, _), label in zip(answers, mnist_test[1], strict=False)) >= 18
    finally:
        process.terminate()  # SIGTERM to the parent stops the workers too
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
