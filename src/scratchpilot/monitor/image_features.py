"""Statistics of a picture as it arrived, before any preprocessing: what the inputs of a pilot (camera
frames) or of a transfer model (photos) are watched by.

``brightness`` (mean grey level, 0…1), ``contrast`` (their standard deviation) and ``edge_density`` (the
share of pixels whose grey level differs from a neighbour's, right or below, by more than
:data:`EDGE_STEP`). Dusk, glare, a dirty lens or a new room move them long before a model's accuracy
can be measured.
"""

from __future__ import annotations

import numpy as np

FRAME_FEATURES = ("brightness", "contrast", "edge_density")
#: a grey-level step (0…1) this large between neighbouring pixels counts as an edge
EDGE_STEP = 0.1
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def frame_features_batch(frames: np.ndarray) -> np.ndarray:
    """float64 (N, 3): :data:`FRAME_FEATURES` of uint8 frames (N, H, W) or (N, H, W, 3)."""
    frames = np.asarray(frames)
    gray = (frames[..., :3] @ _LUMA if frames.ndim == 4 else frames.astype(np.float32)) / np.float32(255)
    n = len(gray)
    flat = gray.reshape(n, -1)
    step = np.float32(EDGE_STEP)
    right = np.abs(np.diff(gray, axis=2)) > step
    below = np.abs(np.diff(gray, axis=1)) > step
    edges = (right.reshape(n, -1).sum(axis=1) + below.reshape(n, -1).sum(axis=1)) / (right[0].size + below[0].size)
    return np.round(np.stack([flat.mean(axis=1), flat.std(axis=1), edges], axis=1).astype(np.float64), 6)


def frame_features(frame: np.ndarray) -> dict[str, float]:
    """:func:`frame_features_batch` of one frame, by name."""
    return dict(zip(FRAME_FEATURES, frame_features_batch(np.asarray(frame)[None])[0].tolist(), strict=True))


def picture_features(paths, *, side: int = 96, limit: int = 500, seed: int = 0) -> np.ndarray:
    """:func:`frame_features_batch` of up to ``limit`` image files (a seeded sample), each decoded by the
    package's one decoder and reduced to ``side``×``side`` RGB first; unreadable ones are left out."""
    from ..util.images import ImageDecodeError, open_image

    paths = list(paths)
    if len(paths) > limit:
        pick = np.random.default_rng(seed).choice(len(paths), limit, replace=False)
        paths = [paths[i] for i in sorted(pick)]
    rows = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                picture = open_image(f.read(), where=str(path))
        except (OSError, ImageDecodeError):
            continue
        rgb = np.asarray(picture.convert("RGB").resize((side, side)))
        rows.append(frame_features_batch(rgb[None])[0])
    return np.array(rows).reshape(-1, len(FRAME_FEATURES))
