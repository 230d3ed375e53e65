"""What the car commands share: argument parsing, logging, and opening the stream, the link and the window."""

from __future__ import annotations

import logging

from ...errors import CommandError


def setup_logging() -> None:
    """Show the stop reasons and link events on stderr when no one configured logging."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def parse_source(url: str) -> tuple[str, int]:
    """``tcp://HOST[:PORT]`` -> ``(host, port)``; ValueError naming the URL otherwise."""
    from ..hardware.stream_protocol import DEFAULT_PORT

    scheme, sep, rest = str(url).partition("://")
    if not sep or scheme != "tcp" or not rest:
        raise ValueError(f"stream source {url!r}: expected tcp://HOST:PORT (the Pi running 'scratchpilot car stream')")
    host, colon, port_text = rest.rstrip("/").rpartition(":")
    if not colon:
        return rest.rstrip("/"), DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536 or not host:
        raise ValueError(f"stream source {url!r}: bad host or port (expected e.g. tcp://192.168.1.20:8000)")
    return host.strip("[]"), int(port_text)


def parse_size(text: str) -> tuple[int, int]:
    """``"320x240"`` -> ``(320, 240)`` (width, height); ValueError otherwise."""
    width, sep, height = str(text).lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) < 1 or int(height) < 1:
        raise ValueError(f"frame size {text!r}: expected WIDTHxHEIGHT, e.g. 320x240")
    return int(width), int(height)


def stream_client(source: str):
    """A started :class:`~scratchpilot.car.hardware.stream_client.StreamClient` for ``tcp://HOST:PORT``."""
    from ..hardware.stream_client import StreamClient

    try:
        address = parse_source(source)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    return StreamClient(*address).start()


def open_link(serial: str | None, *, dry_run: bool = False):
    """The car link: a dry run, the serial Arduino, or no car at all."""
    from ..links import DryRunLink, NoCarLink

    if dry_run:
        return DryRunLink()
    if not serial:
        return NoCarLink()
    from ..hardware.serial_link import SerialCarLink
    from ..hardware.serial_protocol import SerialLinkError

    try:
        return SerialCarLink(serial)
    except SerialLinkError as exc:
        raise CommandError(str(exc)) from None


def open_window(title: str, wanted: bool = True):
    """A :class:`~..hardware.window.CarWindow`, or a ``NoWindow`` when not ``wanted``."""
    from ..hardware.window import CarWindow, NoWindow

    try:
        return CarWindow(title) if wanted else NoWindow()
    except RuntimeError as exc:
        raise CommandError(str(exc)) from None


def load_pilot(path):
    """A :class:`~scratchpilot.car.pilot.Pilot` from a model file, or a CommandError saying why not."""
    from ... import nn
    from ..pilot import Pilot

    try:
        return Pilot.load(path)
    except (nn.ModelFileError, ValueError, OSError) as exc:
        raise CommandError(f"{path}: {exc}") from None


def release(link, *others) -> None:
    """Close the car link first (so the car stops whatever happens next), then ``others`` that are open."""
    link.close()
    for thing in others:
        if thing is not None:
            thing.close()
