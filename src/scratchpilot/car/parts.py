"""Parts both cars share: who chooses the label (the network, the keyboard), recording, video, a time limit.

Each is a small object with ``run(*inputs) -> outputs`` for :class:`~scratchpilot.car.vehicle.Vehicle`.
The frame sources are beside their hardware: :mod:`.sim.parts` for the simulator,
:mod:`.hardware.stream_source` for the camera stream; the safety gate is :class:`~.safety.Safety`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection

import numpy as np

from .sessions.format import SessionError
from .vehicle import END

log = logging.getLogger(__name__)

#: the keys that drive; space is the e-stop
ARROW_KEYS = frozenset({"up", "down", "left", "right"})


def keys_to_label(held: Collection[str]) -> str:
    """Map the set of held keys to one driving label.

    ``"brake"`` if down (or space) is held, else ``"left"`` / ``"right"`` if exactly one of them is held,
    else ``"forward"`` if up is held, else ``"none"``. Steering wins over gas (one command per frame), and
    left and right together cancel.
    """
    if "space" in held or "down" in held:
        return "brake"
    left, right = "left" in held, "right" in held
    if left != right:
        return "left" if left else "right"
    return "forward" if "up" in held else "none"


class PilotPart:
    """image -> (label, confidence): the network decides, on the model's own preprocessing.

    ``restart`` (truthy after a gap in the frames) makes a pilot with frame history forget the frames
    from before the gap; after the e-stop (``estop``) nothing is decided any more.
    """

    def __init__(self, pilot):
        self.pilot = pilot
        self.decisions = 0

    def run(self, image: np.ndarray, restart: bool = False, estop: bool = False):
        if estop:
            return None, None
        if restart and hasattr(self.pilot, "reset"):
            self.pilot.reset()
        label, confidence, _ = self.pilot.decide(image)
        self.decisions += 1
        return label, confidence


class KeyboardPart:
    """held keys -> label: the arrow keys drive (space, the e-stop, reaches the gate from the window)."""

    def run(self, held: Collection[str] | None) -> str:
        return keys_to_label(ARROW_KEYS.intersection(held or ()))


class RecorderPart:
    """Record ``(image, label, time, episode)`` into a session writer, except while the car is stopped.

    A frame the driver did not see in time (stale), one taken while the car is held still (link lost,
    e-stop) or one that cannot be decoded would teach the network keys that did not move the car.
    ``stats`` counts what was recorded and, per :class:`~.safety.StopReason`, what was skipped.
    """

    def __init__(self, writer):
        self.writer = writer
        self.stats: dict[str, int] = {"recorded": 0}
        self.label_counts: dict[str, int] = {}
        self._warned_shape = False

    def run(self, image, label, frame_time, episode=0, stop=None) -> bool:
        if image is None or label is None:
            return False
        if stop is not None:
            return self._skip(stop.reason.name.lower())
        try:
            self.writer.add(image, label, frame_time, episode=episode or 0)
        except SessionError:  # a chunk could not be written: recording on would lose every later frame
            raise
        except ValueError as exc:  # the camera changed size mid-session
            if not self._warned_shape:
                log.error("record: %s; such frames are skipped", exc)
                self._warned_shape = True
            return self._skip("shape")
        self.stats["recorded"] += 1
        self.label_counts[label] = self.label_counts.get(label, 0) + 1
        return True

    def _skip(self, key: str) -> bool:
        self.stats[f"skipped_{key}"] = self.stats.get(f"skipped_{key}", 0) + 1
        return False


class VideoPart:
    """Keep every ``every``-th (frame, label, confidence) for a GIF (:func:`~.sim.runs.save_video`)."""

    def __init__(self, every: int = 2, enabled: bool = True):
        self.every = max(1, int(every))
        self.enabled = enabled
        self.frames: list[tuple[np.ndarray, str, float]] = []
        self._count = 0

    def run(self, image, label, confidence) -> None:
        if self.enabled and image is not None and self._count % self.every == 0:
            self.frames.append((np.array(image), str(label), float(confidence or 0.0)))
        self._count += 1


class TimeLimit:
    """-> end: "duration reached" after ``seconds``, "stopped" once ``stop_event`` is set."""

    def __init__(self, seconds: float | None = None, stop_event: threading.Event | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.seconds, self.stop_event, self._clock = seconds, stop_event, clock
        self._started = clock()

    def run(self) -> str | None:
        if self.stop_event is not None and self.stop_event.is_set():
            return "stopped"
        if self.seconds is not None and self._clock() - self._started >= self.seconds:
            return "duration reached"
        return None


class Tally:
    """Count the values seen (the labels sent, say); None is not counted."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def run(self, value) -> None:
        if value is not None:
            self.counts[str(value)] = self.counts.get(str(value), 0) + 1


class Progress:
    """Advance a progress bar once per tick (:func:`scratchpilot.util.progress.progress`)."""

    def __init__(self, bar):
        self.bar = bar

    def run(self) -> None:
        self.bar.update(1)


__all__ = ["ARROW_KEYS", "END", "KeyboardPart", "PilotPart", "Progress", "RecorderPart", "Tally", "TimeLimit",
           "VideoPart", "keys_to_label"]
