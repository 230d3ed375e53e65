"""The Arduino sketch: its C++ protocol/failsafe test on the host, the Uno build, and C++ == Python.

``make -C arduino`` does the building (``make test`` installs the AVR toolchain first through
``make system-deps``); these tests run it and check the results, and feed one random byte stream to
the C++ ``rc::Controller`` (through ``arduino/tests/rc_replay.cpp``) and to its Python mirror
:class:`~scratchpilot.car.hardware.serial_protocol.RcController`, which the fake Arduino runs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from fake_arduino import RcController

from scratchpilot.car.hardware.serial_protocol import MAX_LINE, crc8, encode_drive, encode_ping

ARDUINO = Path(__file__).resolve().parents[1] / "arduino"
UNO_FLASH_BYTES = 32256  # ATmega328P flash less the 512-byte Optiboot bootloader
UNO_RAM_BYTES = 2048


def make(*targets: str, timeout: float = 180) -> subprocess.CompletedProcess:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    return subprocess.run(["make", "--no-print-directory", "-C", str(ARDUINO), *targets],
                          capture_output=True, text=True, timeout=timeout)


def need_host_compiler() -> None:
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed (Debian: apt-get install g++)")


def test_host_unit_test_of_the_protocol_and_failsafe_passes():
    need_host_compiler()
    result = make("host-test")
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"all (\d+) checks passed", result.stdout)
    assert match and int(match.group(1)) >= 100, result.stdout


def test_sketch_compiles_for_an_uno():
    toolchain = shutil.which("avr-g++") and Path("/usr/share/arduino/Arduino.mk").is_file()
    if not toolchain:
        pytest.skip("the AVR toolchain is absent: `make system-deps` (or `make -C arduino system-deps`) "
                    "installs gcc-avr avr-libc arduino-core-avr arduino-mk")
    result = make("sketch")
    assert result.returncode == 0, result.stdout + result.stderr
    program = re.search(r"Program:\s+(\d+) bytes", result.stdout)
    data = re.search(r"Data:\s+(\d+) bytes", result.stdout)
    assert program and data, result.stdout
    assert 1000 < int(program.group(1)) < UNO_FLASH_BYTES
    assert int(data.group(1)) < UNO_RAM_BYTES // 2  # leave the stack room
    hex_file = ARDUINO / "build" / "uno" / "scratchpilot_rc_.hex"
    assert hex_file.stat().st_size > 0 and hex_file.read_text().startswith(":")


def random_script(rng: np.random.Generator, steps: int) -> list[tuple[int, bytes]]:
    """Timed byte chunks: good, damaged, stale, split, overlong and noisy lines, and silences."""
    now = (1 << 32) - 3000  # cross the millis() wrap a few seconds in
    sequence = int(rng.integers(0, 1 << 16))
    pending = b""  # the second half of a line split across two steps
    script = []
    outputs_choices = ["-", "F", "B", "L", "R", "FL", "FR", "BL", "BR"]
    for _ in range(steps):
        now = (now + int(rng.choice([0, 1, 7, 40, 120, 249, 250, 251, 400]))) % (1 << 32)
        kind = rng.choice(["drive", "drive", "drive", "ping", "stale", "damaged", "split", "noise",
                           "long", "crlf", "silence", "bad-outputs"])
        sequence = (sequence + int(rng.integers(1, 4))) % (1 << 16)
        outputs = str(rng.choice(outputs_choices))
        chunk = pending
        pending = b""
        if kind == "drive":
            chunk += encode_drive(outputs, sequence)
        elif kind == "ping":
            chunk += encode_ping(sequence)
        elif kind == "stale":
            chunk += encode_drive(outputs, (sequence - int(rng.integers(0, 40000))) % (1 << 16))
        elif kind == "damaged":
            line = bytearray(encode_drive(outputs, sequence))
            position = int(rng.integers(0, len(line) - 1))
            line[position] ^= 1 << int(rng.integers(0, 7))
            chunk += bytes(line)
        elif kind == "split":
            line = encode_drive(outputs, sequence)
            cut = int(rng.integers(1, len(line)))
            chunk += line[:cut]
            pending = line[cut:]
        elif kind == "noise":
            chunk += rng.integers(0, 256, size=int(rng.integers(1, 80)), dtype=np.uint8).tobytes()
        elif kind == "long":
            chunk += b"D F " + b"9" * int(rng.integers(MAX_LINE - 6, MAX_LINE + 10)) + b"\n"
        elif kind == "crlf":
            body = f"D {outputs} {sequence}".encode()
            chunk += body + b"*%02x\r\n" % crc8(body)
        elif kind == "bad-outputs":
            body = f"D {rng.choice(['FB', 'LR', 'RF', 'X', 'FLR'])} {sequence}".encode()
            chunk += body + b"*%02X\n" % crc8(body)
        script.append((now, chunk))
    return script


def python_replay(script: list[tuple[int, bytes]]) -> list[str]:
    board = RcController()
    lines = [f"0 {board.begin(0).hex() or '-'} {board.outputs}"]
    for now, chunk in script:
        replies = board.poll(now) + board.feed(chunk, now)
        lines.append(f"{now} {replies.hex() or '-'} {board.outputs}")
    return lines


def test_python_board_matches_the_cpp_board_byte_for_byte():
    need_host_compiler()
    result = make("replay")
    assert result.returncode == 0, result.stdout + result.stderr
    script = random_script(np.random.default_rng(20240605), steps=3000)
    stdin = "".join(f"{now} {chunk.hex() or '-'}\n" for now, chunk in script)
    cpp = subprocess.run([str(ARDUINO / "build" / "rc_replay")], input=stdin, capture_output=True,
                         text=True, timeout=30, check=True).stdout.splitlines()
    python = python_replay(script)
    assert len(cpp) == len(python) == len(script) + 1
    for step, (expected, actual) in enumerate(zip(cpp, python, strict=True)):
        assert actual == expected, f"step {step}: chunk {script[step - 1][1]!r}" if step else "boot"
    # The script exercises what it claims to: acks, every refusal, failsafe events and wraparound.
    replies = bytes.fromhex("".join(line.split()[1].replace("-", "") for line in python))
    for needle in (b"A ", b"N - CRC", b"N - SYNTAX", b"SEQ*", b"N - LONG", b"E FAILSAFE"):
        assert needle in replies, needle
    assert any(now < 3000 for now, _ in script) and any(now > (1 << 32) - 3000 for now, _ in script)
