"""The digits networks: the tutorial's set-up, the best plain MLP and a small CNN; training and the default model.

Both read images through one preprocessing function (:func:`scratchpilot.data.to_features`: 28×28 uint8
→ 784 floats in [0, 1]); its description is stored in the model file so every reader applies the same.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import nn
from ..util.text import brief
from .augment import affine_augmenter, shift_augmenter

LABELS = [str(d) for d in range(10)]
PREPROCESSING = {"kind": "mnist", "input_shape": [28, 28], "scale": "pixel / 255",
                 "polarity": "white ink on black", "centering": "centre of mass in 28x28, digit in 20x20 box"}


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in the model's metadata)."""

    name: str
    hidden: tuple[int, ...]
    activation: str
    loss: str
    init: str
    optimizer: str
    lr: float
    momentum: float
    epochs: int
    batch_size: int
    weight_decay: float = 0.0
    dropout: float = 0.0
    schedule: str | None = None
    augment_shift: int = 0
    validation: int = 0
    arch: str = "mlp"
    augment_degrees: float = 0.0
    augment_scale: float = 0.0
    dense_hidden: int = 0


#: The tutorial's exact set-up (Nielsen, ch. 1): 784-30-10, sigmoid, quadratic cost, N(0,1), batch 10, η=3.
BLOG = TrainConfig(name="blog", hidden=(30,), activation="sigmoid", loss="quadratic", init="normal",
                   optimizer="sgd", lr=3.0, momentum=0.0, epochs=30, batch_size=10)

#: The best plain MLP found here (no convolutions): two ReLU layers, dropout, Nesterov momentum, cosine
#: schedule, random ±2 px shifts of the training images.
BEST = TrainConfig(name="best", hidden=(512, 256), activation="relu", loss="softmax", init="he",
                   optimizer="sgd", lr=0.05, momentum=0.9, epochs=16, batch_size=128, weight_decay=1e-5,
                   dropout=0.1, schedule="cosine", augment_shift=2)

#: A small CNN (``--arch cnn``): three conv → BatchNorm → ReLU → 2×2 max-pool stages of 32, 64 and 128
#: channels (5×5 then 3×3 kernels, "same" padding: 28 → 14 → 7 → 3), then dense 1152 → 256 with BatchNorm,
#: ReLU and dropout 0.25, and dense 256 → 10; Adam, lr 0.002 on a cosine schedule over 20 epochs, batch 128;
#: every training image rotated by up to ±10°, scaled by ±10 % and shifted by up to ±2 px. ``hidden`` holds
#: the channels of the three stages. Adam, because SGD at lr 0.05 diverged in its first steps and ended
#: lower (bench/results/notes.md).
CNN = TrainConfig(name="cnn", arch="cnn", hidden=(32, 64, 128), activation="relu", loss="softmax", init="he",
                  optimizer="adam", lr=0.002, momentum=0.0, epochs=20, batch_size=128, weight_decay=0.0,
                  dropout=0.25, schedule="cosine", augment_shift=2, augment_degrees=10.0, augment_scale=0.1,
                  dense_hidden=256)

CONFIGS = {"blog": BLOG, "best": BEST, "cnn": CNN}

_ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU}
_LOSSES = {"quadratic": nn.Quadratic, "softmax": nn.SoftmaxCrossEntropy}


def cnn_layers(config: TrainConfig, n_classes: int = 10) -> list[nn.Layer]:
    """The CNN's layers; it takes the same 784 features as the MLPs and reshapes them to a 28×28×1 image."""
    layers: list[nn.Layer] = [nn.Reshape((28, 28, 1))]
    channels_in, size = 1, 28
    for stage, channels in enumerate(config.hidden):
        layers += [nn.Conv2D(channels_in, channels, kernel=5 if stage == 0 else 3, padding="same",
                             init=config.init),
                   nn.BatchNorm(channels), _ACTIVATIONS[config.activation](), nn.MaxPool2D(2)]
        channels_in, size = channels, size // 2
    layers.append(nn.Flatten())
    width = size * size * channels_in
    if config.dense_hidden:
        layers += [nn.Dense(width, config.dense_hidden, init=config.init), nn.BatchNorm(config.dense_hidden),
                   _ACTIVATIONS[config.activation]()]
        width = config.dense_hidden
    if config.dropout:
        layers.append(nn.Dropout(config.dropout))
    layers.append(nn.Dense(width, n_classes, init=config.init))
    return layers


def _optimizer(config: TrainConfig) -> nn.Optimizer:
    schedule = nn.CosineDecay(config.epochs, min_factor=0.02) if config.schedule == "cosine" else None
    if config.optimizer == "adam":
        return nn.Adam(lr=config.lr, weight_decay=config.weight_decay, schedule=schedule)
    return nn.SGD(lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0,
                  weight_decay=config.weight_decay, schedule=schedule)


def build_model(config: TrainConfig, seed: int = 0, n_inputs: int = 784, n_classes: int = 10) -> nn.Sequential:
    """The ``Sequential`` a config describes (quadratic cost ends in a sigmoid layer, as in the tutorial)."""
    if config.arch == "cnn":
        if n_inputs != 784:
            raise ValueError(f"the digits CNN reads 28×28 images (784 inputs), not {n_inputs}")
        return nn.Sequential(cnn_layers(config, n_classes), loss=_LOSSES[config.loss](),
                             optimizer=_optimizer(config), seed=seed, input_shape=(784,))
    sizes = [n_inputs, *config.hidden, n_classes]
    layers: list[nn.Layer] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Dense(n_in, n_out, init=config.init))
        last = i == len(sizes) - 2
        if not last:
            layers.append(_ACTIVATIONS[config.activation]())
            if config.dropout:
                layers.append(nn.Dropout(config.dropout))
    if config.loss == "quadratic":
        layers.append(nn.Sigmoid())
    return nn.Sequential(layers, loss=_LOSSES[config.loss](), optimizer=_optimizer(config), seed=seed)


def augmenter(config: TrainConfig):
    """The training-time augmentation a config asks for (None for none)."""
    if config.augment_degrees or config.augment_scale:
        return affine_augmenter(config.augment_degrees, config.augment_scale, config.augment_shift)
    return shift_augmenter(config.augment_shift) if config.augment_shift else None


def predict_proba_tta(model, features: np.ndarray, shape: tuple[int, int] = (28, 28)) -> np.ndarray:
    """Test-time augmentation: the mean of the model's probabilities for each image and its four
    one-pixel shifts (up, down, left, right; zeros shifted in)."""
    h, w = shape
    images = features.reshape(-1, h, w)
    total = model.predict_proba(features)
    for axis, step in ((1, 1), (1, -1), (2, 1), (2, -1)):
        shifted = np.roll(images, step, axis=axis)
        edge = [slice(None)] * 3
        edge[axis] = 0 if step > 0 else -1
        shifted[tuple(edge)] = 0
        total += model.predict_proba(shifted.reshape(features.shape))
    return total / 5


def train(config: TrainConfig, images: np.ndarray, labels: np.ndarray, seed: int = 0,
          validation: tuple[np.ndarray, np.ndarray] | None = None, progress: bool = True,
          epochs: int | None = None, callbacks=None, threads: int | str | None = "auto") -> nn.Sequential:
    """Train ``config`` on uint8 images (N, 28, 28) and int labels; returns the model with metadata.

    ``callbacks`` and ``threads`` go to :meth:`~scratchpilot.nn.Sequential.fit` (tuning reports each
    epoch's validation accuracy through a callback, and gives each worker its share of the cores)."""
    from ..data import to_features

    if epochs is not None:
        config = TrainConfig(**{**asdict(config), "epochs": epochs})
    model = build_model(config, seed=seed)
    val = (to_features(validation[0]), validation[1]) if validation is not None else None
    augment = augmenter(config)
    model.fit(to_features(images), labels, epochs=config.epochs, batch_size=config.batch_size,
              validation_data=val, progress=progress, augment=augment, callbacks=callbacks, threads=threads)
    model.metadata = {
        "task": "digits",
        "labels": LABELS,
        "preprocessing": PREPROCESSING,
        "train_config": _jsonable_config(config),
        "seed": seed,
        "n_train": int(len(labels)),
        "trained_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    return model


def _jsonable_config(config: TrainConfig) -> dict:
    d = asdict(config)
    d["hidden"] = list(d["hidden"])
    return d


def default_model_path() -> Path:
    """The cached default digits model, under the data cache (``SCRATCHPILOT_CACHE`` overrides)."""
    from ..data import default_cache_dir

    return default_cache_dir() / "models" / "digits-default.npz"


def ensure_default_model(progress: bool = True, config: TrainConfig = BEST) -> Path:
    """Return the cached default digits model, training it on MNIST (with progress) if there is none."""
    path = default_model_path()
    if path.exists():
        return path
    from ..data import load_mnist

    (X_train, y_train), (X_test, y_test) = load_mnist("digits", progress=progress)
    if progress:
        print(f"training the default digits model ({config.name} MLP) once; it is cached at {path}")
    model = train(config, X_train, y_train, progress=progress)
    from ..data import to_features

    model.metadata["test_accuracy"] = model.evaluate(to_features(X_test), y_test)["accuracy"]
    model.metadata["test_dataset"] = "mnist-test"
    attach_profile(model, X_train, held_out=(X_test, "mnist-test"), source="mnist-train")
    model.save(path)
    return path


def attach_profile(model, images: np.ndarray, *, held_out: tuple[np.ndarray, str] | None = None,
                   source: str = "training images") -> dict:
    """Store the reference profile a deployed model is watched against (:mod:`scratchpilot.monitor`) in
    ``model.metadata["profile"]``: the input features of (a sample of) its raw training ``images`` and its
    answers on ``held_out`` = (images, name). Returns the profile."""
    from ..monitor.profile import PROFILE_KEY, digits_profile

    labels = (getattr(model, "metadata", None) or {}).get("labels") or LABELS
    profile = digits_profile(model, images, held_out=held_out, source=source, labels=[str(x) for x in labels])
    model.metadata[PROFILE_KEY] = profile
    return profile


@dataclass(frozen=True)
class DigitsMetadata:
    """The metadata fields the digits apps (evaluate, report, the web page) read, each of its type."""

    labels: list[str]
    test_accuracy: float | None = None
    test_dataset: str | None = None
    dataset: str | None = None
    n_train: int | None = None
    seed: int | None = None
    trained_at: str | None = None
    train_config: dict | None = None
    preprocessing: dict | None = None


def digits_metadata(model, path) -> DigitsMetadata:
    """``model``'s metadata checked field by field (the one place that does, for every digits app): a
    wrong type raises :class:`~scratchpilot.nn.ModelFileError` naming ``path`` and the field. Missing
    fields are None; missing labels are the output indices."""
    meta = model.metadata if isinstance(model.metadata, dict) else {}
    n_out = model.n_outputs or 0

    def bad(field: str, wanted: str) -> nn.ModelFileError:
        return nn.ModelFileError(f"{path}: metadata field {field!r} must be {wanted}, got {brief(meta.get(field))}")

    def typed(field: str, kind, wanted: str, check=lambda v: True):
        value = meta.get(field)
        if value is not None and not (isinstance(value, kind) and not isinstance(value, bool) and check(value)):
            raise bad(field, wanted)
        return value

    task = meta.get("task")
    if task not in (None, "digits"):
        raise nn.ModelFileError(f"{path}: not a digits model (its metadata says task {task!r})")
    labels = meta.get("labels")
    if labels is None:
        labels = [str(i) for i in range(n_out)]
    elif not (isinstance(labels, list) and len(labels) == n_out
              and all(isinstance(n, (str, int)) and not isinstance(n, bool) for n in labels)):
        raise bad("labels", f"a list of {n_out} label names (one per output)")
    accuracy = typed("test_accuracy", (int, float), "a number from 0 to 1", lambda v: 0 <= v <= 1)
    config = typed("train_config", dict, "an object (the training settings)")
    if config is not None:
        for key, kind, wanted in (("name", str, "a string"), ("epochs", int, "a whole number")):
            value = config.get(key)
            if value is not None and not (isinstance(value, kind) and not isinstance(value, bool)):
                raise bad("train_config", f"an object whose {key!r} is {wanted}")
    return DigitsMetadata(
        labels=[str(n) for n in labels], test_accuracy=None if accuracy is None else float(accuracy),
        test_dataset=typed("test_dataset", str, "a string"), dataset=typed("dataset", str, "a string"),
        n_train=typed("n_train", int, "a whole number ≥ 0", lambda v: v >= 0),
        seed=typed("seed", int, "a whole number"), trained_at=typed("trained_at", str, "a string"),
        train_config=config, preprocessing=typed("preprocessing", dict, "an object (the preprocessing)"))


def load_digits_model(path):
    """A digits model from ``path``, its inputs and metadata checked; raises
    :class:`~scratchpilot.nn.ModelFileError` naming the file and what is wrong."""
    model = nn.load(path)
    if model.n_inputs != 784 or model.input_shape not in (None, (784,)):
        shape = model.input_shape or (model.n_inputs,)
        raise nn.ModelFileError(f"{path}: not a digits model (it takes inputs of shape {shape}; digits models "
                                f"take the 784 features of a 28×28 image, and a CNN reshapes them itself)")
    digits_metadata(model, path)
    return model
