"""What a car understands: the driving labels, and the one protocol every car link implements.

A *car link* takes driving commands. The serial Arduino link (:class:`~.hardware.serial_link.SerialCarLink`),
the simulator (:class:`~.sim.env.Simulator`), the dry run and "no car" all implement :class:`CarLink`,
and only :class:`~.safety.Safety` talks to one: the safety gate decides whether a label goes out or the
car is held still.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

#: Canonical command labels, in class-index order (a model's output ``k`` means ``LABELS[k]``).
LABELS: tuple[str, ...] = ("none", "forward", "left", "right", "brake")


def check_label(label: str) -> str:
    """``label`` itself when it is one of :data:`LABELS`; a ValueError naming the labels otherwise."""
    if label not in LABELS:
        raise ValueError(f"unknown driving label {label!r}; expected one of {', '.join(LABELS)}")
    return label


@runtime_checkable
class CarLink(Protocol):
    """Anything that drives a car.

    ``drive`` and ``hold_stop`` return False when the command could not be delivered (the link is down);
    ``emergency_stop`` latches: every later command is refused until the program restarts.
    """

    #: why the link is down now (None while it is up)
    problem: str | None
    #: counters for the run's summary
    stats: dict

    @property
    def ready(self) -> bool:
        """True while commands can be delivered."""
        ...

    def drive(self, label: str) -> bool:
        """Execute one label of :data:`LABELS`."""
        ...

    def hold_stop(self, reason=None) -> bool:
        """Hold the car still (release everything) without latching; ``reason`` is a :class:`~.safety.Stop`."""
        ...

    def emergency_stop(self) -> None:
        """Hold the car still and refuse every later command."""
        ...

    def close(self) -> None:
        """Release the car (best effort) and free the link; safe to call twice."""
        ...


class DryRunLink:
    """Prints the serial lines a command would produce instead of sending them (``--dry-run``).

    A line is printed when the outputs or their reason change (not 24 times a second), with the driving
    label or the stop reason; :attr:`lines` counts every line that would have gone out.
    """

    def __init__(self, printer: Callable[[str], None] = print):
        self._printer = printer
        self._sequence = 0
        self._last_change: tuple[str, str] | None = None
        self._latched = False
        self.lines = 0
        self.problem: str | None = None
        self.stats = {"commands": 0, "changes": 0}

    @property
    def ready(self) -> bool:
        return not self._latched

    def drive(self, label: str) -> bool:
        from .hardware.serial_protocol import LABEL_OUTPUTS

        check_label(label)
        return self._would_send(LABEL_OUTPUTS[label], label, label)

    def hold_stop(self, reason=None) -> bool:
        # keyed on the StopReason, so that a stop whose figures change (frame age) prints once
        kind = getattr(reason, "reason", reason)
        return self._would_send("-", f"stop: {reason}" if reason else "stop", f"stop {kind}")

    def _would_send(self, outputs: str, why: str, change_key: str) -> bool:
        from .hardware.serial_protocol import encode_drive

        if self._latched:
            return False
        self._sequence = (self._sequence + 1) % 65536
        line = encode_drive(outputs, self._sequence).decode("ascii").rstrip("\n")
        self.lines += 1
        self.stats["commands"] += 1
        change = (outputs, change_key)
        if change != self._last_change:
            self.stats["changes"] += 1
            self._printer(f"dry run: would send {line:<14} ({why})")
            self._last_change = change
        return True

    def emergency_stop(self) -> None:
        if not self._latched:
            self._would_send("-", "e-stop", "e-stop")
            self._latched = True

    def close(self) -> None:
        """Nothing to release."""


class NoCarLink:
    """No car attached (``record`` without ``--serial``): every command succeeds and does nothing."""

    def __init__(self):
        self._latched = False
        self.problem: str | None = None
        self.stats: dict[str, int] = {"commands": 0}

    @property
    def ready(self) -> bool:
        return not self._latched

    def drive(self, label: str) -> bool:
        check_label(label)
        self.stats["commands"] += 1
        return not self._latched

    def hold_stop(self, reason=None) -> bool:
        return not self._latched

    def emergency_stop(self) -> None:
        self._latched = True

    def close(self) -> None:
        """Nothing to release."""
