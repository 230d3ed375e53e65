"""The simulator as a stand-in camera for the stream, to try ``car stream`` and ``car drive`` without a car."""

from __future__ import annotations

import time

import numpy as np


class SimulatorCamera:
    """CarRacing-v3 frames, driven by the scripted expert.

    Frames are ``(96, 96, 3)`` uint8 RGB whatever the requested size. ``read()`` paces itself to ``fps``
    and advances the simulation by about ``50 / fps`` steps, so the car moves at its simulated speed; a
    finished track is followed by the next seed.
    """

    def __init__(self, seed: int = 0, fps: float = 24.0):
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        from .env import FPS, Simulator
        from .expert import ScriptedExpert

        self.seed = int(seed)
        self._sim = Simulator(self.seed)
        self._expert = ScriptedExpert()
        self._expert.reset(self._sim.track)
        self._steps_per_frame = max(1, round(FPS / fps))
        self._period = 1.0 / fps
        self._next_deadline: float | None = None

    def read(self) -> tuple[np.ndarray, float]:
        now = time.monotonic()
        if self._next_deadline is not None and now < self._next_deadline:
            time.sleep(self._next_deadline - now)
        self._next_deadline = max(now, self._next_deadline or now) + self._period
        for _ in range(self._steps_per_frame):
            if self._sim.done:
                self.seed += 1
                self._sim.reset(self.seed)
                self._expert.reset(self._sim.track)
            self._sim.send(self._expert.act(self._sim.car))
        frame, _ = self._sim.read()
        return np.array(frame), time.time()

    def close(self) -> None:
        self._sim.close()
