"""Helpers shared by the web, digit-image and browser tests: a small real model, HTTP calls, canvases."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from support import SCRATCHPILOT_CLI

#: a network small enough to train in seconds, good enough (~96 %) to check predictions for real
SMALL_HIDDEN = (128,)


def small_model_path(tmp_path_factory) -> Path:
    """Train (once per test session) a 784-128-10 ReLU network on 30,000 MNIST digits; its path."""
    path = tmp_path_factory.getbasetemp() / "web-model" / "small.npz"
    if path.exists():
        return path
    from scratchpilot.data import load_mnist, to_features
    from scratchpilot.digits import models

    (X_train, y_train), (X_test, y_test) = load_mnist("digits", download=False, progress=False)
    config = models.TrainConfig(name="small", hidden=SMALL_HIDDEN, activation="relu", loss="softmax", init="he",
                                optimizer="sgd", lr=0.1, momentum=0.9, epochs=3, batch_size=64)
    model = models.train(config, X_train[:30000], y_train[:30000], progress=False)
    model.metadata["test_accuracy"] = model.evaluate(to_features(X_test), y_test)["accuracy"]
    model.metadata["test_dataset"] = "mnist-test"
    model.save(path)
    return path


def http(method: str, url: str, body: bytes | None = None, content_type: str | None = None,
         timeout: float = 10) -> tuple[int, dict | str, dict]:
    """One HTTP request; returns (status, parsed JSON or text, headers). Never raises on an HTTP error."""
    request = urllib.request.Request(url, data=body, method=method)
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, headers = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, raw, headers = exc.code, exc.read(), dict(exc.headers)
    kind = headers.get("Content-Type", "")
    return status, (json.loads(raw) if kind.startswith("application/json") else raw.decode("utf-8", "replace")), headers


def post_json(url: str, payload) -> tuple[int, dict | str, dict]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return http("POST", url, body, "application/json")


def multipart(field: str, filename: str, data: bytes, content_type: str = "application/octet-stream"
              ) -> tuple[bytes, str]:
    """A multipart/form-data body with one file field; returns (body, content type header)."""
    boundary = "scratchpilot-test-boundary-7d1f"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def png_bytes(image: np.ndarray, mode: str | None = None) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` × ``height`` 8-bit grey pixels (a decompression bomb's
    header: a real bomb would follow with a few KB of deflated zeros)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def draw_on_canvas(digit: np.ndarray, rng: np.random.Generator, canvas: int = 280) -> np.ndarray:
    """An MNIST digit as someone would draw it on a web canvas: scaled up 5–9.5×, placed off-centre at a
    random spot, dark ink on white. uint8 (28, 28) → uint8 (canvas, canvas)."""
    from PIL import Image

    side = int(round(28 * rng.uniform(5.0, 9.5)))
    big = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BILINEAR))
    light_on_dark = np.zeros((canvas, canvas), dtype=np.uint8)
    top, left = rng.integers(0, canvas - side + 1, size=2)
    light_on_dark[top:top + side, left:left + side] = big
    return 255 - light_on_dark


#: the ``scratchpilot`` command, run by this interpreter
SCRATCHPILOT = SCRATCHPILOT_CLI


def start_serving(*args, env=None, command=SCRATCHPILOT) -> tuple[subprocess.Popen, str]:
    """``scratchpilot serve --port 0 *args`` as a real process, once it accepts connections: (process, base URL).

    Its prediction log goes to a fresh temporary folder unless ``args`` say where (or ``--no-log``)."""
    if "--log" not in args and "--no-log" not in args:
        import tempfile

        args = (*args, "--log", tempfile.mkdtemp(prefix="scratchpilot-test-log-"))
    process = subprocess.Popen([*command, "serve", "--port", "0", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env={**(env or os.environ), "PYTHONUNBUFFERED": "1"})
    lines = []
    for _ in range(8):  # the model, the log, the profile, then "serving on"
        lines.append(process.stdout.readline())
        if "serving on " in lines[-1] or not lines[-1]:
            break
    ready = lines[-1]
    assert "serving on " in ready, (lines, process.stderr.read() if process.poll() is not None else "")
    return process, ready.split("serving on ")[1].split()[0].rstrip("/")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, as a service manager stops a server; killed (and the test failed) if it hangs past 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


@contextlib.contextmanager
def serving(*args, env=None, command=SCRATCHPILOT):
    """:func:`start_serving` for a ``with`` block: stops it with SIGTERM on leaving (the parent stops its
    workers) and checks that it exits with 0."""
    process, url = start_serving(*args, env=env, command=command)
    try:
        yield process, url
    finally:
        stop(process)
    assert process.returncode == 0, process.stderr.read()


class BackgroundServer:
    """Run ``app`` on waitress in a daemon thread: ``with BackgroundServer(app) as s: s.url``.

    Parameters
    ----------
    app : the WSGI app.
    host, port : where to listen; port 0 (default) picks a free port.
    threads : waitress worker threads.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, threads: int = 8):
        import threading

        from scratchpilot.web.server import make_server

        self._socket_map: dict = {}
        self.server = make_server(app, host=host, port=port, threads=threads, socket_map=self._socket_map)
        self.url = f"http://{host}:{self.server.effective_port}"
        self._thread = threading.Thread(target=self.server.run, name="waitress", daemon=True)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the requests being handled, close the listening socket and every connection, and wait
        for the serving thread to end."""
        self.server.task_dispatcher.shutdown(timeout=timeout)

        def close_everything():
            for dispatcher in list(self._socket_map.values()):
                dispatcher.close()

        # the serving thread owns the sockets: closing them under its select() would fail there (EBADF)
        self.server.trigger.pull_trigger(close_everything)
        self._thread.join(timeout)
