"""The laptop's side of the camera stream: a client that keeps only the newest frame, and reconnects.

The wire format is in :mod:`.stream_protocol`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import numpy as np

from .stream_protocol import (
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_PORT,
    HEADER_SIZE,
    Frame,
    FrameHeader,
    StreamProtocolError,
    unpack_header,
)

log = logging.getLogger(__name__)


class StreamClient:
    """Receive a stream in a background thread; always offer the newest frame.

    Reconnects after any failure (refused, dropped, stalled, bad header) with exponential back-off
    from ``backoff_initial_s`` to ``backoff_max_s`` (with jitter), reset once a connection delivers
    a frame. Nothing queues: a frame that arrives before the consumer took the previous one replaces
    it (counted in ``stats["frames_skipped"]``).

    Parameters
    ----------
    host, port
        The car's stream server.
    max_payload : int
        Larger length fields are treated as corruption (the connection is dropped unread).
    connect_timeout_s, stall_timeout_s : float
        Give up a connection attempt, or a connection that delivers no bytes, after this long.
    seed : int, optional
        Seeds the back-off jitter.
    """

    def __init__(self, host: str, port: int = DEFAULT_PORT, *, max_payload: int = DEFAULT_MAX_PAYLOAD,
                 connect_timeout_s: float = 1.0, stall_timeout_s: float = 2.0,
                 backoff_initial_s: float = 0.05, backoff_max_s: float = 2.0, seed: int | None = None):
        self.host, self.port = host, int(port)
        self.max_payload = int(max_payload)
        self.connect_timeout_s = float(connect_timeout_s)
        self.stall_timeout_s = float(stall_timeout_s)
        self.backoff_initial_s = float(backoff_initial_s)
        self.backoff_max_s = float(backoff_max_s)
        self._rng = np.random.default_rng(seed)
        self.stats = {"frames": 0, "frames_skipped": 0, "bytes": 0, "connects": 0, "connect_failures": 0,
                      "drops": 0, "protocol_errors": 0}
        self.last_error: str | None = None
        self._latest: Frame | None = None
        self._taken_index = 0
        self._condition = threading.Condition()
        self._stopping = threading.Event()
        self._socket: socket.socket | None = None
        self._socket_lock = threading.Lock()
        self._connected = False
        self._clock_warned = False
        self._thread: threading.Thread | None = None

    @property
    def connected(self) -> bool:
        return self._connected

    def start(self) -> StreamClient:
        """Start the receiver thread (once; a second call does nothing)."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name=f"stream-client-{self.host}:{self.port}",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the receiver thread and close the connection; idempotent."""
        self._stopping.set()
        with self._socket_lock:
            if self._socket is not None:
                try:
                    self._socket.shutdown(socket.SHUT_RDWR)  # wakes the blocked recv
                except OSError:
                    pass  # not connected any more
        with self._condition:
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def __enter__(self) -> StreamClient:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def latest(self) -> Frame | None:
        """The newest frame received so far (None before the first), without waiting."""
        with self._condition:
            if self._latest is not None:
                self._taken_index = self._latest.index
            return self._latest

    def wait_frame(self, after: int | None = None, timeout_s: float | None = None) -> Frame | None:
        """Wait for a frame newer than index ``after`` (default: the last one taken); None on timeout."""
        with self._condition:
            threshold = self._taken_index if after is None else after
            self._condition.wait_for(lambda: self._stopping.is_set() or self._newest_index() > threshold,
                                     timeout=timeout_s)
            frame = self._latest
            if frame is None or frame.index <= threshold:
                return None
            self._taken_index = frame.index
            return frame

    def _newest_index(self) -> int:
        return 0 if self._latest is None else self._latest.index

    # -- the receiver thread --
    def _run(self) -> None:
        backoff = self.backoff_initial_s
        while not self._stopping.is_set():
            delivered = self._connection()
            if self._stopping.is_set():
                return
            backoff = self.backoff_initial_s if delivered else min(self.backoff_max_s, backoff * 2)
            # Jitter keeps several laptops (or a test's many clients) from reconnecting in lockstep.
            self._stopping.wait(backoff * float(self._rng.uniform(0.5, 1.0)))

    def _connection(self) -> bool:
        """One connection, from connect to failure; True if it delivered at least one frame."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
        except OSError as exc:
            self.stats["connect_failures"] += 1
            self.last_error = f"cannot connect to {self.host}:{self.port}: {exc}"
            log.debug("stream: %s", self.last_error)
            return False
        with self._socket_lock:
            if self._stopping.is_set():
                sock.close()
                return False
            self._socket = sock
        self.stats["connects"] += 1
        self._connected = True
        delivered = False
        header = bytearray(HEADER_SIZE)
        try:
            sock.settimeout(self.stall_timeout_s)
            while not self._stopping.is_set():
                self._receive_into(sock, memoryview(header), "header")
                parsed = unpack_header(bytes(header), self.max_payload)
                payload = bytearray(parsed.length)
                self._receive_into(sock, memoryview(payload), f"payload of frame {parsed.sequence}")
                self._publish(parsed, bytes(payload))
                delivered = True
        except StreamProtocolError as exc:
            self.stats["protocol_errors"] += 1
            self.last_error = f"bad frame from {self.host}:{self.port}: {exc}"
            log.warning("stream: %s; reconnecting", self.last_error)
        except TimeoutError:
            self.last_error = f"no data from {self.host}:{self.port} for {self.stall_timeout_s:.1f} s"
            log.warning("stream: %s; reconnecting", self.last_error)
        except (ConnectionError, OSError) as exc:
            if not self._stopping.is_set():
                self.last_error = f"connection to {self.host}:{self.port} lost: {exc}"
                log.warning("stream: %s; reconnecting", self.last_error)
        finally:
            self._connected = False
            if not self._stopping.is_set():
                self.stats["drops"] += 1
            with self._socket_lock:
                self._socket = None
            sock.close()
        return delivered

    @staticmethod
    def _receive_into(sock: socket.socket, view: memoryview, what: str) -> None:
        received = 0
        while received < len(view):
            count = sock.recv_into(view[received:])
            if count == 0:
                raise ConnectionError(f"closed by the server after {received} of {len(view)} bytes of {what}")
            received += count

    def _publish(self, header: FrameHeader, payload: bytes) -> None:
        received_ns = time.time_ns()
        with self._condition:
            index = (self._latest.index if self._latest is not None else 0) + 1
            if self._latest is not None and self._latest.index > self._taken_index:
                self.stats["frames_skipped"] += 1
            self._latest = Frame(header.sequence, header.capture_ns, payload, received_ns, time.monotonic(),
                                 index)
            self.stats["frames"] += 1
            self.stats["bytes"] += HEADER_SIZE + len(payload)
            self._condition.notify_all()
        if not self._clock_warned and received_ns - header.capture_ns < -50_000_000:
            self._clock_warned = True
            log.warning("stream: frames are stamped %.0f ms in this machine's future: the two clocks are "
                        "not synchronised (run chrony/NTP on both); frame ages are unreliable",
                        (header.capture_ns - received_ns) / 1e6)

