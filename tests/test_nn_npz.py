"""The engine's one reader of ``.npz`` from outside (:mod:`scratchpilot.nn.npz`), on its own."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from scratchpilot.nn.npz import NpzError, NpzReader


def npz_bytes(compression=zipfile.ZIP_STORED, **members: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)
    return buffer.getvalue()


def npy(array: np.ndarray, version=None) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version)
    return buffer.getvalue()


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_reads_every_npy_version_and_fortran_order(version, compression):
    values = np.arange(24, dtype=">i4").reshape(2, 3, 4)
    data = npz_bytes(compression, c=npy(values, version), f=npy(np.asfortranarray(values), version))
    with NpzReader(data) as archive:
        assert archive.names == {"c", "f"} and archive.header("f").fortran
        np.testing.assert_array_equal(archive.read("c"), values)
        np.testing.assert_array_equal(archive.read("f"), values)
        target = np.empty((2, 3, 4), values.dtype)
        archive.read_into("f", target)
        np.testing.assert_array_equal(target, values)


def test_the_read_is_chunked_and_each_chunk_checked(monkeypatch):
    monkeypatch.setattr("scratchpilot.nn.npz.READ_CHUNK_BYTES", 16)
    seen = []
    with NpzReader(npz_bytes(a=npy(np.arange(10, dtype=np.float32)))) as archive:
        out = archive.read("a", check=lambda chunk: seen.append(chunk.tolist()))
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and out.tolist() == list(range(10))


def _header_only(shape, descr="<f8") -> bytes:
    text = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


@pytest.mark.parametrize("members, problem", [
    ({"a": _header_only((10 ** 12,))}, r"claims shape \(1000000000000,\) \(8,000,000,000,000 bytes of data\), "
                                        r"its entry holds 0"),
    ({"a": npy(np.zeros(3)) + bytes(70_000)}, "unpacks to 70,152 bytes for 24 bytes of data"),
    ({"a": npy(np.array([{"x": 1}], dtype=object))}, r"holds Python objects .*never unpickled"),
    ({"a": _header_only((2,), ("<f4", (2,)))}, "unsupported dtype"),
])
def test_headers_are_checked_against_the_entry_before_allocating(members, problem):
    with NpzReader(npz_bytes(**members)) as archive, pytest.raises(NpzError, match=problem) as caught:
        archive.read("a")
    assert caught.value.entry == "a.npy" and caught.value.kind == "refused"


def test_a_cap_given_by_the_caller_is_checked_before_reading():
    with NpzReader(npz_bytes(a=npy(np.zeros(100)))) as archive:
        with pytest.raises(NpzError, match=r"\(800 bytes of data\), more than the 799 bytes allowed here"):
            archive.read("a", max_bytes=799)
        assert archive.read("a", max_bytes=800).shape == (100,)


def _patch_sizes(data: bytes, file_size: int) -> bytes:
    """The first entry's unpacked size rewritten, in its local header and its directory entry."""
    raw = bytearray(data)
    central = raw.index(b"PK\x01\x02")
    raw[22:26] = raw[central + 24:central + 28] = file_size.to_bytes(4, "little")
    return bytes(raw)


@pytest.mark.parametrize("data, problem", [
    (_patch_sizes(npz_bytes(zipfile.ZIP_DEFLATED, a=npy(np.zeros(1000))), 2_000_000_000),
     r"claims to unpack \d+ bytes to 2,000,000,000, impossible for deflated data"),
    (_patch_sizes(npz_bytes(a=npy(np.zeros(10))), 100), "impossible for stored data"),
    (npz_bytes(zipfile.ZIP_BZIP2, a=npy(np.zeros(3))), "compression method 12"),
])
def test_zip_directories_that_lie_are_refused_on_opening(data, problem):
    with pytest.raises(NpzError, match=problem) as caught:
        NpzReader(data)
    assert caught.value.entry == "a.npy"


@pytest.mark.parametrize("data, kind, problem", [
    (b"frames from Tuesday", "not-npz", "not an .npz archive: it starts with b'frames f'"),
    (npy(np.zeros(3)), "not-npz", "a single .npy array"),
    (npz_bytes(a=npy(np.zeros(3)))[:60], "damaged", "BadZipFile"),
])
def test_what_is_not_a_readable_zip_says_so(data, kind, problem):
    with pytest.raises(NpzError, match=problem) as caught:
        NpzReader(data)
    assert caught.value.kind == kind


def test_a_corrupted_member_is_damaged_naming_it(tmp_path):
    data = bytearray(npz_bytes(a=npy(np.arange(50.0))))
    data[200] ^= 0xFF  # in the data: the CRC fails once the member is read to its end
    path = tmp_path / "x.npz"
    path.write_bytes(bytes(data))
    with NpzReader(path) as archive, pytest.raises(NpzError, match="a.npy: BadZipFile: Bad CRC-32") as caught:
        archive.read("a")
    assert caught.value.kind == "damaged"
