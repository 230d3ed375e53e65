"""Opening an outside data file (plain or gzip) for the readers: once, and with a bound on what it may unpack to.

Every reader of outside bytes (IDX, the Kaggle CSVs, the report's lenient CSV reader) opens its file with
:class:`InputFile`. The file is opened and read once, front to back, so a pipe (``/dev/stdin``, a shell's
``<(...)``) works like a file; gzip is recognised from the first two bytes, not the name; and the bytes
come out of :attr:`InputFile.stream` through a counter that raises :class:`InputTooLarge` past
:data:`MAX_INPUT_BYTES`, or past :data:`MAX_RATIO` times the compressed bytes read, so a small gzip "bomb"
that unpacks to gigabytes is refused while it is read, before it fills memory. (Atomic writes and progress
bars live in :mod:`scratchpilot.util`.)
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import zlib
from pathlib import Path
from typing import BinaryIO

# deflate (zip's and gzip's) cannot compress better than about 1032:1: data declaring more is damaged
from ..nn.npz import MAX_DEFLATE_RATIO

GZIP_MAGIC = b"\x1f\x8b"

#: exceptions that a damaged gzip stream raises while it is read
GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)

#: the most bytes one input may hold once decompressed. MNIST's largest file is 47 MB and Kaggle's train.csv
#: 76 MB: this leaves room for bigger datasets while refusing a file that would unpack into most of the memory
MAX_INPUT_BYTES = 1 << 30

#: gzip data may unpack to at most this many times the compressed bytes read so far, once past
#: :data:`RATIO_FLOOR`: digit images compress about 5:1 (IDX) to 10:1 (CSV), a decompression bomb 500:1 or more
MAX_RATIO = 100
RATIO_FLOOR = 64 << 20



class InputTooLarge(ValueError):
    """An input holding more than the allowed bytes; ``problem`` is the message without the file name."""

    def __init__(self, path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


#: what reading an :class:`InputFile` may raise besides OSError; :func:`read_problem` describes each
READ_ERRORS = (InputTooLarge, *GZIP_ERRORS)


def read_problem(exc: BaseException) -> str:
    """The problem text (without the file name) of one of :data:`READ_ERRORS`, for the reader's own error."""
    if isinstance(exc, InputTooLarge):
        return exc.problem
    return f"damaged gzip data ({exc or type(exc).__name__})"


class _Counted(io.RawIOBase):
    """The bytes of ``inner``, after ``head``, counted in ``count``; a ``bound`` is called after each read."""

    def __init__(self, inner, head: bytes = b"", bound=None):
        super().__init__()
        self.inner, self.head, self.bound, self.count = inner, head, bound, 0
        # one read at a time where the inner stream can: what damaged gzip data gave before it broke off
        # still comes out, rather than being dropped with the read that failed
        self._read = getattr(inner, "readinto1", None) or inner.readinto

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n], self.head = self.head[:n], self.head[n:]
        else:  # at most 1 MiB a read: gzip's read allocates the whole size asked for, then shrinks it
            n = self._read(memoryview(buffer)[:1 << 20]) or 0
        self.count += n
        if self.bound is not None:
            self.bound(self.count)
        return n


class InputFile:
    """An outside file opened for one front-to-back read; use as a context manager.

    Attributes
    ----------
    path : the file as given.
    stream : its bytes, decompressed when the file is gzip data (buffered; ``read``, ``readinto``, lines).
        Reading raises :class:`InputTooLarge` past ``limit`` bytes, or for gzip data past
        :data:`MAX_RATIO` times the compressed bytes read (beyond the first :data:`RATIO_FLOOR`).
    compressed : True for gzip data.
    stored_size : bytes on disk, or None when it is not a regular file (a pipe, a device).
    limit : the most bytes :attr:`stream` gives.

    Raises
    ------
    FileNotFoundError, IsADirectoryError
        With a message naming the file; other OSErrors (permissions) as the system gives them.
    """

    def __init__(self, path: str | os.PathLike, limit: int | None = None):
        self.path = Path(path)
        self.limit = MAX_INPUT_BYTES if limit is None else limit
        try:
            self._raw = open(self.path, "rb")
        except IsADirectoryError:
            raise IsADirectoryError(f"{self.path}: is a folder, not a file") from None
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.path}: no such file") from None
        try:
            self._open()
        except BaseException:
            self._raw.close()
            raise

    def _open(self) -> None:
        info = os.fstat(self._raw.fileno())
        self.stored_size = info.st_size if stat.S_ISREG(info.st_mode) else None
        head = self._raw.read(2)  # given back below: a pipe cannot be rewound
        self.compressed = head == GZIP_MAGIC
        self._stored = _Counted(self._raw, head)
        source = self._stored
        if self.compressed:
            source = gzip.GzipFile(fileobj=io.BufferedReader(source), mode="rb")
        self.stream: BinaryIO = io.BufferedReader(_Counted(source, bound=self._check), buffer_size=1 << 16)

    def _check(self, unpacked: int) -> None:
        if unpacked > self.limit:
            raise InputTooLarge(self.path, f"{'unpacks to' if self.compressed else 'holds'} more than "
                                           f"{self.limit:,d} bytes, the most an input may hold"
                                           + (" (a decompression bomb?)" if self.compressed else ""))
        if self.compressed and unpacked > RATIO_FLOOR and unpacked > MAX_RATIO * self._stored.count:
            raise InputTooLarge(self.path, f"unpacks to more than {MAX_RATIO} times its size ({unpacked:,d} bytes "
                                           f"from its first {self._stored.count:,d}): refused as a likely "
                                           "decompression bomb")

    def size_problem(self, declared: int) -> str | None:
        """Why this file cannot hold ``declared`` bytes once decompressed (None when it can).

        For a header that declares its data size (IDX), checked before allocating memory for it.
        """
        if self.compressed and self.stored_size is not None and declared > self.stored_size * MAX_DEFLATE_RATIO:
            return f"impossible for a {self.stored_size}-byte gzip file (damaged header?)"
        if declared > self.limit:
            return f"more than the {self.limit:,d} bytes an input may hold"
        if (self.compressed and self.stored_size is not None and declared > RATIO_FLOOR
                and declared > MAX_RATIO * self.stored_size):
            return (f"more than {MAX_RATIO} times the {self.stored_size:,d}-byte gzip file: refused as a likely "
                    "decompression bomb")
        return None

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> InputFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_input_path(path: Path, what: str) -> None:
    """Raise a clear OSError when ``path`` cannot be an input file: missing, or a folder (pipes are fine).

    ``what`` names the expected kind in the message (``CSV``, ``IDX``).
    """
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, not a{'n' if what[0] in 'AEIOU' else ''} {what} file")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such {what} file")
