"""The prediction log: one JSON line per answered request (or pilot decision), append-only, size-rotated.

Each process writes its own files, ``{name}-{started}-{pid}-{part}.jsonl``, so the server's forked workers
never interleave records and never race over a rotation; a reader merges every file of a folder by
time. A record goes to the kernel in one ``write`` on an ``O_APPEND`` descriptor, so a ``kill -9``
(which ends the process, not the machine) loses at most the record being written: a torn last line is
skipped when read, and said so. Rotation starts a new part once a file passes ``max_bytes``; a process
keeps at most ``keep`` parts, dropping its oldest.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

try:  # several times faster than json on these small records; part of the web extra
    import orjson

    def _dumps(record: dict) -> bytes:
        return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
except ImportError:  # pragma: no cover - the car's machine may not have the web extra
    def _dumps(record: dict) -> bytes:
        return (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()

SUFFIX = ".jsonl"
#: a part is closed once it passes this size
MAX_BYTES = 64 * 1024 * 1024
#: parts kept per process
KEEP = 16
#: a record longer than this is refused when read (a log line is a few hundred bytes; an image a few KB)
MAX_LINE_BYTES = 1 << 20


class PredictionLog:
    """Append records to ``folder``; safe across ``fork`` (a child opens its own files on its first write)
    and across threads (one lock around the write)."""

    def __init__(self, folder, *, name: str = "predictions", max_bytes: int = MAX_BYTES, keep: int = KEEP):
        if max_bytes < 1024:
            raise ValueError(f"max_bytes must be at least 1024, got {max_bytes}")
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name, self.max_bytes, self.keep = name, max_bytes, keep
        self._lock = threading.Lock()
        self._pid = None
        self._fd = -1
        self._size = 0
        self._parts: list[Path] = []

    def write(self, record: dict) -> None:
        """Append ``record`` (a JSON-able dict; ``t``, the Unix time, is added when missing)."""
        if "t" not in record:
            record["t"] = time.time()
        line = _dumps(record)
        with self._lock:
            if self._pid != os.getpid():
                self._start()
            elif self._size and self._size + len(line) > self.max_bytes:
                self._rotate()
            os.write(self._fd, line)
            self._size += len(line)

    def _start(self) -> None:
        """A new process (the first write, or a forked child): its own series of parts."""
        self._pid = os.getpid()
        self._started = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S")
        self._fd, self._parts = -1, []  # the parent's descriptor stays the parent's
        self._open(0)

    def _open(self, part: int) -> None:
        path = self.folder / f"{self.name}-{self._started}-{self._pid}-{part:04d}{SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = os.fstat(self._fd).st_size
        self._parts.append(path)
        self._part = part

    def _rotate(self) -> None:
        os.close(self._fd)
        self._open(self._part + 1)
        while len(self._parts) > self.keep:
            old = self._parts.pop(0)
            try:
                old.unlink()
            except FileNotFoundError:
                pass

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0 and self._pid == os.getpid():
                os.close(self._fd)
            self._fd, self._pid = -1, None


@dataclass
class LogContents:
    """What :func:`read_logs` found: the records (by time) and every problem, in words."""

    records: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    torn: int = 0  #: torn last records skipped (a writer killed mid-record)


def log_files(paths) -> list[Path]:
    """The log files named by ``paths`` (files, or folders holding ``*.jsonl``), in name order."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(path.glob(f"*{SUFFIX}")))
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such log file or folder")
    return files


def read_logs(paths, *, model_id: str | None = None) -> LogContents:
    """Every record of the logs at ``paths``; lines that are not records are skipped and named (file and
    line) in ``problems``; with ``model_id``, records of other models are left out and counted."""
    out = LogContents(files=log_files(paths))
    others: dict[str, int] = {}
    for path in out.files:
        with open(path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        ends_cleanly = data.endswith(b"\n") or not data
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            last = number == len(lines) and not ends_cleanly
            record = _parse(raw)
            if isinstance(record, str):
                if last:
                    out.torn += 1
                    out.problems.append(f"{path}:{number}: a torn last record (its writer was stopped mid-write): "
                                        f"skipped")
                else:
                    out.problems.append(f"{path}:{number}: {record}: skipped")
                continue
            if model_id is not None and record.get("model") != model_id:
                key = str(record.get("model"))
                others[key] = others.get(key, 0) + 1
                continue
            out.records.append(record)
        if not data:
            out.problems.append(f"{path}: empty")
    for other, count in others.items():
        out.problems.append(f"{count:,d} records are from model {other}, not {model_id} (the --model file): "
                            f"left out")
    if not out.files:
        out.problems.append("no log files (*.jsonl) found")
    out.records.sort(key=lambda r: r["t"])
    return out


def _parse(raw: bytes) -> dict | str:
    """A log line as a record, or what is wrong with it."""
    if len(raw) > MAX_LINE_BYTES:
        return f"a line of {len(raw):,d} bytes (more than {MAX_LINE_BYTES:,d})"
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):
        return "not a JSON record"
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not a record"
    t = record.get("t")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t):
        return "no time 't'"
    return record


def default_log_dir(kind: str) -> Path:
    """Where a log goes when no folder is given: ``{cache}/logs/{kind}`` (the cache is ``SCRATCHPILOT_CACHE``
    or ``~/.cache/scratchpilot``)."""
    from ..data.datasets import default_cache_dir

    return Path(default_cache_dir()) / "logs" / kind
