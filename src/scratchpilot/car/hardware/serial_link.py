"""The serial link to the Arduino wired to the RC remote: an actuator that speaks the line protocol
(:mod:`.serial_protocol`), and the car link that reopens it when the cable comes back.

pyserial is imported when a port is opened, never at import time.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .serial_protocol import (
    DEFAULT_BAUDRATE,
    FAILSAFE_S,
    LABEL_OUTPUTS,
    MAX_LINE,
    SEQUENCE_MODULUS,
    ProtocolError,
    Reply,
    SerialLinkError,
    SerialLinkLost,
    decode_reply,
    encode_drive,
    encode_ping,
    parse_outputs,
)

log = logging.getLogger(__name__)


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
    """Drive the RC car through the Arduino sketch: one command, one acknowledged line.

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

    # -- commands --
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


class SerialCarLink:
    """The Arduino behind a :class:`SerialActuator` that reopens itself.

    When the link is lost (cable pulled, board silent), :meth:`drive` returns False, the board's own
    failsafe releases everything within 250 ms, and a background thread reopens the port every
    ``reconnect_s`` until it answers again. :meth:`emergency_stop` latches: the port is released and
    never reopened.

    Parameters
    ----------
    url : str
        Serial port or pyserial URL (``/dev/ttyUSB0``, ``socket://127.0.0.1:5000``).
    reconnect_s : float
        Pause between attempts to reopen a lost port.
    actuator_options
        Passed to :class:`SerialActuator` (``ack_timeout_s``...).
        The first opening raises :class:`~.serial_protocol.SerialLinkError` as it comes.
    """

    def __init__(self, url: str, *, reconnect_s: float = 0.5, **actuator_options: Any):
        self.url = url
        self.reconnect_s = float(reconnect_s)
        self._options = actuator_options
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._latched = False
        self._reconnector: threading.Thread | None = None
        self.problem: str | None = None
        self.stats = {"commands": 0, "not_acked": 0, "losses": 0, "reconnects": 0}
        self.round_trip_ms: deque = deque(maxlen=100_000)  #: command written -> ack read
        self._actuator: SerialActuator | None = SerialActuator(url, **actuator_options)

    @property
    def ready(self) -> bool:
        """True while commands can be sent (the port is open and not e-stopped)."""
        return self._actuator is not None and not self._latched

    @property
    def actuator(self) -> SerialActuator | None:
        return self._actuator

    def drive(self, label: str) -> bool:
        """Send one label's outputs; False when the link is down (the board's failsafe holds the car)."""
        return self._send(lambda actuator: actuator.send(label))

    def hold_stop(self, reason: str = "") -> bool:
        """Release everything without latching; False when the link is down."""
        return self._send(lambda actuator: actuator.send_outputs("-"))

    def _send(self, command: Callable[[SerialActuator], Any]) -> bool:
        with self._lock:
            actuator = self._actuator
            if actuator is None or self._latched:
                return False
            try:
                result = command(actuator)
            except SerialLinkError as exc:
                self._lose(str(exc))
                return False
            self.stats["commands"] += 1
            if result.acked:
                self.round_trip_ms.append(result.round_trip_s * 1000)
            else:
                self.stats["not_acked"] += 1
            return True

    def _lose(self, reason: str) -> None:
        actuator, self._actuator = self._actuator, None
        self.problem = reason
        self.stats["losses"] += 1
        log.error("serial %s: %s; the board's failsafe releases the car, reconnecting every %.1f s",
                  self.url, reason, self.reconnect_s)
        if actuator is not None:
            actuator.close()  # a lost actuator only closes its port
        if not self._closing.is_set() and not self._latched:
            self._reconnector = threading.Thread(target=self._reconnect, name=f"serial-reconnect-{self.url}",
                                                 daemon=True)
            self._reconnector.start()

    def _reconnect(self) -> None:
        while not self._closing.wait(self.reconnect_s):
            try:
                actuator = SerialActuator(self.url, **self._options)
            except SerialLinkError as exc:
                self.problem = f"reconnecting: {exc}"
                log.debug("serial %s: %s", self.url, self.problem)
                continue
            with self._lock:
                if self._closing.is_set() or self._latched:
                    actuator.close()
                    return
                self._actuator = actuator
                self.problem = None
                self.stats["reconnects"] += 1
            log.warning("serial %s: link back", self.url)
            return

    def emergency_stop(self) -> None:
        """Release everything and refuse every later command, reconnections included."""
        with self._lock:
            self._latched = True
            if self._actuator is not None:
                self._actuator.stop()

    def close(self) -> None:
        """Release the car (best effort) and close the port; idempotent."""
        self._closing.set()
        with self._lock:
            if self._actuator is not None:
                self._actuator.close()
        if self._reconnector is not None:
            self._reconnector.join(timeout=5.0)
