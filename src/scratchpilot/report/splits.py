"""The image sets a data or model report reads: a named dataset, a Kaggle CSV, an IDX file, or a folder of
images in one subfolder per label, each loaded as one :class:`ImageSplit` with the problems met on the way."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..util.images import ImageDecodeError, decode_image
from ..util.progress import progress as progress_bar
from .findings import ReportError

#: dataset names whose natural comparison is their test split
DEFAULT_COMPARE = {"mnist": "mnist-test", "mnist-train": "mnist-test",
                   "fashion": "fashion-test", "fashion-train": "fashion-test"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass
class ImageSplit:
    """One set of images as the report sees it.

    Attributes
    ----------
    name : e.g. ``mnist-train``, a file or folder name.
    kind : ``idx``, ``kaggle-csv``, ``image-folder``.
    images : uint8 (N, H, W) or (N, H, W, 3), the readable records.
    labels : int64 (N,) or None.
    class_names : display name of each label index.
    sources : files read (for an image folder: the folder).
    where : per record, how to find it (``line 17``, ``3/00017.png``); None means its index ``#i``.
    n_read : records found, readable or not (lines of a CSV, files of a folder).
    problems : problems met while reading (dicts with ``kind``, ``message`` and position); records with
        a problem are not in ``images``.
    """

    name: str
    kind: str
    images: np.ndarray
    labels: np.ndarray | None
    class_names: tuple[str, ...]
    sources: list[Path] = field(default_factory=list)
    where: list[str] | None = None
    n_read: int = 0
    problems: list[dict] = field(default_factory=list)
    n_problems: int = 0
    problem_counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def locate(self, index: int) -> str:
        return self.where[index] if self.where is not None else f"#{index}"


def load_split(spec: str, progress: bool = True) -> ImageSplit:
    """Read a dataset name or path, as the digits commands take it, or an image folder, for a report.

    Kaggle CSVs are read with the strict reader and, if that refuses the file, again leniently
    (:func:`~scratchpilot.report.lenient_csv.read_csv_lenient`) so that the report can list every problem.

    Raises
    ------
    ReportError
        Unknown name, missing file, or a file that cannot be read at all.
    """
    from ..data import CsvFormatError, DatasetError, resolve_dataset

    path = Path(spec).expanduser()
    if path.is_dir():
        return load_image_folder(path, progress=progress)
    if path.name.lower().endswith((".csv", ".csv.gz")):
        return _load_csv(path)
    try:
        dataset = resolve_dataset(spec, progress=progress)
    except (DatasetError, CsvFormatError, OSError, ValueError) as exc:
        raise ReportError(str(exc)) from None
    kind = "idx"
    return ImageSplit(name=dataset.name, kind=kind, images=dataset.images, labels=dataset.labels,
                      class_names=tuple(dataset.class_names), sources=list(dataset.sources), n_read=len(dataset))


def _load_csv(path: Path) -> ImageSplit:
    from ..data import DIGIT_CLASS_NAMES, CsvFormatError, read_kaggle_csv
    from .lenient_csv import read_csv_lenient

    if not path.exists():
        raise ReportError(f"{path}: no such CSV file")
    strict = None
    if path.is_file():  # a pipe can be read only once: it goes straight to the reader that lists every problem
        try:
            strict = read_kaggle_csv(path)
        except CsvFormatError:
            pass
    if strict is not None:
        pixels, labels = strict
        line_numbers = np.arange(2, len(pixels) + 2)
        problems, n_problems, counts, n_read = [], 0, {}, len(pixels)
    else:
        try:
            lenient = read_csv_lenient(path)
        except (OSError, ValueError) as exc:
            raise ReportError(str(exc)) from None
        pixels, labels, line_numbers = lenient.pixels, lenient.labels, lenient.line_numbers
        problems = [p.to_dict() for p in lenient.problems]
        n_problems, counts, n_read = lenient.n_problems, lenient.problem_counts, lenient.n_data_lines
    return ImageSplit(name=path.name, kind="kaggle-csv", images=pixels.reshape(-1, 28, 28), labels=labels,
                      class_names=DIGIT_CLASS_NAMES, sources=[path], where=[f"line {n}" for n in line_numbers],
                      n_read=n_read, problems=problems, n_problems=n_problems, problem_counts=counts)


def load_image_folder(folder: Path, progress: bool = True) -> ImageSplit:
    """Images in one subfolder per label (as ``scratchpilot digits export-images`` writes), read as grey.

    Label names are the subfolder names (sorted numerically when they are all numbers). Files that
    cannot be decoded, or whose size differs from the most common one, are reported as problems.
    """
    try:
        import PIL  # noqa: F401 - checked here to name the extra that brings it
    except ImportError:
        raise ReportError("reading an image folder needs Pillow: pip install 'scratchpilot[report]'") from None
    subfolders = [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if not subfolders:
        raise ReportError(f"{folder}: no subfolders; an image folder holds one subfolder of images per label")
    names = [p.name for p in subfolders]
    if all(n.isdigit() for n in names):
        subfolders.sort(key=lambda p: int(p.name))
    unlabelled = [p.name for p in subfolders] == ["unlabelled"]
    files = [(k, f) for k, sub in enumerate(subfolders) for f in sorted(sub.iterdir())
             if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise ReportError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in its subfolders")
    images, labels, where, problems = [], [], [], []
    iterator = progress_bar(files, desc="reading images", unit="image", enabled=progress and len(files) > 2000)
    for label, file in iterator:
        relative = file.relative_to(folder).as_posix()
        try:
            images.append(decode_image(file.read_bytes(), mode="L", where=relative))
        except ImageDecodeError as exc:
            problems.append({"kind": "unreadable", "file": relative, "message": str(exc)})
            continue
        except OSError as exc:
            problems.append({"kind": "unreadable", "file": relative, "message": f"{relative}: cannot read ({exc})"})
            continue
        labels.append(label)
        where.append(relative)
    shapes = [img.shape for img in images]
    common = max(set(shapes), key=shapes.count) if shapes else (0, 0)
    keep = [i for i, s in enumerate(shapes) if s == common]
    for i in sorted(set(range(len(images))) - set(keep)):
        problems.append({"kind": "size", "file": where[i],
                         "message": f"{where[i]}: {shapes[i][1]}x{shapes[i][0]} pixels, most images are "
                                    f"{common[1]}x{common[0]}"})
    counts: dict[str, int] = {}
    for p in problems:
        counts[p["kind"]] = counts.get(p["kind"], 0) + 1
    stacked = np.stack([images[i] for i in keep]) if keep else np.zeros((0, *common), np.uint8)
    return ImageSplit(
        name=folder.name or str(folder), kind="image-folder", images=stacked,
        labels=None if unlabelled else np.asarray([labels[i] for i in keep], dtype=np.int64),
        class_names=tuple(p.name for p in subfolders) if not unlabelled else (),
        sources=[folder], where=[where[i] for i in keep], n_read=len(files), problems=problems,
        n_problems=len(problems), problem_counts=counts)


# -------------------------------------------------------------------------------------------- analysis
