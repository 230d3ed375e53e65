"""Layers: each ``forward`` caches what its ``backward`` needs, side by side.

Shapes are batch-major: a layer maps ``(N, *input_shape)`` to ``(N, *output_shape(input_shape))`` — for
dense layers ``(N, n_in)`` to ``(N, n_out)``, for images ``(N, H, W, C)`` (NHWC). ``backward(grad)``
receives dL/d(output), fills ``self.grads`` (same keys as ``self.params``) and returns dL/d(input).

``layer.trainable = False`` freezes a layer: its backward pass computes no parameter gradient and the
optimiser leaves its parameters alone.
"""

from __future__ import annotations

import math

import numpy as np

from . import init as _init


def check_positive_int(value, name: str, layer: str) -> int:
    """``value`` as an int, or a ValueError naming the layer and the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{layer}: {name} must be a positive integer, got {value!r}")
    return int(value)


def check_layer_list(layers, who: str) -> list:
    """``layers`` as a list of distinct :class:`Layer` objects, or a TypeError/ValueError naming ``who``'s layer.

    A layer keeps what its backward pass needs from its last forward, so one object cannot stand twice.
    """
    layers = list(layers)
    seen: set[int] = set()
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"{who}layer {i} is {type(layer).__name__}, not a scratchpilot.nn Layer")
        if id(layer) in seen:
            raise ValueError(f"{who}layer {i} ({layer!r}) is the same object as an earlier layer; give each "
                             f"place its own layer (ReLU(), not one ReLU used twice)")
        seen.add(id(layer))
    return layers


class Layer:
    """Base class. Layers without parameters leave ``params`` empty."""

    #: names of parameters that L2 weight decay applies to (weights, not biases)
    decay: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        #: arrays saved with the model but not trained (BatchNorm's running statistics)
        self.state: dict[str, np.ndarray] = {}
        #: False freezes the layer: no parameter gradient, no update
        self.trainable = True

    def build(self, rng: np.random.Generator, dtype) -> None:
        """Create parameters (called by :class:`~scratchpilot.nn.Sequential` for a layer not yet built)."""

    def array_shapes(self) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
        """The shapes ``build`` gives ``params`` and ``state``, known from the arguments alone (nothing is
        allocated, so a loader can check a file's arrays against them first)."""
        return {}, {}

    def parameter_count(self) -> int:
        """How many parameters and state values ``build`` will create (known from the arguments alone)."""
        params, state = self.array_shapes()
        return sum(math.prod(shape) for shape in (*params.values(), *state.values()))

    def input_shape_hint(self) -> tuple[int, ...] | None:
        """The per-example input shape this layer needs, if it alone determines it (Dense: ``(n_in,)``)."""
        return None

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-example output shape for a per-example ``input_shape``; raises ValueError if it does not fit.

        Element-wise layers keep the shape.
        """
        return tuple(input_shape)

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
        self.n_in = check_positive_int(n_in, "n_in", "Dense")
        self.n_out = check_positive_int(n_out, "n_out", "Dense")
        _init.get(init)  # fail early on a typo
        self.init = init
        self._x: np.ndarray | None = None

    def build(self, rng: np.random.Generator, dtype) -> None:
        W = _init.get(self.init)(rng, self.n_in, self.n_out, dtype)
        if self.init == "normal":
            b = rng.standard_normal(self.n_out).astype(dtype)
        else:
            b = np.zeros(self.n_out, dtype=dtype)
        self.params = {"W": W, "b": b}
        self.grads = {"W": np.zeros_like(W), "b": np.zeros_like(b)}

    def array_shapes(self):
        return {"W": (self.n_in, self.n_out), "b": (self.n_out,)}, {}

    def input_shape_hint(self):
        return (self.n_in,)

    def output_shape(self, input_shape):
        if tuple(input_shape) != (self.n_in,):
            hint = " (put a Flatten before it)" if len(input_shape) > 1 else ""
            raise ValueError(f"{self!r} expects inputs of shape ({self.n_in},), got {tuple(input_shape)}{hint}")
        return (self.n_out,)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise ValueError(f"Dense({self.n_in}, {self.n_out}) expects input of shape (N, {self.n_in}), "
                             f"got {x.shape}")
        self._x = x
        z = x @ self.params["W"]
        z += self.params["b"]
        return z

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        if self.trainable:
            np.matmul(self._x.T, grad, out=self.grads["W"])
            np.add.reduce(grad, axis=0, out=self.grads["b"])  # Σ_n g (the ufunc itself: less call overhead)
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
    """Reshape ``(N, d1, d2, ...)`` of any rank to ``(N, d1*d2*...)``; backward restores the shape."""

    def __init__(self) -> None:
        super().__init__()
        self._shape: tuple[int, ...] | None = None

    def output_shape(self, input_shape):
        return (math.prod(input_shape),)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        return grad.reshape(self._shape)


class Reshape(Layer):
    """Reshape each example to ``shape`` (e.g. 784 pixels to a (28, 28, 1) image); backward undoes it.

    One entry may be -1 (inferred). The batch axis is never touched.
    """

    def __init__(self, shape) -> None:
        super().__init__()
        shape = tuple(int(d) for d in shape)
        if not shape or shape.count(-1) > 1 or any(d < 1 and d != -1 for d in shape):
            raise ValueError(f"Reshape: shape must be positive sizes with at most one -1, got {shape}")
        self.shape = shape
        self._in_shape: tuple[int, ...] | None = None

    def output_shape(self, input_shape):
        size = math.prod(input_shape)
        known = math.prod(d for d in self.shape if d != -1)
        if -1 in self.shape:
            if size % known:
                raise ValueError(f"{self!r} cannot reshape {tuple(input_shape)} ({size} values)")
            return tuple(size // known if d == -1 else d for d in self.shape)
        if known != size:
            raise ValueError(f"{self!r} cannot reshape {tuple(input_shape)} ({size} values) to {self.shape} "
                             f"({known} values)")
        return self.shape

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._in_shape = x.shape
        try:
            return x.reshape(x.shape[0], *self.shape)
        except ValueError:
            raise ValueError(f"{self!r} cannot reshape input of shape {x.shape}") from None

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        return grad.reshape(self._in_shape)

    def config(self) -> dict:
        return {"type": "Reshape", "shape": list(self.shape)}
