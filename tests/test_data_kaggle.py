"""Kaggle Digit Recognizer CSVs and submissions: format, round trips on real MNIST, every error class."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from scratchpilot.data import (
    CsvFormatError,
    read_idx,
    read_kaggle_csv,
    read_submission,
    write_kaggle_csv,
    write_submission,
)
from scratchpilot.data import kaggle as kaggle_module

TRAIN_HEADER = "label," + ",".join(f"pixel{i}" for i in range(784))
TEST_HEADER = ",".join(f"pixel{i}" for i in range(784))


@pytest.fixture(scope="module")
def mnist_slice(shared_data):
    """The first 300 MNIST test images, flat (300, 784) uint8, and their labels."""
    images = read_idx(shared_data / "mnist" / "t10k-images-idx3-ubyte.gz")[:300].reshape(300, 784)
    labels = read_idx(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz")[:300].astype(np.int64)
    return images, labels


def _row(label, pixels) -> str:
    return ",".join(str(v) for v in ([label] if label is not None else []) + list(pixels))


def _train_text(rows: list[str]) -> str:
    return TRAIN_HEADER + "\n" + "\n".join(rows) + "\n"


def _simple_rows(n: int = 3) -> list[str]:
    return [_row(i % 10, [(i * 7 + j) % 256 for j in range(784)]) for i in range(n)]


# ------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", ["train.csv", "train.csv.gz"])
def test_train_round_trip_on_real_mnist(tmp_path, mnist_slice, name):
    images, labels = mnist_slice
    path = write_kaggle_csv(tmp_path / name, images, labels)
    X, y = read_kaggle_csv(path)
    assert X.dtype == np.uint8 and X.shape == (300, 784) and X.flags.c_contiguous
    assert y.dtype == np.int64 and y.shape == (300,)
    np.testing.assert_array_equal(X, images)
    np.testing.assert_array_equal(y, labels)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temp file left behind


def test_written_text_is_the_kaggle_format(tmp_path, mnist_slice):
    images, labels = mnist_slice
    text = write_kaggle_csv(tmp_path / "train.csv", images[:2], labels[:2]).read_text()
    assert text == _train_text([_row(labels[0], images[0]), _row(labels[1], images[1])])
    text = write_kaggle_csv(tmp_path / "test.csv", images[:2].reshape(2, 28, 28)).read_text()
    assert text == TEST_HEADER + "\n" + _row(None, images[0]) + "\n" + _row(None, images[1]) + "\n"


def test_test_format_has_no_labels(tmp_path, mnist_slice):
    images, _ = mnist_slice
    X, y = read_kaggle_csv(write_kaggle_csv(tmp_path / "test.csv", images))
    assert y is None
    np.testing.assert_array_equal(X, images)


def test_expect_labels_checks_the_format(tmp_path, mnist_slice):
    images, labels = mnist_slice
    train = write_kaggle_csv(tmp_path / "train.csv", images[:3], labels[:3])
    test = write_kaggle_csv(tmp_path / "test.csv", images[:3])
    assert read_kaggle_csv(train, expect_labels=True)[1] is not None
    assert read_kaggle_csv(test, expect_labels=False)[1] is None
    with pytest.raises(CsvFormatError, match="line 1: expected the train format"):
        read_kaggle_csv(test, expect_labels=True)
    with pytest.raises(CsvFormatError, match="line 1: expected the test format"):
        read_kaggle_csv(train, expect_labels=False)


def test_many_chunks_agree_with_a_plain_python_parse(tmp_path, monkeypatch):
    # small chunks so that the fast path runs on many chunk boundaries
    monkeypatch.setattr(kaggle_module, "_CHUNK_BYTES", 5000)
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(40, 784), dtype=np.uint8)
    pixels[:, :100] = 0  # mostly short fields, as in real images
    labels = rng.integers(0, 10, size=40)
    path = tmp_path / "train.csv"
    path.write_text(_train_text([_row(lab, row) for lab, row in zip(labels, pixels, strict=True)]))
    X, y = read_kaggle_csv(path)
    np.testing.assert_array_equal(X, pixels)
    np.testing.assert_array_equal(y, labels)


def test_valid_files_never_need_the_line_by_line_reader(tmp_path, monkeypatch, mnist_slice):
    def strict_reader_called(*args, **kwargs):
        raise AssertionError("the vectorised parser turned down a valid chunk")

    monkeypatch.setattr(kaggle_module, "_CHUNK_BYTES", 20000)
    monkeypatch.setattr(kaggle_module, "_parse_chunk_strict", strict_reader_called)
    images, labels = mnist_slice
    for path in (write_kaggle_csv(tmp_path / "train.csv", images, labels),
                 write_kaggle_csv(tmp_path / "test.csv", images)):
        np.testing.assert_array_equal(read_kaggle_csv(path)[0], images)


@pytest.mark.parametrize("transform", [
    pytest.param(lambda t: t.replace(b"\n", b"\r\n"), id="crlf"),
    pytest.param(lambda t: b"\xef\xbb\xbf" + t, id="bom"),
    pytest.param(lambda t: t.rstrip(b"\n"), id="no-final-newline"),
    pytest.param(lambda t: t + b"\n\n", id="extra-final-newlines"),
    pytest.param(lambda t: b"\xef\xbb\xbf" + t.replace(b"\n", b"\r\n").rstrip(b"\r\n"), id="all-three"),
    pytest.param(gzip.compress, id="gzip"),
])
def test_line_end_bom_and_final_newline_variants(tmp_path, transform):
    text = _train_text(_simple_rows(4)).encode()
    reference = read_kaggle_csv(_write(tmp_path / "ref.csv", text))
    X, y = read_kaggle_csv(_write(tmp_path / "variant.csv", transform(text)))
    np.testing.assert_array_equal(X, reference[0])
    np.testing.assert_array_equal(y, reference[1])


def test_rarer_valid_spellings_are_accepted(tmp_path):
    # leading zeros and a plus sign are still the integers 0..255; the fast path leaves them to the strict one
    rows = _simple_rows(2)
    rows[1] = "+7," + ",".join(["0255", "007"] + ["0"] * 782)
    X, y = read_kaggle_csv(_write(tmp_path / "t.csv", _train_text(rows).encode()))
    assert y.tolist() == [0, 7]
    assert X[1, :3].tolist() == [255, 7, 0]


# ---------------------------------------------------------------------------------------------- errors


def _write(path, content: bytes):
    path.write_bytes(content)
    return path


def _error(tmp_path, content: str | bytes) -> CsvFormatError:
    path = _write(tmp_path / "bad.csv", content.encode() if isinstance(content, str) else content)
    with pytest.raises(CsvFormatError) as info:
        read_kaggle_csv(path)
    assert str(info.value).startswith(str(path))
    return info.value


def _with_field(row_index: int, column: int, value: str, n_rows: int = 5) -> str:
    rows = _simple_rows(n_rows)
    fields = rows[row_index].split(",")
    fields[column] = value
    rows[row_index] = ",".join(fields)
    return _train_text(rows)


@pytest.mark.parametrize("value, problem", [
    ("abc", "'abc' is not an integer"),
    ("1.5", "'1.5' is not an integer"),
    ("", "'' is not an integer"),
    (" 12", "' 12' is not an integer"),
    ("12\r3", "'12\\r3' is not an integer"),  # a lone carriage return
    ("256", "pixel value 256 is outside 0..255"),
    ("-1", "pixel value -1 is outside 0..255"),
    ("99999999999999999999", "pixel value 99999999999999999999 is outside 0..255"),
])
def test_bad_pixel_value_names_line_and_column(tmp_path, value, problem):
    error = _error(tmp_path, _with_field(row_index=2, column=11, value=value))
    assert f"line 4, column 12 (pixel10): {problem}" in str(error)
    assert (error.line, error.column) == (4, 12)


@pytest.mark.parametrize("value, problem", [("10", "label 10 is outside 0..9"), ("x", "'x' is not an integer")])
def test_bad_label_names_line_and_column(tmp_path, value, problem):
    error = _error(tmp_path, _with_field(row_index=0, column=0, value=value))
    assert f"line 2, column 1 (label): {problem}" in str(error)


def test_error_in_a_late_chunk_has_the_right_line(tmp_path, monkeypatch):
    monkeypatch.setattr(kaggle_module, "_CHUNK_BYTES", 4000)
    error = _error(tmp_path, _with_field(row_index=37, column=784, value="300", n_rows=40))
    assert "line 39, column 785 (pixel783): pixel value 300 is outside 0..255" in str(error)


def test_first_error_in_file_order_is_reported(tmp_path):
    rows = _simple_rows(6)
    rows[1] = "12," + rows[1].split(",", 1)[1]  # bad label on line 3
    rows[4] = rows[4] + ",5"                    # extra column on line 6
    assert "line 3, column 1 (label): label 12" in str(_error(tmp_path, _train_text(rows)))


def test_missing_column(tmp_path):
    rows = _simple_rows(4)
    rows[2] = rows[2].rsplit(",", 1)[0]
    error = _error(tmp_path, _train_text(rows))
    assert "line 4, column 785 (pixel783): expected 785 columns, found 784" in str(error)


def test_extra_column(tmp_path):
    rows = _simple_rows(4)
    rows[0] += ",0"
    assert "line 2, column 786: expected 785 columns, found 786" in str(_error(tmp_path, _train_text(rows)))


def test_empty_line_inside_the_data(tmp_path):
    rows = _simple_rows(4)
    rows.insert(2, "")
    assert "line 4: empty line" in str(_error(tmp_path, _train_text(rows)))


@pytest.mark.parametrize("header, where", [
    ("label,pixel0,pixel2," + ",".join(f"pixel{i}" for i in range(3, 784)), "line 1, column 3: header column "
                                                                             "should be 'pixel1', found 'pixel2'"),
    ("image," + TEST_HEADER, "line 1, column 1: header must start with 'label' (train format) or 'pixel0'"),
    (TRAIN_HEADER.rsplit(",", 1)[0], "line 1, column 785: header has 784 columns, expected 785"),
    (TRAIN_HEADER + ",pixel784", "line 1, column 786: header has 786 columns, expected 785"),
])
def test_wrong_header(tmp_path, header, where):
    assert where in str(_error(tmp_path, header + "\n" + "\n".join(_simple_rows(2)) + "\n"))


def test_missing_header_is_recognised(tmp_path):
    error = _error(tmp_path, "\n".join(_simple_rows(2)) + "\n")
    assert "line 1, column 1" in str(error) and "no header line?" in str(error)


@pytest.mark.parametrize("content", [b"", b"\n\n", b"\xef\xbb\xbf", b"\r\n"])
def test_empty_file(tmp_path, content):
    assert str(_error(tmp_path, content)).endswith("bad.csv: empty file")


def test_header_without_rows(tmp_path):
    assert "line 2: no data rows after the header" in str(_error(tmp_path, TRAIN_HEADER + "\r\n"))


def test_damaged_gzip(tmp_path):
    whole = gzip.compress(_train_text(_simple_rows(30)).encode())
    assert "damaged gzip data" in str(_error(tmp_path, whole[: len(whole) // 2]))


def test_writer_validates_its_input(tmp_path, mnist_slice):
    images, labels = mnist_slice
    with pytest.raises(ValueError, match="uint8"):
        write_kaggle_csv(tmp_path / "x.csv", images.astype(np.float32))
    with pytest.raises(ValueError, match="labels must be 0..9"):
        write_kaggle_csv(tmp_path / "x.csv", images[:2], np.array([1, 10]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        write_kaggle_csv(tmp_path / "x.csv", images[:2], labels[:3])
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ submissions


def test_submission_format(tmp_path):
    path = write_submission(tmp_path / "submission.csv", np.array([7, 2, 1, 0]))
    assert path.read_bytes() == b"ImageId,Label\n1,7\n2,2\n3,1\n4,0\n"
    assert read_submission(path, expected_rows=4).tolist() == [7, 2, 1, 0]


def test_submission_write_is_atomic_and_replaces(tmp_path):
    path = tmp_path / "submission.csv"
    write_submission(path, np.zeros(5, dtype=np.int64))
    write_submission(path, np.arange(10))
    assert read_submission(path).tolist() == list(range(10))
    with pytest.raises(ValueError, match=r"labels\[1\] is 12"):
        write_submission(path, np.array([3, 12]))
    with pytest.raises(ValueError, match="1-D integer"):
        write_submission(path, np.array([0.5]))
    assert read_submission(path).tolist() == list(range(10))  # untouched by the failed writes
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


def test_reads_kaggle_sample_submission(shared_data):
    # the real Kaggle file: CRLF line ends, 28000 rows, every label 0
    labels = read_submission(shared_data / "kaggle-digits" / "sample_submission.csv.gz", expected_rows=28000)
    assert labels.shape == (28000,) and labels.dtype == np.int64 and not labels.any()


@pytest.mark.parametrize("content, where", [
    ("Id,Label\n1,3\n", "line 1: header must be 'ImageId,Label'"),
    ("ImageId,Label\n1,3\n3,4\n", "line 3, column 1 (ImageId): ImageId should be 2, found '3'"),
    ("ImageId,Label\n1,3\n2,12\n", "line 3, column 2 (Label): label '12' is not a digit 0..9"),
    ("ImageId,Label\n1,3,4\n", "line 2: expected 2 columns, found 3"),
    ("ImageId,Label\n", "line 2: no rows after the header"),
])
def test_bad_submission(tmp_path, content, where):
    path = _write(tmp_path / "sub.csv", content.encode())
    with pytest.raises(CsvFormatError) as info:
        read_submission(path)
    assert str(info.value).startswith(f"{path}, {where}")


def test_submission_row_count_checked(tmp_path):
    path = write_submission(tmp_path / "s.csv", np.array([1, 2, 3]))
    with pytest.raises(CsvFormatError, match="3 rows, expected 28000"):
        read_submission(path, expected_rows=28000)


# --------------------------------------------------------------------------- outside files at their worst


@pytest.mark.parametrize("compress", [False, True])
def test_reads_a_pipe_once(compress):
    from support import pipe_path

    text = _train_text(_simple_rows(40)).encode()
    reference = read_kaggle_csv_bytes(text)
    with pipe_path(gzip.compress(text) if compress else text) as path:
        X, y = read_kaggle_csv(path)
    np.testing.assert_array_equal(X, reference[0])
    np.testing.assert_array_equal(y, reference[1])


def read_kaggle_csv_bytes(text: bytes):
    """An independent parse of a valid train CSV."""
    rows = [list(map(int, line.split(b","))) for line in text.splitlines()[1:] if line]
    values = np.array(rows, dtype=np.int64)
    return values[:, 1:].astype(np.uint8), values[:, 0]


def _zero_rows_gzip(path, megabytes: int, header: str = TRAIN_HEADER):
    """A gzip "bomb": ``megabytes`` of blank-image rows, compressed about 500:1, written block by block."""
    import zlib

    block = ("0," * 784 + "0\n").encode() * 640  # 1 MB
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    with open(path, "wb") as fh:
        fh.write(packer.compress((header + "\n").encode()))
        for _ in range(megabytes):
            fh.write(packer.compress(block))
        fh.write(packer.flush())
    return path


def test_decompression_bomb_is_refused_with_bounded_memory(tmp_path):
    from fuzzing import check_parser

    # 100 MB of text in a ~200 KB file: the old reader unpacked it whole (text and values, > 150 MB)
    bomb = _zero_rows_gzip(tmp_path / "bomb.csv.gz", 100)
    assert bomb.stat().st_size < 400_000
    check_parser(lambda: read_kaggle_csv(bomb), CsvFormatError, str(bomb), max_bytes=48 << 20, max_seconds=10)
    with pytest.raises(CsvFormatError, match="refused as a likely decompression bomb"):
        read_kaggle_csv(bomb)


def test_size_limit(tmp_path, monkeypatch):
    from scratchpilot.data import _files

    text = _train_text(_simple_rows(30)).encode()
    plain = _write(tmp_path / "t.csv", text)
    packed = _write(tmp_path / "t.csv.gz", gzip.compress(text))
    assert len(read_kaggle_csv(plain, max_bytes=len(text))[0]) == 30
    with pytest.raises(CsvFormatError, match=r"t.csv: holds more than 20,000 bytes, the most an input may hold"):
        read_kaggle_csv(plain, max_bytes=20_000)
    monkeypatch.setattr(_files, "MAX_INPUT_BYTES", 20_000)  # the default every reader gets
    with pytest.raises(CsvFormatError, match=r"t.csv.gz: unpacks to more than 20,000 bytes.*decompression bomb"):
        read_kaggle_csv(packed)


def test_huge_fields_and_lines_fail_fast_and_small(tmp_path):
    from fuzzing import check_parser

    # a 5,000-digit pixel: out of range, without building the integer (Python refuses to past 4,300 digits)
    error = _error(tmp_path, _with_field(row_index=1, column=5, value="7" * 5000))
    assert "line 3, column 6 (pixel4): pixel value 777777777777777777777777... is outside 0..255" in str(error)
    long_but_valid = _write(tmp_path / "zeros.csv", _with_field(1, 5, "0" * 5000 + "12").encode())
    assert read_kaggle_csv(long_but_valid)[0][1, 4] == 12
    # millions of commas in one line, and in the header: counted, not split into millions of strings
    for text in (_train_text(_simple_rows(2)) + "," * 4_000_000 + "\n", "label" + "," * 4_000_000 + "\n"):
        path = _write(tmp_path / "wide.csv", text.encode())
        check_parser(lambda path=path: read_kaggle_csv(path), CsvFormatError, str(path), max_bytes=24 << 20)


def test_folder_named_like_a_csv(tmp_path):
    folder = tmp_path / "x.csv"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="x.csv: is a folder, not a file"):
        read_kaggle_csv(folder)
