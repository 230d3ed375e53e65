"""Reading sessions back: only what the manifest lists, checked against its sha256 (layout: :mod:`.format`).

Every file is checked by :mod:`.parse` as it is read; nothing read from a session is executed. A chunk that
cannot be read (missing, truncated, corrupted, or holding impossible values) costs its own frames only: it is
skipped, named in :attr:`Session.damaged` and reported through ``warn``; the rest of the session is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...util.text import brief
from .format import _CHUNK_NAME, CHUNK_KEYS, EXCLUSIONS, MANIFEST, SessionError, print_warning, read_json
from .parse import check_manifest, read_chunk

#: how a reader reports a problem it works around (a chunk skipped, a session left out): a message
Warn = Callable[[str], None]


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
    :meth:`iter_chunks` then skip the excluded frames. They also skip the frames of damaged chunks
    (:attr:`damaged`), found when the labels are first read or when a chunk's frames fail their sha256.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], include_excluded: bool, verify: bool,
                 warn: Warn | None):
        self.path = path
        self.name = path.name
        self.include_excluded = include_excluded
        self.verify_checksums = verify
        self.warn = warn
        self.meta: dict[str, Any] = manifest["meta"]
        self.label_names: tuple[str, ...] = tuple(self.meta["labels"])
        shape = self.meta.get("frame_shape")
        self.frame_shape: tuple[int, ...] | None = None if shape is None else tuple(shape)
        self.chunks: list[dict[str, Any]] = manifest["chunks"]
        self.closed: bool = bool(manifest.get("closed"))
        self.total_frames = int(sum(chunk["count"] for chunk in self.chunks))
        self.exclusions: list[dict[str, Any]] = load_exclusions(path, self.total_frames)
        #: chunk file name -> why it cannot be read; its frames are skipped
        self.damaged: dict[str, str] = {}
        self._small: dict[str, np.ndarray] | None = None

    @classmethod
    def open(cls, path, *, include_excluded: bool = False, verify: bool = True,
             warn: Warn | None = print_warning) -> Session:
        """Open the session folder ``path``; its manifest is checked now, its chunks when they are read.

        Parameters
        ----------
        include_excluded : bool
            Read the frames that cleaning excluded as well.
        verify : bool
            Check each chunk's sha256 against the manifest when its frames are read (about 2 ms per MB).
        warn : callable or None
            Told about each damaged chunk that is skipped (default: printed to stderr; None: silent, the
            problems stay in :attr:`damaged`).
        """
        path = Path(path)
        manifest = check_manifest(path / MANIFEST, read_json(path / MANIFEST, "session manifest"))
        return cls(path, manifest, include_excluded, verify, warn)

    def __repr__(self) -> str:
        return f"Session({str(self.path)!r}, frames={len(self)}, total_frames={self.total_frames})"

    def __len__(self) -> int:
        return int(self.keep_mask().sum())

    @property
    def lost_frames(self) -> int:
        """Frames of the damaged chunks found so far (they are never read)."""
        return sum(chunk["count"] for chunk in self.chunks if chunk["file"] in self.damaged)

    def keep_mask(self) -> np.ndarray:
        """(total_frames,) bool: True for frames that are read: not excluded (unless ``include_excluded``)
        and not in a damaged chunk. Reads the labels first, which finds the chunks that cannot be read."""
        self._small_arrays()
        keep = ~excluded_mask([] if self.include_excluded else self.exclusions, self.total_frames)
        for chunk in self.chunks:
            if chunk["file"] in self.damaged:
                keep[chunk["start"]:chunk["start"] + chunk["count"]] = False
        return keep

    def _load_chunk(self, chunk: dict[str, Any], keys: Sequence[str],
                    verify: bool | None = None) -> dict[str, np.ndarray]:
        """The arrays ``keys`` of one chunk, checked; ``verify`` (default :attr:`verify_checksums`) hashes it."""
        verify = self.verify_checksums if verify is None else verify
        return read_chunk(self.path / chunk["file"], keys, count=chunk["count"], frame_shape=self.frame_shape,
                          n_labels=len(self.label_names), sha256=chunk["sha256"] if verify else None)

    def _damage(self, chunk: dict[str, Any], error: SessionError) -> None:
        """Leave ``chunk`` out from now on, and say so once."""
        if chunk["file"] in self.damaged:
            return
        self.damaged[chunk["file"]] = str(error)
        if self.warn is not None:
            self.warn(f"{self.name}: skipped {chunk['file']}: its {chunk['count']:,d} frames are lost ({error})")

    def _small_arrays(self) -> dict[str, np.ndarray]:
        """labels, timestamps, episodes and positions of every frame of the readable chunks (reads only those
        members of each chunk; a chunk that fails is marked damaged)."""
        if self._small is None:
            parts: dict[str, list[np.ndarray]] = {"labels": [], "timestamps": [], "episodes": [], "positions": []}
            for chunk in self.chunks:
                try:
                    # not hashed here: whole chunks are hashed when their frames are read
                    arrays = self._load_chunk(chunk, ("labels", "timestamps", "episodes"), verify=False)
                except SessionError as err:
                    self._damage(chunk, err)
                    continue
                for key, values in arrays.items():
                    parts[key].append(values)
                parts["positions"].append(np.arange(chunk["start"], chunk["start"] + chunk["count"]))
            dtypes = {"labels": np.int64, "timestamps": np.float64, "episodes": np.int64, "positions": np.int64}
            self._small = {key: (np.concatenate(values) if values else np.zeros(0)).astype(dtypes[key])
                           for key, values in parts.items()}
        return self._small

    def _small_kept(self, key: str) -> np.ndarray:
        small = self._small_arrays()
        return small[key][self.keep_mask()[small["positions"]]]

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 label indices into :attr:`label_names`."""
        return self._small_kept("labels")

    @property
    def timestamps(self) -> np.ndarray:
        """(N,) float64 seconds."""
        return self._small_kept("timestamps")

    @property
    def episodes(self) -> np.ndarray:
        """(N,) int64 episode numbers."""
        return self._small_kept("episodes")

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
            if not chunk_keep.any() or chunk["file"] in self.damaged:
                continue
            try:
                arrays = self._load_chunk(chunk, CHUNK_KEYS)
            except SessionError as err:
                self._damage(chunk, err)
                continue
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
        """Check every chunk (sha256, arrays, counts, values); returns the problems found (empty when intact).
        The chunks that fail are marked damaged, so later reads skip them."""
        problems = []
        for chunk in self.chunks:
            if chunk["file"] in self.damaged:
                problems.append(self.damaged[chunk["file"]])
                continue
            try:
                self._load_chunk(chunk, CHUNK_KEYS, verify=True)
            except SessionError as err:
                problems.append(str(err))
                self._damage(chunk, err)
        return problems

    def stray_files(self) -> list[str]:
        """Files the manifest does not list: temp files and chunks of an interrupted write (all ignored)."""
        listed = {chunk["file"] for chunk in self.chunks} | {MANIFEST, EXCLUSIONS}
        return sorted(p.name for p in self.path.iterdir() if p.name not in listed)


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
        valid = (isinstance(item, dict)
                 and all(type(item.get(k)) is int for k in ("id", "start", "stop"))  # bool is an int: not here
                 and 0 <= item["start"] < item["stop"] and isinstance(item.get("reason", ""), str))
        if not valid:
            raise SessionError(f"{file}: ranges[{i}] is malformed (an int id, 0 <= start < stop, a text reason): "
                               f"{brief(item)}")
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


def chunk_files(folder) -> list[Path]:
    """The chunk files of a session folder (``chunk-NNNNNN.npz``), sorted by number; temp files are not."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if _CHUNK_NAME.match(p.name) and p.is_file())


def missing_manifests(root) -> list[Path]:
    """Folders that hold chunks but no manifest: ``root`` itself, or the folders directly under it.

    Such a session would vanish from every listing; :func:`.repair.repair` rebuilds its manifest."""
    root = Path(root)
    if not root.is_dir() or is_session(root):
        return []
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [p for p in candidates if not is_session(p) and chunk_files(p)]


def no_manifest_message(path: Path, root: Path, detail: str = "") -> str:
    """What listing, training and reports say about a folder of chunks without a manifest."""
    return (f"{path.name}: no manifest.json in {path}, but {len(chunk_files(path))} chunk files{detail}: not "
            f"read; rebuild the manifest with `scratchpilot car sessions {root} --repair`")


def open_sessions(items, *, include_excluded: bool = False, warn: Warn | None = print_warning) -> list[Session]:
    """Open every session named by ``items`` (session folders, or folders holding sessions).

    A session that cannot be opened, or a folder of chunks without a manifest, is left out and reported
    through ``warn``, so that one bad session never stops work on the others; a :class:`SessionError`
    that names them all is raised only when no session is left.
    """
    items = [items] if isinstance(items, (str, Path)) else list(items)
    opened: list[Session] = []
    problems: list[str] = []
    for item in items:
        problems.extend(no_manifest_message(path, Path(item)) for path in missing_manifests(item))
        for path in list_sessions(item):
            try:
                opened.append(Session.open(path, include_excluded=include_excluded, warn=warn))
            except SessionError as err:
                problems.append(f"skipped session {path.name}: {err}")
    where = ", ".join(map(str, items)) or "the given list"
    if not opened:
        if problems:
            raise SessionError(f"no usable sessions in {where}: " + "; ".join(problems))
        raise SessionError(f"no sessions found in {where}")
    if warn is not None:
        for problem in problems:
            warn(problem)
    return opened


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
    only episode would otherwise be one group). All sessions must share the same label names. Paths go
    through :func:`open_sessions` (a session that cannot be read is left out with a warning) and come after
    the :class:`Session` objects given.
    """
    if block_frames is not None and block_frames < 1:
        raise ValueError(f"block_frames must be >= 1, got {block_frames}")
    opened: list[Session] = [item for item in sessions if isinstance(item, Session)]
    paths = [item for item in sessions if not isinstance(item, Session)]
    if paths or not opened:
        opened += open_sessions(paths, include_excluded=include_excluded)
    label_names = opened[0].label_names
    features, labels, groups, group_keys = [], [], [], []
    group_of: dict[tuple[str, int, int], int] = {}
    for session in opened:
        if session.label_names != label_names:
            raise SessionError(f"{session.path}: labels {session.label_names} differ from {label_names} of "
                               f"{opened[0].path}")
        # position of each frame within its episode (counted over all recorded frames, excluded or not)
        small = session._small_arrays()
        starts = {int(e): int(small["positions"][np.argmax(small["episodes"] == e)])
                  for e in np.unique(small["episodes"])}
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
