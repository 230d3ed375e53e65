"""The pilot loop: frames in, labels out, one small part at a time (as in donkeycar's vehicle loop).

    source.read() -> frame --Pilot.decide--> (label, confidence) --SafetyGate--> actuator.send(label)

The same loop drives the simulator (``Simulator`` is both source and actuator) and the real car (a
stream client as source, a serial link as actuator). ``Pilot.decide`` applies the model's own stored
preprocessing spec, so driving sees frames exactly as training did.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


class Pilot:
    """A trained network plus its preprocessing: ``decide(frame) -> (label, confidence, probabilities)``.

    Parameters
    ----------
    model : scratchpilot.nn.Sequential
        With ``metadata["labels"]`` (class index → label) and ``metadata["preprocessing"]`` (the spec).
    """

    def __init__(self, model, policy: str = "argmax", seed: int | None = 0) -> None:
        from .preprocess import from_metadata

        if policy not in ("argmax", "sample"):
            raise ValueError(f"policy must be 'argmax' or 'sample', got {policy!r}")
        #: "argmax" takes the most probable label; "sample" draws a label from the probabilities, which
        #: reproduces the expert's pulse-width steering (it taps left/right to hold a steering angle, so
        #: in a bend the right answer is "left 60% of the time", not "always left")
        self.policy = policy
        self._rng = np.random.default_rng(seed)

        meta = model.metadata or {}
        if "labels" not in meta or "preprocessing" not in meta:
            raise ValueError("not a pilot model: its metadata has no 'labels' and 'preprocessing' "
                             "(train one with 'scratchpilot car train')")
        self.model = model
        self.labels: list[str] = list(meta["labels"])
        self.preprocess = from_metadata(meta)
        self.history_lag = int(meta.get("history_lag", 0))
        if model.n_outputs != len(self.labels):
            raise ValueError(f"model has {model.n_outputs} outputs but {len(self.labels)} labels")
        self._past: list[np.ndarray] = []

    def reset(self) -> None:
        """Forget earlier frames (call at the start of each drive)."""
        self._past = []

    def features(self, frame: np.ndarray) -> np.ndarray:
        """The network input for one frame: its preprocessed pixels, plus — with ``history_lag`` k — the
        change since k frames ago, which is how a single camera sees speed. (1, F) or (1, 2F)."""
        x = self.preprocess(frame)
        if not self.history_lag:
            return x
        self._past.append(x)
        if len(self._past) > self.history_lag + 1:
            self._past.pop(0)
        return np.concatenate([x, x - self._past[0]], axis=1)

    @classmethod
    def load(cls, path, policy: str = "argmax", seed: int | None = 0) -> Pilot:
        from .. import nn

        return cls(nn.load(path), policy=policy, seed=seed)

    def decide(self, frame: np.ndarray) -> tuple[str, float, np.ndarray]:
        """Preprocess one (H, W, 3) uint8 frame and pick a label (by the pilot's policy); the confidence
        is the probability of the picked label."""
        probabilities = self.model.predict_proba(self.features(frame))[0]
        if self.policy == "sample":
            cumulative = np.cumsum(probabilities, dtype=np.float64)
            k = min(int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1])), len(probabilities) - 1)
        else:
            k = int(probabilities.argmax())
        return self.labels[k], float(probabilities[k]), probabilities


@dataclass
class SafetyGate:
    """Decides whether a command may go to the car, or the car must stop — and says why.

    Stops when the newest frame is older than ``max_frame_age`` seconds, when the prediction's confidence
    is below ``min_confidence``, or when a link or the e-stop reports a fault. ``None`` disables a check.
    """

    max_frame_age: float | None = 0.2
    min_confidence: float | None = None

    def check(self, frame_age: float | None, confidence: float | None, link_ok: bool = True,
              estop: bool = False) -> str | None:
        """Return None when driving is safe, else the reason to stop."""
        if estop:
            return "e-stop pressed"
        if not link_ok:
            return "link lost"
        if self.max_frame_age is not None and frame_age is not None and frame_age > self.max_frame_age:
            return f"stale frame ({frame_age * 1000:.0f} ms > {self.max_frame_age * 1000:.0f} ms)"
        if self.min_confidence is not None and confidence is not None and confidence < self.min_confidence:
            return f"low confidence ({confidence:.2f} < {self.min_confidence:.2f})"
        return None


@dataclass
class LoopStats:
    """Timings and events of one run of the loop."""

    steps: int = 0
    decide_ms: list[float] = field(default_factory=list)
    loop_seconds: float = 0.0
    labels: dict[str, int] = field(default_factory=dict)
    stops: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        d = np.asarray(self.decide_ms) if self.decide_ms else np.zeros(1)
        return {"steps": self.steps,
                "decide_ms_p50": float(np.percentile(d, 50)), "decide_ms_p99": float(np.percentile(d, 99)),
                "decide_ms_max": float(d.max()),
                "loop_hz": self.steps / self.loop_seconds if self.loop_seconds else 0.0,
                "labels": dict(self.labels), "stops": list(self.stops)}


def with_history(features: np.ndarray, groups: np.ndarray, lag: int) -> np.ndarray:
    """Training-side twin of :meth:`Pilot.features`: append ``x_t − x_{t−lag}`` within each group
    (episode), using the group's first frame where t < lag. features (N, F) in time order → (N, 2F)."""
    if not lag:
        return features
    previous = np.empty_like(features)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        previous[idx] = features[idx[np.maximum(np.arange(len(idx)) - lag, 0)]]
    return np.concatenate([features, features - previous], axis=1)


def run_pilot_loop(source, pilot: Pilot, actuator, *, done: Callable[[], bool],
                   safety: SafetyGate | None = None, clock: Callable[[], float] = time.monotonic,
                   max_steps: int | None = None, on_step=None) -> LoopStats:
    """Drive until ``done()`` (or ``max_steps``): read a frame, decide, check safety, act.

    ``on_step(frame, label, confidence, stop_reason)`` is called each step (for videos and logs).
    The decide latency (preprocess + forward pass) is measured on every step.
    """
    from ..nn import blas_threads

    stats = LoopStats()
    start = time.perf_counter()
    with blas_threads(1):  # one frame at a time: threads only add latency (p99 13 ms → under 1 ms here)
        _loop(source, pilot, actuator, done, safety, clock, max_steps, on_step, stats)
    stats.loop_seconds = time.perf_counter() - start
    return stats


def _loop(source, pilot, actuator, done, safety, clock, max_steps, on_step, stats: LoopStats) -> None:
    while not done() and (max_steps is None or stats.steps < max_steps):
        frame, timestamp = source.read()
        t0 = time.perf_counter()
        label, confidence, _ = pilot.decide(frame)
        stats.decide_ms.append((time.perf_counter() - t0) * 1000)
        reason = None
        if safety is not None:
            reason = safety.check(frame_age=clock() - timestamp, confidence=confidence)
        if reason is None:
            actuator.send(label)
        else:
            actuator.stop()
            stats.stops.append({"step": stats.steps, "reason": reason})
            label = "stop"
        stats.labels[label] = stats.labels.get(label, 0) + 1
        if on_step is not None:
            on_step(frame, label, confidence, reason)
        stats.steps += 1
        if reason is not None:
            break
