"""Rebuilding a lost manifest from a session's chunks (``scratchpilot car sessions --repair``).

Readers trust only the manifest (:mod:`.format`), so a session whose ``manifest.json`` was deleted would
vanish from every listing, and one whose manifest is damaged is unreadable. The chunks hold what training
needs: frames, labels, timestamps and episodes, so the manifest can be written again from them (each chunk
checked by :func:`.parse.read_chunk`, hashed anew). What only the manifest held is lost and said so: the
recording's metadata (source, driver, start time, settings), the label names (the recorder's defaults are
assumed when the labels fit them), and whether the recording was closed cleanly. A chunk that cannot be read
is left out and named.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ...util.files import json_text, write_atomic
from ..links import LABELS
from .format import EXCLUSIONS, FORMAT, FORMAT_VERSION, MANIFEST, SessionError
from .parse import read_chunk
from .reader import chunk_files, missing_manifests

LOST = ("the recording's metadata (source, driver, created_at, settings)", "whether it was closed cleanly")


def scan_chunks(folder) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """What the chunk files of ``folder`` hold, as manifest entries (plus ``max_label`` and ``frame_shape``),
    and the chunks that cannot be read (``{"file", "reason"}``).

    The frame shape is the one most frames have: a damaged first chunk must not decide it for the others.
    Chunks are read one at a time, so memory stays at one chunk.
    """
    found: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for file in chunk_files(folder):
        try:
            arrays = read_chunk(file)
            if not len(arrays["labels"]):
                raise SessionError(f"{file}: the chunk holds no frames")
            data = file.read_bytes()
            with zipfile.ZipFile(file) as archive:
                compressed = any(info.compress_type != zipfile.ZIP_STORED for info in archive.infolist())
        except (SessionError, OSError, zipfile.BadZipFile) as err:
            skipped.append({"file": file.name, "reason": str(err)})
            continue
        times, episodes = arrays["timestamps"], arrays["episodes"]
        found.append({"file": file.name, "count": int(len(times)), "bytes": len(data), "compressed": compressed,
                      "sha256": hashlib.sha256(data).hexdigest(),
                      "t_first": float(times[0]), "t_last": float(times[-1]),
                      "episodes": sorted({int(e) for e in np.unique(episodes)}),
                      "max_label": int(arrays["labels"].max()), "frame_shape": list(arrays["frames"].shape[1:])})
    frames_of: dict[tuple, int] = {}
    for entry in found:
        key = tuple(entry["frame_shape"])
        frames_of[key] = frames_of.get(key, 0) + entry["count"]
    shape = max(frames_of, key=frames_of.get) if frames_of else None  # ties: the earliest chunk's shape
    entries: list[dict[str, Any]] = []
    for entry in found:
        if tuple(entry["frame_shape"]) != shape:
            skipped.append({"file": entry["file"], "reason": f"{Path(folder) / entry['file']}: frames are "
                            f"{tuple(entry['frame_shape'])}, most chunks hold {shape}"})
            continue
        entry["start"] = entries[-1]["start"] + entries[-1]["count"] if entries else 0
        entries.append(entry)
    skipped.sort(key=lambda item: item["file"])
    return entries, skipped


def rebuild_manifest(folder) -> dict[str, Any]:
    """Write ``folder``'s manifest from its chunks (atomically); returns what was rebuilt and what was lost.

    Refuses a folder that has a manifest: this never overwrites one.
    """
    folder = Path(folder)
    if (folder / MANIFEST).exists():
        raise SessionError(f"{folder / MANIFEST}: the session has a manifest; nothing to rebuild")
    entries, skipped = scan_chunks(folder)
    if not entries:
        reasons = "; ".join(s["reason"] for s in skipped) or "no chunk files"
        raise SessionError(f"{folder}: no readable chunk to rebuild the manifest from ({reasons})")
    top = max(entry["max_label"] for entry in entries)
    if top < len(LABELS):
        labels, lost = list(LABELS), [*LOST, f"the label names (the recorder's defaults assumed: {', '.join(LABELS)})"]
    else:
        labels = [f"label{i}" for i in range(top + 1)]
        lost = [*LOST, f"the label names (called label0..label{top})"]
    if skipped:
        lost.append(f"{len(skipped)} unreadable chunk(s): {', '.join(s['file'] for s in skipped)}")
    if (folder / EXCLUSIONS).exists() and skipped:
        lost.append(f"{EXCLUSIONS} counts frames of the recording as it was: with chunks left out, its ranges "
                    "may point at other frames; check them")
    from ... import __version__

    frames = sum(entry["count"] for entry in entries)
    meta = {"source": "unknown", "driver": "unknown", "labels": labels, "frame_shape": entries[0]["frame_shape"],
            "created_at": None, "scratchpilot_version": __version__,
            "repaired": {"at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                         "by": "scratchpilot car sessions --repair", "lost": lost, "skipped_chunks": skipped}}
    keys = ("file", "start", "count", "bytes", "compressed", "sha256", "t_first", "t_last", "episodes")
    chunks = [{key: entry[key] for key in keys} for entry in entries]
    document = {"format": FORMAT, "format_version": FORMAT_VERSION, "meta": meta, "frames": frames,
                "closed": False, "chunks": chunks}
    write_atomic(folder / MANIFEST, json_text(document, indent=1).encode("utf-8"), durable=True)
    return {"path": str(folder), "manifest": str(folder / MANIFEST), "chunks": len(chunks), "frames": frames,
            "skipped_chunks": skipped, "lost": lost}


def unreadable_manifests(root) -> list[tuple[Path, str]]:
    """Session folders (``root`` itself, or the folders directly under it) whose manifest cannot be read but
    that hold chunk files, each with the reason."""
    from .reader import Session, list_sessions

    found = []
    for folder in list_sessions(root):
        try:
            Session.open(folder, warn=None)
        except SessionError as err:
            if chunk_files(folder):
                found.append((folder, str(err)))
    return found


def _set_aside(folder: Path) -> Path:
    """Rename the unreadable manifest of ``folder`` to a free ``manifest.json.unreadable[-N]`` name."""
    kept = folder / f"{MANIFEST}.unreadable"
    n = 1
    while kept.exists():
        n += 1
        kept = folder / f"{MANIFEST}.unreadable-{n}"
    (folder / MANIFEST).rename(kept)
    return kept


def repair(root) -> list[dict[str, Any]]:
    """Rebuild the manifest of every folder of chunks without a readable one: ``root`` itself, or folders under
    it. An unreadable manifest is kept beside the new one as ``manifest.json.unreadable`` (and put back
    should the rebuild fail), so nothing is ever deleted.

    Returns one :func:`rebuild_manifest` result per folder (``[]`` when there is nothing to repair); a folder
    with no readable chunk at all gets ``{"path", "error"}`` instead.
    """
    results = []
    for folder in missing_manifests(root):
        try:
            results.append(rebuild_manifest(folder))
        except SessionError as err:
            results.append({"path": str(folder), "error": str(err)})
    for folder, reason in unreadable_manifests(root):
        kept = _set_aside(folder)
        try:
            result = rebuild_manifest(folder)
        except SessionError as err:
            kept.rename(folder / MANIFEST)
            results.append({"path": str(folder), "error": f"{err} (its unreadable manifest is left as it was)"})
            continue
        result["lost"].insert(0, f"nothing of the unreadable manifest, kept as {kept.name} ({reason})")
        results.append(result)
    return results
