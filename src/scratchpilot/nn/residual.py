"""``Residual``: a skip connection around a short chain of layers (ResNet, MobileNetV2, EfficientNet).

    y = x + f(x),   f = layers[-1] ∘ … ∘ layers[0]

Backward, with g = ∂L/∂y: the chain's gradients come from backpropagating g through f, and

    ∂L/∂x = g + ∂f/∂xᵀ · g

(the identity path adds g unchanged). The chain must give back the shape it was given.

To the model the block is one layer: its parameters are the inner layers' parameters under the names
``"{i}.{name}"`` (``"0.W"`` is the first inner layer's ``W``), so one parameter buffer, the optimiser,
freezing and ``save``/``load`` treat it like any other layer. The inner layers are handed the block's
arrays before each pass, so they see whatever buffer the model packed them into.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .layers import Layer, check_layer_list


class Residual(Layer):
    """``y = x + f(x)`` for the chain of ``layers`` (which must keep the shape of its input)."""

    def __init__(self, layers: Sequence[Layer]) -> None:
        layers = check_layer_list(layers, "Residual: inner ")
        if not layers:
            raise ValueError("Residual needs at least one inner layer")
        self.layers = layers
        super().__init__()
        self.decay = tuple(f"{i}.{name}" for i, layer in enumerate(layers) for name in layer.decay)
        if any(layer.params for layer in layers):  # inner layers that already have weights
            self._collect()

    # freezing the block freezes every inner layer
    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self._trainable = bool(value)
        for layer in getattr(self, "layers", ()):
            layer.trainable = self._trainable

    def _collect(self) -> None:
        """The block's dicts hold every inner array under ``"{i}.{name}"``."""
        self.params = {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.params.items()}
        self.grads = {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.grads.items()}
        self.state = {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.state.items()}

    def _hand_down(self) -> None:
        """Give each inner layer the block's current arrays (the model may have moved them into its buffer)."""
        for key, value in self.params.items():
            i, name = key.split(".", 1)
            layer = self.layers[int(i)]
            layer.params[name] = value
            if key in self.grads:
                layer.grads[name] = self.grads[key]
        for key, value in self.state.items():
            i, name = key.split(".", 1)
            self.layers[int(i)].state[name] = value

    def build(self, rng: np.random.Generator, dtype) -> None:
        for layer in self.layers:
            if not layer.params:
                layer.build(rng, dtype)
        self._collect()

    def array_shapes(self):
        params, state = {}, {}
        for i, layer in enumerate(self.layers):
            p, s = layer.array_shapes()
            params.update({f"{i}.{k}": shape for k, shape in p.items()})
            state.update({f"{i}.{k}": shape for k, shape in s.items()})
        return params, state

    def input_shape_hint(self):
        return self.layers[0].input_shape_hint()

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        for i, layer in enumerate(self.layers):
            try:
                shape = tuple(layer.output_shape(shape))
            except ValueError as exc:
                raise ValueError(f"Residual: inner layer {i} does not fit: {exc}") from None
        if shape != tuple(input_shape):
            raise ValueError(f"Residual: the inner layers turn {tuple(input_shape)} into {shape}; a skip "
                             f"connection needs the shape kept")
        return shape

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._hand_down()
        a = x
        for layer in self.layers:
            a = layer.forward(a, training)
        # a new array: ``a`` may be an array an inner layer keeps for its backward pass
        return a + x

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        self._hand_down()
        # the identity path needs g unchanged: the chain gets a read-only view, so no inner layer masks it
        g = grad.view()
        g.flags.writeable = False
        last = len(self.layers) - 1
        for i in range(last, -1, -1):
            g = self.layers[i].backward(g, input_grad=i > 0 or input_grad)
        if not input_grad:
            return None
        return g + grad

    def config(self) -> dict:
        return {"type": "Residual", "layers": [layer.config() for layer in self.layers]}
