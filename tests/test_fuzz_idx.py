"""Fuzzing the IDX reader and the IDX datasets: real MNIST bytes, mutated (issue 14).

Each example starts from valid IDX bytes (four MNIST test images and their labels, or a small array of
another element type) and changes them the ways a damaged download or a hostile file can: the magic
number's bytes, the type code, the number of dimensions, the dimension sizes, flipped bytes, a cut or
extra bytes; then gzips the result or not, and cuts or flips the gzip stream too. The property
(:func:`fuzzing.check_parser`): :func:`read_idx` returns an array exactly as the header declares it, or
raises :class:`IdxFormatError` naming the file, within a memory and time bound; the same for
:func:`resolve_dataset` on an images file with its labels file beside it.
"""

from __future__ import annotations

import gzip
import math
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from fuzzing import check_parser, fuzz_settings
from hypothesis import event, given
from hypothesis import strategies as st
from support import pipe_path

from scratchpilot.data import DatasetError, IdxFormatError, read_idx, resolve_dataset
from scratchpilot.data.idx import IDX_DTYPES

# the files are a few kB: a gzip header may claim up to ~1000 times that (then the data runs short),
# anything much larger is a size taken on trust
MEMORY_BOUND = 16 << 20
SECONDS_BOUND = 3.0


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    return struct.pack(f">HBB{array.ndim}I", 0, code, array.ndim, *array.shape) + array.astype(
        IDX_DTYPES[code]).tobytes()


@pytest.fixture(scope="module")
def seeds(shared_data) -> dict[str, bytes]:
    """Valid IDX files: 4 MNIST test images and labels, and a 3x5 array of every other element type."""
    mnist = shared_data / "mnist"
    images = read_idx(mnist / "t10k-images-idx3-ubyte.gz")[:4]
    labels = read_idx(mnist / "t10k-labels-idx1-ubyte.gz")[:4]
    other = np.arange(-7, 8).reshape(3, 5)
    files = {"images": idx_bytes(images, 0x08), "labels": idx_bytes(labels, 0x08)}
    for code in (0x09, 0x0B, 0x0C, 0x0D, 0x0E):
        files[f"type-{code:02x}"] = idx_bytes(other, code)
    return files


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="fuzz-idx-") as folder:
        yield Path(folder)


DIM_VALUES = st.sampled_from([0, 1, 2, 3, 4, 5, 27, 28, 29, 255, 2**16, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1)

MUTATION = st.one_of(
    st.tuples(st.just("magic"), st.integers(0, 3), st.integers(0, 255)),  # any of the four magic bytes
    st.tuples(st.just("type"), st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0x0A, 0xFF]), st.none()),
    st.tuples(st.just("ndim"), st.sampled_from([0, 1, 2, 3, 4, 32, 33, 64, 65, 255]), st.none()),
    st.tuples(st.just("dim"), st.integers(0, 3), DIM_VALUES),
    st.tuples(st.just("flip"), st.integers(0, 4000), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 4000), st.none()),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=64), st.none()),
)

ENCODING = st.sampled_from(["plain", "gzip", "gzip-cut", "gzip-flip", "gzip-twice", "gzip-multi"])


def mutate(data: bytes, mutations) -> bytes:
    data = bytearray(data)
    for kind, a, b in mutations:
        if kind == "magic" and a < len(data):
            data[a] = b
        elif kind == "type" and len(data) > 2:
            data[2] = a
        elif kind == "ndim" and len(data) > 3:
            data[3] = a
        elif kind == "dim" and 4 + 4 * a + 4 <= len(data):
            data[4 + 4 * a: 8 + 4 * a] = struct.pack(">I", b)
        elif kind == "flip" and data:
            data[a % len(data)] ^= b
        elif kind == "cut":
            del data[a % (len(data) + 1):]
        elif kind == "append":
            data += a
    return bytes(data)


def encode(data: bytes, encoding: str, where: int) -> bytes:
    if encoding == "plain":
        return data
    packed = gzip.compress(data, mtime=0)
    if encoding == "gzip-cut":
        return packed[: where % len(packed)]
    if encoding == "gzip-flip":
        flipped = bytearray(packed)
        flipped[where % len(flipped)] ^= 0x5A
        return bytes(flipped)
    if encoding == "gzip-twice":  # gzip of gzip: the reader unpacks one layer and finds no IDX header
        return gzip.compress(packed, mtime=0)
    # two gzip members back to back: one stream to a gzip reader
    cut = where % (len(data) + 1)
    return gzip.compress(data[:cut], mtime=0) + gzip.compress(data[cut:], mtime=0)


def header_of(data: bytes):
    """(dims, dtype) as the header declares them, or None when it is no readable IDX header."""
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in IDX_DTYPES or not 1 <= data[3] <= 32:
        return None
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        return None
    return struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim]), IDX_DTYPES[data[2]]


def check_array(array: np.ndarray, data: bytes) -> None:
    """A returned array is exactly what the (decompressed) bytes hold: dims, type and every element."""
    declared = header_of(data)
    assert declared is not None, "read_idx accepted bytes without a valid header"
    dims, dtype = declared
    assert array.shape == dims and array.dtype == dtype.newbyteorder("=")
    offset = 4 + 4 * len(dims)
    assert len(data) == offset + math.prod(dims) * dtype.itemsize
    expected = np.frombuffer(data, dtype=dtype, offset=offset).reshape(dims)
    np.testing.assert_array_equal(array, expected)


@fuzz_settings(800)
@given(seed=st.sampled_from(["images", "labels", "type-09", "type-0b", "type-0c", "type-0d", "type-0e"]),
       mutations=st.lists(MUTATION, max_size=3), encoding=ENCODING, where=st.integers(0, 2**16),
       through_pipe=st.booleans())
def test_read_idx_mutated(seeds, workdir, seed, mutations, encoding, where, through_pipe):
    data = mutate(seeds[seed], mutations)
    content = encode(data, encoding, where)
    if through_pipe:  # read once, no size known beforehand: the bounds must hold without them
        with pipe_path(content) as path:
            array = check_parser(lambda: read_idx(path), IdxFormatError, path, max_bytes=MEMORY_BOUND,
                                 max_seconds=SECONDS_BOUND)
    else:
        path = workdir / f"{seed}.idx"
        path.write_bytes(content)
        array = check_parser(lambda: read_idx(path), IdxFormatError, str(path), max_bytes=MEMORY_BOUND,
                             max_seconds=SECONDS_BOUND)
    event("read" if array is not None else "refused")
    if array is not None:
        # the reader unpacks one layer (of any number of members), as gzip itself does
        check_array(array, gzip.decompress(content) if content[:2] == b"\x1f\x8b" else content)


@fuzz_settings(400)
@given(image_mutations=st.lists(MUTATION, max_size=2), label_mutations=st.lists(MUTATION, max_size=2),
       image_encoding=st.sampled_from(["plain", "gzip", "gzip-cut"]),
       label_encoding=st.sampled_from(["plain", "gzip", "gzip-cut"]), where=st.integers(0, 2**16),
       name=st.sampled_from(["t10k-images-idx3-ubyte", "nolabels-images-idx3-ubyte", "x-images.idx3-ubyte"]))
def test_resolve_dataset_mutated(seeds, workdir, image_mutations, label_mutations, image_encoding, label_encoding,
                                 where, name):
    folder = Path(tempfile.mkdtemp(dir=workdir))
    images = folder / name
    labels = folder / name.replace("images", "labels").replace("idx3", "idx1")
    images.write_bytes(encode(mutate(seeds["images"], image_mutations), image_encoding, where))
    labels.write_bytes(encode(mutate(seeds["labels"], label_mutations), label_encoding, where // 3))
    dataset = check_parser(lambda: resolve_dataset(str(images), download=False), (IdxFormatError, DatasetError),
                           (str(images), str(labels)), max_bytes=MEMORY_BOUND, max_seconds=SECONDS_BOUND)
    event("read" if dataset is not None else "refused")
    if dataset is not None:
        assert dataset.images.dtype == np.uint8 and dataset.images.shape[1:] == (28, 28) and len(dataset) > 0
        assert dataset.labels is not None and dataset.labels.shape == (len(dataset),)
        assert dataset.labels.min() >= 0 and dataset.labels.max() <= 9
