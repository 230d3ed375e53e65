"""Batch normalisation (Ioffe & Szegedy 2015), for dense features and for image channels.

The statistics are taken over every axis but the last: over the batch for dense features ``(N, F)``,
over the batch and all positions for NHWC images ``(N, H, W, C)`` — one mean and variance per channel.
"""

from __future__ import annotations

import numpy as np

from .layers import Layer, check_positive_int


class BatchNorm(Layer):
    """y = γ · (x − μ) / √(σ² + ε) + β, per feature (the last axis).

    Training uses the batch's μ and σ² (biased) and updates the running statistics (a batch of one value
    per feature uses the running statistics instead)
    ``running ← momentum · running + (1 − momentum) · batch`` (the running variance takes the unbiased
    batch variance, as PyTorch does); inference, and a frozen layer (``trainable = False``, as in Keras),
    uses the running statistics. Both are saved with the model (``state``).

    Backward in training mode, with x̂ = (x − μ)/√(σ² + ε), m values per feature and g = ∂L/∂y:

        ∂L/∂γ = Σ g·x̂,   ∂L/∂β = Σ g,
        ∂L/∂x = γ / (m √(σ² + ε)) · (m·g − Σ g − x̂ · Σ g·x̂)

    (μ and σ² depend on every x of the batch, hence the two correction sums). In inference mode μ and σ²
    are constants and ∂L/∂x = g · γ / √(σ² + ε).
    """


    def __init__(self, n_features: int, momentum: float = 0.9, eps: float = 1e-5) -> None:
        super().__init__()
        self.n_features = check_positive_int(n_features, "n_features", "BatchNorm")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"BatchNorm: momentum must be in [0, 1), got {momentum!r}")
        if not eps > 0:
            raise ValueError(f"BatchNorm: eps must be > 0, got {eps!r}")
        self.momentum, self.eps = float(momentum), float(eps)
        self._cache = None

    def build(self, rng: np.random.Generator, dtype) -> None:
        f = self.n_features
        self.params = {"gamma": np.ones(f, dtype=dtype), "beta": np.zeros(f, dtype=dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.state = {"running_mean": np.zeros(f, dtype=dtype), "running_var": np.ones(f, dtype=dtype)}

    def array_shapes(self):
        f = (self.n_features,)
        return {"gamma": f, "beta": f}, {"running_mean": f, "running_var": f}

    def output_shape(self, input_shape):
        if not input_shape or input_shape[-1] != self.n_features:
            raise ValueError(f"{self!r} normalises {self.n_features} features (the last axis), "
                             f"got inputs of shape {tuple(input_shape)}")
        return tuple(input_shape)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        if x.ndim < 2 or x.shape[-1] != self.n_features:
            raise ValueError(f"{self!r} expects input with {self.n_features} features last, got {x.shape}")
        gamma, beta = self.params["gamma"], self.params["beta"]
        x2 = x.reshape(-1, self.n_features)
        # one value per feature has no spread to normalise by (a last mini-batch of one row): that batch
        # goes through on the running statistics and leaves them alone
        if training and self.trainable and x2.shape[0] > 1:
            m = x2.shape[0]
            mean = x2.mean(axis=0)
            centred = x2 - mean
            var = np.einsum("ij,ij->j", centred, centred) / m
            inv_std = 1.0 / np.sqrt(var + self.eps)
            xhat = centred
            xhat *= inv_std
            mom = self.momentum
            self.state["running_mean"] *= mom
            self.state["running_mean"] += (1 - mom) * mean
            self.state["running_var"] *= mom
            self.state["running_var"] += (1 - mom) * var * (m / max(m - 1, 1))
            self._cache = ("batch", xhat, inv_std, x.shape)
            out = xhat * gamma
            out += beta
            return out.reshape(x.shape)
        inv_std = 1.0 / np.sqrt(self.state["running_var"] + self.eps)
        scale = gamma * inv_std
        shift = beta - self.state["running_mean"] * scale
        self._cache = ("running", x2, inv_std, x.shape)
        out = x2 * scale
        out += shift
        return out.reshape(x.shape)

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        mode, saved, inv_std, shape = self._cache
        g = grad.reshape(-1, self.n_features)
        gamma = self.params["gamma"]
        if mode == "running":
            if self.trainable:
                xhat = (saved - self.state["running_mean"]) * inv_std
                np.einsum("ij,ij->j", g, xhat, out=self.grads["gamma"])
                np.sum(g, axis=0, out=self.grads["beta"])
            return (g * (gamma * inv_std)).reshape(shape) if input_grad else None
        xhat = saved
        sum_g = g.sum(axis=0)
        sum_gx = np.einsum("ij,ij->j", g, xhat)
        self.grads["gamma"][...] = sum_gx
        self.grads["beta"][...] = sum_g
        if not input_grad:
            return None
        m = g.shape[0]
        dx = g * m
        dx -= sum_g
        dx -= xhat * sum_gx
        dx *= gamma * inv_std / m
        return dx.reshape(shape)

    def config(self) -> dict:
        return {"type": "BatchNorm", "n_features": self.n_features, "momentum": self.momentum, "eps": self.eps}
