"""The line protocol between the laptop and the Arduino wired to the RC remote.

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

The laptop speaks it through :mod:`.serial_link`; the test suite's ``tests/fake_arduino.py`` holds a
byte-for-byte Python mirror of the board's ``rc::Controller``, checked against the C++ in
``tests/test_arduino.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

PROTOCOL_VERSION = 1
FAILSAFE_S = 0.250  #: the Arduino releases everything after this long without a valid drive command
MAX_LINE = 32  #: longest command line the Arduino accepts, without the ``\n``
DEFAULT_BAUDRATE = 115200
SEQUENCE_MODULUS = 1 << 16

OUT_FORWARD, OUT_REVERSE, OUT_LEFT, OUT_RIGHT = 1, 2, 4, 8

#: Driving label (:data:`scratchpilot.car.links.LABELS`, plus ``reverse``) -> outputs field. An RC car
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


