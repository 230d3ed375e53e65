"""Crash-safe, append-only recording of a session (the layout and its guarantees: :mod:`.format`)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import re
import threading
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ...util.files import json_text, write_atomic
from ..links import LABELS
from .format import _MAX_PENDING_CHUNKS, FORMAT, FORMAT_VERSION, MANIFEST, SessionError


def _scratchpilot_version() -> str:
    from ... import __version__

    return __version__


#: deflate level for chunks: a low level keeps compression far cheaper than the recording it serves while
#: it still shrinks simulator frames many times (figures: bench/results/notes.md)
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
            text = json.dumps(dict(values), allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"session metadata must be JSON-able: {err}") from None
        reserved = {"labels", "frame_shape"} & set(values)
        if reserved:
            raise ValueError(f"metadata field(s) {sorted(reserved)} are set by the recorder")
        with self._state_lock:
            self._meta.update(json.loads(text))  # a copy: later changes to ``values`` do not leak in

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
        write_atomic(self.path / file_name, data, durable=True)
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
            data = json_text(document, indent=1).encode("utf-8")
        write_atomic(self.path / MANIFEST, data, durable=True)


