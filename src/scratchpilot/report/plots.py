"""The report figures, drawn with matplotlib's Agg backend and returned as PNG data URIs.

matplotlib is imported on first use (``pip install 'scratchpilot[report]'``), never at import time.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from .html import figure_data_uri, png_bytes_uri

#: one colour per split / series, colour-blind friendly (Okabe-Ito)
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


def pyplot():
    """matplotlib.pyplot on the Agg backend with the report's look; a clear error when it is missing."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the reports need matplotlib: pip install 'scratchpilot[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "figure.dpi": 100, "font.size": 10, "axes.titlesize": 11, "axes.titleweight": "bold",
        "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25,
        "axes.axisbelow": True, "legend.frameon": False,
    })
    return plt


def class_distribution(counts: dict[str, np.ndarray], class_names: Sequence[str],
                       title: str = "Class distribution") -> str:
    """Grouped bars: share of each class in each split (``{split name: counts (K,)}``), counts on top."""
    plt = pyplot()
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.62 * k * max(1, len(counts)) ** 0.5 + 2), 3.5))
    width = 0.8 / max(len(counts), 1)
    x = np.arange(k)
    for i, (name, values) in enumerate(counts.items()):
        values = np.asarray(values)
        total = max(int(values.sum()), 1)
        bars = ax.bar(x + (i - (len(counts) - 1) / 2) * width, 100 * values / total, width,
                      label=f"{name} ({total:,d})", color=PALETTE[i % len(PALETTE)])
        if k <= 12:
            for bar, value in zip(bars, values, strict=True):
                ax.annotate(f"{int(value):,d}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=6.5, color="#444", xytext=(0, 2),
                            textcoords="offset points", rotation=90 if len(counts) > 1 else 0)
    ax.set_xticks(x, [str(n) for n in class_names], rotation=30 if max(map(len, class_names)) > 4 else 0)
    ax.set_ylabel("share of the split (%)")
    ax.set_title(title, pad=24)
    ax.margins(y=0.22)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(counts), fontsize=8)
    return figure_data_uri(fig)


def _mosaic(tiles: np.ndarray, gap: int = 2, fill: int = 255) -> np.ndarray:
    """Tiles (rows, cols, H, W[, C]) uint8 -> one image with ``gap`` pixels of ``fill`` between tiles."""
    rows, cols, h, w = tiles.shape[:4]
    extra = tiles.shape[4:]
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, *extra), fill, dtype=np.uint8)
    for r in range(rows):
        for c in range(cols):
            out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tiles[r, c]
    return out


def image_grid(tiles: np.ndarray, row_names: Sequence[str], title: str, cmap: str = "gray",
               tile_inches: float = 0.42) -> str:
    """A grid of images, one row per class: tiles (rows, cols, H, W[, 3]) uint8; empty tiles may be all 255."""
    plt = pyplot()
    rows, cols = tiles.shape[:2]
    mosaic = _mosaic(tiles, fill=255 if tiles.ndim == 5 else 128)
    aspect = tiles.shape[2] / tiles.shape[3]
    fig, ax = plt.subplots(figsize=(cols * tile_inches + 1.0, rows * tile_inches * aspect + 0.6))
    ax.imshow(mosaic, cmap=None if tiles.ndim == 5 else cmap, vmin=0, vmax=255, interpolation="nearest")
    h = tiles.shape[2] + 2
    ax.set_yticks([r * h + (h - 2) / 2 for r in range(rows)], list(row_names))
    ax.set_xticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title)
    return figure_data_uri(fig)


def mean_images(means: np.ndarray, class_names: Sequence[str], title: str = "Mean image per class") -> str:
    """One panel per class: the average image (float (K, H, W) in 0..255, or (K, H, W, 3))."""
    plt = pyplot()
    k = len(means)
    cols = min(k, 10)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.15 * cols + 0.3, 1.35 * rows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < k:
            image = means[i]
            ax.imshow(np.clip(image, 0, 255).astype(np.uint8) if image.ndim == 3 else image,
                      cmap="magma", vmin=0, vmax=255 if image.ndim == 3 else max(float(means.max()), 1.0),
                      interpolation="nearest")
            ax.set_title(str(class_names[i]), fontsize=9, fontweight="normal")
    fig.suptitle(title, fontweight="bold", fontsize=11)
    fig.tight_layout()
    return figure_data_uri(fig)


def pixel_histogram(histograms: dict[str, np.ndarray], title: str = "Pixel intensity histogram") -> str:
    """Step plot of the share of pixels at each value 0..255 (log scale), one line per split."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    for i, (name, counts) in enumerate(histograms.items()):
        share = counts / max(counts.sum(), 1)
        ax.step(np.arange(len(counts)), np.where(share > 0, share, np.nan), where="mid", label=name,
                color=PALETTE[i % len(PALETTE)], linewidth=1.6 if i == 0 else 1.0, alpha=1.0 if i == 0 else 0.8,
                linestyle="-" if i == 0 else "--")
    ax.set_yscale("log")
    ax.set_xlim(-2, 257)
    ax.set_xlabel("pixel value")
    ax.set_ylabel("share of pixels")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return figure_data_uri(fig)


def pixel_map(values: np.ndarray, title: str, mark: np.ndarray | None = None, label: str = "") -> str:
    """A heat map of one value per pixel position (e.g. standard deviation), ``mark`` outlined in red."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(3.6, 3.3))
    shown = ax.imshow(values, cmap="viridis", interpolation="nearest")
    if mark is not None and mark.any():
        overlay = np.zeros((*mark.shape, 4))
        overlay[mark] = (1.0, 0.15, 0.15, 0.85)
        ax.imshow(overlay, interpolation="nearest")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label=label)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    ax.set_title(title)
    return figure_data_uri(fig)


def confusion_heatmap(confusion: np.ndarray, labels: Sequence[str], title: str) -> str:
    """The digits app's confusion-matrix figure (:func:`scratchpilot.digits.metrics.plot_confusion`), embedded."""
    from ..digits.metrics import plot_confusion

    plt = pyplot()
    buffer = io.BytesIO()
    with plt.rc_context({"axes.grid": False}):  # grid lines would cross the cells
        plot_confusion(np.asarray(confusion), list(labels), buffer, title=title)
    return png_bytes_uri(buffer.getvalue())


def learning_curves(history: dict[str, list[float]]) -> str | None:
    """Loss and accuracy per epoch (training and validation) from a model's stored history; None if empty."""
    if not history or not any(history.get(k) for k in ("loss", "accuracy", "val_loss", "val_accuracy")):
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.2))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for i, (key, name) in enumerate(((metric, "training"), (f"val_{metric}", "validation"))):
            values = history.get(key) or []
            if values:
                epochs = np.arange(1, len(values) + 1)
                ax.plot(epochs, values, marker="o", markersize=3, label=name, color=PALETTE[i])
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(metric)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return figure_data_uri(fig)


def reliability_diagram(bins: list[dict], ece: float, title: str = "Calibration (reliability diagram)") -> str:
    """Accuracy against mean confidence per confidence bin, with the number of examples per bin below."""
    plt = pyplot()
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(4.8, 5.0), sharex=True,
                                       gridspec_kw={"height_ratios": (3, 1)})
    lows = np.array([b["low"] for b in bins])
    highs = np.array([b["high"] for b in bins])
    widths = highs - lows
    counts = np.array([b["count"] for b in bins])
    accuracy = np.array([b["accuracy"] if b["count"] else np.nan for b in bins])
    confidence = np.array([b["confidence"] if b["count"] else np.nan for b in bins])
    ax.plot([0, 1], [0, 1], linestyle="--", color="#888", linewidth=1, label="perfectly calibrated")
    ax.bar(lows, accuracy, widths, align="edge", color=PALETTE[0], edgecolor="white", label="accuracy")
    gap_bottom = np.minimum(accuracy, confidence)
    ax.bar(lows, np.abs(confidence - accuracy), widths, bottom=gap_bottom, align="edge", facecolor="none",
           edgecolor="#D55E00", hatch="///", linewidth=0.8, label="gap to mean confidence")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE = {ece:.2%}")
    ax.legend(fontsize=8, loc="upper left")
    ax_count.bar(lows, np.maximum(counts, 0), widths, align="edge", color="#999", edgecolor="white")
    ax_count.set_yscale("log")
    ax_count.yaxis.set_minor_formatter(plt.NullFormatter())  # labelled minor ticks crowd the small panel
    ax_count.set_xlabel("confidence (top predicted probability)")
    ax_count.set_ylabel("examples")
    ax_count.set_xlim(0, 1)
    fig.tight_layout()
    return figure_data_uri(fig)


def stacked_shares(shares: np.ndarray, row_names: Sequence[str], class_names: Sequence[str], title: str) -> str:
    """Horizontal stacked bars: for each row (e.g. a driving session) the share of each label."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 0.42 * len(row_names) + 1.6))
    left = np.zeros(len(row_names))
    for k, name in enumerate(class_names):
        ax.barh(np.arange(len(row_names)), shares[:, k], left=left, color=PALETTE[k % len(PALETTE)], label=name)
        left += shares[:, k]
    ax.set_yticks(np.arange(len(row_names)), list(row_names), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of frames")
    ax.set_title(title, pad=22)
    ax.legend(ncol=len(class_names), fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    return figure_data_uri(fig)


def timelines(series: dict[str, tuple[np.ndarray, np.ndarray]], title: str, ylabel: str) -> str:
    """Line plot of one (x, y) series per name, e.g. frame rate over time for each session."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    for i, (name, (x, y)) in enumerate(series.items()):
        ax.plot(x, y, linewidth=1.1, label=name, color=PALETTE[i % len(PALETTE)])
    ax.set_xlabel("time since session start (s)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) <= 8:
        ax.legend(fontsize=8)
    return figure_data_uri(fig)


def horizontal_bars(values: Sequence[float], names: Sequence[str], title: str, xlabel: str) -> str:
    """One bar per name (e.g. session lengths)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 0.38 * len(names) + 1.4))
    ax.barh(np.arange(len(names)), values, color=PALETTE[0])
    ax.set_yticks(np.arange(len(names)), list(names), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return figure_data_uri(fig)
