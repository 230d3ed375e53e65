"""MNIST and Fashion-MNIST loading, the dataset names every command accepts, and the digits features.

Where the files are looked for, in order:

1. ``data_dir`` or the ``SCRATCHPILOT_DATA`` folder, laid out as ``mnist/`` and ``fashion-mnist/``
   holding the four standard ``*-ubyte.gz`` files (gunzipped copies are accepted too);
2. the cache, ``cache_dir`` or ``SCRATCHPILOT_CACHE`` or ``$XDG_CACHE_HOME/scratchpilot`` or
   ``~/.cache/scratchpilot``, with the same layout;
3. otherwise the files are downloaded into the cache from public mirrors, checked against the
   SHA-256 sums below. ``mirrors`` or ``SCRATCHPILOT_MIRRORS`` (URLs separated by spaces or commas)
   replaces the public mirrors with base URLs laid out like the data folder
   (``BASE/mnist/train-images-idx3-ubyte.gz``), e.g. a local ``python -m http.server``.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._files import check_input_path
from .download import download as _download
from .download import sha256_file
from .idx import read_idx
from .kaggle import read_kaggle_csv

DIGIT_CLASS_NAMES = tuple(str(d) for d in range(10))
#: Fashion-MNIST label names, in label order (from the dataset's README)
FASHION_CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                       "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

IMAGE_SHAPE = (28, 28)


@dataclass(frozen=True)
class _Collection:
    subdir: str
    class_names: tuple[str, ...]
    mirrors: tuple[str, ...]
    sha256: dict[str, str]


_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# sha256 sums of the official files (see shared/data/README.md: their md5 sums match the official ones)
_COLLECTIONS = {
    "digits": _Collection(
        subdir="mnist",
        class_names=DIGIT_CLASS_NAMES,
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        sha256={
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        }),
    "fashion": _Collection(
        subdir="fashion-mnist",
        class_names=FASHION_CLASS_NAMES,
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        sha256={
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        }),
}
_KIND_ALIASES = {"digits": "digits", "mnist": "digits", "fashion": "fashion", "fashion-mnist": "fashion"}

#: dataset names accepted by :func:`resolve_dataset` -> (collection, split)
DATASET_NAMES = {
    "mnist": ("digits", "train"),
    "mnist-train": ("digits", "train"),
    "mnist-test": ("digits", "test"),
    "fashion": ("fashion", "train"),
    "fashion-train": ("fashion", "train"),
    "fashion-test": ("fashion", "test"),
}


class DatasetError(ValueError):
    """A dataset that cannot be named, found or used; the message says which and why."""


@dataclass
class Dataset:
    """Images with optional labels, as every command receives them.

    Attributes
    ----------
    images : uint8 (N, 28, 28), pixels 0..255.
    labels : int64 (N,) class indices, or None when the source has none (e.g. a Kaggle test CSV).
    name : short description for messages and reports (``mnist-test``, a file name).
    sources : the files read.
    class_names : display name of each class index.
    """

    images: np.ndarray
    labels: np.ndarray | None
    name: str
    sources: list[Path] = field(default_factory=list)
    class_names: tuple[str, ...] = DIGIT_CLASS_NAMES

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 3:
            raise DatasetError(f"{self.name}: images must be uint8 (N, H, W), got {self.images.dtype} "
                               f"{self.images.shape}")
        if self.labels is not None and self.labels.shape != (len(self.images),):
            raise DatasetError(f"{self.name}: {len(self.images)} images but labels of shape {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.images)

    def features(self) -> np.ndarray:
        """The training inputs: float32 (N, H*W) in [0, 1], see :func:`to_features`."""
        return to_features(self.images)


def to_features(images: np.ndarray) -> np.ndarray:
    """The one digits preprocessing: uint8 pixels 0..255 -> float32 (N, H*W) in [0, 1].

    Parameters
    ----------
    images : uint8 (N, 28, 28) or already flat (N, 784).

    Raises
    ------
    TypeError
        For anything but uint8, which catches data that was scaled already (scaling twice would
        silently squash every input towards 0).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"to_features expects uint8 pixels 0..255, got {images.dtype} (already scaled?)")
    if images.ndim < 2:
        raise ValueError(f"to_features expects a batch (N, H, W) or (N, H*W), got shape {images.shape}")
    features = images.reshape(len(images), math.prod(images.shape[1:])).astype(np.float32)
    features /= np.float32(255)
    return features


# ------------------------------------------------------------------------------------ where files are


def default_cache_dir() -> Path:
    """``SCRATCHPILOT_CACHE``, else ``$XDG_CACHE_HOME/scratchpilot``, else ``~/.cache/scratchpilot``."""
    if os.environ.get("SCRATCHPILOT_CACHE"):
        return Path(os.environ["SCRATCHPILOT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "scratchpilot"


def _collection(kind: str) -> _Collection:
    try:
        return _COLLECTIONS[_KIND_ALIASES[kind]]
    except KeyError:
        raise DatasetError(f"unknown dataset kind {kind!r}: use 'digits' (MNIST) or 'fashion' "
                           "(Fashion-MNIST)") from None


def _mirror_urls(collection: _Collection, name: str, mirrors: Sequence[str] | None) -> list[str]:
    if mirrors is None and os.environ.get("SCRATCHPILOT_MIRRORS"):
        mirrors = re.split(r"[\s,]+", os.environ["SCRATCHPILOT_MIRRORS"].strip())
    if mirrors is None:
        return [base + name for base in collection.mirrors]
    return [f"{base.rstrip('/')}/{collection.subdir}/{name}" for base in mirrors if base]


def _find_file(collection: _Collection, name: str, data_dir, cache_dir, download: bool, progress: bool,
               mirrors: Sequence[str] | None) -> Path:
    """Path of one distribution file: data folder, then cache, then a verified download into the cache."""
    data_dir = data_dir if data_dir is not None else os.environ.get("SCRATCHPILOT_DATA")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folders = ([Path(data_dir).expanduser() / collection.subdir] if data_dir else []) + [cache / collection.subdir]
    looked = []
    for folder in folders:
        for candidate in (folder / name, folder / name.removesuffix(".gz")):
            if candidate.is_file():
                return candidate
            looked.append(str(candidate))
    if not download:
        raise FileNotFoundError(f"{name} not found (looked at {', '.join(looked)}); set SCRATCHPILOT_DATA, "
                                "run `scratchpilot data fetch`, or allow downloading")
    return _download(_mirror_urls(collection, name, mirrors), cache / collection.subdir / name,
                     collection.sha256[name], progress=progress)


def _load_split(kind: str, split: str, data_dir=None, cache_dir=None, download: bool = True,
                progress: bool = True, mirrors: Sequence[str] | None = None) -> Dataset:
    collection = _collection(kind)
    images_name, labels_name = _SPLIT_FILES[split]
    images_path, labels_path = (_find_file(collection, name, data_dir, cache_dir, download, progress, mirrors)
                                for name in (images_name, labels_name))
    name = f"{'mnist' if collection.subdir == 'mnist' else 'fashion'}-{split}"
    return _checked_dataset(read_idx(images_path), read_idx(labels_path), name, [images_path, labels_path],
                            collection.class_names)


def _checked_dataset(images: np.ndarray, labels: np.ndarray | None, name: str, sources: list[Path],
                     class_names: tuple[str, ...]) -> Dataset:
    """A Dataset after checking what the files held: at least one uint8 28x28 image, matching labels in range.

    An empty file is refused here, for every format (a command cannot train on, score or describe nothing).
    """
    where = ", ".join(map(str, sources))
    if not len(images):
        raise DatasetError(f"{where}: holds no images (0 records)")
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
        raise DatasetError(f"{where}: expected uint8 images of shape (N, 28, 28), found {images.dtype} "
                           f"{images.shape}")
    if labels is not None:
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
            raise DatasetError(f"{where}: {len(images)} images need {len(images)} integer labels, found "
                               f"{labels.dtype} {labels.shape}")
        bad = np.flatnonzero((labels < 0) | (labels >= len(class_names)))
        if len(bad):
            raise DatasetError(f"{where}: label {labels[bad[0]]} of image {bad[0]} is outside "
                               f"0..{len(class_names) - 1}")
        labels = labels.astype(np.int64)
    return Dataset(images, labels, name, sources, class_names)


def load_mnist(kind: str = "digits", data_dir=None, cache_dir=None, download: bool = True,
               progress: bool = True, mirrors: Sequence[str] | None = None
               ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load MNIST (``kind="digits"``) or Fashion-MNIST (``kind="fashion"``).

    Parameters
    ----------
    kind : "digits" (alias "mnist") or "fashion" (alias "fashion-mnist").
    data_dir : folder with ``mnist/`` and ``fashion-mnist/``; default ``SCRATCHPILOT_DATA``.
    cache_dir : download cache; default ``SCRATCHPILOT_CACHE`` or ``~/.cache/scratchpilot``.
    download : fetch missing files from the mirrors (else FileNotFoundError).
    progress : progress bars while downloading.
    mirrors : base URLs laid out like the data folder, replacing the public mirrors (default
        ``SCRATCHPILOT_MIRRORS``).

    Returns
    -------
    (X_train, y_train), (X_test, y_test)
        uint8 images (N, 28, 28) and int64 labels (N,): 60,000 training and 10,000 test pairs.
    """
    train, test = (_load_split(kind, split, data_dir, cache_dir, download, progress, mirrors)
                   for split in ("train", "test"))
    return (train.images, train.labels), (test.images, test.labels)


def fetch(kind: str = "digits", cache_dir=None, progress: bool = True,
          mirrors: Sequence[str] | None = None) -> list[Path]:
    """Make sure the cache holds verified copies of all four files of ``kind``; returns their paths.

    Unlike :func:`load_mnist` this ignores ``SCRATCHPILOT_DATA`` and re-checks the SHA-256 of files
    already in the cache (a damaged one is downloaded again).
    """
    collection = _collection(kind)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    paths = []
    for name, sha256 in collection.sha256.items():
        dest = cache / collection.subdir / name
        if not (dest.is_file() and sha256_file(dest) == sha256):
            _download(_mirror_urls(collection, name, mirrors), dest, sha256, progress=progress)
        paths.append(dest)
    return paths


# --------------------------------------------------------------------------------------- dataset names


def _labels_beside(images_path: Path) -> Path | None:
    """The labels file that goes with an IDX images file, by the standard naming, if it exists."""
    for images_part, labels_part in (("images-idx3", "labels-idx1"), ("images.idx3", "labels.idx1")):
        if images_part in images_path.name:
            stem = images_path.name.replace(images_part, labels_part)
            for name in (stem, stem + ".gz", stem.removesuffix(".gz")):
                if (images_path.parent / name).is_file():
                    return images_path.parent / name
    return None


def _dataset_options() -> str:
    return (f"use one of {', '.join(DATASET_NAMES)}, or the path of a Kaggle CSV (.csv, .csv.gz) or of an "
            "IDX images file (e.g. t10k-images-idx3-ubyte.gz, with its labels file beside it)")


def _is_stream(path: Path) -> bool:
    """Whether ``path`` is a pipe or a character device (not a regular file or a folder)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def resolve_dataset(spec: str, download: bool = True, progress: bool = True, data_dir=None,
                    cache_dir=None) -> Dataset:
    """Turn a dataset name or path, as given on a command line, into a :class:`Dataset`.

    Parameters
    ----------
    spec : ``mnist`` (training set), ``mnist-test``, ``fashion``, ``fashion-test``; or a path to a
        Kaggle CSV (``.csv``/``.csv.gz`` or a pipe, train or test format from its header) or to an IDX images
        file, whose labels file is found beside it (``...images-idx3...`` -> ``...labels-idx1...``;
        without one the labels are None).
    download, progress, data_dir, cache_dir : as for :func:`load_mnist`, for the named datasets.

    Raises
    ------
    DatasetError
        Unknown name (the message lists the options) or unusable file contents;
        FileNotFoundError / IsADirectoryError, CsvFormatError, IdxFormatError for missing or malformed files.
    """
    key = spec.strip().lower()
    if key in DATASET_NAMES:
        kind, split = DATASET_NAMES[key]
        return _load_split(kind, split, data_dir, cache_dir, download, progress)
    path = Path(spec).expanduser()
    name = path.name.lower()
    # a pipe (/dev/stdin, a shell's <(...)) has no telling name and can be read only once: a CSV, as the
    # one format that needs no second file beside it
    if name.endswith((".csv", ".csv.gz")) or _is_stream(path):
        check_input_path(path, "CSV")
        pixels, labels = read_kaggle_csv(path)
        return _checked_dataset(pixels.reshape(-1, *IMAGE_SHAPE), labels, path.name, [path], DIGIT_CLASS_NAMES)
    if "idx" in name or name.endswith(("-ubyte", "-ubyte.gz")):
        check_input_path(path, "IDX")
        images = read_idx(path)
        if images.ndim == 1:  # told from the header, not the name ("nolabels-images-..." holds images)
            raise DatasetError(f"{path} is a labels file (a 1-D IDX of {len(images)} values): pass the images "
                               "file (...images-idx3...) instead")
        labels_path = _labels_beside(path)
        labels = read_idx(labels_path) if labels_path else None
        sources = [path] + ([labels_path] if labels_path else [])
        class_names = FASHION_CLASS_NAMES if "fashion" in str(path).lower() else DIGIT_CLASS_NAMES
        return _checked_dataset(images, labels, path.name, sources, class_names)
    raise DatasetError(f"unknown dataset {spec!r}: {_dataset_options()}")
