"""The tutorial's network, as a learner reads it.

Michael Nielsen's ``network.py`` (the network of the BigSnarf post "Neural Network from scratch in
Python"), with the same names and the same algorithm — sigmoid neurons, quadratic cost, N(0, 1) initial
weights and biases, stochastic gradient descent on mini-batches — but each mini-batch goes through the
network as one matrix instead of one example at a time, on the same engine as everything else
(:class:`~scratchpilot.nn.Sequential`). :meth:`Network.backprop` is the algorithm itself, written as the
tutorial writes it (column vectors, the four equations); :meth:`Network.SGD` trains through the engine,
which computes the same gradients batch-major (tested against each other).

Two data formats are accepted:

- the tutorial's: ``training_data`` a list of ``(x, y)`` with ``x`` a (784, 1) column and ``y`` a one-hot
  (10, 1) column; ``test_data`` a list of ``(x, label)`` with ``label`` an int;
- plain arrays: ``(X, y)`` with ``X`` of shape (N, 784) and ``y`` int labels (N,) or one-hot (N, 10).

Orientation: the tutorial stores ``weights[l]`` as (n_out, n_in) and multiplies ``w @ a`` with column
vectors; the engine stores ``W`` as (n_in, n_out) and multiplies batch-major rows ``x @ W``. The
``weights`` property shows the tutorial's orientation (a transposed view of the same memory).
"""

from __future__ import annotations

import numpy as np

from .activations import Sigmoid, sigmoid
from .layers import Dense
from .losses import Quadratic
from .model import Sequential
from .optim import SGD


def _as_arrays(data, n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Tutorial list-of-pairs or an ``(X, y)`` array pair → ``X (N, n_in)`` and ``y`` labels or one-hot."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], np.ndarray) \
            and data[0].ndim == 2 and data[0].shape[1] == n_in:
        return data[0], np.asarray(data[1])
    pairs = list(data)
    if not pairs:
        raise ValueError("no data: expected a list of (x, y) pairs or an (X, y) array pair")
    X = np.stack([np.asarray(x, dtype=np.float32).reshape(-1) for x, _ in pairs])
    if X.shape[1] != n_in:
        raise ValueError(f"each x must have {n_in} values, got {X.shape[1]}")
    first = np.asarray(pairs[0][1])
    if first.size == n_out and first.ndim >= 1:  # one-hot column vectors
        y = np.stack([np.asarray(t, dtype=np.float32).reshape(-1) for _, t in pairs])
    else:
        y = np.array([int(t) for _, t in pairs], dtype=np.intp)
    return X, y


def sigmoid_prime(z: np.ndarray) -> np.ndarray:
    """σ'(z) = σ(z)(1 − σ(z))."""
    s = sigmoid(z)
    return s * (1 - s)


class Network:
    """``Network([784, 30, 10])``: a sigmoid network trained with the quadratic cost.

    ``sizes`` lists the neurons per layer; the first layer is the input. Biases and weights start as
    N(0, 1) draws, as in the tutorial (``seed`` makes them reproducible).
    """

    def __init__(self, sizes, seed: int | np.random.Generator | None = None) -> None:
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"sizes must list at least an input and an output layer, got {sizes}")
        self.num_layers = len(sizes)
        self.sizes = sizes
        stack = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            stack += [Dense(n_in, n_out, init="normal"), Sigmoid()]
        self.model = Sequential(stack, loss=Quadratic(), optimizer=SGD(lr=3.0), seed=seed)
        self._dense = [layer for layer in self.model.layers if isinstance(layer, Dense)]

    # The tutorial's attributes, as views onto the engine's parameters.
    @property
    def biases(self) -> list[np.ndarray]:
        """One (n, 1) column per non-input layer."""
        return [d.params["b"].reshape(-1, 1) for d in self._dense]

    @property
    def weights(self) -> list[np.ndarray]:
        """``weights[l]`` is (n_out, n_in): w_jk connects neuron k in layer l to neuron j in layer l+1."""
        return [d.params["W"].T for d in self._dense]

    def feedforward(self, a: np.ndarray) -> np.ndarray:
        """Return the output for input ``a``: a' = σ(w·a + b), layer after layer.

        ``a`` is a (784, 1) column as in the tutorial (answer: a (10, 1) column), or a batch (N, 784)
        (answer: (N, 10)).
        """
        a = np.asarray(a, dtype=self.model.dtype)
        if a.ndim == 2 and a.shape[1] == 1 and a.shape[0] == self.sizes[0]:
            return self.model.forward(a.T).T
        return self.model.forward(a)

    def SGD(self, training_data, epochs: int, mini_batch_size: int, eta: float, test_data=None,
            progress: bool = False) -> list[int]:
        """Train with mini-batch stochastic gradient descent.

        Each epoch shuffles the training data, cuts it into mini-batches of ``mini_batch_size`` and applies
        one :meth:`update_mini_batch` each (w → w − η/m Σ_x ∂C_x/∂w). With ``test_data``, prints
        "Epoch j: correct / n" after each epoch and returns those counts.
        """
        X, y = _as_arrays(training_data, self.sizes[0], self.sizes[-1])
        if test_data is not None:
            X_test, y_test = _as_arrays(test_data, self.sizes[0], self.sizes[-1])
        self.model.optimizer.base_lr = float(eta)
        scores = []
        for j in range(epochs):
            self.model.fit(X, y, epochs=1, batch_size=mini_batch_size, progress=progress)
            if test_data is not None:
                correct = self.evaluate((X_test, y_test))
                scores.append(correct)
                print(f"Epoch {j}: {correct} / {len(X_test)}")
            else:
                print(f"Epoch {j} complete")
        return scores

    def update_mini_batch(self, mini_batch, eta: float) -> None:
        """Apply one gradient-descent step using backpropagation on one mini-batch:
        w → w − (η/m) Σ_x ∇_w C_x and b → b − (η/m) Σ_x ∇_b C_x, m = mini-batch size.

        The whole mini-batch goes through :meth:`backprop` at once, as the columns of one (784, m) matrix,
        so the sums over x come out of the matrix products.
        """
        X, y = _as_arrays(mini_batch, self.sizes[0], self.sizes[-1])
        target = y if y.ndim == 2 else np.eye(self.sizes[-1], dtype=self.model.dtype)[y]
        nabla_b, nabla_w = self.backprop(X.T.astype(self.model.dtype), target.T.astype(self.model.dtype))
        m = X.shape[0]
        for b, w, nb, nw in zip(self.biases, self.weights, nabla_b, nabla_w, strict=True):
            w -= (eta / m) * nw  # w and b are views of the engine's parameters: this updates the model
            b -= (eta / m) * nb

    def backprop(self, x, y) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Return ``(nabla_b, nabla_w)``, the gradient of the cost C_x, layer by layer, in the tutorial's
        shapes ((n, 1) columns and (n_out, n_in) matrices).

        ``x`` is one example as a (784, 1) column and ``y`` its (10, 1) one-hot target — or m examples as the
        columns of (784, m) and (10, m) matrices, and then the gradients are summed over the examples.

        The four equations of backpropagation, with z^l = w^l a^(l−1) + b^l and a^l = σ(z^l):

        - (BP1) δ^L = ∇_a C ⊙ σ'(z^L)                the error of the output layer
        - (BP2) δ^l = ((w^(l+1))ᵀ δ^(l+1)) ⊙ σ'(z^l)  the error moves back one layer at a time
        - (BP3) ∂C/∂b^l = δ^l
        - (BP4) ∂C/∂w^l = δ^l (a^(l−1))ᵀ
        """
        x = np.asarray(x, dtype=self.model.dtype)
        y = np.asarray(y, dtype=self.model.dtype)
        if x.ndim == 1:
            x = x.reshape(-1, 1)
        if y.ndim == 1:
            y = y.reshape(-1, 1)
        # feedforward, keeping every weighted input z and every activation a
        activation = x
        activations = [x]
        zs = []
        for b, w in zip(self.biases, self.weights, strict=True):
            z = w @ activation + b
            zs.append(z)
            activation = sigmoid(z)
            activations.append(activation)
        nabla_b: list[np.ndarray] = [None] * len(zs)
        nabla_w: list[np.ndarray] = [None] * len(zs)
        # backward pass: BP1 at the output, then BP2 layer by layer; BP3 and BP4 give the gradients
        delta = self.cost_derivative(activations[-1], y) * sigmoid_prime(zs[-1])
        nabla_b[-1] = delta.sum(axis=1, keepdims=True)
        nabla_w[-1] = delta @ activations[-2].T
        for l in range(2, self.num_layers):
            delta = (self.weights[-l + 1].T @ delta) * sigmoid_prime(zs[-l])
            nabla_b[-l] = delta.sum(axis=1, keepdims=True)
            nabla_w[-l] = delta @ activations[-l - 1].T
        return nabla_b, nabla_w

    def evaluate(self, test_data) -> int:
        """Number of test inputs for which the output neuron with the highest activation is the label."""
        X, y = _as_arrays(test_data, self.sizes[0], self.sizes[-1])
        labels = y if y.ndim == 1 else y.argmax(axis=1)
        return int(np.count_nonzero(self.model.predict(X) == labels))

    def cost_derivative(self, output_activations: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The vector of partial derivatives ∂C_x/∂a for the output activations: a − y."""
        return Quadratic.cost_derivative(output_activations, y)

    def save(self, path) -> None:
        """Save to ``.npz`` (loads back as a :class:`Sequential` with :func:`scratchpilot.nn.load`)."""
        self.model.save(path)
