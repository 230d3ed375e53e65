"""Backbones and their bottleneck features, cached per image.

A *backbone* is the frozen front of a trained network, cut where its features are taken: EfficientNet-Lite0
before its ImageNet classifier (1,280 features), or any scratchpilot model file cut before layer N (a CNN
trained on MNIST, cut before its head, for Fashion-MNIST). Its *key* names it exactly: the network's
identity (the converted file's source hash, or the model file's SHA-256), the cut and the preprocessing.

The bottleneck cache keeps one entry per (backbone key, image content): the feature vector as raw float32
bytes, in a file named by ``SHA-256(backbone key, SHA-256 of the image file's bytes)``. Renaming, copying or
moving images keeps their entries; an edited image gets a new one. An entry is written to a temporary file
and renamed into place, so a run killed half-way (even by ``kill -9``) leaves whole entries or none, and an
entry of the wrong length is treated as missing and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import nn
from ..util.images import ImageDecodeError
from .images import ImageSpec, prepare_image

DEFAULT_BACKBONE = "efficientnet-lite0"
#: images per forward pass of the backbone (large enough for BLAS, small enough for the caches)
BATCH = 8


class BackboneError(ValueError):
    """A backbone that cannot be used (unknown name, unreadable file, a cut outside the model...)."""


@dataclass
class Backbone:
    name: str
    #: what the features depend on: network identity, cut and preprocessing (the cache key's first half)
    key: str
    spec: ImageSpec
    model: nn.Sequential
    cut: int
    #: the full network (for fine-tuning the layers after a second, earlier cut)
    network: nn.Sequential
    #: where each block of the network starts (EfficientNet), for ``--fine-tune-last-block``
    block_starts: list[int] = field(default_factory=list)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.model.output_shapes[-1])

    def describe(self) -> dict:
        """What a transfer model file records of its backbone (enough to find and check it again)."""
        return {"name": self.name, "key": self.key, "cut": self.cut, "feature_shape": list(self.feature_shape)}


def _cut_model(network: nn.Sequential, cut: int, spec: ImageSpec) -> nn.Sequential:
    """The first ``cut`` layers of ``network`` as a frozen inference model taking ``spec``'s images (the
    layers are shared). A network that takes flat vectors (a digits model) gets the image flattened first."""
    layers = network.layers[:cut]
    for layer in layers:
        layer.trainable = False
    image = (spec.size, spec.size, spec.channels)
    if len(network.input_shape or ()) == 1:
        layers = [nn.Reshape((int(np.prod(image)),)), *layers]
    return nn.Sequential(layers, seed=0, input_shape=image, dtype=network.dtype)


def _spec_for(model: nn.Sequential, path) -> ImageSpec:
    """A scratchpilot model's image input, pixels / 255: its ``input_shape`` when that is a square image
    (H, H, 1 or 3), or the square grey or colour image a flat input of H·H or H·H·3 numbers is (a digits
    model takes 784 = 28·28)."""
    shape = tuple(model.input_shape or ())
    if len(shape) == 3 and shape[0] == shape[1] and shape[2] in (1, 3):
        size, channels = shape[0], shape[2]
    elif len(shape) == 1 and _square_side(shape[0]):
        size, channels = _square_side(shape[0]), 1
    elif len(shape) == 1 and shape[0] % 3 == 0 and _square_side(shape[0] // 3):
        size, channels = _square_side(shape[0] // 3), 3
    else:
        raise BackboneError(f"{path}: a backbone must take square images (H, H, 1 or 3) or H·H (·3) numbers; "
                            f"this model takes {shape or 'an unknown shape'}")
    return ImageSpec(mode="L" if channels == 1 else "RGB", size=int(size), crop=1.0, mean=0.0, std=255.0)


def _square_side(n: int) -> int:
    """H if n = H·H (H ≥ 2), else 0."""
    side = int(round(float(n) ** 0.5))
    return side if side >= 2 and side * side == n else 0


def load_backbone(name: str = DEFAULT_BACKBONE, cut: int | None = None, *, image_size: int | None = None,
                  cache_dir=None) -> Backbone:
    """``"efficientnet-lite0"`` or a path to a scratchpilot model file (``cut`` required for a file).

    ``image_size`` changes EfficientNet's input size (its convolutions take any size; 224 is what it was
    trained at).
    """
    from ..data import sha256_file

    if name == DEFAULT_BACKBONE:
        from .efficientnet import PREPROCESS, WeightsError, load_efficientnet_lite0

        try:
            network = load_efficientnet_lite0(cache_dir)
        except WeightsError as exc:
            raise BackboneError(str(exc)) from None
        meta = network.metadata
        spec = ImageSpec(**{**PREPROCESS, "size": image_size or PREPROCESS["size"]})
        cut = meta["feature_cut"] if cut is None else cut
        identity = f"{name}:{meta['source_sha256']}:v{meta['conversion_version']}"
        blocks = list(meta.get("block_starts", []))
        if spec.size != network.input_shape[0]:  # the same layers at another input size
            network = nn.Sequential(network.layers, seed=0, input_shape=(spec.size, spec.size, 3))
    else:
        path = Path(name)
        if not path.is_file():
            raise BackboneError(f"{name}: no such backbone; give {DEFAULT_BACKBONE!r} or a scratchpilot .npz")
        try:
            network = nn.load(path)
        except nn.ModelFileError as exc:
            raise BackboneError(str(exc)) from None
        if not isinstance(network, nn.Sequential):
            raise BackboneError(f"{path}: an ensemble cannot be a backbone; give one of its member models")
        if cut is None:
            raise BackboneError(f"{path}: say where to cut it with --cut N (the layers before N are kept); its "
                                f"layers:\n{network.summary()}")
        spec = _spec_for(network, path)
        if image_size is not None and image_size != spec.size:
            raise BackboneError(f"{path}: this backbone takes {spec.size}×{spec.size} images; --image-size "
                                f"applies to {DEFAULT_BACKBONE} only")
        identity = f"file:{sha256_file(path)}"
        blocks = []
        name = str(path)
    if isinstance(cut, bool) or not isinstance(cut, int) or not 1 <= cut <= len(network.layers):
        raise BackboneError(f"{name}: --cut must be from 1 to {len(network.layers)} (its layer count), got {cut!r}")
    model = _cut_model(network, cut, spec)
    key = json.dumps({"network": identity, "cut": cut, "spec": spec.to_dict()}, sort_keys=True)
    return Backbone(name=name, key=key, spec=spec, model=model, cut=cut, network=network, block_starts=blocks)


def recut(backbone: Backbone, cut: int) -> Backbone:
    """The same network cut at another layer (its features, key and cache entries are its own)."""
    parts = json.loads(backbone.key)
    parts["cut"] = cut
    return Backbone(name=backbone.name, key=json.dumps(parts, sort_keys=True), spec=backbone.spec,
                    model=_cut_model(backbone.network, cut, backbone.spec), cut=cut, network=backbone.network,
                    block_starts=backbone.block_starts)


class BottleneckCache:
    """Feature vectors on disk, one raw float32 file per (backbone, image content)."""

    def __init__(self, root, backbone: Backbone) -> None:
        digest = hashlib.sha256(backbone.key.encode()).hexdigest()
        self.root = Path(root) / digest[:16]
        self.shape = backbone.feature_shape
        self.n_bytes = math.prod(self.shape) * 4
        self.backbone_key = backbone.key
        self.hits = self.misses = self.writes = 0
        self._failed_write = False

    def _path(self, content_hash: str) -> Path:
        return self.root / content_hash[:2] / f"{content_hash}.f32"

    def get(self, content_hash: str) -> np.ndarray | None:
        path = self._path(content_hash)
        try:
            with open(path, "rb") as fh:
                data = fh.read(self.n_bytes + 1)
        except OSError:
            self.misses += 1
            return None
        if len(data) != self.n_bytes:  # not one of ours (a torn write is never renamed into place)
            self.misses += 1
            return None
        self.hits += 1
        return np.frombuffer(data, dtype="<f4").reshape(self.shape)

    def put(self, content_hash: str, features: np.ndarray) -> None:
        if self._failed_write:
            return
        path = self._path(content_hash)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not self.writes:  # which backbone these entries belong to, for whoever looks in the folder
                (self.root / "backbone.json").write_text(self.backbone_key, encoding="utf-8")
            with open(tmp, "wb") as fh:
                fh.write(np.ascontiguousarray(features, dtype="<f4").tobytes())
            os.replace(tmp, path)
            self.writes += 1
        except OSError as exc:  # a full or read-only cache costs speed next time, never this run
            tmp.unlink(missing_ok=True)
            self._failed_write = True
            print(f"note: cannot write the bottleneck cache in {self.root} ({exc.strerror}); features will be "
                  f"computed again next run", file=sys.stderr)


@dataclass
class Features:
    values: np.ndarray           # (n, *feature_shape) float32, one row per readable image
    kept: list[int]              # indices into the file list of the rows of ``values``
    bad: list[dict]              # {"file", "message"} for each image that could not be read
    seconds: float = 0.0         # the whole pass: reading, hashing, decoding, the cache and the backbone
    computed: int = 0            # images run through the backbone (the others came from the cache)
    backbone_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Images through the backbone per second of its forward passes."""
        return self.computed / self.backbone_seconds if self.backbone_seconds > 0 else float("nan")


def default_cache_root(cache_dir=None) -> Path:
    from ..data import default_cache_dir

    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "bottlenecks"


def extract_features(paths: list[Path], names: list[str], backbone: Backbone, *, cache: BottleneckCache | None,
                     progress: bool = True, desc: str = "bottlenecks") -> Features:
    """The backbone's features of every image in ``paths`` (cached ones read back, the rest computed).

    Unreadable images (corrupt, truncated, not an image) are left out and listed in ``bad``.
    """
    from ..util.progress import progress as progress_bar

    shape = backbone.feature_shape
    out = np.empty((len(paths), *shape), dtype=np.float32)
    have = np.zeros(len(paths), dtype=bool)
    bad: list[dict] = []
    pending: list[tuple[int, str, np.ndarray]] = []
    started = time.perf_counter()
    computed = 0
    compute_seconds = 0.0

    def flush() -> None:
        nonlocal computed, compute_seconds
        if not pending:
            return
        t = time.perf_counter()
        batch = np.stack([x for _, _, x in pending])
        values = backbone.model.forward(batch)
        compute_seconds += time.perf_counter() - t
        for (i, digest, _), row in zip(pending, values, strict=True):
            out[i] = row
            have[i] = True
            if cache is not None:
                cache.put(digest, row)
        computed += len(pending)
        bar.update(len(pending))
        pending.clear()

    with progress_bar(total=len(paths), desc=desc, unit="image", enabled=progress) as bar:
        for i, (path, name) in enumerate(zip(paths, names, strict=True)):
            try:
                data = path.read_bytes()
            except OSError as exc:
                bad.append({"file": name, "message": f"{name}: cannot read ({exc.strerror or exc})"})
                bar.update(1)
                continue
            digest = hashlib.sha256(data).hexdigest()
            cached = cache.get(digest) if cache is not None else None
            if cached is not None:
                out[i] = cached
                have[i] = True
                bar.update(1)
                continue
            try:
                pending.append((i, digest, prepare_image(data, backbone.spec, where=name)))
            except ImageDecodeError as exc:
                bad.append({"file": name, "message": str(exc)})
                bar.update(1)
                continue
            if len(pending) >= BATCH:
                flush()
        flush()
    kept = [int(i) for i in np.flatnonzero(have)]
    return Features(values=out[have], kept=kept, bad=bad, seconds=time.perf_counter() - started,
                    computed=computed, backbone_seconds=compute_seconds)
