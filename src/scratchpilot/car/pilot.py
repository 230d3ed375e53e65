"""The pilot: a trained network plus the preprocessing it was trained with.

``Pilot.decide`` applies the model's own stored preprocessing spec, so driving sees frames exactly as
training did; the vehicle loop runs it as :class:`~scratchpilot.car.parts.PilotPart`, in the simulator
and on the real car alike.
"""

from __future__ import annotations

import math

import numpy as np

from ..util.text import brief

#: the longest history lag (frames) a pilot may look back
MAX_HISTORY_LAG = 100


class PilotModelError(ValueError):
    """A model file whose metadata does not describe a usable pilot; the message names the field."""


def pilot_metadata(metadata) -> dict:
    """The metadata fields a pilot reads, checked (the one place that does): ``labels`` (a list of
    distinct names), ``history_lag`` (0..MAX_HISTORY_LAG), ``input_layout`` ("flat" or "image") and, for
    the image layout, ``image_shape`` (rows, cols, channels; None for flat). The preprocessing spec is
    checked by :func:`~scratchpilot.car.preprocess.from_metadata`. Raises :class:`PilotModelError`."""
    meta = metadata if isinstance(metadata, dict) else {}
    task = meta.get("task")
    if task is not None and task != "pilot" or "labels" not in meta or "preprocessing" not in meta:
        said = f"its metadata says task {task!r}" if task not in (None, "pilot") else \
            "its metadata has no 'labels' and 'preprocessing'"
        raise PilotModelError(f"not a pilot model: {said} (train one with 'scratchpilot car train')")

    def bad(field: str, wanted: str):
        return PilotModelError(f"model metadata field {field!r} must be {wanted}, got {brief(meta.get(field))}")

    labels = meta["labels"]
    if not (isinstance(labels, list) and labels and all(isinstance(n, str) and n for n in labels)
            and len(set(labels)) == len(labels)):
        raise bad("labels", "a list of distinct label names (strings)")
    lag = meta.get("history_lag", 0)
    if isinstance(lag, float) and math.isfinite(lag) and lag == int(lag):
        lag = int(lag)  # 2.0 is 2: JSON does not tell integers from floats
    if isinstance(lag, bool) or not isinstance(lag, int) or not 0 <= lag <= MAX_HISTORY_LAG:
        raise bad("history_lag", f"a whole number of frames from 0 to {MAX_HISTORY_LAG}")
    layout = meta.get("input_layout", "flat")
    if layout not in ("flat", "image"):
        raise bad("input_layout", "'flat' or 'image'")
    image_shape = None
    if layout == "image":
        image_shape = meta.get("image_shape")
        if not (isinstance(image_shape, list) and len(image_shape) == 3 and all(
                isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 1 << 16 for n in image_shape)):
            raise bad("image_shape", "[rows, cols, channels] (positive whole numbers) for an image-input pilot")
        image_shape = tuple(image_shape)
    return {**meta, "labels": list(labels), "history_lag": lag, "input_layout": layout, "image_shape": image_shape}


class Pilot:
    """A trained network plus its preprocessing: ``decide(frame) -> (label, confidence, probabilities)``.

    Parameters
    ----------
    model : scratchpilot.nn.Sequential
        With ``metadata["labels"]`` (class index → label) and ``metadata["preprocessing"]`` (the spec).
    """

    #: None for the flat layout; the preprocessed frame's (rows, cols, channels) for the image layout
    image_shape: tuple[int, int, int] | None = None

    def __init__(self, model, policy: str = "argmax", seed: int | None = 0) -> None:
        from .preprocess import from_metadata

        if policy not in ("argmax", "sample"):
            raise ValueError(f"policy must be 'argmax' or 'sample', got {policy!r}")
        #: "argmax" takes the most probable label; "sample" draws a label from the probabilities, which
        #: reproduces the expert's pulse-width steering (it taps left/right to hold a steering angle, so
        #: in a bend the right answer is "left 60% of the time", not "always left")
        self.policy = policy
        self._rng = np.random.default_rng(seed)

        meta = pilot_metadata(model.metadata)
        self.model = model
        self.labels: list[str] = meta["labels"]
        self.preprocess = from_metadata(meta)
        self.history_lag: int = meta["history_lag"]
        # input layout "flat": one row [x, x − x_{t−k}] (the MLP); "image": (H, W, 2C), the frame and its
        # change as channels (the CNN), recognised below by image_shape being set
        self.image_shape = meta["image_shape"]
        if model.n_outputs != len(self.labels):
            raise PilotModelError(f"model has {model.n_outputs} outputs but {len(self.labels)} labels")
        self._past: list[np.ndarray] = []

    def reset(self) -> None:
        """Forget earlier frames (call at the start of each drive)."""
        self._past = []

    def features(self, frame: np.ndarray) -> np.ndarray:
        """The network input for one frame: its preprocessed pixels, plus — with ``history_lag`` k — the
        change since k frames ago, which is how a single camera sees speed. (1, F) or (1, 2F) flat, or
        (1, H, W, C) / (1, H, W, 2C) in the image layout."""
        x = self.preprocess(frame)
        parts = (x,)
        if self.history_lag:
            self._past.append(x)
            if len(self._past) > self.history_lag + 1:
                self._past.pop(0)
            parts = (x, x - self._past[0])
        if self.image_shape is not None:
            return as_image(parts, self.image_shape)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

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


def as_image(parts, image_shape) -> np.ndarray:
    """Stack flat feature blocks, each (N, H·W·C) in (row, col, channel) order, as the channels of one
    image: (N, H, W, C·len(parts)) -- the frame and its change side by side in each pixel."""
    rows, cols, channels = image_shape
    return np.concatenate([p.reshape(p.shape[0], rows, cols, channels) for p in parts], axis=3)


def with_history(features: np.ndarray, groups: np.ndarray, lag: int, image_shape=None) -> np.ndarray:
    """Training-side twin of :meth:`Pilot.features`: append ``x_t − x_{t−lag}`` within each group
    (episode), using the group's first frame where t < lag. features (N, F) in time order → (N, 2F), or
    with ``image_shape`` (rows, cols, channels) the image layout (N, rows, cols, 2·channels)."""
    if not lag:
        return features if image_shape is None else as_image((features,), image_shape)
    previous = np.empty_like(features)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        previous[idx] = features[idx[np.maximum(np.arange(len(idx)) - lag, 0)]]
    np.subtract(features, previous, out=previous)  # x_t − x_{t−lag}, in place: the arrays are large
    if image_shape is not None:
        return as_image((features, previous), image_shape)
    return np.concatenate([features, previous], axis=1)


def model_inputs(pilot: Pilot, features: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """The network inputs of recorded frames for ``pilot``'s model (checking, reports): its history and
    its input layout, exactly as at drive time."""
    return with_history(features, groups, pilot.history_lag, pilot.image_shape)
