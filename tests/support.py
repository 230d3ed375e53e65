"""Small helpers shared by the tests that run real servers, sockets and serial links."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time

#: ``scratchpilot`` in a child process, with Ctrl-C (SIGINT) raising KeyboardInterrupt as it does in a
#: terminal: a test run started in the background inherits SIGINT ignored, and Python then never raises it
SCRATCHPILOT_CLI = [sys.executable, "-c",
                    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                    "from scratchpilot.cli import main; sys.exit(main())"]


def wait_until(predicate, timeout_s: float = 3.0, interval_s: float = 0.005) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passes; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


class LoopbackServer:
    """A TCP server on a free port of 127.0.0.1 that runs :meth:`serve` on a thread per connection.

    Subclasses set their own state before calling ``super().__init__()`` (the accept thread starts there)
    and implement ``serve(conn, index)``; ``index`` counts connections from 0. ``close`` (or leaving a
    ``with`` block) stops every connection thread through ``self._stop``.
    """

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def serve(self, conn: socket.socket, index: int) -> None:
        raise NotImplementedError

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            index, self.accepted = self.accepted, self.accepted + 1
            threading.Thread(target=self._serve_and_close, args=(conn, index), daemon=True).start()

    def _serve_and_close(self, conn: socket.socket, index: int):
        try:
            self.serve(conn, index)
        except OSError:
            pass  # the client hung up first: several tests provoke exactly that
        finally:
            conn.close()

    def close(self):
        self._stop.set()
        self._thread.join(timeout=2)
        self.listener.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def pipe_path(data: bytes):
    """A path (``/dev/fd/N``) that gives ``data`` through a pipe, as a shell's ``<(...)`` does: it reads once."""
    read_fd, write_fd = os.pipe()

    def feed():
        with os.fdopen(write_fd, "wb") as fh:
            try:
                fh.write(data)
            except BrokenPipeError:
                pass  # the reader stopped early (it refused the data): what it saw is what the test checks

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    try:
        yield f"/dev/fd/{read_fd}"
    finally:
        os.close(read_fd)
        thread.join(timeout=5)
