"""Fuzzing the two wire formats read from another machine (issue 14): the camera stream's frame header
and JPEG payload, and the serial protocol's reply lines from the Arduino.

Inputs start from valid bytes (a packed header, a real JPEG, a framed reply line) and are damaged the ways
a link does: bytes flipped, cut or repeated, a field rewritten with or without a matching checksum (so
the checks after the checksum are reached too). The property (:func:`fuzzing.check_parser`): a valid
result that agrees with the bytes, or the format's own error (:class:`StreamProtocolError`,
:class:`ProtocolError`) naming what is wrong, within a memory and time bound.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from fuzzing import check_parser, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from scratchpilot.car.hardware.serial_protocol import (
    MAX_LINE,
    ProtocolError,
    crc8,
    decode_reply,
    frame_line,
    parse_outputs,
    split_line,
)
from scratchpilot.car.hardware.stream_protocol import (
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    Frame,
    StreamProtocolError,
    pack_header,
    unpack_header,
)
from scratchpilot.util.images import DEFAULT_MAX_PIXELS

MEMORY_BOUND = 1 << 20  # a 32-byte header or a 40-byte line: any real allocation is a bug
SECONDS_BOUND = 1.0
#: a frame may decode to at most DEFAULT_MAX_PIXELS of RGB, held twice at the peak (Pillow's, NumPy's)
IMAGE_MEMORY_BOUND = 2 * 3 * DEFAULT_MAX_PIXELS + (4 << 20)


def flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    """``data`` with each (position, mask) xor-ed in (positions wrap round)."""
    out = bytearray(data)
    for position, mask in flips:
        if out:
            out[position % len(out)] ^= mask
    return bytes(out)


flips = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 255)), max_size=4)

# ------------------------------------------------------------------------------- stream frame header

#: (name, struct offset, format) of the header's fields, as the module docstring lays them out
FIELDS = [("magic", 0, "4s"), ("version", 4, "B"), ("flags", 5, "B"), ("reserved", 6, "H"),
          ("sequence", 8, "Q"), ("capture_ns", 16, "q"), ("length", 24, "I")]


def field_values(fmt: str):
    if fmt == "4s":
        return st.sampled_from([b"SPFR", b"SPFQ", b"\0\0\0\0", b"RFPS"]) | st.binary(min_size=4, max_size=4)
    bits = {"B": 8, "H": 16, "I": 32, "Q": 64}.get(fmt)
    if bits:
        return st.sampled_from([0, 1, 2, (1 << bits) - 1]) | st.integers(0, (1 << bits) - 1)
    return st.integers(-(1 << 63), (1 << 63) - 1)


@st.composite
def headers(draw) -> bytes:
    """A valid header, then: one field rewritten (CRC fixed or not), bytes flipped, cut or lengthened."""
    data = bytearray(pack_header(draw(st.integers(0, (1 << 64) - 1)), draw(st.integers(-(1 << 63), (1 << 63) - 1)),
                                 draw(st.integers(1, DEFAULT_MAX_PAYLOAD))))
    mutation = draw(st.sampled_from(["none", "field", "field-keep-crc", "flip", "cut", "extend"]))
    if mutation.startswith("field"):
        _, offset, fmt = draw(st.sampled_from(FIELDS))
        struct.pack_into(">" + fmt, data, offset, draw(field_values(fmt)))
        if mutation == "field":  # a sender that means it: the CRC matches, so the later checks run
            struct.pack_into(">I", data, 28, zlib.crc32(bytes(data[:28])))
    elif mutation == "flip":
        data = bytearray(flip(bytes(data), draw(flips)))
    elif mutation == "cut":
        data = data[:draw(st.integers(0, HEADER_SIZE - 1))]
    elif mutation == "extend":
        data += draw(st.binary(min_size=1, max_size=40))
    return bytes(data)


@given(data=headers(), max_payload=st.sampled_from([1, 4096, DEFAULT_MAX_PAYLOAD]))
@fuzz_settings(600)
def test_fuzzed_frame_headers(data, max_payload):
    header = check_parser(lambda: unpack_header(data, max_payload), StreamProtocolError,
                          ("header", "magic", "protocol version", "payload length"), max_bytes=MEMORY_BOUND,
                          max_seconds=SECONDS_BOUND)
    if header is not None:  # accepted: exactly the bytes a sender would write for it
        assert 1 <= header.length <= max_payload
        assert pack_header(header.sequence, header.capture_ns, header.length, header.flags) == data


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(5)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


@given(mutation=st.sampled_from(["flip", "cut", "garbage", "dimensions"]), changes=flips,
       cut=st.floats(0, 1), garbage=st.binary(max_size=64),
       side=st.integers(0, 300) | st.sampled_from([3000, 3546, 3547, 20000, 65535]))
@fuzz_settings(200)
def test_fuzzed_frame_payloads(jpeg, mutation, changes, cut, garbage, side):
    """A frame's JPEG damaged in transit: decoded to an RGB image, or refused naming the frame."""
    if mutation == "flip":
        payload = flip(jpeg, changes)
    elif mutation == "cut":
        payload = jpeg[:int(len(jpeg) * cut)]
    elif mutation == "garbage":
        payload = garbage
    else:  # the SOF0 frame's height and width rewritten: a tiny file claiming a huge image
        start = jpeg.index(b"\xff\xc0") + 5
        payload = jpeg[:start] + struct.pack(">HH", side, side) + jpeg[start + 4:]
    frame = Frame(7, 0, payload, 0, 0.0, 1)
    image = check_parser(frame.image, StreamProtocolError, "frame 7", max_bytes=IMAGE_MEMORY_BOUND,
                         max_seconds=5 * SECONDS_BOUND)
    if image is not None:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


# -------------------------------------------------------------------------------- serial reply lines

VALID_BODIES = ["A 17 FL", "A 0 -", "A 65535 BR", "N 4 SEQ", "N - CRC", "N 9 LONG", "E BOOT 1", "E FAILSAFE"]


@st.composite
def reply_lines(draw) -> bytes:
    """A valid reply, then: a field replaced (CRC recomputed, so parsing goes past the checksum),
    bytes flipped, cut, doubled, or the checksum or line ending changed."""
    body = draw(st.sampled_from(VALID_BODIES))
    mutation = draw(st.sampled_from(["none", "field", "flip", "cut", "double", "checksum", "ending", "noise"]))
    if mutation == "field":
        fields = body.split(" ")
        index = draw(st.integers(0, len(fields) - 1))
        value = draw(st.sampled_from(["", "-", "+1", "65536", "99999", "123456", "F", "FLR", "LF", "X", "é",
                                      "0x10", " ", "*"]) | st.text(max_size=6))
        if draw(st.booleans()):
            fields.insert(index, value)
        else:
            fields[index] = value
        line = frame_line(" ".join(fields).encode("utf-8", "surrogatepass"))
    else:
        line = frame_line(body)
    if mutation == "flip":
        line = flip(line, draw(flips))
    elif mutation == "cut":
        line = line[:draw(st.integers(0, len(line) - 1))]
    elif mutation == "double":
        line = line[:-1] + line
    elif mutation == "checksum":
        line = line[:-3] + draw(st.sampled_from([b"zz", b"0", b"123", b"", b"ff", b"FF"])) + b"\n"
    elif mutation == "ending":
        line = line[:-1] + draw(st.sampled_from([b"", b"\r\n", b"\n\n", b"\r"]))
    elif mutation == "noise":
        line = draw(st.binary(max_size=4 * MAX_LINE))
    return line


@given(line=reply_lines())
@fuzz_settings(800)
def test_fuzzed_reply_lines(line):
    reply = check_parser(lambda: decode_reply(line), ProtocolError, f"line {line!r}", max_bytes=MEMORY_BOUND,
                         max_seconds=SECONDS_BOUND)
    if reply is None:
        return
    fields = split_line(line)  # accepted: the checksum matched, and the fields say what the reply says
    assert reply.kind == {"A": "ack", "N": "nack", "E": "event"}[fields[0]]
    if reply.kind == "ack":
        assert 0 <= reply.sequence < 1 << 16 and parse_outputs(reply.detail) >= 0
    elif reply.kind == "nack":
        assert reply.sequence is None or 0 <= reply.sequence < 1 << 16
        assert reply.detail
    body = line.rstrip(b"\n").removesuffix(b"\r").rpartition(b"*")[0]
    assert crc8(body) == int(line.rstrip(b"\n").removesuffix(b"\r")[-2:], 16)


@given(text=st.text(max_size=4) | st.sampled_from(["-", "F", "B", "L", "R", "FL", "FR", "BL", "BR"]))
@fuzz_settings(300)
def test_fuzzed_outputs_fields(text):
    mask = check_parser(lambda: parse_outputs(text), ValueError, "bad outputs", max_bytes=MEMORY_BOUND,
                        max_seconds=SECONDS_BOUND)
    assert mask is None or 0 <= mask <= 15
