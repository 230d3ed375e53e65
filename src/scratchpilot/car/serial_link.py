"""The laptop's side of the Arduino link: the line protocol, a serial actuator and a fake Arduino.

The protocol (specified in ``arduino/README.md``, implemented for the board in
``arduino/scratchpilot_rc/rc_protocol.h``) is ASCII lines ``<body>*<CRC-8 as two hex digits>\\n``:

==========================  ===================================================================
host -> Arduino             meaning
==========================  ===================================================================
``D <outputs> <seq>``        hold these outputs: ``-`` or ``[F|B][L|R]`` (``F``, ``FL``, ``BR``...)
``P <seq>``                  ping: report the state; does not feed the failsafe
==========================  ===================================================================

==========================  ===================================================================
Arduino -> host             meaning
==========================  ===================================================================
``A <seq> <outputs>``        accepted (or pinged); the outputs now held
``N <seq|-> <reason>``       refused: ``CRC``, ``SYNTAX``, ``SEQ`` (not newer), ``LONG`` (line)
``E BOOT 1``                 the sketch started (protocol version 1); everything released
``E FAILSAFE``               no valid drive command for 250 ms: everything released
==========================  ===================================================================

:class:`RcController` is a byte-for-byte Python mirror of the C++ ``rc::Controller`` (a differential
test in ``tests/test_arduino.py`` feeds both the same bytes); :class:`FakeArduino` runs it behind a
real byte stream (a TCP socket for pyserial's ``socket://`` URLs, or a pseudo-terminal) for
end-to-end tests. :class:`SerialActuator` is the :class:`~scratchpilot.car.sim.Actuator` that
drives the real car; pyserial is imported when one is opened, never at import time.
"""

from __future__ import annotations

import enum
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
FAILSAFE_S = 0.250  #: the Arduino releases everything after this long without a valid drive command
MAX_LINE = 32  #: longest command line the Arduino accepts, without the ``\n``
DEFAULT_BAUDRATE = 115200
SEQUENCE_MODULUS = 1 << 16

OUT_FORWARD, OUT_REVERSE, OUT_LEFT, OUT_RIGHT = 1, 2, 4, 8

#: Driving label (:data:`scratchpilot.car.sim.LABELS`, plus ``reverse``) -> outputs field. An RC car
#: only turns while it rolls, so ``left``/``right`` hold forward as well. A toy remote has no brake
#: button: ``brake`` releases everything and lets the car coast.
LABEL_OUTPUTS: dict[str, str] = {
    "none": "-",
    "forward": "F",
    "left": "FL",
    "right": "FR",
    "brake": "-",
    "reverse": "B",
}


class SerialLinkError(Exception):
    """The serial link cannot be used (pyserial missing, actuator already stopped...)."""


class SerialLinkLost(SerialLinkError):
    """The Arduino stopped answering or the port went away; the board's failsafe stops the car."""


class ProtocolError(ValueError):
    """A line that breaks the protocol (bad checksum, bad syntax); the message names the line."""


# ---- the protocol ------------------------------------------------------------------------------


def crc8(data: bytes) -> int:
    """CRC-8/SMBUS (polynomial 0x07, initial 0, no reflection) of ``data``; ``crc8(b"123456789") == 0xF4``."""
    crc = 0
    for value in data:
        crc ^= value
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def frame_line(body: bytes | str) -> bytes:
    """``body`` + ``*`` + its CRC-8 as two upper-case hex digits + ``\\n``."""
    raw = body.encode("ascii") if isinstance(body, str) else bytes(body)
    return raw + b"*%02X\n" % crc8(raw)


def parse_outputs(text: str) -> int:
    """The output bit mask of an outputs field (``-``, ``F``, ``FL``, ``BR``...); ValueError otherwise."""
    mask = _parse_outputs(text.encode("ascii", "replace") if isinstance(text, str) else text)
    if mask is None:
        raise ValueError(f"bad outputs {text!r}: expected '-' or an optional F|B followed by an optional L|R")
    return mask


def format_outputs(mask: int) -> str:
    """The canonical outputs field of a bit mask (``0`` -> ``-``)."""
    text = "".join(letter for bit, letter in ((OUT_FORWARD, "F"), (OUT_REVERSE, "B"),
                                              (OUT_LEFT, "L"), (OUT_RIGHT, "R")) if mask & bit)
    return text or "-"


def encode_drive(outputs: str, sequence: int) -> bytes:
    """The line ``D <outputs> <seq>*HH\\n``; ``outputs`` is validated, ``sequence`` taken modulo 2**16."""
    parse_outputs(outputs)
    return frame_line(f"D {outputs} {sequence % SEQUENCE_MODULUS}")


def encode_ping(sequence: int) -> bytes:
    """The line ``P <seq>*HH\\n``."""
    return frame_line(f"P {sequence % SEQUENCE_MODULUS}")


@dataclass(frozen=True)
class Reply:
    """One line from the Arduino.

    ``kind`` is ``"ack"``, ``"nack"`` or ``"event"``; ``sequence`` is the command's sequence number
    (None for events and for nacks of unreadable lines); ``detail`` is the outputs held (ack), the
    reason (nack) or the event name (``BOOT``, ``FAILSAFE``).
    """

    kind: str
    sequence: int | None
    detail: str


def split_line(line: bytes) -> list[str]:
    """Check a line's ``*HH`` CRC and split its body into fields; ProtocolError naming the line otherwise."""
    text = line.rstrip(b"\n")
    if text.endswith(b"\r"):
        text = text[:-1]
    body, star, check = text.rpartition(b"*")
    if not star or len(check) != 2:
        raise ProtocolError(f"line {line!r}: no '*HH' checksum at the end")
    try:
        expected = int(check, 16)
    except ValueError:
        raise ProtocolError(f"line {line!r}: checksum {check!r} is not two hex digits") from None
    if crc8(body) != expected:
        raise ProtocolError(f"line {line!r}: checksum {check.decode('ascii', 'replace')} does not match "
                            f"the body (CRC-8 {crc8(body):02X})")
    try:
        return body.decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProtocolError(f"line {line!r}: not ASCII") from None


def decode_reply(line: bytes) -> Reply:
    """Parse one Arduino line (``A``, ``N`` or ``E``); ProtocolError naming the line otherwise."""
    fields = split_line(line)
    kind = fields[0]
    if kind == "A" and len(fields) == 3 and _parse_sequence(fields[1].encode()) is not None:
        if _parse_outputs(fields[2].encode()) is None:
            raise ProtocolError(f"line {line!r}: bad outputs field {fields[2]!r} in an ack")
        return Reply("ack", int(fields[1]), fields[2])
    if kind == "N" and len(fields) == 3 and fields[2]:
        if fields[1] == "-":
            return Reply("nack", None, fields[2])
        if _parse_sequence(fields[1].encode()) is not None:
            return Reply("nack", int(fields[1]), fields[2])
    if kind == "E" and len(fields) >= 2 and fields[1]:
        return Reply("event", None, " ".join(fields[1:]))
    raise ProtocolError(f"line {line!r}: not an ack (A), nack (N) or event (E) "
                        f"of protocol {PROTOCOL_VERSION}")


def _parse_outputs(text: bytes) -> int | None:
    if text == b"-":
        return 0
    if not 1 <= len(text) <= 2:
        return None
    mask, i = 0, 0
    if text[:1] == b"F":
        mask, i = OUT_FORWARD, 1
    elif text[:1] == b"B":
        mask, i = OUT_REVERSE, 1
    if i < len(text):
        steering = text[i:i + 1]
        if steering == b"L":
            mask |= OUT_LEFT
        elif steering == b"R":
            mask |= OUT_RIGHT
        else:
            return None
        i += 1
    return mask if i == len(text) else None


def _parse_sequence(text: bytes) -> int | None:
    # Digits only (int() would also take "+1", " 1" or "1_0"), at most five, at most 65535.
    if not 1 <= len(text) <= 5 or not all(0x30 <= c <= 0x39 for c in text):
        return None
    value = int(text)
    return value if value < SEQUENCE_MODULUS else None


def sequence_newer(a: int, b: int) -> bool:
    """True when ``a`` is 1..32767 steps ahead of ``b`` modulo 2**16 (RFC 1982 serial numbers)."""
    ahead = (a - b) % SEQUENCE_MODULUS
    return 0 < ahead < SEQUENCE_MODULUS // 2


class RcController:
    """The Arduino's parser and failsafe, mirroring ``rc::Controller`` in ``rc_protocol.h`` exactly.

    Time is passed in as integer milliseconds that wrap at 2**32, like ``millis()``. Every method
    returns the reply bytes it produced (possibly several lines, possibly empty).
    """

    failsafe_ms = int(FAILSAFE_S * 1000)

    def __init__(self) -> None:
        self._line = bytearray()
        self._overflow = False
        self.outputs = 0  #: the output bit mask now held
        self.session_active = False
        self.accepted_commands = 0  #: drive commands accepted since construction (for tests)
        self._last_sequence = 0
        self._last_command_ms = 0

    def begin(self, now_ms: int) -> bytes:
        """(Re)boot: release everything and return the boot line ``E BOOT 1``."""
        self._line.clear()
        self._overflow = False
        self.outputs = 0
        self.session_active = False
        return frame_line(f"E BOOT {PROTOCOL_VERSION}")

    def feed(self, data: bytes, now_ms: int) -> bytes:
        """Feed received bytes, all at ``now_ms``; return the replies to the lines they completed."""
        replies = bytearray()
        for value in data:
            if value == 0x0A:
                replies += self._expire_if_due(now_ms)
                if self._overflow:
                    replies += self._nack(None, "LONG")
                else:
                    line = bytes(self._line)
                    if line.endswith(b"\r"):
                        line = line[:-1]
                    if line:
                        replies += self._handle_line(line, now_ms)
                self._line.clear()
                self._overflow = False
            elif not self._overflow:
                if len(self._line) == MAX_LINE:
                    self._overflow = True
                else:
                    self._line.append(value)
        return bytes(replies)

    def poll(self, now_ms: int) -> bytes:
        """Run the failsafe; return ``E FAILSAFE`` when it just released the outputs, else ``b""``."""
        return self._expire_if_due(now_ms)

    def ms_until_failsafe(self, now_ms: int) -> int | None:
        """Milliseconds until the failsafe falls due (0 if due now), None when no session is live."""
        if not self.session_active:
            return None
        elapsed = (now_ms - self._last_command_ms) % (1 << 32)
        return max(0, self.failsafe_ms - elapsed)

    def _expire_if_due(self, now_ms: int) -> bytes:
        # Modulo 2**32, like the unsigned subtraction on the board, so millis() may wrap.
        if self.session_active and (now_ms - self._last_command_ms) % (1 << 32) >= self.failsafe_ms:
            self.outputs = 0
            self.session_active = False
            return frame_line("E FAILSAFE")
        return b""

    def _handle_line(self, line: bytes, now_ms: int) -> bytes:
        star = line.rfind(b"*")
        if star < 0 or len(line) - star != 3:
            return self._nack(None, "SYNTAX")
        check = line[star + 1:]
        if not all(c in b"0123456789abcdefABCDEF" for c in check):
            return self._nack(None, "SYNTAX")
        body = line[:star]
        if crc8(body) != int(check, 16):
            return self._nack(None, "CRC")
        fields = body.split(b" ")
        if len(fields) > 3 or len(fields) < 2 or len(fields[0]) != 1:
            return self._nack(None, "SYNTAX")
        sequence = _parse_sequence(fields[-1])
        if sequence is None:
            return self._nack(None, "SYNTAX")
        command = fields[0]
        if command == b"P" and len(fields) == 2:
            return self._ack(sequence)
        mask = _parse_outputs(fields[1]) if command == b"D" and len(fields) == 3 else None
        if mask is None:
            return self._nack(sequence, "SYNTAX")
        if self.session_active and not sequence_newer(sequence, self._last_sequence):
            return self._nack(sequence, "SEQ")
        self.outputs = mask
        self.session_active = True
        self.accepted_commands += 1
        self._last_sequence = sequence
        self._last_command_ms = now_ms
        return self._ack(sequence)

    def _ack(self, sequence: int) -> bytes:
        return frame_line(f"A {sequence} {format_outputs(self.outputs)}")

    @staticmethod
    def _nack(sequence: int | None, reason: str) -> bytes:
        return frame_line(f"N {'-' if sequence is None else sequence} {reason}")


# ---- the fake Arduino ----------------------------------------------------------------------------


class FakeArduino:
    """A simulated Arduino running :class:`RcController` on the far end of a real byte stream.

    ``transport="tcp"`` listens on 127.0.0.1 and :attr:`url` is a pyserial ``socket://`` URL;
    ``transport="pty"`` opens a pseudo-terminal and :attr:`url` is its device path (``/dev/pts/N``),
    which pyserial opens like a USB serial adapter. Like an Uno, the board reboots (``E BOOT 1``) on
    every new connection. A background thread answers commands and runs the failsafe at its exact
    deadline. :attr:`history` records every change of outputs with its :func:`time.monotonic` time.

    Faults for tests: :meth:`mute` (the board stops answering but still obeys), :meth:`unplug`
    (the connection drops; the board, powered on its own, keeps running its failsafe).
    """

    def __init__(self, transport: str = "tcp", *, clock: Callable[[], float] = time.monotonic):
        if transport not in ("tcp", "pty"):
            raise ValueError(f"unknown FakeArduino transport {transport!r}; expected 'tcp' or 'pty'")
        self.transport = transport
        self._clock = clock
        self._epoch = clock()
        self._controller = RcController()
        self._lock = threading.Lock()
        self._muted = False
        self._stop = threading.Event()
        self._unplug_requested = threading.Event()
        self._unplugged = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._master_fd: int | None = None
        self._slave_fd: int | None = None
        #: (monotonic time, outputs text) at every change, starting with the boot state
        self.history: list[tuple[float, str]] = [(self._epoch, "-")]
        #: (monotonic time, sequence, outputs text) of every accepted drive command
        self.commands: list[tuple[float, int, str]] = []
        #: (monotonic time, reply line) of everything the board sent
        self.sent: list[tuple[float, bytes]] = []
        self.connections = 0
        if transport == "tcp":
            self._listener = socket.create_server(("127.0.0.1", 0))
            self.url = f"socket://127.0.0.1:{self._listener.getsockname()[1]}"
        else:
            import tty

            self._master_fd, self._slave_fd = os.openpty()
            tty.setraw(self._slave_fd)  # no echo or line editing before pyserial configures the port
            self.url = os.ttyname(self._slave_fd)
            self._boot()
        self._thread = threading.Thread(target=self._run, name="fake-arduino", daemon=True)
        self._thread.start()

    # -- state, read by tests --
    @property
    def outputs(self) -> str:
        """The outputs the board holds now (``-``, ``F``, ``FL``...)."""
        with self._lock:
            return format_outputs(self._controller.outputs)

    def last_command_time(self) -> float | None:
        with self._lock:
            return self.commands[-1][0] if self.commands else None

    def released_at(self, after: float) -> float | None:
        """The first time at or after ``after`` when the board went to ``-`` (None if it has not)."""
        with self._lock:
            return next((t for t, outputs in self.history if t >= after and outputs == "-"), None)

    # -- faults --
    def mute(self, muted: bool = True) -> None:
        """Stop (or resume) answering; commands are still obeyed."""
        self._muted = muted

    def unplug(self) -> None:
        """Drop the connection abruptly, as a pulled USB cable does; returns once it is down."""
        self._unplugged.clear()
        self._unplug_requested.set()
        os.write(self._wake_w, b"x")
        if not self._unplugged.wait(timeout=2.0):
            raise RuntimeError("fake Arduino: the board thread did not unplug within 2 s")

    def _disconnect(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._master_fd is not None:
                os.close(self._master_fd)
                self._master_fd = None

    def close(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=2.0)
        self._disconnect()
        for fd in (self._slave_fd, self._wake_r, self._wake_w):
            if fd is not None:
                os.close(fd)
        self._slave_fd = None
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> FakeArduino:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- the board's main loop --
    def _now_ms(self) -> int:
        return int((self._clock() - self._epoch) * 1000) % (1 << 32)

    def _boot(self) -> bytes:
        with self._lock:
            reply = self._controller.begin(self._now_ms())
            self._record(self._clock())
        self._send(reply)
        return reply

    def _record(self, now: float) -> None:
        outputs = format_outputs(self._controller.outputs)
        if outputs != self.history[-1][1]:
            self.history.append((now, outputs))

    def _send(self, reply: bytes) -> None:
        if not reply or self._muted:
            return
        now = self._clock()
        for line in reply.splitlines(keepends=True):
            self.sent.append((now, line))
        try:
            if self._conn is not None:
                self._conn.sendall(reply)
            elif self._master_fd is not None:
                os.write(self._master_fd, reply)
        except OSError as exc:
            log.debug("fake Arduino: reply lost, the host went away (%s)", exc)

    def _stream(self):
        return self._conn if self._conn is not None else self._master_fd

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._unplug_requested.is_set():
                self._unplug_requested.clear()
                self._disconnect()
                self._unplugged.set()
            with self._lock:
                wait_ms = self._controller.ms_until_failsafe(self._now_ms())
            timeout = 0.05 if wait_ms is None else min(0.05, wait_ms / 1000)
            readable = [self._wake_r]
            if self._listener is not None and self._conn is None:
                readable.append(self._listener)
            stream = self._stream()
            if stream is not None:
                readable.append(stream)
            ready, _, _ = select.select(readable, [], [], timeout)
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
            if self._listener is not None and self._listener in ready:
                conn, _ = self._listener.accept()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with self._lock:
                    self._conn = conn
                self.connections += 1
                self._boot()  # opening the port resets an Uno
            elif stream is not None and stream in ready:
                self._receive(stream)
            with self._lock:
                reply = self._controller.poll(self._now_ms())
                self._record(self._clock())
            self._send(reply)

    def _receive(self, stream) -> None:
        try:
            data = stream.recv(4096) if isinstance(stream, socket.socket) else os.read(stream, 4096)
        except OSError:
            data = b""
        if not data:
            if self.transport == "tcp":
                with self._lock:  # the host closed its end: wait for the next connection
                    self._conn.close()
                    self._conn = None
            else:
                time.sleep(0.01)  # a pty master without a reader: nothing to do until one returns
            return
        now = self._clock()
        replies = bytearray()
        with self._lock:
            # Line by line, so that each accepted drive command is logged with its sequence number.
            for piece in data.splitlines(keepends=True):
                accepted = self._controller.accepted_commands
                replies += self._controller.feed(piece, self._now_ms())
                if self._controller.accepted_commands != accepted:
                    self.commands.append((now, self._controller._last_sequence,
                                          format_outputs(self._controller.outputs)))
            self._record(now)
        self._send(bytes(replies))


# ---- the actuator --------------------------------------------------------------------------------


def _serial_module():
    try:
        import serial
    except ImportError as exc:
        raise SerialLinkError("pyserial is not installed: pip install 'scratchpilot[car]' "
                              "(or pip install pyserial)") from exc
    if not hasattr(serial, "serial_for_url"):
        raise SerialLinkError(f"the 'serial' module at {getattr(serial, '__file__', '?')} is not pyserial: "
                              "pip uninstall serial && pip install pyserial")
    return serial


class LinkState(enum.Enum):
    OPEN = "open"
    LOST = "lost"
    STOPPED = "stopped"
    CLOSED = "closed"


@dataclass(frozen=True)
class CommandResult:
    """What became of one command: ``acked`` with the outputs the board reports, or why not."""

    sequence: int
    outputs: str
    acked: bool
    reported_outputs: str | None = None
    round_trip_s: float | None = None
    problem: str | None = None


class SerialActuator:
    """Drive the RC car through the Arduino sketch; an :class:`~scratchpilot.car.sim.Actuator`.

    Parameters
    ----------
    url : str
        A serial device (``/dev/ttyUSB0``, ``/dev/ttyACM0``, ``COM3``) or any pyserial URL
        (``socket://host:port``, ``rfc2217://...``), see ``serial.serial_for_url``.
    baudrate : int
        Must match ``BAUD_RATE`` in the sketch.
    ack_timeout_s : float
        How long :meth:`send` waits for the board's ack.
    max_failures : int
        Consecutive commands without an ack (timeout or refusal) after which the link counts as
        lost: :attr:`state` becomes ``LOST`` and :meth:`send` raises :class:`SerialLinkLost`.
    ready_timeout_s : float
        How long the constructor pings the board before giving up. Opening an Uno's port resets
        it and its bootloader takes 1-2 s before the sketch answers.
    label_outputs : mapping, optional
        Driving label -> outputs field; :data:`LABEL_OUTPUTS` by default.

    Notes
    -----
    The actuator never resends a command on its own: the caller sends one per frame (well above the
    4 Hz the failsafe needs), so if the pilot loop hangs, commands stop and the board releases
    everything 250 ms later. A keep-alive thread here would keep a hung car driving.
    """

    def __init__(self, url: str, *, baudrate: int = DEFAULT_BAUDRATE, ack_timeout_s: float = 0.1,
                 max_failures: int = 3, ready_timeout_s: float = 3.0,
                 label_outputs: Mapping[str, str] | None = None):
        serial = _serial_module()
        self.url = url
        self.ack_timeout_s = float(ack_timeout_s)
        self.max_failures = int(max_failures)
        self.label_outputs = dict(LABEL_OUTPUTS if label_outputs is None else label_outputs)
        for label, outputs in self.label_outputs.items():
            try:
                parse_outputs(outputs)
            except ValueError as exc:
                raise ValueError(f"label_outputs[{label!r}]: {exc}") from None
        self._serial_exceptions = (serial.SerialException, OSError)
        self._lock = threading.RLock()
        self._buffer = bytearray()
        self._sequence = int.from_bytes(os.urandom(2), "big")  # a fresh start, never a stale one
        self._failures = 0
        self.state = LinkState.OPEN
        self.lost_reason: str | None = None
        self.last_result: CommandResult | None = None
        self.stats = {"sent": 0, "acked": 0, "refused": 0, "timeouts": 0, "failsafe_events": 0,
                      "reboots": 0, "bad_lines": 0}
        try:
            # A short read timeout: reads return as soon as a byte is there, and waits are ours.
            self._port = serial.serial_for_url(url, baudrate=baudrate, timeout=0.005, write_timeout=0.5)
        except (serial.SerialException, ValueError, OSError) as exc:
            self.state = LinkState.CLOSED
            raise SerialLinkLost(f"cannot open serial port {url!r}: {exc}") from exc
        try:
            self._wait_ready(float(ready_timeout_s))
        except SerialLinkError:
            self._port.close()
            self.state = LinkState.CLOSED
            raise

    # -- the Actuator interface --
    def send(self, label: str) -> CommandResult:
        """Drive with a label (``"forward"``, ``"left"``...): :meth:`send_outputs` of its outputs."""
        try:
            outputs = self.label_outputs[label]
        except (KeyError, TypeError):
            raise ValueError(f"unknown driving label {label!r}; expected one of "
                             f"{', '.join(self.label_outputs)}") from None
        return self.send_outputs(outputs)

    def send_outputs(self, outputs: str) -> CommandResult:
        """Hold ``outputs`` (``-``, ``F``, ``FL``...) and wait for the ack.

        Returns the :class:`CommandResult`; a missed ack is reported there until ``max_failures``
        in a row, then :class:`SerialLinkLost` is raised (and is raised again on every later call).
        """
        parse_outputs(outputs)
        with self._lock:
            if self.state is LinkState.LOST:
                raise SerialLinkLost(f"serial link {self.url} is lost: {self.lost_reason}")
            if self.state is not LinkState.OPEN:
                raise SerialLinkError(f"serial actuator on {self.url} is {self.state.value}; "
                                      "it accepts no more commands")
            result = self._command(encode_drive(outputs, self._next_sequence()), outputs)
            for _ in range(3):
                if result.problem != "refused: SEQ":
                    break
                # The board still holds a session from an earlier sender (it was not reset on open)
                # and our number is not newer than its last: jump a quarter of the sequence space.
                # Of four numbers a quarter apart, one is always newer than any last sequence.
                self._sequence = (self._sequence + SEQUENCE_MODULUS // 4) % SEQUENCE_MODULUS
                result = self._command(encode_drive(outputs, self._sequence), outputs)
            self.last_result = result
            if result.acked:
                self._failures = 0
            else:
                self._failures += 1
                log.warning("serial %s: command %d (%s) not acknowledged: %s", self.url, result.sequence,
                            outputs, result.problem)
                if self._failures >= self.max_failures:
                    self._lose(f"{self._failures} commands in a row without an ack (last: {result.problem})")
                    raise SerialLinkLost(f"serial link {self.url} is lost: {self.lost_reason}")
            return result

    def stop(self) -> None:
        """Release everything (best effort, never raises) and accept no further commands; idempotent."""
        with self._lock:
            if self.state is LinkState.OPEN:
                try:
                    result = self._command(encode_drive("-", self._next_sequence()), "-")
                    if not result.acked:
                        log.warning("serial %s: the stop was not acknowledged (%s); the board's failsafe "
                                    "releases everything within %.0f ms", self.url, result.problem,
                                    FAILSAFE_S * 1000)
                except SerialLinkLost as exc:
                    log.warning("serial %s: could not send the stop (%s)", self.url, exc)
                if self.state is LinkState.OPEN:
                    self.state = LinkState.STOPPED

    def close(self) -> None:
        """:meth:`stop`, then close the port; idempotent."""
        with self._lock:
            self.stop()
            if self.state is not LinkState.CLOSED:
                try:
                    self._port.close()
                except self._serial_exceptions as exc:
                    log.debug("serial %s: close failed (%s)", self.url, exc)
                self.state = LinkState.CLOSED

    def __enter__(self) -> SerialActuator:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def ping(self) -> CommandResult:
        """Ask the board for its state without driving (does not feed its failsafe)."""
        with self._lock:
            if self.state is not LinkState.OPEN and self.state is not LinkState.STOPPED:
                raise SerialLinkLost(f"serial link {self.url} is {self.state.value}")
            return self._command(encode_ping(self._next_sequence()), None)

    # -- internals --
    def _next_sequence(self) -> int:
        self._sequence = (self._sequence + 1) % SEQUENCE_MODULUS
        return self._sequence

    def _lose(self, reason: str) -> None:
        self.state = LinkState.LOST
        self.lost_reason = reason
        log.error("serial %s: link lost: %s", self.url, reason)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last_problem = "no reply"
        while True:
            result = self._command(encode_ping(self._next_sequence()),
                                   None, wait_s=min(0.25, max(0.0, deadline - time.monotonic())))
            if result.acked:
                log.info("serial %s: board ready, holding %s", self.url, result.reported_outputs)
                return
            last_problem = result.problem or last_problem
            if time.monotonic() >= deadline:
                raise SerialLinkLost(
                    f"no answer from the Arduino on {self.url} within {timeout_s:.1f} s ({last_problem}): "
                    f"is scratchpilot_rc.ino uploaded and the baud rate {DEFAULT_BAUDRATE}?")

    def _command(self, line: bytes, outputs: str | None, wait_s: float | None = None) -> CommandResult:
        """Write one command line and read replies until its ack, its nack or the timeout."""
        sequence = int(line.split(b" ")[-1].split(b"*")[0])
        started = time.monotonic()
        deadline = started + (self.ack_timeout_s if wait_s is None else wait_s)
        try:
            self._port.write(line)
            self.stats["sent"] += 1
            while True:
                reply = self._read_reply(deadline)
                if reply is None:
                    self.stats["timeouts"] += 1
                    return CommandResult(sequence, outputs or "", False,
                                         problem=f"no ack within {(deadline - started) * 1000:.0f} ms")
                if reply.sequence != sequence:
                    continue  # a late answer to an earlier command, or an event
                if reply.kind == "ack":
                    self.stats["acked"] += 1
                    return CommandResult(sequence, outputs or "", True, reply.detail,
                                         time.monotonic() - started)
                self.stats["refused"] += 1
                return CommandResult(sequence, outputs or "", False, problem=f"refused: {reply.detail}")
        except self._serial_exceptions as exc:
            self._lose(f"port error: {exc}")
            raise SerialLinkLost(f"serial link {self.url} is lost: {self.lost_reason}") from exc

    def _read_reply(self, deadline: float) -> Reply | None:
        """The next decodable reply before ``deadline``; events are counted and logged on the way."""
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline + 1])
                del self._buffer[:newline + 1]
                try:
                    reply = decode_reply(line)
                except ProtocolError as exc:
                    self.stats["bad_lines"] += 1
                    log.warning("serial %s: %s", self.url, exc)
                    continue
                if reply.kind == "event":
                    self._on_event(reply.detail)
                elif reply.kind == "nack" and reply.sequence is None:
                    # A damaged command: the board could not read its sequence number, so it is ours.
                    return Reply("nack", self._sequence, reply.detail)
                return reply
            if len(self._buffer) > 4 * MAX_LINE:
                self.stats["bad_lines"] += 1
                self._buffer.clear()  # noise without newlines: drop it
            if time.monotonic() >= deadline:
                return None
            chunk = self._port.read(max(1, self._port.in_waiting))
            self._buffer += chunk

    def _on_event(self, event: str) -> None:
        if event == "FAILSAFE":
            self.stats["failsafe_events"] += 1
            log.warning("serial %s: the board's failsafe released everything (no command for %.0f ms)",
                        self.url, FAILSAFE_S * 1000)
        elif event.startswith("BOOT"):
            self.stats["reboots"] += 1
            log.info("serial %s: the board (re)booted (%s)", self.url, event)
        else:
            log.warning("serial %s: unknown event %r", self.url, event)
