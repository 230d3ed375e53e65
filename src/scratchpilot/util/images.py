"""The package's one image decoder (and JPEG encoder): untrusted bytes in, checked pixels out.

Every caller -- a web upload, a camera frame off the network, a donkeycar tub's JPEG, an image folder for
a report -- gets the same checks: only the formats it names are tried, the pixel count is read from the
header and refused before anything is decompressed, and every way Pillow reports bad data becomes one
:class:`ImageDecodeError` naming where the bytes came from.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

#: formats accepted when the caller names none
DEFAULT_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
#: the largest decoded image accepted by default (a 12-megapixel phone photo)
DEFAULT_MAX_PIXELS = 4096 * 3072

# Pillow's decoders report corrupt data through a variety of exception types
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, MemoryError)


class ImageDecodeError(ValueError):
    """Bytes that are not an acceptable image (unknown format, corrupt, truncated, too large)."""


def _pillow():
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError("images need Pillow: pip install pillow (it comes with scratchpilot[all])") from exc
    return Image


def open_image(data: bytes, *, where: str = "image", formats: Sequence[str] = DEFAULT_FORMATS,
               max_pixels: int = DEFAULT_MAX_PIXELS, draft: tuple[str, int] | None = None):
    """Decode ``data`` into a loaded Pillow image.

    ``draft=(mode, side)`` lets libjpeg decode a JPEG at reduced size (a big photo for a small digit).
    Raises :class:`ImageDecodeError` for empty input, another format, corrupt or truncated data, or more
    than ``max_pixels``; the message starts with ``where``.
    """
    Image = _pillow()
    if not data:
        raise ImageDecodeError(f"{where}: empty, no image data")
    try:
        picture = Image.open(io.BytesIO(data), formats=list(formats))
        width, height = picture.size
        if width * height > max_pixels:
            raise ImageDecodeError(f"{where}: image too large: {width}×{height} = {width * height:,d} pixels; "
                                   f"the limit is {max_pixels:,d}")
        if draft is not None and picture.format == "JPEG":
            picture.draft(draft[0], (draft[1], draft[1]))
        picture.load()
        return picture
    except ImageDecodeError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(f"{where}: not an image in a supported format ({', '.join(formats)})") from None
    except Image.DecompressionBombError as exc:  # Pillow's own, larger limit tripped while opening
        raise ImageDecodeError(f"{where}: image too large (a decompression bomb?): {exc}") from None
    except _DECODE_ERRORS as exc:
        raise ImageDecodeError(f"{where}: corrupt or truncated image: {type(exc).__name__}: {exc}") from None


def decode_image(data: bytes, *, mode: str = "RGB", where: str = "image",
                 formats: Sequence[str] = DEFAULT_FORMATS, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``data`` to a uint8 array: ``(H, W, 3)`` for ``mode="RGB"``, ``(H, W)`` for ``"L"``."""
    picture = open_image(data, where=where, formats=formats, max_pixels=max_pixels)
    try:
        return np.asarray(picture if picture.mode == mode else picture.convert(mode), dtype=np.uint8)
    except _DECODE_ERRORS as exc:
        raise ImageDecodeError(f"{where}: cannot convert the image to {mode}: {exc}") from None
    finally:
        picture.close()


def encode_jpeg(image: np.ndarray, quality: int = 80) -> bytes:
    """Encode an ``(H, W, 3)`` uint8 RGB image as a baseline JPEG."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got "
                         f"{getattr(image, 'shape', type(image).__name__)} {getattr(image, 'dtype', '')}")
    buffer = io.BytesIO()
    _pillow().fromarray(image, mode="RGB").save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()
