"""Idle and slow connections cannot lock the server out, and waitress's own error answers are JSON.

Real servers (``run_server`` in a process of their own, one worker and forked workers) on loopback, with
real sockets; the deadlines are shortened through the module's settings so the tests stay short.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time

import pytest
from support import wait_until
from web_support import BackgroundServer, stop

#: run_server with a tiny app (echoes the body after "ok") and the connection settings given as NAME=value
GUARDED_SERVER = """
import sys
import scratchpilot.web.connections as guard
for setting in sys.argv[2:]:
    name, value = setting.split("=")
    setattr(guard, name, type(getattr(guard, name))(value))
from scratchpilot.web.server import run_server
def app(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body) + 2))])
    return [b"ok" + body]
run_server(app, port=0, threads=2, workers=int(sys.argv[1]), pin=False, on_ready=lambda port: print(port, flush=True))
"""


@contextlib.contextmanager
def guarded_server(workers: int, *settings: str):
    process = subprocess.Popen([sys.executable, "-c", GUARDED_SERVER, str(workers), *settings],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.strip().isdigit(), process.stderr.read() if process.poll() is not None else line
        yield int(line)
    finally:
        stop(process)


def timed_get(port: int, timeout: float = 5.0) -> tuple[bytes, float]:
    """One GET on a new connection: (the answer's first bytes, seconds it took)."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = connection.recv(200)
    return answer, time.perf_counter() - start


def closed_by_server(connection: socket.socket) -> bool:
    """Whether the server has closed its end (without waiting)."""
    connection.setblocking(False)
    try:
        return connection.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


class Dripping:
    """A client sending ``start`` and then ``drip`` every ``every_s`` seconds until the server closes
    the connection; ``closed_after`` is how long that took (seconds), ``None`` while it is open."""

    def __init__(self, port: int, start: bytes, drip: bytes, every_s: float = 0.25):
        self.connection = socket.create_connection(("127.0.0.1", port), timeout=every_s)
        self.connection.sendall(start)
        self.closed_after: float | None = None
        self.drip, self.every_s, self.began = drip, every_s, time.monotonic()
        self.stop = threading.Event()
        threading.Thread(target=self.run, daemon=True).start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.connection.sendall(self.drip)
                if self.connection.recv(1) == b"":
                    break
            except TimeoutError:  # nothing from the server yet: still open, keep dripping
                continue
            except OSError:  # reset or broken pipe: closed
                break
        self.closed_after = time.monotonic() - self.began

    def close(self) -> None:
        self.stop.set()
        self.connection.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_idle_and_slow_connections_do_not_starve_a_request(workers):
    """300 idle connections, a slowloris (a header line at a time) and a slow body: a request is still
    answered at once, the slow ones are cut at their deadlines, the idle ones after the idle timeout."""
    settings = ("HEADER_TIMEOUT_S=1", "REQUEST_TIMEOUT_S=2", "IDLE_TIMEOUT_S=4")
    with guarded_server(workers, *settings) as port:
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
        slowloris = Dripping(port, b"GET / HTTP/1.1\r\nHost: x\r\n", b"X-Padding: 1\r\n")
        slow_body = Dripping(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", b"x")
        try:
            for _ in range(3):
                answer, seconds = timed_get(port)
                assert answer.startswith(b"HTTP/1.1 200 OK") and seconds < 1.0, (answer, seconds)
            # the drippers never stop sending, yet each is cut at its deadline (checked every second)
            assert wait_until(lambda: slowloris.closed_after is not None, timeout_s=5)
            assert 1.0 <= slowloris.closed_after < 3.5, slowloris.closed_after
            assert wait_until(lambda: slow_body.closed_after is not None, timeout_s=5)
            assert 2.0 <= slow_body.closed_after < 4.5, slow_body.closed_after
            assert not closed_by_server(idle[-1])  # idle for less than 4 s so far
            assert wait_until(lambda: all(closed_by_server(c) for c in idle), timeout_s=8)
            assert timed_get(port)[0].startswith(b"HTTP/1.1 200 OK")
        finally:
            slowloris.close()
            slow_body.close()
            for c in idle:
                c.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_near_the_limit_the_longest_waiting_connections_are_shed(workers):
    """At 90 % of the connection limit (here 20 per process) the connections waiting longest without a
    request under way are closed, down to 80 %; a request whose body is arriving is not one of them."""
    with guarded_server(workers, "CONNECTION_LIMIT=20") as port:
        upload = socket.create_connection(("127.0.0.1", port), timeout=5)
        upload.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
        idle = []
        for _ in range(25 * workers):
            idle.append(socket.create_connection(("127.0.0.1", port)))
            time.sleep(0.005)  # accepted in this order: the first ones wait longest
        answer, seconds = timed_get(port)
        assert answer.startswith(b"HTTP/1.1 200 OK") and seconds < 1.0, (answer, seconds)
        assert wait_until(lambda: closed_by_server(idle[0]))
        open_now = [c for c in idle if not closed_by_server(c)]
        assert 0 < len(open_now) <= 18 * workers
        assert not closed_by_server(idle[-1])  # the newest stay
        upload.setblocking(True)
        upload.sendall(b"cd")  # the upload was never shed: it completes
        assert upload.recv(200).endswith(b"okabcd")
        for c in [upload, *idle]:
            c.close()


# ----------------------------------------------------------------- waitress's own errors are JSON too


def app_that_fails(environ, start_response):
    raise RuntimeError("a bug")


def raw_request(url: str, data: bytes) -> tuple[int, dict, str]:
    """Send raw bytes; returns (status, the JSON body, Content-Type); the server closes after an error."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            connection.sendall(data)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := connection.recv(65536):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), json.loads(body), headers.get("Content-Type", "")


HEAD = b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
TEN_MB_CHUNKED = b"".join(b"%x\r\n%s\r\n" % (1 << 20, b"1" * (1 << 20)) for _ in range(10)) + b"0\r\n\r\n"


@pytest.mark.parametrize("data, status, words", [
    (b"GARBAGE\r\n\r\n", 400, "bad request"),
    (b"G\x00T / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad request"),
    (b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n", 400, "bad request"),
    (HEAD + b"Content-Length: abc\r\n\r\n", 400, "Content-Length"),
    (HEAD + b"Content-Length: 50000000\r\n\r\n", 413, "2 MB"),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + TEN_MB_CHUNKED, 413, "2 MB"),
    (HEAD + b"Transfer-Encoding: gzip\r\n\r\n", 501, "not implemented"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n", 431, "header fields too large"),
], ids=["request-line", "nul-in-method", "header-line", "bad-length", "declared-50MB", "chunked-10MB",
        "transfer-encoding", "header-300KB"])
def test_waitress_own_errors_are_json(data, status, words):
    with BackgroundServer(app_that_fails, threads=1) as server:
        code, body, content_type = raw_request(server.url, data)
    assert (code, body["status"], content_type) == (status, status, "application/json"), body
    assert words.lower() in body["error"].lower(), body


def test_a_crash_outside_flask_is_a_json_500():
    with BackgroundServer(app_that_fails, threads=1) as server:
        code, body, content_type = raw_request(server.url, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (code, content_type) == (500, "application/json")
    assert body == {"error": "internal server error", "status": 500}


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    from scratchpilot import nn
    from scratchpilot.web.app import create_app

    path = tmp_path_factory.mktemp("connections") / "tiny.npz"
    nn.Sequential([nn.Dense(784, 10)]).save(path)  # untrained: only the errors matter here
    with BackgroundServer(create_app(path), threads=2) as server:
        yield server.url


THREE_MB = b"0" * (3 << 20)


@pytest.mark.parametrize("data, status", [
    (b"GET /api/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
    (b"DELETE /api/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405),
    (HEAD + b"Connection: close\r\nContent-Length: 5\r\n\r\n{nope", 400),
    (HEAD + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(THREE_MB) + THREE_MB, 413),
    (b"POST /api/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
     b"Content-Type: multipart/form-data; boundary=b\r\n"
     b"Content-Length: %d\r\n\r\n" % len(THREE_MB) + THREE_MB, 413),
    (b"POST /api/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: multipart/form-data\r\n"
     b"Content-Length: 4\r\n\r\njunk", 400),
    (b"GET /api/model HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
], ids=["404", "405", "bad-json", "3MB-json", "3MB-multipart", "multipart-no-boundary", "negative-length"])
def test_every_error_of_the_api_is_json(api_server, data, status):
    """Whichever layer refuses the request (waitress, Flask, the JSON fast path), the answer is JSON."""
    code, body, content_type = raw_request(api_server, data)
    assert (code, body["status"], content_type) == (status, status, "application/json"), body
