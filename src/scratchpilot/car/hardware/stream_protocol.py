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

import logging
import struct
import time
import zlib
from dataclasses import dataclass, field

import numpy as np

from ...util.images import ImageDecodeError, decode_image

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
            return decode_image(self.jpeg, formats=("JPEG",), where=f"payload of {len(self.jpeg)} bytes")
        except ImageDecodeError as exc:
            raise StreamProtocolError(f"frame {self.sequence}: {exc}") from exc


