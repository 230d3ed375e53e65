"""Training a pilot on recorded sessions, and the DAgger recipe the demo runs.

Validation always holds out whole episodes (or blocks of consecutive frames), never single frames:
neighbouring frames are near-duplicates and would leak.
"""

from __future__ import annotations

import time

import numpy as np

from .augment import DEFAULT_AUGMENTATION
from .augment import METADATA_KEY as AUGMENTATION_KEY


def split_by_group(groups: np.ndarray, val_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of validation rows: whole groups (episodes) are held out, never single frames —
    neighbouring frames are near-duplicates and would leak."""
    keys = np.unique(groups)
    n_val = int(round(val_fraction * len(keys)))
    if val_fraction > 0 and len(keys) > 1:
        n_val = min(max(1, n_val), len(keys) - 1)
    else:
        n_val = 0
    val_keys = rng.choice(keys, size=n_val, replace=False) if n_val else np.array([], dtype=keys.dtype)
    return np.isin(groups, val_keys)


def balanced_indices(labels: np.ndarray, rng: np.random.Generator, power: float = 0.5) -> np.ndarray:
    """Oversample rare labels: each class is drawn in proportion to count**power (0.5 = square root), so
    turns, rarer than straight driving, are seen more often without drowning the common classes."""
    classes, counts = np.unique(labels, return_counts=True)
    target = counts.astype(float) ** power
    target = target / target.sum() * len(labels)
    parts = []
    for c, n, t in zip(classes, counts, target, strict=True):
        members = np.flatnonzero(labels == c)
        t = max(int(round(t)), n)  # never drop examples, only repeat rare ones
        parts.append(np.concatenate([members, rng.choice(members, t - n, replace=True)]) if t > n else members)
    return rng.permutation(np.concatenate(parts))


def open_sessions(items) -> list:
    """Open every session named by ``items`` (session folders, or folders holding sessions); one that cannot
    be read is left out with a warning on stderr (see :func:`.sessions.reader.open_sessions`)."""
    from .sessions.reader import open_sessions as open_usable

    return open_usable(items)


ARCHS = ("mlp", "cnn")


def pilot_layers(arch: str, input_shape, n_labels: int, hidden: int = 128) -> list:
    """The pilot's layers for ``arch``.

    - ``"mlp"``: the blog's 3 layers, flat input [x, Δx] → Dense(hidden) → ReLU → Dropout 0.2 → Dense.
    - ``"cnn"``: donkeycar-style strided convolutions on the (H, W, 2) image of the frame and its change
      (stride 2 instead of pooling keeps the forward pass small enough for one core at camera rate):
      conv 5×5/2 (16) → conv 3×3/2 (32) → conv 3×3/2 (32), each with BatchNorm and ReLU ("same"
      padding: 42×48 → 21×24 → 11×12 → 6×6), then Flatten → Dense(hidden) → ReLU → Dropout 0.2 → Dense.
    """
    from .. import nn

    if arch == "mlp":
        return [nn.Dense(int(np.prod(input_shape)), hidden, init="he"), nn.ReLU(), nn.Dropout(0.2),
                nn.Dense(hidden, n_labels, init="glorot")]
    if arch != "cnn":
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    rows, cols, width = input_shape
    layers = []
    for out, kernel in ((16, 5), (32, 3), (32, 3)):
        layers += [nn.Conv2D(width, out, kernel=kernel, stride=2, padding="same"), nn.BatchNorm(out), nn.ReLU()]
        width, rows, cols = out, -(-rows // 2), -(-cols // 2)
    return layers + [nn.Flatten(), nn.Dense(rows * cols * width, hidden, init="he"), nn.ReLU(), nn.Dropout(0.2),
                     nn.Dense(hidden, n_labels, init="glorot")]


def train_pilot(sessions, *, hidden: int = 128, epochs: int = 10, val_fraction: float = 0.2, seed: int = 0,
                history_lag: int = 2, spec: dict | None = None, progress: bool = True, balance: float = 0.5,
                arch: str = "mlp", augmentation: dict | None = None, preprocess_options: dict | None = None,
                patience: int | None = None):
    """Train a pilot on recorded sessions: ``arch`` "mlp" (the blog's 3 layers) or "cnn" (see
    :func:`pilot_layers`), one output per label.

    ``balance``: rare labels are oversampled so each is drawn in proportion to count**balance (1 = as
    recorded, 0.5 = square root, 0 = all labels equally often). ``augmentation`` (a spec of
    :mod:`.augment`) adds that many copies of the training frames under random looks; validation stays
    on the frames as recorded, and the report adds the accuracy on an augmented copy of them.
    ``preprocess_options`` (``colour``, ``normalise``, ``edges``) go on top of ``spec`` or of the default
    spec for the sessions' frames. ``patience``: stop when the validation loss has not improved for that
    many epochs, and keep the weights of its best epoch (None: train all ``epochs``).
    Returns ``(model, report)``: the model carries its labels, preprocessing spec, history lag and input
    layout in its metadata; the report has the split, class counts and train/validation accuracy.
    """
    from .. import nn
    from ..monitor.image_features import frame_features_batch
    from ..monitor.profile import PROFILE_KEY
    from .augment import Augmenter
    from .monitoring import pilot_profile
    from .pilot import with_history
    from .preprocess import default_spec, from_spec
    from .sessions.reader import load_frames

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    opened = open_sessions(sessions)
    frame_shape = opened[0].frame_shape
    preprocess = from_spec({**(spec or default_spec(frame_shape)), **(preprocess_options or {})})
    image_shape = preprocess.output_shape(frame_shape) if arch == "cnn" else None
    # Too few episodes to hold some out (one long real-car recording, a donkeycar tub): cut them into
    # blocks of consecutive frames, and hold out whole blocks.
    episodes = sum(len(np.unique(s.episodes)) for s in opened)
    augmenter = Augmenter(augmentation) if augmentation is not None else None
    copies = augmenter.copies if augmenter is not None else 0
    # one pass over the sessions: each chunk is read once and preprocessed as recorded and under each look
    looks, watched = with_looks(preprocess, augmenter, seed), []

    def looks_and_features(batch: np.ndarray) -> np.ndarray:
        watched.append(frame_features_batch(batch))  # the frames as recorded, for the reference profile
        return looks(batch)

    frames = load_frames(opened, looks_and_features, block_frames=100 if episodes < 5 else None)
    views = np.split(frames.features, 1 + copies, axis=1)  # as recorded, then each augmented copy
    X = with_history(views[0], frames.groups, history_lag, image_shape)
    y = frames.labels
    rng = np.random.default_rng(seed)
    val = split_by_group(frames.groups, val_fraction, rng)
    train_parts, X_val_augmented = [X[~val]], None
    for k, view in enumerate(views[1:]):
        X_copy = with_history(view, frames.groups, history_lag, image_shape)
        train_parts.append(X_copy[~val])
        if k == 0 and val.any():
            X_val_augmented = X_copy[val]
        del X_copy
    del views
    X_train = train_parts[0] if len(train_parts) == 1 else np.concatenate(train_parts)
    del train_parts
    y_train = np.tile(y[~val], 1 + copies)  # the frames, then each copy of them
    train_idx = balanced_indices(y_train, rng, power=balance)
    X_train, y_train = X_train[train_idx], y_train[train_idx]
    labels = list(frames.label_names)
    model = nn.Sequential(pilot_layers(arch, X.shape[1:], len(labels), hidden), input_shape=X.shape[1:],
                          loss=nn.SoftmaxCrossEntropy(),
                          optimizer=nn.Adam(lr=1e-3, weight_decay=1e-4, schedule=nn.CosineDecay(epochs, 0.05)),
                          seed=seed)
    validation = (X[val], y[val]) if val.any() else None
    stopper = nn.EarlyStopping(patience=patience) if patience and validation else None
    model.fit(X_train, y_train, epochs=epochs, batch_size=64, validation_data=validation, progress=progress,
              early_stopping=stopper)
    if stopper is not None:
        stopper.restore(model)  # a fit that ran all its epochs ends on the last one, not the best
    counts = {labels[k]: int(n) for k, n in zip(*np.unique(y, return_counts=True), strict=True)}
    report = {
        "frames": int(len(y)), "features": int(np.prod(X.shape[1:])), "labels": labels, "label_counts": counts,
        "arch": arch,
        "groups": len(frames.group_keys), "validation_groups": sorted({str(frames.group_keys[g]) for g in
                                                                       np.unique(frames.groups[val])}),
        "train_frames": int((~val).sum()), "validation_frames": int(val.sum()),
        "train_accuracy": model.history["accuracy"][-1],
        "validation_accuracy": model.history["val_accuracy"][-1] if validation else None,
    }
    if stopper is not None:
        # the weights kept are the best epoch's: report that epoch's figures
        best = stopper.best_epoch
        report.update(best_epoch=best, epochs_run=len(model.history["loss"]),
                      train_accuracy=model.history["accuracy"][best],
                      validation_accuracy=model.history["val_accuracy"][best])
    if validation:
        majority = np.bincount(y[val], minlength=len(labels)).max() / val.sum()
        report["validation_majority_baseline"] = float(majority)
    if X_val_augmented is not None:
        report["validation_accuracy_augmented"] = float(model.evaluate(X_val_augmented, y[val])["accuracy"])
    if augmenter is not None:
        report["augmented_copies"] = copies
    model.metadata = {"task": "pilot", "labels": labels, "preprocessing": preprocess.spec,
                      "history_lag": history_lag, "arch": arch,
                      "input_layout": "image" if image_shape is not None else "flat",
                      "sessions": [s.name for s in opened],
                      "frame_shape": list(frame_shape), "train_report": report,
                      AUGMENTATION_KEY: augmenter.spec if augmenter is not None else None,
                      "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if image_shape is not None:
        model.metadata["image_shape"] = list(image_shape)
    model.metadata[PROFILE_KEY] = pilot_profile(
        np.concatenate(watched), probabilities=model.predict_proba(X[val]) if validation else None,
        labels=labels, source=", ".join(s.name for s in opened)[:200])
    return model, report


def with_looks(preprocess, augmenter, seed: int):
    """The chunk preprocessing of :func:`train_pilot`: frames -> features as recorded, then one block of
    features per augmented copy, side by side (N, (1 + copies) F). Copy k draws its looks from its own
    generator, seeded by (augmentation seed, training seed, k), so a rerun repeats them."""
    if augmenter is None:
        return preprocess
    look_rngs = [np.random.default_rng([augmenter.seed, seed, k]) for k in range(augmenter.copies)]

    def every_look(frames: np.ndarray) -> np.ndarray:
        return np.concatenate([preprocess(frames)] + [preprocess(augmenter(frames, r)) for r in look_rngs], axis=1)

    return every_look


DEMO_EPISODES = 10  #: expert episodes recorded first
DEMO_DAGGER_ROUNDS = 2  #: rounds of "the pilot drives new tracks, the expert labels, the pilot is retrained"
DEMO_DAGGER_EPISODES = 8  #: episodes per DAgger round
DEMO_EPOCHS = 10
DEMO_CNN_EPOCHS = 6  #: the CNN learns in fewer epochs, and each costs several of the MLP's


DEMO_NOISE = 0.02  #: the expert's perturbation probability per frame while it records (DART)
DEMO_ARCH = "mlp"  #: the demo's pilot: on the same recipe and seeds the CNN was no better, and not reproducible
DEMO_TRAIN_SEEDS_START = 1000  #: training tracks; the demo drives tracks seed..seed+N-1 (< 1000): unseen
#: the demo's preprocessing on top of the default spec: each frame's principal colour axis, then a per-frame
#: z-score, so other floor colours and other light look alike (bench/pilot_invariance.py)
DEMO_PREPROCESS = {"colour": "principal", "normalise": "zscore"}
#: the demo's photometric augmentation: one extra copy of the frames under random looks (:mod:`.augment`)
DEMO_AUGMENTATION = {**DEFAULT_AUGMENTATION, "copies": 1}
DEMO_COLOUR_FRACTION = 0.5  #: share of the recorded training tracks painted in randomised colours
#: early stopping: the colour-blind inputs let the MLP overfit within a few epochs (its validation loss
#: rises after epoch 2-3), so each round keeps the epoch with the lowest validation loss
DEMO_PATIENCE = 3


def training_looks(colour_fraction: float):
    """Track seed -> its look for a training recording: randomised colours (a training draw, never the
    test draw) on about ``colour_fraction`` of the tracks, chosen by the seed so that a rerun repeats."""
    from .sim.appearance import STANDARD, TRAINING_COLOURS

    def look(seed: int):
        coloured = colour_fraction > 0.0 and np.random.default_rng([int(seed), 11]).random() < colour_fraction
        return TRAINING_COLOURS if coloured else STANDARD

    return look


def default_epochs(arch: str) -> int:
    """Passes over the data when none are asked for: the CNN learns in fewer, each costing more."""
    return DEMO_CNN_EPOCHS if arch == "cnn" else DEMO_EPOCHS


def learn_to_drive(root, *, episodes: int = DEMO_EPISODES, rounds: int = DEMO_DAGGER_ROUNDS,
                   dagger_episodes: int = DEMO_DAGGER_EPISODES, seed: int = 0, log=print, progress: bool = True,
                   max_steps: int | None = None, arch: str = DEMO_ARCH, epochs: int | None = None,
                   noise: float = DEMO_NOISE, spec: dict | None = None, augmentation: dict | None = DEMO_AUGMENTATION,
                   colour_fraction: float = DEMO_COLOUR_FRACTION, preprocess_options: dict | None = DEMO_PREPROCESS,
                   patience: int | None = DEMO_PATIENCE, combine: str = "best", history_lag: int = 2,
                   balance: float = 0.5, hidden: int = 128, expert=None, on_round=None):
    """Imitation learning with DAgger (Ross, Gordon & Bagnell, 2011).

    Record the expert and train; then, each round, the pilot drives ``dagger_episodes`` new training tracks
    while the expert labels every frame it sees, and the pilot is trained again on everything. Plain
    imitation only ever sees the expert's states: one mistake leads to frames it never saw.

    Each model's own drive doubles as its validation (on training tracks, never the demo's unseen ones):
    the model of the round with the best mean score is returned: a round's model can be much worse than
    the one before it, so picking beats taking the last.
    ``arch`` is the pilot's network (:func:`pilot_layers`); ``epochs`` defaults to the arch's own;
    ``combine`` "ensemble" returns all the rounds' models as one :class:`~scratchpilot.nn.Ensemble` (their
    probabilities averaged) instead of the best round's.
    ``noise`` is the expert's perturbation rate while it records (:func:`~.sim.runs.record_expert`).
    ``history_lag``, ``balance`` and ``hidden`` go to :func:`train_pilot`. ``expert``: ``(session path,
    episodes)`` as :func:`~.sim.runs.record_expert` returned them for these tracks and ``noise``, to reuse
    a recording (tuning runs many recipes on one). ``on_round(round, mean score)`` is called after each
    round's drive (tuning reports it to its pruner, which may stop the recipe by raising).
    ``spec`` is the preprocessing (default :func:`~.preprocess.default_spec`, with ``preprocess_options``
    on top), ``augmentation`` the
    photometric augmentation of :func:`train_pilot`, and ``colour_fraction`` the share of recorded tracks
    (expert and DAgger alike) whose road and grass get randomised colours (:mod:`.sim.appearance`).
    Returns ``(model, report, log of rounds)``.
    """
    from .pilot import Pilot
    from .sim.runs import record_expert

    if combine not in ("best", "ensemble"):
        raise ValueError(f"combine must be 'best' or 'ensemble', got {combine!r}")
    if not 0.0 <= colour_fraction <= 1.0:
        raise ValueError(f"colour_fraction must be between 0 and 1, got {colour_fraction}")
    epochs = epochs or default_epochs(arch)
    first = DEMO_TRAIN_SEEDS_START
    look = training_looks(colour_fraction)
    t0 = time.perf_counter()
    if expert is None:
        session, recorded = record_expert(root, range(first, first + episodes), noise=noise, progress=progress,
                                          max_steps=max_steps, appearance=look)
    else:
        session, recorded = expert
    history = [{"round": "expert", "seconds": time.perf_counter() - t0, "frames": sum(e["steps"] for e in recorded),
                "scores": [e["score"] for e in recorded]}]
    log(f"    expert: {history[0]['frames']:,d} frames on tracks {first}..{first + episodes - 1} "
        f"({history[0]['seconds']:.0f} s)")
    sessions, next_seed, candidates = [session], first + episodes, []
    for r in range(rounds + 1):
        t1 = time.perf_counter()
        model, report = train_pilot(sessions, seed=seed, epochs=epochs, progress=progress, arch=arch, spec=spec,
                                    augmentation=augmentation, preprocess_options=preprocess_options,
                                    patience=patience, history_lag=history_lag, balance=balance, hidden=hidden)
        log(f"    round {r}: trained on {report['frames']:,d} frames, validation accuracy "
            f"{report['validation_accuracy']:.1%} (majority baseline {report['validation_majority_baseline']:.1%}), "
            f"{time.perf_counter() - t1:.0f} s")
        t2 = time.perf_counter()
        seeds = range(next_seed, next_seed + dagger_episodes)
        session, driven = record_expert(root, seeds, pilot=Pilot(model), progress=progress, max_steps=max_steps,
                                        appearance=look)
        next_seed += dagger_episodes
        sessions.append(session)  # the last round's frames are recorded but not trained on
        scores = [e["score"] for e in driven]
        candidates.append((float(np.mean(scores)), r, model, report))
        history.append({"round": r, "seconds": time.perf_counter() - t2, "tracks": list(seeds), "scores": scores,
                        "frames": report["frames"], "validation_accuracy": report["validation_accuracy"]})
        log(f"    round {r}: the pilot drove tracks {seeds[0]}..{seeds[-1]} (mean score {np.mean(scores):.0f}) "
            f"while the expert labelled, {time.perf_counter() - t2:.0f} s")
        if on_round is not None:
            on_round(r, float(np.mean(scores)))
    best_score, best_round, model, report = max(candidates, key=lambda c: c[0])
    report = {**report, "chosen_round": best_round, "chosen_round_mean_score": best_score}
    if combine == "ensemble":
        from ..nn import Ensemble

        last = candidates[-1][2]
        model = Ensemble([c[2] for c in candidates])
        model.metadata = dict(last.metadata)
        report = {**candidates[-1][3], "chosen_round": "ensemble of all rounds", "chosen_round_mean_score": None}
        log(f"    combined: the {len(candidates)} rounds' models as one ensemble")
    model.metadata["train_report"] = report
    log(f"    chosen: the round {best_round} pilot (mean score {best_score:.0f} on its training tracks)")
    return model, report, history


