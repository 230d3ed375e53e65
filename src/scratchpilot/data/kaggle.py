"""Kaggle "Digit Recognizer" CSV files: the train/test data and the submission format.

- train: header ``label,pixel0,...,pixel783``, then one image a line: its label 0..9 and 784 pixels 0..255.
- test: the same without the ``label`` column.
- submission: header ``ImageId,Label``, then ``1,<label>``, ``2,<label>``, ... one line per test image.

Files may be plain or gzip-compressed, with LF or CRLF line ends, a UTF-8 byte-order mark and a
missing or extra final newline. Anything else is a :class:`CsvFormatError` naming the file, line and
column.

Parsing speed: the 42,000-line train file (76 MB) is parsed with vectorised NumPy byte operations
(see :func:`_parse_chunk_fast`), checked as strictly as the line-by-line reader that takes over for
any chunk of lines the fast path does not accept, so errors are reported exactly. It is faster than
``pandas.read_csv`` on the same file; ``bench/csv_parse.py`` measures both.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..util.files import atomic_write
from ._files import READ_ERRORS, InputFile, read_problem

N_PIXELS = 784
N_CLASSES = 10
PIXEL_COLUMNS = tuple(f"pixel{i}" for i in range(N_PIXELS))
TRAIN_HEADER = ("label", *PIXEL_COLUMNS)
TEST_HEADER = PIXEL_COLUMNS
SUBMISSION_HEADER = ("ImageId", "Label")

_BOM = b"\xef\xbb\xbf"
_COMMA, _NEWLINE, _ZERO, _NINE = ord(","), ord("\n"), ord("0"), ord("9")
_INTEGER = re.compile(rb"[+-]?[0-9]+")
# about 128 KiB of text per chunk keeps the fast path's temporaries in the CPU cache
_CHUNK_BYTES = 1 << 17


class CsvFormatError(ValueError):
    """A CSV file that does not follow the expected format.

    The message reads ``<file>, line L, column C (name): problem``; the parts are also attributes
    (``path``, ``line``, ``column``, 1-based; ``None`` where they do not apply).
    """

    def __init__(self, path, problem: str, line: int | None = None, column: int | None = None,
                 column_name: str | None = None):
        self.path, self.problem, self.line, self.column = Path(path), problem, line, column
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column}" + (f" ({column_name})" if column_name else "")
        super().__init__(f"{where}: {problem}")


# --------------------------------------------------------------------------------------------- reading


def read_kaggle_csv(path: str | os.PathLike, expect_labels: bool | None = None, max_bytes: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a Kaggle Digit Recognizer train or test CSV (``.csv`` or ``.csv.gz``, a file or a pipe).

    The file is read once, a chunk of lines at a time: memory holds the parsed values and one chunk of
    text, never the whole text.

    Parameters
    ----------
    path : the file; train or test format is recognised from the header.
    expect_labels : True to require the train format, False the test format, None to accept either.
    max_bytes : the most text the file may hold once decompressed (default
        :data:`scratchpilot.data._files.MAX_INPUT_BYTES`): a decompression bomb is refused while it is read.

    Returns
    -------
    X : uint8 (N, 784), pixels 0..255 in row-major 28x28 order.
    y : int64 (N,) labels 0..9, or None for a test-format file.

    Raises
    ------
    CsvFormatError
        Empty file, wrong header, wrong column count, a value that is not an integer, a pixel outside
        0..255 or a label outside 0..9, with file, line and column in the message; damaged gzip data or
        more text than ``max_bytes``. ``FileNotFoundError`` / ``IsADirectoryError`` when there is no such file.
    """
    path = Path(path)
    try:
        with InputFile(path, max_bytes) as source:
            chunks = _line_chunks(source.stream)
            first = next(chunks, None)
            if first is None:
                raise CsvFormatError(path, "empty file")
            header_end = first.index(b"\n")  # present: every chunk ends in one
            has_labels = _check_header(path, first[:header_end], expect_labels)
            columns = TRAIN_HEADER if has_labels else TEST_HEADER
            blocks, row = [], 0
            for chunk in itertools.chain([first[header_end + 1:]], chunks):
                block = _parse_lines(path, chunk, row + 2, columns, label_column=has_labels)
                blocks.append(block)
                row += len(block)
    except READ_ERRORS as exc:
        raise CsvFormatError(path, read_problem(exc)) from exc
    if not row:
        raise CsvFormatError(path, "no data rows after the header", line=2)
    values = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    if has_labels:
        return np.ascontiguousarray(values[:, 1:]), values[:, 0].astype(np.int64)
    return values, None


def _line_chunks(stream: BinaryIO) -> Iterator[bytes]:
    """The stream's text in pieces of whole lines (about ``_CHUNK_BYTES`` each), every piece ending in LF.

    As the format allows: the BOM is dropped, CRLF becomes LF, a missing final newline is added and
    empty lines at the very end are dropped. Nothing is yielded for an empty or all-blank file. A line
    longer than a chunk is gathered whole (the input's size bound limits how long it can be).
    """
    held: list[bytes] = []  # the unfinished last line, in the pieces read
    blank = b""  # blank text held back: given out only when more text follows it
    started, first = False, True
    while True:
        block = stream.read(_CHUNK_BYTES)
        if first:
            block, first = block.removeprefix(_BOM), False
        if block:
            cut = block.rfind(b"\n") + 1
            if not cut:
                held.append(block)
                continue
            piece = b"".join([*held, block[:cut]])
            held = [block[cut:]] if cut < len(block) else []
        else:
            piece = b"".join(held)
            if not piece:
                return
            piece += b"\n"
        if b"\r" in piece:
            # a lone CR that is not part of CRLF stays in and is reported as a bad character
            piece = piece.replace(b"\r\n", b"\n")
        piece = blank + piece
        if not started and piece.isspace():
            blank = piece  # only blank text so far: an empty file unless more follows
        else:
            body = piece.rstrip(b"\n")
            if body:
                started = True
                yield body + b"\n"
            blank = piece[len(body) + 1:] if body else piece
        if not block:
            return


def _read_csv_bytes(path: Path) -> bytes:
    """A small CSV's whole text as :func:`_line_chunks` gives it (for submissions, one short line a row)."""
    try:
        with InputFile(path) as source:
            text = b"".join(_line_chunks(source.stream))
    except READ_ERRORS as exc:
        raise CsvFormatError(path, read_problem(exc)) from exc
    if not text:
        raise CsvFormatError(path, "empty file")
    return text


def _header_names(line: bytes, most: int) -> list[str]:
    """The first ``most`` column names of a header line; surrounding spaces and double quotes are ignored."""
    names = line.split(b",", most)[:most]  # split a bounded number of times: the line may be huge
    return [name.decode("utf-8", errors="replace").strip().strip('"') for name in names]


def _check_header(path: Path, line: bytes, expect_labels: bool | None) -> bool:
    """Validate a train or test header line; returns True for the train format (with a label column)."""
    names = _header_names(line, len(TRAIN_HEADER))
    n_names = line.count(b",") + 1
    if names[0] == "label":
        expected, has_labels = TRAIN_HEADER, True
    elif names[0] == "pixel0":
        expected, has_labels = TEST_HEADER, False
    else:
        hint = " (the file has no header line?)" if names[0].isdigit() else ""
        raise CsvFormatError(path, f"header must start with 'label' (train format) or 'pixel0' (test "
                                   f"format), found {_shorten(names[0])}{hint}", line=1, column=1)
    for column, (name, want) in enumerate(zip(names, expected, strict=False), start=1):
        if name != want:
            raise CsvFormatError(path, f"header column should be {want!r}, found {_shorten(name)}",
                                 line=1, column=column)
    if n_names != len(expected):
        first_bad = min(n_names, len(expected)) + 1
        raise CsvFormatError(path, f"header has {n_names} columns, expected {len(expected)} "
                                   f"({expected[0]}, ..., {expected[-1]})", line=1, column=first_bad)
    if expect_labels is not None and expect_labels != has_labels:
        wanted = "train format (label,pixel0,...)" if expect_labels else "test format (pixel0,...)"
        found = "train" if has_labels else "test"
        raise CsvFormatError(path, f"expected the {wanted}, found the {found} format", line=1)
    return has_labels


def _parse_lines(path: Path, chunk: bytes, first_line: int, columns: tuple[str, ...],
                 label_column: bool) -> np.ndarray:
    """Parse whole data lines (each ending in a newline; line ``first_line`` first) into uint8 (N, C)."""
    if not chunk:
        return np.empty((0, len(columns)), dtype=np.uint8)
    values = None
    # the vectorised pass takes about ten times its text in temporaries: a chunk holding one huge line goes
    # to the line-by-line reader, which checks the field count before splitting anything
    if len(chunk) <= 2 * _CHUNK_BYTES:
        values = _parse_chunk_fast(np.frombuffer(chunk, dtype=np.uint8), len(columns))
    if values is None or (label_column and values[:, 0].max(initial=0) >= N_CLASSES):
        values = _parse_chunk_strict(path, chunk, first_line=first_line, columns=columns,
                                     label_column=label_column)
    return values


def _parse_chunk_fast(chunk: np.ndarray, n_columns: int) -> np.ndarray | None:
    """Vectorised parse of whole lines of unsigned integers 0..255; None if anything is unusual.

    Only the common, strictly valid case is accepted: every field 1 to 3 ASCII digits, fields
    separated by commas, ``n_columns`` fields a line, each line ending in a newline, values <= 255.
    On None the caller re-reads the chunk line by line, which either reports the first error
    precisely or accepts the rarer valid spellings (such as leading zeros beyond three digits).
    """
    if chunk[0] < _ZERO or chunk.max() > _NINE:
        return None
    is_digit = chunk >= _ZERO  # only digits, commas and newlines remain below '9'; checked just below
    is_separator = ~is_digit
    sep_pos = np.flatnonzero(is_separator)
    n_commas = np.count_nonzero(chunk == _COMMA)
    n_lines = np.count_nonzero(chunk == _NEWLINE)
    if n_commas + n_lines != len(sep_pos) or len(sep_pos) != n_lines * n_columns:
        return None  # a character other than digit/comma/newline, or a line with the wrong field count
    if not (chunk[sep_pos[n_columns - 1::n_columns]] == _NEWLINE).all():
        return None  # miscounted lines that happen to add up overall
    # every field 1..3 digits: no separator directly after a separator, no run of four digits
    if (is_separator[1:] & is_separator[:-1]).any():
        return None
    if (is_digit[3:] & is_digit[2:-1] & is_digit[1:-2] & is_digit[:-3]).any():
        return None
    # value of the (up to three digit) number ending at each byte; read where a field ends
    digit = (chunk - np.uint8(_ZERO)) * is_digit
    number = digit.astype(np.uint16)
    number[1:] += digit[:-1] * np.uint16(10)
    number[2:] += digit[:-2] * (is_digit[1:-1] * np.uint16(100))
    values = number[sep_pos - 1]
    if values.max() > 255:
        return None
    return values.astype(np.uint8).reshape(-1, n_columns)


def _parse_chunk_strict(path: Path, chunk: bytes, first_line: int, columns: tuple[str, ...],
                        label_column: bool) -> np.ndarray:
    """Line-by-line parse of ``chunk`` (whole lines) that raises at the first problem, with its position."""
    lines = chunk.split(b"\n")[:-1]
    values = np.empty((len(lines), len(columns)), dtype=np.uint8)
    for offset, line in enumerate(lines):
        line_no = first_line + offset
        if not line.strip():
            raise CsvFormatError(path, "empty line", line=line_no)
        n_fields = line.count(b",") + 1  # counted before splitting: a damaged line may hold millions
        if n_fields != len(columns):
            # point at the first column that is missing or extra
            first_bad = min(n_fields, len(columns)) + 1
            name = columns[first_bad - 1] if first_bad <= len(columns) else None
            raise CsvFormatError(path, f"expected {len(columns)} columns, found {n_fields}", line_no,
                                 first_bad, name)
        for column, field in enumerate(line.split(b",")):
            is_label = label_column and column == 0
            if not _INTEGER.fullmatch(field):
                raise CsvFormatError(path, f"{_shorten(field)} is not an integer", line_no, column + 1,
                                     columns[column])
            low, high = (0, N_CLASSES - 1) if is_label else (0, 255)
            # more than three significant digits is out of range: no huge integer is built from a damaged file
            digits = field.lstrip(b"+-").lstrip(b"0") or b"0"
            value = (-int(digits) if field[:1] == b"-" else int(digits)) if len(digits) <= 3 else None
            if value is None or not low <= value <= high:
                what = "label" if is_label else "pixel value"
                shown = value if value is not None else _shorten(field).strip("'")
                raise CsvFormatError(path, f"{what} {shown} is outside {low}..{high}", line_no, column + 1,
                                     columns[column])
            values[offset, column] = value
    return values


def _shorten(field: bytes | str, limit: int = 24) -> str:
    text = field.decode("utf-8", errors="replace") if isinstance(field, bytes) else field
    return repr(text if len(text) <= limit else text[:limit] + "...")


# --------------------------------------------------------------------------------------------- writing

# Every field is one of 256 values followed by ',' or '\n': a table of those strings, NUL-padded to
# four bytes, turns a block of codes into text with one gather and one bytes.translate to drop the NULs.
@functools.cache
def _field_text() -> np.ndarray:
    table = np.zeros((2, 256, 4), dtype=np.uint8)
    for sep_index, sep in enumerate((",", "\n")):
        for value in range(256):
            text = f"{value}{sep}".encode("ascii")
            table[sep_index, value, :len(text)] = np.frombuffer(text, dtype=np.uint8)
    return table.view("<u4").reshape(512)


_ROWS_PER_BLOCK = 1024


def write_kaggle_csv(path: str | os.PathLike, X: np.ndarray, y: np.ndarray | None = None) -> Path:
    """Write images in the Kaggle Digit Recognizer CSV format, atomically (gzip if ``path`` ends in .gz).

    Parameters
    ----------
    path : output file.
    X : uint8 (N, 784) or (N, 28, 28) pixels 0..255.
    y : int (N,) labels 0..9 for the train format (``label,pixel0,...``); None for the test format.
    """
    X = np.asarray(X)
    if X.dtype != np.uint8 or X.ndim < 2 or X[0].size != N_PIXELS:
        raise ValueError(f"X must be uint8 (N, 784) or (N, 28, 28), got {X.dtype} {X.shape}")
    X = X.reshape(len(X), N_PIXELS)
    if y is not None:
        y = np.asarray(y)
        if y.shape != (len(X),) or y.dtype.kind not in "iu":
            raise ValueError(f"y must be integer labels of shape ({len(X)},), got {y.dtype} {y.shape}")
        if len(y) and (y.min() < 0 or y.max() >= N_CLASSES):
            raise ValueError(f"labels must be 0..{N_CLASSES - 1}, found {y.min()}..{y.max()}")
    header = TRAIN_HEADER if y is not None else TEST_HEADER
    n_columns = len(header)
    codes = np.empty((min(len(X), _ROWS_PER_BLOCK), n_columns), dtype=np.uint16)
    with atomic_write(Path(path)) as fh:
        fh.write((",".join(header) + "\n").encode("ascii"))
        for first in range(0, len(X), _ROWS_PER_BLOCK):
            last = min(first + _ROWS_PER_BLOCK, len(X))
            block = codes[:last - first]
            if y is not None:
                block[:, 0] = y[first:last]
            block[:, n_columns - N_PIXELS:] = X[first:last]
            block[:, -1] += 256  # the last field of a line ends in a newline
            fh.write(_field_text()[block].tobytes().translate(None, b"\0"))
    return Path(path)


# ------------------------------------------------------------------------------------------ submission


def write_submission(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write a Kaggle submission (``ImageId,Label``, ImageId counting from 1), atomically.

    Parameters
    ----------
    labels : int (N,) predicted digits 0..9, in the order of the test file's rows.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    bad = np.flatnonzero((labels < 0) | (labels >= N_CLASSES))
    if len(bad):
        raise ValueError(f"labels must be 0..{N_CLASSES - 1}; labels[{bad[0]}] is {labels[bad[0]]}")
    lines = [",".join(SUBMISSION_HEADER)]
    lines += [f"{image_id},{label}" for image_id, label in enumerate(labels.tolist(), start=1)]
    with atomic_write(Path(path)) as fh:
        fh.write(("\n".join(lines) + "\n").encode("ascii"))
    return Path(path)


def read_submission(path: str | os.PathLike, expected_rows: int | None = None) -> np.ndarray:
    """Read and validate a Kaggle submission file; returns the labels, int64 (N,), in ImageId order.

    Checks the header ``ImageId,Label``, that ImageIds run 1, 2, ..., N in order, that every label is
    0..9 and (if given) that there are ``expected_rows`` rows. Raises :class:`CsvFormatError`.
    """
    path = Path(path)
    text = _read_csv_bytes(path)
    lines = text.split(b"\n")[:-1]
    header = _header_names(lines[0], 3)
    if header != list(SUBMISSION_HEADER):
        raise CsvFormatError(path, f"header must be 'ImageId,Label', found {_shorten(lines[0])}", line=1)
    if len(lines) < 2:
        raise CsvFormatError(path, "no rows after the header", line=2)
    labels = np.empty(len(lines) - 1, dtype=np.int64)
    for line_no, line in enumerate(lines[1:], start=2):
        fields = line.split(b",")
        if len(fields) != 2:
            raise CsvFormatError(path, f"expected 2 columns, found {len(fields)}", line=line_no)
        image_id, label = (f.strip() for f in fields)
        if image_id != str(line_no - 1).encode():
            raise CsvFormatError(path, f"ImageId should be {line_no - 1}, found {_shorten(image_id)} (ImageIds "
                                       "run 1, 2, ... in order)", line_no, 1, "ImageId")
        if not (len(label) == 1 and label.isdigit()):
            raise CsvFormatError(path, f"label {_shorten(label)} is not a digit 0..9", line_no, 2, "Label")
        labels[line_no - 2] = label[0] - _ZERO
    if expected_rows is not None and len(labels) != expected_rows:
        raise CsvFormatError(path, f"{len(labels)} rows, expected {expected_rows} (one per test image)")
    return labels
