"""The one preprocessing of transfer learning: an image file's bytes in, the backbone's input array out.

Training, ``transfer predict``, ``transfer evaluate`` and ``report model`` all call :func:`prepare_image`
with the spec stored in the model file, so a model always sees its images the way it was trained on them.

    bytes → decoded (the package's one decoder: format, size and corruption checks)
          → turned upright by its EXIF orientation
          → one mode: 16-bit and 32-bit grey scaled to 8 bits, transparency laid over white, palette and
            CMYK converted, then RGB (or grey for a one-channel backbone)
          → shorter side scaled to size / crop (bilinear, antialiased), the centre size × size cut out
          → (x − mean) / std, float32 (H, W, C)

The spec: ``{"mode": "RGB" | "L", "size": int, "crop": (0, 1], "mean": float, "std": float}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..util.images import ImageDecodeError, open_image

#: files a class folder may hold as images (others are skipped and counted)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
#: the largest input side a spec may ask for
MAX_SIZE = 1024


@dataclass(frozen=True)
class ImageSpec:
    """How images become a backbone's input (stored in every transfer model file)."""

    mode: str
    size: int
    crop: float = 1.0
    mean: float = 0.0
    std: float = 255.0

    def __post_init__(self) -> None:
        if self.mode not in ("RGB", "L"):
            raise ValueError(f"image mode must be 'RGB' or 'L', got {self.mode!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 8 <= self.size <= MAX_SIZE:
            raise ValueError(f"image size must be a whole number from 8 to {MAX_SIZE}, got {self.size!r}")
        for name, value in (("crop", self.crop), ("mean", self.mean), ("std", self.std)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"image {name} must be a finite number, got {value!r}")
        if not 0.1 <= self.crop <= 1.0:
            raise ValueError(f"image crop must be from 0.1 to 1, got {self.crop!r}")
        if self.std <= 0:
            raise ValueError(f"image std must be > 0, got {self.std!r}")

    @property
    def channels(self) -> int:
        return 3 if self.mode == "RGB" else 1

    def to_dict(self) -> dict:
        return {"mode": self.mode, "size": self.size, "crop": self.crop, "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, value, where: str = "preprocessing") -> ImageSpec:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: must be an object with mode, size, crop, mean and std")
        unknown = set(value) - {"mode", "size", "crop", "mean", "std"}
        if unknown:
            raise ValueError(f"{where}: unknown fields {sorted(unknown)}")
        try:
            return cls(**value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None


def _upright(picture):
    """The picture turned by its EXIF orientation tag (phones store photos sideways and say so there)."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(picture)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, ZeroDivisionError):
        return picture  # an unreadable EXIF block: keep the pixels as stored


def _to_mode(picture, mode: str):
    """One 8-bit mode (RGB or L) from any of Pillow's."""
    from PIL import Image

    if picture.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(picture, dtype=np.float64)
        top = 65535.0 if picture.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if picture.mode == "F" and values.max(initial=0) <= 1.0:
            top = 1.0
        grey = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        picture = Image.fromarray(grey, mode="L")
    if picture.mode == "P" or picture.mode in ("LA", "PA", "La", "RGBa") or (
            picture.mode in ("L", "RGB") and "transparency" in picture.info):
        picture = picture.convert("RGBA")
    if picture.mode == "RGBA":  # transparent pixels shown over white, as a viewer shows them
        background = Image.new("RGBA", picture.size, (255, 255, 255, 255))
        picture = Image.alpha_composite(background, picture)
    return picture if picture.mode == mode else picture.convert(mode)


def prepare_image(data: bytes, spec: ImageSpec, where: str = "image") -> np.ndarray:
    """``data`` (an image file's bytes) as the backbone's float32 input ``(size, size, channels)``.

    Raises :class:`~scratchpilot.util.images.ImageDecodeError` (naming ``where``) for anything that is
    not a readable image.
    """
    from PIL import Image

    side = spec.size / spec.crop
    picture = open_image(data, where=where, formats=FORMATS, draft=("RGB", math.ceil(side)))
    try:
        picture = _to_mode(_upright(picture), spec.mode)
        width, height = picture.size
        scale = side / min(width, height)
        resized = (max(spec.size, round(width * scale)), max(spec.size, round(height * scale)))
        left, top = (resized[0] - spec.size) // 2, (resized[1] - spec.size) // 2
        if resized != picture.size:
            # only the centre is scaled (``box``: where it lies in the picture): the pixels of scaling the
            # whole picture and cutting them out, without the whole (a 1 × 10⁶ one would take 250 GB)
            sx, sy = width / resized[0], height / resized[1]
            box = (left * sx, top * sy, (left + spec.size) * sx, (top + spec.size) * sy)
            picture = picture.resize((spec.size, spec.size), Image.BILINEAR, box=box)
        else:
            picture = picture.crop((left, top, left + spec.size, top + spec.size))
        pixels = np.asarray(picture, dtype=np.float32)
    except ImageDecodeError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError) as exc:
        raise ImageDecodeError(f"{where}: cannot convert the image: {type(exc).__name__}: {exc}") from None
    finally:
        picture.close()
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    pixels -= np.float32(spec.mean)
    pixels *= np.float32(1.0 / spec.std)
    return pixels
