"""The one safety gate: it stands in front of every car link, in the simulator and on the real car.

Whoever chooses the label -- the network, the keyboard, the scripted expert -- hands it to
:meth:`Safety.run`, which either passes it to the car link or holds the car still, and says why as a
:class:`Stop`: a :class:`StopReason` plus the figures of the moment. The policy is the same everywhere:

* a fault (a stale frame, the stream or the serial link lost, low confidence) holds the car still, and
  the car drives again as soon as the fault clears;
* the e-stop latches: nothing drives the car again until the program restarts.

While stopped, "hold still" is re-sent every ``stop_repeat_s`` (so a link that comes back learns the car
must stand); the simulator passes 0, since its world only moves when a command is sent. Time comes from
``clock``, in the frames' own time base (the wall clock for camera frames, simulated seconds in the
simulator), so a test drives the gate deterministically with a clock of its own.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MAX_STOP_EVENTS = 1000  #: stop events kept for the summary (all are counted and logged)


class StopReason(enum.Enum):
    """Why the car is held still. The value is the text shown to people."""

    ESTOP = "e-stop pressed"
    STREAM_LOST = "stream lost"
    NO_FRAME = "no frame yet"
    BAD_FRAME = "bad frame"
    LINK_LOST = "link lost"
    STALE_FRAME = "stale frame"
    LOW_CONFIDENCE = "low confidence"


@dataclass(frozen=True)
class Stop:
    """One reason to stop, with the figures that explain it (``detail``, for people only)."""

    reason: StopReason
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.reason.value} ({self.detail})" if self.detail else self.reason.value


class Safety:
    """Passes a label to ``link`` or holds the car still; keeps the log of stops.

    Parameters
    ----------
    link : CarLink
        Where commands go (:mod:`scratchpilot.car.links`).
    max_frame_age : float or None
        Stop when the newest frame is older than this many seconds (None: no limit).
    min_confidence : float or None
        Stop when the chosen label's probability is below this (None: no limit).
    clock : callable
        Seconds, in the time base of the frames' timestamps.
    stop_repeat_s : float
        While stopped, "hold still" is re-sent this often.
    """

    def __init__(self, link, *, max_frame_age: float | None = 0.2, min_confidence: float | None = None,
                 clock: Callable[[], float] = time.time, stop_repeat_s: float = 0.1):
        if max_frame_age is not None and not max_frame_age > 0:
            raise ValueError(f"max_frame_age must be positive seconds or None, got {max_frame_age}")
        if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be between 0 and 1 or None, got {min_confidence}")
        self.link = link
        self.max_frame_age = max_frame_age
        self.min_confidence = min_confidence
        self.stop_repeat_s = float(stop_repeat_s)
        self._clock = clock
        self._started = clock()
        self.estopped = False
        self.stop: Stop | None = None  #: why the car is held still now (None while driving)
        self.stops: list[dict[str, Any]] = []
        self.stop_count = 0
        self._current: dict[str, Any] | None = None
        self._stop_started = 0.0
        self._stop_sent_at: float | None = None

    # ---- the part: named inputs in, (label sent or "stop" or None, the stop) out
    def run(self, label: str | None = None, confidence: float | None = None, frame_time: float | None = None,
            source_fault: Stop | None = None, estop: bool = False, frame_index: int | None = None):
        """Check, then act: ``(sent, stop)``, where ``sent`` is the label sent, ``"stop"`` or None."""
        if estop:
            self.emergency_stop()
        stop = self.check(frame_time=frame_time, source_fault=source_fault, confidence=confidence)
        return self.act(label, stop, frame_index), self.stop

    def emergency_stop(self) -> None:
        """Stop now and latch: nothing drives the car again."""
        if not self.estopped:
            self.estopped = True
            self.link.emergency_stop()
            self._note(Stop(StopReason.ESTOP), None)

    def check(self, *, frame_time: float | None, source_fault: Stop | None = None,
              confidence: float | None = None) -> Stop | None:
        """The reason to stop now (None: safe to drive).

        ``frame_time`` is the capture time of the newest frame held (None: no frame yet);
        ``source_fault`` what the frame source reports (the stream is down, the frame cannot be decoded).
        """
        if self.estopped:
            return Stop(StopReason.ESTOP)
        if source_fault is not None:
            return source_fault
        if frame_time is None:
            return Stop(StopReason.NO_FRAME, "waiting for the first frame")
        if not self.link.ready:
            return Stop(StopReason.LINK_LOST, str(self.link.problem or "not ready"))
        if self.max_frame_age is not None:
            age = self._clock() - frame_time
            if age > self.max_frame_age:
                return Stop(StopReason.STALE_FRAME, f"{age * 1000:.0f} ms > {self.max_frame_age * 1000:.0f} ms")
        if self.min_confidence is not None and confidence is not None and confidence < self.min_confidence:
            return Stop(StopReason.LOW_CONFIDENCE, f"{confidence:.2f} < {self.min_confidence:.2f}")
        return None

    def act(self, label: str | None, stop: Stop | None, frame_index: int | None = None) -> str | None:
        """Drive with ``label`` when ``stop`` is None, else hold the car still.

        ``label=None`` without a stop means "nothing new" (no new frame): nothing is sent. Returns the
        label sent, ``"stop"`` while stopped (None after the e-stop), or None when nothing was sent.
        """
        if stop is None and label is not None:
            if self.link.drive(label):
                self._note(None, frame_index)
                self._stop_sent_at = None
                return label
            stop = Stop(StopReason.LINK_LOST, str(self.link.problem or "command not delivered"))
        if stop is None:
            return None
        self._note(stop, frame_index)
        now = self._clock()
        if self._stop_sent_at is None or now - self._stop_sent_at >= self.stop_repeat_s:
            self.link.hold_stop(stop)  # a latched link refuses it; the simulator brakes
            self._stop_sent_at = now
        return None if self.estopped else "stop"

    def _note(self, stop: Stop | None, frame_index: int | None) -> None:
        """Log the start and end of each stop; a stop whose reason changes starts a new entry."""
        old = None if self.stop is None else self.stop.reason
        new = None if stop is None else stop.reason
        if old == new:
            self.stop = stop
            return
        now = self._clock()
        if self._current is not None:
            self._current["duration_s"] = round(now - self._stop_started, 3)
        if stop is None:
            log.info("driving again after %.2f s stopped", now - self._stop_started)
            self._current = None
        else:
            log.warning("stop: %s", stop)
            self.stop_count += 1
            self._current = {"t_s": round(now - self._started, 3), "frame": frame_index, "reason": str(stop),
                             "kind": stop.reason.name.lower(), "duration_s": None}
            self._stop_started = now
            if len(self.stops) < MAX_STOP_EVENTS:
                self.stops.append(self._current)
        self.stop = stop

    def summary(self) -> dict[str, Any]:
        return {"stops_total": self.stop_count, "stops": [dict(stop) for stop in self.stops],
                "estopped": self.estopped}
