"""The camera stream as the vehicle loop's frame source, and the drive log of the real car.

:class:`StreamFrames` waits up to :data:`POLL_S` for the stream's next frame, so a dropped stream is
noticed within one poll and a stalled one as soon as its newest frame is older than the safety gate's
limit. It reports what is wrong with the stream as a :class:`~scratchpilot.car.safety.Stop` for the
gate: the stream is down, it came back but no frame newer than the drop has arrived, or a frame cannot
be decoded.
"""

from __future__ import annotations

import time
from collections import deque

from ..safety import Stop, StopReason
from ..vehicle import percentiles
from .stream_protocol import Frame, StreamProtocolError

POLL_S = 0.02  #: how long a tick waits for a frame when none arrives (bounds the stop delay)


class StreamFrames:
    """-> (image, frame_time, source_fault, restart, frame_index, frame).

    ``image`` is the decoded new frame (None when no new frame arrived this tick), ``frame_time`` the
    capture time of the newest frame held, in wall-clock seconds; ``restart`` is True on the first good
    frame after a gap, so a pilot with frame history forgets the frames from before it.
    """

    def __init__(self, client, poll_s: float = POLL_S):
        self.client = client
        self.poll_s = poll_s
        self.last_frame: Frame | None = None
        self.bad_frames = 0
        self.decode_ms: deque = deque(maxlen=100_000)
        self.transit_ms: deque = deque(maxlen=100_000)
        self._drops_seen = client.stats["drops"]
        self._resume_after_index = -1  # frames up to this index predate the last drop
        self._gap = True

    def run(self):
        client = self.client
        frame = client.wait_frame(timeout_s=self.poll_s)
        if frame is not None:
            self.last_frame = frame
        newest = self.last_frame
        frame_time = None if newest is None else newest.capture_ns / 1e9
        index = None if newest is None else newest.index
        drops = client.stats["drops"]
        if drops != self._drops_seen:
            self._drops_seen = drops
            self._resume_after_index = newest.index if newest is not None else 0
        fault = None
        if not client.connected:
            fault = Stop(StopReason.STREAM_LOST, f"disconnected: {client.last_error or 'connecting'}")
        elif newest is not None and newest.index <= self._resume_after_index:
            fault = Stop(StopReason.STREAM_LOST, f"reconnected after: {client.last_error}; waiting for a fresh frame")
        if fault is not None or newest is None:
            self._gap = True
            return None, frame_time, fault, False, index, frame
        if frame is None:
            return None, frame_time, None, False, index, None
        started = time.perf_counter()
        try:
            image = frame.image()
        except StreamProtocolError as exc:
            self.bad_frames += 1
            return None, frame_time, Stop(StopReason.BAD_FRAME, str(exc)), False, index, frame
        self.decode_ms.append((time.perf_counter() - started) * 1000)
        self.transit_ms.append(frame.transit_s * 1000)
        restart, self._gap = self._gap, False
        return image, frame_time, None, restart, index, frame


class DriveLog:
    """Counts and latencies of network driving: capture of a frame to its command delivered, frame age
    when the command went out, labels sent. ``summary()`` adds the stream's decode and transit times."""

    def __init__(self, source: StreamFrames):
        self.source = source
        self.commands = 0
        self.labels: dict[str, int] = {}
        self.latency_ms: deque = deque(maxlen=100_000)
        self.frame_age_ms: deque = deque(maxlen=100_000)
        self.started = time.monotonic()

    def run(self, frame: Frame | None, label: str | None, sent: str | None) -> None:
        if frame is None or label is None:
            return
        self.frame_age_ms.append(frame.age_s() * 1000)
        if sent == label:
            self.latency_ms.append((time.time_ns() - frame.capture_ns) / 1e6)
            self.commands += 1
            self.labels[label] = self.labels.get(label, 0) + 1

    def summary(self, decisions: int, decide_ms) -> dict:
        seconds = time.monotonic() - self.started
        return {"decisions": decisions, "commands": self.commands, "bad_frames": self.source.bad_frames,
                "seconds": round(seconds, 3), "decisions_per_s": round(decisions / max(seconds, 1e-9), 2),
                "labels": dict(self.labels), "latency_ms": percentiles(self.latency_ms, 50, 99),
                "transit_ms": percentiles(self.source.transit_ms, 50, 99),
                "decode_ms": percentiles(self.source.decode_ms, 50, 99),
                "decide_ms": percentiles(decide_ms, 50, 99), "frame_age_ms": percentiles(self.frame_age_ms, 50, 99)}
