"""Transparent gzip for the data readers (atomic writes and progress bars live in :mod:`scratchpilot.util`)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import BinaryIO

GZIP_MAGIC = b"\x1f\x8b"

#: exceptions that a damaged gzip stream raises while it is read
GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


def is_gzip(path: Path) -> bool:
    """True when the file starts with the gzip magic bytes (the name's suffix is not trusted)."""
    with open(path, "rb") as fh:
        return fh.read(2) == GZIP_MAGIC


def open_binary(path: Path) -> BinaryIO:
    """Open ``path`` for reading bytes, decompressing on the fly when it is gzip data."""
    if is_gzip(path):
        return gzip.open(path, "rb")
    return open(path, "rb")
