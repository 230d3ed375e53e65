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
from ._files import GZIP_ERRORS, is_gzip, open_binary

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

# deflate cannot compress better than about 1032:1, so a gzip file declaring more data than this
# is damaged; checking first avoids allocating memory for a corrupt header's absurd dimensions
_MAX_DEFLATE_RATIO = 1032


class IdxFormatError(ValueError):
    """An IDX file that cannot be read; the message names the file and what is wrong."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into an array of its declared shape.

    Parameters
    ----------
    path : file name; ``.gz`` or not, gzip is recognised by its magic bytes.

    Returns
    -------
    np.ndarray
        Shape ``dims`` from the header (e.g. ``(60000, 28, 28)`` uint8 for MNIST training images),
        in native byte order and writeable.

    Raises
    ------
    IdxFormatError
        Bad magic number, unknown type code, data shorter or longer than the header declares, or
        damaged gzip data. ``FileNotFoundError`` when the file does not exist.
    """
    path = Path(path)
    compressed = is_gzip(path)
    stored_size = path.stat().st_size
    try:
        with open_binary(path) as fh:
            magic = fh.read(4)
            if len(magic) < 4:
                raise IdxFormatError(f"{path}: truncated: {len(magic)} bytes, too short for an IDX header")
            zero, code, ndim = struct.unpack(">HBB", magic)
            if zero != 0 or code not in IDX_DTYPES or ndim == 0:
                raise IdxFormatError(
                    f"{path}: bad magic number 0x{magic.hex()}: not an IDX file (expected 0x0000TTNN with "
                    f"type TT one of {', '.join(f'{c:02x}' for c in IDX_DTYPES)} and NN >= 1 dimensions, "
                    "e.g. 0x00000803 for MNIST images, 0x00000801 for labels)")
            dims_bytes = fh.read(4 * ndim)
            if len(dims_bytes) < 4 * ndim:
                raise IdxFormatError(f"{path}: truncated in the header: {ndim} dimension sizes declared, "
                                     f"only {len(dims_bytes) // 4} present")
            dims = struct.unpack(f">{ndim}I", dims_bytes)
            dtype = IDX_DTYPES[code]
            data_bytes = math.prod(dims) * dtype.itemsize
            header_bytes = 4 + 4 * ndim
            shape_text = "x".join(map(str, dims))
            if not compressed and stored_size - header_bytes != data_bytes:
                problem = "truncated" if stored_size - header_bytes < data_bytes else "too long"
                raise IdxFormatError(
                    f"{path}: {problem}: header declares {shape_text} {dtype.name} = {data_bytes} bytes of "
                    f"data, the file holds {stored_size - header_bytes}")
            if compressed and data_bytes > stored_size * _MAX_DEFLATE_RATIO:
                raise IdxFormatError(f"{path}: header declares {shape_text} {dtype.name} = {data_bytes} bytes, "
                                     f"impossible for a {stored_size}-byte gzip file (damaged header?)")
            flat = np.empty(math.prod(dims), dtype=dtype)
            got = _read_into(fh, memoryview(flat).cast("B"))
            if got < data_bytes:
                raise IdxFormatError(f"{path}: truncated: header declares {shape_text} {dtype.name} = "
                                     f"{data_bytes} bytes of data, the file holds {got}")
            if fh.read(1):
                raise IdxFormatError(f"{path}: too long: more data after the {shape_text} {dtype.name} "
                                     "elements the header declares")
    except GZIP_ERRORS as exc:
        raise IdxFormatError(f"{path}: damaged gzip data ({exc})") from exc
    return flat.astype(dtype.newbyteorder("="), copy=False).reshape(dims)


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

    Supported dtypes: uint8, int8, int16, int32, float32, float64 (the IDX type codes); at most 255
    dimensions, each below 2**32.
    """
    array = np.asarray(array)
    code = _CODE_BY_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if code is None or array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"cannot write a {array.dtype} array of {array.ndim} dimensions as IDX "
                         "(types: uint8, int8, int16, int32, float32, float64; 1 to 255 dimensions)")
    if any(d >= 2**32 for d in array.shape):
        raise ValueError(f"IDX dimension sizes must be below 2**32, got {array.shape}")
    path = Path(path)
    header = struct.pack(f">HBB{array.ndim}I", 0, code, array.ndim, *array.shape)
    with atomic_write(path) as fh:
        fh.write(header)
        fh.write(np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes())
    return path
