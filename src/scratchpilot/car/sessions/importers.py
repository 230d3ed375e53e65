"""Import other projects' driving data as scratchpilot sessions.

**donkeycar "tub v2"** (a folder, or a ``.tar.gz``/``.tgz``/``.tar`` of one), as written by donkeycar's
``TubWriter``: ``manifest.json`` is five JSON lines (inputs, types, metadata, manifest metadata, catalog
metadata with ``paths`` and ``deleted_indexes``); each ``catalog_N.catalog`` holds one JSON record a line
(``_index``, ``_timestamp_ms``, ``cam/image_array`` = a JPEG in ``images/``, ``user/angle`` in [-1, 1],
``user/throttle``); macOS ``._*`` resource forks are skipped, deleted records are left out.

The continuous controls become the discrete labels of :data:`~scratchpilot.car.links.LABELS`
(donkeycar steers left for negative angles, right for positive ones)::

    angle <= -steer_threshold           -> "left"
    angle >= +steer_threshold           -> "right"
    otherwise, throttle >= +throttle_threshold -> "forward"
               throttle <= -throttle_threshold -> "brake"   (donkeycar reverses/brakes with negative throttle)
               otherwise                        -> "none"

Defaults ``steer_threshold=0.15`` and ``throttle_threshold=0.05``: on the bundled 1000-frame tub they give
175 left, 368 forward and 457 right frames.

**AutoRCCar** ``.npz`` (github.com/hamuchiwa/AutoRCCar, ``computer/collect_training_data.py``): ``train``
holds one float row per frame, the lower half of a 320x240 grayscale frame (120x320 = 38400 pixels), and
``train_labels`` one-hot rows in the order ``[left, right, forward, reverse]``; an ``images`` array
``(N, H, W[, C])`` is accepted instead of ``train``. The file has no timestamps, so frames are spaced
``1 / fps`` seconds apart (noted in the session metadata); ``reverse`` becomes ``reverse_label``.

Every error names the file and the line (or row) at fault.
"""

from __future__ import annotations

import json
import math
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ...nn.npz import NpzError, NpzReader
from ...util.images import ImageDecodeError, decode_image
from ...util.progress import progress as progress_bar
from ..links import LABELS
from .writer import SessionWriter

TUB_REQUIRED_INPUTS = ("cam/image_array", "user/angle", "user/throttle")
AUTORCCAR_ORDER = ("left", "right", "forward", "reverse")
#: bytes of data one imported array may hold (about 14,000 AutoRCCar frames of float64)
MAX_IMPORT_BYTES = 1 << 32


class ImportFormatError(ValueError):
    """Input data that cannot be imported; the message names the file and line or row."""


def angle_to_label(angle: float, throttle: float, steer_threshold: float = 0.15,
                   throttle_threshold: float = 0.05) -> str:
    """Map one donkeycar control pair to a label of :data:`LABELS` (see the module docstring)."""
    if angle <= -steer_threshold:
        return "left"
    if angle >= steer_threshold:
        return "right"
    if throttle >= throttle_threshold:
        return "forward"
    if throttle <= -throttle_threshold:
        return "brake"
    return "none"


# -- donkeycar tub v2 ----------------------------------------------------------------------------------

def _skipped(name: str) -> bool:
    """macOS archive litter: ``._*`` resource forks and ``__MACOSX`` folders."""
    parts = PurePosixPath(name).parts
    return any(part.startswith("._") or part == "__MACOSX" for part in parts)


class _TubFiles:
    """The files of one tub in a folder, read by their path in the tub; messages name ``display``."""

    def __init__(self, folder: Path, display: str | None = None):
        manifests = [p for p in folder.rglob("manifest.json") if not _skipped(str(p.relative_to(folder)))]
        shown = display or str(folder)
        if not manifests:
            raise ImportFormatError(f"{shown}: no manifest.json found: not a donkeycar tub (v2)")
        if len(manifests) > 1:
            found = ", ".join(str(m.relative_to(folder)) for m in sorted(manifests))
            raise ImportFormatError(f"{shown}: holds several tubs ({found}); import them one by one")
        self.base = manifests[0].parent
        relative = self.base.relative_to(folder).as_posix()
        if display is None:
            self._prefix = f"{self.base}/"
        else:
            self._prefix = f"{display}:" + ("" if relative == "." else f"{relative}/")

    def where(self, name: str) -> str:
        """How to name a file of the tub in a message."""
        return self._prefix + name

    def read(self, name: str) -> bytes:
        try:
            return (self.base / name).read_bytes()
        except OSError as err:
            raise ImportFormatError(f"{self.where(name)}: cannot read ({err.strerror})") from None

    def read_lines(self, name: str) -> list[tuple[int, dict | list]]:
        """The JSON lines of a text file as ``(line number, value)``; blank lines are skipped."""
        try:
            text = self.read(name).decode("utf-8")
        except UnicodeDecodeError as err:
            raise ImportFormatError(f"{self.where(name)}: not UTF-8 text ({err.reason})") from None
        values = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                values.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise ImportFormatError(f"{self.where(name)}, line {number}: not valid JSON ({err.msg})") from None
        return values


def _extract_tub_archive(archive: Path, into: Path) -> None:
    """Unpack a tar archive safely (no absolute paths, links out or devices), skipping macOS litter.

    Reading members in place would be quadratic: a gzip stream cannot seek, and images are stored in no
    particular order, so the archive is unpacked once into a temporary folder.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = [m for m in tar.getmembers() if not _skipped(m.name)]
            tar.extractall(into, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ImportFormatError(f"{archive}: not a tub folder or a readable tar archive ({err})") from None


def _read_tub_manifest(files: _TubFiles) -> tuple[list[str], list[str], set[int], dict[str, Any]]:
    """(inputs, catalog paths, deleted indexes, metadata) from ``manifest.json``."""
    where = files.where("manifest.json")
    lines = files.read_lines("manifest.json")
    if len(lines) < 5:
        raise ImportFormatError(f"{where}: expected 5 JSON lines (inputs, types, metadata, manifest metadata, "
                                f"catalog metadata), found {len(lines)}")
    (inputs_line, inputs), _types, (_, metadata), _manifest_meta, (catalog_line, catalog_meta) = lines[:5]
    if not isinstance(inputs, list) or not all(isinstance(v, str) for v in inputs):
        raise ImportFormatError(f"{where}, line {inputs_line}: the inputs must be a list of names")
    missing = [name for name in TUB_REQUIRED_INPUTS if name not in inputs]
    if missing:
        raise ImportFormatError(f"{where}, line {inputs_line}: the tub records no {', '.join(missing)}")
    if not isinstance(catalog_meta, dict) or not isinstance(catalog_meta.get("paths"), list):
        raise ImportFormatError(f"{where}, line {catalog_line}: catalog metadata with 'paths' expected")
    paths = catalog_meta["paths"]
    deleted = catalog_meta.get("deleted_indexes", [])
    if not all(isinstance(p, str) for p in paths) or not isinstance(deleted, list) \
            or not all(isinstance(i, int) for i in deleted):
        raise ImportFormatError(f"{where}, line {catalog_line}: 'paths' must be file names and "
                                "'deleted_indexes' integers")
    return inputs, paths, set(deleted), metadata if isinstance(metadata, dict) else {}


def _read_tub_records(files: _TubFiles, paths: list[str], deleted: set[int]) -> list[dict[str, Any]]:
    """The catalog records that are not deleted, sorted by ``_index``, each checked field by field."""
    records: dict[int, dict[str, Any]] = {}
    for catalog in paths:
        for number, record in files.read_lines(catalog):
            where = f"{files.where(catalog)}, line {number}"
            if not isinstance(record, dict):
                raise ImportFormatError(f"{where}: a record must be a JSON object")
            index, stamp = record.get("_index"), record.get("_timestamp_ms")
            image, angle, throttle = (record.get(k) for k in TUB_REQUIRED_INPUTS)
            if not isinstance(index, int) or isinstance(index, bool):
                raise ImportFormatError(f"{where}: field '_index' must be an integer, got {index!r}")
            if not _is_number(stamp):
                raise ImportFormatError(f"{where}: field '_timestamp_ms' must be a number, got {stamp!r}")
            if not isinstance(image, str) or not image or "/" in image or "\\" in image:
                raise ImportFormatError(f"{where}: field 'cam/image_array' must be an image file name, got {image!r}")
            for field, value in (("user/angle", angle), ("user/throttle", throttle)):
                if not _is_number(value):
                    raise ImportFormatError(f"{where}: field {field!r} must be a number, got {value!r}")
            if index in records:
                raise ImportFormatError(f"{where}: _index {index} appears twice")
            if index not in deleted:
                records[index] = {"index": index, "timestamp": stamp / 1000.0, "image": image,
                                  "angle": float(angle), "throttle": float(throttle), "where": where,
                                  "mode": record.get("user/mode")}
    return [records[i] for i in sorted(records)]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _decode_jpeg(data: bytes, where: str) -> np.ndarray:
    try:
        return decode_image(data, where=f"{where}: cannot decode the image", formats=("JPEG", "PNG"))
    except ImageDecodeError as err:
        raise ImportFormatError(str(err)) from None


def import_tub(source, out_root, *, steer_threshold: float = 0.15, throttle_threshold: float = 0.05,
               name: str | None = None, progress: bool = False) -> Path:
    """Import a donkeycar tub v2 (folder or tar archive) as one session under ``out_root``.

    Parameters
    ----------
    source : path
        The tub folder (or a folder holding exactly one tub), or a ``.tar.gz``/``.tgz``/``.tar`` of it.
    out_root : path
        Where the session folder is created.
    steer_threshold, throttle_threshold : float
        Label mapping thresholds (see :func:`angle_to_label`).
    name : str, optional
        Session name; default ``tub-<archive or folder name>``.
    progress : bool
        Show a progress bar (tqdm, when installed).

    Returns
    -------
    Path
        The new session folder (frames (N, 120, 160, 3) uint8 for a standard tub, one episode).
    """
    if not 0 < steer_threshold <= 1 or throttle_threshold < 0:
        raise ValueError(f"steer_threshold must be in (0, 1] and throttle_threshold >= 0, got {steer_threshold}, "
                         f"{throttle_threshold}")
    source = Path(source)
    if source.is_dir():
        return _import_tub_folder(_TubFiles(source), source, out_root, steer_threshold, throttle_threshold,
                                  name, progress)
    if not source.is_file():
        raise ImportFormatError(f"{source}: no such tub folder or archive")
    with tempfile.TemporaryDirectory(prefix="scratchpilot-tub-") as scratch:
        _extract_tub_archive(source, Path(scratch))
        return _import_tub_folder(_TubFiles(Path(scratch), display=str(source)), source, out_root,
                                  steer_threshold, throttle_threshold, name, progress)


def _import_tub_folder(files: _TubFiles, source: Path, out_root, steer_threshold: float,
                       throttle_threshold: float, name: str | None, progress: bool) -> Path:
    inputs, paths, deleted, tub_meta = _read_tub_manifest(files)
    records = _read_tub_records(files, paths, deleted)
    if not records:
        raise ImportFormatError(f"{files.where('manifest.json')}: the tub holds no (undeleted) records")
    stem = source.name.removesuffix(".gz").removesuffix(".tgz").removesuffix(".tar")
    meta = {"import": {"format": "donkeycar-tub-v2", "from": str(source.resolve()), "records": len(records),
                       "deleted_records": len(deleted), "steer_threshold": steer_threshold,
                       "throttle_threshold": throttle_threshold, "tub_inputs": inputs, "tub_metadata": tub_meta,
                       "label_rule": "angle <= -steer: left; >= +steer: right; else throttle >= +thr: "
                                     "forward, <= -thr: brake, else none"}}
    modes = sorted({str(r["mode"]) for r in records if r["mode"] is not None})
    writer = SessionWriter(out_root, source="donkeycar-tub", driver="+".join(modes) or "human", meta=meta,
                           name=name or f"tub-{stem or 'import'}", labels=LABELS)
    try:
        with writer:
            for record in progress_bar(records, desc="import tub", unit="frame", enabled=progress):
                where = f"{record['where']} (image {record['image']})"
                frame = _decode_jpeg(files.read(f"images/{record['image']}"), where)
                if writer.frame_shape is not None and frame.shape != writer.frame_shape:
                    raise ImportFormatError(f"{where}: image is {frame.shape}, earlier ones {writer.frame_shape}")
                label = angle_to_label(record["angle"], record["throttle"], steer_threshold, throttle_threshold)
                writer.add(frame, label, record["timestamp"], episode=0)
    except BaseException:
        shutil.rmtree(writer.path, ignore_errors=True)  # a half-imported session is of no use
        raise
    return writer.path


# -- AutoRCCar ----------------------------------------------------------------------------------------

def import_autorccar(source, out_root, *, image_shape: tuple[int, int] = (120, 320), fps: float = 10.0,
                     reverse_label: str | None = "brake", name: str | None = None) -> Path:
    """Import an AutoRCCar-style ``.npz`` (see the module docstring) as one session under ``out_root``.

    Parameters
    ----------
    image_shape : (rows, cols)
        How to unflatten the rows of ``train``; AutoRCCar's ROI is 120x320.
    fps : float
        Frame rate used to make up timestamps (the file has none).
    reverse_label : str or None
        Label for AutoRCCar's ``reverse``; None drops those frames.

    Returns
    -------
    Path
        The new session folder: frames (N, rows, cols) uint8 grayscale, one episode.
    """
    source = Path(source)
    if reverse_label is not None and reverse_label not in LABELS:
        raise ValueError(f"reverse_label must be one of {', '.join(LABELS)} or None, got {reverse_label!r}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    pixels, one_hot = _read_autorccar(source)
    frames = _autorccar_frames(pixels, image_shape, source)
    names = _autorccar_labels(one_hot, len(frames), source)
    replacement = dict(zip(AUTORCCAR_ORDER, ("left", "right", "forward", reverse_label), strict=True))
    meta = {"import": {"format": "autorccar-npz", "from": str(source.resolve()), "records": len(frames),
                       "label_order": list(AUTORCCAR_ORDER), "reverse_label": reverse_label,
                       "timestamps": f"synthesised at {fps} frames/s (the file has none)"}}
    writer = SessionWriter(out_root, source="autorccar", driver="human", meta=meta, labels=LABELS,
                           name=name or f"autorccar-{source.stem}")
    try:
        with writer:
            for row, (frame, original) in enumerate(zip(frames, names, strict=True)):
                label = replacement[original]
                if label is not None:
                    writer.add(frame, label, row / fps, episode=0)
    except BaseException:
        shutil.rmtree(writer.path, ignore_errors=True)
        raise
    return writer.path


def _read_autorccar(source: Path) -> tuple[np.ndarray, np.ndarray]:
    """The pixel and label arrays of an AutoRCCar ``.npz``: both headers are checked (against the entries'
    sizes and :data:`MAX_IMPORT_BYTES`) before either is read."""
    if not source.is_file():
        raise ImportFormatError(f"{source}: no such file" if not source.exists() else f"{source}: not a file")
    try:
        with NpzReader(source) as archive:
            keys = archive.names
            if "train_labels" not in keys or not keys & {"train", "images"}:
                raise ImportFormatError(f"{source}: expected arrays 'train' (or 'images') and 'train_labels', "
                                        f"found {', '.join(sorted(keys)) or 'none'}")
            wanted = ("images" if "images" in keys else "train", "train_labels")
            for key in wanted:
                archive.header(key, MAX_IMPORT_BYTES)
            pixels, one_hot = (archive.read(key, MAX_IMPORT_BYTES) for key in wanted)
    except NpzError as err:
        if err.kind == "not-npz":
            raise ImportFormatError(f"{source}: {err.problem}") from None
        if err.kind == "damaged":
            raise ImportFormatError(f"{source}: not a readable .npz ({err.problem})") from None
        who = f"'{err.entry.removesuffix('.npy')}' " if err.entry else ""
        raise ImportFormatError(f"{source}: {who}{err.problem}") from None
    return pixels, one_hot


def _autorccar_frames(pixels: np.ndarray, image_shape: tuple[int, int], source: Path) -> np.ndarray:
    if pixels.ndim == 2:
        rows, cols = image_shape
        if pixels.shape[1] != rows * cols:
            raise ImportFormatError(f"{source}: 'train' rows have {pixels.shape[1]} values, but image_shape "
                                    f"{rows}x{cols} needs {rows * cols}")
        pixels = pixels.reshape(len(pixels), rows, cols)
    elif pixels.ndim not in (3, 4):
        raise ImportFormatError(f"{source}: images must be (N, pixels), (N, H, W) or (N, H, W, C), got "
                                f"{pixels.shape}")
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype.kind not in "fiu":
        raise ImportFormatError(f"{source}: pixel values must be numbers, got dtype {pixels.dtype}")
    flat = pixels.reshape(len(pixels), -1)
    bad = ~np.isfinite(flat) | (flat < 0) | (flat > 255) | (flat != np.round(flat))
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        value = flat[row][bad[row]][0].item()
        raise ImportFormatError(f"{source}: frame row {row} has pixel value {value!r}; expected whole numbers "
                                "0..255")
    return pixels.astype(np.uint8)


def _autorccar_labels(one_hot: np.ndarray, count: int, source: Path) -> list[str]:
    if one_hot.ndim == 1:
        indices = one_hot
        if indices.dtype.kind not in "iu" or (indices.size and (indices.min() < 0 or indices.max() > 3)):
            raise ImportFormatError(f"{source}: 'train_labels' as indices must be integers 0..3")
    elif one_hot.ndim == 2 and one_hot.shape[1] == len(AUTORCCAR_ORDER):
        not_one_hot = ~(np.isin(one_hot, (0, 1)).all(axis=1) & (one_hot.sum(axis=1) == 1))
        if not_one_hot.any():
            row = int(np.flatnonzero(not_one_hot)[0])
            raise ImportFormatError(f"{source}: 'train_labels' row {row} is {one_hot[row].tolist()}, not one-hot "
                                    f"over {list(AUTORCCAR_ORDER)}")
        indices = one_hot.argmax(axis=1)
    else:
        raise ImportFormatError(f"{source}: 'train_labels' must be (N, 4) one-hot or (N,) indices, got "
                                f"{one_hot.shape}")
    if len(indices) != count:
        raise ImportFormatError(f"{source}: {count} frames but {len(indices)} labels")
    return [AUTORCCAR_ORDER[i] for i in indices]


def import_any(source, out_root, **options) -> Path:
    """Import by file type: an ``.npz`` as AutoRCCar, anything else (folder, tar) as a donkeycar tub."""
    source = Path(source)
    if source.suffix == ".npz":
        return import_autorccar(source, out_root, **options)
    return import_tub(source, out_root, **options)


__all__ = ["ImportFormatError", "angle_to_label", "import_any", "import_autorccar", "import_tub"]
