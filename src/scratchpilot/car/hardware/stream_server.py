"""The car's side of the camera stream: a TCP server that pushes the newest frame to every client.

The wire format is in :mod:`.stream_protocol`.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
import time
from functools import partial

from ...util.images import encode_jpeg
from .stream_protocol import DEFAULT_MAX_PAYLOAD, DEFAULT_PORT, MAX_CLIENT_CHATTER, pack_frame

try:  # POSIX only; the server then measures its send queue (see StreamServer._wait_for_link)
    import fcntl as _fcntl
    import termios as _termios
except ImportError:  # pragma: no cover - Windows
    _fcntl = _termios = None

log = logging.getLogger(__name__)


def _unacknowledged_bytes(sock: socket.socket) -> int | None:
    """Bytes written to a TCP socket and not yet acknowledged by the peer (Linux, SIOCOUTQ); else None."""
    if _fcntl is None or not hasattr(_termios, "TIOCOUTQ"):
        return None
    try:
        return struct.unpack("i", _fcntl.ioctl(sock.fileno(), _termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return None


class StreamServer:
    """Serve a frame source to any number of TCP clients, newest frame first.

    Parameters
    ----------
    source
        Anything with ``read() -> (image (H, W, 3) uint8 RGB, timestamp_s)``; a JPEG ``bytes``
        object in place of the image is sent as it is.
    host, port : str, int
        Where to listen; port 0 picks a free port (see :attr:`address`).
    jpeg_quality : int
        Pillow JPEG quality, 1..95.
    max_clients : int
        Connections served at once; more are closed on accept (a client reconnects with back-off).
    send_timeout_s : float
        A client that does not take a whole frame within this long is dropped.
    send_buffer_bytes : int
        Kernel send buffer per client. Small on purpose: bytes queued there are old frames.
    use_source_timestamp : bool
        Send the source's timestamp as the capture time (cameras: wall-clock seconds). False stamps
        frames with the server's wall clock when they are read (for sources on a simulated clock).
    max_queued_bytes : int
        A new frame is written to a client only when less than this much of the earlier ones is
        still unacknowledged (Linux; about one 320x240 frame by default), so a slow link gets the
        newest frame rather than a backlog.
    max_payload : int
        Frames that encode larger than this are skipped (the client would refuse them).
    """

    def __init__(self, source, host: str = "0.0.0.0", port: int = DEFAULT_PORT, *, jpeg_quality: int = 80,
                 max_clients: int = 8, send_timeout_s: float = 2.0, send_buffer_bytes: int = 32 * 1024,
                 max_queued_bytes: int = 16 * 1024, use_source_timestamp: bool = True,
                 max_payload: int = DEFAULT_MAX_PAYLOAD):
        self.source = source
        self.host, self.port = host, int(port)
        self.jpeg_quality = int(jpeg_quality)
        self.max_clients = int(max_clients)
        self.send_timeout_s = float(send_timeout_s)
        self.send_buffer_bytes = int(send_buffer_bytes)
        self.max_queued_bytes = int(max_queued_bytes)
        self.use_source_timestamp = use_source_timestamp
        self.max_payload = int(max_payload)
        self.stats = {"frames_captured": 0, "frames_sent": 0, "frames_skipped": 0, "frames_too_large": 0,
                      "source_errors": 0, "clients_accepted": 0, "clients_rejected": 0,
                      "clients_dropped": 0}
        self._stats_lock = threading.Lock()
        self._latest: tuple[int, bytes] | None = None  # (sequence, header + payload)
        self._condition = threading.Condition()
        self._stopping = threading.Event()
        self._clients: set[socket.socket] = set()
        self._clients_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._client_threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually listened on."""
        if self._listener is None:
            raise RuntimeError("the stream server is not started")
        return self._listener.getsockname()[:2]

    @property
    def clients_active(self) -> int:
        with self._clients_lock:
            return len(self._clients)

    def start(self) -> StreamServer:
        """Listen and start serving (once; a second call does nothing)."""
        if self._listener is not None:
            return self
        try:
            self._listener = socket.create_server((self.host, self.port), reuse_port=False)
        except OSError as exc:
            raise OSError(f"cannot listen on {self.host}:{self.port}: {exc}") from exc
        self._listener.settimeout(0.2)  # so the accept loop notices stop()
        for target, name in ((self._capture_loop, "stream-capture"), (self._accept_loop, "stream-accept")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("stream server on %s:%d", *self.address)
        return self

    def stop(self) -> None:
        """Stop capturing and serving, close every connection; idempotent."""
        self._stopping.set()
        with self._condition:
            self._condition.notify_all()
        with self._clients_lock:
            for client in self._clients:
                try:
                    client.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in sendall
                except OSError:
                    pass  # already gone
        if self._listener is not None:
            try:  # stop listening now (new connections are refused) and wake the accept loop
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not listening any more
        for thread in self._threads + self._client_threads:
            thread.join(timeout=2.0)
        if self._listener is not None:
            self._listener.close()

    close = stop

    def __enter__(self) -> StreamServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- capture: one thread fills the latest-frame slot --
    def _capture_loop(self) -> None:
        sequence = 0
        while not self._stopping.is_set():
            try:
                image, stamp = self.source.read()
                read_ns = time.time_ns()
                payload = bytes(image) if isinstance(image, bytes | bytearray) else \
                    encode_jpeg(image, self.jpeg_quality)
            except (OSError, RuntimeError, ValueError) as exc:
                self._count("source_errors", 1)
                log.error("stream: the camera failed (%s); retrying", exc)
                self._stopping.wait(0.1)
                continue
            except (StopIteration, EOFError):
                log.info("stream: the source has no more frames")
                return
            capture_ns = int(round(stamp * 1e9)) if self.use_source_timestamp else read_ns
            if len(payload) > self.max_payload:
                self._count("frames_too_large", 1)
                log.warning("stream: frame of %d bytes exceeds the %d-byte limit; skipped", len(payload),
                            self.max_payload)
                continue
            sequence += 1
            packet = pack_frame(sequence, capture_ns, payload)
            with self._condition:
                self._latest = (sequence, packet)
                self._count("frames_captured", 1)
                self._condition.notify_all()

    # -- accept: one thread per client, each sending the newest frame it has not sent --
    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    return
                log.warning("stream: accept failed (%s)", exc)  # e.g. too many open files: back off
                self._stopping.wait(0.05)
                continue
            with self._clients_lock:
                full = len(self._clients) >= self.max_clients
                if not full:
                    self._clients.add(client)
            if full:
                self._count("clients_rejected", 1)
                client.close()
                continue
            self._count("clients_accepted", 1)
            thread = threading.Thread(target=self._serve_client, args=(client, peer), daemon=True,
                                      name=f"stream-client-{peer[0]}:{peer[1]}")
            thread.start()
            self._client_threads = [t for t in self._client_threads if t.is_alive()] + [thread]

    def _wait_for_link(self, client: socket.socket) -> bool:
        """Wait until the bytes still unacknowledged by the client fall below ``max_queued_bytes``.

        Bytes in the kernel's send queue are frames that will arrive late; writing the next frame
        only once the link has taken the last one keeps that queue short on a slow link (Wi-Fi),
        where the newest frame then goes out instead of the next one in a backlog. False when the
        client has not caught up within ``send_timeout_s``, or the server is stopping.
        """
        deadline = time.monotonic() + self.send_timeout_s
        while (queued := _unacknowledged_bytes(client)) is not None and queued > self.max_queued_bytes:
            if self._stopping.is_set() or time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    def _count(self, key: str, amount: int) -> None:
        with self._stats_lock:  # client threads update the same counters
            self.stats[key] += amount

    def _has_news(self, sent_sequence: int) -> bool:
        return self._stopping.is_set() or (self._latest is not None and self._latest[0] > sent_sequence)

    def _serve_client(self, client: socket.socket, peer) -> None:
        reason = "server stopping"
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer_bytes)
            client.settimeout(self.send_timeout_s)
            sent_sequence, chatter = 0, 0
            while not self._stopping.is_set():
                with self._condition:
                    self._condition.wait_for(partial(self._has_news, sent_sequence), timeout=0.25)
                    latest = self._latest
                # A client has nothing to say: read and drop what it sends, notice when it leaves.
                while select.select([client], [], [], 0)[0]:
                    data = client.recv(4096)
                    if not data:
                        reason = "client closed"
                        return
                    chatter += len(data)
                    if chatter > MAX_CLIENT_CHATTER:
                        reason = f"client sent {chatter} bytes (it should send none)"
                        return
                if self._stopping.is_set() or latest is None or latest[0] <= sent_sequence:
                    continue
                if not self._wait_for_link(client):
                    if not self._stopping.is_set():
                        reason = f"client took more than {self.send_timeout_s:.1f} s to take a frame"
                    return
                with self._condition:
                    latest = self._latest  # the newest again: the wait may have been long
                if sent_sequence and latest[0] > sent_sequence + 1:
                    self._count("frames_skipped", latest[0] - sent_sequence - 1)
                client.sendall(latest[1])
                sent_sequence = latest[0]
                self._count("frames_sent", 1)
        except TimeoutError:
            reason = f"client took more than {self.send_timeout_s:.1f} s to take a frame"
        except OSError as exc:
            reason = f"connection error ({exc.strerror or exc})"
        finally:
            client.close()
            if reason != "server stopping":  # counted before the client leaves the set: clients_active
                self._count("clients_dropped", 1)  # never shows a client gone that stats still miss
            with self._clients_lock:
                self._clients.discard(client)
            log.info("stream: client %s:%d left: %s", peer[0], peer[1], reason)


