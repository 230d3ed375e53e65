"""The one place that checks what is read from a session folder: the manifest document and the chunk files.

Every reader of sessions (:mod:`.reader`, and through it listing, training, checking and the reports) and the
manifest rebuild (:mod:`.repair`) go through :func:`check_manifest` and :func:`read_chunk`, so a field of the
wrong type, an impossible size or a damaged file is always a :class:`~.format.SessionError` naming the file
and the field. Sizes are checked against caps and against the file's own bytes before anything is allocated.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...nn.npz import NpzError, NpzReader
from ...util.text import brief
from .format import _CHUNK_NAME, CHUNK_KEYS, FORMAT, FORMAT_VERSION, SessionError

#: frames one chunk may hold (the recorder writes 250; a manifest claiming more is damaged)
MAX_CHUNK_FRAMES = 1 << 20
#: frames one session may hold: about 39 days at 20 frames/s, and a 64 MiB mask per session at most
MAX_SESSION_FRAMES = 1 << 26
#: pixel values of one frame (H * W * C)
MAX_FRAME_VALUES = 1 << 26
#: bytes of data one array of a chunk may hold
MAX_MEMBER_BYTES = 1 << 30
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_META_TEXT = ("source", "driver", "created_at", "scratchpilot_version")
#: numpy dtype kinds each chunk array may have (f: float, i/u: signed/unsigned integer)
_KINDS = {"frames": "u", "labels": "iu", "timestamps": "fiu", "episodes": "iu"}


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_manifest(file: Path, manifest: Any) -> dict[str, Any]:
    """Validate a parsed session manifest; returns it. Every problem names ``file`` and the field."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SessionError(f"{file}: not a scratchpilot session manifest")
    version = manifest.get("format_version")
    if not _int(version) or version != FORMAT_VERSION:
        raise SessionError(f"{file}: field 'format_version': session format version {brief(version)} is not "
                           "supported")
    meta = manifest.get("meta")
    if not isinstance(meta, dict):
        raise SessionError(f"{file}: field 'meta' must be an object, got {brief(meta)}")
    labels = meta.get("labels")
    if (not isinstance(labels, list) or not 1 <= len(labels) <= 255
            or not all(isinstance(name, str) and name for name in labels) or len(set(labels)) != len(labels)):
        raise SessionError(f"{file}: field 'meta.labels' must be a list of 1 to 255 distinct names, got "
                           f"{brief(labels)}")
    for key in _META_TEXT:
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise SessionError(f"{file}: field 'meta.{key}' must be text, got {brief(meta[key])}")
    shape = meta.get("frame_shape")
    if shape is not None:
        check_frame_shape(shape, f"{file}: field 'meta.frame_shape'")
    if not isinstance(manifest.get("closed", False), bool):
        raise SessionError(f"{file}: field 'closed' must be true or false, got {brief(manifest['closed'])}")
    chunks = manifest.get("chunks")
    if not isinstance(chunks, list):
        raise SessionError(f"{file}: field 'chunks' must be a list, got {brief(chunks)}")
    if chunks and shape is None:
        raise SessionError(f"{file}: field 'meta.frame_shape' is missing, but the session lists chunks")
    expected_start, names = 0, set()
    for i, chunk in enumerate(chunks):
        if (not isinstance(chunk, dict) or not isinstance(chunk.get("file"), str)
                or not _CHUNK_NAME.match(chunk["file"]) or not isinstance(chunk.get("sha256"), str)
                or not _SHA256.match(chunk["sha256"]) or not _int(chunk.get("count"))
                or not 1 <= chunk["count"] <= MAX_CHUNK_FRAMES):
            raise SessionError(f"{file}: chunks[{i}] is malformed (a file chunk-NNNNNN.npz, a count of 1 to "
                               f"{MAX_CHUNK_FRAMES:,d} frames and a sha256 in hex): {brief(chunk)}")
        if chunk["file"] in names:
            raise SessionError(f"{file}: chunks[{i}] lists {chunk['file']} a second time")
        names.add(chunk["file"])
        if not _int(chunk.get("start")):
            raise SessionError(f"{file}: chunks[{i}].start must be a frame number, got {brief(chunk.get('start'))}")
        if chunk["start"] != expected_start:
            raise SessionError(f"{file}: chunks[{i}] starts at frame {chunk['start']}, expected {expected_start}")
        expected_start += chunk["count"]
        if expected_start > MAX_SESSION_FRAMES:
            raise SessionError(f"{file}: chunks[{i}] takes the session past {MAX_SESSION_FRAMES:,d} frames")
    frames = manifest.get("frames", expected_start)
    if not _int(frames) or frames != expected_start:
        raise SessionError(f"{file}: field 'frames' is {brief(frames)}, but the chunks hold {expected_start} frames")
    return manifest


def check_frame_shape(shape: Any, where: str) -> tuple[int, ...]:
    """``shape`` as a tuple when it is (H, W) or (H, W, C) of positive ints within the caps."""
    if (not isinstance(shape, (list, tuple)) or len(shape) not in (2, 3) or not all(_int(v) and v > 0 for v in shape)
            or math.prod(shape) > MAX_FRAME_VALUES):
        raise SessionError(f"{where} must be [height, width] or [height, width, channels] of positive sizes "
                           f"(at most {MAX_FRAME_VALUES:,d} values), got {brief(shape)}")
    return tuple(shape)


def read_chunk(file: Path, keys: Sequence[str] = CHUNK_KEYS, *, count: int | None = None,
               frame_shape: tuple[int, ...] | None = None, n_labels: int = 255,
               sha256: str | None = None) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of the chunk ``file``, checked; every problem is a :class:`SessionError` naming it.

    Parameters
    ----------
    count : int, optional
        Rows the manifest lists for the chunk (without: any, up to :data:`MAX_CHUNK_FRAMES`, the same in
        every array read).
    frame_shape : tuple, optional
        The session's frame shape (without: any shape within :data:`MAX_FRAME_VALUES`).
    n_labels : int
        Label names of the session: every label must be an index below it.
    sha256 : str, optional
        Hash the whole file and compare (the manifest's checksum).
    """
    try:
        if sha256 is not None:
            data = file.read_bytes()
            if hashlib.sha256(data).hexdigest() != sha256:
                raise SessionError(f"{file}: sha256 does not match the manifest: the chunk is corrupted")
            source = data
        else:
            file.stat()  # a missing chunk is named as such
            source = file  # only the members asked for are read
    except FileNotFoundError:
        raise SessionError(f"{file}: chunk listed in the manifest is missing") from None
    except OSError as err:
        raise SessionError(f"{file}: cannot read the chunk ({err.strerror or err})") from None
    arrays: dict[str, np.ndarray] = {}
    try:
        with NpzReader(source) as archive:
            missing = [key for key in CHUNK_KEYS if key not in archive.names]
            if missing:
                raise SessionError(f"{file}: chunk lacks array(s) {missing}")
            for key in keys:
                rows = count if count is not None else (len(next(iter(arrays.values()))) if arrays else None)
                arrays[key] = _read_member(archive, key, rows, frame_shape, f"{file}: field '{key}'")
    except NpzError as err:
        if err.kind != "refused":  # cut: a damaged zip's message may quote its (crafted) entry names
            raise SessionError(f"{file}: not a readable chunk ({err.problem[:200]})") from None
        raise SessionError(f"{file}: {_member(err.entry)} {err.problem}") from None
    labels = arrays.get("labels")
    if labels is not None and labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        bad = labels.min() if labels.min() < 0 else labels.max()
        raise SessionError(f"{file}: field 'labels' holds {int(bad)}, not an index of the session's {n_labels} "
                           f"label names")
    times = arrays.get("timestamps")
    if times is not None and not np.isfinite(times).all():
        raise SessionError(f"{file}: field 'timestamps' holds a value that is not a finite number")
    return arrays


def _member(entry: str | None) -> str:
    """How a message names a chunk's zip entry: by its field where it is an array."""
    return f"field '{entry[:-4]}'" if entry and entry.endswith(".npy") else f"entry {entry}"


def _read_member(archive: NpzReader, key: str, rows: int | None, frame_shape: tuple[int, ...] | None,
                 where: str) -> np.ndarray:
    """One array, its ``.npy`` header checked against the expected shape (the reader checks it against
    the member's size) before the array is allocated and read."""
    header = archive.header(key)
    shape, dtype = header.shape, header.dtype
    if dtype.kind not in _KINDS[key] or dtype.itemsize > 8:
        raise SessionError(f"{where}: arrays of {dtype} are not allowed here")
    if key == "frames" and dtype.itemsize != 1:
        raise SessionError(f"{where}: frames must be uint8, got {dtype}")
    if key != "frames" and len(shape) != 1:
        raise SessionError(f"{where}: array of shape {shape}, expected one value per frame")
    if key == "frames" and frame_shape is None:
        if len(shape) not in (3, 4):
            raise SessionError(f"{where}: array of shape {shape}, expected (frames, height, width[, channels])")
        check_frame_shape(list(shape[1:]), f"{where}: the frame shape")
    elif key == "frames" and tuple(shape[1:]) != frame_shape:
        raise SessionError(f"{where}: frames are {shape[1:]}, the session records {frame_shape}")
    if rows is not None and shape[0] != rows:
        raise SessionError(f"{where}: has {shape[0]} rows, expected {rows} (the manifest's count)")
    if shape[0] > MAX_CHUNK_FRAMES:
        raise SessionError(f"{where}: {shape[0]:,d} rows, more than {MAX_CHUNK_FRAMES:,d}")
    return archive.read(key, max_bytes=MAX_MEMBER_BYTES)
