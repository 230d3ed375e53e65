"""Pooling layers on NHWC images: ``MaxPool2D``, ``AvgPool2D``, ``GlobalAvgPool2D``.

A pool of size (ph, pw) with stride s looks at the same strided windows as a convolution
(:func:`scratchpilot.nn.conv.windows`) and reduces each to one number per channel. Backward passes
loop over the ph·pw window offsets only (whole-array operations), never over pixels.
"""

from __future__ import annotations

import numpy as np

from .conv import _pair, offset_slice
from .layers import Layer


class _Pool2D(Layer):
    def __init__(self, pool=2, stride=None) -> None:
        super().__init__()
        name = type(self).__name__
        self.pool = _pair(pool, "pool", name)
        self.stride = _pair(stride if stride is not None else self.pool, "stride", name)
        self._cache = None

    def _out_hw(self, h: int, w: int) -> tuple[int, int]:
        return (h - self.pool[0]) // self.stride[0] + 1, (w - self.pool[1]) // self.stride[1] + 1

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self!r} expects images (H, W, C), got {tuple(input_shape)}")
        ho, wo = self._out_hw(input_shape[0], input_shape[1])
        if ho < 1 or wo < 1:
            raise ValueError(f"{self!r}: input {tuple(input_shape)} is smaller than the pool {self.pool}")
        return (ho, wo, input_shape[2])

    def _check(self, x: np.ndarray) -> tuple[int, int]:
        if x.ndim != 4:
            raise ValueError(f"{self!r} expects input of shape (N, H, W, C), got {x.shape}")
        out_hw = self._out_hw(x.shape[1], x.shape[2])
        if min(out_hw) < 1:
            raise ValueError(f"{self!r}: input {x.shape} is smaller than the pool {self.pool}")
        return out_hw

    def config(self) -> dict:
        return {"type": type(self).__name__, "pool": list(self.pool), "stride": list(self.stride)}


class MaxPool2D(_Pool2D):
    """y[h, w, c] = max over the window of x; the gradient flows only to the (first) maximum of each window.

    ``pool`` and ``stride`` are ints or pairs; the stride defaults to the pool size. No padding: rows
    and columns that do not fill a window are dropped (as "valid" padding does).
    """

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        out_hw = self._check(x)
        pw = self.pool[1]
        out = x[offset_slice(0, 0, self.stride, out_hw)].copy()
        for k in range(1, self.pool[0] * pw):  # running maximum over the window offsets
            np.maximum(out, x[offset_slice(k // pw, k % pw, self.stride, out_hw)], out=out)
        self._cache = (x, out, out_hw)
        return out

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        x, out, out_hw = self._cache
        ph, pw = self.pool
        disjoint = self.stride[0] >= ph and self.stride[1] >= pw
        dx = np.zeros(x.shape, dtype=grad.dtype)
        taken = np.zeros(out.shape, dtype=bool)
        hit = np.empty(out.shape, dtype=bool)
        for k in range(ph * pw):  # the first offset that holds the maximum of its window takes the gradient
            index = offset_slice(k // pw, k % pw, self.stride, out_hw)
            np.equal(x[index], out, out=hit)
            hit &= ~taken
            taken |= hit
            if disjoint:  # windows do not overlap: each input pixel belongs to one window at most
                np.multiply(grad, hit, out=dx[index])
            else:
                dx[index] += grad * hit
        return dx


class AvgPool2D(_Pool2D):
    """y[h, w, c] = mean over the window of x; each input gets g / (ph·pw) from every window covering it."""

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        out_hw = self._check(x)
        self._cache = (x.shape, out_hw)
        out = np.zeros((x.shape[0], out_hw[0], out_hw[1], x.shape[3]), dtype=x.dtype)
        for i in range(self.pool[0]):
            for j in range(self.pool[1]):
                out += x[offset_slice(i, j, self.stride, out_hw)]
        out *= out.dtype.type(1.0 / (self.pool[0] * self.pool[1]))
        return out

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        shape, out_hw = self._cache
        dx = np.zeros(shape, dtype=grad.dtype)
        share = grad * grad.dtype.type(1.0 / (self.pool[0] * self.pool[1]))
        for i in range(self.pool[0]):
            for j in range(self.pool[1]):
                dx[offset_slice(i, j, self.stride, out_hw)] += share
        return dx


class GlobalAvgPool2D(Layer):
    """y[c] = mean over all H·W positions of x[:, :, c]: (N, H, W, C) → (N, C); backward spreads g / (H·W)."""

    def __init__(self) -> None:
        super().__init__()
        self._shape: tuple[int, ...] | None = None

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self!r} expects images (H, W, C), got {tuple(input_shape)}")
        return (input_shape[2],)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        if x.ndim != 4:
            raise ValueError(f"{self!r} expects input of shape (N, H, W, C), got {x.shape}")
        self._shape = x.shape
        return x.mean(axis=(1, 2))

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        n, h, w, c = self._shape
        share = grad * grad.dtype.type(1.0 / (h * w))
        return np.broadcast_to(share[:, None, None, :], self._shape).copy()
