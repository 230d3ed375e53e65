"""The real RC car as one vehicle loop: the camera stream in, the keyboard or the network choosing,
the safety gate, the car link (serial Arduino, dry run or none), and the recorder and window.

::

    Pi:      camera --StreamServer--> TCP (Wi-Fi)
    laptop:  StreamFrames -> keyboard | pilot -> Safety -> car link --serial--> Arduino
                                              \\-> RecorderPart, WindowDisplay, DriveLog

The loop does not end at a stop: the safety gate holds the car still and drives again as soon as fresh
frames flow and the links are back, except after the e-stop, which latches. When the laptop side itself
hangs, no command goes out and the Arduino's own failsafe releases everything 250 ms after the last one
(``arduino/README.md``).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..parts import KeyboardPart, PilotPart, RecorderPart, TimeLimit
from ..safety import Safety
from ..vehicle import Vehicle
from .stream_source import DriveLog, StreamFrames
from .window import WindowControls, WindowDisplay


class RealCar:
    """The parts of one real-car run, wired into :attr:`vehicle`.

    Parameters
    ----------
    client : StreamClient
        The camera stream (started).
    safety : Safety
        The gate, holding the car link.
    window : CarWindow or NoWindow
        Keys and e-stop in, the live frame out.
    pilot : Pilot, optional
        The network drives; without one, the arrow keys do.
    writer : SessionWriter, optional
        Records every frame the keys or the pilot drove with (skips the ones taken while stopped).
    duration_s, stop_event
        End the run after this long, or once the event is set (tests).
    log_part : DriveLogPart, optional
        Logs every decision (:mod:`scratchpilot.car.monitoring`).
    """

    def __init__(self, client, safety: Safety, window, *, pilot=None, writer=None, duration_s: float | None = None,
                 stop_event: threading.Event | None = None, log_part=None):
        self.safety = safety
        self.source = StreamFrames(client)
        self.log = DriveLog(self.source)
        self.pilot = None if pilot is None else PilotPart(pilot)
        self.recorder = None if writer is None else RecorderPart(writer)
        car = self.vehicle = Vehicle()
        car.add(self.source, outputs=("image", "frame_time", "source_fault", "restart", "frame_index", "frame"))
        car.add(WindowControls(window), outputs=("held", "estop", "end"))
        if self.pilot is not None:
            _warm_up(pilot)
            car.add(self.pilot, inputs=("image", "restart", "estop"), outputs=("label", "confidence"), run_if="image",
                    name="pilot")
        else:
            car.add(KeyboardPart(), inputs=("held",), outputs=("label",), run_if="image", name="keyboard")
        car.add(safety, inputs=("label", "confidence", "frame_time", "source_fault", "estop", "frame_index"),
                outputs=("sent", "stop"), name="safety")
        if self.recorder is not None:
            car.add(self.recorder, inputs=("image", "label", "frame_time", "episode", "stop"), outputs=("recorded",))
        car.add(self.log, inputs=("frame", "label", "sent"))
        if log_part is not None:  # the prediction log (car drive --log): every decision, with its frame's features
            car.add(log_part, inputs=("image", "label", "confidence", "sent", "stop"))
        count = None if self.recorder is None else (lambda: f"recorded: {self.recorder.stats['recorded']}")
        car.add(WindowDisplay(window, safety, "pilot" if pilot is not None else "keys", count),
                inputs=("image", "label", "confidence", "stop", "frame_time"))
        car.add(TimeLimit(duration_s, stop_event), outputs=("end",))
        self.run_result = None

    def run(self) -> str:
        """Drive until the window closes, the duration passes or the stop event is set; why it ended."""
        self.run_result = self.vehicle.run()
        return self.run_result.ended

    def summary(self) -> dict[str, Any]:
        decisions = self.pilot.decisions if self.pilot is not None else 0
        decide = self.run_result.part_ms.get("pilot", ()) if self.run_result is not None else ()
        return {**self.log.summary(decisions, decide), **self.safety.summary()}


def _warm_up(pilot) -> None:
    """Decode one JPEG and decide once before the first real frame: the first call of each pays for lazy
    imports and buffer allocation, enough to make that frame stale."""
    from ...util.images import decode_image, encode_jpeg

    decode_image(encode_jpeg(np.zeros((16, 16, 3), dtype=np.uint8)), formats=("JPEG",))
    shape = getattr(getattr(pilot, "preprocess", None), "input_shape", None)
    if shape is not None:
        pilot.decide(np.zeros(shape, dtype=np.uint8))
    if hasattr(pilot, "reset"):
        pilot.reset()
