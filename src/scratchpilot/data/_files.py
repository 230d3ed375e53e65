"""File helpers shared by the data readers and writers: transparent gzip, atomic writes, progress bars."""

from __future__ import annotations

import contextlib
import gzip
import os
import secrets
import sys
import time
import zlib
from collections.abc import Iterator
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


@contextlib.contextmanager
def atomic_write(path: Path, compress: bool | None = None) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` only once the ``with`` block succeeds.

    The data goes to a hidden temp file in the same folder (so the final ``os.replace`` is atomic);
    on any error the temp file is removed and ``path`` is left as it was. ``compress`` (default: the
    name ends in ``.gz``) wraps the file in gzip with a fixed timestamp, so equal data gives equal files.
    """
    path = Path(path)
    if compress is None:
        compress = path.suffix == ".gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        # "xb" rather than mkstemp: the file gets the usual umask permissions, not 0600
        with open(tmp, "xb") as raw:
            if compress:
                with gzip.GzipFile(filename=path.name.removesuffix(".gz"), mode="wb", fileobj=raw,
                                   compresslevel=6, mtime=0) as fh:
                    yield fh
            else:
                yield raw
            raw.flush()
            os.fsync(raw.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _TextProgress:
    """A dependency-free byte counter on stderr, used when tqdm is not installed."""

    def __init__(self, total: int | None, desc: str, interval: float = 0.2):
        self.total, self.desc, self.interval = total, desc, interval
        self.done = 0
        self._last = 0.0

    def __enter__(self) -> _TextProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        self._draw()
        sys.stderr.write("\n")
        sys.stderr.flush()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        done_mb = self.done / 2**20
        if self.total:
            text = f"{done_mb:7.1f}/{self.total / 2**20:.1f} MiB {self.done / self.total:4.0%}"
        else:
            text = f"{done_mb:7.1f} MiB"
        sys.stderr.write(f"\r{self.desc} {text}\033[K")
        sys.stderr.flush()


class _NoProgress:
    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def update(self, n: int) -> None:
        pass


def byte_progress(total: int | None, desc: str, enabled: bool = True):
    """A context manager with ``update(n_bytes)``: tqdm when importable, else a plain stderr line."""
    if not enabled:
        return _NoProgress()
    try:
        from tqdm import tqdm
    except ImportError:
        return _TextProgress(total, desc)
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=True)
