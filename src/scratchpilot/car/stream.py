"""Camera frames from the car (a Raspberry Pi) to the laptop: JPEG over TCP in a small framed protocol.

Wire format (version 1). Every frame is a 32-byte header, big-endian, then the payload::

    offset size field
    0      4    magic        b"SPFR"
    4      1    version      1
    5      1    flags        bit 0: the payload is a JPEG image (always set); other bits must be 0
    6      2    reserved     0
    8      8    sequence     u64, counts the server's captured frames from 1 (restarts with the server)
    16     8    capture_ns   i64, capture time in nanoseconds since the Unix epoch, server's wall clock
    24     4    length       u32, payload bytes, 1 .. max payload (2 MiB by default)
    28     4    header_crc   u32, CRC-32 (zlib) of bytes 0..27
    32     ...  payload      the JPEG file

The server pushes frames to a client as soon as it connects; a client sends nothing (what it does
send is read and discarded, and more than 4 KiB of it closes the connection). A receiver drops the
connection on any bad header (magic, version, flags, CRC, length) and reconnects: after a bad
header there is no safe way to find the next frame boundary.

**Why wall-clock capture time.** Frame age (now - capture time) is what the driving safety layer
needs, and it compares a timestamp taken on the Pi with a clock read on the laptop. Monotonic clocks
count from each machine's boot and cannot be compared across machines, so the header carries the
wall clock (``time.time_ns()``). On one machine (loopback, the tests, the benchmark) this is exact.
Between a Pi and a laptop it is as good as their clock synchronisation: run chrony or NTP on both
(ideally the Pi syncing to the laptop on the same network), which keeps them within a few ms --
small against the 200 ms staleness limit. The client warns once when capture times are in its
future by more than 50 ms, the mark of unsynchronised clocks. Each :class:`Frame` also records when
it arrived on the local monotonic clock, a staleness measure that needs no shared clock.

Newest-frame semantics end to end: the server keeps one "latest frame" slot that every client
thread reads (a slow client skips frames, it never queues them), its sockets have small send
buffers so the kernel cannot queue many stale frames either, and the client keeps only the newest
frame for its consumer.
"""

from __future__ import annotations

import io
import logging
import select
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from functools import partial

import numpy as np

try:  # POSIX only; the server then measures its send queue (see StreamServer._wait_for_link)
    import fcntl as _fcntl
    import termios as _termios
except ImportError:  # pragma: no cover - Windows
    _fcntl = _termios = None

log = logging.getLogger(__name__)

MAGIC = b"SPFR"
VERSION = 1
FLAG_JPEG = 0x01
KNOWN_FLAGS = FLAG_JPEG
_HEADER_BODY = struct.Struct(">4sBBHQqI")
_HEADER_CRC = struct.Struct(">I")
HEADER_SIZE = _HEADER_BODY.size + _HEADER_CRC.size  #: 32 bytes
DEFAULT_MAX_PAYLOAD = 2 * 1024 * 1024
MAX_CLIENT_CHATTER = 4096  #: bytes a client may send (all ignored) before the server drops it
DEFAULT_PORT = 8000


class StreamProtocolError(ValueError):
    """Bytes that are not a valid frame header (or payload); the message says which field is wrong."""


class CameraError(RuntimeError):
    """A camera backend is missing or failed; the message says what to install or check."""


# ---- wire format ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameHeader:
    sequence: int
    capture_ns: int
    length: int
    flags: int = FLAG_JPEG


def pack_header(sequence: int, capture_ns: int, length: int, flags: int = FLAG_JPEG) -> bytes:
    """The 32-byte header of one frame (see the module docstring)."""
    body = _HEADER_BODY.pack(MAGIC, VERSION, flags, 0, sequence, capture_ns, length)
    return body + _HEADER_CRC.pack(zlib.crc32(body))


def pack_frame(sequence: int, capture_ns: int, payload: bytes) -> bytes:
    """Header and payload of one JPEG frame, ready for ``sendall``."""
    return pack_header(sequence, capture_ns, len(payload)) + payload


def unpack_header(data: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD) -> FrameHeader:
    """Validate and parse a 32-byte header; StreamProtocolError naming the bad field otherwise."""
    if len(data) != HEADER_SIZE:
        raise StreamProtocolError(f"frame header is {len(data)} bytes, expected {HEADER_SIZE}")
    magic, version, flags, reserved, sequence, capture_ns, length = _HEADER_BODY.unpack_from(data)
    if magic != MAGIC:
        raise StreamProtocolError(f"bad magic {magic!r} (expected {MAGIC!r}): not a scratchpilot stream")
    if version != VERSION:
        raise StreamProtocolError(f"stream protocol version {version}, this client speaks {VERSION}")
    (crc,) = _HEADER_CRC.unpack_from(data, _HEADER_BODY.size)
    if crc != zlib.crc32(data[:_HEADER_BODY.size]):
        raise StreamProtocolError(f"header CRC mismatch (sequence field reads {sequence}): corrupted header")
    if flags & ~KNOWN_FLAGS or not flags & FLAG_JPEG or reserved:
        raise StreamProtocolError(f"unknown flags 0x{flags:02x} / reserved 0x{reserved:04x} in the header")
    if not 0 < length <= max_payload:
        raise StreamProtocolError(f"payload length {length} outside 1..{max_payload} bytes")
    return FrameHeader(sequence, capture_ns, length, flags)


@dataclass(frozen=True)
class Frame:
    """One received frame.

    ``capture_ns`` is the server's wall clock at capture; ``received_ns`` this machine's wall clock
    and ``received_monotonic`` its :func:`time.monotonic` at arrival; ``index`` counts the frames
    this client received (it keeps growing across reconnects, unlike the server's ``sequence``).
    """

    sequence: int
    capture_ns: int
    jpeg: bytes = field(repr=False)
    received_ns: int
    received_monotonic: float
    index: int

    def age_s(self, now_ns: int | None = None) -> float:
        """Seconds since capture (needs synchronised clocks between the two machines)."""
        return ((time.time_ns() if now_ns is None else now_ns) - self.capture_ns) / 1e9

    @property
    def transit_s(self) -> float:
        """Capture to arrival here: encoding, sending and the network, in seconds."""
        return (self.received_ns - self.capture_ns) / 1e9

    def since_received_s(self) -> float:
        """Seconds since this frame arrived, on the local monotonic clock (no shared clock needed)."""
        return time.monotonic() - self.received_monotonic

    def image(self) -> np.ndarray:
        """The decoded frame, ``(H, W, 3)`` uint8 RGB; StreamProtocolError for a damaged JPEG."""
        try:
            return decode_jpeg(self.jpeg)
        except ValueError as exc:
            raise StreamProtocolError(f"frame {self.sequence}: {exc}") from exc


# ---- JPEG -----------------------------------------------------------------------------------------


def _pillow():
    try:
        from PIL import Image
    except ImportError as exc:
        raise CameraError("Pillow is needed for JPEG frames: pip install 'scratchpilot[car]' "
                          "(or pip install pillow)") from exc
    return Image


def encode_jpeg(image: np.ndarray, quality: int = 80) -> bytes:
    """Encode an ``(H, W, 3)`` uint8 RGB image as a baseline JPEG."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got "
                         f"{getattr(image, 'shape', type(image).__name__)} {getattr(image, 'dtype', '')}")
    buffer = io.BytesIO()
    _pillow().fromarray(image, mode="RGB").save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    """Decode JPEG bytes to ``(H, W, 3)`` uint8 RGB; ValueError for bytes that are not a JPEG image."""
    Image = _pillow()
    try:
        with Image.open(io.BytesIO(data)) as picture:
            if picture.format != "JPEG":
                raise ValueError(f"payload is {picture.format}, not JPEG")
            return np.asarray(picture.convert("RGB"))
    except (OSError, SyntaxError) as exc:  # Pillow reports truncated and unknown data this way
        raise ValueError(f"payload of {len(data)} bytes is not a readable JPEG image ({exc})") from exc


# ---- frame sources --------------------------------------------------------------------------------


class TestPatternCamera:
    """A synthetic camera: moving stripes, a moving square and the frame number as a bar code.

    ``read()`` paces itself to ``fps`` (``None``: as fast as asked) and returns
    ``(image (H, W, 3) uint8 RGB, capture time in wall-clock seconds)``. The top band of the image
    holds the frame number as 16 black/white cells, large enough to survive JPEG;
    :meth:`frame_number` reads it back, so a test can check that a decoded image is the frame its
    header claims.
    """

    __test__ = False  # not a pytest test class, despite the name
    BITS = 16

    def __init__(self, size: tuple[int, int] = (320, 240), fps: float | None = 24.0):
        width, height = int(size[0]), int(size[1])
        if width < 64 or height < 48:
            raise ValueError(f"test pattern size {width}x{height} is below the 64x48 minimum")
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be positive (or None for unpaced), got {fps}")
        self.width, self.height, self.fps = width, height, fps
        self.frames = 0  #: frames produced so far; the next frame's number
        self.late_frames = 0  #: frame slots missed because the caller read too slowly
        self._cell_width = width // self.BITS
        self._band_height = max(8, height // 10)
        columns = np.arange(width, dtype=np.int32)[None, :]
        rows = np.arange(height, dtype=np.int32)[:, None]
        self._diagonal = columns + rows
        self._green = np.broadcast_to((columns * 255 // max(1, width - 1)).astype(np.uint8), (height, width))
        self._rows, self._columns = rows, columns
        self._next_deadline: float | None = None

    def read(self) -> tuple[np.ndarray, float]:
        self._pace()
        image = self.render(self.frames)
        self.frames += 1
        return image, time.time()

    def render(self, number: int) -> np.ndarray:
        """The pattern for frame ``number`` (deterministic)."""
        image = np.empty((self.height, self.width, 3), dtype=np.uint8)
        image[..., 0] = np.where((self._diagonal + 6 * number) % 48 < 24, 220, 40)
        image[..., 1] = self._green
        image[..., 2] = np.where(np.abs(self._rows - (3 * number) % self.height) < 6, 255, 60)
        side = max(8, self.height // 6)
        left = (5 * number) % (self.width - side)
        top = self._band_height + (2 * number) % (self.height - self._band_height - side)
        image[top:top + side, left:left + side] = (255, 255, 0)
        for bit in range(self.BITS):
            value = 255 if (number >> bit) & 1 else 0
            image[:self._band_height, bit * self._cell_width:(bit + 1) * self._cell_width] = value
        return image

    def frame_number(self, image: np.ndarray) -> int:
        """Read the frame number back from an image (after JPEG) made by this camera's size."""
        quarter_w, quarter_h = self._cell_width // 4, self._band_height // 4
        number = 0
        for bit in range(self.BITS):
            left = bit * self._cell_width
            cell = image[quarter_h:self._band_height - quarter_h,
                         left + quarter_w:left + self._cell_width - quarter_w]
            if cell.mean() > 127:
                number |= 1 << bit
        return number

    def _pace(self) -> None:
        if self.fps is None:
            return
        now = time.monotonic()
        period = 1.0 / self.fps
        if self._next_deadline is None:
            self._next_deadline = now
        elif now < self._next_deadline:
            time.sleep(self._next_deadline - now)
        elif now - self._next_deadline > period:
            # Too slow a reader: skip the missed slots instead of bursting to catch up.
            missed = int((now - self._next_deadline) / period)
            self.late_frames += missed
            self._next_deadline += missed * period
        self._next_deadline += period

    def close(self) -> None:
        """Nothing to release; here for the camera interface."""


class OpenCVCamera:
    """A V4L2/USB camera through OpenCV (``opencv:0``); OpenCV is imported on construction."""

    def __init__(self, index: int = 0, size: tuple[int, int] = (320, 240), fps: float = 24.0):
        try:
            import cv2
        except ImportError as exc:
            raise CameraError("the opencv camera needs OpenCV: pip install opencv-python-headless "
                              "(or apt-get install python3-opencv)") from exc
        self._cv2 = cv2
        self._capture = cv2.VideoCapture(int(index))
        if not self._capture.isOpened():
            raise CameraError(f"OpenCV could not open camera {index} (is it plugged in? /dev/video{index})")
        self._capture.set(cv2.CAP_PROP_FRAME_WIDTH, int(size[0]))
        self._capture.set(cv2.CAP_PROP_FRAME_HEIGHT, int(size[1]))
        self._capture.set(cv2.CAP_PROP_FPS, float(fps))
        self._capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # do not let the driver queue stale frames
        self.index = int(index)

    def read(self) -> tuple[np.ndarray, float]:
        ok, bgr = self._capture.read()
        stamp = time.time()
        if not ok or bgr is None:
            raise CameraError(f"OpenCV camera {self.index} returned no frame")
        return np.ascontiguousarray(bgr[..., ::-1]), stamp

    def close(self) -> None:
        self._capture.release()


class Picamera2Camera:
    """The Raspberry Pi camera through picamera2 (only on Raspberry Pi OS; untested off a Pi)."""

    def __init__(self, size: tuple[int, int] = (320, 240), fps: float = 24.0):
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise CameraError("picamera2 exists only on Raspberry Pi OS (sudo apt install python3-picamera2, "
                              "and create the venv with --system-site-packages); elsewhere use "
                              "--camera test-pattern or --camera opencv:0") from exc
        self._camera = Picamera2()
        config = self._camera.create_video_configuration(
            main={"size": (int(size[0]), int(size[1])), "format": "RGB888"},
            controls={"FrameRate": float(fps)}, buffer_count=2)
        self._camera.configure(config)
        self._camera.start()

    def read(self) -> tuple[np.ndarray, float]:
        array = self._camera.capture_array("main")
        stamp = time.time()
        # picamera2's "RGB888" is stored B, G, R per pixel (its documented quirk).
        return np.ascontiguousarray(array[..., 2::-1]), stamp

    def close(self) -> None:
        self._camera.stop()
        self._camera.close()


def open_camera(spec: str, size: tuple[int, int] = (320, 240), fps: float = 24.0):
    """Open ``test-pattern``, ``opencv:N`` or ``picamera2`` as a frame source.

    ValueError names an unknown spec; CameraError says what to install for a missing backend.
    """
    if spec == "test-pattern":
        return TestPatternCamera(size, fps)
    if spec == "picamera2":
        return Picamera2Camera(size, fps)
    if spec.startswith("opencv:"):
        index = spec.partition(":")[2]
        if not index.isdigit():
            raise ValueError(f"camera {spec!r}: expected opencv:N with a device number, e.g. opencv:0")
        return OpenCVCamera(int(index), size, fps)
    raise ValueError(f"unknown camera {spec!r}; expected test-pattern, opencv:N or picamera2")


# ---- the server (on the car) ----------------------------------------------------------------------


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
            with self._clients_lock:
                self._clients.discard(client)
            client.close()
            if reason != "server stopping":
                self._count("clients_dropped", 1)
            log.info("stream: client %s:%d left: %s", peer[0], peer[1], reason)


# ---- the client (on the laptop) -------------------------------------------------------------------


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

