"""The reference inputs of the EfficientNet-Lite0 parity test, shared with ``bench/transfer_parity.py``
(which runs the PyTorch definition on them and writes ``fixtures/efficientnet_lite0_torch.npz``).

NumPy only, no image library: the centre square of a photo sampled to 224×224 by nearest neighbour, so the
inputs are the same bit for bit wherever the test runs, and the test compares networks, not resizers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).parent / "fixtures" / "efficientnet_lite0_torch.npz"
#: scikit-image's sample photos used, by their loader's name
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")


def photo(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)()


def reference_input(image: np.ndarray, size: int = 224) -> np.ndarray:
    """(size, size, 3) float32: the centre square, nearest-neighbour sampled, scaled (x − 127) / 128."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    index = (np.arange(size) * side) // size
    square = image[top:top + side, left:left + side][index][:, index, :3]
    return (square.astype(np.float32) - 127.0) / 128.0


def reference_batch() -> np.ndarray:
    return np.stack([reference_input(photo(name)) for name in PHOTOS])
