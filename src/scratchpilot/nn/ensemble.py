"""``Ensemble``: several trained models that vote by averaging their class probabilities.

Averaging the softmax outputs of models trained from different random starts cancels part of their
independent errors (Nielsen's book: five MNIST CNNs at 99.6 % each gave 99.67 % together).
"""

from __future__ import annotations

import numpy as np

from .model import History


class Ensemble:
    """The mean of the members' ``predict_proba``; members take the same inputs and give the same outputs.

    Saved and loaded like a single model (:func:`scratchpilot.nn.save` / :func:`scratchpilot.nn.load`), so
    everything that reads a model file (evaluation, Kaggle submissions, reports, the web page) takes it.
    """

    def __init__(self, members) -> None:
        members = list(members)
        if not members:
            raise ValueError("an ensemble needs at least one member")
        first = members[0]
        for k, m in enumerate(members[1:], 1):
            if (m.n_inputs, m.n_outputs) != (first.n_inputs, first.n_outputs):
                raise ValueError(f"ensemble member {k} maps {m.n_inputs} → {m.n_outputs} values, "
                                 f"member 0 maps {first.n_inputs} → {first.n_outputs}")
            if type(m.loss) is not type(first.loss):  # averaging softmax and sigmoid scores means nothing
                raise ValueError(f"ensemble member {k} is trained with {type(m.loss).__name__}, member 0 with "
                                 f"{type(first.loss).__name__}: their scores do not average")
        self.members = members
        self.metadata: dict = {}
        self.saved_at = None

    # what the apps read from a model: the first member stands for the architecture
    @property
    def layers(self):
        return self.members[0].layers

    @property
    def loss(self):
        return self.members[0].loss

    @property
    def history(self) -> History:
        return self.members[0].history

    @property
    def input_shape(self):
        return self.members[0].input_shape

    @property
    def n_inputs(self):
        return self.members[0].n_inputs

    @property
    def n_outputs(self):
        return self.members[0].n_outputs

    def n_parameters(self, trainable_only: bool = False) -> int:
        return sum(m.n_parameters(trainable_only) for m in self.members)

    def summary(self) -> str:
        return f"ensemble of {len(self.members)} models (mean of their probabilities), each:\n" + \
            self.members[0].summary()

    def predict_proba(self, X, batch_size: int = 4096) -> np.ndarray:
        """p(class | x) = (1/K) Σ_k p_k(class | x)."""
        total = self.members[0].predict_proba(X, batch_size)
        for m in self.members[1:]:
            total += m.predict_proba(X, batch_size)
        total /= len(self.members)
        return total

    def predict(self, X, batch_size: int = 4096) -> np.ndarray:
        return self.predict_proba(X, batch_size).argmax(axis=1)

    def evaluate(self, X, y, batch_size: int = 4096) -> dict:
        """Mean cross-entropy −log p_y of the averaged probabilities, and accuracy."""
        y = np.asarray(y)
        p = self.predict_proba(X, batch_size)
        labels = y if y.ndim == 1 else y.argmax(axis=1)
        picked = np.clip(p[np.arange(len(labels)), labels], 1e-12, 1.0)
        return {"loss": float(-np.log(picked).mean()), "accuracy": float(np.mean(p.argmax(axis=1) == labels)),
                "n": int(len(labels))}

    def save(self, path) -> None:
        from .io import save

        save(self, path)
