"""A network in one picture: what each layer makes of one digit.

For a CNN: the 28×28 input, then the feature maps after each convolution stage (up to
:data:`MAX_MAPS` channels per stage, each a small grey image, brighter = stronger), then the output
probabilities as bars. For an MLP: the input, the first layer's weights of :data:`MAX_UNITS` hidden
units as 28×28 pictures (what each unit looks for: red where ink raises it, blue where ink lowers it),
how strongly each of those units fired for this digit, and the probabilities.
"""

from __future__ import annotations

import numpy as np

#: feature maps shown per stage, and first-layer units shown for an MLP
MAX_MAPS, MAX_UNITS = 8, 16


def layer_outputs(model, features: np.ndarray) -> list[tuple[int, object, np.ndarray]]:
    """``(index, layer, output)`` of every layer for one row of ``features`` (1, 784), in order."""
    outputs, x = [], features.astype(model.dtype)
    for index, layer in enumerate(model.layers):
        x = layer.forward(x, training=False)
        outputs.append((index, layer, x))
    return outputs


def explain(model, digit: np.ndarray, out_path) -> dict:
    """Draw ``model`` reading the uint8 (28, 28) ``digit`` into ``out_path`` (PNG, SVG or PDF); returns
    what was drawn: the stages with their shapes, the probabilities and the predicted label."""
    from .. import nn
    from ..data import to_features
    from ..report.plots import pyplot

    if hasattr(model, "members"):
        raise ValueError("an ensemble has no single set of layers to draw: explain one of its members")
    features = to_features(digit.reshape(1, 784))
    outputs = layer_outputs(model, features)
    probabilities = model.predict_proba(features)[0]
    labels = (getattr(model, "metadata", None) or {}).get("labels") or [str(i) for i in range(len(probabilities))]
    # a stage ends where a 4-D activation is followed by pooling, or at the last 4-D output before the flatten
    stages = [(i, layer, out) for k, (i, layer, out) in enumerate(outputs) if out.ndim == 4 and (
        k + 1 == len(outputs) or outputs[k + 1][2].ndim != 4 or isinstance(outputs[k + 1][1], nn.MaxPool2D))]
    plt = pyplot()
    if stages:
        columns = MAX_MAPS
        fig = plt.figure(figsize=(1.25 * columns + 2.6, 1.35 * (len(stages) + 1) + 1.2))
        grid = fig.add_gridspec(len(stages) + 1, columns + 2)
        _image(fig.add_subplot(grid[0, :2]), digit, "input 28×28")
        for row, (i, layer, out) in enumerate(stages, start=1):
            maps = out[0]
            order = np.argsort(-maps.reshape(-1, maps.shape[-1]).mean(axis=0))[:columns]  # the most active
            for col, channel in enumerate(order):
                ax = fig.add_subplot(grid[row, col + 2])
                ax.imshow(maps[:, :, channel], cmap="gray")
                ax.set_axis_off()
                if col == 0:
                    ax.set_title(f"ch {channel}", fontsize=7)
            label_ax = fig.add_subplot(grid[row, :2])
            label_ax.set_axis_off()
            label_ax.text(0.0, 0.5, f"layer {i} {type(layer).__name__}\n{maps.shape[0]}×{maps.shape[1]}×"
                                    f"{maps.shape[2]}", fontsize=8, va="center")
        _bars(fig.add_subplot(grid[0, 3:]), probabilities, labels)
        kind = "cnn"
    else:
        dense = next((layer for layer in model.layers if isinstance(layer, nn.Dense)), None)
        if dense is None or dense.params["W"].shape[0] != 784:
            raise ValueError("explain draws a CNN's feature maps or an MLP whose first layer is Dense(784, …)")
        W = dense.params["W"]
        first = outputs[next(k for k, (_, layer, _) in enumerate(outputs) if layer is dense) + 1][2][0] \
            if len(outputs) > 1 else outputs[0][2][0]
        units = np.argsort(-first)[:MAX_UNITS]  # the units this digit fired most
        fig = plt.figure(figsize=(10, 6.2))
        grid = fig.add_gridspec(3, MAX_UNITS // 2 + 2)
        _image(fig.add_subplot(grid[0, :2]), digit, "input 28×28")
        limit = float(np.abs(W[:, units]).max()) or 1.0
        for k, unit in enumerate(units):
            ax = fig.add_subplot(grid[1 + k // (MAX_UNITS // 2), 2 + k % (MAX_UNITS // 2)])
            ax.imshow(W[:, unit].reshape(28, 28), cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_axis_off()
            ax.set_title(f"#{unit}: {first[unit]:.2f}", fontsize=7)
        note = fig.add_subplot(grid[1:, :2])
        note.set_axis_off()
        note.text(0, 0.5, f"first layer's weights\nof the {len(units)} units\nthat fired most\n(red: ink raises\n"
                          f"the unit, blue:\nink lowers it)", fontsize=8, va="center")
        _bars(fig.add_subplot(grid[0, 3:]), probabilities, labels)
        kind = "mlp"
    fig.suptitle(f"{kind.upper()} reading one digit: {labels[int(np.argmax(probabilities))]} "
                 f"({probabilities.max():.0%})", fontsize=11, fontweight="bold")
    fig.savefig(out_path, dpi=110, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return {"kind": kind, "label": str(labels[int(np.argmax(probabilities))]),
            "probabilities": [float(p) for p in probabilities],
            "stages": [{"layer": i, "type": type(layer).__name__, "shape": list(out.shape[1:])}
                       for i, layer, out in stages],
            "out": str(out_path)}


def _image(ax, digit: np.ndarray, title: str) -> None:
    ax.imshow(digit, cmap="gray")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _bars(ax, probabilities: np.ndarray, labels) -> None:
    colours = ["#D55E00" if k == int(np.argmax(probabilities)) else "#0072B2" for k in range(len(probabilities))]
    ax.bar(np.arange(len(probabilities)), probabilities, color=colours)
    ax.set_xticks(np.arange(len(probabilities)), [str(x) for x in labels], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("output probabilities", fontsize=9)
