"""The pilot, watched: what its camera frames look like (:mod:`scratchpilot.monitor.image_features`),
kept in the pilot's file as a reference profile at training, and a prediction log of every decision
while it drives (``car drive --log``), read by ``scratchpilot report monitor`` like the web server's.
"""

from __future__ import annotations

import time

import numpy as np

from ..monitor.image_features import FRAME_FEATURES, frame_features


def pilot_profile(frame_features_rows: np.ndarray, *, probabilities: np.ndarray | None, labels,
                  source: str, held_out: str = "validation frames") -> dict:
    """The pilot's reference profile: the frame features of its training frames (rows of
    :func:`frame_features_batch`) and its answers on the held-out frames."""
    from ..monitor.profile import build_profile

    features = {name: frame_features_rows[:, k] for k, name in enumerate(FRAME_FEATURES)}
    return build_profile("frames", features, probabilities=probabilities, labels=[str(x) for x in labels],
                         source=f"{source} ({len(frame_features_rows):,d} frames)",
                         held_out=f"{held_out} ({len(probabilities):,d})" if probabilities is not None else "")


class DriveLogPart:
    """A vehicle part: one log record per decision (frame features, label, confidence, whether the command
    went out, the stop reason) into a :class:`~scratchpilot.monitor.predlog.PredictionLog`."""

    def __init__(self, log, model_id: str):
        self.log, self.model_id = log, model_id
        self.written = 0

    def run(self, image, label, confidence, sent=None, stop=None) -> None:
        if image is None or label is None:
            return
        record = {"t": time.time(), "model": self.model_id, "kind": "frames", "status": 200, "label": label,
                  "confidence": None if confidence is None else round(float(confidence), 6),
                  "features": frame_features(image), "sent": None if sent is None else str(sent),
                  "stop": None if stop is None else str(stop)}
        self.log.write(record)
        self.written += 1
