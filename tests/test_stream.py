"""The camera stream on real sockets on 127.0.0.1: the wire format, the server, the client, and faults.

Faults on the client side come from a scripted server that writes exact bytes (a frame cut mid-way,
a corrupted header, an oversized length...); faults on the server side from raw sockets that behave
badly (garbage, an HTTP request, a storm of connections, a reader that never reads). Every test is
bounded by timeouts of a few seconds at most.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import time
import zlib

import numpy as np
import pytest

pytest.importorskip("PIL", reason="Pillow encodes the frames")

from support import LoopbackServer, wait_until  # noqa: E402

from scratchpilot.car.hardware.cameras import TestPatternCamera, open_camera  # noqa: E402
from scratchpilot.car.hardware.stream_client import StreamClient  # noqa: E402
from scratchpilot.car.hardware.stream_protocol import (  # noqa: E402
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    MAGIC,
    CameraError,
    FrameHeader,
    StreamProtocolError,
    pack_frame,
    pack_header,
    unpack_header,
)
from scratchpilot.car.hardware.stream_server import StreamServer  # noqa: E402
from scratchpilot.util.images import ImageDecodeError, decode_image, encode_jpeg  # noqa: E402

SIZE = (160, 120)




@pytest.fixture(scope="module")
def jpeg_frames() -> list[bytes]:
    camera = TestPatternCamera(SIZE, fps=None)
    return [encode_jpeg(camera.render(number)) for number in range(4)]


class ScriptedServer(LoopbackServer):
    """Accept connections on 127.0.0.1 and play ``scripts[i]`` (the last one repeats) on the i-th."""

    def __init__(self, scripts):
        self.scripts = scripts
        super().__init__()

    def serve(self, conn, index):
        self.scripts[min(index, len(self.scripts) - 1)](conn, self._stop)


def good_frames(jpegs, count=10_000, interval_s=0.01, first_sequence=1):
    """A script that streams valid frames until stopped."""

    def script(conn, stop):
        for sequence in range(first_sequence, first_sequence + count):
            if stop.is_set():
                return
            conn.sendall(pack_frame(sequence, time.time_ns(), jpegs[sequence % len(jpegs)]))
            time.sleep(interval_s)
        stop.wait(5)

    return script


def client_for(port, **options) -> StreamClient:
    defaults = dict(connect_timeout_s=0.5, stall_timeout_s=0.5, backoff_initial_s=0.02, backoff_max_s=0.1, seed=0)
    defaults.update(options)
    return StreamClient("127.0.0.1", port, **defaults).start()


def assert_recovers(client: StreamClient, server: ScriptedServer, connections: int = 2) -> None:
    """The client reconnected and decodes good frames after the fault."""
    frame = None
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        frame = client.wait_frame(timeout_s=0.5)
        if frame is not None and server.accepted >= connections:
            break
    assert server.accepted >= connections, (server.accepted, client.last_error)
    assert frame is not None, client.last_error
    assert frame.image().shape == (SIZE[1], SIZE[0], 3)


# ---- wire format ----------------------------------------------------------------------------------


def test_header_round_trip_and_layout():
    header = pack_header(7, 1_700_000_000_123_456_789, 1234)
    assert len(header) == HEADER_SIZE == 32 and header[:4] == MAGIC
    assert unpack_header(header) == FrameHeader(7, 1_700_000_000_123_456_789, 1234)
    assert struct.unpack(">Q", header[8:16])[0] == 7  # big-endian, at the documented offsets
    assert struct.unpack(">I", header[24:28])[0] == 1234
    assert struct.unpack(">I", header[28:32])[0] == zlib.crc32(header[:28])


def resealed(header: bytes, offset: int, value: bytes) -> bytes:
    """The header with ``value`` written at ``offset`` and a *valid* CRC (a well-formed lie)."""
    body = header[:offset] + value + header[offset + len(value):28]
    return body + struct.pack(">I", zlib.crc32(body))


@pytest.mark.parametrize("damage, message", [
    (lambda h: b"GET " + h[4:], "bad magic"),
    (lambda h: resealed(h, 4, b"\x02"), "version 2"),
    (lambda h: h[:9] + bytes([h[9] ^ 0x10]) + h[10:], "CRC mismatch"),
    (lambda h: resealed(h, 5, b"\x03"), "unknown flags"),
    (lambda h: resealed(h, 5, b"\x00"), "unknown flags"),
    (lambda h: resealed(h, 24, struct.pack(">I", 0)), "length 0"),
    (lambda h: resealed(h, 24, struct.pack(">I", DEFAULT_MAX_PAYLOAD + 1)), "outside 1.."),
    (lambda h: h[:31], "31 bytes"),
])
def test_bad_headers_are_refused_with_the_field_named(damage, message):
    with pytest.raises(StreamProtocolError, match=message):
        unpack_header(damage(pack_header(3, time.time_ns(), 100)))


def decode_jpeg(data: bytes) -> np.ndarray:
    return decode_image(data, formats=("JPEG",), where="payload")


def test_jpeg_round_trip_and_clear_errors():
    camera = TestPatternCamera(SIZE, fps=None)
    image = camera.render(41)
    decoded = decode_jpeg(encode_jpeg(image, quality=90))
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - image).mean() < 12
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        encode_jpeg(image.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        encode_jpeg(image[..., 0])
    with pytest.raises(ImageDecodeError, match="payload: not an image"):
        decode_jpeg(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(ImageDecodeError, match="payload: corrupt or truncated"):
        decode_jpeg(encode_jpeg(image)[:200])
    with pytest.raises(ImageDecodeError, match="not an image in a supported format"):  # a PNG is not a frame
        decode_jpeg(bytes.fromhex("89504e470d0a1a0a") + b"\0" * 40)


def test_test_pattern_numbers_survive_jpeg_and_the_pattern_moves():
    for size in [(64, 48), (160, 120), (320, 240)]:
        camera = TestPatternCamera(size, fps=None)
        for number in (0, 1, 2, 255, 1000, 40_000, 65_535):
            assert camera.frame_number(decode_jpeg(encode_jpeg(camera.render(number), quality=50))) == number
    camera = TestPatternCamera(SIZE, fps=None)
    assert not np.array_equal(camera.render(1)[20:], camera.render(2)[20:])
    with pytest.raises(ValueError, match="minimum"):
        TestPatternCamera((32, 32))
    with pytest.raises(ValueError, match="fps"):
        TestPatternCamera(SIZE, fps=0)


def test_test_pattern_paces_to_its_frame_rate():
    camera = TestPatternCamera(SIZE, fps=100)
    started = time.monotonic()
    stamps = [camera.read()[1] for _ in range(11)]
    elapsed = time.monotonic() - started
    assert 0.09 <= elapsed < 0.3
    assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False))
    assert abs(stamps[-1] - time.time()) < 0.1  # wall-clock seconds


def test_camera_specs_and_missing_backends():
    assert isinstance(open_camera("test-pattern", SIZE, 10), TestPatternCamera)
    with pytest.raises(ValueError, match="unknown camera 'webcam'"):
        open_camera("webcam")
    with pytest.raises(ValueError, match="opencv:N"):
        open_camera("opencv:front")
    try:
        import picamera2  # noqa: F401
    except ImportError:
        with pytest.raises(CameraError, match="Raspberry Pi OS"):
            open_camera("picamera2")
    with pytest.raises(CameraError, match="opencv|OpenCV"):  # not installed, or no camera 99
        open_camera("opencv:99")


# ---- server and client together -------------------------------------------------------------------


def test_frames_arrive_in_order_with_matching_images_and_small_age():
    camera = TestPatternCamera(SIZE, fps=60)
    with StreamServer(camera, "127.0.0.1", 0) as server, client_for(server.address[1]) as client:
        frames = [client.wait_frame(timeout_s=2) for _ in range(15)]
    assert all(frame is not None for frame in frames)
    sequences = [frame.sequence for frame in frames]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    for frame in frames:
        assert camera.frame_number(frame.image()) == frame.sequence - 1  # the image is the header's frame
        assert 0 <= frame.transit_s < 0.5
    assert [frame.index for frame in frames] == sorted(frame.index for frame in frames)
    assert client.stats["protocol_errors"] == 0 and client.stats["drops"] == 0


def test_several_clients_at_once():
    with StreamServer(TestPatternCamera(SIZE, fps=50), "127.0.0.1", 0) as server:
        clients = [client_for(server.address[1], seed=i) for i in range(3)]
        try:
            firsts = [client.wait_frame(timeout_s=2) for client in clients]
            assert all(frame is not None for frame in firsts)
            assert wait_until(lambda: server.clients_active == 3)
            assert all(client.wait_frame(timeout_s=2) is not None for client in clients)
        finally:
            for client in clients:
                client.close()
        assert wait_until(lambda: server.clients_active == 0)


def test_slow_consumer_always_gets_the_newest_frame():
    camera = TestPatternCamera(SIZE, fps=100)
    with StreamServer(camera, "127.0.0.1", 0) as server, client_for(server.address[1]) as client:
        taken = []
        for _ in range(4):
            frame = client.wait_frame(timeout_s=2)
            assert frame is not None
            taken.append(frame)
            assert frame.sequence >= server.stats["frames_captured"] - 5  # nothing older waits in a queue
            assert frame.age_s() < 0.1
            time.sleep(0.15)  # a slow pilot
        gaps = [b.sequence - a.sequence for a, b in zip(taken, taken[1:], strict=False)]
        assert min(gaps) >= 5, gaps  # ~15 frames are produced per nap and skipped
        assert client.stats["frames_skipped"] >= 20


@pytest.mark.parametrize("max_queued_bytes", [16 * 1024, pytest.param(1 << 30, marks=pytest.mark.xfail(
    strict=True, reason="control: without the send-queue limit, kernel buffers hold a backlog"))])
def test_slow_link_gets_fresh_frames_not_a_backlog(max_queued_bytes):
    """A reader that drains only one frame every 0.2 s (a congested link) still sees recent frames."""
    camera = TestPatternCamera((320, 240), fps=100)
    with StreamServer(camera, "127.0.0.1", 0, max_queued_bytes=max_queued_bytes) as server:
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        reader.connect(server.address)
        reader.settimeout(2)
        ages, sequences = [], []
        try:
            for _ in range(6):
                header = unpack_header(receive_exactly(reader, HEADER_SIZE))
                receive_exactly(reader, header.length)
                ages.append((time.time_ns() - header.capture_ns) / 1e9)
                sequences.append(header.sequence)
                time.sleep(0.2)
        finally:
            reader.close()
        # A backlog of kernel-queued frames would make these ages grow to a second or more.
        assert max(ages[2:]) < 0.45, ages
        assert min(b - a for a, b in zip(sequences[2:], sequences[3:], strict=False)) > 5, sequences
        assert server.stats["frames_skipped"] > 20


def receive_exactly(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return bytes(data)


def test_server_restart_client_reconnects():
    with StreamServer(TestPatternCamera(SIZE, fps=50), "127.0.0.1", 0) as server:
        port = server.address[1]
        client = client_for(port)
        before = client.wait_frame(timeout_s=2)
        assert before is not None
        assert wait_until(lambda: client.latest().sequence > 20)
    try:
        assert wait_until(lambda: not client.connected, timeout_s=2)
        assert client.wait_frame(timeout_s=0.3) is None  # no server, no frames, no crash
        with StreamServer(TestPatternCamera(SIZE, fps=50), "127.0.0.1", port):
            after = client.wait_frame(timeout_s=3)
            assert after is not None, client.last_error
            assert after.sequence < 20 and after.index > before.index  # the new server counts afresh
            assert client.stats["connects"] == 2 and client.stats["drops"] >= 1
    finally:
        client.close()


def test_client_started_before_the_server_keeps_trying():
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with client_for(port) as client:
        assert wait_until(lambda: client.stats["connect_failures"] >= 3, timeout_s=2)
        assert "cannot connect" in client.last_error
        with StreamServer(TestPatternCamera(SIZE, fps=50), "127.0.0.1", port):
            assert client.wait_frame(timeout_s=3) is not None


# ---- faults from the server side ------------------------------------------------------------------


def test_connection_dropped_mid_frame(jpeg_frames):
    def half_a_frame(conn, stop):
        conn.sendall(pack_frame(1, time.time_ns(), jpeg_frames[0]))
        packet = pack_frame(2, time.time_ns(), jpeg_frames[1])
        conn.sendall(packet[:HEADER_SIZE + 100])  # then the server dies

    with ScriptedServer([half_a_frame, good_frames(jpeg_frames)]) as server:
        with client_for(server.port) as client:
            assert_recovers(client, server)
            assert "closed by the server after 100 of" in client.last_error
            assert client.stats["drops"] >= 1 and client.stats["protocol_errors"] == 0


def test_connection_dropped_inside_the_header(jpeg_frames):
    def half_a_header(conn, stop):
        conn.sendall(pack_frame(1, time.time_ns(), jpeg_frames[0])[:HEADER_SIZE // 2])

    with ScriptedServer([half_a_header, good_frames(jpeg_frames)]) as server:
        with client_for(server.port) as client:
            assert_recovers(client, server)
            assert client.stats["drops"] >= 1


def test_corrupted_header(jpeg_frames):
    def corrupted(conn, stop):
        conn.sendall(pack_frame(1, time.time_ns(), jpeg_frames[0]))
        packet = bytearray(pack_frame(2, time.time_ns(), jpeg_frames[1]))
        packet[12] ^= 0xFF  # a flipped byte in the sequence number
        conn.sendall(bytes(packet) + pack_frame(3, time.time_ns(), jpeg_frames[2]))
        stop.wait(2)

    with ScriptedServer([corrupted, good_frames(jpeg_frames)]) as server:
        with client_for(server.port) as client:
            assert_recovers(client, server)
            assert client.stats["protocol_errors"] >= 1
            assert "header CRC mismatch" in client.last_error


def test_not_a_stream_at_all(jpeg_frames):
    def http_server(conn, stop):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>hello</html>" * 3)
        stop.wait(2)

    with ScriptedServer([http_server, good_frames(jpeg_frames)]) as server:
        with client_for(server.port) as client:
            assert_recovers(client, server)
            assert client.stats["protocol_errors"] >= 1


def test_oversized_length_field_is_not_allocated(jpeg_frames):
    def oversized(conn, stop):
        header = pack_header(1, time.time_ns(), 0xFFFF_FFF0)  # 4 GiB, with a valid CRC
        conn.sendall(header + b"\0" * 1000)
        stop.wait(2)

    with ScriptedServer([oversized, good_frames(jpeg_frames)]) as server:
        with client_for(server.port, max_payload=256 * 1024) as client:
            assert_recovers(client, server)
            assert client.stats["protocol_errors"] >= 1
            assert "payload length 4294967280 outside 1..262144" in client.last_error


def test_truncated_payload_then_silence_times_out(jpeg_frames):
    def stalls(conn, stop):
        packet = pack_frame(1, time.time_ns(), jpeg_frames[0])
        conn.sendall(packet[:-50])  # the rest never comes, the connection stays open
        stop.wait(5)

    with ScriptedServer([stalls, good_frames(jpeg_frames)]) as server:
        started = time.monotonic()
        with client_for(server.port, stall_timeout_s=0.3) as client:
            assert_recovers(client, server)
            assert time.monotonic() - started < 2.5
            assert client.stats["drops"] >= 1


def test_damaged_jpeg_payload_is_reported_by_the_frame(jpeg_frames):
    def damaged(conn, stop):
        conn.sendall(pack_frame(1, time.time_ns(), b"\xff\xd8" + b"\x00" * 500))
        stop.wait(2)

    with ScriptedServer([damaged]) as server:
        with client_for(server.port) as client:
            frame = client.wait_frame(timeout_s=2)
            with pytest.raises(StreamProtocolError, match="frame 1: payload of 502 bytes: not an image"):
                frame.image()


def test_frame_age_comes_from_the_capture_timestamp(jpeg_frames, caplog):
    def old_then_future(conn, stop):
        conn.sendall(pack_frame(1, time.time_ns() - 3_000_000_000, jpeg_frames[0]))
        time.sleep(0.2)
        conn.sendall(pack_frame(2, time.time_ns() + 2_000_000_000, jpeg_frames[1]))
        stop.wait(2)

    with ScriptedServer([old_then_future]) as server:
        logger = "scratchpilot.car.hardware.stream_client"
        with caplog.at_level(logging.WARNING, logger=logger), client_for(server.port) as client:
            old = client.wait_frame(timeout_s=2)
            assert 2.9 < old.age_s() < 3.5
            assert old.since_received_s() < 0.5  # arrived just now, although captured long ago
            future = client.wait_frame(timeout_s=2)
            assert future.age_s() < -1.5
            assert wait_until(lambda: "not synchronised" in caplog.text, timeout_s=1)


# ---- hostile clients against the server -----------------------------------------------------------


def test_server_survives_hostile_clients():
    rng = np.random.default_rng(5)
    camera = TestPatternCamera(SIZE, fps=50)
    with StreamServer(camera, "127.0.0.1", 0, max_clients=16, send_timeout_s=0.5) as server:
        address = server.address
        # An HTTP request: the server does not answer HTTP; it pushes frames, then drops the chatter.
        http = socket.create_connection(address, timeout=2)
        http.sendall(b"GET / HTTP/1.1\r\nHost: car\r\n\r\n")
        assert receive_exactly(http, 4) == MAGIC
        # Garbage bytes: more than the allowance closes the connection.
        noisy = socket.create_connection(address, timeout=2)
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):  # the server may cut it short
            noisy.sendall(rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes())
        # A reader that never reads: dropped once its buffers are full and the send times out.
        sleeper = socket.create_connection(address, timeout=2)
        # A storm of connections that close at once, half of them with a reset.
        for i in range(150):
            storm = socket.create_connection(address, timeout=2)
            if i % 2:
                storm.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            storm.close()
        # A real client still gets fresh, correct frames.
        with client_for(address[1], backoff_max_s=0.05) as client:
            frame = client.wait_frame(timeout_s=3)
            assert frame is not None, client.last_error
            assert camera.frame_number(frame.image()) == frame.sequence - 1
            assert wait_until(lambda: server.clients_active <= 3, timeout_s=3), server.clients_active
            http.close()
            assert wait_until(lambda: server.clients_active <= 2, timeout_s=3), server.clients_active
            assert client.wait_frame(timeout_s=1) is not None
        noisy.close()
        sleeper.close()
        assert wait_until(lambda: server.clients_active == 0, timeout_s=3)
        stats = server.stats
        assert stats["clients_accepted"] + stats["clients_rejected"] >= 154
        assert stats["clients_dropped"] == stats["clients_accepted"]  # every one of them was let go
