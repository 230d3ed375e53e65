"""Reading a model ``.npz`` in order of trust: the zip's directory, the JSON config, each array's ``.npy``
header, and an array's data last, straight into the buffer that will hold it.

Every problem becomes a :class:`ModelFileError` naming the file; nothing is unpickled or executed.
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

FORMAT = "scratchpilot-model"
FORMAT_VERSION = 2
CONFIG_KEY = "config.json"


class ModelFileError(ValueError):
    """A model file that cannot be loaded; the message names the file and the problem."""


#: the largest config a model file may carry (its history and metadata included); parsed, JSON can take
#: some 25 times its size in Python objects, so this also bounds what a crafted config costs
MAX_CONFIG_BYTES = 2 << 20
#: the deepest nesting of lists and objects a config may have (a real one nests 4 deep)
MAX_CONFIG_DEPTH = 32
#: room for an .npy header beyond an array's data
NPY_HEADER_BYTES = 1 << 16
#: deflate cannot unpack one byte into more than 1032; a zip entry claiming more is lying
MAX_DEFLATE_RATIO = 1032
#: arrays are read and checked this many bytes at a time, straight into the model's own buffers
READ_CHUNK_BYTES = 1 << 20
#: what can go wrong reading a zip of .npy files: truncation, a corrupt or unsupported compression, bad
#: headers (ValueError also covers object arrays, which allow_pickle=False refuses), absurd sizes
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError,
                NotImplementedError, RuntimeError, zlib.error, MemoryError, OverflowError)


class Header:
    """What an entry's .npy header says: shape, dtype, order, and where its data starts."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, fortran: bool, offset: int) -> None:
        self.shape, self.dtype, self.fortran, self.offset = shape, dtype, fortran, offset
        self.nbytes = math.prod(shape) * dtype.itemsize


class Archive:
    """A model ``.npz`` read in order of trust: the zip's directory (each entry's size against what its
    compression can deliver), the config, then each array's ``.npy`` header (shape, dtype, and a data size
    the entry really holds), and an array's data only once the whole architecture has been checked
    against every header — so a crafted entry (a deflate bomb, a header claiming 10¹³ values) is refused
    before anything is allocated for it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> Archive:
        path = self.path
        if not path.exists():
            raise ModelFileError(f"{path}: no such model file")
        if path.is_dir():
            raise ModelFileError(f"{path}: a folder, not a model file")
        try:
            with open(path, "rb") as fh:
                start = fh.read(8)
            if start.startswith(b"\x93NUMPY"):
                raise ModelFileError(f"{path}: not a scratchpilot model (a bare .npy array, not an .npz)")
            if not start.startswith(b"PK"):
                raise ModelFileError(f"{path}: not a scratchpilot model file (not an .npz archive: it starts "
                                     f"with {start!r})")
            self.zip = zipfile.ZipFile(path)
        except _READ_ERRORS as exc:
            raise self._unreadable(exc) from None
        try:
            self._check_directory(path.stat().st_size)
            self.config = self._read_config()
        except BaseException:
            self.zip.close()
            raise
        return self

    def _check_directory(self, disk_bytes: int) -> None:
        path = self.path
        self._headers: dict[str, Header] = {}
        infos = {info.filename: info for info in self.zip.infolist()}
        self.infos = {name[:-4]: info for name, info in infos.items() if name.endswith(".npy")}
        if CONFIG_KEY not in self.infos:
            raise ModelFileError(f"{path}: not a scratchpilot model (no {CONFIG_KEY} entry; "
                                 f"entries: {sorted(infos)[:5]})")
        if sum(info.compress_size for info in infos.values()) > disk_bytes:
            raise ModelFileError(f"{path}: its zip directory claims more bytes than the file has (truncated "
                                 f"or tampered?)")
        for name, info in infos.items():
            if info.compress_type == zipfile.ZIP_STORED:
                limit = info.compress_size
            elif info.compress_type == zipfile.ZIP_DEFLATED:
                limit = info.compress_size * MAX_DEFLATE_RATIO + 1024
            else:
                raise ModelFileError(f"{path}: entry {name} uses zip compression method {info.compress_type}; "
                                     f"model files are stored or deflated")
            if info.file_size > limit:
                raise ModelFileError(f"{path}: entry {name} claims to unpack {info.compress_size:,d} bytes to "
                                     f"{info.file_size:,d}, more than its compression can (tampered?)")

    def __exit__(self, *exc) -> None:
        self.zip.close()

    def _unreadable(self, exc: BaseException) -> ModelFileError:
        return ModelFileError(f"{self.path}: not a readable scratchpilot model file (truncated or corrupted?): "
                              f"{type(exc).__name__}: {exc}")

    def names(self) -> set[str]:
        """The array entries (the config left out)."""
        return set(self.infos) - {CONFIG_KEY}

    def header(self, name: str) -> Header:
        """The entry's .npy header, checked against the entry's size, reading nothing else (read once)."""
        if name not in self._headers:
            self._headers[name] = self._read_header(name)
        return self._headers[name]

    def _read_header(self, name: str) -> Header:
        try:
            with self.zip.open(self.infos[name]) as fh:
                version = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(fh)
                offset = fh.tell()
        except _READ_ERRORS as exc:
            raise self._unreadable(exc) from None
        if dtype.hasobject:
            raise ModelFileError(f"{self.path}: array {name} holds Python objects (refused: never unpickled)")
        header = Header(tuple(shape), dtype, bool(fortran), offset)
        size = self.infos[name].file_size
        if header.offset + header.nbytes > size:
            raise ModelFileError(f"{self.path}: array {name} claims shape {header.shape} ({header.nbytes:,d} "
                                 f"bytes of data), its entry holds {size - header.offset:,d} (tampered or "
                                 f"truncated?)")
        if size > header.offset + header.nbytes + NPY_HEADER_BYTES:
            raise ModelFileError(f"{self.path}: array {name} unpacks to {size:,d} bytes for {header.nbytes:,d} "
                                 f"bytes of data (tampered?)")
        return header

    def check(self, name: str, shape: tuple[int, ...], dtype: np.dtype, what: str) -> None:
        """Refuse the entry unless its header says ``shape`` and ``dtype``; ``what`` names its user."""
        if name not in self.infos:
            raise ModelFileError(f"{self.path}: missing array {name} for {what}")
        header = self.header(name)
        if header.shape != tuple(shape):
            raise ModelFileError(f"{self.path}: array {name} has shape {header.shape}, {what} needs {tuple(shape)}")
        if header.dtype != dtype:
            raise ModelFileError(f"{self.path}: array {name} has dtype {header.dtype}, expected {dtype}")

    def read_into(self, name: str, target: np.ndarray) -> None:
        """Fill the C-contiguous ``target`` from the entry (checked by :meth:`check`), a chunk at a time,
        refusing NaN or infinite values: no copy of the array is ever made."""
        header = self.header(name)
        # Fortran-ordered data is the C order of the reversed shape: read it so, then transpose (a copy)
        into = np.empty(header.shape[::-1], target.dtype) if header.fortran and target.ndim > 1 else target
        if not into.flags.c_contiguous:  # reshape would copy, and the values would land in the copy
            raise ValueError(f"read_into needs a C-contiguous target for {name}")
        flat = into.reshape(-1)
        raw = memoryview(flat.view(np.uint8))
        step = max(1, READ_CHUNK_BYTES // flat.itemsize)
        try:
            with self.zip.open(self.infos[name]) as fh:
                fh.read(header.offset)
                for start in range(0, flat.size, step):
                    stop = min(flat.size, start + step)
                    want = (stop - start) * flat.itemsize
                    got = 0
                    while got < want:
                        n = fh.readinto(raw[start * flat.itemsize + got:stop * flat.itemsize])
                        if not n:
                            raise ModelFileError(f"{self.path}: array {name} ends early (truncated?)")
                        got += n
                    if not np.isfinite(flat[start:stop]).all():
                        raise ModelFileError(f"{self.path}: array {name} contains NaN or infinite values")
        except ModelFileError:
            raise
        except _READ_ERRORS as exc:
            raise self._unreadable(exc) from None
        if into is not target:
            target[...] = into.T

    def read(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The entry's data, after checking its header against ``shape`` and ``dtype``."""
        self.check(name, shape, dtype, "the config")
        try:
            with self.zip.open(self.infos[name]) as fh:
                return np.lib.format.read_array(fh, allow_pickle=False)
        except _READ_ERRORS as exc:
            raise self._unreadable(exc) from None

    def _read_config(self) -> dict:
        path = self.path
        header = self.header(CONFIG_KEY)
        if header.dtype != np.uint8 or len(header.shape) != 1:
            raise ModelFileError(f"{path}: {CONFIG_KEY} must be a 1-D uint8 array, got {header.dtype} "
                                 f"{header.shape}")
        if header.shape[0] > MAX_CONFIG_BYTES:
            raise ModelFileError(f"{path}: {CONFIG_KEY} is {header.shape[0]:,d} bytes, more than the "
                                 f"{MAX_CONFIG_BYTES:,d} a model config may take")
        raw = self.read(CONFIG_KEY, header.shape, header.dtype)
        try:
            config = json.loads(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            raise ModelFileError(f"{path}: config is not valid UTF-8 JSON: {type(exc).__name__}: {exc}") from None
        if _depth(config) > MAX_CONFIG_DEPTH:
            raise ModelFileError(f"{path}: config nests deeper than {MAX_CONFIG_DEPTH} levels (tampered?)")
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise ModelFileError(f"{path}: not a scratchpilot model (format is "
                                 f"{brief(config.get('format') if isinstance(config, dict) else config)})")
        version = config.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ModelFileError(f"{path}: bad format_version {brief(version)}")
        if version > FORMAT_VERSION:
            raise ModelFileError(f"{path}: written by a newer scratchpilot (format version {version}); "
                                 f"this one reads up to {FORMAT_VERSION}: upgrade scratchpilot")
        metadata = config.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise ModelFileError(f"{path}: metadata must be a JSON object, got {brief(metadata)}")
        return config


def _depth(value) -> int:
    """How deep lists and objects nest in a parsed JSON value (iteratively: no recursion to exhaust)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > MAX_CONFIG_DEPTH:
                return deepest
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def brief(value, limit: int = 120) -> str:
    """``repr(value)`` (a string as it is), cut to ``limit`` characters: a crafted config's values can be
    megabytes long."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
