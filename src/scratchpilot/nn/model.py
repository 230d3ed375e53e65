"""``Sequential``: a stack of layers trained by mini-batch gradient descent.

    model = Sequential([Dense(784, 100), ReLU(), Dense(100, 10)],
                       loss=SoftmaxCrossEntropy(), optimizer=SGD(0.1, momentum=0.9), seed=0)
    history = model.fit(X, y, epochs=10, batch_size=64, validation_data=(X_val, y_val))
    model.predict(X_test)

Inputs are batch-major: ``(N, features)`` arrays, or ``(N, H, W, C)`` images for convolutional stacks
(``Sequential(..., input_shape=(28, 28, 1))``); labels are ints ``(N,)`` or dense targets ``(N, C)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import fast as _fast
from ._progress import ProgressBar
from .layers import Layer, check_layer_list
from .losses import Loss, SoftmaxCrossEntropy
from .optim import SGD, Optimizer


def as_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """An explicit ``numpy.random.Generator`` from a seed, a Generator, or None (fresh entropy)."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


@dataclass
class EarlyStopping:
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs; optionally
    restore the parameters of the best epoch."""

    patience: int = 5
    monitor: str = "val_loss"
    min_delta: float = 0.0
    restore_best: bool = True
    best: float = field(default=np.inf, init=False)
    best_epoch: int = field(default=-1, init=False)
    _best_params: list | None = field(default=None, init=False, repr=False)

    def _score(self, logs: dict) -> float:
        if self.monitor not in logs:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which this fit does not log "
                             f"(logged: {sorted(logs)}); pass validation_data or monitor 'loss'")
        value = logs[self.monitor]
        return -value if "accuracy" in self.monitor else value

    def __call__(self, model: Sequential, epoch: int, logs: dict) -> bool:
        score = self._score(logs)
        if score < self.best - self.min_delta:
            self.best, self.best_epoch = score, epoch
            if self.restore_best:
                self._best_params = [p.copy() for p, _, _ in model.parameter_pairs()]
            return False
        if epoch - self.best_epoch >= self.patience:
            if self.restore_best:
                self.restore(model)
            return True
        return False

    def restore(self, model: Sequential) -> None:
        """Put the best epoch's parameters back (also after a fit that ran all its epochs)."""
        if self._best_params is not None:
            for (p, _, _), best in zip(model.parameter_pairs(), self._best_params, strict=True):
                p[...] = best


class History(dict):
    """Per-epoch metrics: ``history["loss"]``, ``["accuracy"]``, ``["val_loss"]``, ``["val_accuracy"]``,
    ``["epoch_seconds"]`` — each a list with one value per epoch."""

    def append(self, logs: dict) -> None:
        for key, value in logs.items():
            self.setdefault(key, []).append(value)


Callback = Callable[["Sequential", int, dict], "bool | None"]

#: ``fit`` gathers shuffled training rows about this many bytes at a time
GATHER_BYTES = 4 << 20


def infer_shapes(layers: Sequence[Layer], input_shape=None
                 ) -> tuple[tuple[int, ...] | None, list[tuple[int, ...] | None]]:
    """``(input shape, each layer's per-example output shape)``, checked layer by layer; None where unknown.

    Without ``input_shape`` the first layer may imply one (a ``Dense`` takes ``(n_in,)``); otherwise only
    consecutive dense widths are checked. Nothing is allocated, so a loader can check a file's architecture
    before building it. A misfit raises ValueError naming the layer, the one before it and both shapes.
    """
    def output(i: int, layer: Layer, shape: tuple[int, ...]) -> tuple[int, ...]:
        try:
            return tuple(layer.output_shape(shape))
        except ValueError as exc:
            before = f"layer {i - 1} ({layers[i - 1]!r})" if i else "the input"
            why = str(exc).removeprefix(repr(layer)).lstrip(" :")
            raise ValueError(f"layer {i} ({layer!r}) does not fit: it {why}, but {before} gives {shape}") from None

    if input_shape is None:
        input_shape = layers[0].input_shape_hint()
    if input_shape is None:  # unknown input: check what can be checked (consecutive dense widths)
        shapes, width = [], None
        for i, layer in enumerate(layers):
            hint = layer.input_shape_hint()
            if hint is not None:
                width = hint
            if width is not None:
                width = output(i, layer, width)
            shapes.append(width)
        return None, shapes
    shape = tuple(int(d) for d in input_shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"input_shape must be positive sizes, got {input_shape!r}")
    first, shapes = shape, []
    for i, layer in enumerate(layers):
        shape = output(i, layer, shape)
        shapes.append(shape)
    return first, shapes


class Sequential:
    """A feed-forward network: layers applied in order, one loss, one optimiser.

    Parameters
    ----------
    layers : sequence of Layer
        Layers that already have weights (taken from another model) keep them; the others are built.
    loss : Loss, default SoftmaxCrossEntropy()
    optimizer : Optimizer, default SGD(lr=0.1)
    seed : int, Generator or None
        Source of all randomness (initial weights, shuffling, dropout).
    dtype : float32 (default) or float64 (gradient checks)
    input_shape : tuple, optional
        The shape of one example, e.g. ``(784,)`` or ``(28, 28, 1)``. Each layer's output shape is then
        worked out when the model is built, and a layer that does not fit its input is named with both
        shapes. A first ``Dense`` layer implies ``(n_in,)``.
    """

    def __init__(self, layers: Sequence[Layer], loss: Loss | None = None,
                 optimizer: Optimizer | None = None, seed: int | np.random.Generator | None = None,
                 dtype=np.float32, input_shape: Sequence[int] | None = None) -> None:
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        self.layers = check_layer_list(layers, "")
        self.loss = loss if loss is not None else SoftmaxCrossEntropy()
        self.optimizer = optimizer if optimizer is not None else SGD(lr=0.1)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.rng = as_rng(seed)
        self.history = History()
        #: free-form JSON-able facts saved with the model (preprocessing spec, label names, ...)
        self.metadata: dict = {}
        self.input_shape, self.output_shapes = infer_shapes(self.layers, input_shape)
        for i, layer in enumerate(self.layers):
            if not layer.params:  # a layer with weights (from another model) keeps them
                layer.build(self.rng, self.dtype)
            for name, value in {**layer.params, **layer.state}.items():
                if value.dtype != self.dtype:
                    raise ValueError(f"layer {i} ({layer!r}): parameter {name} is {value.dtype}, "
                                     f"the model is {self.dtype}")
        self._pack()

    # ---------------------------------------------------------------- structure
    def _pack(self) -> None:
        """Put all parameters in one buffer (see :func:`scratchpilot.nn.fast.pack_parameters`)."""
        self._buffers = _fast.pack_parameters(self)
        self._param_layers = [layer for layer in self.layers if layer.params]
        self._pairs = [(layer.params[k], layer.grads[k], k in layer.decay)
                       for layer in self.layers for k in layer.params]
        self._step_key = None

    def _step_plan(self) -> tuple[int, list]:
        """(index of the lowest trainable layer, parameter pairs the optimiser updates).

        Re-packs first if another model has since taken over one of these layers. With every layer
        trainable the optimiser updates the one flat buffer in a few whole-array passes. When the grouping
        changes (a re-pack, a layer frozen or thawed) the optimiser's per-parameter state starts afresh:
        it is keyed by the arrays it updates.
        """
        if any(layer._packed_by is not self for layer in self._param_layers):
            self._pack()
            self.optimizer.reset_state()
        key = tuple(layer.trainable for layer in self._param_layers)
        if key != self._step_key:
            trainable = [i for i, layer in enumerate(self.layers) if layer.params and layer.trainable]
            first = trainable[0] if trainable else len(self.layers)
            if all(key):
                pairs = [(self._buffers[0], self._buffers[1], False)]
                self._decay_pairs = self._pairs
            else:
                pairs = [(layer.params[k], layer.grads[k], k in layer.decay)
                         for layer in self.layers if layer.trainable for k in layer.params]
                self._decay_pairs = pairs
            if self._step_key is not None:  # a layer was frozen or thawed since the last step
                self.optimizer.reset_state()
            self._step_key, self._first_trainable, self._flat_pairs = key, first, pairs
        return self._first_trainable, self._flat_pairs

    @property
    def n_inputs(self) -> int | None:
        """Values per example (``prod(input_shape)``), or None if the model does not fix it."""
        if self.input_shape is not None:
            return math.prod(self.input_shape)
        return next((layer.n_in for layer in self.layers if hasattr(layer, "n_in")), None)

    @property
    def n_outputs(self) -> int | None:
        last = self.output_shapes[-1] if self.output_shapes else None
        if last is not None and len(last) == 1:
            return last[0]
        return next((layer.n_out for layer in reversed(self.layers) if hasattr(layer, "n_out")), None)

    def parameter_pairs(self) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        """``(param, grad, decays)`` for every parameter, in layer order."""
        self._step_plan()
        return self._pairs

    def n_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.size for layer in self.layers if layer.trainable or not trainable_only
                   for p in layer.params.values())

    def summary(self) -> str:
        """A table like Keras's: each layer's output shape, parameter count and trainable flag."""
        rows = [("#", "layer", "output shape", "params", "trainable")]
        for i, layer in enumerate(self.layers):
            shape = self.output_shapes[i]
            count = sum(p.size for p in layer.params.values())
            rows.append((str(i), _brief(layer), "(N, " + ", ".join(map(str, shape)) + ")" if shape else "?",
                         f"{count:,d}", ("yes" if layer.trainable else "no") if layer.params else "-"))
        widths = [max(len(r[c]) for r in rows) for c in range(5)]
        lines = ["  ".join(cell.rjust(w) if c in (0, 3) else cell.ljust(w)
                           for c, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
                 for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        total, trainable = self.n_parameters(), self.n_parameters(trainable_only=True)
        lines.append(f"input {self.input_shape or '?'}  loss={type(self.loss).__name__}  total={total:,d} "
                     f"params, trainable={trainable:,d}, frozen={total - trainable:,d}")
        return "\n".join(lines)

    def config(self) -> dict:
        layers = [{**layer.config(), **({} if layer.trainable else {"trainable": False})} for layer in self.layers]
        return {"layers": layers, "loss": self.loss.config(),
                "optimizer": self.optimizer.config(), "dtype": self.dtype.name,
                "input_shape": list(self.input_shape) if self.input_shape is not None else None}

    # ---------------------------------------------------------------- math
    def forward(self, X: np.ndarray, training: bool = False) -> np.ndarray:
        """Feed a batch through every layer: a^(l) = f_l(a^(l−1))."""
        a = X
        for layer in self.layers:
            a = layer.forward(a, training)
        return a

    def backward(self, grad: np.ndarray, _first: int | None = None) -> None:
        """Backpropagate dL/d(output) down to the lowest trainable layer, filling the trainable ``grads``
        (nothing below that layer needs a gradient)."""
        first = self._step_plan()[0] if _first is None else _first
        for i in range(len(self.layers) - 1, first - 1, -1):
            grad = self.layers[i].backward(grad, input_grad=i > first)

    def train_step(self, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """One gradient step on one mini-batch; returns (mean loss, network output)."""
        first, pairs = self._step_plan()
        out = self.forward(X, training=True)
        loss, grad = self.loss.forward_backward(out, y)
        self.backward(grad, first)
        # weight decay applies to weights only, so it needs the per-parameter view of the buffer
        self.optimizer.step(self._decay_pairs if self.optimizer.weight_decay else pairs)
        return loss, out

    # ---------------------------------------------------------------- validation
    def _check_X(self, X, what: str = "X") -> np.ndarray:
        X = np.asarray(X)
        if X.dtype.kind not in "fiub":
            raise TypeError(f"{what} must be numeric, got dtype {X.dtype}")
        if X.ndim < 2:
            raise ValueError(f"{what} must be batch-major (N, features), got shape {X.shape}")
        if self.input_shape is not None and X.shape[1:] != self.input_shape:
            raise ValueError(f"{what} has shape {X.shape}; this network expects "
                             f"(N, {', '.join(map(str, self.input_shape))})")
        X = X.astype(self.dtype, copy=False)
        if not np.isfinite(X).all():
            raise ValueError(f"{what} contains NaN or infinite values")
        return X

    def _check_y(self, y, n: int, what: str = "y") -> np.ndarray:
        y = np.asarray(y)
        if y.shape[0] != n:
            raise ValueError(f"{what} has {y.shape[0]} rows but X has {n}")
        n_out = self.n_outputs
        if y.ndim == 1:
            if y.dtype.kind not in "iu":
                if y.dtype.kind == "f" and np.all(y == np.round(y)):
                    y = y.astype(np.int64)
                else:
                    raise ValueError(f"{what}: 1-D targets must be integer class labels, got {y.dtype}")
            y = y.astype(np.intp, copy=False)
            if n and (y.min() < 0 or (n_out is not None and y.max() >= n_out)):
                raise ValueError(f"{what}: labels must be in 0..{n_out - 1}, got {y.min()}..{y.max()}")
            return y
        if y.ndim == 2 and (n_out is None or y.shape[1] == n_out):
            return y.astype(self.dtype, copy=False)
        raise ValueError(f"{what} must be labels (N,) or targets (N, {n_out}), got shape {y.shape}")

    # ---------------------------------------------------------------- training
    def fit(self, X, y, epochs: int = 10, batch_size: int = 32, validation_data=None,
            early_stopping: EarlyStopping | int | None = None, callbacks: Sequence[Callback] | None = None,
            progress: bool = True, shuffle: bool = True, threads: int | str | None = "auto",
            augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None) -> History:
        """Train by mini-batch gradient descent.

        Each epoch shuffles the data (each batch gathered from a fresh permutation), takes one optimiser step
        per mini-batch, and logs ``loss``/``accuracy`` (averaged over the epoch's batches, as trained)
        and, with ``validation_data=(X_val, y_val)``, ``val_loss``/``val_accuracy``.

        ``early_stopping``: an :class:`EarlyStopping` or a patience in epochs.
        ``callbacks``: callables ``cb(model, epoch, logs)``; returning True stops training.
        ``threads``: BLAS threads; ``"auto"`` times a few batches at each thread count now and then and
        keeps the faster (:class:`scratchpilot.nn.fast.ThreadTuner`), an int fixes the count.
        ``augment``: ``augment(x_batch, rng) -> x_batch`` applied to every training batch (e.g. shifts).
        The learning-rate schedule spans this call: a second ``fit`` (fine-tuning) starts it again.
        Returns the :class:`History` (also kept in ``self.history`` and saved with the model).
        """
        X = self._check_X(X)
        y = self._check_y(y, X.shape[0])
        if epochs < 1 or batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
        if validation_data is not None:
            if len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            Xv = self._check_X(validation_data[0], "validation X")
            yv = self._check_y(validation_data[1], Xv.shape[0], "validation y")
        if isinstance(early_stopping, int) and not isinstance(early_stopping, bool):
            early_stopping = EarlyStopping(patience=early_stopping,
                                           monitor="val_loss" if validation_data is not None else "loss")
        stoppers = list(callbacks or []) + ([early_stopping] if early_stopping else [])
        n = X.shape[0]
        n_batches = -(-n // batch_size)
        start_epoch = len(self.history.get("loss", []))
        per_gather = max(1, GATHER_BYTES // max(1, batch_size * X[:1].nbytes))
        if threads != "auto" and threads is not None and (isinstance(threads, bool) or
                                                         not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be 'auto', None or a positive int, got {threads!r}")
        fixed = None if threads == "auto" else threads if threads is not None else _fast.current_threads()
        self.thread_tuner = tuner = _fast.ThreadTuner(fixed=fixed, previous=getattr(self, "thread_tuner", None))
        with tuner:
            for epoch in range(start_epoch, start_epoch + epochs):
                t0 = time.perf_counter()
                self.optimizer.start_epoch(epoch - start_epoch)
                order = self.rng.permutation(n) if shuffle else None
                bar = ProgressBar(n_batches, f"epoch {epoch + 1:>3}/{start_epoch + epochs}") \
                    if progress else None
                loss_sum, correct = 0.0, 0
                tuner.resume()  # the time since the last batch (validation, callbacks) is not a batch's
                for b in range(n_batches):
                    if order is None:
                        xb = X[b * batch_size:(b + 1) * batch_size]
                        yb = y[b * batch_size:(b + 1) * batch_size]
                    else:
                        # gather a few MiB of shuffled rows at a time (never a second copy of X) and slice
                        # the batches from them: one gather per batch costs more than a batch of 10 computes
                        k = b % per_gather
                        if k == 0:
                            idx = order[b * batch_size:(b + per_gather) * batch_size]
                            X_gathered, y_gathered = X.take(idx, axis=0), y.take(idx, axis=0)
                        xb = X_gathered[k * batch_size:(k + 1) * batch_size]
                        yb = y_gathered[k * batch_size:(k + 1) * batch_size]
                    if augment is not None:
                        xb = augment(xb, self.rng)
                    loss, out = self.train_step(xb, yb)
                    tuner.tick()
                    loss_sum += loss * xb.shape[0]
                    correct += _n_correct(out, yb)
                    if bar is not None and (b & 15) == 0:
                        bar.update(b + 1, loss=loss_sum / min(n, (b + 1) * batch_size))
                logs = {"loss": loss_sum / n, "accuracy": correct / n}
                if not np.isfinite(logs["loss"]):
                    raise FloatingPointError(
                        f"training diverged at epoch {epoch + 1} (loss is {logs['loss']}); "
                        f"lower the learning rate (now {self.optimizer.lr:g})")
                if validation_data is not None:
                    val = self.evaluate(Xv, yv, _checked=True)
                    logs["val_loss"], logs["val_accuracy"] = val["loss"], val["accuracy"]
                logs["epoch_seconds"] = time.perf_counter() - t0
                logs["lr"] = self.optimizer.lr
                self.history.append(logs)
                if bar is not None:
                    bar.close(**{k: v for k, v in logs.items() if k not in ("epoch_seconds", "lr")})
                stop = False
                for cb in stoppers:
                    stop = bool(cb(self, epoch, logs)) or stop
                if stop:
                    break
        return self.history

    # ---------------------------------------------------------------- inference
    def _batched_output(self, X: np.ndarray, batch_size: int) -> np.ndarray:
        # Inference batches are capped so that no layer's output exceeds ~2^22 values (16 MiB in float32):
        # a conv net's activations for thousands of images at once would run from main memory, not cache.
        widest = max((math.prod(s) for s in self.output_shapes if s is not None), default=1)
        batch_size = max(1, min(batch_size, (1 << 22) // max(1, widest)))
        if X.shape[0] <= batch_size:
            return self.forward(X)
        return np.concatenate([self.forward(X[i:i + batch_size]) for i in range(0, X.shape[0], batch_size)])

    def predict_proba(self, X, batch_size: int = 4096) -> np.ndarray:
        """Class scores ``(N, C)`` in [0, 1] (softmax for softmax-CE, sigmoid outputs otherwise)."""
        X = self._check_X(X)
        return self.loss.probabilities(self._batched_output(X, batch_size))

    def predict(self, X, batch_size: int = 4096) -> np.ndarray:
        """Most likely class per row, ``(N,)`` ints."""
        X = self._check_X(X)
        return self._batched_output(X, batch_size).argmax(axis=1)

    def evaluate(self, X, y, batch_size: int = 4096, _checked: bool = False) -> dict:
        """Mean loss and accuracy on (X, y): ``{"loss", "accuracy", "n"}``."""
        if not _checked:
            X = self._check_X(X)
            y = self._check_y(y, X.shape[0])
        out = self._batched_output(X, batch_size)
        loss = self.loss.value(out, y)
        return {"loss": float(loss), "accuracy": _n_correct(out, y) / max(1, X.shape[0]), "n": int(X.shape[0])}

    # ---------------------------------------------------------------- persistence
    def save(self, path) -> None:
        """Write the model to one ``.npz`` (JSON config + arrays; loads with ``allow_pickle=False``)."""
        from .io import save

        save(self, path)


def _brief(layer: Layer) -> str:
    """``Conv2D(1, 32, 5x5, same)``: a layer's type and its shape-defining arguments, for the summary."""
    def text(value):
        return "x".join(map(str, value)) if isinstance(value, list) else str(value)

    if hasattr(layer, "layers"):  # a residual block
        return f"{type(layer).__name__}({len(layer.layers)} layers)"
    skip = {"type", "init", "momentum", "eps"}
    args = [text(v) for k, v in layer.config().items() if k not in skip and v not in ([1, 1], "valid")]
    return f"{type(layer).__name__}({', '.join(args)})"


def _n_correct(out: np.ndarray, y: np.ndarray) -> int:
    """Count rows whose arg-max output equals the label (or the arg-max of a dense target)."""
    pred = out.argmax(axis=1)
    truth = y if y.ndim == 1 else y.argmax(axis=1)
    return int(np.count_nonzero(pred == truth))
