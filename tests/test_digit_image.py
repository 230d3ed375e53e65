"""MNIST-style preprocessing of arbitrary digit pictures (scratchpilot.data.digit_image)."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image
from web_support import draw_on_canvas, png_bytes, png_claiming, small_model_path

from scratchpilot import nn
from scratchpilot.data import load_mnist, to_features
from scratchpilot.data.digit_image import (
    ImageDecodeError,
    NothingDrawnError,
    decode_image,
    digit_features,
    prepare_digit,
)


@pytest.fixture(scope="module")
def mnist_test(shared_data):
    _, (images, labels) = load_mnist("digits", download=False, progress=False)
    return images, labels


@pytest.fixture(scope="module")
def model(tmp_path_factory, shared_data):
    return nn.load(small_model_path(tmp_path_factory))


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    weights = image.astype(np.float64)
    total = weights.sum()
    rows, cols = np.arange(image.shape[0]), np.arange(image.shape[1])
    return float(weights.sum(axis=1) @ rows / total), float(weights.sum(axis=0) @ cols / total)


def ink_box(image: np.ndarray) -> tuple[int, int]:
    rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def bar(height: int = 120, width: int = 30, canvas: tuple[int, int] = (200, 300), top: int = 10,
        left: int = 200) -> np.ndarray:
    """White canvas with a black upright bar (a "1") near the top right corner."""
    image = np.full(canvas, 255, dtype=np.uint8)
    image[top:top + height, left:left + width] = 0
    return image


# ------------------------------------------------------------------------------------ geometry


def test_dark_on_light_off_centre_bar_becomes_centred_white_on_black():
    digit = prepare_digit(bar())
    assert digit.shape == (28, 28) and digit.dtype == np.uint8
    assert digit.max() == 255 and digit[0, 0] == 0  # light ink, black background
    height, width = ink_box(digit)
    assert height == 20  # the long side fills MNIST's 20-px box
    assert 4 <= width <= 6  # aspect ratio 4:1 kept (30/120 * 20 = 5 px, plus anti-aliasing)
    cy, cx = centre_of_mass(digit)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5


def test_wide_shape_scales_its_long_side_to_20():
    image = np.zeros((400, 400), dtype=np.uint8)
    image[300:340, 20:220] = 255  # light-on-dark horizontal dash, 200 × 40
    height, width = ink_box(prepare_digit(image))
    assert width == 20 and 3 <= height <= 5


def test_tiny_drawing_is_scaled_up():
    image = np.zeros((100, 100), dtype=np.uint8)
    image[40:50, 45:48] = 200
    digit = prepare_digit(image)
    assert ink_box(digit)[0] == 20
    assert digit.max() == 255  # contrast normalised: the strongest ink becomes full white


def test_centre_of_mass_not_box_centre_is_centred():
    # a "7"-like shape: heavy top bar, thin stem; its box centre and mass centre differ
    image = np.zeros((200, 200), dtype=np.uint8)
    image[20:50, 40:160] = 255
    image[50:180, 140:150] = 255
    digit = prepare_digit(image)
    cy, cx = centre_of_mass(digit)
    # whole-pixel shifts, as MNIST's (its centres of mass spread ±0.29 px: uniform over ±0.5)
    assert abs(cy - 14) <= 0.6 and abs(cx - 14) <= 0.6
    rows = np.flatnonzero(digit.any(axis=1))
    assert (rows[0] + rows[-1]) / 2 > 14.5  # the box sits lower than the middle to bring the mass up


# ------------------------------------------------------------------------------------ polarity & input kinds


def test_polarities_and_input_kinds_agree():
    dark_on_light = bar()
    expected = prepare_digit(dark_on_light)
    light_on_dark = 255 - dark_on_light
    rgb = np.stack([dark_on_light] * 3, axis=-1)
    coloured = rgb.copy()
    coloured[dark_on_light == 0] = (20, 40, 200)  # blue pen on white paper
    transparent = np.zeros((*dark_on_light.shape, 4), dtype=np.uint8)
    transparent[..., 3] = 255 - dark_on_light  # black strokes on a transparent canvas
    white_on_transparent = transparent.copy()
    white_on_transparent[..., :3] = 255
    grey_paper = np.where(dark_on_light == 0, 60, 190).astype(np.uint8)  # photo: grey paper, dark pencil
    variants = {
        "light_on_dark": light_on_dark,
        "float": dark_on_light.astype(np.float32) / 255,
        "rgb": rgb,
        "coloured ink": coloured,
        "HxWx1": dark_on_light[..., None],
        "transparent": transparent,
        "white on transparent": white_on_transparent,
        "grey paper": grey_paper,
        "PIL L": Image.fromarray(dark_on_light),
        "PIL RGBA": Image.fromarray(transparent, mode="RGBA"),
        "PIL 1-bit": Image.fromarray(dark_on_light).convert("1"),
    }
    for name, image in variants.items():
        got = prepare_digit(image)
        assert np.abs(got.astype(int) - expected).max() <= 2, name


def test_opaque_rgba_is_read_by_colour_not_alpha():
    image = np.full((100, 100, 4), 255, dtype=np.uint8)
    image[20:80, 45:55, :3] = 0
    assert ink_box(prepare_digit(image))[0] == 20


def test_paper_noise_does_not_stretch_the_box():
    rng = np.random.default_rng(0)
    image = bar().astype(np.int16) - rng.integers(0, 15, size=(200, 300))  # grain up to 15 grey levels
    digit = prepare_digit(np.clip(image, 0, 255).astype(np.uint8))
    assert ink_box(digit)[0] == 20 and ink_box(digit)[1] <= 6


def test_mnist_digits_come_back_almost_unchanged(mnist_test):
    images = mnist_test[0][:200]
    again = np.stack([prepare_digit(d) for d in images])
    assert np.abs(again.astype(int) - images).mean() < 2.0  # grey levels out of 255, per pixel


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("blank", [
    np.zeros((50, 50), np.uint8),
    np.full((50, 50), 255, np.uint8),
    np.full((50, 50, 3), 128, np.uint8),
    np.zeros((50, 50, 4), np.uint8),  # fully transparent
    np.full((50, 50), 200, np.uint8) + np.random.default_rng(1).integers(0, 10, (50, 50), dtype=np.uint8),
])
def test_blank_images_raise_nothing_drawn(blank):
    with pytest.raises(NothingDrawnError, match="nothing drawn"):
        prepare_digit(blank)


def test_nothing_drawn_is_a_value_error():
    assert issubclass(NothingDrawnError, ValueError)


@pytest.mark.parametrize("image, message", [
    (np.full((10, 10), np.nan, np.float32), "NaN"),
    (np.full((10, 10), 2.0, np.float32), r"\[0, 1\]"),
    (np.full((10, 10), 300, np.int32), "0..255"),
    (np.full((10, 10), -1, np.int32), "0..255"),
    (np.zeros((10, 10, 2), np.uint8), "shape"),
    (np.zeros(10, np.uint8), "shape"),
    (np.zeros((0, 5), np.uint8), "empty"),
])
def test_bad_arrays_raise_value_error(image, message):
    with pytest.raises(ValueError, match=message):
        prepare_digit(image)


def test_non_numeric_array_raises_type_error():
    with pytest.raises(TypeError):
        prepare_digit(np.array([["a", "b"], ["c", "d"]]))


# ------------------------------------------------------------------------------------ decoding bytes


def test_decode_png_jpeg_and_gif_round_trip():
    image = bar()
    expected = prepare_digit(image)
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP"):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=fmt)
        got = prepare_digit(decode_image(buffer.getvalue()))
        assert np.abs(got.astype(int) - expected).mean() < 3, fmt


def test_decode_reduces_large_pictures():
    image = np.full((1500, 1000), 255, dtype=np.uint8)
    image[300:1200, 450:550] = 0
    decoded = decode_image(png_bytes(image))
    assert max(decoded.size) <= 560
    assert ink_box(prepare_digit(decoded))[0] == 20


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"hello, this is not an image", "not an image"),
    (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "not an image"),
])
def test_decode_rejects_non_images(data, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(data)


def test_decode_rejects_truncated_png():
    data = png_bytes(bar())
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 2])


def test_decode_rejects_decompression_bombs_before_decoding():
    # tiny files claiming huge sizes: beyond Pillow's own bomb limit, and beyond ours but under Pillow's
    for side in (20000, 6000):
        bomb = png_claiming(side, side)
        assert len(bomb) < 100
        with pytest.raises(ImageDecodeError, match="too large"):
            decode_image(bomb)


def test_decode_refuses_formats_outside_the_list():
    buffer = io.BytesIO()
    Image.fromarray(bar()).save(buffer, format="TIFF")
    with pytest.raises(ImageDecodeError, match="supported format"):
        decode_image(buffer.getvalue())


def test_16_bit_png_is_read_at_full_range():
    image = (65535 - bar().astype(np.uint16) * 257).astype(np.uint16)  # black bar on white → inverted: white
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    digit = prepare_digit(decode_image(buffer.getvalue()))
    assert ink_box(digit)[0] == 20


# ------------------------------------------------------------------------------------ the acceptance check


def test_canvas_drawn_mnist_keeps_accuracy(model, mnist_test):
    """MNIST test digits drawn onto a 280×280 canvas (scaled up 5–9.5×, off-centre, dark on light) and
    prepared again lose at most 1.5 points of accuracy against the raw test images."""
    images, labels = mnist_test[0][:2000], mnist_test[1][:2000]
    rng = np.random.default_rng(0)
    canvases = [draw_on_canvas(digit, rng) for digit in images]
    assert canvases[0].shape == (280, 280) and canvases[0][0, 0] == 255  # white paper
    prepared = np.concatenate([digit_features(canvas) for canvas in canvases])
    raw_accuracy = float((model.predict(to_features(images)) == labels).mean())
    canvas_accuracy = float((model.predict(prepared) == labels).mean())
    assert raw_accuracy > 0.9  # the model is real
    assert canvas_accuracy >= raw_accuracy - 0.015, (raw_accuracy, canvas_accuracy)


def test_array_input_works_while_pillow_is_half_imported(monkeypatch):
    # another server thread may be importing Pillow right now: its module exists but has no Image yet
    import types

    monkeypatch.setitem(sys.modules, "PIL.Image", types.ModuleType("PIL.Image"))
    assert prepare_digit(np.pad(np.full((20, 6), 255, np.uint8), 4)).shape == (28, 28)
