"""Reading sessions back: only what the manifest lists, checked against its sha256 (layout: :mod:`.format`).

Everything is loaded with ``np.load(..., allow_pickle=False)``; nothing read from a session is executed.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .format import _CHUNK_NAME, CHUNK_KEYS, EXCLUSIONS, FORMAT, FORMAT_VERSION, MANIFEST, SessionError, read_json


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
        return ~excluded_mask([] if self.include_excluded else self.exclusions, self.total_frames)

    def _load_chunk(self, chunk: dict[str, Any], keys: Sequence[str],
                    verify: bool | None = None) -> dict[str, np.ndarray]:
        """The arrays ``keys`` of one chunk, checked; ``verify`` (default :attr:`verify_checksums`) hashes it."""
        file = self.path / chunk["file"]
        try:
            if self.verify_checksums if verify is None else verify:
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
            for chunk in self.chunks:
                # not hashed here: whole chunks are hashed when their frames are read
                arrays = self._load_chunk(chunk, tuple(parts), verify=False)
                for key in parts:
                    parts[key].append(arrays[key])
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
        for chunk in self.chunks:
            try:
                self._load_chunk(chunk, CHUNK_KEYS, verify=True)
            except SessionError as err:
                problems.append(str(err))
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


def excluded_mask(ranges, total: int) -> np.ndarray:
    """(total,) bool: True inside any of the exclusion ``ranges`` (``start``..``stop`` - 1)."""
    mask = np.zeros(total, dtype=bool)
    for item in ranges:
        mask[item["start"]:item["stop"]] = True
    return mask


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
