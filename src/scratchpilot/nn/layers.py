"""Layers: each ``forward`` caches what its ``backward`` needs, side by side.

Shapes are batch-major: a layer maps ``(N, n_in)`` to ``(N, n_out)``. ``backward(grad)`` receives
dL/d(output), fills ``self.grads`` (same keys as ``self.params``) and returns dL/d(input).
"""

from __future__ import annotations

import numpy as np

from . import init as _init


class Layer:
    """Base class. Layers without parameters leave ``params`` empty."""

    #: names of parameters that L2 weight decay applies to (weights, not biases)
    decay: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}

    def build(self, rng: np.random.Generator, dtype) -> None:
        """Create parameters (called once by :class:`~scratchpilot.nn.Sequential`)."""

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        raise NotImplementedError

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Return dL/dx; with ``input_grad=False`` only the parameter gradients are computed."""
        raise NotImplementedError

    def config(self) -> dict:
        """JSON-able description, enough to rebuild the layer (parameters are stored separately)."""
        return {"type": type(self).__name__}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "type")
        return f"{type(self).__name__}({args})"


class Dense(Layer):
    """Fully connected layer: ``z = x @ W + b``.

    Parameters
    ----------
    n_in, n_out : int
        Input and output widths; ``W`` has shape ``(n_in, n_out)``, ``b`` shape ``(n_out,)``.
    init : {"he", "glorot", "nielsen", "normal"}
        Weight initialiser. ``"normal"`` also draws the biases from N(0, 1), as the original tutorial
        does; the others start biases at zero.

    Backward, for a batch of N: ``dW = x.T @ g``, ``db = sum_n g``, ``dx = g @ W.T``.
    """

    decay = ("W",)

    def __init__(self, n_in: int, n_out: int, init: str = "he") -> None:
        super().__init__()
        for name, value in (("n_in", n_in), ("n_out", n_out)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"Dense: {name} must be a positive integer, got {value!r}")
        _init.get(init)  # fail early on a typo
        self.n_in, self.n_out, self.init = int(n_in), int(n_out), init
        self._x: np.ndarray | None = None
        #: for a first layer only (its input needs no gradient): skip the input columns that are zero in
        #: the whole batch (MNIST borders: ~290 of 784 at batch 64) in both products. Off by default: it
        #: paid on one BLAS thread (784-100-10 at batch 64: 0.88 s against 1.03 s per epoch), but with the
        #: two threads training now uses the gathers cost more than they save (0.66 s against 0.64 s).
        self.skip_zero_columns = False
        self._cols: np.ndarray | None = None

    def build(self, rng: np.random.Generator, dtype) -> None:
        W = _init.get(self.init)(rng, self.n_in, self.n_out, dtype)
        if self.init == "normal":
            b = rng.standard_normal(self.n_out).astype(dtype)
        else:
            b = np.zeros(self.n_out, dtype=dtype)
        self.params = {"W": W, "b": b}
        self.grads = {"W": np.zeros_like(W), "b": np.zeros_like(b)}

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise ValueError(f"Dense({self.n_in}, {self.n_out}) expects input of shape (N, {self.n_in}), "
                             f"got {x.shape}")
        self._cols = None
        if self.skip_zero_columns and training and x.shape[0] >= 32:
            used = np.flatnonzero(x.any(axis=0))
            # Gathering costs about a third of a dense product: worth it only when many columns are empty.
            if used.size < 0.8 * self.n_in:
                self._cols = used
                x = x[:, used]
                self._x = x
                z = x @ np.take(self.params["W"], used, axis=0)
                z += self.params["b"]
                return z
        self._x = x
        z = x @ self.params["W"]
        z += self.params["b"]
        return z

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        if self._cols is not None:
            # rows of dW for all-zero input columns are exactly zero: x_col.T @ g = 0
            dW = self.grads["W"]
            dW.fill(0)
            dW[self._cols] = self._x.T @ grad
            input_grad = False  # only set up for the first layer, whose input has no gradient
        else:
            np.matmul(self._x.T, grad, out=self.grads["W"])
        np.sum(grad, axis=0, out=self.grads["b"])
        return grad @ self.params["W"].T if input_grad else None

    def config(self) -> dict:
        return {"type": "Dense", "n_in": self.n_in, "n_out": self.n_out, "init": self.init}


class Dropout(Layer):
    """Inverted dropout: in training, zero each unit with probability ``rate`` and scale the rest by
    ``1/(1-rate)`` so the expected activation is unchanged; at inference it is the identity."""

    def __init__(self, rate: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"Dropout: rate must be in [0, 1), got {rate!r}")
        self.rate = float(rate)
        self._rng = np.random.default_rng()
        self._mask: np.ndarray | None = None

    def build(self, rng: np.random.Generator, dtype) -> None:
        self._rng = rng

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        if not training or self.rate == 0.0:
            self._mask = None
            return x
        keep = self._rng.random(x.shape, dtype=np.float32) >= self.rate
        self._mask = keep.astype(x.dtype) / x.dtype.type(1.0 - self.rate)
        return x * self._mask

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        return grad if self._mask is None else grad * self._mask

    def config(self) -> dict:
        return {"type": "Dropout", "rate": self.rate}


class Flatten(Layer):
    """Reshape ``(N, d1, d2, ...)`` to ``(N, d1*d2*...)``; backward restores the shape."""

    def __init__(self) -> None:
        super().__init__()
        self._shape: tuple[int, ...] | None = None

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        return grad.reshape(self._shape)
