"""scratchpilot's network as a scikit-learn classifier: ``fit``, ``predict``, ``predict_proba``, ``score``,
``get_params`` / ``set_params``, usable in ``Pipeline`` and ``GridSearchCV``.

It is an MLP of scratchpilot's own layers: ``hidden_layer_sizes`` dense layers with ``activation``, a
softmax output over ``classes_`` and the cross-entropy loss, trained by mini-batch Adam or SGD with
momentum, with L2 ``weight_decay`` on the weights. Inputs are validated the scikit-learn way (NaN,
infinities, sparse matrices, wrong feature counts are refused with its usual errors); any label type
works (``classes_`` keeps them sorted, as scikit-learn's classifiers do). The same ``random_state``
gives the same model, trained in float64 with one BLAS thread, so that repeated fits and predictions
on any subset or order of rows agree to the last digit (float32, the engine's default, would not).

Needs scikit-learn: ``pip install 'scratchpilot[sklearn]'``.
"""

from __future__ import annotations

import numbers

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - only without the extra
    raise ImportError("scratchpilot.sklearn needs scikit-learn ≥ 1.6: pip install 'scratchpilot[sklearn]'") from exc

from . import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
OPTIMIZERS = ("adam", "sgd")


class NeuralNetClassifier(ClassifierMixin, BaseEstimator):
    """A multi-layer perceptron classifier trained by scratchpilot's engine.

    Parameters
    ----------
    hidden_layer_sizes : widths of the hidden layers, e.g. ``(100,)`` or ``(256, 128)``; ``()`` is
        multinomial logistic regression.
    activation : "relu", "tanh" or "sigmoid".
    optimizer : "adam" (learning rate ``learning_rate``) or "sgd" (with momentum 0.9).
    learning_rate : the step size η.
    batch_size : rows per gradient step (at most the number of rows).
    epochs : passes over the training data.
    weight_decay : L2 penalty λ on the weights (the gradient gains λ·W).
    random_state : int, ``numpy.random.RandomState`` or None: the initial weights and the batch order.
    """

    def __init__(self, hidden_layer_sizes=(100,), activation: str = "relu", optimizer: str = "adam",
                 learning_rate: float = 1e-3, batch_size: int = 32, epochs: int = 50, weight_decay: float = 0.0,
                 random_state=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.epochs = epochs
        self.weight_decay = weight_decay
        self.random_state = random_state

    def _check_params(self) -> tuple[int, ...]:
        """The hyper-parameters checked at ``fit`` (scikit-learn's rule: nothing is checked in __init__)."""
        sizes = self.hidden_layer_sizes
        sizes = (sizes,) if isinstance(sizes, numbers.Integral) else tuple(sizes)
        if not all(isinstance(s, numbers.Integral) and s >= 1 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {self.hidden_layer_sizes!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        for name in ("batch_size", "epochs"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
        if not (isinstance(self.learning_rate, numbers.Real) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a number > 0, got {self.learning_rate!r}")
        if not (isinstance(self.weight_decay, numbers.Real) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a number ≥ 0, got {self.weight_decay!r}")
        return tuple(int(s) for s in sizes)

    def fit(self, X, y):
        """Train on ``X`` (n_samples, n_features) and labels ``y``; returns ``self``.

        Minimises the mean cross-entropy −(1/N) Σ log softmax(f(x))_y (+ the L2 term) over ``epochs``
        passes of mini-batches in a seeded random order."""
        sizes = self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        widths = [X.shape[1], *sizes]
        layers: list = []
        for n_in, n_out in zip(widths, widths[1:], strict=False):
            layers += [nn.Dense(n_in, n_out, init="he" if self.activation == "relu" else "glorot"),
                       ACTIVATIONS[self.activation]()]
        layers.append(nn.Dense(widths[-1], len(self.classes_), init="glorot"))
        optimizer = nn.Adam(lr=float(self.learning_rate), weight_decay=float(self.weight_decay)) \
            if self.optimizer == "adam" else nn.SGD(lr=float(self.learning_rate), momentum=0.9,
                                                    weight_decay=float(self.weight_decay))
        self.model_ = nn.Sequential(layers, loss=nn.SoftmaxCrossEntropy(), optimizer=optimizer, seed=seed,
                                    dtype=np.float64)
        self.model_.fit(X, y_index.astype(np.int64), epochs=int(self.epochs),
                        batch_size=min(int(self.batch_size), len(X)), progress=False, threads=1)
        self.loss_curve_ = list(self.model_.history["loss"])
        self.n_iter_ = len(self.loss_curve_)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (n_samples, n_classes), columns in the order of ``classes_``."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self.model_.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        """The most probable class of each row, as a label of ``classes_``."""
        probabilities = self.predict_proba(X)
        return self.classes_[np.argmax(probabilities, axis=1)]

    def __getstate__(self) -> dict:
        """For ``pickle`` and ``joblib`` (scikit-learn's ways of keeping and copying estimators): the fitted
        network goes in as the bytes of scratchpilot's own ``.npz`` model file, not as Python objects."""
        state = dict(self.__dict__)
        model = state.pop("model_", None)
        if model is not None:
            state["model_npz_"] = _model_bytes(model)
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        data = state.pop("model_npz_", None)
        self.__dict__.update(state)
        if data is not None:
            self.model_ = _model_from_bytes(data)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags


def _model_bytes(model) -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.npz"
        model.save(path)
        return path.read_bytes()


def _model_from_bytes(data: bytes):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.npz"
        path.write_bytes(data)
        return nn.load(path)
