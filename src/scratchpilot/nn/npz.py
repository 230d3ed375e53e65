"""The one reader of ``.npz`` files from outside (model files, session chunks, imported data): a zip of
``.npy`` members, read in order of trust and checked at each step before anything is allocated.

1. The zip's directory: each entry's unpacked size must be possible for its compression (stored: equal to
   its stored size; deflated: at most :data:`MAX_DEFLATE_RATIO` times it; other methods are refused), and
   all entries together must fit in the file's bytes.
2. A member's ``.npy`` header (versions 1.0, 2.0 and 3.0; no object dtypes): the data size it claims must
   be what the member unpacks to and within the caller's cap.
3. The data, a chunk at a time, into one allocation of the size already checked.

``np.load`` allocates whatever a header claims and unpickles nothing only when told; this reader never
unpickles. Every problem is an :class:`NpzError` holding the problem alone, which each caller turns into
its own error type naming the file and the field.
"""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: deflate cannot unpack one byte into more than about 1032; an entry claiming more is lying (a "bomb")
MAX_DEFLATE_RATIO = 1032
#: room for an ``.npy`` header (and padding) beyond a member's data; a member unpacking to more is refused
NPY_HEADER_BYTES = 1 << 16
#: data is read this many bytes at a time (and handed to the caller's check a chunk at a time)
READ_CHUNK_BYTES = 1 << 20
#: what reading damaged zip or ``.npy`` bytes raises: truncation, corrupt deflate streams, encrypted
#: entries, unparsable headers
_DAMAGE = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError, SyntaxError,
           NotImplementedError, RuntimeError, zlib.error, OverflowError)


class NpzError(ValueError):
    """An ``.npz`` that cannot be read, or that claims more than it holds.

    ``problem`` is what is wrong, without the file's name; ``entry`` the zip entry at fault (None for the
    file as a whole). ``kind``: ``"not-npz"`` (the bytes are not a zip at all), ``"damaged"`` (bytes that
    cannot be read: a truncated or corrupted zip, deflate stream or ``.npy`` header; the problem names its
    entry itself) or ``"refused"`` (readable, but impossible or over a cap; the problem reads after the
    entry's name, so a caller can name the entry its own way: "array p0.W", "field 'frames'").
    """

    def __init__(self, problem: str, *, entry: str | None = None, kind: str = "refused") -> None:
        super().__init__(problem)
        self.problem, self.entry, self.kind = problem, entry, kind


class NpyHeader:
    """What a member's ``.npy`` header says: shape, dtype, order, and where its data starts."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, fortran: bool, offset: int) -> None:
        self.shape, self.dtype, self.fortran, self.offset = shape, dtype, fortran, offset
        self.nbytes = math.prod(shape) * dtype.itemsize


class NpzReader:
    """A zip of ``.npy`` members (a path, or the file's bytes), its directory checked on opening.

    ``names`` holds the arrays (the entries ending in ``.npy``, without that suffix), ``entries`` every
    entry's name. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, source: Path | str | bytes) -> None:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            start, size, opened = data[:8], len(data), io.BytesIO(data)
        else:
            try:
                with open(source, "rb") as fh:
                    start = fh.read(8)
                    size = fh.seek(0, io.SEEK_END)
            except OSError as exc:
                raise NpzError(f"cannot read it ({exc.strerror or exc})", kind="damaged") from None
            opened = source
        if start.startswith(b"\x93NUMPY"):
            raise NpzError("a single .npy array, not an .npz archive", kind="not-npz")
        if not start.startswith(b"PK"):
            raise NpzError(f"not an .npz archive: it starts with {start!r}", kind="not-npz")
        try:
            self.zip = zipfile.ZipFile(opened)
        except _DAMAGE as exc:
            raise _damaged(exc) from None
        try:
            self._check_directory(size)
        except BaseException:
            self.zip.close()
            raise
        self._headers: dict[str, NpyHeader] = {}

    def _check_directory(self, disk_bytes: int) -> None:
        infos = self.zip.infolist()
        self.entries = [info.filename for info in infos]
        self._infos = {info.filename[:-4]: info for info in infos if info.filename.endswith(".npy")}
        self.names = frozenset(self._infos)
        if sum(info.compress_size for info in infos) > disk_bytes:
            raise NpzError("its zip directory claims more bytes than the file has (truncated or tampered?)")
        for info in infos:
            if info.compress_type == zipfile.ZIP_STORED:
                possible, method = info.file_size == info.compress_size, "stored"
            elif info.compress_type == zipfile.ZIP_DEFLATED:
                possible, method = info.file_size <= info.compress_size * MAX_DEFLATE_RATIO + 1024, "deflated"
            else:
                raise NpzError(f"uses zip compression method {info.compress_type}; only stored or deflated "
                               f"entries are read", entry=info.filename)
            if not possible:
                raise NpzError(f"claims to unpack {info.compress_size:,d} bytes to {info.file_size:,d}, "
                               f"impossible for {method} data (tampered?)", entry=info.filename)

    def close(self) -> None:
        self.zip.close()

    def __enter__(self) -> NpzReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def header(self, name: str, max_bytes: int | None = None) -> NpyHeader:
        """The array's ``.npy`` header, checked against its entry's size and against ``max_bytes`` of
        data; only the header is read (once)."""
        header = self._headers.get(name) or self._read_header(name)
        self._headers[name] = header
        if max_bytes is not None and header.nbytes > max_bytes:
            raise NpzError(f"claims shape {header.shape} ({header.nbytes:,d} bytes of data), more than the "
                           f"{max_bytes:,d} bytes allowed here", entry=f"{name}.npy")
        return header

    def _read_header(self, name: str) -> NpyHeader:
        entry = f"{name}.npy"
        if name not in self._infos:
            raise NpzError("is missing", entry=entry)
        try:
            with self.zip.open(self._infos[name]) as fh:
                version = np.lib.format.read_magic(fh)
                if version not in ((1, 0), (2, 0), (3, 0)):
                    raise NpzError(f"has .npy format version {version[0]}.{version[1]}, not 1.0, 2.0 or 3.0",
                                   entry=entry)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0  # 3.0 differs from 2.0 only by a UTF-8 header
                shape, fortran, dtype = read(fh)
                offset = fh.tell()
        except NpzError:
            raise
        except _DAMAGE as exc:
            raise _damaged(exc, entry) from None
        if dtype.hasobject:
            raise NpzError(f"holds Python objects (dtype {dtype}; refused: never unpickled)", entry=entry)
        if dtype.subdtype is not None or dtype.itemsize == 0 or any(d < 0 for d in shape):
            raise NpzError(f"has an unsupported dtype or shape ({dtype}, {tuple(shape)})", entry=entry)
        header = NpyHeader(tuple(shape), dtype, bool(fortran), offset)
        size = self._infos[name].file_size
        if offset + header.nbytes > size:
            raise NpzError(f"claims shape {header.shape} ({header.nbytes:,d} bytes of data), its entry holds "
                           f"{max(0, size - offset):,d} (tampered or truncated?)", entry=entry)
        if size > offset + header.nbytes + NPY_HEADER_BYTES:
            raise NpzError(f"unpacks to {size:,d} bytes for {header.nbytes:,d} bytes of data (tampered?)",
                           entry=entry)
        return header

    def read(self, name: str, max_bytes: int | None = None,
             check: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
        """The array, its header checked first (see :meth:`header`), read into one new allocation;
        ``check`` is called on each chunk of values read (flat, in file order)."""
        header = self.header(name, max_bytes)
        if header.fortran:  # Fortran order is the C order of the reversed shape
            into = np.empty(header.shape[::-1], header.dtype)
            self._fill(name, into, check)
            return into.T
        into = np.empty(header.shape, header.dtype)
        self._fill(name, into, check)
        return into

    def read_into(self, name: str, target: np.ndarray, check: Callable[[np.ndarray], None] | None = None) -> None:
        """Fill the C-contiguous ``target`` (of the header's shape and dtype: the caller checks them first)
        straight from the member, a chunk at a time; ``check`` as for :meth:`read`."""
        header = self.header(name)
        if target.shape != header.shape or target.dtype != header.dtype:
            raise ValueError(f"read_into: {name} holds {header.dtype} {header.shape}, the target is "
                             f"{target.dtype} {target.shape}")
        if header.fortran and target.ndim > 1:  # read in C order of the reversed shape, then transpose
            into = np.empty(header.shape[::-1], target.dtype)
            self._fill(name, into, check)
            target[...] = into.T
        else:
            self._fill(name, target, check)

    def _fill(self, name: str, into: np.ndarray, check) -> None:
        if not into.flags.c_contiguous:  # a reshape would copy, and the values would land in the copy
            raise ValueError(f"read_into needs a C-contiguous target for {name}")
        entry, header = f"{name}.npy", self._headers[name]
        flat = into.reshape(-1)
        raw = memoryview(flat.view(np.uint8))
        step = max(1, READ_CHUNK_BYTES // max(1, flat.itemsize))
        with _guarded(self.zip.open, self._infos[name], entry=entry) as fh:
            _guarded(fh.read, header.offset, entry=entry)
            for start in range(0, flat.size, step):
                stop = min(flat.size, start + step)
                got, want = start * flat.itemsize, stop * flat.itemsize
                while got < want:
                    n = _guarded(fh.readinto, raw[got:want], entry=entry)
                    if not n:
                        raise NpzError(f"{entry}: ends early (truncated?)", entry=entry, kind="damaged")
                    got += n
                if check is not None:  # the caller's own error passes through as it is
                    check(flat[start:stop])
            _guarded(fh.read, NPY_HEADER_BYTES, entry=entry)  # the rest, so that zipfile checks the CRC


def _guarded(call, *args, entry: str):
    """``call(*args)``, a damaged zip's exceptions turned into an :class:`NpzError` naming ``entry``."""
    try:
        return call(*args)
    except _DAMAGE as exc:
        raise _damaged(exc, entry) from None


def _damaged(exc: BaseException, entry: str | None = None) -> NpzError:
    where = f"{entry}: " if entry else ""
    return NpzError(f"{where}{type(exc).__name__}: {exc}", entry=entry, kind="damaged")
