"""Data-quality checks on image arrays (NumPy only): exact duplicates, leakage between splits, constant
pixels, class imbalance, and a nearest-neighbour shortlist of suspected label errors.

Everything works on batch-major uint8 arrays ``(N, ...)`` (one image per row, any shape) and is vectorised:
duplicates by hashing each row's bytes to 64 bits with matrix arithmetic and then checking candidate
groups byte for byte; label suspects by a nearest-neighbour search in a small PCA space, done with
matrix products over blocks of queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..util.progress import progress as progress_bar

# ------------------------------------------------------------------------------------------ duplicates


def row_hashes(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 64-bit hash of each row's bytes, uint64 (N,).

    Each row is read as 64-bit words, multiplied by fixed random odd constants and summed (mod 2**64).
    Equal rows always get equal hashes; different rows collide with negligible probability, and callers
    confirm candidate matches byte for byte anyway.
    """
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    if flat.dtype != np.uint8:
        flat = flat.view(np.uint8).reshape(len(images), -1)
    pad = (-flat.shape[1]) % 8
    if pad:
        flat = np.concatenate([flat, np.zeros((len(flat), pad), np.uint8)], axis=1)
    words = flat.view(np.uint64)
    multipliers = np.random.default_rng(seed).integers(1, 2**63, size=words.shape[1], dtype=np.uint64)
    multipliers |= np.uint64(1)
    hashes = np.zeros(len(words), dtype=np.uint64)
    for start in range(0, len(words), 8192):  # blocks keep the (block, words) product small
        block = words[start:start + 8192] * multipliers  # uint64 arithmetic wraps, which is what a hash wants
        hashes[start:start + 8192] = block.sum(axis=1, dtype=np.uint64)
    return hashes


def _exact_groups(flat: np.ndarray, candidates: np.ndarray) -> list[np.ndarray]:
    """Split one group of equal-hash row indices into groups of byte-identical rows (size >= 2 only)."""
    rows = np.ascontiguousarray(flat[candidates])
    keys = rows.view(np.dtype((np.void, rows.shape[1]))).ravel()
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    return [candidates[inverse == g] for g in np.flatnonzero(counts > 1)]


def duplicate_groups(images: np.ndarray) -> list[np.ndarray]:
    """Groups of indices of byte-identical images, each sorted, groups in order of their first index.

    Returns
    -------
    list of int64 arrays, each of length >= 2; images appearing once are in no group.
    """
    if len(images) < 2:
        return []
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    hashes = row_hashes(flat)
    order = np.argsort(hashes, kind="stable")
    sorted_hashes = hashes[order]
    boundaries = np.flatnonzero(np.diff(sorted_hashes)) + 1
    groups = []
    for candidates in np.split(order, boundaries):
        if len(candidates) > 1:
            groups.extend(np.sort(g) for g in _exact_groups(flat, candidates))
    groups.sort(key=lambda g: g[0])
    return groups


def cross_duplicates(images_a: np.ndarray, images_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``(i, j)`` with ``images_a[i]`` byte-identical to ``images_b[j]``.

    Returns
    -------
    index_a, index_b : int64 (P,), sorted by ``index_b`` then ``index_a``.
    """
    flat_a = np.ascontiguousarray(images_a).reshape(len(images_a), -1)
    flat_b = np.ascontiguousarray(images_b).reshape(len(images_b), -1)
    if len(flat_a) == 0 or len(flat_b) == 0 or flat_a.shape[1] != flat_b.shape[1]:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    hashes_a, hashes_b = row_hashes(flat_a), row_hashes(flat_b)
    common = np.intersect1d(hashes_a, hashes_b)
    pairs_a, pairs_b = [], []
    for h in common:
        for j in np.flatnonzero(hashes_b == h):
            for i in np.flatnonzero(hashes_a == h):
                if np.array_equal(flat_a[i], flat_b[j]):
                    pairs_a.append(i)
                    pairs_b.append(j)
    index_a, index_b = np.asarray(pairs_a, np.int64), np.asarray(pairs_b, np.int64)
    order = np.lexsort((index_a, index_b))
    return index_a[order], index_b[order]


# ------------------------------------------------------------------------------------- pixels, classes


def constant_pixels(images: np.ndarray) -> np.ndarray:
    """Mask of the pixel positions that hold the same value in every image, bool of shape ``images.shape[1:]``."""
    if len(images) == 0:
        return np.zeros(images.shape[1:], dtype=bool)
    return (images.min(axis=0) == images.max(axis=0))


def class_imbalance(counts: np.ndarray, ratio_warning: float = 1.5) -> dict:
    """How uneven the class counts are.

    Returns ``largest``, ``smallest`` (class indices), ``ratio`` (largest / smallest count; None when a
    class is empty), ``empty_classes``, ``shares`` and ``warning`` (ratio above ``ratio_warning`` or any
    empty class).
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = max(int(counts.sum()), 1)
    largest, smallest = int(counts.argmax()), int(counts.argmin())
    ratio = float(counts[largest] / counts[smallest]) if counts[smallest] else None
    empty = [int(k) for k in np.flatnonzero(counts == 0)]
    return {"largest": largest, "smallest": smallest, "ratio": ratio, "empty_classes": empty,
            "shares": (counts / total).tolist(), "warning": ratio is None or ratio > ratio_warning}


# ------------------------------------------------------------------------------------- label suspects


def pca_basis(features: np.ndarray, n_components: int, rng: np.random.Generator,
              max_samples: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """Mean and leading principal directions of float32 rows ``features`` (N, D).

    Fitted on at most ``max_samples`` random rows, with a randomised subspace iteration on the D x D
    covariance (a few products with a thin matrix instead of a full eigendecomposition).

    Returns
    -------
    mean : float32 (D,); components : float32 (D, n_components), orthonormal columns, by decreasing variance.
    """
    sample = features if len(features) <= max_samples else features[rng.choice(len(features), max_samples,
                                                                                replace=False)]
    mean = sample.mean(axis=0, dtype=np.float64)
    centred = (sample - mean).astype(np.float32)
    covariance = (centred.T @ centred).astype(np.float64) / max(len(sample) - 1, 1)
    n_components = min(n_components, covariance.shape[0])
    width = min(covariance.shape[0], n_components + 10)
    basis, _ = np.linalg.qr(covariance @ rng.standard_normal((covariance.shape[0], width)))
    for _ in range(4):
        basis, _ = np.linalg.qr(covariance @ basis)
    eigenvalues, rotation = np.linalg.eigh(basis.T @ covariance @ basis)
    components = (basis @ rotation)[:, ::-1][:, :n_components]
    return mean.astype(np.float32), np.ascontiguousarray(components, dtype=np.float32)


@dataclass
class NeighbourVotes:
    """Per image, the squared distance to the nearest reference image of each class.

    Attributes
    ----------
    distances : float32 (N, K); inf for a class with no reference image.
    labels : int64 (N,), the given labels.
    """

    distances: np.ndarray
    labels: np.ndarray

    @property
    def nearest_class(self) -> np.ndarray:
        """int64 (N,): the class of the nearest reference image (a 1-nearest-neighbour prediction)."""
        return self.distances.argmin(axis=1)

    @property
    def ratio(self) -> np.ndarray:
        """float64 (N,): distance to the nearest image with the same label / to the nearest with another one.

        Above 1 the image sits closer to another class than to any other example of its own label; the
        larger, the more suspicious (inf for an exact copy with another label).
        """
        rows = np.arange(len(self.labels))
        own = self.distances[rows, self.labels].astype(np.float64)
        others = self.distances.astype(np.float64).copy()
        others[rows, self.labels] = np.inf
        other = others.min(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.sqrt(own) / np.sqrt(other)
        ratio[(own == 0) & (other == 0)] = 1.0
        return ratio

    @property
    def other_class(self) -> np.ndarray:
        """int64 (N,): the nearest class other than the given label."""
        others = self.distances.copy()
        others[np.arange(len(self.labels)), self.labels] = np.inf
        return others.argmin(axis=1)


def neighbour_votes(images: np.ndarray, labels: np.ndarray, n_classes: int, rng: np.random.Generator,
                    reference_per_class: int = 1000, n_components: int = 32, block: int = 512,
                    progress: bool = False) -> NeighbourVotes:
    """Nearest reference image of every class for each image, in a PCA space (leave-one-out).

    The reference set is a stratified random sample of up to ``reference_per_class`` images per class
    from the same images; an image is never its own neighbour. Images are compared as float pixels in
    [0, 1], projected on ``n_components`` principal directions; large images are first averaged down to
    at most 32 x 32 so that the covariance stays small.

    Parameters
    ----------
    images : uint8 (N, H, W) or (N, H, W, C).
    labels : int (N,) in 0..n_classes-1.
    """
    labels = np.asarray(labels, dtype=np.int64)
    features = _small_features(images)
    mean, components = pca_basis(features, n_components, rng)
    projected = (features - mean) @ components  # (N, n_components)

    reference = np.concatenate([
        np.sort(rng.permutation(np.flatnonzero(labels == k))[:reference_per_class]) for k in range(n_classes)])
    reference_labels = labels[reference]
    present = np.unique(reference_labels)
    starts = np.searchsorted(reference_labels, present)  # reference is grouped by class already
    ref_vectors = projected[reference]
    ref_scaled = np.ascontiguousarray((-2.0 * ref_vectors).T, dtype=np.float32)
    ref_norms = (ref_vectors * ref_vectors).sum(axis=1).astype(np.float32)
    position_in_reference = np.full(len(labels), -1, dtype=np.int64)
    position_in_reference[reference] = np.arange(len(reference))

    distances = np.full((len(labels), n_classes), np.inf, dtype=np.float32)
    blocks = range(0, len(labels), block)
    for start in progress_bar(blocks, desc="nearest neighbours", unit="block", enabled=progress):
        queries = projected[start:start + block]
        partial = queries @ ref_scaled  # |r|^2 - 2 q.r, the part of |q - r|^2 that varies with r
        partial += ref_norms
        own = position_in_reference[start:start + block]
        inside = np.flatnonzero(own >= 0)
        partial[inside, own[inside]] = np.inf  # leave-one-out
        nearest = np.minimum.reduceat(partial, starts, axis=1)
        nearest += (queries * queries).sum(axis=1, keepdims=True)
        distances[start:start + block, present] = np.maximum(nearest, 0.0)
    return NeighbourVotes(distances=distances, labels=labels)


def _small_features(images: np.ndarray, max_side: int = 32) -> np.ndarray:
    """float32 (N, D) in [0, 1]; colour averaged to grey and big images block-averaged to <= max_side."""
    data = images
    if data.ndim == 4:
        data = data.mean(axis=3, dtype=np.float32)
    height, width = data.shape[1:3]
    factor = max(1, -(-max(height, width) // max_side))
    if factor > 1:
        h, w = height // factor * factor, width // factor * factor
        data = data[:, :h, :w].reshape(len(data), h // factor, factor, w // factor, factor).mean(
            axis=(2, 4), dtype=np.float32)
    features = np.asarray(data, dtype=np.float32).reshape(len(images), -1)
    features /= np.float32(255)
    return features
