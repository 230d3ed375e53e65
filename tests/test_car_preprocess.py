"""The one frame preprocessing: exact against a naive reference, spec validation, model round trip, speed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scratchpilot import nn
from scratchpilot.car import preprocess
from scratchpilot.car.preprocess import (
    FramePreprocessor,
    PreprocessSpecError,
    default_spec,
    from_metadata,
    from_spec,
)


def naive(frame: np.ndarray, top, bottom, left, right, block_rows, block_cols, grayscale, scale) -> np.ndarray:
    """Pixel-by-pixel reference: crop, block means, luma, scale, flatten (float64)."""
    image = frame.astype(np.float64)
    if image.ndim == 2:
        image = image[:, :, None]
    image = image[top:bottom, left:right]
    rows, cols = image.shape[0] // block_rows, image.shape[1] // block_cols
    out = np.zeros((rows, cols, image.shape[2]))
    for r in range(rows):
        for c in range(cols):
            block = image[r * block_rows:(r + 1) * block_rows, c * block_cols:(c + 1) * block_cols]
            out[r, c] = block.mean(axis=(0, 1))
    if grayscale:
        out = (out @ np.array([0.299, 0.587, 0.114]))[:, :, None] if out.shape[2] == 3 else out.mean(axis=2)[:, :, None]
    if scale:
        out = out / 255.0
    return out.ravel()


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(0).integers(0, 256, (5, 96, 96, 3), dtype=np.uint8)


@pytest.mark.parametrize(("spec", "box", "expected_features"), [
    ({"crop": "carracing", "downsample": 2}, (0, 84, 0, 96, 2, 2, True, True), 42 * 48),
    ({"crop": {"top": 10, "bottom": 90, "left": 3, "right": 95}, "downsample": [4, 3], "grayscale": False},
     (10, 90, 3, 95, 4, 3, False, True), 20 * 30 * 3),
    ({"downsample": 5, "scale": False}, (0, 96, 0, 96, 5, 5, True, False), 19 * 19),
    ({"crop": {"top": 40}, "grayscale": False, "scale": False}, (40, 96, 0, 96, 1, 1, False, False), 56 * 96 * 3),
])
def test_matches_the_naive_reference(frames, spec, box, expected_features):
    pre = from_spec(spec)
    out = pre(frames)
    assert out.dtype == np.float32 and out.shape == (5, expected_features)
    assert pre.feature_count(frames.shape[1:]) == expected_features
    for i, frame in enumerate(frames):
        assert np.allclose(out[i], naive(frame, *box), atol=2e-6 * (1 if box[-1] else 255))


def test_single_frames_batches_and_grayscale_input_agree(frames):
    pre = from_spec(default_spec((96, 96, 3)))
    batch = pre(frames)
    assert np.array_equal(pre(frames[2]), batch[2:3])
    many = np.concatenate([frames] * 20)  # more than one internal block of frames
    assert np.array_equal(pre(many), np.concatenate([batch] * 20))
    gray = frames[..., 0]
    plain = from_spec({"downsample": 3})
    assert plain(gray).shape == (5, 32 * 32)
    assert np.allclose(plain(gray[0])[0], naive(gray[0], 0, 96, 0, 96, 3, 3, True, True), atol=1e-6)


def test_carracing_crop_ignores_the_indicator_bar(frames):
    pre = from_spec({"crop": "carracing", "downsample": 2})
    changed = frames.copy()
    changed[:, 84:] = 255 - changed[:, 84:]  # the speed, ABS and score display
    assert np.array_equal(pre(changed), pre(frames))
    changed[:, 83] = 255 - changed[:, 83]
    assert not np.array_equal(pre(changed), pre(frames))


def test_spec_survives_json_and_the_model_file(tmp_path, frames):
    pre = from_spec({"input_shape": [96, 96, 3], "crop": "carracing", "size": [21, 24]})
    assert pre.spec["downsample"] == [4, 4] and pre.spec["crop"] == {"top": 0, "bottom": 84, "left": 0, "right": 96}
    again = from_spec(json.loads(json.dumps(pre.spec)))
    assert again.spec == pre.spec and np.array_equal(again(frames), pre(frames))

    model = nn.Sequential([nn.Dense(pre.feature_count(), 8), nn.ReLU(), nn.Dense(8, 5)], seed=0)
    model.metadata = {preprocess.METADATA_KEY: pre.spec, "labels": ["none", "forward", "left", "right", "brake"]}
    model.save(tmp_path / "pilot.npz")
    loaded = nn.load(tmp_path / "pilot.npz")
    driving = from_metadata(loaded.metadata, where="pilot.npz")
    assert np.array_equal(loaded.predict_proba(driving(frames)), model.predict_proba(pre(frames)))
    with pytest.raises(PreprocessSpecError, match="pilot.npz has no 'preprocessing' spec"):
        from_metadata({"labels": []}, where="pilot.npz")


@pytest.mark.parametrize(("spec", "message"), [
    ({"grayscale": True, "blur": 3}, "unknown preprocessing field\\(s\\) 'blur'"),
    ({"crop": "donkey"}, "unknown crop preset 'donkey'"),
    ({"crop": {"top": 50, "bottom": 40}}, "crop box is empty: top=50 >= bottom=40"),
    ({"crop": {"top": -1}}, "crop field 'top' must be a pixel index >= 0"),
    ({"crop": {"up": 3}}, "unknown crop field\\(s\\) 'up'"),
    ({"crop": [0, 84]}, "field 'crop' must be null, a preset name"),
    ({"downsample": 0}, "'downsample' must be a positive integer or \\[rows, cols\\], got 0"),
    ({"downsample": [2, 2, 2]}, "'downsample' must be a positive integer"),
    ({"downsample": 2.0}, "'downsample' must be a positive integer"),
    ({"grayscale": "yes"}, "'grayscale' must be true or false"),
    ({"size": [10, 10]}, "'size' needs 'input_shape'"),
    ({"size": [10, 10], "input_shape": [96, 96, 3]}, "'size' 10x10 does not divide the 96x96"),
    ({"size": [48, 48], "downsample": 2, "input_shape": [96, 96, 3]}, "either 'downsample' or 'size'"),
    ({"input_shape": [96, -96, 3]}, "'input_shape' must be"),
    ({"input_shape": [96, 96], "crop": {"bottom": 100}}, "does not fit a 96x96 frame"),
    ({"input_shape": [8, 8], "downsample": 9}, "leaves no pixels"),
    ({"version": 3}, "version 3 is not supported"),
    ({"version": 1, "normalise": "zscore"}, "'normalise' need spec version 2"),
    ({"colour": "hsv"}, "'colour' must be one of luma, principal"),
    ({"colour": "principal", "grayscale": False}, "'principal' makes one grey channel"),
    ({"normalise": "minmax"}, "'normalise' must be null, 'zscore' or 'stretch'"),
    ({"edges": 1}, "'edges' must be true or false"),
])
def test_bad_specs_are_refused_by_field(spec, message):
    with pytest.raises(PreprocessSpecError, match=message):
        from_spec(spec)


def test_bad_frames_are_refused_clearly(frames):
    pre = from_spec(default_spec((96, 96, 3)))
    with pytest.raises(PreprocessSpecError, match="frame shape 120x160x3 does not match .* 96x96x3"):
        pre(np.zeros((120, 160, 3), np.uint8))
    with pytest.raises(PreprocessSpecError, match="must be uint8"):
        pre(frames.astype(np.float32))
    with pytest.raises(PreprocessSpecError, match="crop box rows 0:84, cols 0:96 does not fit a 64x64 frame"):
        from_spec({"crop": "carracing"})(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(PreprocessSpecError, match="JSON object"):
        from_spec(["grayscale"])


def test_default_specs():
    assert FramePreprocessor(default_spec((96, 96, 3))).feature_count() == 42 * 48
    tub = FramePreprocessor(default_spec((120, 160, 3)))
    assert tub.spec["downsample"] == [4, 4] and tub.feature_count() == 30 * 40
    assert FramePreprocessor(default_spec((120, 320))).feature_count() <= 2500


def test_one_frame_gives_the_features_it_gets_in_a_batch(frames):
    """Driving preprocesses one frame at a time, training a batch: the same numbers either way.
    (How long one frame takes is measured by bench/pilot_latency.py.)"""
    pre = from_spec(default_spec((96, 96, 3)))
    batch = pre(frames[:5])
    for i in range(5):
        np.testing.assert_array_equal(pre(frames[i]), batch[i:i + 1])
