"""Convolution layers: ``Conv2D`` (im2col + one matrix product) and ``DepthwiseConv2D`` (one filter per channel).

Layout: NHWC — images are ``(N, height, width, channels)``, kernels ``(kh, kw, C_in, C_out)``. Chosen by
measurement (``bench/conv_layout.py``): with channels last, the column matrix is gathered with one strided
view whose innermost axis is contiguous, and the matrix product ``cols @ W`` comes out already in NHWC
order, so neither the forward nor the backward pass needs a transpose. NCHW needs one transpose per
product (the output is ``(C_out, N·H·W)`` or must be permuted back).

What a convolution computes, for one image (stride s, zero padding already applied to x):

    y[h, w, o] = b[o] + Σ_{i<kh} Σ_{j<kw} Σ_c x[s·h + i, s·w + j, c] · W[i, j, c, o]

im2col writes every receptive field as one row of a matrix ``cols`` with ``kh·kw·C_in`` columns (copied
from a strided view of x: no Python loop over pixels or images, only over blocks of images), so the whole
layer is one product ``y = cols @ W.reshape(kh·kw·C_in, C_out) + b``.

Gradients, with g = ∂L/∂y:

- ∂L/∂W = colsᵀ @ g (summed over every position of every image) and ∂L/∂b = Σ g;
- ∂L/∂x is the convolution of g with the kernel flipped (a "full" correlation): every input pixel collects
  g · W from each output position whose window covers it. Computed as ``dcols = g @ Wᵀ`` followed by a
  sum over the kh·kw kernel offsets — offset (i, j) adds ``dcols[..., i, j, :]`` to the strided slice of x
  it was read from. That is kh·kw whole-array additions, never an ``np.add.at`` scatter.

Memory bound: images go through in blocks whose column matrix holds about :data:`CACHE_BLOCK_ELEMENTS`
numbers (2²⁰, 4 MiB in float32), so a block is still in cache when its product reads it. In training the
whole batch's column matrix is kept for ∂L/∂W when it holds at most :data:`MAX_COLUMN_ELEMENTS` numbers
(2²⁴, 64 MiB in float32); a larger batch gathers it again in the backward pass, one bounded block at a
time. Inference never holds more than one block's columns.
"""

from __future__ import annotations

import os

import numpy as np

from . import init as _init
from .layers import Layer, check_positive_int

#: largest column matrix (elements) kept for the backward pass; bigger batches gather it again per block
MAX_COLUMN_ELEMENTS = 1 << 24
#: images are gathered and multiplied in blocks of about this many column elements (4 MiB in float32), so
#: that a block is still in cache when the product (or the offset sum of the backward pass) reads it
CACHE_BLOCK_ELEMENTS = 1 << 20


#: the largest kernel, stride or padding a layer accepts (far above any real network; refuses absurd files)
MAX_SPATIAL = 4096


#: output elements per band of the depthwise forward pass (256 KiB in float32: two bands and their inputs
#: stay in a core's L2 cache)
DEPTHWISE_BLOCK_ELEMENTS = 1 << 16
_pool = None
_pool_workers = 0


def _workers() -> int:
    """Threads for element-wise work: the cores this process may use (NumPy's ufuncs release the GIL on
    arrays this size, so the bands of a depthwise layer run side by side as BLAS's threads would)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 8))


def _in_parallel(work, items) -> None:
    """``work(item)`` for every item, on a shared pool of :func:`_workers` threads when there are several."""
    global _pool, _pool_workers
    workers = _workers()
    if workers == 1 or len(items) < 2:
        for item in items:
            work(item)
        return
    if _pool_workers != workers:
        from concurrent.futures import ThreadPoolExecutor

        _pool, _pool_workers = ThreadPoolExecutor(workers, thread_name_prefix="scratchpilot-nn"), workers
    for future in [_pool.submit(work, item) for item in items]:
        future.result()


def _pair(value, name: str, layer: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        value = (value, value)
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise ValueError(f"{layer}: {name} must be an int or a pair of ints, got {value!r}")
    for v in value:
        check_positive_int(v, name, layer)
        if v > MAX_SPATIAL:
            raise ValueError(f"{layer}: {name} must be at most {MAX_SPATIAL}, got {v!r}")
    return int(value[0]), int(value[1])


def conv_padding(padding, kernel: tuple[int, int], stride: tuple[int, int], size: tuple[int, int],
                 layer: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """Zero padding ``((top, bottom), (left, right))`` for ``"valid"``, ``"same"`` or an int.

    ``"same"`` gives ``ceil(size / stride)`` outputs, with the odd pixel of padding at the bottom/right
    (as TensorFlow does, so pretrained TensorFlow models line up).
    """
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        pads = []
        for n, k, s in zip(size, kernel, stride, strict=True):
            out = -(-n // s)
            total = max((out - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return pads[0], pads[1]
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool) and 0 <= padding <= MAX_SPATIAL:
        return (int(padding), int(padding)), (int(padding), int(padding))
    raise ValueError(f"{layer}: padding must be 'valid', 'same' or an int from 0 to {MAX_SPATIAL}, "
                     f"got {padding!r}")


def _pad(x: np.ndarray, pads) -> np.ndarray:
    (t, b), (l, r) = pads
    if not (t or b or l or r):
        return x
    out = np.zeros((x.shape[0], x.shape[1] + t + b, x.shape[2] + l + r, x.shape[3]), dtype=x.dtype)
    out[:, t:t + x.shape[1], l:l + x.shape[2]] = x
    return out


def windows(xp: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], out_hw: tuple[int, int]):
    """A read-only strided view ``(N, Ho, Wo, kh, kw, C)`` of every receptive field of padded ``xp``."""
    n, _, _, c = xp.shape
    sn, sh, sw, sc = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp, shape=(n, out_hw[0], out_hw[1], kernel[0], kernel[1], c),
        strides=(sn, sh * stride[0], sw * stride[1], sh, sw, sc), writeable=False)


def offset_slice(i: int, j: int, stride: tuple[int, int], out_hw: tuple[int, int]):
    """The index of padded-input pixels that kernel offset (i, j) reads, one per output position."""
    return (slice(None), slice(i, i + stride[0] * (out_hw[0] - 1) + 1, stride[0]),
            slice(j, j + stride[1] * (out_hw[1] - 1) + 1, stride[1]), slice(None))


class _SpatialLayer(Layer):
    """Shared bookkeeping of the convolutions: kernel, stride, padding and output size."""

    def __init__(self, channels: int, kernel, stride, padding) -> None:
        super().__init__()
        name = type(self).__name__
        self.kernel = _pair(kernel, "kernel", name)
        self.stride = _pair(stride, "stride", name)
        conv_padding(padding, self.kernel, self.stride, (1, 1), name)  # validate early
        self.padding = padding
        self.in_channels = check_positive_int(channels, "in_channels", name)

    def _geometry(self, h: int, w: int):
        pads = conv_padding(self.padding, self.kernel, self.stride, (h, w), type(self).__name__)
        ho = (h + sum(pads[0]) - self.kernel[0]) // self.stride[0] + 1
        wo = (w + sum(pads[1]) - self.kernel[1]) // self.stride[1] + 1
        return pads, (ho, wo)

    def _spatial_output(self, input_shape, channels_out: int) -> tuple[int, ...]:
        if len(input_shape) != 3 or input_shape[2] != self.in_channels:
            raise ValueError(f"{self!r} expects images (H, W, {self.in_channels}), got {tuple(input_shape)}")
        _, (ho, wo) = self._geometry(input_shape[0], input_shape[1])
        if ho < 1 or wo < 1:
            raise ValueError(f"{self!r}: input {tuple(input_shape)} is smaller than the kernel {self.kernel}")
        return (ho, wo, channels_out)

    def _check_input(self, x: np.ndarray) -> None:
        if x.ndim != 4 or x.shape[3] != self.in_channels:
            raise ValueError(f"{self!r} expects input of shape (N, H, W, {self.in_channels}), got {x.shape}")


class Conv2D(_SpatialLayer):
    """2-D convolution (cross-correlation, as every framework computes it), NHWC.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel : int or (kh, kw)
    stride : int or (sh, sw)
    padding : "valid" (no padding), "same" (``ceil(H / stride)`` outputs) or an int (zeros on every side)
    init : initialiser for W, with fan-in ``kh·kw·in_channels``; biases start at zero.

    ``W`` has shape ``(kh, kw, in_channels, out_channels)``, ``b`` shape ``(out_channels,)``.
    """

    decay = ("W",)

    def __init__(self, in_channels: int, out_channels: int, kernel=3, stride=1, padding="valid",
                 init: str = "he") -> None:
        super().__init__(in_channels, kernel, stride, padding)
        self.out_channels = check_positive_int(out_channels, "out_channels", "Conv2D")
        _init.get(init)
        self.init = init
        self._cache = None

    def build(self, rng: np.random.Generator, dtype) -> None:
        kh, kw = self.kernel
        fan_in = kh * kw * self.in_channels
        W = _init.get(self.init)(rng, fan_in, self.out_channels, dtype).reshape(kh, kw, self.in_channels,
                                                                                 self.out_channels)
        self.params = {"W": W, "b": np.zeros(self.out_channels, dtype=dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def array_shapes(self):
        return {"W": (*self.kernel, self.in_channels, self.out_channels), "b": (self.out_channels,)}, {}

    def output_shape(self, input_shape):
        return self._spatial_output(input_shape, self.out_channels)

    def _images_per_block(self, out_hw, limit: int) -> int:
        """How many images' columns fit in ``limit`` elements (at least one)."""
        per_image = out_hw[0] * out_hw[1] * self.kernel[0] * self.kernel[1] * self.in_channels
        return max(1, limit // per_image)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._check_input(x)
        pads, out_hw = self._geometry(x.shape[1], x.shape[2])
        xp = _pad(x, pads)
        Wm = self.params["W"].reshape(-1, self.out_channels)
        n = x.shape[0]
        keep = training and self.trainable and n <= self._images_per_block(out_hw, MAX_COLUMN_ELEMENTS)
        rows_per_image = out_hw[0] * out_hw[1]
        k = self.kernel[0] * self.kernel[1] * self.in_channels
        cols = np.empty((n * rows_per_image, k), dtype=x.dtype) if keep else None
        out = np.empty((n * rows_per_image, self.out_channels), dtype=np.result_type(x, Wm))
        # gather and multiply a cache-sized block of images at a time: the block's columns are still in
        # cache when the product reads them
        block = self._images_per_block(out_hw, CACHE_BLOCK_ELEMENTS)
        for start in range(0, n, block):
            rows = slice(start * rows_per_image, min(n, start + block) * rows_per_image)
            view = windows(xp[start:start + block], self.kernel, self.stride, out_hw)
            if keep:
                part = cols[rows].reshape(view.shape)
                np.copyto(part, view)
                part = cols[rows]
            else:
                part = view.reshape(-1, k)
            np.matmul(part, Wm, out=out[rows])
        out += self.params["b"]
        self._cache = (xp, pads, out_hw, cols, x.shape)
        return out.reshape(n, out_hw[0], out_hw[1], self.out_channels)

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        xp, pads, out_hw, cols, x_shape = self._cache
        n = grad.shape[0]
        Wm = self.params["W"].reshape(-1, self.out_channels)
        g_all = grad.reshape(-1, self.out_channels)
        if self.trainable:
            dW = self.grads["W"].reshape(-1, self.out_channels)
            np.sum(g_all, axis=0, out=self.grads["b"])
            if cols is not None:
                np.matmul(cols.T, g_all, out=dW)
            else:  # the columns were not kept: gather them again, a bounded block at a time
                block = self._images_per_block(out_hw, MAX_COLUMN_ELEMENTS)
                for start in range(0, n, block):
                    c = windows(xp[start:start + block], self.kernel, self.stride, out_hw)
                    c = c.reshape(-1, Wm.shape[0])
                    g = grad[start:start + block].reshape(-1, self.out_channels)
                    if start == 0:
                        np.matmul(c.T, g, out=dW)
                    else:
                        dW += c.T @ g
        if not input_grad:
            return None
        kh, kw = self.kernel
        dxp = np.zeros_like(xp)
        block = self._images_per_block(out_hw, CACHE_BLOCK_ELEMENTS)
        for start in range(0, n, block):  # dcols for a cache-sized block, then the sum over kernel offsets
            g = grad[start:start + block].reshape(-1, self.out_channels)
            dcols = (g @ Wm.T).reshape(-1, out_hw[0], out_hw[1], kh, kw, self.in_channels)
            target = dxp[start:start + block]
            for i in range(kh):
                for j in range(kw):
                    target[offset_slice(i, j, self.stride, out_hw)] += dcols[:, :, :, i, j, :]
        (t, _), (l, _) = pads
        return dxp[:, t:t + x_shape[1], l:l + x_shape[2]]

    def config(self) -> dict:
        return {"type": "Conv2D", "in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel": list(self.kernel), "stride": list(self.stride), "padding": self.padding,
                "init": self.init}


class DepthwiseConv2D(_SpatialLayer):
    """Depthwise convolution: one kh×kw filter per channel, channels never mix (MobileNet, EfficientNet).

        y[h, w, c] = b[c] + Σ_{i,j} x[s·h + i, s·w + j, c] · W[i, j, c]

    A matrix product per channel would have a single column, so instead the layer sums over the kh·kw kernel
    offsets, each a whole-array multiply-add over every image, position and channel (no loop over pixels).
    Backward: ∂L/∂W[i, j, c] = Σ_{n,h,w} g · x(offset i, j), ∂L/∂b = Σ g, and ∂L/∂x collects g · W[i, j]
    at each offset — the same offset sum as :class:`Conv2D`'s input gradient.

    ``W`` has shape ``(kh, kw, channels)``, ``b`` shape ``(channels,)``.
    """

    decay = ("W",)

    def __init__(self, channels: int, kernel=3, stride=1, padding="valid", init: str = "he") -> None:
        super().__init__(channels, kernel, stride, padding)
        _init.get(init)
        self.init = init
        self._cache = None

    def build(self, rng: np.random.Generator, dtype) -> None:
        kh, kw = self.kernel
        W = _init.get(self.init)(rng, kh * kw, self.in_channels, dtype).reshape(kh, kw, self.in_channels)
        self.params = {"W": W, "b": np.zeros(self.in_channels, dtype=dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def array_shapes(self):
        return {"W": (*self.kernel, self.in_channels), "b": (self.in_channels,)}, {}

    def output_shape(self, input_shape):
        return self._spatial_output(input_shape, self.in_channels)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._check_input(x)
        pads, out_hw = self._geometry(x.shape[1], x.shape[2])
        xp = _pad(x, pads)
        W, b = self.params["W"], self.params["b"]
        n, (ho, wo), c = x.shape[0], out_hw, self.in_channels
        out = np.empty((n, ho, wo, c), dtype=np.result_type(x, W))
        (kh, kw), (sh, sw) = self.kernel, self.stride
        # a band of output rows of one image at a time, small enough to stay in cache through all kh·kw
        # multiply-adds (a whole batch at once goes to memory and back once per kernel offset)
        rows = max(1, DEPTHWISE_BLOCK_ELEMENTS // (wo * c))
        bands = [(m, r, min(ho, r + rows)) for m in range(n) for r in range(0, ho, rows)]

        def band(item) -> None:
            m, r0, r1 = item
            o = out[m, r0:r1]
            o[...] = b
            product = np.empty_like(o)
            for i in range(kh):
                for j in range(kw):
                    np.multiply(xp[m, r0 * sh + i:(r1 - 1) * sh + i + 1:sh, j:j + sw * (wo - 1) + 1:sw], W[i, j],
                                out=product)
                    o += product

        _in_parallel(band, bands)
        self._cache = (xp, pads, out_hw, x.shape)
        return out

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        xp, pads, out_hw, x_shape = self._cache
        W = self.params["W"]
        dxp = np.zeros_like(xp) if input_grad else None
        if self.trainable:
            np.sum(grad, axis=(0, 1, 2), out=self.grads["b"])
        g2 = grad.reshape(-1, self.in_channels)
        for i in range(self.kernel[0]):
            for j in range(self.kernel[1]):
                index = offset_slice(i, j, self.stride, out_hw)
                if self.trainable:
                    patch = xp[index].reshape(-1, self.in_channels)
                    np.einsum("nc,nc->c", patch, g2, out=self.grads["W"][i, j])
                if input_grad:
                    dxp[index] += grad * W[i, j]
        if not input_grad:
            return None
        (t, _), (l, _) = pads
        return dxp[:, t:t + x_shape[1], l:l + x_shape[2]]

    def config(self) -> dict:
        return {"type": "DepthwiseConv2D", "channels": self.in_channels, "kernel": list(self.kernel),
                "stride": list(self.stride), "padding": self.padding, "init": self.init}
