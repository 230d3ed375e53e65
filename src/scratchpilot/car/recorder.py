"""Crash-safe, append-only recording of driving sessions: frames, labels, timestamps, episodes.

A session is one folder::

    <root>/<name>/
        manifest.json           # metadata + the list of complete chunks (atomically replaced)
        chunk-000000.npz        # frames (n, H, W[, C]) uint8, labels (n,) uint8, timestamps (n,) float64,
        chunk-000001.npz        #   episodes (n,) int32; written once, never modified
        exclusions.json         # optional: frame ranges left out by cleaning (see scratchpilot.car.sessions)

How it survives ``kill -9`` and power cuts: frames are buffered in memory and written as a chunk every
``chunk_frames`` frames or ``chunk_seconds`` seconds. Each chunk goes to a hidden temp file, is fsynced and
renamed into place, and only then is the manifest (itself written to a temp file, fsynced and renamed)
updated to list it with its frame count and sha256. The manifest therefore only ever names complete,
durable chunks; a crash loses the chunk in progress and nothing else. Readers trust only the manifest:
leftover temp files (``.*.tmp``) and chunks written but not yet listed are ignored.

Chunks are written by one background thread so that a slow disk (an fsync can take 100 ms on an SD card)
never stalls the driving loop; at most two chunks wait in memory, after which :meth:`SessionWriter.add`
waits for the disk. A failed write is raised by the next ``add``, ``flush`` or ``close``.

Everything is loaded with ``np.load(..., allow_pickle=False)``; nothing read from a session is executed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import re
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data._files import atomic_write
from .sim import LABELS

FORMAT = "scratchpilot-session"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EXCLUSIONS = "exclusions.json"
CHUNK_KEYS = ("frames", "labels", "timestamps", "episodes")
_CHUNK_NAME = re.compile(r"^chunk-(\d{6})\.npz$")
_MAX_PENDING_CHUNKS = 2


class SessionError(ValueError):
    """A session folder that cannot be read or written; the message names the file and the problem."""


def _scratchpilot_version() -> str:
    from .. import __version__

    return __version__


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (directories cannot be opened on Windows: skip there)."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file, never a torn one."""
    with atomic_write(path, compress=False) as fh:
        fh.write(data)
    _fsync_dir(path.parent)  # and the rename itself survives a power cut


def write_json_atomic(path: Path, document: Any) -> None:
    """:func:`write_atomic` for a JSON document (indented, UTF-8, no NaN)."""
    write_atomic(path, (json.dumps(document, indent=1, allow_nan=False) + "\n").encode("utf-8"))


def read_json(path: Path, what: str) -> Any:
    """Load a JSON file, turning every problem into a :class:`SessionError` naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SessionError(f"{path}: no {what} here") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SessionError(f"{path}: cannot read the {what}: {err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SessionError(f"{path}, line {err.lineno}: the {what} is not valid JSON ({err.msg})") from None


#: deflate level for chunks: level 3 is 2.5x faster than zlib's default 6 on simulator frames (86 vs 33
#: MB/s here) and still shrinks them about 17x
COMPRESS_LEVEL = 3
#: below this ratio (camera frames full of sensor noise reach about 1.4) compression is not worth its
#: CPU time, and the rest of the session is stored uncompressed
MIN_COMPRESSION_RATIO = 1.5


def _encode_chunk(arrays: Mapping[str, np.ndarray], level: int) -> bytes:
    """An ``.npz`` (a zip of ``.npy`` members, what ``np.load`` reads) at deflate ``level`` (0 = stored)."""
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if level else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", compression=method, compresslevel=level or None) as archive:
        for key, array in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


class SessionWriter:
    """Record one session, chunk by chunk; use as a context manager (or call :meth:`close`).

    Parameters
    ----------
    root : path
        Folder that holds sessions; created if missing. The session is ``root / name``.
    source, driver : str
        Where frames come from (``"sim"``, ``"tcp://pi:8000"``, ``"donkeycar-tub"``...) and who chose the
        labels (``"expert"``, ``"keyboard"``, ``"human"``...).
    meta : mapping, optional
        Extra JSON-able metadata (track seeds, settings...); more can be added with :meth:`update_meta`.
    labels : sequence of str
        Label names; a frame's label is an index into them (or one of the names). Default: ``LABELS``.
    frame_shape : (H, W) or (H, W, C), optional
        Fixes the frame shape up front; otherwise the first frame sets it.
    name : str, optional
        Session folder name; default ``<UTC time>-<source>-<driver>``, with ``-2``, ``-3``... if taken.
    chunk_frames, chunk_seconds : int, float
        A chunk is written after this many frames, or at the first frame added ``chunk_seconds`` (wall clock)
        or more after the chunk's first frame, whichever comes first.
    compress : bool
        Deflate the chunks (default): simulator frames shrink about 17x. When a chunk shrinks less than
        :data:`MIN_COMPRESSION_RATIO` (noisy camera frames), the rest of the session is stored as is.
    background : bool
        Write chunks on a background thread (default) or in the caller's thread.
    clock : callable
        Monotonic clock for ``chunk_seconds`` (a test can pass a fake one).
    """

    def __init__(self, root, *, source: str = "unknown", driver: str = "unknown",
                 meta: Mapping[str, Any] | None = None, labels: Sequence[str] = LABELS,
                 frame_shape: Sequence[int] | None = None, name: str | None = None,
                 chunk_frames: int = 250, chunk_seconds: float = 5.0, compress: bool = True,
                 background: bool = True, clock: Callable[[], float] = time.monotonic):
        if chunk_frames < 1 or chunk_seconds <= 0:
            raise ValueError(f"chunk_frames must be >= 1 and chunk_seconds > 0, got {chunk_frames}, {chunk_seconds}")
        labels = tuple(str(label) for label in labels)
        if not labels or len(set(labels)) != len(labels) or len(labels) > 255:
            raise ValueError(f"labels must be 1 to 255 distinct names, got {labels!r}")
        self.labels = labels
        self._label_index = {label: i for i, label in enumerate(labels)}
        self.frame_shape = None if frame_shape is None else tuple(int(v) for v in frame_shape)
        self.chunk_frames, self.chunk_seconds = int(chunk_frames), float(chunk_seconds)
        self._compress_level = COMPRESS_LEVEL if compress else 0  # only the writer thread changes it
        self._clock = clock
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        self.path = self._make_folder(root, name or self._default_name(source, driver))
        self.name = self.path.name
        created = _dt.datetime.now(_dt.UTC)
        self._meta: dict[str, Any] = {
            "source": source, "driver": driver, "labels": list(labels),
            "frame_shape": None if self.frame_shape is None else list(self.frame_shape),
            "created_at": created.isoformat(timespec="seconds"),
            "scratchpilot_version": _scratchpilot_version(),
        }
        self._chunks: list[dict[str, Any]] = []
        self._closed = False
        self._state_lock = threading.Lock()  # guards _meta and _chunks between caller and writer thread
        if meta:
            self.update_meta(meta)
        # the chunk being filled: frames go straight into one preallocated array (a single copy)
        self._chunk_frames_array: np.ndarray | None = None
        self._buffer: list[tuple[int, float, int]] = []  # (label, timestamp, episode) per buffered frame
        self._buffer_started = 0.0
        self._next_chunk = 0
        self._frames_written = 0
        self._pending: list[Future] = []
        self._failure: BaseException | None = None  # a failed chunk write ends the recording
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"session-{self.name}") if background else None
        self._write_manifest()  # an empty but valid session exists from the start

    @staticmethod
    def _default_name(source: str, driver: str) -> str:
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{source}-{driver}").strip("_.-") or "session"
        return f"{stamp}-{slug}"

    @staticmethod
    def _make_folder(root: Path, name: str) -> Path:
        if not name or name.startswith(".") or "/" in name or "\\" in name:
            raise ValueError(f"session name {name!r} is not a plain folder name")
        for attempt in range(1, 1000):
            path = root / (name if attempt == 1 else f"{name}-{attempt}")
            try:
                path.mkdir()  # exclusive: two recorders never share a folder
                return path
            except FileExistsError:
                continue
        raise SessionError(f"{root}: too many sessions named {name!r}")

    # -- recording -----------------------------------------------------------------------------------------

    @property
    def frame_count(self) -> int:
        """Frames added so far (written or buffered)."""
        return self._frames_written + len(self._buffer)

    @property
    def meta(self) -> dict[str, Any]:
        with self._state_lock:
            return json.loads(json.dumps(self._meta))

    def update_meta(self, values: Mapping[str, Any]) -> None:
        """Merge JSON-able ``values`` into the metadata; saved with the next chunk or at :meth:`close`."""
        try:
            json.dumps(dict(values), allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"session metadata must be JSON-able: {err}") from None
        reserved = {"labels", "frame_shape"} & set(values)
        if reserved:
            raise ValueError(f"metadata field(s) {sorted(reserved)} are set by the recorder")
        with self._state_lock:
            self._meta.update(json.loads(json.dumps(dict(values))))

    def add(self, frame: np.ndarray, label: int | str, timestamp: float, episode: int = 0) -> None:
        """Append one frame.

        Parameters
        ----------
        frame : uint8 array, (H, W) or (H, W, C)
            Copied, so the caller may reuse its buffer.
        label : int or str
            Index into :attr:`labels`, or one of the names.
        timestamp : float
            Seconds (capture time, or simulation time).
        episode : int
            Episode (track, run) number within the session; validation splits use it.
        """
        if self._closed:
            raise SessionError(f"{self.path}: the session is closed")
        self._raise_failed_write()
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim not in (2, 3):
            raise ValueError(f"a frame must be a uint8 (H, W) or (H, W, C) array, got {frame.dtype} {frame.shape}")
        if self.frame_shape is None:
            self.frame_shape = frame.shape
            with self._state_lock:
                self._meta["frame_shape"] = list(frame.shape)
        elif frame.shape != self.frame_shape:
            raise ValueError(f"frame {self.frame_count} has shape {frame.shape}, but this session records "
                             f"{self.frame_shape}")
        label_index = self._label_to_index(label)
        if not self._buffer:
            # a new array for every chunk: the previous one may still be in the writer thread's hands
            self._chunk_frames_array = np.empty((self.chunk_frames, *self.frame_shape), dtype=np.uint8)
            self._buffer_started = self._clock()
        self._chunk_frames_array[len(self._buffer)] = frame
        self._buffer.append((label_index, float(timestamp), int(episode)))
        if len(self._buffer) >= self.chunk_frames or self._clock() - self._buffer_started >= self.chunk_seconds:
            self._submit_chunk()

    def _label_to_index(self, label: int | str) -> int:
        if isinstance(label, str):
            try:
                return self._label_index[label]
            except KeyError:
                raise ValueError(f"unknown label {label!r}; this session's labels are {', '.join(self.labels)}") \
                    from None
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 0 <= label < len(self.labels):
            return int(label)
        raise ValueError(f"label {label!r} is neither a name nor an index below {len(self.labels)}")

    def flush(self) -> None:
        """Write the buffered frames as a chunk now and wait until every chunk is on disk."""
        if self._buffer:
            self._submit_chunk()
        self._wait_pending(0)

    def close(self) -> None:
        """Flush, mark the session complete in the manifest and stop the writer thread; safe to call twice."""
        if self._closed:
            return
        try:
            self.flush()
            self._closed = True
            self._write_manifest()
        finally:
            self._closed = True
            if self._executor is not None:
                self._executor.shutdown(wait=True)

    def __enter__(self) -> SessionWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- chunk writing -------------------------------------------------------------------------------------

    def _submit_chunk(self) -> None:
        frames = self._chunk_frames_array[:len(self._buffer)]
        labels = np.array([item[0] for item in self._buffer], dtype=np.uint8)
        timestamps = np.array([item[1] for item in self._buffer], dtype=np.float64)
        episodes = np.array([item[2] for item in self._buffer], dtype=np.int32)
        index, start = self._next_chunk, self._frames_written
        self._next_chunk += 1
        self._frames_written += len(self._buffer)
        self._buffer = []
        self._chunk_frames_array = None
        job = (index, start, frames, labels, timestamps, episodes)
        if self._executor is None:
            try:
                self._write_chunk(*job)
            except Exception as err:  # noqa: BLE001 -- kept and re-raised just below, as in the background path
                self._failure = err
            self._raise_failed_write()
            return
        self._wait_pending(_MAX_PENDING_CHUNKS - 1)
        self._pending.append(self._executor.submit(self._write_chunk, *job))

    def _wait_pending(self, keep: int) -> None:
        """Wait until at most ``keep`` chunks are still being written; re-raise a failed write."""
        while len(self._pending) > keep:
            self._collect(self._pending.pop(0))
        self._raise_failed_write()

    def _raise_failed_write(self) -> None:
        while self._pending and self._pending[0].done():
            self._collect(self._pending.pop(0))
        if self._failure is not None:
            # later chunks would leave a gap in the manifest: the session stays as it was before the failure
            raise SessionError(f"{self.path}: writing a chunk failed ({self._failure}); the session keeps the "
                               f"{sum(c['count'] for c in self._chunks)} frames written before") from self._failure

    def _collect(self, future: Future) -> None:
        error = future.exception()
        if error is not None and self._failure is None:
            self._failure = error

    def _write_chunk(self, index: int, start: int, frames: np.ndarray, labels: np.ndarray,
                     timestamps: np.ndarray, episodes: np.ndarray) -> None:
        arrays = {"frames": frames, "labels": labels, "timestamps": timestamps, "episodes": episodes}
        level = self._compress_level
        data = _encode_chunk(arrays, level)
        if level and sum(a.nbytes for a in arrays.values()) < MIN_COMPRESSION_RATIO * len(data):
            self._compress_level = 0
        file_name = f"chunk-{index:06d}.npz"
        write_atomic(self.path / file_name, data)
        entry = {"file": file_name, "start": start, "count": int(len(labels)), "bytes": len(data),
                 "compressed": bool(level),
                 "sha256": hashlib.sha256(data).hexdigest(),
                 "t_first": float(timestamps[0]), "t_last": float(timestamps[-1]),
                 "episodes": sorted({int(e) for e in np.unique(episodes)})}
        with self._state_lock:
            self._chunks.append(entry)
        self._write_manifest()

    def _write_manifest(self) -> None:
        with self._state_lock:
            document = {"format": FORMAT, "format_version": FORMAT_VERSION, "meta": self._meta,
                        "frames": sum(chunk["count"] for chunk in self._chunks),
                        "closed": self._closed, "chunks": list(self._chunks)}
            # serialised under the lock: the caller may update_meta while the writer thread saves
            data = (json.dumps(document, indent=1, allow_nan=False) + "\n").encode("utf-8")
        write_atomic(self.path / MANIFEST, data)


@dataclass(frozen=True)
class Chunk:
    """The frames of one chunk that survive exclusions; ``indices`` are positions in the whole recording."""

    frames: np.ndarray  #: (n, H, W[, C]) uint8
    labels: np.ndarray  #: (n,) int64
    timestamps: np.ndarray  #: (n,) float64
    episodes: np.ndarray  #: (n,) int64
    indices: np.ndarray  #: (n,) int64


class Session:
    """A recorded session, read lazily chunk by chunk; open it with :meth:`open`.

    Exclusions (``exclusions.json``, see :mod:`scratchpilot.car.sessions`) are honoured unless
    ``include_excluded=True``: :attr:`labels`, :attr:`timestamps`, :attr:`episodes`, :meth:`frames` and
    :meth:`iter_chunks` then skip the excluded frames.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], include_excluded: bool, verify: bool):
        self.path = path
        self.name = path.name
        self.include_excluded = include_excluded
        self.verify_checksums = verify
        self._manifest = manifest
        self.meta: dict[str, Any] = manifest["meta"]
        self.label_names: tuple[str, ...] = tuple(self.meta["labels"])
        shape = self.meta.get("frame_shape")
        self.frame_shape: tuple[int, ...] | None = None if shape is None else tuple(shape)
        self.chunks: list[dict[str, Any]] = manifest["chunks"]
        self.closed: bool = bool(manifest.get("closed"))
        self.total_frames = int(sum(chunk["count"] for chunk in self.chunks))
        self.exclusions: list[dict[str, Any]] = load_exclusions(path, self.total_frames)
        self._small: dict[str, np.ndarray] | None = None

    @classmethod
    def open(cls, path, *, include_excluded: bool = False, verify: bool = True) -> Session:
        """Open the session folder ``path``.

        Parameters
        ----------
        include_excluded : bool
            Read the frames that cleaning excluded as well.
        verify : bool
            Check each chunk's sha256 against the manifest when it is read (about 2 ms per MB).
        """
        path = Path(path)
        manifest = read_json(path / MANIFEST, "session manifest")
        _check_manifest(path / MANIFEST, manifest)
        return cls(path, manifest, include_excluded, verify)

    def __repr__(self) -> str:
        return f"Session({str(self.path)!r}, frames={len(self)}, total_frames={self.total_frames})"

    def __len__(self) -> int:
        return int(self.keep_mask().sum())

    def keep_mask(self) -> np.ndarray:
        """(total_frames,) bool: True for frames that are read (all of them with ``include_excluded``)."""
        keep = np.ones(self.total_frames, dtype=bool)
        if not self.include_excluded:
            for item in self.exclusions:
                keep[item["start"]:item["stop"]] = False
        return keep

    def _load_chunk(self, chunk: dict[str, Any], keys: Sequence[str]) -> dict[str, np.ndarray]:
        file = self.path / chunk["file"]
        try:
            if self.verify_checksums:
                data = file.read_bytes()
                if hashlib.sha256(data).hexdigest() != chunk["sha256"]:
                    raise SessionError(f"{file}: sha256 does not match the manifest: the chunk is corrupted")
                source = io.BytesIO(data)
            else:
                source = file  # np.load reads only the members asked for
            with np.load(source, allow_pickle=False) as archive:
                missing = set(CHUNK_KEYS) - set(archive.files)
                if missing:
                    raise SessionError(f"{file}: chunk lacks array(s) {sorted(missing)}")
                arrays = {key: archive[key] for key in keys}
        except SessionError:
            raise
        except FileNotFoundError:
            raise SessionError(f"{file}: chunk listed in the manifest is missing") from None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise SessionError(f"{file}: not a readable chunk ({err})") from None
        for key, array in arrays.items():
            if len(array) != chunk["count"]:
                raise SessionError(f"{file}: '{key}' has {len(array)} rows, the manifest says {chunk['count']}")
        frames = arrays.get("frames")
        if frames is not None and (frames.dtype != np.uint8 or
                                   (self.frame_shape is not None and frames.shape[1:] != self.frame_shape)):
            raise SessionError(f"{file}: frames are {frames.dtype} {frames.shape[1:]}, the session records uint8 "
                               f"{self.frame_shape}")
        return arrays

    def _small_arrays(self) -> dict[str, np.ndarray]:
        """labels, timestamps, episodes of every frame (reads only those members of each chunk)."""
        if self._small is None:
            parts: dict[str, list[np.ndarray]] = {"labels": [], "timestamps": [], "episodes": []}
            verify, self.verify_checksums = self.verify_checksums, False  # whole chunks are hashed on frame reads
            try:
                for chunk in self.chunks:
                    arrays = self._load_chunk(chunk, tuple(parts))
                    for key in parts:
                        parts[key].append(arrays[key])
            finally:
                self.verify_checksums = verify
            dtypes = {"labels": np.int64, "timestamps": np.float64, "episodes": np.int64}
            self._small = {key: (np.concatenate(values) if values else np.zeros(0)).astype(dtypes[key])
                           for key, values in parts.items()}
            if self._small["labels"].size and self._small["labels"].max() >= len(self.label_names):
                raise SessionError(f"{self.path}: a label index exceeds the {len(self.label_names)} label names")
        return self._small

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 label indices into :attr:`label_names`."""
        return self._small_arrays()["labels"][self.keep_mask()]

    @property
    def timestamps(self) -> np.ndarray:
        """(N,) float64 seconds."""
        return self._small_arrays()["timestamps"][self.keep_mask()]

    @property
    def episodes(self) -> np.ndarray:
        """(N,) int64 episode numbers."""
        return self._small_arrays()["episodes"][self.keep_mask()]

    @property
    def indices(self) -> np.ndarray:
        """(N,) int64 positions of the frames read in the whole recording (what exclusions refer to)."""
        return np.flatnonzero(self.keep_mask())

    def iter_chunks(self, preprocess: Callable[[np.ndarray], np.ndarray] | None = None) -> Iterator[Chunk]:
        """Yield the session chunk by chunk (memory: one chunk), skipping excluded frames.

        ``preprocess`` (e.g. a :class:`~scratchpilot.car.preprocess.FramePreprocessor`) is applied to each
        chunk's frames, so that :attr:`Chunk.frames` holds float32 (n, F) features instead of pixels.
        """
        keep = self.keep_mask()
        for chunk in self.chunks:
            start, count = chunk["start"], chunk["count"]
            chunk_keep = keep[start:start + count]
            if not chunk_keep.any():
                continue
            arrays = self._load_chunk(chunk, CHUNK_KEYS)
            frames = arrays["frames"][chunk_keep]
            if preprocess is not None:
                frames = preprocess(frames)
            yield Chunk(frames=frames, labels=arrays["labels"][chunk_keep].astype(np.int64),
                        timestamps=arrays["timestamps"][chunk_keep].astype(np.float64),
                        episodes=arrays["episodes"][chunk_keep].astype(np.int64),
                        indices=np.flatnonzero(chunk_keep) + start)

    def frames(self, preprocess: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """All frames read, (N, H, W[, C]) uint8, or (N, F) features when ``preprocess`` is given."""
        parts = [chunk.frames for chunk in self.iter_chunks(preprocess)]
        if parts:
            return np.concatenate(parts)
        if preprocess is not None:
            return np.zeros((0, 0), dtype=np.float32)
        return np.zeros((0, *(self.frame_shape or (0, 0))), dtype=np.uint8)

    def verify(self) -> list[str]:
        """Check every chunk (sha256, arrays, counts); returns the problems found (empty when intact)."""
        problems = []
        verify, self.verify_checksums = self.verify_checksums, True
        try:
            for chunk in self.chunks:
                try:
                    self._load_chunk(chunk, CHUNK_KEYS)
                except SessionError as err:
                    problems.append(str(err))
        finally:
            self.verify_checksums = verify
        return problems

    def stray_files(self) -> list[str]:
        """Files the manifest does not list: temp files and chunks of an interrupted write (all ignored)."""
        listed = {chunk["file"] for chunk in self.chunks} | {MANIFEST, EXCLUSIONS}
        return sorted(p.name for p in self.path.iterdir() if p.name not in listed)


def _check_manifest(file: Path, manifest: Any) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SessionError(f"{file}: not a scratchpilot session manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise SessionError(f"{file}: session format version {manifest.get('format_version')!r} is not supported")
    meta = manifest.get("meta")
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), list) or not meta["labels"]:
        raise SessionError(f"{file}: field 'meta.labels' is missing")
    chunks = manifest.get("chunks")
    if not isinstance(chunks, list):
        raise SessionError(f"{file}: field 'chunks' is missing")
    expected_start = 0
    for i, chunk in enumerate(chunks):
        if (not isinstance(chunk, dict) or not isinstance(chunk.get("file"), str)
                or not _CHUNK_NAME.match(chunk["file"]) or not isinstance(chunk.get("count"), int)
                or chunk["count"] < 1 or not isinstance(chunk.get("sha256"), str)):
            raise SessionError(f"{file}: chunks[{i}] is malformed: {chunk!r}")
        if chunk.get("start") != expected_start:
            raise SessionError(f"{file}: chunks[{i}] starts at frame {chunk.get('start')}, expected {expected_start}")
        expected_start += chunk["count"]


def load_exclusions(path: Path, total_frames: int | None = None) -> list[dict[str, Any]]:
    """The excluded ranges of session ``path`` (``[]`` when there are none), validated.

    Each range is ``{"id": int, "start": int, "stop": int, "reason": str, "created_at": str}`` with
    ``start < stop`` frame positions in the whole recording (stop exclusive).
    """
    file = Path(path) / EXCLUSIONS
    if not file.exists():
        return []
    document = read_json(file, "exclusions file")
    ranges = document.get("ranges") if isinstance(document, dict) else None
    if not isinstance(ranges, list):
        raise SessionError(f"{file}: field 'ranges' is missing")
    for i, item in enumerate(ranges):
        valid = (isinstance(item, dict) and all(isinstance(item.get(k), int) for k in ("id", "start", "stop"))
                 and 0 <= item["start"] < item["stop"])
        if not valid:
            raise SessionError(f"{file}: ranges[{i}] is malformed: {item!r}")
        if total_frames is not None and item["stop"] > total_frames:
            raise SessionError(f"{file}: ranges[{i}] ends at frame {item['stop']}, but the session has "
                               f"{total_frames} frames")
    return ranges


def is_session(path) -> bool:
    """True when ``path`` is a folder with a session manifest."""
    return (Path(path) / MANIFEST).is_file()


def list_sessions(root) -> list[Path]:
    """Session folders directly under ``root`` (or ``[root]`` if it is a session itself), sorted by name."""
    root = Path(root)
    if is_session(root):
        return [root]
    if not root.is_dir():
        raise SessionError(f"{root}: no such folder")
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and is_session(p))


@dataclass(frozen=True)
class FrameSet:
    """Frames of several sessions stacked for training, with the groups a validation split must respect."""

    features: np.ndarray  #: (N, F) float32 after preprocessing, or (N, H, W[, C]) uint8 without
    labels: np.ndarray  #: (N,) int64 indices into label_names
    groups: np.ndarray  #: (N,) int64 index into group_keys: frames of one group are split together
    group_keys: list[tuple[str, int, int]]  #: (session name, episode, block) of each group
    label_names: tuple[str, ...]


def load_frames(sessions: Sequence, preprocess: Callable[[np.ndarray], np.ndarray] | None = None, *,
                block_frames: int | None = None, include_excluded: bool = False) -> FrameSet:
    """Stack the frames of ``sessions`` (paths, roots holding sessions, or :class:`Session` objects).

    Split training and validation data by ``groups``, never by frame: neighbouring frames are near
    duplicates and would leak. A group is one episode of one session or, with ``block_frames``, a run of
    that many consecutive frames of an episode (for a single long recording such as a donkeycar tub, whose
    only episode would otherwise be one group). All sessions must share the same label names.
    """
    if block_frames is not None and block_frames < 1:
        raise ValueError(f"block_frames must be >= 1, got {block_frames}")
    opened: list[Session] = []
    for item in sessions:
        if isinstance(item, Session):
            opened.append(item)
        else:
            opened.extend(Session.open(p, include_excluded=include_excluded) for p in list_sessions(item))
    if not opened:
        raise SessionError(f"no sessions found in {', '.join(map(str, sessions)) or 'the given list'}")
    label_names = opened[0].label_names
    features, labels, groups, group_keys = [], [], [], []
    group_of: dict[tuple[str, int, int], int] = {}
    for session in opened:
        if session.label_names != label_names:
            raise SessionError(f"{session.path}: labels {session.label_names} differ from {label_names} of "
                               f"{opened[0].path}")
        # position of each frame within its episode (counted over all recorded frames, excluded or not)
        all_episodes = session._small_arrays()["episodes"]
        starts = {int(e): int(np.argmax(all_episodes == e)) for e in np.unique(all_episodes)}
        for chunk in session.iter_chunks(preprocess):
            features.append(chunk.frames)
            labels.append(chunk.labels)
            keys = []
            for episode, index in zip(chunk.episodes.tolist(), chunk.indices.tolist(), strict=True):
                block = 0 if block_frames is None else (index - starts[episode]) // block_frames
                keys.append((session.name, episode, block))
            for key in dict.fromkeys(keys):  # first-seen order keeps group numbers reproducible
                if key not in group_of:
                    group_of[key] = len(group_keys)
                    group_keys.append(key)
            groups.append(np.array([group_of[key] for key in keys], dtype=np.int64))
    if not features:
        raise SessionError(f"the sessions {', '.join(s.name for s in opened)} hold no frames")
    return FrameSet(features=np.concatenate(features), labels=np.concatenate(labels),
                    groups=np.concatenate(groups), group_keys=group_keys, label_names=label_names)
