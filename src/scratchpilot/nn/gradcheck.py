"""Finite-difference gradient check: compares backprop's gradients with (L(θ+ε) − L(θ−ε)) / 2ε."""

from __future__ import annotations

import numpy as np


def numerical_gradient(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar function ``f()`` with respect to every entry of ``x``
    (``x`` is modified in place and restored)."""
    grad = np.zeros_like(x, dtype=np.float64)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖ / (‖a‖ + ‖b‖): about 1e-8 or less means the two gradients agree (float64).

    Norms rather than element-wise ratios, so entries that are zero up to rounding do not dominate.
    """
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / denom) if denom > 0 else 0.0


def gradient_check(model, X: np.ndarray, y: np.ndarray, eps: float = 1e-6,
                   training: bool = False) -> dict[str, float]:
    """Check every trainable parameter gradient and the input gradient of a float64 ``Sequential``.

    Returns ``{"p{i}.{name}": relative error, ..., "input": relative error}``; frozen layers
    (``trainable = False``) are left out, their input gradient is still checked through ``"input"``.
    ``training=True`` runs the layers in training mode (BatchNorm on batch statistics); use it without
    dropout, so the loss is deterministic.
    """
    if model.dtype != np.float64:
        raise ValueError("gradient_check needs a float64 model (Sequential(..., dtype=np.float64))")
    X = np.array(X, dtype=np.float64)

    def loss() -> float:
        return model.loss.value(model.forward(X, training=training), y)

    out = model.forward(X, training=training)
    _, grad = model.loss.forward_backward(out, y)
    # full backward including the input gradient
    g = grad
    for layer in reversed(model.layers):
        g = layer.backward(g, input_grad=True)
    input_grad = g
    checked = [(i, layer) for i, layer in enumerate(model.layers) if layer.trainable]
    analytic = {f"p{i}.{k}": layer.grads[k].copy() for i, layer in checked for k in layer.params}
    errors = {}
    for i, layer in checked:
        for k, p in layer.params.items():
            errors[f"p{i}.{k}"] = relative_error(analytic[f"p{i}.{k}"], numerical_gradient(loss, p, eps))
    errors["input"] = relative_error(input_grad, numerical_gradient(loss, X, eps))
    return errors
