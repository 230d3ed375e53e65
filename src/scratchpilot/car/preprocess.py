"""The one frame preprocessing, shared by ``car train``, ``car check`` and ``car drive``.

A pilot must see frames exactly as they were seen in training: the same crop, colour handling, size and
scale. So the preprocessing is described by a small JSON-able *spec* that is stored in the model file
(``model.metadata["preprocessing"]``) and rebuilt from there by :func:`from_spec` when driving.

Steps, in this order (all optional except the last):

1. **crop** a region of interest (``"carracing"`` drops the simulator's indicator bar at the bottom);
2. **downsample** by block means of ``(rows, cols)`` pixels (rows/cols that do not fill a block are dropped);
3. **grayscale** with the ITU-R BT.601 luma weights ``0.299 R + 0.587 G + 0.114 B`` or, with
   ``"colour": "principal"``, along each frame's own *principal colour axis* (below);
4. **scale** to ``[0, 1]`` (divide by 255);
5. **normalise** each frame on its own: ``"zscore"`` (mean 0, standard deviation 1) or ``"stretch"``
   (its darkest pixel 0, its brightest 1), so that dusk and a brighter floor look like noon;
6. **edges**: append a channel of gradient magnitudes ``|∇I|`` (central differences), which marks the
   road's borders whichever side is the lighter one;
7. flatten to one float32 row per frame.

The principal colour axis: a frame is mostly road and grass, so the direction in RGB along which its
pixels vary most is the road-to-grass colour difference, whatever the two colours are. Projecting each
pixel onto that axis keeps the contrast where the fixed luma weights can lose it (a red floor and green
tape of equal brightness). An axis has no sign: it is chosen so that the minority of the pixels, the road,
lies on the dark side (the projection's skewness is made ≤ 0), the way the standard track looks.

Steps 2 to 4 are linear, so they are fused: the block sums are taken first (on the smallest possible
array) and one set of per-channel weights applies the block mean, the luma and the scaling at once.
NumPy only; a 96x96 frame takes tens of microseconds.

Spec fields (see :func:`from_spec`)::

    {"version": 2,
     "input_shape": [96, 96, 3],          # optional; checked against every frame when given
     "crop": "carracing" | {"top": 0, "bottom": 84, "left": 0, "right": 96} | null,
     "downsample": 2 | [2, 2],            # block size in pixels (1 = none)
     "size": [42, 48],                    # alternative to "downsample": the target rows, cols
     "grayscale": true,
     "colour": "luma" | "principal",      # how colour becomes grey (version 2; version 1 means luma)
     "scale": true,
     "normalise": null | "zscore" | "stretch",
     "edges": false}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .sim.env import FRAME_SHAPE, INDICATOR_BAR_ROWS

SPEC_VERSION = 2
#: versions this build reads: version 1 specs (before colour, normalise and edges) mean luma, none, none
READABLE_VERSIONS = (1, 2)
COLOUR_MODES = ("luma", "principal")
NORMALISE_MODES = (None, "zscore", "stretch")
#: a frame's spread is never taken below this (in [0, 1] units): an evenly coloured frame is not blown up
#: into noise
MIN_SPREAD = 4.0 / 255.0
METADATA_KEY = "preprocessing"  #: where the spec lives in ``model.metadata``

#: named crop boxes; ``carracing`` keeps everything above the 12-row indicator bar of a 96x96 frame
CROP_PRESETS: dict[str, dict[str, int]] = {
    "carracing": {"top": 0, "bottom": FRAME_SHAPE[0] - INDICATOR_BAR_ROWS, "left": 0, "right": FRAME_SHAPE[1]},
}

#: ITU-R BT.601 luma weights for R, G, B
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

_FIELDS = ("version", "input_shape", "crop", "downsample", "size", "grayscale", "colour", "scale", "normalise",
           "edges")
#: frames processed at a time in a batch: small enough that the temporaries stay in cache
_BATCH = 32


class PreprocessSpecError(ValueError):
    """A preprocessing spec (or a frame) that cannot be used; the message names the field."""


class FramePreprocessor:
    """Turn uint8 camera frames into float32 network inputs, as described by a spec.

    Build it with :func:`from_spec` (or ``FramePreprocessor(spec)``); :attr:`spec` gives back the
    normalised spec to store in the model file.

    Parameters
    ----------
    spec : mapping
        The preprocessing spec (see the module docstring); validated, with clear errors.
    """

    def __init__(self, spec: Mapping[str, Any] | None = None):
        self._spec = _normalise(dict(spec or {}))
        crop = self._spec["crop"]
        self._crop = None if crop is None else (crop["top"], crop["bottom"], crop["left"], crop["right"])
        self._block = tuple(self._spec["downsample"])
        self._input_shape = None if self._spec["input_shape"] is None else tuple(self._spec["input_shape"])
        self._weights_cache: dict[int, np.ndarray] = {}
        if self._input_shape is not None:
            self.output_shape(self._input_shape)  # fail now, not at the first frame

    @property
    def spec(self) -> dict[str, Any]:
        """The normalised spec (a fresh JSON-able dict): store it as ``model.metadata["preprocessing"]``."""
        return json.loads(json.dumps(self._spec))

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """The frame shape ``(H, W)`` or ``(H, W, C)`` this preprocessor insists on, or None for any."""
        return self._input_shape

    def output_shape(self, frame_shape: Sequence[int] | None = None) -> tuple[int, int, int]:
        """Shape ``(rows, cols, channels)`` of one processed frame before flattening.

        Parameters
        ----------
        frame_shape : (H, W) or (H, W, C), optional
            Defaults to the spec's ``input_shape``.
        """
        shape = tuple(frame_shape) if frame_shape is not None else self._input_shape
        if shape is None:
            raise PreprocessSpecError("the output shape needs a frame shape: the spec has no input_shape")
        height, width, channels = _frame_dims(shape)
        top, bottom, left, right = self._crop_box(height, width)
        block_rows, block_cols = self._block
        rows, cols = (bottom - top) // block_rows, (right - left) // block_cols
        if rows < 1 or cols < 1:
            raise PreprocessSpecError(
                f"preprocessing leaves no pixels: the crop is {bottom - top}x{right - left} and the "
                f"downsample block {block_rows}x{block_cols}")
        channels = 1 if self._spec["grayscale"] else channels
        return rows, cols, channels * 2 if self._spec["edges"] else channels

    def feature_count(self, frame_shape: Sequence[int] | None = None) -> int:
        """Number of features per frame, ``F`` (the network's input width)."""
        rows, cols, channels = self.output_shape(frame_shape)
        return rows * cols * channels

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Preprocess one frame or a batch.

        Parameters
        ----------
        frames : uint8 array, (H, W), (H, W, C), (N, H, W) or (N, H, W, C)
            A single frame is recognised by its shape matching ``input_shape`` (or, without one, by
            ``ndim`` 3 with 1, 3 or 4 trailing channels, or ndim 2).

        Returns
        -------
        float32 array, (N, F)
            ``N`` is 1 for a single frame.
        """
        frames = np.asarray(frames)
        if frames.dtype != np.uint8:
            raise PreprocessSpecError(f"frames must be uint8 (camera pixels), got {frames.dtype}")
        batch = self._as_batch(frames)
        if batch.shape[0] <= _BATCH:
            return self._process(batch)
        rows = self.feature_count(batch.shape[1:])
        out = np.empty((batch.shape[0], rows), dtype=np.float32)
        for start in range(0, batch.shape[0], _BATCH):
            out[start:start + _BATCH] = self._process(batch[start:start + _BATCH])
        return out

    def __repr__(self) -> str:
        return f"FramePreprocessor({self._spec!r})"

    # -- internals -----------------------------------------------------------------------------------

    def _as_batch(self, frames: np.ndarray) -> np.ndarray:
        """View ``frames`` as (N, H, W, C)."""
        if self._input_shape is not None:
            expected = self._input_shape
            if frames.shape == expected:
                frames = frames[None]
            elif frames.shape[1:] != expected:
                raise PreprocessSpecError(
                    f"frame shape {_shape_text(frames.shape)} does not match the preprocessing input shape "
                    f"{_shape_text(expected)} (the model was trained on other frames: check the camera size)")
        elif frames.ndim == 2 or (frames.ndim == 3 and frames.shape[-1] in (1, 3, 4)):
            frames = frames[None]
        elif frames.ndim not in (3, 4):
            raise PreprocessSpecError(f"frames must be (H, W[, C]) or (N, H, W[, C]), got {_shape_text(frames.shape)}")
        return frames[..., None] if frames.ndim == 3 else frames

    def _crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        if self._crop is None:
            return 0, height, 0, width
        top, bottom, left, right = self._crop
        bottom = height if bottom is None else bottom
        right = width if right is None else right
        if not (0 <= top < bottom <= height and 0 <= left < right <= width):
            raise PreprocessSpecError(
                f"crop box rows {top}:{bottom}, cols {left}:{right} does not fit a {height}x{width} frame")
        return top, bottom, left, right

    def _channel_weights(self, channels: int) -> np.ndarray:
        """Per-channel factors that turn a block *sum* into the final value (mean, luma, scale)."""
        weights = self._weights_cache.get(channels)
        if weights is None:
            factor = 1.0 / (self._block[0] * self._block[1])
            if self._spec["scale"]:
                factor /= 255.0
            if self._principal(channels):
                weights = np.ones(channels)  # per-channel block means: the axis is found per frame
            elif self._spec["grayscale"] and channels >= 3:
                # RGBA frames: the alpha channel gets weight 0
                weights = np.zeros(channels, dtype=np.float64)
                weights[:3] = LUMA_WEIGHTS
            elif self._spec["grayscale"]:
                weights = np.full(channels, 1.0 / channels)
            else:
                weights = np.ones(channels)
            weights = (weights * factor).astype(np.float32)
            self._weights_cache[channels] = weights
        return weights

    def _process(self, batch: np.ndarray) -> np.ndarray:
        count, height, width, channels = batch.shape
        top, bottom, left, right = self._crop_box(height, width)
        block_rows, block_cols = self._block
        rows, cols = (bottom - top) // block_rows, (right - left) // block_cols
        if rows < 1 or cols < 1:
            self.output_shape(batch.shape[1:])  # raises the clear error
        region = batch[:, top:top + rows * block_rows, left:left + cols * block_cols]
        # Block sums in integers, adding the k strided slices (much faster than .sum over a length-k axis);
        # only the small summed array is converted to float. uint16 holds up to 257 summed pixels.
        accumulator = np.uint16 if block_rows * block_cols <= 257 else np.uint32
        if block_rows > 1:
            region = region.reshape(count, rows, block_rows, cols * block_cols * channels)
            summed = region[:, :, 0].astype(accumulator)
            for i in range(1, block_rows):
                summed += region[:, :, i]
            region = summed
        region = region.reshape(count, rows, cols, block_cols, channels)
        if block_cols > 1:
            summed = region[:, :, :, 0].astype(accumulator)
            for i in range(1, block_cols):
                summed += region[:, :, :, i]
            region = summed
        else:
            region = region[:, :, :, 0]
        values = region.astype(np.float32)
        weights = self._channel_weights(channels)
        if self._principal(channels):
            out = principal_grey(values.reshape(count, rows * cols, channels) * weights)
        elif self._spec["grayscale"] and channels > 1:
            # a weighted sum channel by channel, not ``@``: a BLAS product of N×3 by 3 may round a frame
            # differently with the batch around it, and a frame must give the same features alone or batched
            out = values[..., 0] * weights[0]
            for c in range(1, channels):
                out += values[..., c] * weights[c]
        else:
            out = values * weights
        out = out.reshape(count, rows * cols, -1)
        if self._spec["normalise"] is not None:
            out = normalise_frames(out, self._spec["normalise"])
        if self._spec["edges"]:
            out = append_edges(out, rows, cols)
        return out.reshape(count, -1)

    def _principal(self, channels: int) -> bool:
        return self._spec["colour"] == "principal" and channels >= 3


def principal_grey(pixels: np.ndarray) -> np.ndarray:
    """Project each frame's pixels onto its principal colour axis: (N, P, C) colours -> (N, P, 1).

    For one frame with pixel colours c_p and mean colour c̄, the axis a is the top eigenvector of the
    3x3 covariance (1/P) Σ_p (c_p − c̄)(c_p − c̄)ᵀ, signed so that the skewness of a·(c_p − c̄) is ≤ 0
    (the minority, the road, is dark). The result is ḡ + a·(c_p − c̄), with ḡ the frame's mean luma, so
    that a frame keeps its overall brightness and only the grey axis adapts.
    """
    colours = pixels[..., :3].astype(np.float64)
    mean = colours.mean(axis=1, keepdims=True)
    centred = colours - mean
    covariance = np.einsum("npi,npj->nij", centred, centred) / colours.shape[1]
    _, vectors = np.linalg.eigh(covariance)
    axis = vectors[:, :, -1]  # (N, 3), the largest eigenvalue's vector
    projected = np.einsum("npi,ni->np", centred, axis)
    skew = np.einsum("np,np,np->n", projected, projected, projected)
    projected *= np.where(skew > 0, -1.0, 1.0)[:, None]
    grey = mean[:, 0] @ np.asarray(LUMA_WEIGHTS)
    return (projected + grey[:, None]).astype(np.float32)[..., None]


def normalise_frames(values: np.ndarray, mode: str) -> np.ndarray:
    """Normalise each frame (axis 0) over its pixels and channels: ``"zscore"`` gives (x − μ) / max(σ, s₀),
    ``"stretch"`` gives (x − min) / max(max − min, s₀), with the floor s₀ = :data:`MIN_SPREAD` so that a flat
    frame stays flat."""
    flat = values.reshape(values.shape[0], -1)
    if mode == "zscore":
        low = flat.mean(axis=1, keepdims=True)
        spread = flat.std(axis=1, keepdims=True)
    else:
        low = flat.min(axis=1, keepdims=True)
        spread = flat.max(axis=1, keepdims=True) - low
    return ((flat - low) / np.maximum(spread, MIN_SPREAD)).astype(np.float32).reshape(values.shape)


def append_edges(values: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Append the gradient magnitude of each channel, √((∂I/∂x)² + (∂I/∂y)²) by central differences
    (one-sided at the border): (N, P, C) -> (N, P, 2C)."""
    image = values.reshape(values.shape[0], rows, cols, -1)
    dy = np.gradient(image, axis=1) if rows > 1 else np.zeros_like(image)
    dx = np.gradient(image, axis=2) if cols > 1 else np.zeros_like(image)
    edges = np.sqrt(dx * dx + dy * dy).reshape(values.shape)
    return np.concatenate([values, edges.astype(np.float32)], axis=2)


def from_spec(spec: Mapping[str, Any]) -> FramePreprocessor:
    """Build a :class:`FramePreprocessor` from a spec dict; raises :class:`PreprocessSpecError` naming the field."""
    if not isinstance(spec, Mapping):
        raise PreprocessSpecError(f"a preprocessing spec must be a JSON object, got {type(spec).__name__}")
    return FramePreprocessor(spec)


def from_metadata(metadata: Mapping[str, Any], where: str = "model") -> FramePreprocessor:
    """The preprocessor stored in a model's ``metadata`` (as written by ``car train``)."""
    spec = metadata.get(METADATA_KEY) if isinstance(metadata, Mapping) else None
    if spec is None:
        raise PreprocessSpecError(f"{where} has no '{METADATA_KEY}' spec in its metadata: was it trained by car train?")
    try:
        return from_spec(spec)
    except PreprocessSpecError as err:
        raise PreprocessSpecError(f"{where}: {err}") from None


def default_spec(frame_shape: Sequence[int], max_features: int = 2500) -> dict[str, Any]:
    """A sensible spec for frames of ``frame_shape``: grayscale, scaled, downsampled to <= ``max_features``.

    96x96x3 simulator frames get the ``carracing`` crop and 2x2 blocks (42x48 = 2016 features); other
    frames get the smallest square block that tiles the frame and fits ``max_features`` (a 120x160 tub
    frame: 4x4 -> 30x40 = 1200).
    """
    height, width, _ = _frame_dims(tuple(frame_shape))
    spec: dict[str, Any] = {"version": SPEC_VERSION, "input_shape": list(frame_shape), "grayscale": True, "scale": True}
    if tuple(frame_shape) == FRAME_SHAPE:
        spec.update(crop="carracing", downsample=2)
        return spec
    fitting = [k for k in range(1, min(height, width) + 1) if (height // k) * (width // k) <= max_features]
    if not fitting:
        raise PreprocessSpecError(f"a {height}x{width} frame cannot be reduced to {max_features} features")
    # prefer a block that tiles the frame exactly, so that no edge pixels are dropped
    whole = [k for k in fitting if height % k == 0 and width % k == 0]
    spec.update(crop=None, downsample=(whole or fitting)[0])
    return spec


# -- validation -----------------------------------------------------------------------------------------

def _normalise(spec: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(spec) - set(_FIELDS))
    if unknown:
        raise PreprocessSpecError(f"unknown preprocessing field(s) {', '.join(map(repr, unknown))}; "
                                  f"known: {', '.join(_FIELDS)}")
    version = spec.get("version", SPEC_VERSION)
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise PreprocessSpecError(f"preprocessing spec version {version!r} is not supported (this build reads "
                                  f"versions {', '.join(map(str, READABLE_VERSIONS))})")
    if version == 1:
        newer = sorted({"colour", "normalise", "edges"} & set(spec))
        if newer:
            raise PreprocessSpecError(f"preprocessing field(s) {', '.join(map(repr, newer))} need spec version 2")
    input_shape = spec.get("input_shape")
    if input_shape is not None:
        if (not isinstance(input_shape, (list, tuple)) or len(input_shape) not in (2, 3)
                or not all(_is_int(v) and v > 0 for v in input_shape)):
            raise PreprocessSpecError(f"preprocessing field 'input_shape' must be [H, W] or [H, W, C] positive "
                                      f"integers, got {input_shape!r}")
        input_shape = [int(v) for v in input_shape]
    for flag in ("grayscale", "scale"):
        if not isinstance(spec.get(flag, True), bool):
            raise PreprocessSpecError(f"preprocessing field {flag!r} must be true or false, got {spec[flag]!r}")
    crop = _normalise_crop(spec.get("crop"))
    if "downsample" in spec and "size" in spec:
        raise PreprocessSpecError("give either 'downsample' or 'size' in a preprocessing spec, not both")
    if "size" in spec:
        downsample = _block_for_size(spec["size"], crop, input_shape)
    else:
        downsample = _normalise_pair(spec.get("downsample", 1), "downsample")
    colour = spec.get("colour", "luma")
    if colour not in COLOUR_MODES:
        raise PreprocessSpecError(f"preprocessing field 'colour' must be one of {', '.join(COLOUR_MODES)}, "
                                  f"got {colour!r}")
    if colour == "principal" and not spec.get("grayscale", True):
        raise PreprocessSpecError("preprocessing field 'colour': 'principal' makes one grey channel, so it "
                                  "needs 'grayscale': true")
    normalise = spec.get("normalise")
    if normalise not in NORMALISE_MODES:
        raise PreprocessSpecError(f"preprocessing field 'normalise' must be null, 'zscore' or 'stretch', "
                                  f"got {normalise!r}")
    if not isinstance(spec.get("edges", False), bool):
        raise PreprocessSpecError(f"preprocessing field 'edges' must be true or false, got {spec['edges']!r}")
    return {"version": SPEC_VERSION, "input_shape": input_shape, "crop": crop, "downsample": downsample,
            "grayscale": spec.get("grayscale", True), "colour": colour, "scale": spec.get("scale", True),
            "normalise": normalise, "edges": spec.get("edges", False)}


def _normalise_crop(crop: Any) -> dict[str, int | None] | None:
    if crop is None:
        return None
    if isinstance(crop, str):
        if crop not in CROP_PRESETS:
            raise PreprocessSpecError(f"unknown crop preset {crop!r}; known: {', '.join(CROP_PRESETS)}")
        return dict(CROP_PRESETS[crop])
    if not isinstance(crop, Mapping):
        raise PreprocessSpecError(f"preprocessing field 'crop' must be null, a preset name or "
                                  f"{{'top', 'bottom', 'left', 'right'}}, got {crop!r}")
    unknown = sorted(set(crop) - {"top", "bottom", "left", "right"})
    if unknown:
        raise PreprocessSpecError(f"unknown crop field(s) {', '.join(map(repr, unknown))}; known: top, bottom, "
                                  "left, right")
    box: dict[str, int | None] = {}
    for key, default in (("top", 0), ("bottom", None), ("left", 0), ("right", None)):
        value = crop.get(key, default)
        if value is not None and not (_is_int(value) and value >= 0):
            raise PreprocessSpecError(f"crop field {key!r} must be a pixel index >= 0, got {value!r}")
        box[key] = None if value is None else int(value)
    for low, high in (("top", "bottom"), ("left", "right")):
        if box[high] is not None and box[high] <= box[low]:
            raise PreprocessSpecError(f"crop box is empty: {low}={box[low]} >= {high}={box[high]}")
    return box


def _normalise_pair(value: Any, field: str) -> list[int]:
    pair = [value, value] if _is_int(value) else value
    if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(_is_int(v) and v >= 1 for v in pair)):
        raise PreprocessSpecError(f"preprocessing field {field!r} must be a positive integer or [rows, cols], "
                                  f"got {value!r}")
    return [int(pair[0]), int(pair[1])]


def _block_for_size(size: Any, crop: dict | None, input_shape: list[int] | None) -> list[int]:
    rows, cols = _normalise_pair(size, "size")
    if input_shape is None:
        raise PreprocessSpecError("preprocessing field 'size' needs 'input_shape' (to work out the block size)")
    height, width = input_shape[0], input_shape[1]
    if crop is not None:
        height = (crop["bottom"] if crop["bottom"] is not None else height) - crop["top"]
        width = (crop["right"] if crop["right"] is not None else width) - crop["left"]
    if height % rows or width % cols:
        raise PreprocessSpecError(f"preprocessing 'size' {rows}x{cols} does not divide the {height}x{width} "
                                  "cropped frame; block-mean downsampling needs whole blocks")
    return [height // rows, width // cols]


def _frame_dims(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if len(shape) == 3:
        return shape[0], shape[1], shape[2]
    raise PreprocessSpecError(f"a frame shape is (H, W) or (H, W, C), got {_shape_text(shape)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(v) for v in shape)
