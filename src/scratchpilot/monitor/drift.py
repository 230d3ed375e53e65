"""Drift of a window of logged answers against a model's reference profile, and the verdict.

A window is *drift* when some input feature, or the predicted-class distribution, or the confidence has
shifted significantly: PSI ≥ :data:`~.stats.PSI_DRIFT`, confirmed (for the features and the confidence)
by a KS p-value below :data:`~.stats.KS_ALPHA`. It is *watch* when some PSI is at least
:data:`~.stats.PSI_WATCH` without that, *stable* otherwise, and *too few* with fewer than
:data:`MIN_WINDOW` answers (a PSI over ten bins from a few dozen values is mostly noise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .stats import KS_ALPHA, PSI_DRIFT, PSI_WATCH, bin_counts, ks_2samp, psi

#: windows with fewer answers get no verdict
MIN_WINDOW = 100
#: an answer whose top probability is below this counts as low-confidence
LOW_CONFIDENCE = 0.6


def feature_drift(dist: dict, values: np.ndarray) -> dict:
    """PSI and KS of ``values`` against one profiled distribution."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    index = psi(dist["shares"], dist["n"], bin_counts(values, dist["edges"]))
    d, p = ks_2samp(values, dist["sample"])
    return {"psi": index, "ks": d, "p": p, "mean": float(values.mean()) if values.size else math.nan,
            "reference_mean": dist.get("mean"), "drift": bool(index >= PSI_DRIFT and p < KS_ALPHA)}


def class_drift(classes: dict, labels: Sequence[str]) -> dict:
    """PSI of the predicted labels against the profile's held-out class shares (labels not in the profile
    count in a bin of their own, which the reference has empty)."""
    names = list(classes["labels"])
    position = {name: i for i, name in enumerate(names)}
    counts = np.zeros(len(names) + 1)
    for label in labels:
        counts[position.get(str(label), len(names))] += 1
    index = psi(list(classes["shares"]) + [0.0], classes["n"], counts)
    total = max(1.0, counts.sum())
    return {"psi": index, "drift": bool(index >= PSI_DRIFT), "shares": (counts[:-1] / total).tolist(),
            "reference_shares": list(classes["shares"]), "labels": names}


def assess(profile: dict, records: list[dict]) -> dict:
    """Every statistic of one window of log ``records`` (answered requests) and its verdict."""
    n = len(records)
    out = {"n": n, "features": {}, "classes": None, "confidence": None}
    confidences = np.array([r["confidence"] for r in records if finite_number(r.get("confidence"))], dtype=np.float64)
    out["mean_confidence"] = float(confidences.mean()) if confidences.size else math.nan
    if n < MIN_WINDOW:
        out["verdict"], out["reasons"] = "too few", [f"{n} answers (a verdict needs {MIN_WINDOW})"]
        return out
    for name, dist in profile["features"].items():
        values = np.array([r["features"][name] for r in records
                           if isinstance(r.get("features"), dict) and finite_number(r["features"].get(name))])
        if values.size:
            out["features"][name] = feature_drift(dist, values)
    if profile.get("classes") is not None:
        out["classes"] = class_drift(profile["classes"], [r["label"] for r in records if r.get("label") is not None])
    if profile.get("confidence") is not None and confidences.size:
        out["confidence"] = feature_drift(profile["confidence"], confidences)
    out["verdict"], out["reasons"] = verdict(out)
    return out


def verdict(window: dict) -> tuple[str, list[str]]:
    """"drift", "watch" or "stable", and what led to it."""
    parts = [(f"feature {name}", stats) for name, stats in window["features"].items()]
    parts += [("predicted classes", window["classes"]), ("confidence", window["confidence"])]
    drifted = [f"{what}: PSI {s['psi']:.2f}" + (f", KS p {s['p']:.1g}" if "p" in s else "")
               for what, s in parts if s is not None and s["drift"]]
    if drifted:
        return "drift", drifted
    watched = [f"{what}: PSI {s['psi']:.2f}" for what, s in parts
               if s is not None and math.isfinite(s["psi"]) and s["psi"] >= PSI_WATCH]
    return ("watch", watched) if watched else ("stable", [])


def finite_number(value) -> bool:
    """A real, finite number (a logged field may hold anything: a string, a bool, NaN, a list)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
