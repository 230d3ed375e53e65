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

Damage after the fact costs no more than what is damaged: every file is checked by :mod:`.parse` as it
is read, a chunk that cannot be read is skipped with its frames (:mod:`.reader`), a session whose manifest
cannot be read is left out of training and reports with its reason, and a deleted manifest is rebuilt from
the chunks by :mod:`.repair` (``scratchpilot car sessions --repair``).

Chunks are written by one background thread so that a slow disk (an fsync can take 100 ms on an SD card)
never stalls the driving loop; at most two chunks wait in memory, after which :meth:`SessionWriter.add`
waits for the disk. A failed write is raised by the next ``add``, ``flush`` or ``close``.

Arrays are read from their ``.npy`` headers by :mod:`.parse` (object arrays refused); nothing read from a
session is executed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from ...util.files import read_json as _read_json

FORMAT = "scratchpilot-session"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EXCLUSIONS = "exclusions.json"
CHUNK_KEYS = ("frames", "labels", "timestamps", "episodes")
_CHUNK_NAME = re.compile(r"^chunk-(\d{6})\.npz$")
_MAX_PENDING_CHUNKS = 2


class SessionError(ValueError):
    """A session folder that cannot be read or written; the message names the file and the problem."""


def read_json(path: Path, what: str) -> Any:
    """Load a JSON file of a session; every problem is a :class:`SessionError` naming the file and line."""
    return _read_json(path, what, error=SessionError)


def print_warning(message: str) -> None:
    """How readers report a problem they work around by default: a line on stderr, as the CLI prints errors."""
    print(f"scratchpilot: warning: {message}", file=sys.stderr)
