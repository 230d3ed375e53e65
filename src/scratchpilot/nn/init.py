"""Weight initialisers.

Every initialiser takes ``(rng, n_in, n_out, dtype)`` and returns a ``(n_in, n_out)`` array, so that a
layer computes ``x @ W`` with batch-major ``x`` of shape ``(N, n_in)``.
"""

from __future__ import annotations

import numpy as np


def normal(rng: np.random.Generator, n_in: int, n_out: int, dtype=np.float32) -> np.ndarray:
    """N(0, 1): the original tutorial's ``np.random.randn`` weights (saturates sigmoids in wide layers)."""
    return rng.standard_normal((n_in, n_out)).astype(dtype)


def nielsen(rng: np.random.Generator, n_in: int, n_out: int, dtype=np.float32) -> np.ndarray:
    """N(0, 1/n_in): Nielsen's improved init, keeps the weighted input z = w·x of order 1."""
    return (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(dtype)


def glorot(rng: np.random.Generator, n_in: int, n_out: int, dtype=np.float32) -> np.ndarray:
    """Glorot/Xavier uniform: U(±sqrt(6/(n_in+n_out))), keeps variance of activations and gradients."""
    limit = np.sqrt(6.0 / (n_in + n_out))
    return rng.uniform(-limit, limit, (n_in, n_out)).astype(dtype)


def he(rng: np.random.Generator, n_in: int, n_out: int, dtype=np.float32) -> np.ndarray:
    """He normal: N(0, 2/n_in), the variance that ReLU (which zeroes half its inputs) needs."""
    return (rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)).astype(dtype)


INITIALISERS = {"normal": normal, "nielsen": nielsen, "glorot": glorot, "he": he}


def get(name: str):
    """Look up an initialiser by name, with a clear error listing the known ones."""
    try:
        return INITIALISERS[name]
    except KeyError:
        raise ValueError(f"unknown initialiser {name!r}; choose one of {sorted(INITIALISERS)}") from None
