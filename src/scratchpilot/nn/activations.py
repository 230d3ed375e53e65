"""Element-wise activation layers. Each backward multiplies the incoming gradient by f'(z),
written in terms of the cached output where that is cheaper (sigmoid, tanh)."""

from __future__ import annotations

import numpy as np

from .layers import Layer


def sigmoid(z: np.ndarray) -> np.ndarray:
    """σ(z) = 1 / (1 + e^(−z)).

    z is clipped at −80 first: e^80 still fits in float32, so nothing overflows, and σ(−80) ≈ 1.8e−35
    is zero for every practical purpose. Computed in place on one temporary (measured faster than
    the ``np.where`` two-branch form at the tutorial's batch size of 10).
    """
    t = np.maximum(z, -80.0, dtype=z.dtype) if z.dtype.kind == "f" else np.maximum(z, -80.0)
    np.negative(t, out=t)
    np.exp(t, out=t)
    t += 1.0
    np.reciprocal(t, out=t)
    return t


class Sigmoid(Layer):
    """a = σ(z); da/dz = σ(z)(1 − σ(z)) = a(1 − a) — the tutorial's ``sigmoid_prime``."""

    def __init__(self) -> None:
        super().__init__()
        self._a: np.ndarray | None = None

    def forward(self, x, training=False):
        self._a = sigmoid(x)
        return self._a

    def backward(self, grad, input_grad=True):
        a = self._a
        out = np.subtract(1.0, a, dtype=a.dtype)  # a(1 − a) ⊙ grad, in one temporary
        out *= a
        out *= grad
        return out


class Tanh(Layer):
    """a = tanh(z); da/dz = 1 − a²."""

    def __init__(self) -> None:
        super().__init__()
        self._a: np.ndarray | None = None

    def forward(self, x, training=False):
        self._a = np.tanh(x)
        return self._a

    def backward(self, grad, input_grad=True):
        return grad * (1.0 - self._a * self._a)


class ReLU(Layer):
    """a = max(z, 0); da/dz = 1 where z > 0, else 0."""

    def __init__(self) -> None:
        super().__init__()
        self._a: np.ndarray | None = None

    def forward(self, x, training=False):
        self._a = np.maximum(x, 0)
        return self._a

    def backward(self, grad, input_grad=True):
        # grad is a fresh array owned by the caller's backward pass: mask it in place.
        grad = np.multiply(grad, self._a > 0, out=grad if grad.flags.writeable else None)
        return grad


class LeakyReLU(Layer):
    """a = z for z > 0, α·z otherwise; da/dz = 1 or α."""

    def __init__(self, alpha: float = 0.01) -> None:
        super().__init__()
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"LeakyReLU: alpha must be in [0, 1), got {alpha!r}")
        self.alpha = float(alpha)
        self._positive: np.ndarray | None = None

    def forward(self, x, training=False):
        self._positive = x > 0
        return np.where(self._positive, x, x * x.dtype.type(self.alpha))

    def backward(self, grad, input_grad=True):
        return np.where(self._positive, grad, grad * grad.dtype.type(self.alpha))

    def config(self) -> dict:
        return {"type": "LeakyReLU", "alpha": self.alpha}


class ReLU6(Layer):
    """a = min(max(z, 0), 6); da/dz = 1 for 0 < z < 6, else 0 (MobileNet's activation, bounded for int8)."""

    def __init__(self) -> None:
        super().__init__()
        self._z: np.ndarray | None = None

    def forward(self, x, training=False):
        # the input is kept (not copied) and the mask made only if a backward pass asks for it: inference,
        # most of this layer's use, is two passes over the data instead of four
        self._z = x
        out = np.maximum(x, 0)
        np.minimum(out, 6, out=out)
        return out

    def backward(self, grad, input_grad=True):
        z = self._z
        return grad * ((z > 0) & (z < 6))
