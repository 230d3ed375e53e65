"""Read and write IDX files, the format of the MNIST and Fashion-MNIST distributions.

An IDX file is a 4-byte magic number ``00 00 TT NN`` (``TT`` the element type, ``NN`` the number of
dimensions), ``NN`` big-endian uint32 dimension sizes, then the elements in C order, big-endian.
MNIST labels are ``0x00000801`` (uint8, 1-D) and images ``0x00000803`` (uint8, 3-D). Files may be
gzip-compressed; that is detected from the content, not the name.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np

from ..util.files import atomic_write
from ._files import READ_ERRORS, InputFile, read_problem

#: IDX type code -> element dtype as stored (big-endian)
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_BY_KIND = {(dt.kind, dt.itemsize): code for code, dt in IDX_DTYPES.items()}

#: the most dimensions read: every NumPy version holds 32 (NumPy 2 allows 64); MNIST uses 1 to 3
MAX_DIMS = 32


class IdxFormatError(ValueError):
    """An IDX file that cannot be read; the message names the file and what is wrong."""


def read_idx(path: str | os.PathLike, max_bytes: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed, a file or a pipe) into an array of its declared shape.

    Parameters
    ----------
    path : file name; ``.gz`` or not, gzip is recognised by its magic bytes. The file is read once, so a
        pipe works too.
    max_bytes : the most data the file may hold once decompressed (default
        :data:`scratchpilot.data._files.MAX_INPUT_BYTES`); checked against the header before allocating.

    Returns
    -------
    np.ndarray
        Shape ``dims`` from the header (e.g. ``(60000, 28, 28)`` uint8 for MNIST training images; a first
        dimension of 0 gives an empty array), in native byte order and writeable.

    Raises
    ------
    IdxFormatError
        Bad magic number, unknown type code, more than :data:`MAX_DIMS` dimensions, data shorter or longer
        than the header declares, more data than ``max_bytes``, or damaged gzip data.
        ``FileNotFoundError`` / ``IsADirectoryError`` when there is no such file.
    """
    path = Path(path)
    try:
        with InputFile(path, max_bytes) as source:
            return _read(path, source)
    except READ_ERRORS as exc:
        raise IdxFormatError(f"{path}: {read_problem(exc)}") from exc


def _read(path: Path, source: InputFile) -> np.ndarray:
    fh = source.stream
    magic = fh.read(4)
    if len(magic) < 4:
        raise IdxFormatError(f"{path}: truncated: {len(magic)} bytes, too short for an IDX header")
    zero, code, ndim = struct.unpack(">HBB", magic)
    if zero != 0 or code not in IDX_DTYPES or ndim == 0:
        raise IdxFormatError(
            f"{path}: bad magic number 0x{magic.hex()}: not an IDX file (expected 0x0000TTNN with "
            f"type TT one of {', '.join(f'{c:02x}' for c in IDX_DTYPES)} and NN >= 1 dimensions, "
            "e.g. 0x00000803 for MNIST images, 0x00000801 for labels)")
    if ndim > MAX_DIMS:
        raise IdxFormatError(f"{path}: header declares {ndim} dimensions (magic 0x{magic.hex()}); at most "
                             f"{MAX_DIMS} are supported (MNIST images have 3, labels 1)")
    dims_bytes = fh.read(4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise IdxFormatError(f"{path}: truncated in the header: {ndim} dimension sizes declared, "
                             f"only {len(dims_bytes) // 4} present")
    dims = struct.unpack(f">{ndim}I", dims_bytes)
    dtype = IDX_DTYPES[code]
    data_bytes = math.prod(dims) * dtype.itemsize
    header_bytes = 4 + 4 * ndim
    shape_text = "x".join(map(str, dims))
    declared = f"header declares {shape_text} {dtype.name} = {data_bytes} bytes"
    if not source.compressed and source.stored_size is not None and source.stored_size - header_bytes != data_bytes:
        held = source.stored_size - header_bytes
        raise IdxFormatError(f"{path}: {'truncated' if held < data_bytes else 'too long'}: {declared} of data, "
                             f"the file holds {held}")
    problem = source.size_problem(header_bytes + data_bytes)
    if problem:
        raise IdxFormatError(f"{path}: {declared}, {problem}")
    if math.prod(d for d in dims if d) * dtype.itemsize > np.iinfo(np.intp).max:
        # NumPy refuses such a shape even when a zero dimension makes it empty
        raise IdxFormatError(f"{path}: header declares {shape_text} {dtype.name}: too large for an array")
    if source.stored_size is not None:  # the size checks above bound what the header can make us allocate
        flat = np.empty(math.prod(dims), dtype=dtype)
        got = _read_into(fh, memoryview(flat).cast("B"))
    else:  # a pipe: nothing bounds the header's claim but the input limit, so memory grows with what arrives
        flat, got = _read_growing(fh, data_bytes, dtype)
    if got < data_bytes:
        raise IdxFormatError(f"{path}: truncated: {declared} of data, the file holds {got}")
    if fh.read(1):
        raise IdxFormatError(f"{path}: too long: more data after the {shape_text} {dtype.name} "
                             "elements the header declares")
    return flat.astype(dtype.newbyteorder("="), copy=False).reshape(dims)


def _read_growing(fh, size: int, dtype: np.dtype) -> tuple[np.ndarray, int]:
    """Up to ``size`` bytes of ``fh`` read in pieces, as elements of ``dtype``; and the number of bytes read."""
    pieces, got = [], 0
    while got < size:
        piece = fh.read(min(size - got, 1 << 20))  # a read allocates its whole size before data arrives
        if not piece:
            return np.empty(0, dtype), got
        pieces.append(np.frombuffer(piece, dtype=np.uint8))
        got += len(piece)
    return np.concatenate(pieces or [np.empty(0, np.uint8)]).view(dtype), got


def _read_into(fh, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``fh``; returns the number of bytes read (less than its size at end of file)."""
    done = 0
    while done < len(buffer):
        n = fh.readinto(buffer[done:])
        if not n:
            break
        done += n
    return done


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``), atomically.

    Supported dtypes: uint8, int8, int16, int32, float32, float64 (the IDX type codes); at most
    :data:`MAX_DIMS` dimensions (what :func:`read_idx` reads back), each below 2**32.
    """
    array = np.asarray(array)
    code = _CODE_BY_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if code is None or array.ndim == 0 or array.ndim > MAX_DIMS:
        raise ValueError(f"cannot write a {array.dtype} array of {array.ndim} dimensions as IDX "
                         f"(types: uint8, int8, int16, int32, float32, float64; 1 to {MAX_DIMS} dimensions)")
    if any(d >= 2**32 for d in array.shape):
        raise ValueError(f"IDX dimension sizes must be below 2**32, got {array.shape}")
    path = Path(path)
    header = struct.pack(f">HBB{array.ndim}I", 0, code, array.ndim, *array.shape)
    with atomic_write(path) as fh:
        fh.write(header)
        fh.write(np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes())
    return path
