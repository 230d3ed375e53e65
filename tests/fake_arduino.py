"""Test doubles of the Arduino: the sketch's controller in Python and a fake board behind a byte stream.

:class:`RcController` is a byte-for-byte Python mirror of the C++ ``rc::Controller`` (a differential
test in ``tests/test_arduino.py`` feeds both the same bytes); :class:`FakeArduino` runs it behind a
real byte stream (a TCP socket for pyserial's ``socket://`` URLs, or a pseudo-terminal) for end-to-end
tests of :mod:`scratchpilot.car.hardware.serial_link`.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable

from scratchpilot.car.hardware.serial_protocol import (
    FAILSAFE_S,
    MAX_LINE,
    PROTOCOL_VERSION,
    _parse_outputs,
    _parse_sequence,
    crc8,
    format_outputs,
    frame_line,
    sequence_newer,
)

log = logging.getLogger(__name__)


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


