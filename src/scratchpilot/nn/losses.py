"""Losses, each giving the mean cost over a batch and its gradient with respect to the network output.

Targets are either integer class labels of shape ``(N,)`` or dense targets of shape ``(N, C)``
(one-hot rows, or any values in [0, 1] for the sigmoid losses). Because the cost is the *mean* over the
batch, every gradient carries a 1/N: a learning rate η then means the tutorial's "η/m times the sum".
"""

from __future__ import annotations

import numpy as np

from .activations import sigmoid


def _dense_targets(target: np.ndarray, n_classes: int, dtype) -> np.ndarray:
    """Turn int labels ``(N,)`` into one-hot ``(N, C)``; pass dense targets through."""
    if target.ndim == 1:
        onehot = np.zeros((target.shape[0], n_classes), dtype=dtype)
        onehot[np.arange(target.shape[0]), target] = 1
        return onehot
    return target.astype(dtype, copy=False)


class Loss:
    """Base class: ``forward_backward`` returns ``(mean loss, dL/d output)`` in one pass."""

    def forward_backward(self, output: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        raise NotImplementedError

    def value(self, output: np.ndarray, target: np.ndarray) -> float:
        return self.forward_backward(output, target)[0]

    def probabilities(self, output: np.ndarray) -> np.ndarray:
        """Map the network output to class scores in [0, 1] (what ``predict_proba`` returns)."""
        return output

    def config(self) -> dict:
        return {"type": type(self).__name__}


class Quadratic(Loss):
    """C = ½‖a − y‖², averaged over the batch; ∂C/∂a = a − y (the tutorial's ``cost_derivative``)."""

    @staticmethod
    def cost_derivative(output_activations: np.ndarray, y: np.ndarray) -> np.ndarray:
        """∂C_x/∂a for one example or a batch: the vector of partial derivatives a − y."""
        return output_activations - y

    def forward_backward(self, output, target):
        n = output.shape[0]
        if target.ndim == 1:  # labels: a − y without building the one-hot y
            diff = output.copy()
            diff[np.arange(n), target] -= 1
        else:
            diff = self.cost_derivative(output, target.astype(output.dtype, copy=False))
        loss = 0.5 * float(np.einsum("ij,ij->", diff, diff)) / n
        diff /= n
        return loss, diff


class SoftmaxCrossEntropy(Loss):
    """Softmax and cross-entropy fused: the network outputs logits z, p = softmax(z),
    C = −mean log p_y. The gradient is simply (p − y)/N, and computing log p as
    z − max(z) − log Σ e^(z − max z) never overflows."""

    def forward_backward(self, output, target):
        n = output.shape[0]
        shifted = output - output.max(axis=1, keepdims=True)
        p = np.exp(shifted)
        sums = p.sum(axis=1, keepdims=True)
        if target.ndim == 1:
            rows = np.arange(n)
            # −log p_y = log Σ e^shifted − shifted_y, summed over the batch
            loss = (float(np.log(sums).sum()) - float(shifted[rows, target].sum())) / n
            p *= np.reciprocal(sums * n)  # softmax and the 1/N in one pass
            p[rows, target] -= 1.0 / n
        else:
            y = target.astype(output.dtype, copy=False)
            loss = float(np.sum(y * (np.log(sums) - shifted))) / n
            p /= sums
            p -= y
            p /= n
        return loss, p

    def probabilities(self, output):
        shifted = output - output.max(axis=1, keepdims=True)
        p = np.exp(shifted)
        p /= p.sum(axis=1, keepdims=True)
        return p


class SigmoidCrossEntropy(Loss):
    """Per-output sigmoid and binary cross-entropy fused (independent yes/no outputs).

    C = mean over the batch of Σ_j [max(z,0) − z·y + log(1 + e^(−|z|))], the overflow-free form of
    −y log σ(z) − (1−y) log(1−σ(z)); ∂C/∂z = (σ(z) − y)/N.
    """

    def forward_backward(self, output, target):
        n = output.shape[0]
        y = _dense_targets(target, output.shape[1], output.dtype)
        z = output
        loss = float(np.sum(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))) / n
        grad = sigmoid(z)
        grad -= y
        grad /= n
        return loss, grad

    def probabilities(self, output):
        return sigmoid(output)


LOSSES = {cls.__name__: cls for cls in (Quadratic, SoftmaxCrossEntropy, SigmoidCrossEntropy)}
