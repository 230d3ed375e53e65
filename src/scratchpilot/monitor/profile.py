"""A model's reference profile: what its inputs and answers looked like on the data it was made with.

Stored in the model file's metadata under ``"profile"`` (plain JSON; older files have none and still load
and serve). For each input feature: equal-count bin edges and the reference's share per bin (for the
population stability index), a sample of values (for the KS test), mean and spread; for the answers, on
held-out data: the share of each predicted class and the distribution of the confidence (the top
probability). :func:`read_profile` checks a stored profile's shape and names what is wrong.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
from pathlib import Path

import numpy as np

from .stats import bin_counts, bin_edges

PROFILE_KEY = "profile"
PROFILE_VERSION = 1
#: reference values kept per feature for the KS test
SAMPLE_SIZE = 500
#: at most this many inputs are measured for a profile (the shares' sampling error is then ~0.4 point)
MAX_PROFILE_INPUTS = 5000
KINDS = ("digits", "frames")


class ProfileError(ValueError):
    """A stored profile that cannot be used; the message names the model file and the field."""


def _distribution(values: np.ndarray, rng: np.random.Generator) -> dict:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    edges = bin_edges(values)
    sample = values if values.size <= SAMPLE_SIZE else rng.choice(values, SAMPLE_SIZE, replace=False)
    return {"edges": edges, "shares": _shares(bin_counts(values, edges)), "n": int(values.size),
            "sample": [round(float(v), 6) for v in np.sort(sample)],  # as features are logged
            "mean": float(values.mean()) if values.size else None,
            "std": float(values.std()) if values.size else None}


def _shares(counts: np.ndarray) -> list[float]:
    total = max(1, int(counts.sum()))
    return [float(c) / total for c in counts]


def build_profile(kind: str, features: dict[str, np.ndarray], *, probabilities: np.ndarray | None = None,
                  labels: list[str] | None = None, source: str = "", held_out: str = "", seed: int = 0) -> dict:
    """The profile of ``features`` (name → values, one per reference input) and, when given, of the model's
    ``probabilities`` (N, classes) on held-out data named ``held_out``."""
    if kind not in KINDS:
        raise ValueError(f"unknown profile kind {kind!r}; use one of {', '.join(KINDS)}")
    rng = np.random.default_rng(seed)
    profile = {"version": PROFILE_VERSION, "kind": kind, "source": source,
               "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
               "features": {name: _distribution(values, rng) for name, values in features.items()}}
    if probabilities is not None:
        probabilities = np.asarray(probabilities, dtype=np.float64)
        predicted = probabilities.argmax(axis=1)
        n_classes = probabilities.shape[1]
        names = [str(x) for x in labels] if labels is not None else [str(i) for i in range(n_classes)]
        profile["classes"] = {"labels": names, "n": int(len(predicted)), "held_out": held_out,
                              "shares": _shares(np.bincount(predicted, minlength=n_classes))}
        profile["confidence"] = {**_distribution(probabilities.max(axis=1), rng), "held_out": held_out}
    return profile


def read_profile(model, where) -> dict | None:
    """The model's profile, checked (None when the model has none); raises :class:`ProfileError`."""
    profile = (getattr(model, "metadata", None) or {}).get(PROFILE_KEY)
    if profile is None:
        return None

    def bad(what: str) -> ProfileError:
        return ProfileError(f"{where}: its reference profile is unusable: {what}")

    if not isinstance(profile, dict):
        raise bad(f"metadata.profile is a {type(profile).__name__}, not an object")
    if profile.get("version") != PROFILE_VERSION:
        raise bad(f"version {profile.get('version')!r}; this scratchpilot reads version {PROFILE_VERSION}")
    if profile.get("kind") not in KINDS:
        raise bad(f"kind {profile.get('kind')!r} is not one of {', '.join(KINDS)}")
    features = profile.get("features")
    if not isinstance(features, dict) or not features:
        raise bad("it has no features")
    for name, dist in features.items():
        _check_distribution(dist, f"features.{name}", bad)
    if "confidence" in profile:
        _check_distribution(profile["confidence"], "confidence", bad)
    classes = profile.get("classes")
    if classes is not None:
        if not isinstance(classes, dict) or not isinstance(classes.get("labels"), list) \
                or not isinstance(classes.get("shares"), list) or len(classes["labels"]) != len(classes["shares"]):
            raise bad("classes needs as many labels as shares")
        if not all(isinstance(s, (int, float)) and s >= 0 for s in classes["shares"]):
            raise bad("classes.shares must be numbers ≥ 0")
        if not isinstance(classes.get("n"), int) or classes["n"] < 1:
            raise bad("classes.n must be a positive count")
    return profile


def _check_distribution(dist, name: str, bad) -> None:
    if not isinstance(dist, dict):
        raise bad(f"{name} is not an object")
    edges, shares, sample = dist.get("edges"), dist.get("shares"), dist.get("sample")
    if not (isinstance(edges, list) and isinstance(shares, list) and isinstance(sample, list)):
        raise bad(f"{name} needs lists edges, shares and sample")
    if len(shares) != len(edges) + 1:
        raise bad(f"{name} has {len(edges)} edges but {len(shares)} shares (edges + 1 expected)")
    numbers = edges + shares + sample
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
        raise bad(f"{name} holds a value that is not a finite number")
    if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise bad(f"{name}.edges must increase")
    if not isinstance(dist.get("n"), int) or dist["n"] < 1:
        raise bad(f"{name}.n must be a positive count")


def model_id(path) -> str:
    """A short fingerprint of a model file's bytes: what the prediction log names the model by."""
    digest = hashlib.sha256()
    with open(Path(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def digits_profile(model, images: np.ndarray, *, held_out: tuple[np.ndarray, str] | None = None,
                   source: str = "", labels: list[str] | None = None, seed: int = 0) -> dict:
    """The profile of a digits model: :func:`~scratchpilot.data.digit_image.digit_input_features` of up to
    :data:`MAX_PROFILE_INPUTS` of its training ``images`` (raw, as they came), and its answers on
    ``held_out`` = (images, name)."""
    from ..data import to_features
    from ..data.digit_image import DIGIT_FEATURES, NothingDrawnError, digit_input_features

    rng = np.random.default_rng(seed)
    pick = rng.choice(len(images), min(len(images), MAX_PROFILE_INPUTS), replace=False) \
        if len(images) > MAX_PROFILE_INPUTS else np.arange(len(images))
    rows = []
    for i in pick:
        try:
            rows.append(digit_input_features(images[i]))
        except NothingDrawnError:  # a blank image in the data: nothing to measure
            continue
    features = {name: np.array([r[name] for r in rows]) for name in DIGIT_FEATURES}
    probabilities = None
    if held_out is not None:
        X, name = held_out
        X = X[:MAX_PROFILE_INPUTS * 2]
        probabilities = model.predict_proba(to_features(X))
        held_out_name = f"{name} ({len(X):,d} images)"
    else:
        held_out_name = ""
    return build_profile("digits", features, probabilities=probabilities, labels=labels,
                         source=f"{source} ({len(rows):,d} of {len(images):,d} images)", held_out=held_out_name,
                         seed=seed)
