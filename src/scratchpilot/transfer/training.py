"""Retraining the end of a network on new classes, on features the frozen backbone computed once.

Last layer only (the blog's Inception retrain): the backbone's bottleneck features x (1,280 numbers per
image for EfficientNet-Lite0) feed one new softmax layer, p = softmax(x W + b), trained by Adam on the
cross-entropy. With ``fine_tune_last_block`` the features are taken one block earlier (7×7×192 for
EfficientNet-Lite0) and the network's last block and head are trained too, starting from their ImageNet
weights, at Adam 1e-4 (a tenth of the rate the new layer gets alone on wide features).

A transfer model file holds only what was trained (the new layer, and the last block when fine-tuned);
its metadata names the backbone (and its exact key: network, cut and preprocessing), the labels and the
preprocessing, so prediction rebuilds the same pipeline and refuses a backbone that has changed since.
"""

from __future__ import annotations

import copy
import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import nn
from .features import DEFAULT_BACKBONE, Backbone, BackboneError, load_backbone
from .images import ImageSpec

TASK = "transfer"
#: the logit change one Adam step of the new layer aims at (see ``train_head``)
HEAD_LOGIT_STEP = 0.2


class TransferModelError(ValueError):
    """A model file that is not a usable transfer model; the message names the file and the field."""


@dataclass
class TransferModel:
    """A trained head and the backbone it sits on."""

    head: nn.Sequential
    backbone: Backbone
    labels: list[str]

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return self.head.predict_proba(features, batch_size=256)


def fine_tune_cut(backbone: Backbone) -> int:
    """Where the features are taken when the last block is fine-tuned: the start of the last block before
    the feature cut (EfficientNet's 192 → 320 block), or for a scratchpilot backbone its last Dense or
    convolution before the cut (with the normalisation and activation after it)."""
    starts = [s for s in backbone.block_starts if s < backbone.cut - 1]
    if len(starts) >= 2:
        return starts[-2]
    weighted = [i for i, layer in enumerate(backbone.network.layers[:backbone.cut]) if "W" in layer.params and i >= 1]
    if not weighted:
        raise BackboneError(f"{backbone.name}: no layer with weights between its first layer and the cut, "
                            f"nothing to fine-tune (to train it all, train a model of your own)")
    return weighted[-1]


def build_head(backbone: Backbone, n_classes: int, start: int | None, seed: int) -> nn.Sequential:
    """The trainable end: copies of the backbone's layers ``start`` … cut (when fine-tuning) and a new
    softmax layer on the flattened features."""
    layers: list[nn.Layer] = []
    if start is not None:
        for layer in backbone.network.layers[start:backbone.cut]:
            # a copy of the layer alone (not of the network it was packed into)
            twin = copy.deepcopy(layer, memo={id(getattr(layer, "_packed_by", None)): None})
            twin.trainable = True
            layers.append(twin)
        input_shape = backbone.network.output_shapes[start - 1] if start else backbone.network.input_shape
    else:
        input_shape = backbone.feature_shape
    shapes = nn.Sequential(layers, seed=0, input_shape=input_shape).output_shapes if layers else [input_shape]
    width = int(np.prod(shapes[-1]))
    if len(shapes[-1]) > 1:
        layers.append(nn.Flatten())
    layers.append(nn.Dense(width, n_classes, init="glorot"))
    return nn.Sequential(layers, loss=nn.SoftmaxCrossEntropy(), optimizer=nn.Adam(lr=1e-3), seed=seed,
                         input_shape=input_shape)


def train_head(head: nn.Sequential, train: tuple[np.ndarray, np.ndarray], validation, *, epochs: int,
               batch_size: int = 64, fine_tuning: bool = False, progress: bool = True) -> nn.History:
    """Adam on the cross-entropy; early stopping on validation accuracy (the best epoch kept) when there
    is a validation set.

    Adam moves every weight by about ``lr`` a step, so a logit z = x·w moves by about lr·‖x‖₁: the new
    layer's rate is ``HEAD_LOGIT_STEP / mean ‖x‖₁`` within [1e-3, 1e-2], which keeps 1e-3 for
    EfficientNet's wide features and lets a narrow backbone's (say 32 numbers) learn in as many epochs.
    """
    if fine_tuning:
        head.optimizer = nn.Adam(lr=1e-4)
    else:
        X = train[0].reshape(len(train[0]), -1)
        l1 = float(np.mean(np.abs(X).sum(axis=1))) if len(X) else 0.0
        head.optimizer = nn.Adam(lr=float(np.clip(HEAD_LOGIT_STEP / max(l1, 1e-12), 1e-3, 1e-2)))
    stopper = nn.EarlyStopping(patience=max(3, epochs // 4), monitor="val_accuracy") if validation else None
    return head.fit(*train, epochs=epochs, batch_size=batch_size, validation_data=validation,
                    early_stopping=stopper, progress=progress)


def transfer_metadata(features_from: Backbone, labels: list[str], fine_tuned: bool, **facts) -> dict:
    """``features_from``: the backbone as cut where the head's input comes out."""
    return {"task": TASK, "labels": list(labels), "preprocessing": features_from.spec.to_dict(),
            "backbone": features_from.describe(), "fine_tuned_last_block": fine_tuned,
            "trained_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), **facts}


def load_transfer_model(path, cache_dir=None) -> TransferModel:
    """A transfer model file and its backbone, checked: the backbone must be the one it was trained on."""
    path = Path(path)
    try:
        head = nn.load(path)
    except nn.ModelFileError as exc:
        raise TransferModelError(str(exc)) from None
    meta = head.metadata if isinstance(head.metadata, dict) else {}
    if meta.get("task") != TASK:
        raise TransferModelError(f"{path}: not a transfer model (its metadata says task {meta.get('task')!r}); "
                                 f"train one with 'scratchpilot transfer train'")
    if not isinstance(head, nn.Sequential):
        raise TransferModelError(f"{path}: a transfer model is one network, not an ensemble")
    labels = meta.get("labels")
    if not (isinstance(labels, list) and len(labels) == head.n_outputs and all(isinstance(x, str) for x in labels)
            and len(set(labels)) == len(labels)):
        raise TransferModelError(f"{path}: metadata field 'labels' must list {head.n_outputs} distinct names")
    info = meta.get("backbone")
    if not (isinstance(info, dict) and isinstance(info.get("name"), str) and isinstance(info.get("key"), str)):
        raise TransferModelError(f"{path}: metadata field 'backbone' must name the backbone and its key")
    cut = info.get("cut")
    if isinstance(cut, bool) or not isinstance(cut, int) or cut < 1:
        raise TransferModelError(f"{path}: metadata field 'backbone.cut' must be a whole number ≥ 1")
    try:
        spec = ImageSpec.from_dict(meta.get("preprocessing"), f"{path}: metadata field 'preprocessing'")
    except ValueError as exc:
        raise TransferModelError(str(exc)) from None
    try:
        backbone = load_backbone(info["name"], cut=cut, image_size=spec.size if info["name"] == DEFAULT_BACKBONE
                                 else None, cache_dir=cache_dir)
    except BackboneError as exc:
        raise TransferModelError(f"{path}: its backbone cannot be loaded: {exc}") from None
    if backbone.key != info["key"]:
        raise TransferModelError(f"{path}: the backbone {info['name']} is not the one this model was trained on "
                                 f"(its file or preprocessing changed since)")
    if tuple(backbone.feature_shape) != tuple(head.input_shape or ()):
        raise TransferModelError(f"{path}: the head takes {head.input_shape}, the backbone gives "
                                 f"{backbone.feature_shape}")
    return TransferModel(head=head, backbone=backbone, labels=labels)
