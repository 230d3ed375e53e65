"""The two drift statistics: the population stability index over a profile's bins, and the two-sample
Kolmogorov–Smirnov test.

PSI = Σᵢ (aᵢ − eᵢ)·ln(aᵢ / eᵢ) over bins i, with e the reference's share of values in bin i and a the
window's. The usual reading (Siddiqi, "Credit Risk Scorecards", 2006; Yurdakul, "Statistical properties
of the population stability index", 2018): below 0.1 no real change, 0.1–0.25 a moderate shift worth
watching, 0.25 or more a significant shift. Shares are smoothed by half a count per bin, so an empty
bin gives a large but finite index.

KS: D = sup |F_window(x) − F_reference(x)|, and its p-value from the Kolmogorov distribution with
Stephens' small-sample correction, Q((√nₑ + 0.12 + 0.11/√nₑ)·D), nₑ = n·m/(n + m) (Press et al.,
"Numerical Recipes", 3rd ed., §14.3.3). PSI says how large a shift is; KS whether it is more than the
window's sampling noise — a few hundred requests can show a large PSI by chance on a bin or two, and
a window of thousands a tiny KS p-value for a shift too small to matter, so a verdict needs both.
"""

from __future__ import annotations

import math

import numpy as np

#: PSI at or above this is a significant shift (drift)
PSI_DRIFT = 0.25
#: PSI at or above this is a moderate shift (watch)
PSI_WATCH = 0.10
#: KS p-values below this mean the window is not a sample of the reference distribution
KS_ALPHA = 0.01


def bin_edges(values: np.ndarray, bins: int = 10) -> list[float]:
    """Inner edges of ``bins`` equal-count bins of ``values`` (deciles by default), repeated ones merged.

    Bin k holds the values in (edge[k-1], edge[k]] (the first from −∞, the last to +∞): a point mass, like
    every MNIST digit's black background, gets a bin of its own, and anything above it lands in the next.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return []
    edges = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    return [float(e) for e in np.unique(np.round(edges, 9))]


def bin_counts(values: np.ndarray, edges) -> np.ndarray:
    """How many of ``values`` fall in each bin of :func:`bin_edges` (len(edges) + 1 counts)."""
    values = np.asarray(values, dtype=np.float64)
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), values[np.isfinite(values)], side="left")
    return np.bincount(index, minlength=len(edges) + 1)


def psi(expected_shares, expected_n: int, observed_counts) -> float:
    """Population stability index of ``observed_counts`` against ``expected_shares`` (of ``expected_n``
    reference values), each smoothed by half a count per bin."""
    e = np.asarray(expected_shares, dtype=np.float64)
    c = np.asarray(observed_counts, dtype=np.float64)
    if e.shape != c.shape:
        raise ValueError(f"{c.size} observed bins against {e.size} reference bins")
    k, n = e.size, float(c.sum())
    if n == 0:
        return float("nan")
    e = (e * expected_n + 0.5) / (expected_n + 0.5 * k)
    a = (c + 0.5) / (n + 0.5 * k)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_2samp(a, b) -> tuple[float, float]:
    """The two-sample Kolmogorov–Smirnov statistic D and its asymptotic p-value (ties handled: both
    empirical distribution functions are evaluated at every distinct value)."""
    a = np.sort(np.asarray(a, dtype=np.float64))
    b = np.sort(np.asarray(b, dtype=np.float64))
    n, m = a.size, b.size
    if n == 0 or m == 0:
        return float("nan"), float("nan")
    grid = np.concatenate([a, b])
    d = float(np.max(np.abs(np.searchsorted(a, grid, side="right") / n - np.searchsorted(b, grid, side="right") / m)))
    root = math.sqrt(n * m / (n + m))
    return d, kolmogorov_q((root + 0.12 + 0.11 / root) * d)


def kolmogorov_q(lam: float) -> float:
    """Q_KS(λ) = 2 Σ_{j≥1} (−1)^{j−1} exp(−2 j² λ²), the Kolmogorov distribution's upper tail."""
    if lam < 0.2:  # the series converges slowly here, and Q is 1 to ten digits
        return 1.0
    total, sign = 0.0, 1.0
    for j in range(1, 101):
        term = sign * math.exp(-2.0 * j * j * lam * lam)
        total += term
        if abs(term) < 1e-12 * max(total, 1e-300):
            break
        sign = -sign
    return float(min(1.0, max(0.0, 2.0 * total)))


def reading(value: float) -> str:
    """PSI in words: "stable", "watch" or "drift"."""
    if not math.isfinite(value):
        return "n/a"
    return "drift" if value >= PSI_DRIFT else "watch" if value >= PSI_WATCH else "stable"
