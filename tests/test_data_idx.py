"""IDX reading and writing: real MNIST files, round trips for every type code, and damaged files."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from scratchpilot.data import IdxFormatError, read_idx, write_idx

MNIST_TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # shared/data/README.md


def test_reads_real_mnist_test_set(shared_data):
    images = read_idx(shared_data / "mnist" / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(labels).tolist() == MNIST_TEST_CLASS_COUNTS
    assert images.max() == 255 and images.min() == 0
    assert images.flags.writeable and images.flags.c_contiguous


def test_uncompressed_file_reads_the_same(shared_data, tmp_path):
    raw = tmp_path / "t10k-labels-idx1-ubyte"
    raw.write_bytes(gzip.decompress((shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    np.testing.assert_array_equal(read_idx(raw), read_idx(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz"))


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_round_trip_every_type_code(tmp_path, dtype, name):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None:
        array = rng.integers(info.min, info.max, size=(3, 4, 5), endpoint=True, dtype=dtype)
    else:
        array = rng.standard_normal((3, 4, 5)).astype(dtype)
    back = read_idx(write_idx(tmp_path / name, array))
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_header_is_the_mnist_layout(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    data = write_idx(tmp_path / "images.idx", images).read_bytes()
    assert data[:16] == bytes.fromhex("00000803") + struct.pack(">3I", 2, 28, 28)
    assert data[16:] == images.tobytes()
    labels = write_idx(tmp_path / "labels.idx", np.array([7, 2, 1], dtype=np.uint8)).read_bytes()
    assert labels == bytes.fromhex("00000801") + struct.pack(">I", 3) + bytes([7, 2, 1])
    # multi-byte elements are stored big-endian
    shorts = write_idx(tmp_path / "shorts.idx", np.array([1, -2], dtype=np.int16)).read_bytes()
    assert shorts[:4] == bytes.fromhex("00000b01") and shorts[8:] == bytes.fromhex("0001fffe")


def test_gzip_is_detected_from_content_not_name(tmp_path):
    array = np.arange(10, dtype=np.uint8)
    plain = write_idx(tmp_path / "plain.idx", array)
    misnamed = tmp_path / "misnamed.idx.gz"
    misnamed.write_bytes(plain.read_bytes())
    np.testing.assert_array_equal(read_idx(misnamed), array)


def _idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    return struct.pack(f">HBB{array.ndim}I", 0, code, array.ndim, *array.shape) + array.tobytes()


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("content, message", [
    (b"\x01\x02\x08\x03" + bytes(12), "bad magic number 0x01020803"),
    (b"\x00\x00\x07\x01" + bytes(8), "bad magic number 0x00000701"),  # unknown type code
    (b"\x00\x00\x08\x00", "bad magic number"),  # zero dimensions
    (b"\x00\x00", "truncated: 2 bytes"),
    (b"\x00\x00\x08\x03" + struct.pack(">2I", 2, 28), "truncated in the header"),
    (_idx_bytes(np.zeros((2, 28, 28), np.uint8))[:-100], "truncated: header declares 2x28x28 uint8 = 1568"),
    (_idx_bytes(np.zeros((3,), np.uint8)) + b"\x00", "too long"),
])
def test_damaged_files_are_named_and_explained(tmp_path, content, message, compress):
    path = tmp_path / ("bad.idx.gz" if compress else "bad.idx")
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(IdxFormatError) as error:
        read_idx(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_cut_gzip_stream(shared_data, tmp_path):
    whole = (shared_data / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes()
    cut = tmp_path / "cut.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(IdxFormatError, match="damaged gzip data"):
        read_idx(cut)


def test_absurd_dimensions_in_small_gzip_fail_before_allocating(tmp_path):
    path = tmp_path / "huge.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + struct.pack(">3I", 2**31, 2**31, 4)))
    with pytest.raises(IdxFormatError, match="impossible for a"):
        read_idx(path)


def test_write_rejects_unsupported_types(tmp_path):
    with pytest.raises(ValueError, match="cannot write a uint16"):
        write_idx(tmp_path / "x.idx", np.zeros(3, np.uint16))
    with pytest.raises(ValueError, match="0 dimensions"):
        write_idx(tmp_path / "x.idx", np.uint8(3))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- outside files at their worst


def test_zero_images_read_as_an_empty_array(tmp_path):
    # a valid IDX file: reading it is not the place to refuse it (the datasets refuse an empty one)
    path = write_idx(tmp_path / "empty-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    images = read_idx(path)
    assert images.shape == (0, 28, 28) and images.dtype == np.uint8


@pytest.mark.parametrize("ndim", [33, 64, 255])
def test_too_many_dimensions_are_named(tmp_path, ndim):
    path = tmp_path / "deep.idx"
    path.write_bytes(struct.pack(f">HBB{ndim}I", 0, 0x08, ndim, *([1] * ndim)) + b"\x07")
    with pytest.raises(IdxFormatError) as error:
        read_idx(path)
    assert str(error.value).startswith(f"{path}: header declares {ndim} dimensions")
    assert "at most 32" in str(error.value)


@pytest.mark.parametrize("compress", [False, True])
def test_reads_a_pipe_once(compress):
    from support import pipe_path

    array = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    data = _idx_bytes(array)
    with pipe_path(gzip.compress(data) if compress else data) as path:
        np.testing.assert_array_equal(read_idx(path), array)
    with pipe_path(data[:-5]) as path, pytest.raises(IdxFormatError, match="truncated: header declares 3x28x28"):
        read_idx(path)


def test_folder_and_missing_file_are_named(tmp_path):
    with pytest.raises(IsADirectoryError, match=f"{tmp_path}: is a folder, not a file"):
        read_idx(tmp_path)
    with pytest.raises(FileNotFoundError, match="no-such.idx: no such file"):
        read_idx(tmp_path / "no-such.idx")


def test_gzip_bomb_is_refused_before_allocating(tmp_path):
    from fuzzing import check_parser

    # 100,000 blank images: 78 MB of zeros in a 76 KB gzip file (1000:1), refused from the header alone
    path = tmp_path / "bomb-images-idx3-ubyte.gz"
    header = struct.pack(">HBB3I", 0, 0x08, 3, 100_000, 28, 28)
    path.write_bytes(gzip.compress(header + bytes(100_000 * 28 * 28), compresslevel=9))
    check_parser(lambda: read_idx(path), IdxFormatError, str(path), max_bytes=4 << 20)
    with pytest.raises(IdxFormatError, match="refused as a likely decompression bomb"):
        read_idx(path)


def test_size_limit_applies_to_plain_files_and_pipes(tmp_path):
    array = np.zeros((40, 28, 28), np.uint8)
    path = write_idx(tmp_path / "x.idx", array)
    assert read_idx(path, max_bytes=len(path.read_bytes())).shape == (40, 28, 28)
    with pytest.raises(IdxFormatError, match="more than (the )?1,000 bytes"):
        read_idx(path, max_bytes=1000)
    from support import pipe_path

    with pipe_path(gzip.compress(_idx_bytes(array))) as pipe, pytest.raises(IdxFormatError, match="1,000 bytes"):
        read_idx(pipe, max_bytes=1000)


def test_an_empty_shape_numpy_cannot_hold_is_named(tmp_path):
    # found by tests/test_fuzz_idx.py: a zero dimension makes the data empty, but NumPy refuses the shape
    path = tmp_path / "wide.idx"
    path.write_bytes(struct.pack(">HBB3I", 0, 0x0E, 3, 0, 2**32 - 1, 2**32 - 1))
    with pytest.raises(IdxFormatError, match=r"wide.idx: header declares 0x4294967295x4294967295 float64: too large"):
        read_idx(path)
