"""The model behind the web page: load once, describe, classify one 28×28 image at a time (no Flask here)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from .. import nn
from ..data import to_features
from ..digits.models import digits_metadata, load_digits_model


class DigitClassifier:
    """A loaded digits model, safe to call from many server threads.

    Parameters
    ----------
    path : the model file (``.npz`` written by :meth:`scratchpilot.nn.Sequential.save`).

    Raises
    ------
    scratchpilot.nn.ModelFileError
        If the file is missing, corrupt, not a 784-input digits model, or its metadata is of the wrong
        types (checked by :func:`scratchpilot.digits.models.digits_metadata`).
    """

    def __init__(self, path):
        self.path = Path(path)
        self.model = load_digits_model(self.path)
        self.metadata = digits_metadata(self.model, self.path)
        self.labels = self.metadata.labels
        from ..monitor.profile import model_id

        self.model_id = model_id(self.path)  # what the prediction log names this model by
        # Layers keep per-call state (activations for backprop), so concurrent forwards on one model would
        # race; one image takes tens of microseconds, so a lock costs nothing measurable.
        self._lock = threading.Lock()
        self.info = self._describe()
        self.name = f"{self.info['name']} {self.info['architecture']}"

    def predict(self, digit: np.ndarray) -> tuple[int, list[float]]:
        """Classify one prepared digit, uint8 (28, 28); returns (label index, probabilities per class)."""
        features = to_features(digit.reshape(1, 784))
        with self._lock:
            probabilities = self.model.predict_proba(features)[0]
        return int(probabilities.argmax()), np.round(probabilities.astype(np.float64), 6).tolist()

    def _describe(self) -> dict:
        model, metadata = self.model, self.metadata
        # "784-512-256-10" for an MLP; a CNN's stages as "784-conv32-conv64-conv128-10"
        widths = [str(model.n_inputs)] + [f"conv{layer.out_channels}" if isinstance(layer, nn.Conv2D)
                                          else str(layer.n_out) for layer in model.layers
                                          if isinstance(layer, (nn.Dense, nn.Conv2D))]
        activations = sorted({type(layer).__name__ for layer in model.layers
                              if isinstance(layer, (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Tanh, nn.LeakyReLU))})
        config = metadata.train_config or {}
        history = model.history
        accuracy = metadata.test_accuracy
        accuracy_on = (metadata.test_dataset or "test set") if accuracy is not None else None
        if accuracy is None and history.get("val_accuracy"):
            accuracy, accuracy_on = history["val_accuracy"][-1], "validation set"
        return {
            "file": self.path.name,
            "name": config.get("name") or self.path.stem,
            "architecture": "-".join(widths) + (f" ×{len(model.members)}" if hasattr(model, "members") else ""),
            "activations": activations,
            "loss": type(model.loss).__name__,
            "parameters": model.n_parameters(),
            "labels": self.labels,
            "accuracy": accuracy,
            "accuracy_on": accuracy_on,
            "epochs": len(history.get("loss", [])) or config.get("epochs"),
            "n_train": metadata.n_train,
            "trained_at": metadata.trained_at,
            "saved_at": getattr(model, "saved_at", None),
            "preprocessing": metadata.preprocessing,
        }
