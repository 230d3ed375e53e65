"""Image folders: one subfolder per class, and the split of their files into training, validation and test.

The split follows TensorFlow's ``retrain.py`` (the script of the blog's Inception post): each file goes to
a set by a hash of its name, not by a random draw, so a file stays in its set from run to run and adding
images to a folder never moves an old one into another set (the test set stays a test set).

    share = (SHA-1 of the file name, as a number) mod 2²⁷ / 2²⁷ · 100
    validation if share < validation %, test if share < validation % + test %, else training

The name is taken without anything from ``_nohash_`` on (``retrain.py``'s convention), so several pictures
of one thing (``cat1_nohash_1.jpg``, ``cat1_nohash_2.jpg``) always land in the same set.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from .images import IMAGE_SUFFIXES

_HASH_RANGE = 1 << 27
SETS = ("training", "validation", "testing")


class FolderError(ValueError):
    """An image folder that cannot be used (no classes, one class, an empty class...)."""


@dataclass
class ImageFile:
    path: Path
    label: int
    #: the path below the folder, as shown in messages and results
    name: str


@dataclass
class ClassFolders:
    root: Path
    labels: list[str]
    files: list[ImageFile]
    #: files that are not images by their suffix, per class folder: skipped
    skipped: list[str] = field(default_factory=list)

    def per_class(self) -> dict[str, int]:
        counts = dict.fromkeys(self.labels, 0)
        for f in self.files:
            counts[self.labels[f.label]] += 1
        return counts


def _natural(name: str):
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def scan_class_folders(root, labels: list[str] | None = None, need_two: bool = True) -> ClassFolders:
    """The images of ``root``, one subfolder per class (the folder name is the label).

    ``labels``: the classes a trained model knows (evaluation): a subfolder with another name is an error.
    Hidden files and folders are ignored; files without an image suffix are skipped and listed.
    """
    root = Path(root)
    if not root.is_dir():
        raise FolderError(f"{root}: not a folder (give a folder with one subfolder of images per class)")
    subfolders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                        key=lambda p: _natural(p.name))
    loose = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not subfolders:
        hint = f" ({len(loose)} images lie in it directly)" if loose else ""
        raise FolderError(f"{root}: no class subfolders{hint}; put each class's images in a subfolder named "
                          f"after the class")
    names = [p.name for p in subfolders]
    if labels is not None:
        unknown = [n for n in names if n not in labels]
        if unknown:
            raise FolderError(f"{root}: class folders {unknown[:5]} are not classes of the model "
                              f"(it knows {labels[:20]})")
        index = {name: labels.index(name) for name in names}
    else:
        index = {name: k for k, name in enumerate(names)}
    files: list[ImageFile] = []
    skipped: list[str] = []
    empty = []
    for folder in subfolders:
        found = 0
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            name = path.relative_to(root).as_posix()
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append(name)
                continue
            files.append(ImageFile(path, index[folder.name], name))
            found += 1
        if not found:
            empty.append(folder.name)
    if not files:
        raise FolderError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    if empty and labels is None:
        raise FolderError(f"{root}: class folders without images: {empty[:10]}; remove them or add images")
    if need_two and len(names) - len(empty) < 2:
        raise FolderError(f"{root}: only one class ({names[0]!r}); a classifier needs at least two class folders")
    return ClassFolders(root, list(labels) if labels is not None else names, files, skipped)


def split_of(file_name: str, validation_percentage: float, testing_percentage: float) -> str:
    """``"training"``, ``"validation"`` or ``"testing"`` for a file, from a hash of its name alone."""
    base = Path(file_name).name.split("_nohash_", 1)[0]
    digest = int(hashlib.sha1(base.encode("utf-8")).hexdigest(), 16)
    share = (digest % _HASH_RANGE) * (100.0 / _HASH_RANGE)
    if share < validation_percentage:
        return "validation"
    if share < validation_percentage + testing_percentage:
        return "testing"
    return "training"
