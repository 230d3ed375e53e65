"""Classification metrics shared by the digits and car applications (NumPy only)."""

from __future__ import annotations

import math

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``C[i, j]`` = number of examples of true class i predicted as j, shape (n_classes, n_classes)."""
    y_true, y_pred = np.asarray(y_true, np.intp), np.asarray(y_pred, np.intp)
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class_report(confusion: np.ndarray) -> list[dict]:
    """Precision, recall, F1 and support for each class from a confusion matrix.

    precision_k = C[k,k] / Σ_i C[i,k]; recall_k = C[k,k] / Σ_j C[k,j]; F1 = harmonic mean (0 when undefined).
    """
    tp = np.diag(confusion).astype(float)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    rows = []
    for k in range(confusion.shape[0]):
        p = tp[k] / predicted[k] if predicted[k] else 0.0
        r = tp[k] / actual[k] if actual[k] else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        rows.append({"class": k, "precision": p, "recall": r, "f1": f1, "support": int(actual[k])})
    return rows


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for an accuracy of correct/n (better than ±1.96·SE near 0 or 1)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def format_confusion(confusion: np.ndarray, labels: list[str]) -> str:
    """The confusion matrix as a text table: rows are true labels, columns predicted."""
    width = max(5, max(len(str(v)) for v in confusion.flat) + 1, max(len(s) for s in labels) + 1)
    head = "true\\pred".ljust(10) + "".join(s.rjust(width) for s in labels)
    lines = [head]
    for label, row in zip(labels, confusion, strict=True):
        lines.append(label.ljust(10) + "".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)


def format_report(rows: list[dict], labels: list[str]) -> str:
    """Per-class precision / recall / F1 / support as a text table, with macro averages."""
    lines = [f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for row, label in zip(rows, labels, strict=True):
        lines.append(f"{label:<10}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1']:>10.4f}"
                     f"{row['support']:>10d}")
    macro = {k: float(np.mean([r[k] for r in rows])) for k in ("precision", "recall", "f1")}
    lines.append(f"{'macro avg':<10}{macro['precision']:>10.4f}{macro['recall']:>10.4f}{macro['f1']:>10.4f}"
                 f"{sum(r['support'] for r in rows):>10d}")
    return "\n".join(lines)


def plot_confusion(confusion: np.ndarray, labels: list[str], path, title: str = "Confusion matrix") -> None:
    """Save a confusion-matrix heatmap (matplotlib, imported lazily) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1 + 0.55 * len(labels), 0.8 + 0.5 * len(labels)), dpi=120)
    row_sums = np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    ax.imshow(confusion / row_sums, cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(confusion):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                color="white" if v / row_sums[i, 0] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
