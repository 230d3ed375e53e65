"""Training-time augmentation of digit images: random shifts, and small random rotations and scalings.

Each augmenter is an ``augment(x, rng) -> x`` for :meth:`scratchpilot.nn.Sequential.fit`, taking a batch of
flattened images ``(N, h·w)`` and returning a new batch of the same shape. Nothing here runs at prediction
time: the model sees the one preprocessing (:func:`scratchpilot.data.to_features`) it is served with.
"""

from __future__ import annotations

import numpy as np


def shift_augmenter(max_shift: int, shape: tuple[int, int] = (28, 28)):
    """Shift each image by up to ±max_shift pixels in x and y, filling with zeros (the background)."""
    h, w = shape

    def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = x.shape[0]
        padded = np.zeros((n, h + 2 * max_shift, w + 2 * max_shift), dtype=x.dtype)
        padded[:, max_shift:max_shift + h, max_shift:max_shift + w] = x.reshape(n, h, w)
        dy, dx = rng.integers(0, 2 * max_shift + 1, (2, n))
        rows = (dy[:, None] + np.arange(h))[:, :, None]
        cols = (dx[:, None] + np.arange(w))[:, None, :]
        return padded[np.arange(n)[:, None, None], rows, cols].reshape(n, h * w)

    return augment


def affine_augmenter(max_degrees: float, max_scale: float, max_shift: float, shape: tuple[int, int] = (28, 28)):
    """Rotate by up to ±max_degrees, scale by 1 ± max_scale and shift by up to ±max_shift pixels, each image
    its own draw, sampling the source image bilinearly (zeros outside it).

    For an output pixel p (centred coordinates), the source pixel is ``A⁻¹ (p − t)`` with A the rotation
    times the scale and t the shift: every output pixel is read from where the transformed image puts it.
    """
    h, w = shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy, xx = np.meshgrid(np.arange(h) - cy, np.arange(w) - cx, indexing="ij")

    def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = x.shape[0]
        theta = np.deg2rad(rng.uniform(-max_degrees, max_degrees, n))
        scale = rng.uniform(1 - max_scale, 1 + max_scale, n)
        ty, tx = rng.uniform(-max_shift, max_shift, (2, n))
        cos, sin = np.cos(theta) / scale, np.sin(theta) / scale
        py = yy[None] - ty[:, None, None]
        px = xx[None] - tx[:, None, None]
        sy = cos[:, None, None] * py - sin[:, None, None] * px + cy  # inverse rotation and scale
        sx = sin[:, None, None] * py + cos[:, None, None] * px + cx
        y0, x0 = np.floor(sy), np.floor(sx)
        fy, fx = (sy - y0).astype(np.float32), (sx - x0).astype(np.float32)
        # one zero pixel of border on each side, so every neighbour index below is in range
        padded = np.zeros((n, h + 2, w + 2), dtype=np.float32)
        padded[:, 1:-1, 1:-1] = x.reshape(n, h, w)
        y0 = np.clip(y0, -1, h).astype(np.intp) + 1
        x0 = np.clip(x0, -1, w).astype(np.intp) + 1
        y1, x1 = np.minimum(y0 + 1, h + 1), np.minimum(x0 + 1, w + 1)
        flat = padded.reshape(n, -1)
        base = (np.arange(n) * (h + 2) * (w + 2))[:, None, None]
        row = w + 2

        def at(yi, xi):
            return flat.reshape(-1)[base + yi * row + xi]

        top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
        bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx
        out = top * (1 - fy) + bottom * fy
        return out.reshape(n, h * w).astype(x.dtype, copy=False)

    return augment
