"""The real car's loops end to end: stream on 127.0.0.1 -> keyboard or pilot -> safety -> fake Arduino.

Everything runs on real sockets: a stream server (the project's, or a scripted one that injects faults
into the byte stream), the :class:`StreamClient`, and the fake Arduino behind pyserial's ``socket://``
URL, whose output history is timestamped on its own thread. "Stopped within 250 ms" is measured from
the moment the fault was put on the wire to the moment the board released its outputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("serial", reason="pyserial is part of the car extra")

from fake_arduino import FakeArduino  # noqa: E402
from support import SCRATCHPILOT_CLI, LoopbackServer, wait_until

from scratchpilot import nn  # noqa: E402
from scratchpilot.car.commands.common import parse_size, parse_source  # noqa: E402
from scratchpilot.car.commands.stream import run as cmd_stream  # noqa: E402
from scratchpilot.car.hardware.cameras import TestPatternCamera  # noqa: E402
from scratchpilot.car.hardware.real_car import RealCar  # noqa: E402
from scratchpilot.car.hardware.serial_link import LinkState, SerialCarLink  # noqa: E402
from scratchpilot.car.hardware.serial_protocol import LABEL_OUTPUTS, split_line  # noqa: E402
from scratchpilot.car.hardware.stream_client import StreamClient  # noqa: E402
from scratchpilot.car.hardware.stream_protocol import HEADER_SIZE, pack_frame, pack_header  # noqa: E402
from scratchpilot.car.hardware.stream_server import StreamServer  # noqa: E402
from scratchpilot.car.hardware.window import CarWindow, Controls  # noqa: E402
from scratchpilot.car.links import LABELS, DryRunLink, NoCarLink  # noqa: E402
from scratchpilot.car.parts import keys_to_label  # noqa: E402
from scratchpilot.car.pilot import Pilot  # noqa: E402
from scratchpilot.car.preprocess import FramePreprocessor  # noqa: E402
from scratchpilot.car.safety import Safety, Stop, StopReason  # noqa: E402
from scratchpilot.car.sessions import Session, SessionWriter  # noqa: E402
from scratchpilot.errors import CommandError  # noqa: E402
from scratchpilot.util.images import decode_image, encode_jpeg  # noqa: E402

SIZE = (160, 120)  # width, height
BRIGHT, DIM, AMBIGUOUS = 230, 40, 128  # the tiny pilot: bright -> forward, dim -> left, 128 -> unsure
STOP_LIMIT_S = 0.25
REPO = Path(__file__).resolve().parents[1]




# ---- a tiny pilot, trained in well under a second -----------------------------------------------


@pytest.fixture(scope="module")
def pilot_model() -> nn.Sequential:
    """One dense layer on 6x8 grayscale block means: bright frames -> forward, dim frames -> left."""
    preprocess = FramePreprocessor({"input_shape": [SIZE[1], SIZE[0], 3], "downsample": 20})
    rng = np.random.default_rng(0)
    levels = np.concatenate([rng.uniform(180, 250, 100), rng.uniform(10, 80, 100)])
    frames = np.repeat(levels.astype(np.uint8)[:, None, None, None], 3, axis=3)
    frames = np.broadcast_to(frames, (200, SIZE[1], SIZE[0], 3))
    features = preprocess(frames) + rng.normal(0, 0.02, (200, preprocess.feature_count())).astype(np.float32)
    targets = np.array([LABELS.index("forward")] * 100 + [LABELS.index("left")] * 100)
    model = nn.Sequential([nn.Dense(features.shape[1], len(LABELS))], loss=nn.SoftmaxCrossEntropy(),
                          optimizer=nn.Adam(0.05), seed=0)
    model.fit(features, targets, epochs=30, batch_size=32, progress=False)
    model.metadata = {"labels": list(LABELS), "preprocessing": preprocess.spec}
    return model


@pytest.fixture(scope="module")
def pilot(pilot_model) -> Pilot:
    return Pilot(pilot_model)


def uniform_jpeg(brightness: int) -> bytes:
    return encode_jpeg(np.full((SIZE[1], SIZE[0], 3), brightness, dtype=np.uint8))


def test_the_tiny_pilot_is_sure_of_bright_and_dim_frames_only(pilot):
    decide = {b: pilot.decide(decode_image(uniform_jpeg(b)))[:2] for b in (BRIGHT, DIM, AMBIGUOUS)}
    assert decide[BRIGHT][0] == "forward" and decide[BRIGHT][1] > 0.95
    assert decide[DIM][0] == "left" and decide[DIM][1] > 0.95
    assert decide[AMBIGUOUS][1] < 0.8


# ---- stream servers -------------------------------------------------------------------------------


class UniformCamera:
    """A camera that sees one grey level (changeable while streaming), paced to ``fps``."""

    def __init__(self, brightness: int = BRIGHT, fps: float = 24.0):
        self.brightness, self.period = brightness, 1.0 / fps
        self._next = time.monotonic()

    def read(self):
        delay = self._next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self._next = max(self._next + self.period, time.monotonic() - self.period)
        return np.full((SIZE[1], SIZE[0], 3), self.brightness, dtype=np.uint8), time.time()

    def close(self):
        pass


FAULTS = ["dropped mid-frame", "corrupted header", "truncated payload", "oversized length"]
# Each fault is detected by the client (tests/test_stream.py) and turned into a stop deterministically
# (tests/test_car_safety.py); end to end here, one fault per kind of stop it causes.
DRIVE_FAULTS = ["dropped mid-frame", "truncated payload"]  # stream lost, stale frame


class FaultyStream(LoopbackServer):
    """Streams uniform frames at 24 fps on 127.0.0.1; :meth:`inject` breaks the live connection once.

    After a fault the server needs ``recovery_s`` before it sends frames again (a Pi restarting its
    stream), so the client's reconnection cannot hide the fault from the safety layer.
    """

    def __init__(self, brightness: int = BRIGHT, fps: float = 24.0, recovery_s: float = 0.4):
        self.jpeg = uniform_jpeg(brightness)
        self.period, self.recovery_s = 1.0 / fps, recovery_s
        self.fault_time: float | None = None
        self._fault: str | None = None
        super().__init__()

    def set_brightness(self, brightness: int) -> None:
        self.jpeg = uniform_jpeg(brightness)

    def inject(self, fault: str) -> float:
        """Damage the stream now; returns the monotonic time the damage went on the wire."""
        self.fault_time = None
        self._fault = fault
        assert wait_until(lambda: self.fault_time is not None, timeout_s=1.0)
        return self.fault_time

    def serve(self, conn: socket.socket, index: int):
        if self.fault_time is not None:  # still recovering from the last fault
            self._stop.wait(max(0.0, self.fault_time + self.recovery_s - time.monotonic()))
        sequence = 0
        while not self._stop.is_set():
            sequence += 1
            packet = pack_frame(sequence, time.time_ns(), self.jpeg)
            fault, self._fault = self._fault, None
            if fault is None:
                conn.sendall(packet)
                self._stop.wait(self.period)
                continue
            damaged = {
                "dropped mid-frame": packet[:HEADER_SIZE + 100],
                "corrupted header": packet[:12] + bytes([packet[12] ^ 0xFF]) + packet[13:],
                "truncated payload": packet[:-50],
                "oversized length": pack_header(sequence, time.time_ns(), 0xFFFF_FFF0) + b"\0" * 1000,
            }[fault]
            self.fault_time = time.monotonic()
            conn.sendall(damaged)
            # a dropped server closes at once; the others leave the client to notice
            self._stop.wait({"dropped mid-frame": 0.0, "truncated payload": 1.0}.get(fault, 0.2))
            return


@pytest.fixture
def board():
    with FakeArduino("tcp") as fake:
        yield fake


def client_for(port: int) -> StreamClient:
    return StreamClient("127.0.0.1", port, connect_timeout_s=0.5, stall_timeout_s=0.5, backoff_initial_s=0.02,
                        backoff_max_s=0.1, seed=0).start()


class ScriptedControls:
    """Stands in for the pygame window: keys held and the e-stop are set by the test."""

    def __init__(self, held=()):
        self.held = frozenset(held)
        self.estop = False
        self.shown = 0

    def poll(self) -> Controls:
        return Controls(self.held, self.estop, False)

    def show(self, image, lines) -> None:
        self.shown += 1


class CarRun:
    """A :class:`RealCar` running in a thread: the keys drive without a pilot, and ``writer`` records."""

    def __init__(self, client, link, *, pilot=None, writer=None, controls=None, max_frame_age=0.2,
                 min_confidence=None):
        self.client, self.link = client, link
        self.controls = controls or ScriptedControls()
        self.safety = Safety(link, max_frame_age=max_frame_age, min_confidence=min_confidence)
        self.stop_event = threading.Event()
        self.car = RealCar(client, self.safety, self.controls, pilot=pilot, writer=writer, stop_event=self.stop_event)
        self.error: BaseException | None = None
        self.ended: str | None = None

        def run():
            try:
                self.ended = self.car.run()
            except BaseException as exc:  # noqa: BLE001 -- handed to the test thread in finish()
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    @property
    def stop(self) -> str:
        return str(self.safety.stop or "")

    def finish(self) -> str:
        self.stop_event.set()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive(), "the loop did not end"
        if self.error is not None:
            raise self.error
        return self.ended


@contextmanager
def driving(port: int, pilot, link, controls=None, **limits):
    client = client_for(port)
    run = CarRun(client, link, pilot=pilot, controls=controls, **limits)
    try:
        yield run
        assert run.finish() == "stopped"
    finally:
        run.stop_event.set()
        link.close()
        client.close()


def released_within(board: FakeArduino, since: float, limit_s: float = STOP_LIMIT_S) -> float:
    """Seconds from ``since`` until the board released everything; asserts it is within ``limit_s``."""
    assert wait_until(lambda: board.released_at(since) is not None, timeout_s=1.5), board.history[-5:]
    delay = board.released_at(since) - since
    assert delay <= limit_s, f"the car was released {delay * 1000:.0f} ms after the fault"
    return delay


def drives_again(board: FakeArduino, since: float, outputs: str = "F") -> bool:
    return wait_until(lambda: any(t > since and o == outputs for t, o in board.history), timeout_s=3.0)


def stop_kinds(safety: Safety) -> list[str]:
    return [stop["kind"] for stop in safety.stops]


# ---- small parts ----------------------------------------------------------------------------------


def test_source_and_size_arguments():
    assert parse_source("tcp://192.168.1.20:8000") == ("192.168.1.20", 8000)
    assert parse_source("tcp://raspberrypi.local") == ("raspberrypi.local", 8000)
    assert parse_source("tcp://[::1]:9000") == ("::1", 9000)
    for bad in ("192.168.1.20:8000", "http://pi:8000", "tcp://pi:80x", "tcp://:8000", "tcp://pi:70000"):
        with pytest.raises(ValueError, match="stream source"):
            parse_source(bad)
    assert parse_size("320x240") == (320, 240)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_size("320")


def test_dry_run_prints_valid_protocol_lines_on_changes_only():
    printed = []
    link = DryRunLink(printed.append)
    for label in ["forward"] * 5 + ["left", "left", "brake"]:
        assert link.drive(label)
    link.hold_stop(Stop(StopReason.STALE_FRAME, "250 ms > 200 ms"))
    link.hold_stop(Stop(StopReason.STALE_FRAME, "270 ms > 200 ms"))  # the same stop: not printed again
    link.emergency_stop()
    assert not link.drive("forward") and not link.ready
    assert link.lines == 11 and len(printed) == 5  # changes only: of outputs, or of the reason
    wire = [line.split("would send ")[1].split()[:3] for line in printed]
    assert [fields[1] for fields in wire] == ["F", "FL", "-", "-", "-"]
    for fields in wire:  # each printed line is a real protocol line with a valid CRC
        assert split_line((" ".join(fields)).encode() + b"\n")[0] == "D"
    assert [line.split("(", 1)[1] for line in printed] == [
        "forward)", "left)", "brake)", "stop: stale frame (250 ms > 200 ms))", "e-stop)"]
    with pytest.raises(ValueError, match="unknown driving label 'fly'"):
        link.drive("fly")


def test_car_window_tracks_held_keys_from_events():
    pygame = pytest.importorskip("pygame")
    window = CarWindow("test", width=320)
    try:
        def post(kind, key):
            pygame.event.post(pygame.event.Event(kind, key=key))

        assert window.poll() == Controls()
        post(pygame.KEYDOWN, pygame.K_UP)
        post(pygame.KEYDOWN, pygame.K_LEFT)
        assert window.poll().held == {"up", "left"}
        assert window.poll().held == {"up", "left"}  # held until released, not one label per press
        post(pygame.KEYUP, pygame.K_LEFT)
        assert window.poll().held == {"up"}
        pygame.event.post(pygame.event.Event(pygame.WINDOWFOCUSLOST))
        assert window.poll().held == frozenset()  # a key-up in another window must not leave it stuck
        post(pygame.KEYDOWN, pygame.K_SPACE)
        post(pygame.KEYUP, pygame.K_SPACE)
        assert window.poll().estop and window.poll().estop  # latched
        window.show(np.zeros((SIZE[1], SIZE[0], 3), np.uint8), [("label: forward", (255, 255, 255))])
        post(pygame.KEYDOWN, pygame.K_ESCAPE)
        assert window.poll().quit
    finally:
        window.close()


# ---- keyboard recording ---------------------------------------------------------------------------


def test_keys_label_every_frame_while_held_and_drive_the_car(tmp_path, board):
    """Real test-pattern stream, real recorder, real serial: a scripted key timeline at stream rate."""
    timeline = [({"up"}, 0.5), ({"up", "left"}, 0.4), (set(), 0.3), ({"right"}, 0.4)]
    camera = TestPatternCamera(SIZE, fps=24)
    with StreamServer(camera, "127.0.0.1", 0) as server:
        client = client_for(server.address[1])
        link = SerialCarLink(board.url)
        writer = SessionWriter(tmp_path, source="tcp://test", driver="keyboard", chunk_frames=8)
        run = CarRun(client, link, writer=writer)
        recorder = run.car.recorder
        try:
            assert wait_until(lambda: recorder.stats["recorded"] > 0)
            for keys, seconds in timeline:
                run.controls.held = frozenset(keys)
                time.sleep(0.05)  # let the frame in flight pass before watching the board
                wanted = LABEL_OUTPUTS[keys_to_label(keys)]
                assert wait_until(lambda wanted=wanted: board.outputs == wanted, timeout_s=0.5), (
                    keys, board.outputs, run.stop)
                time.sleep(seconds)
            assert run.finish() == "stopped"
        finally:
            link.close()
            client.close()
            writer.close()
    session = Session.open(writer.path)
    labels = [session.label_names[i] for i in session.labels]
    assert len(session) == recorder.stats["recorded"] and session.closed
    assert session.meta["source"] == "tcp://test" and session.meta["driver"] == "keyboard"
    # recorded at stream rate while held: ~0.45 s of "up" at 24 fps is about 11 frames, not 1
    runs = [(label, sum(1 for _ in group)) for label, group in __import__("itertools").groupby(labels)]
    counts = dict((label, n) for label, n in runs if n > 3)
    assert counts.get("forward", 0) >= 8 and counts.get("left", 0) >= 6 and counts.get("right", 0) >= 6
    assert counts.get("none", 0) >= 4
    assert [label for label, n in runs if n > 3] == ["forward", "left", "none", "right"]
    # the frames are the camera's own, newest first: frame numbers only ever go up
    numbers = [camera.frame_number(frame) for chunk in session.iter_chunks() for frame in chunk.frames]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert np.all(np.diff(session.timestamps) > 0)


@pytest.mark.parametrize("fault", ["corrupted header"])
def test_recording_under_stream_faults_stops_the_car_and_stays_intact(tmp_path, board, fault):
    server = FaultyStream()
    client = client_for(server.port)
    link = SerialCarLink(board.url)
    writer = SessionWriter(tmp_path, source="tcp://faulty", driver="keyboard", chunk_frames=10)
    run = CarRun(client, link, writer=writer, controls=ScriptedControls({"up"}))
    try:
        assert wait_until(lambda: board.outputs == "F"), run.stop
        time.sleep(0.2)
        fault_time = server.inject(fault)
        released_within(board, fault_time)
        assert drives_again(board, fault_time), run.stop
        time.sleep(0.2)
        assert run.finish() == "stopped"
    finally:
        run.stop_event.set()
        link.close()
        client.close()
        writer.close()
        server.close()
    assert {"stream_lost", "stale_frame"} & set(stop_kinds(run.safety))
    recorder = run.car.recorder
    session = Session.open(writer.path)  # checks every chunk's sha256
    assert session.closed and len(session) == recorder.stats["recorded"] >= 5
    assert {session.label_names[i] for i in session.labels} == {"forward"}
    assert np.diff(session.timestamps).max() > 0.2  # frames from before and after the outage
    frames = session.frames()
    assert frames.shape[1:] == (SIZE[1], SIZE[0], 3) and abs(float(frames.mean()) - BRIGHT) < 3
    assert "skipped_bad_frame" not in recorder.stats


# ---- driving by prediction ------------------------------------------------------------------------


@pytest.mark.parametrize("fault", DRIVE_FAULTS)
def test_drive_under_stream_faults_stops_within_250_ms_and_resumes(pilot, board, fault):
    server = FaultyStream()
    try:
        with driving(server.port, pilot, SerialCarLink(board.url)) as run:
            assert wait_until(lambda: board.outputs == "F"), run.stop
            time.sleep(0.2)
            fault_time = server.inject(fault)
            released_within(board, fault_time)
            assert drives_again(board, fault_time), run.stop
        kinds = stop_kinds(run.safety)
        expected = "stale_frame" if fault == "truncated payload" else "stream_lost"
        assert expected in kinds, kinds
        assert run.safety.stops[-1]["duration_s"] is not None  # the stop ended: it drove again
        assert run.car.log.labels.keys() == {"forward"}
    finally:
        server.close()


def test_server_restart_stops_the_car_and_driving_resumes(pilot, board):
    camera = UniformCamera()
    server = StreamServer(camera, "127.0.0.1", 0).start()
    port = server.address[1]
    with driving(port, pilot, SerialCarLink(board.url)) as run:
        assert wait_until(lambda: board.outputs == "F")
        down = time.monotonic()
        server.stop()
        released_within(board, down)
        time.sleep(0.3)
        assert board.outputs == "-" and run.safety.stop.reason is StopReason.STREAM_LOST
        with StreamServer(camera, "127.0.0.1", port):
            assert drives_again(board, down), run.stop
        assert run.client.stats["connects"] >= 2


def test_serial_unplugged_mid_drive_the_board_stops_and_the_link_comes_back(pilot, board):
    server = FaultyStream()
    try:
        link = SerialCarLink(board.url, reconnect_s=0.1)
        with driving(server.port, pilot, link) as run:
            assert wait_until(lambda: board.outputs == "F")
            unplugged = time.monotonic()
            board.unplug()
            # The laptop cannot reach the board any more: the board's own failsafe releases the car
            # 250 ms after the last command it got, which came before the cable was pulled. (30 ms of
            # tolerance for the scheduling of the fake board's thread on a busy test machine.)
            released_within(board, unplugged, STOP_LIMIT_S + 0.03)
            assert wait_until(lambda: board.connections == 2, timeout_s=3), link.problem
            assert drives_again(board, unplugged), run.stop
        assert "link_lost" in stop_kinds(run.safety)
        assert link.stats["losses"] == 1 and link.stats["reconnects"] == 1
    finally:
        server.close()


def test_estop_latches_while_the_loop_keeps_running(pilot, board):
    server = FaultyStream()
    controls = ScriptedControls()
    try:
        link = SerialCarLink(board.url, reconnect_s=0.1)
        with driving(server.port, pilot, link, controls=controls) as run:
            assert wait_until(lambda: board.outputs == "F")
            pressed = time.monotonic()
            controls.estop = True
            released_within(board, pressed)
            commands = len(board.commands)
            steps = run.car.pilot.decisions
            time.sleep(0.4)
            assert board.outputs == "-" and len(board.commands) == commands  # nothing more was sent
            assert link.actuator.state is LinkState.STOPPED
            assert run.safety.estopped and run.safety.stop == Stop(StopReason.ESTOP)
            assert steps == run.car.pilot.decisions  # no deciding after the e-stop either
            assert controls.shown > 0
            assert run.thread.is_alive()  # the loop keeps running (and showing why the car stands)
    finally:
        server.close()


def test_low_confidence_stops_and_a_clear_view_resumes(pilot, board):
    server = FaultyStream()
    try:
        with driving(server.port, pilot, SerialCarLink(board.url), min_confidence=0.8) as run:
            assert wait_until(lambda: board.outputs == "F")
            changed = time.monotonic()
            server.set_brightness(AMBIGUOUS)
            released_within(board, changed)
            assert run.safety.stop.reason is StopReason.LOW_CONFIDENCE
            server.set_brightness(DIM)
            assert drives_again(board, changed, "FL")
        assert stop_kinds(run.safety)[-1] == "low_confidence"
    finally:
        server.close()


class SlowPilot:
    """Wraps a pilot; ``decide`` takes ``delay_s`` longer (a slow laptop, or a hung one)."""

    def __init__(self, pilot, delay_s: float):
        self.pilot, self.delay_s = pilot, delay_s

    def decide(self, image):
        time.sleep(self.delay_s)
        return self.pilot.decide(image)


def test_slow_pilot_acts_on_the_newest_frame_and_a_hung_one_trips_the_failsafe(pilot, board):
    server = FaultyStream()
    slow = SlowPilot(pilot, 0.08)  # slower than the 24 fps stream
    try:
        with driving(server.port, slow, SerialCarLink(board.url)) as run:
            assert wait_until(lambda: run.car.pilot.decisions >= 15, timeout_s=4)
            assert run.client.stats["frames_skipped"] >= 3, run.client.stats  # old frames dropped, not queued
            # each decision saw a fresh frame (a queue would lag by 15 x (80 - 42) ms = 570 ms by now)
            assert max(run.car.log.frame_age_ms) < 200, list(run.car.log.frame_age_ms)
            unsafe = [k for k in stop_kinds(run.safety) if k not in ("no_frame", "stream_lost")]
            assert not unsafe, unsafe  # no stop but the wait for the first frame
            assert board.outputs == "F", board.history[-5:]
            assert not any(line.startswith(b"E FAILSAFE") for _, line in board.sent)
            slow.delay_s = 0.5  # hung: no command goes out while it thinks
            time.sleep(0.1)
            last_command = board.last_command_time()
            released_within(board, last_command, STOP_LIMIT_S + 0.06)  # the board's own 250 ms failsafe
            assert wait_until(lambda: run.safety.stop is not None
                              and run.safety.stop.reason is StopReason.STALE_FRAME, timeout_s=2)
            slow.delay_s = 0.0
            assert drives_again(board, last_command + 0.3)
    finally:
        server.close()


def test_recording_without_a_car_and_a_bad_frame_is_skipped(tmp_path):
    def damaged_then_good(conn, jpeg):
        conn.sendall(pack_frame(1, time.time_ns(), b"\xff\xd8" + b"\0" * 300))
        time.sleep(0.2)  # so that the damaged frame is taken before a good one replaces it
        for sequence in range(2, 12):
            conn.sendall(pack_frame(sequence, time.time_ns(), jpeg))
            time.sleep(0.04)
        time.sleep(1)

    listener = socket.create_server(("127.0.0.1", 0))
    jpeg = uniform_jpeg(DIM)

    def serve():
        conn, _ = listener.accept()
        with conn, contextlib.suppress(OSError):  # the test may hang up before the last frame
            damaged_then_good(conn, jpeg)

    threading.Thread(target=serve, daemon=True).start()
    client = client_for(listener.getsockname()[1])
    writer = SessionWriter(tmp_path, source="tcp://x", driver="keyboard")
    run = CarRun(client, NoCarLink(), writer=writer, controls=ScriptedControls({"down"}))
    try:
        assert wait_until(lambda: run.car.recorder.stats["recorded"] >= 8, timeout_s=3)
        assert run.finish() == "stopped"
    finally:
        run.stop_event.set()
        client.close()
        writer.close()
        listener.close()
    recorder = run.car.recorder
    assert run.car.source.bad_frames == 1 and "bad_frame" in stop_kinds(run.safety)
    assert "payload of 302 bytes: not an image" in run.safety.stops[stop_kinds(run.safety).index("bad_frame")]["reason"]
    assert recorder.label_counts == {"brake": recorder.stats["recorded"]}
    assert len(Session.open(writer.path)) == recorder.stats["recorded"]


# ---- the commands ---------------------------------------------------------------------------------


def scratchpilot(*args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([*SCRATCHPILOT_CLI, *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def test_cli_stream_serves_until_ctrl_c():
    process = scratchpilot("car", "stream", "--camera", "test-pattern", "--size", "160x120", "--port", "0",
                           "--host", "127.0.0.1")
    try:
        line = process.stdout.readline()
        assert line.startswith("streaming test-pattern 160x120 at 24 fps on 127.0.0.1:"), line + process.stderr.read()
        port = int(line.split("127.0.0.1:")[1].split(";")[0])
        with client_for(port) as client:
            frame = client.wait_frame(timeout_s=5)
            assert frame is not None and frame.image().shape == (SIZE[1], SIZE[0], 3)
            time.sleep(0.3)  # past the first frame, whose encoding paid for importing Pillow
            frame = client.wait_frame(timeout_s=1)
            assert frame.sequence > 3 and frame.age_s() < 0.5
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "stream stopped after" in out


def test_cli_stream_missing_backends_and_bad_arguments_are_clear():
    from argparse import Namespace

    def args(**overrides):
        return Namespace(**{"camera": "test-pattern", "size": "320x240", "fps": 24.0, "host": "127.0.0.1",
                            "port": 0, **overrides})

    with pytest.raises(CommandError, match="picamera2 exists only on Raspberry Pi OS"):
        cmd_stream(args(camera="picamera2"))
    with pytest.raises(CommandError, match="unknown camera 'webcam'"):
        cmd_stream(args(camera="webcam"))
    with pytest.raises(CommandError, match="WIDTHxHEIGHT"):
        cmd_stream(args(size="big"))


def test_sim_camera_streams_simulator_frames():
    pytest.importorskip("gymnasium")
    from scratchpilot.car.hardware.cameras import open_camera

    camera = open_camera("sim", fps=50)
    try:
        first, stamp = camera.read()
        second, _ = camera.read()
        assert first.shape == (96, 96, 3) and first.dtype == np.uint8
        assert abs(stamp - time.time()) < 1 and not np.array_equal(first, second)  # the expert drives
    finally:
        camera.close()


def test_cli_record_writes_a_session(tmp_path, board):
    with StreamServer(TestPatternCamera(SIZE, fps=24), "127.0.0.1", 0) as server:
        process = scratchpilot("car", "record", "--source", f"tcp://127.0.0.1:{server.address[1]}", "--keyboard",
                               "--serial", board.url, "--out", str(tmp_path / "sessions"), "--duration", "1.2",
                               "--json", str(tmp_path / "record.json"))
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    summary = json.loads((tmp_path / "record.json").read_text())
    session = Session.open(summary["session"])
    assert len(session) == summary["frames_recorded"] >= 10 and session.closed
    assert summary["labels"] == {"none": summary["frames_recorded"]}  # nobody pressed a key
    assert session.meta["source"].startswith("tcp://127.0.0.1:") and session.meta["serial"] == board.url
    assert board.outputs == "-" and board.connections == 1 and len(board.commands) >= 10
    assert f"recorded {summary['frames_recorded']} frames" in out


def test_cli_drive_dry_run(tmp_path, pilot_model):
    pilot_model.save(tmp_path / "pilot.npz")
    with StreamServer(UniformCamera(BRIGHT), "127.0.0.1", 0) as server:
        process = scratchpilot("car", "drive", "--model", str(tmp_path / "pilot.npz"), "--source",
                               f"tcp://127.0.0.1:{server.address[1]}", "--dry-run", "--no-window",
                               "--duration", "1.5", "--json", str(tmp_path / "drive.json"))
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    summary = json.loads((tmp_path / "drive.json").read_text())
    assert summary["dry_run"] and summary["labels"] == {"forward": summary["commands"]}
    assert summary["commands"] >= 20 and summary["latency_ms"]["p99"] < 200
    assert "dry run: would send D F " in out and "(forward)" in out
    assert all(stop["kind"] in ("no_frame", "stream_lost") for stop in summary["stops"]), summary


def test_cli_drive_errors_are_clear(tmp_path, pilot_model, capsys):
    from scratchpilot.cli import main

    def run(*args):
        code = main(["car", "drive", *args])
        return code, capsys.readouterr().err

    pilot_model.save(tmp_path / "pilot.npz")
    model = str(tmp_path / "pilot.npz")
    code, err = run("--model", model, "--source", "tcp://127.0.0.1:9")
    assert code == 2 and "needs --serial PORT" in err
    code, err = run("--model", model, "--source", "127.0.0.1:9", "--dry-run")
    assert code == 2 and "expected tcp://HOST:PORT" in err
    code, err = run("--model", str(tmp_path / "missing.npz"), "--source", "tcp://127.0.0.1:9", "--dry-run")
    assert code == 2 and "missing.npz" in err
    with pytest.raises(SystemExit) as exit_:  # refused while parsing, before the model is even read
        run("--model", model, "--source", "tcp://127.0.0.1:9", "--dry-run", "--min-confidence", "2")
    assert exit_.value.code == 2
    assert "argument --min-confidence: must be a number ≥ 0 and ≤ 1, got 2" in capsys.readouterr().err
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: like an unplugged adapter
    code, err = run("--model", model, "--source", "tcp://127.0.0.1:9", "--serial", f"socket://127.0.0.1:{port}")
    assert code == 2 and "cannot open serial port" in err


def test_serial_unplugged_mid_recording_skips_frames_the_keys_did_not_drive(tmp_path, board):
    server = FaultyStream()
    client = client_for(server.port)
    link = SerialCarLink(board.url, reconnect_s=0.3)
    writer = SessionWriter(tmp_path, source="tcp://faulty", driver="keyboard", chunk_frames=10)
    run = CarRun(client, link, writer=writer, controls=ScriptedControls({"up"}))
    try:
        assert wait_until(lambda: board.outputs == "F")
        time.sleep(0.3)
        unplugged = time.monotonic()
        board.unplug()
        released_within(board, unplugged, STOP_LIMIT_S + 0.03)  # the board's own failsafe
        assert drives_again(board, unplugged), run.stop
        time.sleep(0.3)
        assert run.finish() == "stopped"
    finally:
        run.stop_event.set()
        link.close()
        client.close()
        writer.close()
        server.close()
    recorder = run.car.recorder
    assert recorder.stats["skipped_link_lost"] >= 3  # ~0.3 s of frames while the car was out of reach
    session = Session.open(writer.path)
    assert len(session) == recorder.stats["recorded"] >= 10 and session.closed
    # the gap in the recording is where the keys did not drive the car
    assert np.diff(session.timestamps).max() > 0.2


def test_cli_drive_refuses_frames_the_pilot_was_not_trained_on(tmp_path, pilot_model, capsys):
    from scratchpilot.cli import main

    pilot_model.save(tmp_path / "pilot.npz")
    with StreamServer(TestPatternCamera((320, 240), fps=24), "127.0.0.1", 0) as server:
        code = main(["car", "drive", "--model", str(tmp_path / "pilot.npz"), "--source",
                     f"tcp://127.0.0.1:{server.address[1]}", "--dry-run", "--no-window", "--duration", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "frame shape 240x320x3 does not match the preprocessing input shape 120x160x3" in err
