"""The Arduino link: protocol codec, pyserial loop://, and the actuator against a fake Arduino.

The fake board runs on real byte streams (a TCP socket behind pyserial's ``socket://`` URL, and a
pseudo-terminal that pyserial opens like a USB adapter); its failsafe timing is measured on its own
clock, so a slow test machine can delay the test but not fake a pass.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

serial = pytest.importorskip("serial", reason="pyserial is part of the car extra")

from fake_arduino import FakeArduino, RcController  # noqa: E402
from support import wait_until  # noqa: E402

from scratchpilot.car.hardware.serial_link import LinkState, SerialActuator  # noqa: E402
from scratchpilot.car.hardware.serial_protocol import (  # noqa: E402
    FAILSAFE_S,
    LABEL_OUTPUTS,
    ProtocolError,
    Reply,
    SerialLinkError,
    SerialLinkLost,
    crc8,
    decode_reply,
    encode_drive,
    encode_ping,
    frame_line,
    parse_outputs,
    sequence_newer,
)

TRANSPORTS = ["tcp", "pty"]


@pytest.fixture(params=TRANSPORTS)
def board(request):
    with FakeArduino(request.param) as fake:
        yield fake


# ---- the codec --------------------------------------------------------------------------------


def test_crc8_is_crc8_smbus():
    assert crc8(b"123456789") == 0xF4
    assert crc8(b"") == 0
    assert frame_line("D F 1") == b"D F 1*%02X\n" % crc8(b"D F 1")


def test_encode_drive_validates_and_wraps_the_sequence():
    assert encode_drive("FL", 65536 + 7) == frame_line("D FL 7")
    assert encode_ping(3) == frame_line("P 3")
    for bad in ("FB", "LR", "RF", "", "X", "FLR", "f"):
        with pytest.raises(ValueError, match="bad outputs"):
            encode_drive(bad, 1)


def test_decode_reply_kinds_and_errors_name_the_line():
    assert decode_reply(frame_line("A 12 FL")) == Reply("ack", 12, "FL")
    assert decode_reply(frame_line("N 9 SEQ")) == Reply("nack", 9, "SEQ")
    assert decode_reply(frame_line("N - CRC")) == Reply("nack", None, "CRC")
    assert decode_reply(frame_line("E FAILSAFE")) == Reply("event", None, "FAILSAFE")
    assert decode_reply(frame_line("E BOOT 1")) == Reply("event", None, "BOOT 1")
    assert decode_reply(frame_line("A 12 FL")[:-1] + b"\r\n").kind == "ack"
    damaged = bytearray(frame_line("A 12 FL"))
    damaged[2] = ord("3")
    with pytest.raises(ProtocolError, match="does not match") as error:
        decode_reply(bytes(damaged))
    assert "A 32 FL" in str(error.value)
    for bad in (b"A 12 FL\n", b"A 12 FL*Z1\n", frame_line("A x FL"), frame_line("A 1 FB"),
                frame_line("Q 1 F"), frame_line("A 70000 F"), frame_line("E"), b"\xff\xfe*00\n"):
        with pytest.raises(ProtocolError, match="line"):
            decode_reply(bad)


def test_sequence_numbers_compare_modulo_2_16():
    assert sequence_newer(1, 0) and sequence_newer(0, 65535) and sequence_newer(32767, 0)
    assert not sequence_newer(32768, 0) and not sequence_newer(5, 5) and not sequence_newer(4, 5)


def test_label_outputs_cover_the_simulator_labels():
    assert {"none", "forward", "left", "right", "brake"} <= set(LABEL_OUTPUTS)
    for outputs in LABEL_OUTPUTS.values():
        parse_outputs(outputs)


def test_loop_url_round_trip_through_the_board_logic():
    """Commands written to pyserial's loop:// come back byte for byte and the board logic accepts them."""
    port = serial.serial_for_url("loop://", timeout=0.5)
    board = RcController()
    board.begin(0)
    try:
        for sequence, outputs in enumerate(["F", "FL", "BR", "-"], start=100):
            line = encode_drive(outputs, sequence)
            port.write(line)
            echoed = port.readline()
            assert echoed == line
            reply = decode_reply(board.feed(echoed, sequence))
            assert reply == Reply("ack", sequence, outputs)
        port.write(encode_ping(7))
        assert decode_reply(board.feed(port.readline(), 200)) == Reply("ack", 7, "-")
    finally:
        port.close()


def test_python_board_failsafe_and_wraparound():
    board = RcController()
    near_wrap = (1 << 32) - 101  # millis() == 0xFFFFFFFF - 100
    board.begin(near_wrap)
    assert decode_reply(board.feed(encode_drive("F", 1), near_wrap)).kind == "ack"
    assert board.poll(148) == b""  # 249 ms after the command, across the millis() wrap
    assert board.poll(149) == frame_line("E FAILSAFE")
    assert board.outputs == 0 and not board.session_active


# ---- the actuator against the fake board -------------------------------------------------------


def test_labels_reach_the_board_with_acks(board):
    with SerialActuator(board.url) as actuator:
        for label, outputs in LABEL_OUTPUTS.items():
            result = actuator.send(label)
            assert result.acked, result
            assert result.reported_outputs == outputs
            assert board.outputs == outputs
            assert 0 < result.round_trip_s < actuator.ack_timeout_s
        assert actuator.stats["acked"] >= len(LABEL_OUTPUTS)
        assert actuator.stats["bad_lines"] == 0


def test_failsafe_releases_250_ms_after_the_last_command(board):
    with SerialActuator(board.url) as actuator:
        # Commands at 10 Hz hold the outputs without a gap.
        start = time.monotonic()
        while time.monotonic() - start < 0.6:
            assert actuator.send("left").acked
            time.sleep(0.1)
        assert [outputs for _, outputs in board.history][-1] == "FL"
        assert board.released_at(start) is None
        # Then the host goes quiet, as a hung pilot loop would.
        last = board.last_command_time()
        assert wait_until(lambda: board.outputs == "-", timeout_s=1.0)
        released = board.released_at(last) - last
        assert FAILSAFE_S - 0.002 <= released <= FAILSAFE_S + 0.06, released
        # The next command starts a new session; the actuator has seen the failsafe event.
        assert actuator.send("forward").acked and board.outputs == "F"
        assert actuator.stats["failsafe_events"] == 1


def test_unplugged_mid_drive_ends_lost_and_the_board_stops(board):
    actuator = SerialActuator(board.url)
    assert actuator.send("forward").acked
    board.unplug()
    with pytest.raises(SerialLinkLost, match="lost"):
        for _ in range(3):  # the first write may still land in a kernel buffer
            actuator.send("forward")
    assert actuator.state is LinkState.LOST
    with pytest.raises(SerialLinkLost):
        actuator.send("forward")
    actuator.stop()  # best effort: never raises
    actuator.close()
    assert actuator.state is LinkState.CLOSED
    last = board.last_command_time()
    assert wait_until(lambda: board.outputs == "-", timeout_s=1.0)
    assert board.released_at(last) - last <= FAILSAFE_S + 0.06


def test_silent_board_is_lost_after_max_failures(board):
    actuator = SerialActuator(board.url, ack_timeout_s=0.03, max_failures=3)
    assert actuator.send("forward").acked
    board.mute()
    first, second = actuator.send("left"), actuator.send("left")
    assert not first.acked and not second.acked and "no ack" in first.problem
    with pytest.raises(SerialLinkLost, match="3 commands in a row"):
        actuator.send("left")
    assert actuator.state is LinkState.LOST
    assert board.outputs == "FL"  # a muted board still obeyed; its failsafe ends it
    last = board.last_command_time()
    assert wait_until(lambda: board.outputs == "-", timeout_s=1.0)
    assert board.released_at(last) - last <= FAILSAFE_S + 0.06
    actuator.close()


def test_stop_releases_and_refuses_further_commands(board):
    actuator = SerialActuator(board.url)
    actuator.send("right")
    actuator.stop()
    assert board.outputs == "-"
    assert actuator.state is LinkState.STOPPED
    actuator.stop()  # idempotent
    with pytest.raises(SerialLinkError, match="accepts no more commands"):
        actuator.send("forward")
    assert actuator.ping().reported_outputs == "-"
    actuator.close()
    actuator.close()
    with pytest.raises(ValueError, match="unknown driving label 'sideways'"):
        actuator.send("sideways")


def test_second_sender_resynchronises_its_sequence():
    """A board that was not reset still holds the first sender's session: the second one catches up."""
    with FakeArduino("pty") as board:
        first = SerialActuator(board.url)
        first._sequence = 1000
        assert first.send("forward").acked
        first._port.close()  # leave without a stop: the session stays live on the board
        second = SerialActuator(board.url)
        second._sequence = 1000 - 5  # older than the board's last sequence
        result = second.send("left")
        assert result.acked, result
        assert board.outputs == "FL"
        second.close()


def test_noise_from_the_board_is_skipped():
    """Garbage lines before the ack are counted and skipped; the ack is still found."""
    board = RcController()
    board.begin(0)
    server = socket.create_server(("127.0.0.1", 0))
    url = f"socket://127.0.0.1:{server.getsockname()[1]}"

    def serve():
        conn, _ = server.accept()
        with conn:
            buffer = b""
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    conn.sendall(b"\x00\xffnoise\n" + frame_line("A 1 X") + b"hello*00\n"
                                 + board.feed(line + b"\n", 0))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with SerialActuator(url) as actuator:
        assert actuator.send("forward").acked
        assert actuator.stats["bad_lines"] >= 3
    server.close()
    thread.join(timeout=2)


def test_unanswering_port_fails_to_open_with_a_clear_message():
    server = socket.create_server(("127.0.0.1", 0))
    url = f"socket://127.0.0.1:{server.getsockname()[1]}"
    started = time.monotonic()
    with pytest.raises(SerialLinkLost, match="no answer from the Arduino .* within 0.3 s"):
        SerialActuator(url, ready_timeout_s=0.3)
    assert time.monotonic() - started < 1.5
    server.close()
    with pytest.raises(SerialLinkLost, match="cannot open serial port '/dev/does-not-exist'"):
        SerialActuator("/dev/does-not-exist")
