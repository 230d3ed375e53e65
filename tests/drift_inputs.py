"""Inputs a digits model was not made for, from MNIST test digits: the drift scenarios of the monitoring
tests and of bench/monitor_drift.py."""

from __future__ import annotations

import numpy as np


def rotated(images: np.ndarray, degrees: float = 30.0) -> np.ndarray:
    """Each digit turned by ``degrees`` about the picture's centre (bilinear)."""
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(x).rotate(degrees, resample=Image.Resampling.BILINEAR))
                     for x in images])


def thick(images: np.ndarray) -> np.ndarray:
    """Each digit drawn with about three times its stroke width (:func:`stroke_px`: 3.3× on MNIST's test
    digits): at twice the size a 9×9 grey dilation widens every stroke by 8 px, 4 px at 28×28."""
    from PIL import Image, ImageFilter

    out = []
    for x in images:
        big = Image.fromarray(x).resize((56, 56), Image.Resampling.BILINEAR).filter(ImageFilter.MaxFilter(9))
        out.append(np.asarray(big.resize((28, 28), Image.Resampling.BOX)))
    return np.stack(out)


def inverted(images: np.ndarray) -> np.ndarray:
    """Dark ink on white: 255 − pixel."""
    return 255 - images


def stroke_px(images: np.ndarray) -> float:
    """The median absolute stroke width in pixels: 2·area / perimeter of the ink above half strength."""
    widths = []
    for x in images:
        solid = x >= 128
        padded = np.pad(solid, 1)
        perimeter = np.count_nonzero(padded[1:] != padded[:-1]) + np.count_nonzero(padded[:, 1:] != padded[:, :-1])
        widths.append(2 * np.count_nonzero(solid) / max(1, perimeter))
    return float(np.median(widths))
