"""Photometric augmentation: recorded frames shown again under other light, colour and camera noise.

A pilot trained on one afternoon's frames learns that afternoon's colours. Training on copies of the
frames as another camera on another day would have seen them teaches it that they do not matter. Only
the pixels change, never the geometry, so every label stays right.

Each copy of a run of frames (a recorded chunk, a few seconds of driving) gets one *look*, drawn at
random: the light and the colours of a scene do not flicker from frame to frame, and the pilot's
frame-change input ``x_t − x_{t−k}`` must see the same look on both frames. Camera noise is fresh on
every frame, as a camera's is. In order, on pixel values v in [0, 1]:

1. **colour shift** (before the grayscale step): each channel gets its own gain ``1 + u`` and offset,
   u uniform in ±``channel_gain``, offsets uniform in ±``colour_shift`` grey levels;
2. **gamma**: v ** γ, γ log-uniform in ``gamma``;
3. **contrast** about mid-grey: 0.5 + c (v − 0.5), c uniform in ``contrast``;
4. **brightness**: b v, b uniform in ``brightness``;
5. **blur**, with probability ``blur``: a 3x3 box filter (an out-of-focus or moving camera);
6. **noise**: Gaussian, σ uniform in ``noise`` grey levels, fresh per pixel and frame.

The settings are a JSON-able spec stored in the model file (``metadata["augmentation"]``), with the
seed, so a training run can be repeated and a reader sees what the pilot was trained against.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

METADATA_KEY = "augmentation"

#: the defaults ``car train --augment`` and the demo use: ranges wide enough to cover dusk (0.6), a
#: brighter day, σ = 12 camera noise and another floor colour, each measured in bench/pilot_appearance.py
DEFAULT_AUGMENTATION: dict[str, Any] = {
    "copies": 1,
    "brightness": [0.45, 1.3],
    "contrast": [0.6, 1.3],
    "gamma": [0.7, 1.4],
    "channel_gain": 0.25,
    "colour_shift": 30.0,
    "blur": 0.2,
    "noise": [0.0, 16.0],
    "seed": 0,
}

_RANGES = ("brightness", "contrast", "gamma", "noise")
_AMOUNTS = ("channel_gain", "colour_shift")
_FIELDS = ("copies", *_RANGES, *_AMOUNTS, "blur", "seed")
#: the identity for each field: what "off" means when a field is left out of a spec
_OFF: dict[str, Any] = {"copies": 1, "brightness": [1.0, 1.0], "contrast": [1.0, 1.0], "gamma": [1.0, 1.0],
                        "noise": [0.0, 0.0], "channel_gain": 0.0, "colour_shift": 0.0, "blur": 0.0, "seed": 0}
_LIMITS = {"brightness": (0.05, 4.0), "contrast": (0.05, 4.0), "gamma": (0.1, 10.0), "noise": (0.0, 128.0)}


class AugmentationError(ValueError):
    """An augmentation spec that cannot be used; the message names the field."""


class Augmenter:
    """Draw looks and apply them: ``augmenter(frames, rng)`` -> frames of the same shape, uint8.

    Parameters
    ----------
    spec : mapping
        Fields of :data:`DEFAULT_AUGMENTATION`; a field left out is off (its identity).
    """

    def __init__(self, spec: Mapping[str, Any]):
        self._spec = _normalise(spec)

    @property
    def spec(self) -> dict[str, Any]:
        """The normalised spec (a fresh JSON-able dict), to store in the model file."""
        return json.loads(json.dumps(self._spec))

    @property
    def copies(self) -> int:
        """How many augmented copies of the recorded frames training adds."""
        return self._spec["copies"]

    @property
    def seed(self) -> int:
        """The seed the training run's looks are drawn from."""
        return self._spec["seed"]

    def draw_look(self, rng: np.random.Generator) -> dict[str, Any]:
        """One look: the gains, offsets, γ, contrast, brightness, blur and noise σ of a copy."""
        s = self._spec
        gamma_low, gamma_high = np.log(s["gamma"])
        return {"gain": 1.0 + rng.uniform(-s["channel_gain"], s["channel_gain"], size=3),
                "offset": rng.uniform(-s["colour_shift"], s["colour_shift"], size=3) / 255.0,
                "gamma": float(np.exp(rng.uniform(gamma_low, gamma_high))),
                "contrast": float(rng.uniform(*s["contrast"])), "brightness": float(rng.uniform(*s["brightness"])),
                "blur": bool(rng.random() < s["blur"]), "noise": float(rng.uniform(*s["noise"]))}

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Frames (N, H, W[, C]) uint8 under one look drawn from ``rng``."""
        frames = np.asarray(frames)
        if frames.dtype != np.uint8:
            raise AugmentationError(f"frames must be uint8 camera pixels, got {frames.dtype}")
        look = self.draw_look(rng)
        v = frames.astype(np.float32) / 255.0
        if v.ndim == 4 and v.shape[-1] >= 3:
            v[..., :3] = v[..., :3] * look["gain"].astype(np.float32) + look["offset"].astype(np.float32)
        else:
            v = v * float(look["gain"].mean()) + float(look["offset"].mean())
        np.clip(v, 0.0, 1.0, out=v)
        if look["gamma"] != 1.0:
            np.power(v, look["gamma"], out=v)
        v = (v - 0.5) * look["contrast"] + 0.5
        v *= look["brightness"]
        if look["blur"]:
            v = box_blur(v)
        if look["noise"]:
            v += rng.normal(0.0, look["noise"] / 255.0, size=v.shape).astype(np.float32)
        return np.clip(np.rint(v * 255.0), 0, 255).astype(np.uint8)


def box_blur(images: np.ndarray) -> np.ndarray:
    """A 3x3 mean filter over axes 1 and 2 of (N, H, W[, C]), the border repeated."""
    padded = np.pad(images, [(0, 0), (1, 1), (1, 1)] + [(0, 0)] * (images.ndim - 3), mode="edge")
    rows = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]
    return (rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]) / 9.0


def _normalise(spec: Any) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise AugmentationError(f"an augmentation spec must be a JSON object, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(_FIELDS))
    if unknown:
        raise AugmentationError(f"unknown augmentation field(s) {', '.join(map(repr, unknown))}; "
                                f"known: {', '.join(_FIELDS)}")
    out = {**_OFF, **spec}
    copies = out["copies"]
    if isinstance(copies, bool) or not isinstance(copies, (int, np.integer)) or not 1 <= copies <= 16:
        raise AugmentationError(f"augmentation field 'copies' must be an integer from 1 to 16, got {copies!r}")
    for field in _RANGES:
        value = out[field]
        low_limit, high_limit = _LIMITS[field]
        if (not isinstance(value, (list, tuple)) or len(value) != 2 or not all(_is_number(v) for v in value)
                or not low_limit <= value[0] <= value[1] <= high_limit):
            raise AugmentationError(f"augmentation field {field!r} must be [low, high] with {low_limit} <= low "
                                    f"<= high <= {high_limit}, got {value!r}")
        out[field] = [float(value[0]), float(value[1])]
    for field, limit in (("channel_gain", 0.9), ("colour_shift", 128.0), ("blur", 1.0)):
        value = out[field]
        if not _is_number(value) or not 0.0 <= value <= limit:
            raise AugmentationError(f"augmentation field {field!r} must be a number from 0 to {limit}, "
                                    f"got {value!r}")
        out[field] = float(value)
    if isinstance(out["seed"], bool) or not isinstance(out["seed"], (int, np.integer)) or out["seed"] < 0:
        raise AugmentationError(f"augmentation field 'seed' must be an integer >= 0, got {out['seed']!r}")
    out["copies"], out["seed"] = int(copies), int(out["seed"])
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and bool(np.isfinite(value))
