"""The simulator's parts for the vehicle loop: its camera, the scripted expert, and the expert's noise."""

from __future__ import annotations

import numpy as np

#: expert perturbations (DART-style noise): a random command held for this many frames
NOISE_HOLD_FRAMES = (4, 12)


class SimFrames:
    """-> (image, frame_time, end): the simulator's newest frame and its simulated time; ``end`` once the
    episode is over (lap completed, off the playfield, time up) or after ``max_steps`` frames."""

    def __init__(self, sim, max_steps: int | None = None):
        self.sim = sim
        self.max_steps = max_steps

    def run(self):
        sim = self.sim
        if sim.done:
            return None, sim.time, "episode over"
        if self.max_steps is not None and sim.metrics.steps >= self.max_steps:
            return None, sim.time, "max steps"
        frame, timestamp = sim.read()
        return frame, timestamp, None


class ExpertPart:
    """-> expert_label: what the scripted expert would do now (it reads the car's state, not pixels)."""

    def __init__(self, expert, sim):
        self.expert, self.sim = expert, sim

    def run(self) -> str:
        return self.expert.act(self.sim.car)


class Perturbation:
    """expert_label -> label: the expert's label, except that with probability ``noise`` per frame a random
    command starts and is held for a few frames, so the recording shows the car drifting off and the
    expert's labels for getting back (DART, Laskey et al. 2017)."""

    def __init__(self, noise: float, rng: np.random.Generator):
        self.noise, self.rng = float(noise), rng
        self._hold, self._command = 0, None

    def run(self, expert_label: str) -> str:
        if self._hold == 0 and self.noise and self.rng.random() < self.noise:
            self._hold = int(self.rng.integers(*NOISE_HOLD_FRAMES))
            self._command = str(self.rng.choice(["left", "right", "none", "forward"]))
        label = self._command if self._hold else expert_label
        self._hold = max(0, self._hold - 1)
        return label
