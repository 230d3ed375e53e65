"""Atomic writes and JSON results: the package's one way to put a file on disk.

A reader never sees a torn file: data goes to a hidden temp file beside the target (same file system, so
the final ``os.replace`` is atomic) and replaces it only once it is complete and on disk.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (directories cannot be opened on Windows: skip there)."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path, compress: bool | None = None, *, durable: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` only once the ``with`` block succeeds.

    On any error the temp file is removed and ``path`` is left as it was. ``compress`` (default: the name
    ends in ``.gz``) wraps the file in gzip with a fixed timestamp, so equal data gives equal files.
    ``durable`` also syncs the folder, so that the rename itself survives a power cut (session files).
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
    if durable:
        _fsync_dir(path.parent)


def write_atomic(path, data: bytes, *, durable: bool = False) -> None:
    """Replace ``path`` with ``data``: a crash leaves either the old or the new file, never a torn one."""
    with atomic_write(path, compress=False, durable=durable) as fh:
        fh.write(data)


def json_text(document: Any, *, indent: int | None = 2) -> str:
    """Strict JSON (no NaN or infinity, which other readers reject: they become null, as a diverged
    training's loss does); paths and other objects as text."""
    try:
        return json.dumps(document, indent=indent, allow_nan=False, default=_as_text) + "\n"
    except ValueError:  # a non-finite float somewhere: the rare case pays for the walk
        return json.dumps(_finite(document), indent=indent, allow_nan=False, default=_as_text) + "\n"


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float (NumPy's included) replaced by None."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if hasattr(value, "tolist") and callable(value.tolist):  # NumPy scalars and arrays
        return _finite(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _as_text(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # NumPy scalars
        return value.item()
    if hasattr(value, "tolist") and callable(value.tolist):  # NumPy arrays
        return value.tolist()
    return str(value)


def write_json(path, document: Any, *, indent: int | None = 2, durable: bool = False) -> None:
    """Write ``document`` as UTF-8 JSON to ``path``, atomically; its folder is created when missing."""
    write_atomic(path, json_text(document, indent=indent).encode("utf-8"), durable=durable)


def write_json_result(path: str | os.PathLike | None, document: Any) -> None:
    """What every ``--json PATH`` option writes: nothing when ``path`` is None or empty."""
    if path:
        write_json(path, document)


def save_or_rescue(write: Callable[[Path], Any], path, what: str) -> Path:
    """``write(path)``, and should that fail (the disk filled up, the folder went away), ``write`` to a rescue
    file in the temp folder instead so that finished work (a trained model) is never lost; then raise a
    :class:`~scratchpilot.errors.CommandError` naming both. Returns ``path`` when the first write succeeded.
    """
    import tempfile
    import time

    from ..errors import CommandError

    path = Path(path)
    try:
        write(path)
        return path
    except OSError as first:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        rescue = Path(tempfile.gettempdir()) / f"scratchpilot-rescued-{stamp}-{os.getpid()}-{path.name}"
        try:
            write(rescue)
        except OSError as second:
            raise CommandError(f"cannot write the {what} to {path} ({first}), nor to {rescue} ({second})") from None
        raise CommandError(f"cannot write the {what} to {path} ({first}); it was saved to {rescue} instead: "
                           f"move it where you want it") from None


def read_json(path, what: str, error: type[Exception] = ValueError) -> Any:
    """Load a JSON file; every problem becomes ``error`` naming the file (and line) and ``what`` it is."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no {what} here") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path}: cannot read the {what}: {err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{path}, line {err.lineno}: the {what} is not valid JSON ({err.msg})") from None
    except RecursionError:
        raise error(f"{path}: the {what} is nested too deeply") from None
