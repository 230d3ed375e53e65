"""MNIST-style preprocessing of any digit picture: a canvas drawing, a photo, a scan, an upload.

MNIST's digits were made from scanned black-and-white strokes by (LeCun et al., "The MNIST database",
http://yann.lecun.com/exdb/mnist/): size-normalising each digit to fit a 20×20 box keeping its aspect
ratio, with anti-aliasing (hence grey levels), then placing it in a 28×28 field so that its centre of
mass lands at the centre. A network trained on MNIST only reads digits prepared the same way: light ink
on black, filling 20 px, centred by mass. :func:`prepare_digit` does exactly that for any input:

1. grey levels (and alpha, if any) as floats in [0, 1];
2. polarity: a transparent background means the alpha channel *is* the ink; otherwise the background
   level is the median of the border pixels, and ink is the distance from it (dark-on-light and
   light-on-dark both work, so does grey paper); contrast is normalised and faint noise dropped;
3. crop to the ink's bounding box;
4. scale the long side to 20 px with an anti-aliasing filter, keeping the aspect ratio;
5. paste into 28×28 so the centre of mass sits at pixel (14, 14) — where MNIST's mean centre of mass
   is (measured on the training set: 14.00 ± 0.29 in both axes).

:func:`decode_image` turns untrusted bytes into a Pillow image through the package's one decoder,
:func:`scratchpilot.util.images.open_image` (non-images, unexpected formats and decompression bombs are
refused there). Pillow is imported only when an image needs it.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from ..util.images import DEFAULT_FORMATS, DEFAULT_MAX_PIXELS, ImageDecodeError, open_image

#: side of the network's input
SIZE = 28
#: side of the box the digit is scaled into (MNIST: 20×20 inside 28×28)
BOX = 20
#: where the centre of mass goes, in pixel-index coordinates
CENTRE = 14.0
#: ink weaker than this fraction of the strongest ink is background noise (paper grain, JPEG ringing)
NOISE_FLOOR = 0.08
#: an image whose strongest ink differs from the background by less than this is blank
MIN_CONTRAST = 0.1
#: formats :func:`decode_image` accepts (everything a browser or a phone produces for a still picture)
FORMATS = DEFAULT_FORMATS
#: the largest decoded image accepted (a 12-megapixel phone photo); bigger ones are refused before decoding
MAX_PIXELS = DEFAULT_MAX_PIXELS
#: pictures are reduced to this long side before the float work (the digit ends up 20 px anyway)
WORKING_SIDE = 560

# ITU-R 601 luma, as Pillow's "L" conversion uses
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class NothingDrawnError(ValueError):
    """The image has no ink: blank, or a single flat colour."""


def prepare_digit(image) -> np.ndarray:
    """Turn any digit picture into the 28×28 uint8 image an MNIST network expects.

    Parameters
    ----------
    image : a Pillow image (any mode), or an array (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA;
        integer arrays hold 0..255, float arrays 0..1.

    Returns
    -------
    uint8 (28, 28): light ink on black, long side 20 px, centre of mass at the centre.

    Raises
    ------
    NothingDrawnError
        If the image is blank (no ink stands out from the background).
    ValueError
        For arrays of the wrong shape, out-of-range or non-finite values.
    """
    return _prepare(image, with_features=False)[0]


def prepare_digit_with_features(image) -> tuple[np.ndarray, dict[str, float]]:
    """:func:`prepare_digit`, and the picture's :func:`digit_input_features` (computed on the way, from the
    same ink map: what the server logs costs no second pass)."""
    return _prepare(image, with_features=True)


#: what :func:`digit_input_features` measures, in this order
DIGIT_FEATURES = ("ink_mass", "box_height", "box_width", "centre_row", "centre_col", "stroke_width", "slant",
                  "background")


def digit_input_features(image) -> dict[str, float]:
    """The digit as it arrived, before preprocessing: what a deployed model's inputs are watched by.

    - ``ink_mass``: mean ink over the picture (ink 0..1, as :func:`prepare_digit` finds it);
    - ``box_height``, ``box_width``: the ink's bounding box as fractions of the picture's height and width;
    - ``centre_row``, ``centre_col``: the centre of mass as fractions of the height and width;
    - ``stroke_width``: 2·area / perimeter of the ink above half strength (the width of a long stroke), as a
      fraction of the box's long side (MNIST: about 0.12);
    - ``slant``: the angle in degrees of the ink's principal axis from the vertical (second moments;
      0 upright, the sign says which way);
    - ``background``: the background level 0 (black) … 1 (white): the polarity (MNIST: light ink on 0).

    Raises :class:`NothingDrawnError` for a blank picture, ``ValueError`` for a malformed one.
    """
    return _features(*_ink_box(image))


def _ink_box(image) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The ink map, the indices of the rows and of the columns holding ink, and the background level."""
    gray, alpha = _gray_and_alpha(image)
    ink, background = _ink(gray, alpha, with_background=True)
    # ufunc methods rather than ndarray.any/sum/clip: the same arithmetic without their Python wrappers,
    # which cost more than the work on 28×28 pixels (this runs once per web request)
    rows = np.flatnonzero(np.logical_or.reduce(ink, axis=1))
    cols = np.flatnonzero(np.logical_or.reduce(ink, axis=0))
    return ink, rows, cols, background


def _prepare(image, with_features: bool):
    ink, rows, cols, background = _ink_box(image)
    features = _features(ink, rows, cols, background) if with_features else None
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    digit = _fit_box(crop, BOX)
    return _centre_by_mass(digit, SIZE, CENTRE), features


def _features(ink: np.ndarray, rows: np.ndarray, cols: np.ndarray, background: float) -> dict[str, float]:
    """:func:`digit_input_features` from the ink map and the rows and columns holding ink.

    Runs on every request of a watched server, so it is written in as few NumPy calls as it takes (each
    costs microseconds, the arithmetic on 784 pixels almost nothing): the first and second moments come
    from one product each with a (1, coordinate, coordinate²) table."""
    height, width = ink.shape
    ys, xs = _moments_table(height), _moments_table(width)
    # m_y = (Σ ink, Σ y·ink, Σ y²·ink) over rows, m_x the same over columns, and Σ x·y·ink
    m_y = ys @ np.add.reduce(ink, axis=1)
    m_x = xs @ np.add.reduce(ink, axis=0)
    mass, cy, cx = float(m_y[0]), float(m_y[1]) / float(m_y[0]), float(m_x[1]) / float(m_y[0])
    var_y, var_x = float(m_y[2]) / mass - cy * cy, float(m_x[2]) / mass - cx * cx
    cov = float(ys[1] @ ink @ xs[1]) / mass - cy * cx
    # the principal axis's angle from the x axis is ½·atan2(2·Sxy, Sxx − Syy)
    slant = math.degrees(0.5 * math.atan2(2 * cov, var_x - var_y)) - 90.0
    if slant <= -90.0:
        slant += 180.0
    padded = np.zeros((height + 2, width + 2), dtype=bool)
    solid = padded[1:-1, 1:-1]
    np.greater_equal(ink, 0.5, out=solid)
    area = int(np.count_nonzero(solid))
    # city-block perimeter: ink/background changes along rows and columns, the picture's edge included
    perimeter = (int(np.count_nonzero(padded[1:] != padded[:-1]))
                 + int(np.count_nonzero(padded[:, 1:] != padded[:, :-1])))
    box_h, box_w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    stroke = 2.0 * area / perimeter / max(box_h, box_w) if perimeter else 0.0
    values = np.array([mass / ink.size, box_h / height, box_w / width, (cy + 0.5) / height, (cx + 0.5) / width,
                       stroke, slant, background])
    # six decimals: more than the measurements mean, and the same values in a log and in a model's profile
    return dict(zip(DIGIT_FEATURES, values.round(6).tolist(), strict=True))


_MOMENTS: dict[int, np.ndarray] = {}


def _moments_table(n: int) -> np.ndarray:
    """float32 (3, n): ones, the coordinates 0 … n−1 and their squares (kept: a server sees few sizes)."""
    table = _MOMENTS.get(n)
    if table is None:
        y = np.arange(n, dtype=np.float32)
        table = np.stack([np.ones_like(y), y, y * y])
        if len(_MOMENTS) < 64:
            _MOMENTS[n] = table
    return table


def digit_features(image) -> np.ndarray:
    """:func:`prepare_digit` then :func:`scratchpilot.data.to_features`: float32 (1, 784) in [0, 1]."""
    from .datasets import to_features

    return to_features(prepare_digit(image)[None])


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS, *, where: str = "image"):
    """Decode untrusted image bytes into a Pillow image, ready for :func:`prepare_digit`.

    Only :data:`FORMATS` are tried; the pixel count is checked from the header before anything is
    decompressed (a tiny PNG can claim 20000×20000), phone photos are turned upright (EXIF orientation)
    and large pictures are reduced to :data:`WORKING_SIDE` on their long side.

    Raises
    ------
    ImageDecodeError
        For empty input, an unknown format, corrupt or truncated data, or more than ``max_pixels``; the
        message starts with ``where``.
    """
    from PIL import Image, ImageOps

    # a JPEG is decoded by libjpeg at reduced size: the digit ends up 20 px anyway
    img = open_image(data, where=where, formats=FORMATS, max_pixels=max_pixels, draft=("L", WORKING_SIDE))
    try:
        img = ImageOps.exif_transpose(img)
        if max(img.size) > WORKING_SIDE:
            img.thumbnail((WORKING_SIDE, WORKING_SIDE), Image.Resampling.BOX)
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, MemoryError) as exc:
        raise ImageDecodeError(f"{where}: corrupt image: {type(exc).__name__}: {exc}") from None
    return img


# ------------------------------------------------------------------------------------------- steps


def _gray_and_alpha(image) -> tuple[np.ndarray, np.ndarray | None]:
    """Grey levels float32 (H, W) in [0, 1] and alpha in [0, 1] (or None when the image has none)."""
    # An object cannot be a Pillow image unless Pillow is loaded, so there is no need to import it here.
    # The module may be half-initialised while another thread imports it: then it has no Image yet.
    pil_image_class = getattr(sys.modules.get("PIL.Image"), "Image", None)
    if pil_image_class is not None and isinstance(image, pil_image_class):
        return _gray_and_alpha_pil(image)
    array = np.asarray(image)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if array.dtype.kind in "iu":
        if array.dtype != np.uint8 and array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(f"integer pixels must be in 0..255, got {array.min()}..{array.max()}")
        array = array.astype(np.float32) / np.float32(255)
    elif array.dtype.kind == "f":
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise ValueError("image contains NaN or infinite values")
        if array.size and (array.min() < 0 or array.max() > 1):
            raise ValueError(f"float pixels must be in [0, 1], got {array.min():g}..{array.max():g} "
                             f"(pass uint8 for 0..255)")
    else:
        raise TypeError(f"image must be a Pillow image or a numeric array, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        gray, alpha = array, None
    elif array.ndim == 3 and array.shape[2] in (3, 4):
        gray = array[:, :, :3] @ _LUMA
        alpha = array[:, :, 3] if array.shape[2] == 4 else None
    else:
        raise ValueError(f"image must be (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    if min(gray.shape) < 1:
        raise ValueError(f"image is empty: shape {array.shape}")
    return gray, alpha


def _gray_and_alpha_pil(img) -> tuple[np.ndarray, np.ndarray | None]:
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):  # 16-bit PNG
        values = np.asarray(img, dtype=np.float32)
        return np.clip(values / np.float32(65535), 0, 1), None
    if img.mode == "F":
        values = np.asarray(img, dtype=np.float32)
        return np.clip(np.nan_to_num(values), 0, 1), None
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / np.float32(255)
        return rgba[:, :, :3] @ _LUMA, rgba[:, :, 3]
    return np.asarray(img.convert("L"), dtype=np.float32) / np.float32(255), None


def _border_median(values: np.ndarray) -> float:
    """Median of the outermost pixels: the background level (by partition: on so few values np.median's
    overhead dwarfs the work)."""
    border = np.concatenate([values[0], values[-1], values[:, 0], values[:, -1]])
    middle = border.size // 2
    border.partition(middle)
    return float(border[middle])


def _ink(gray: np.ndarray, alpha: np.ndarray | None, *, with_background: bool = False):
    """Ink strength float32 (H, W) in [0, 1], 0 for background; raises NothingDrawnError if none. With
    ``with_background``: ``(ink, background level)`` (a transparent canvas's background counts as 0)."""
    background = 0.0
    if alpha is not None and _border_median(alpha) < 0.5:
        # drawn on a transparent canvas: whatever colour the strokes are, their coverage is the ink
        ink = alpha.copy()
    else:
        background = _border_median(gray)
        ink = background - gray if background >= 0.5 else gray - background
        np.maximum(ink, 0, out=ink)
    contrast = float(np.maximum.reduce(ink, axis=None))
    if contrast < MIN_CONTRAST:
        raise NothingDrawnError("nothing drawn: the image is blank (no ink differs from the background)")
    ink /= np.float32(contrast)
    ink[ink < NOISE_FLOOR] = 0
    return (ink, background) if with_background else ink


def _fit_box(crop: np.ndarray, box: int) -> np.ndarray:
    """Scale float (h, w) so its long side is ``box`` px, keeping the aspect ratio (anti-aliased)."""
    from PIL import Image

    h, w = crop.shape
    if max(h, w) == box:  # already the right size (an MNIST digit sent back in)
        return crop
    scale = box / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # Pillow widens the filter's support when shrinking, so this is a proper anti-aliased reduction
    resized = Image.fromarray(np.ascontiguousarray(crop, dtype=np.float32), mode="F").resize(
        size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized, dtype=np.float32), 0, 1)


def _centre_by_mass(digit: np.ndarray, size: int, centre: float) -> np.ndarray:
    """Paste float (h, w) into a uint8 (size, size) field so that its centre of mass is at ``centre``."""
    h, w = digit.shape
    mass = float(np.add.reduce(digit, axis=None))
    if mass <= 0:
        raise NothingDrawnError("nothing drawn: no ink left after scaling")
    cy = float(np.add.reduce(digit, axis=1) @ np.arange(h)) / mass
    cx = float(np.add.reduce(digit, axis=0) @ np.arange(w)) / mass
    top, left = round(centre - cy), round(centre - cx)
    # As in MNIST (where 1.4 % of the training digits touch the border), a digit whose mass sits far
    # from its box's middle may be cut at the edge of the field rather than moved off-centre.
    field = np.zeros((size, size), dtype=np.float32)
    rows = slice(max(top, 0), min(top + h, size))
    cols = slice(max(left, 0), min(left + w, size))
    field[rows, cols] = digit[rows.start - top:rows.stop - top, cols.start - left:cols.stop - left]
    return np.rint(field * 255).astype(np.uint8)
