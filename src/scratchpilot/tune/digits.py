"""``tune digits``: the objective, the data split, and the best model.

Every trial trains on the training split and reports its validation accuracy after each epoch, so the
pruner can stop it; the test set is read once, at the end, by the best model.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from ..digits import models
from . import spaces
from .interrupt import INTERRUPT
from .study import OutOfTime, best_trial, claim_place

#: validation images held out of the training set when none is asked for
DEFAULT_VAL = 10_000
#: the share of a labelled file held out as its test set when the dataset has no test pair
TEST_SHARE = 1 / 7
_TEST_PAIRS = {"mnist": "mnist-test", "fashion": "fashion-test"}


@dataclass
class DigitsSplit:
    """The images a study trains, validates and (once, at the end) tests on."""

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    test_name: str
    X_test: np.ndarray
    y_test: np.ndarray

    def identity(self) -> dict:
        """What a study's trials must share to compare: the data and the split's sizes."""
        return {"data": self.name, "n_train": int(len(self.y_train)), "n_val": int(len(self.y_val))}


def load_split(spec: str, seed: int, train_size: int | None = None, val_size: int | None = None,
               test_size: int | None = None) -> DigitsSplit:
    """Train / validation / test images for ``spec``: ``mnist`` and ``fashion`` are tested on their own test
    sets; a labelled file is first cut into training and test parts (1/7 for test). The validation images
    come out of the training part, drawn with ``seed``; ``train_size`` keeps a subset of the rest."""
    from ..data import resolve_dataset

    full = resolve_dataset(spec)
    if full.labels is None:
        raise ValueError(f"{spec}: has no labels, cannot tune on it")
    rng = np.random.default_rng([seed, 7])
    if spec in _TEST_PAIRS:
        test = resolve_dataset(_TEST_PAIRS[spec])
        X_rest, y_rest, X_test, y_test, test_name = full.images, full.labels, test.images, test.labels, test.name
    else:
        order = rng.permutation(len(full.labels))
        n_test = int(round(TEST_SHARE * len(order)))
        rest, held = order[n_test:], order[:n_test]
        X_rest, y_rest = full.images[rest], full.labels[rest]
        X_test, y_test, test_name = full.images[held], full.labels[held], f"{full.name} (held-out 1/7)"
    n_val = DEFAULT_VAL if val_size is None else val_size
    n_val = min(n_val, len(y_rest) // 6) if val_size is None else n_val
    if n_val < 1 or n_val >= len(y_rest):
        raise ValueError(f"{spec}: cannot hold out {n_val:,d} validation images of {len(y_rest):,d}")
    order = rng.permutation(len(y_rest))
    val, train = order[:n_val], order[n_val:]
    if train_size is not None:
        if train_size > len(train):
            raise ValueError(f"{spec}: --train-size {train_size:,d} but only {len(train):,d} training images are left "
                             f"after {n_val:,d} for validation")
        train = train[:train_size]
    if test_size is not None:
        X_test, y_test = X_test[:test_size], y_test[:test_size]
    return DigitsSplit(full.name, X_rest[train], y_rest[train], X_rest[val], y_rest[val], test_name, X_test, y_test)


class DigitsObjective:
    """One trial: choose a configuration in ``space``, train it for up to ``epochs`` epochs on the training
    split with its validation accuracy reported after every epoch, keep the model if it is the study's best.

    ``deadline`` (a ``time.monotonic()`` value): a trial whose next epoch would end after it stops there
    (pruned, marked ``cut: time``). ``threads``: this worker's BLAS threads (None: chosen by timing).
    """

    def __init__(self, split: DigitsSplit, space: str, epochs: int, target: int, out_dir, *, seed: int = 0,
                 deadline: float | None = None, threads: int | None = None, worker: str = ""):
        self.split, self.space, self.epochs, self.target = split, spaces.check_space(space), epochs, target
        self.out_dir, self.seed, self.deadline = Path(out_dir), seed, deadline
        self.threads, self.worker = threads, worker
        self._features = None

    def features(self):
        from ..data import to_features

        if self._features is None:
            self._features = (to_features(self.split.X_val), self.split.y_val)
        return self._features

    def __call__(self, trial: optuna.Trial) -> float:
        claim_place(trial, self.target)
        trial.set_user_attr("worker", self.worker)
        config = spaces.suggest_config(trial, self.space, self.epochs)
        estimate = _epoch_estimate(trial.study, config)
        if self.deadline is not None and estimate and time.monotonic() + estimate > self.deadline:
            trial.set_user_attr("surplus", True)
            trial.set_user_attr("unstarted", "time")
            raise OutOfTime(f"trial {trial.number}: no time left for one epoch (about {estimate:.0f} s)")
        spent = {"epochs": 0}

        def report(model, epoch, logs):
            with INTERRUPT.shielded():  # storage writes: Ctrl-C waits for them
                step = epoch + 1
                spent["epochs"] = step
                trial.set_user_attr("epochs", step)
                trial.set_user_attr("epoch_seconds", float(logs["epoch_seconds"]))
                trial.report(float(logs["val_accuracy"]), step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"validation accuracy {logs['val_accuracy']:.2%} at epoch {step}")
                if (self.deadline is not None and step < config.epochs
                        and time.monotonic() + 1.1 * logs["epoch_seconds"] > self.deadline):
                    trial.set_user_attr("cut", "time")
                    raise optuna.TrialPruned(f"the time budget ends before epoch {step + 1}")
                return False

        try:
            with INTERRUPT.interruptible():
                model = models.train(config, self.split.X_train, self.split.y_train, seed=self.seed,
                                     validation=(self.split.X_val, self.split.y_val), progress=False,
                                     callbacks=[report], threads=self.threads or "auto")
        except FloatingPointError as exc:  # the learning rate was too high for this configuration
            trial.set_user_attr("diverged", True)
            raise optuna.TrialPruned(str(exc)) from None
        value = float(model.history["val_accuracy"][-1])
        self._keep_if_best(trial, model, value)
        return value

    def _keep_if_best(self, trial: optuna.Trial, model, value: float) -> None:
        """Save the trial's model when no finished trial so far beats it (others are not kept); a tie is kept
        too, since the earliest of tied trials is the best (:func:`.study.best_trial`) and a tied trial
        still running elsewhere may be the earlier one."""
        try:
            best = trial.study.best_value
        except ValueError:
            best = -np.inf
        if value >= best:
            from ..util.files import save_or_rescue

            save_or_rescue(model.save, trial_model_path(self.out_dir, trial.number), "trial model")
            trial.set_user_attr("model_file", trial_model_path(self.out_dir, trial.number).name)


def _epoch_estimate(study: optuna.Study, config) -> float | None:
    """Seconds an epoch of ``config`` is likely to take: the median over the study's trials of its family."""
    seconds = [t.user_attrs["epoch_seconds"] for t in study.get_trials(deepcopy=False)
               if "epoch_seconds" in t.user_attrs and t.params.get("family", config.arch) == config.arch
               and ("stages" in t.params) == (config.arch == "cnn")]
    return float(np.median(seconds)) if seconds else None


def trial_model_path(out_dir, number: int) -> Path:
    return Path(out_dir) / "trials" / f"trial-{number:04d}.npz"


def enqueue_defaults(study: optuna.Study, space: str) -> None:
    """Queue the hand-set defaults as the study's first trials, so the search starts from them and the
    report can set the best against them."""
    for family in (spaces.FAMILIES if space == "all" else (space,)):
        params = spaces.default_params(family)
        study.enqueue_trial({"family": family, **params} if space == "all" else params,
                            user_attrs={"defaults": family})


def best_model(study: optuna.Study, split: DigitsSplit, space: str, epochs: int, out_dir, *, seed: int = 0,
               storage_text: str = "", threads: int | None = None, progress: bool = True):
    """The best trial's model (retrained from its parameters when its file is on another machine), its
    config naming the study, tested once on the test set. Returns ``(model, result)``."""
    from ..data import to_features
    from ..digits.metrics import wilson_interval

    best = best_trial(study)
    path = trial_model_path(out_dir, best.number)
    retrained = not path.exists()
    config = spaces.config_from_params(best.params, space, epochs, name=f"{study.study_name}-trial-{best.number}")
    if retrained:
        if progress:
            print(f"trial {best.number}'s model is not in {out_dir} (another worker's machine): training it again")
        model = models.train(config, split.X_train, split.y_train, seed=seed, progress=progress,
                             threads=threads or "auto", epochs=int(best.user_attrs.get("epochs", epochs)))
    else:
        from .. import nn

        model = nn.load(path)
    test = model.evaluate(to_features(split.X_test), split.y_test)["accuracy"]
    n = len(split.y_test)
    low, high = wilson_interval(int(round(test * n)), n)
    model.metadata.update(
        train_config={**model.metadata.get("train_config", {}), "name": config.name},
        dataset=split.name, test_accuracy=test, test_dataset=split.test_name,
        tuning={"study": study.study_name, "storage": storage_text, "trial": best.number, "space": space,
                "params": best.params, "validation_accuracy": best.value, "n_train": int(len(split.y_train)),
                "n_val": int(len(split.y_val)), "retrained": retrained})
    return model, {"test_accuracy": test, "test_ci95": [low, high], "test_dataset": split.test_name, "n_test": n,
                   "retrained": retrained}


def remove_other_models(study: optuna.Study, out_dir) -> None:
    """Delete the kept models of trials that are no longer the best (only once no trial runs)."""
    folder = Path(out_dir) / "trials"
    if not folder.is_dir():
        return
    if any(t.state == optuna.trial.TrialState.RUNNING for t in study.get_trials(deepcopy=False)):
        return
    keep = trial_model_path(out_dir, best_trial(study).number).name
    for file in folder.glob("trial-*.npz"):
        if file.name != keep:
            try:
                os.unlink(file)
            except FileNotFoundError:
                pass
