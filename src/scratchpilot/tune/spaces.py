"""The digits search spaces: what a trial may choose, as Optuna suggestions that become a ``TrainConfig``.

``mlp``: depth 1-3, each layer's width 64-1024 (log scale), SGD with Nesterov momentum or Adam and its
learning rate (log scale), cosine or constant schedule, batch size, dropout, weight decay and the
augmentation. ``cnn``: 2 or 3 conv stages of 8-32 channels doubling per stage, an optional dense layer,
Adam's learning rate, and the same training settings. ``all``: first the family, then its space; the
settings both families share have one name, so Optuna's importances can compare them across families.
"""

from __future__ import annotations

from dataclasses import asdict

from ..digits.models import BEST, CNN, TrainConfig

SPACES = ("mlp", "cnn", "all")
FAMILIES = ("mlp", "cnn")
#: epochs a trial may run (the pruner stops most earlier); a CNN epoch costs many of the MLP's
DEFAULT_EPOCHS = {"mlp": 8, "cnn": 3, "all": 6}

BATCH_SIZES = (32, 64, 128, 256)
#: augmentation choices: none, random shifts of 1 or 2 px, or rotation ±10° + scale ±10 % + shift ±2 px
AUGMENTATIONS = {"none": (0, 0.0, 0.0), "shift1": (1, 0.0, 0.0), "shift2": (2, 0.0, 0.0),
                 "affine": (2, 10.0, 0.1)}
CHANNELS = (8, 16, 32)
DENSE = (0, 128, 256)


def check_space(space: str) -> str:
    if space not in SPACES:
        raise ValueError(f"unknown search space {space!r}; use one of {', '.join(SPACES)}")
    return space


def suggest_config(trial, space: str, epochs: int) -> TrainConfig:
    """The ``TrainConfig`` of this trial's choices in ``space``, trained for ``epochs`` epochs."""
    family = trial.suggest_categorical("family", FAMILIES) if space == "all" else check_space(space)
    batch = trial.suggest_categorical("batch_size", BATCH_SIZES)
    dropout = trial.suggest_float("dropout", 0.0, 0.5)
    decay = trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True)
    schedule = trial.suggest_categorical("schedule", ("cosine", "constant"))
    shift, degrees, scale = AUGMENTATIONS[trial.suggest_categorical("augment", tuple(AUGMENTATIONS))]
    common = dict(activation="relu", loss="softmax", init="he", epochs=epochs, batch_size=batch, dropout=dropout,
                  weight_decay=decay, schedule="cosine" if schedule == "cosine" else None, augment_shift=shift,
                  augment_degrees=degrees, augment_scale=scale)
    if family == "mlp":
        depth = trial.suggest_int("depth", 1, 3)
        hidden = tuple(trial.suggest_int(f"width_{i + 1}", 64, 1024, log=True) for i in range(depth))
        optimizer = trial.suggest_categorical("optimizer", ("sgd", "adam"))
        lr = (trial.suggest_float("sgd_lr", 0.005, 0.3, log=True) if optimizer == "sgd"
              else trial.suggest_float("adam_lr", 2e-4, 5e-3, log=True))
        return TrainConfig(name=f"trial-{trial.number}", hidden=hidden, optimizer=optimizer, lr=lr,
                           momentum=0.9 if optimizer == "sgd" else 0.0, arch="mlp", **common)
    stages = trial.suggest_int("stages", 2, 3)
    base = trial.suggest_categorical("channels", CHANNELS)
    dense = trial.suggest_categorical("dense", DENSE)
    lr = trial.suggest_float("adam_lr", 2e-4, 5e-3, log=True)
    return TrainConfig(name=f"trial-{trial.number}", hidden=tuple(min(128, base * 2**k) for k in range(stages)),
                       optimizer="adam", lr=lr, momentum=0.0, arch="cnn", dense_hidden=dense, **common)


def config_from_params(params: dict, space: str, epochs: int, name: str = "tuned") -> TrainConfig:
    """The ``TrainConfig`` a finished trial's parameters describe (the same mapping as
    :func:`suggest_config`, replayed through Optuna's fixed-parameter trial)."""
    import optuna

    config = suggest_config(optuna.trial.FixedTrial(params), space, epochs)
    return TrainConfig(**{**asdict(config), "name": name})


def default_params(family: str) -> dict:
    """The hand-set defaults (``digits train``'s MLP, ``--arch cnn``'s CNN) as parameters of the space
    (the CNN's zero weight decay becomes the space's lowest, 1e-6)."""
    if family == "mlp":
        c = BEST
        params = {"depth": len(c.hidden), **{f"width_{i + 1}": w for i, w in enumerate(c.hidden)},
                  "optimizer": c.optimizer, f"{c.optimizer}_lr": c.lr}
    elif family == "cnn":
        c = CNN
        params = {"stages": len(c.hidden), "channels": c.hidden[0], "dense": c.dense_hidden, "adam_lr": c.lr}
    else:
        raise ValueError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")
    augment = next(name for name, (s, d, k) in AUGMENTATIONS.items()
                   if (s, d, k) == (c.augment_shift, c.augment_degrees, c.augment_scale))
    return {"batch_size": c.batch_size, "dropout": c.dropout, "weight_decay": max(c.weight_decay, 1e-6),
            "schedule": "cosine" if c.schedule == "cosine" else "constant", "augment": augment, **params}


def family_of(params: dict, space: str) -> str:
    return params.get("family", space) if space == "all" else space
