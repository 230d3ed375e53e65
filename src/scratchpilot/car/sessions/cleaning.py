"""Listing and non-destructive cleaning of recorded sessions (``scratchpilot car sessions``).

Cleaning never touches the frame chunks: :func:`exclude` records a range of frame positions, with a reason,
in the session's ``exclusions.json`` (atomically replaced), and :func:`restore` takes ranges out again.
Reading a session (:class:`~scratchpilot.car.sessions.reader.Session`) skips excluded frames unless asked
otherwise, so training never sees them and nothing is ever lost.

The ``car`` CLI calls :func:`summarize` and :func:`format_table` to list sessions.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...util.files import write_json
from .format import EXCLUSIONS, SessionError
from .parse import read_chunk
from .reader import (
    Session,
    chunk_files,
    excluded_mask,
    list_sessions,
    load_exclusions,
    missing_manifests,
    no_manifest_message,
)

EXCLUSIONS_VERSION = 1


def _open(session: Session | str | Path) -> Session:
    if isinstance(session, Session):
        return session
    return Session.open(session, warn=None)  # damaged chunks are listed, not warned about


def _save_exclusions(path: Path, ranges: list[dict[str, Any]]) -> None:
    document = {"version": EXCLUSIONS_VERSION, "ranges": sorted(ranges, key=lambda r: (r["start"], r["id"]))}
    write_json(path / EXCLUSIONS, document, indent=1, durable=True)


def exclusions(session: Session | str | Path) -> list[dict[str, Any]]:
    """The excluded ranges of a session: ``{"id", "start", "stop", "reason", "created_at"}`` dicts."""
    opened = _open(session)
    return load_exclusions(opened.path, opened.total_frames)


def exclude(session: Session | str | Path, start: int, stop: int, reason: str = "") -> dict[str, Any]:
    """Leave frames ``start`` (inclusive) to ``stop`` (exclusive) out of every later read.

    Positions count every frame of the recording (including already excluded ones), as in
    :attr:`Session.indices`. Ranges may overlap. Returns the new range (with its ``id``).
    """
    opened = _open(session)
    if not (isinstance(start, (int, np.integer)) and isinstance(stop, (int, np.integer))):
        raise SessionError(f"{opened.path}: start and stop must be frame numbers, got {start!r}, {stop!r}")
    if not 0 <= start < stop <= opened.total_frames:
        raise SessionError(f"{opened.path}: cannot exclude frames {start}:{stop}; the session has frames "
                           f"0:{opened.total_frames}")
    ranges = load_exclusions(opened.path, opened.total_frames)
    item = {"id": max((r["id"] for r in ranges), default=0) + 1, "start": int(start), "stop": int(stop),
            "reason": str(reason),
            "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    _save_exclusions(opened.path, [*ranges, item])
    return item


def restore(session: Session | str | Path, range_id: int | None = None, *, start: int | None = None,
            stop: int | None = None) -> int:
    """Bring excluded frames back.

    Parameters
    ----------
    range_id : int, optional
        Remove this one exclusion (see :func:`exclusions` for the ids).
    start, stop : int, optional
        Un-exclude frames ``start:stop`` (ranges that cover them are trimmed or split).
    With neither, every exclusion is removed.

    Returns
    -------
    int
        Number of frames that are read again.
    """
    opened = _open(session)
    ranges = load_exclusions(opened.path, opened.total_frames)
    before = excluded_mask(ranges, opened.total_frames)
    if range_id is not None:
        if start is not None or stop is not None:
            raise SessionError("restore takes a range id or start/stop, not both")
        if range_id not in {r["id"] for r in ranges}:
            known = ", ".join(str(r["id"]) for r in ranges) or "none"
            raise SessionError(f"{opened.path}: no exclusion with id {range_id} (ids: {known})")
        ranges = [r for r in ranges if r["id"] != range_id]
    elif start is not None or stop is not None:
        start = 0 if start is None else int(start)
        stop = opened.total_frames if stop is None else int(stop)
        if not 0 <= start < stop <= opened.total_frames:
            raise SessionError(f"{opened.path}: cannot restore frames {start}:{stop}; the session has frames "
                               f"0:{opened.total_frames}")
        ranges = _subtract(ranges, start, stop)
    else:
        ranges = []
    _save_exclusions(opened.path, ranges)
    return int(before.sum() - excluded_mask(ranges, opened.total_frames).sum())


def _subtract(ranges: list[dict[str, Any]], start: int, stop: int) -> list[dict[str, Any]]:
    """Ranges with ``start:stop`` cut out; a range split in two keeps its id on the left part."""
    next_id = max((r["id"] for r in ranges), default=0) + 1
    result = []
    for item in ranges:
        if item["stop"] <= start or item["start"] >= stop:
            result.append(item)
            continue
        if item["start"] < start:
            result.append({**item, "stop": start})
        if item["stop"] > stop:
            right = {**item, "start": stop}
            if item["start"] < start:
                right["id"] = next_id
                next_id += 1
            result.append(right)
    return result


def _duration(timestamps: np.ndarray, episodes: np.ndarray) -> float:
    """Recorded seconds: the time span of each episode, summed (simulation clocks restart per episode)."""
    total = 0.0
    for episode in np.unique(episodes):
        times = timestamps[episodes == episode]
        total += float(times.max() - times.min())
    return total


def summarize_session(session: Session | str | Path) -> dict[str, Any]:
    """One session's figures (see :func:`summarize`)."""
    opened = _open(session)
    labels, timestamps, episodes = opened.labels, opened.timestamps, opened.episodes
    counts = np.bincount(labels, minlength=len(opened.label_names))
    duration = _duration(timestamps, episodes) if len(labels) else 0.0
    damaged = [{"file": chunk["file"], "frames": chunk["count"], "reason": opened.damaged[chunk["file"]]}
               for chunk in opened.chunks if chunk["file"] in opened.damaged]
    return {
        "name": opened.name, "path": str(opened.path),
        "source": opened.meta.get("source"), "driver": opened.meta.get("driver"),
        "created_at": opened.meta.get("created_at"),
        "frame_shape": list(opened.frame_shape) if opened.frame_shape else None,
        "frames": int(len(labels)), "total_frames": opened.total_frames,
        "excluded_frames": opened.total_frames - int(len(labels)) - opened.lost_frames,
        "lost_frames": opened.lost_frames, "damaged_chunks": damaged,
        "episodes": int(len(np.unique(episodes))), "chunks": len(opened.chunks),
        "duration_s": round(duration, 3),
        "fps": round(len(labels) / duration, 2) if duration > 0 else None,
        "label_counts": {name: int(n) for name, n in zip(opened.label_names, counts, strict=True)},
        "complete": opened.closed, "repaired": "repaired" in opened.meta, "error": None,
    }


def summarize(root_or_paths: str | Path | Sequence[str | Path]) -> list[dict[str, Any]]:
    """Figures for every session under a root folder (or in a list of session folders / roots).

    Each dict has ``name, path, source, driver, created_at, frame_shape, frames`` (read, after
    exclusions), ``total_frames, excluded_frames, episodes, chunks, duration_s, fps,
    label_counts`` ({label: count}), ``complete`` (False when the recording was interrupted: its complete
    chunks are still usable) and ``error`` (a message for a session that cannot be read, else None).
    """
    items = [root_or_paths] if isinstance(root_or_paths, (str, Path)) else list(root_or_paths)
    rows = []
    for item in items:
        found = [{"name": path.name, "path": str(path), "no_manifest": True, "error": _no_manifest(path, Path(item))}
                 for path in missing_manifests(item)]
        for path in list_sessions(item):
            try:
                found.append(summarize_session(path))
            except SessionError as err:
                # one damaged session must not hide the others from the listing
                hint = (f"; `scratchpilot car sessions {item} --repair` rebuilds the manifest from its chunks"
                        if chunk_files(path) else "")
                found.append({"name": path.name, "path": str(path), "error": f"{err}{hint}"})
        rows.extend(sorted(found, key=lambda row: row["name"]))
    return rows


def _no_manifest(path: Path, root: Path) -> str:
    """The listing's line for a folder of chunks without a manifest, with the frames its chunks hold (only
    their labels are read)."""
    frames, unreadable = 0, 0
    for file in chunk_files(path):
        try:
            frames += len(read_chunk(file, ("labels",))["labels"])
        except SessionError:
            unreadable += 1
    detail = f", {frames:,d} frames" + (f" ({unreadable} unreadable)" if unreadable else "")
    return no_manifest_message(path, root, detail)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of :func:`summarize` rows, with a total line; labels shown as percentages."""
    if not rows:
        return "no sessions"
    header = ("session", "source/driver", "frames", "excluded", "episodes", "duration", "labels")
    lines = [header]
    total_frames, total_duration = 0, 0.0
    notes = []
    for row in rows:
        if row.get("error"):
            kind = "NO MANIFEST" if row.get("no_manifest") else "UNREADABLE"
            lines.append((row["name"], "-", "-", "-", "-", "-", f"{kind}: {row['error']}"))
            continue
        frames = row["frames"]
        total_frames += frames
        total_duration += row["duration_s"]
        share = "  ".join(f"{name} {count / frames:.0%}" for name, count in row["label_counts"].items()
                          if count) if frames else "-"
        state = [] if row["complete"] else ["repaired" if row.get("repaired") else "interrupted"]
        state += ["damaged"] if row.get("damaged_chunks") else []
        name = f"{row['name']} ({', '.join(state)})" if state else row["name"]
        for chunk in row.get("damaged_chunks", ()):
            notes.append(f"{row['name']}: {chunk['file']} cannot be read, {chunk['frames']:,d} frames lost: "
                         f"{chunk['reason']}")
        lines.append((name, f"{row['source']}/{row['driver']}", str(frames), str(row["excluded_frames"]),
                      str(row["episodes"]), f"{row['duration_s']:.1f} s", share))
    lines.append(("total", f"{len(rows)} sessions", str(total_frames), "", "", f"{total_duration:.1f} s", ""))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    numeric = {2, 3, 4, 5}
    text = []
    for line in lines:
        cells = [cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(line)]
        text.append("  ".join(cells).rstrip())
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text + notes)
