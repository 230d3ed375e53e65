"""The served model, watched, for real: ``scratchpilot serve`` (two forked workers, waitress on 127.0.0.1)
logs every answer and serves ``/metrics``; ``report monitor`` reads the log back and flags drift.

The drift acceptance: MNIST test digits (in a shuffled order) give no drift in any window of 500
answers; Fashion-MNIST, digits turned 30°, digits with 3× the stroke width and inverted digits each
give drift in their first window of 500.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

pytest.importorskip("flask")
pytest.importorskip("prometheus_client")

from drift_inputs import inverted, rotated, thick  # noqa: E402
from web_support import serving, small_model_path  # noqa: E402

from scratchpilot import nn  # noqa: E402
from scratchpilot.cli import main  # noqa: E402
from scratchpilot.data import load_mnist  # noqa: E402
from scratchpilot.digits.models import attach_profile  # noqa: E402
from scratchpilot.monitor.predlog import read_logs  # noqa: E402
from scratchpilot.monitor.profile import model_id  # noqa: E402

WINDOW = 500


@pytest.fixture(scope="module")
def profiled_model(tmp_path_factory, shared_data):
    """The small test network with a reference profile (MNIST training digits; answers on the test set)."""
    (X_train, _), (X_test, _) = load_mnist("digits", download=False, progress=False)
    model = nn.load(small_model_path(tmp_path_factory))
    attach_profile(model, X_train, held_out=(X_test, "mnist-test"), source="mnist-train")
    path = tmp_path_factory.mktemp("profiled") / "profiled.npz"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def scenarios(shared_data):
    """(name, uint8 images) in the order they are sent: MNIST test digits shuffled, then each drift."""
    _, (digits, _) = load_mnist("digits", download=False, progress=False)
    _, (fashion, _) = load_mnist("fashion", download=False, progress=False)
    order = np.random.default_rng(7).permutation(len(digits))
    mnist, rest = digits[order[:4 * WINDOW]], digits[order[4 * WINDOW:]]
    return [("mnist", mnist), ("fashion", fashion[:WINDOW]), ("rotated 30°", rotated(rest[:WINDOW])),
            ("3× stroke", thick(rest[WINDOW:2 * WINDOW])), ("inverted", inverted(rest[2 * WINDOW:3 * WINDOW]))]


class Client:
    """One keep-alive HTTP/1.1 connection (urllib opens one per request, which is slower than the server)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=10)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        return response.status, response.read()

    def predict(self, image: np.ndarray) -> tuple[int, bytes]:
        return self.request("POST", "/api/predict", json.dumps({"pixels": image.reshape(-1).tolist()}).encode())


def metric(text: str, name: str) -> float:
    """The value of a sample line ``name value`` (labels included in ``name``) of a Prometheus page."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics:\n{text[:2000]}")


def test_drift_is_flagged_for_each_shift_and_never_for_mnist(profiled_model, scenarios, tmp_path):
    logs = tmp_path / "logs"
    with serving("--model", str(profiled_model), "--workers", "2", "--log", str(logs)) as (_, url):
        client = Client(url)
        for _, images in scenarios:
            statuses = [client.predict(image)[0] for image in images]
            assert statuses == [200] * len(images)
        status, page = client.request("GET", "/metrics")
    assert status == 200
    text = page.decode()
    total = sum(len(images) for _, images in scenarios)
    # two workers' counts, added up by the multiprocess collector
    assert metric(text, 'scratchpilot_requests_total{route="/api/predict",status="200"}') == total
    assert metric(text, "scratchpilot_drift_score") >= 0.25  # the inverted digits, last sent
    assert sum(metric(text, f'scratchpilot_predictions_total{{label="{d}"}}') for d in range(10)) == total

    out = tmp_path / "monitor.html"
    code = main(["report", "monitor", str(logs), "--model", str(profiled_model), "--window", f"{WINDOW}req",
                 "--out", str(out), "--json", str(tmp_path / "monitor.json"), "--fail-on-drift"])
    assert code == 3
    report = json.loads((tmp_path / "monitor.json").read_text())
    verdicts = [w["verdict"] for w in report["windows"]]
    assert len(verdicts) == 8 and report["records"] == total and not report["problems"]
    assert all(v in ("stable", "watch") for v in verdicts[:4]), report["windows"][:4]  # false alarms: 0 of 4
    assert verdicts[4:] == ["drift"] * 4  # each shift, in its first window
    reasons = [" ".join(w["reasons"]) for w in report["windows"][4:]]
    assert "stroke_width" in reasons[2] and "background" in reasons[3]
    html = out.read_text()
    for section in ("Verdict per window", "Input features against the profile", "Predicted classes",
                    "Confidence trend", "Lowest-confidence inputs"):
        assert section in html


def test_the_log_survives_kill_9_under_load(profiled_model, tmp_path, shared_data):
    _, (digits, _) = load_mnist("digits", download=False, progress=False)
    logs = tmp_path / "logs"
    process = subprocess.Popen(
        [*__import__("support").SCRATCHPILOT_CLI, "serve", "--model", str(profiled_model), "--port", "0",
         "--workers", "2", "--log", str(logs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    try:
        line = ""
        for _ in range(6):
            line = process.stdout.readline()
            if "serving on " in line:
                break
        url = line.split("serving on ")[1].split()[0].rstrip("/")
        answered = [0] * 4
        stop = threading.Event()

        def load(k: int) -> None:
            client = Client(url)
            i = k
            while not stop.is_set():
                try:
                    status, _ = client.predict(digits[i % len(digits)])
                except (OSError, http.client.HTTPException):
                    return
                answered[k] += status == 200
                i += 4

        threads = [threading.Thread(target=load, args=(k,), daemon=True) for k in range(4)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        os.killpg(process.pid, signal.SIGKILL)  # the parent and both workers, mid-request
        stop.set()
        for t in threads:
            t.join(timeout=10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    contents = read_logs([logs], model_id=model_id(profiled_model))
    assert sum(answered) > 200
    # every answer a client got was logged before it was sent; at most the record being written is torn
    assert len(contents.records) >= sum(answered)
    assert contents.torn <= len(contents.files)
    assert all("torn last record" in p for p in contents.problems)


def test_log_images_keeps_the_digit_the_network_saw(profiled_model, tmp_path, shared_data):
    import base64

    from web_support import BackgroundServer, post_json

    from scratchpilot.monitor.predlog import PredictionLog
    from scratchpilot.report.monitor import Window, cut
    from scratchpilot.web.app import create_app

    _, (digits, _) = load_mnist("digits", download=False, progress=False)
    app = create_app(profiled_model, prediction_log=PredictionLog(tmp_path / "with"), log_images=True)
    with BackgroundServer(app, threads=2) as running:
        status, body, _ = post_json(f"{running.url}/api/predict", {"pixels": digits[0].reshape(-1).tolist(),
                                                                   "preview": True})
        assert post_json(f"{running.url}/api/predict", {"pixels": [0] * 784})[0] == 422  # nothing drawn
    assert status == 200
    records = read_logs([tmp_path / "with"]).records
    assert [r["status"] for r in records] == [200, 422]
    image = np.frombuffer(base64.b64decode(records[0]["image"]), dtype=np.uint8)
    assert image.tolist() == body["preview"] and records[0]["label"] == str(body["label"])
    assert records[1]["label"] is None and "image" not in records[1]
    # without --log-images no image is stored; /metrics is off unless asked for
    app = create_app(profiled_model, prediction_log=PredictionLog(tmp_path / "without"))
    with BackgroundServer(app, threads=2) as running:
        post_json(f"{running.url}/api/predict", {"pixels": digits[1].reshape(-1).tolist()})
        assert Client(running.url).request("GET", "/metrics")[0] == 404
    assert "image" not in read_logs([tmp_path / "without"]).records[0]
    # windows by time: records 0 s, 30 s, 61 s, 200 s apart in windows of a minute
    windows = cut([{"t": t} for t in (0.0, 30.0, 61.0, 200.0)], Window(seconds=60))
    assert [[r["t"] for r in w] for w in windows] == [[0.0, 30.0], [61.0], [200.0]]
