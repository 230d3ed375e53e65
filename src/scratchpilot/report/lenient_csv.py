"""A forgiving reader for damaged Kaggle digit CSVs: it lists every problem instead of stopping at the first.

:func:`scratchpilot.data.read_kaggle_csv` is deliberately strict (training on a damaged file must fail).
A data-quality report needs the opposite: read what can be read, and say exactly what is wrong and where.
:func:`read_csv_lenient` returns the usable rows plus one :class:`CsvProblem` per bad value or line
(missing value, not an integer, out of range, wrong number of columns). Rows with any problem are left
out of the returned arrays and counted, so every analysis runs on clean rows only.

The values are parsed a chunk of lines at a time with NumPy string ufuncs (``numpy.strings``), so a file
the size of Kaggle's train.csv takes seconds, not minutes.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

N_PIXELS = 784
N_CLASSES = 10
_MISSING_SPELLINGS = (b"", b"na", b"nan", b"null", b"none", b"?", b"-")
# about 100 to 500 KiB of text: the vectorised pass's temporaries then stay in the CPU cache
_LINES_PER_CHUNK = 256
# longer digit strings are out of range anyway; capping keeps the integer conversion from overflowing
_MAX_DIGITS = 9


@dataclass(frozen=True)
class CsvProblem:
    """One problem in a CSV file. ``line`` and ``column`` are 1-based; ``column`` is None for a whole line."""

    kind: str  # "missing", "not_integer", "out_of_range", "column_count", "header", "empty_line"
    line: int
    column: int | None
    column_name: str | None
    value: str
    message: str

    def to_dict(self) -> dict:
        return {"kind": self.kind, "line": self.line, "column": self.column, "column_name": self.column_name,
                "value": self.value, "message": self.message}


@dataclass
class LenientCsv:
    """What :func:`read_csv_lenient` could read.

    Attributes
    ----------
    pixels : uint8 (N, 784), the rows without problems.
    labels : int64 (N,) or None for a test-format file.
    line_numbers : int64 (N,), the 1-based file line of each returned row.
    n_data_lines : data lines in the file (header excluded), good or bad.
    problems : every problem found, in file order (at most ``max_problems``; ``n_problems`` counts all).
    problem_counts : number of problems of each kind.
    """

    path: Path
    pixels: np.ndarray
    labels: np.ndarray | None
    line_numbers: np.ndarray
    n_data_lines: int
    problems: list[CsvProblem] = field(default_factory=list)
    n_problems: int = 0
    problem_counts: dict[str, int] = field(default_factory=dict)

    @property
    def n_bad_lines(self) -> int:
        return self.n_data_lines - len(self.pixels)


class _Collector:
    """Keeps the first ``limit`` problems and counts all of them by kind."""

    def __init__(self, limit: int):
        self.limit, self.items, self.counts, self.total = limit, [], {}, 0

    def add(self, problem: CsvProblem) -> None:
        self.total += 1
        self.counts[problem.kind] = self.counts.get(problem.kind, 0) + 1
        if len(self.items) < self.limit:
            self.items.append(problem)


def read_csv_lenient(path, max_problems: int = 1000) -> LenientCsv:
    """Read a Kaggle digits CSV (train or test format, plain or gzip), collecting problems instead of raising.

    Parameters
    ----------
    path : the file.
    max_problems : how many problems to keep in detail (all are counted).

    Raises
    ------
    ValueError
        Only when nothing can be read: an empty file, or no header and no line of 784 or 785 values to
        tell the format from.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    raw = raw.removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n")
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        raise ValueError(f"{path}: empty file")

    problems = _Collector(max_problems)
    first = [name.strip().strip(b'"').decode("utf-8", "replace") for name in lines[0].split(b",")]
    if first[0] in ("label", "pixel0"):
        has_labels, data_start = first[0] == "label", 1
        columns = ("label",) * has_labels + tuple(f"pixel{i}" for i in range(N_PIXELS))
        expected = list(columns)
        if first != expected:
            wrong = next((i for i, (a, b) in enumerate(zip(first, expected, strict=False)) if a != b),
                         min(len(first), len(expected)))
            problems.add(CsvProblem("header", 1, wrong + 1, None, ",".join(first[wrong:wrong + 1]),
                                    f"header column {wrong + 1} should be "
                                    f"{expected[wrong] if wrong < len(expected) else 'absent'}"))
    else:
        # no header: tell the format from the first line's width
        width = len(first)
        if width not in (N_PIXELS, N_PIXELS + 1):
            raise ValueError(f"{path}, line 1: neither a header (label,pixel0,... or pixel0,...) nor a row of "
                             f"784 or 785 values ({width} fields); cannot tell the format")
        has_labels, data_start = width == N_PIXELS + 1, 0
        problems.add(CsvProblem("header", 1, None, None, first[0], "no header line; format guessed from the "
                                                                    f"first line's {width} columns"))
    names = ("label",) * has_labels + tuple(f"pixel{i}" for i in range(N_PIXELS))
    n_columns = len(names)

    pixel_blocks, label_blocks, line_blocks = [], [], []
    for start in range(data_start, len(lines), _LINES_PER_CHUNK):
        chunk = lines[start:start + _LINES_PER_CHUNK]
        values, good_lines = _parse_chunk(chunk, start + 1, names, has_labels, problems)
        pixel_blocks.append(values[:, n_columns - N_PIXELS:])
        if has_labels:
            label_blocks.append(values[:, 0].astype(np.int64))
        line_blocks.append(good_lines)

    def joined(blocks, shape, dtype):
        return np.concatenate(blocks) if blocks else np.empty(shape, dtype)

    return LenientCsv(
        path=path,
        pixels=np.ascontiguousarray(joined(pixel_blocks, (0, N_PIXELS), np.uint8)),
        labels=joined(label_blocks, (0,), np.int64) if has_labels else None,
        line_numbers=joined(line_blocks, (0,), np.int64),
        n_data_lines=len(lines) - data_start,
        problems=sorted(problems.items, key=lambda p: (p.line, p.column or 0)), n_problems=problems.total,
        problem_counts=dict(problems.counts))


def _parse_chunk(chunk: list[bytes], first_line: int, names: tuple[str, ...], has_labels: bool,
                 problems: _Collector) -> tuple[np.ndarray, np.ndarray]:
    """Parse whole lines; returns the values of the problem-free lines, uint8 (n, C), and their line numbers."""
    n_columns = len(names)
    shaped = []
    for offset, line in enumerate(chunk):
        line_no = first_line + offset
        if not line.strip():
            problems.add(CsvProblem("empty_line", line_no, None, None, "", "empty line"))
            continue
        n_fields = line.count(b",") + 1
        if n_fields != n_columns:
            problems.add(CsvProblem("column_count", line_no, min(n_fields, n_columns) + 1, None, "",
                                    f"{n_fields} columns, expected {n_columns}"))
            continue
        shaped.append(offset)
    if not shaped:
        return np.empty((0, n_columns), np.uint8), np.empty(0, np.int64)
    line_numbers = first_line + np.asarray(shaped, dtype=np.int64)
    text = b"\n".join(chunk[i] for i in shaped) + b"\n"
    values, irregular = _parse_plain_fields(np.frombuffer(text, dtype=np.uint8), len(shaped) * n_columns)
    values = values.reshape(len(shaped), n_columns)
    irregular = irregular.reshape(len(shaped), n_columns)
    upper = np.full(n_columns, 255, dtype=np.int64)
    if has_labels:
        upper[0] = N_CLASSES - 1
    bad = values > upper
    split_lines: dict[int, list[bytes]] = {}  # the few lines looked at field by field

    def field(row: int, col: int) -> bytes:
        if row not in split_lines:
            split_lines[row] = chunk[shaped[row]].split(b",")
        return split_lines[row][col]

    # the rare fields that are not 1 to 3 plain digits (" 7", "0007", "", "1.5"): classify them one by one
    for row, col in zip(*np.nonzero(irregular), strict=True):
        value = _plain_int(field(row, col))
        if value is None:
            bad[row, col] = True
        else:
            values[row, col] = value
            bad[row, col] = not 0 <= value <= upper[col]
    for row, col in zip(*np.nonzero(bad), strict=True):
        field_text = field(row, col).strip().decode("utf-8", "replace")
        what = "label" if has_labels and col == 0 else "pixel value"
        if field_text.lower().encode() in _MISSING_SPELLINGS:
            kind, message = "missing", f"missing {what}" + (f" ({field_text!r})" if field_text else "")
        elif _plain_int(field_text.encode()) is not None:
            kind, message = "out_of_range", f"{what} {field_text} is outside 0..{upper[col]}"
        else:
            kind, message = "not_integer", f"{what} {field_text[:24]!r} is not an integer"
        problems.add(CsvProblem(kind, int(line_numbers[row]), int(col) + 1, names[col], field_text[:24], message))
    keep = ~bad.any(axis=1)
    return values[keep].astype(np.uint8), line_numbers[keep]  # all kept values are 0..255


def _parse_plain_fields(buffer: np.ndarray, n_fields: int) -> tuple[np.ndarray, np.ndarray]:
    """Values of comma/newline separated fields that are 1 to 3 ASCII digits, vectorised.

    Returns int64 values (n_fields,) and a mask of the irregular fields (empty, longer, or holding any
    other character), whose value is left at 0 for the caller to look at.
    """
    separator = (buffer == ord(",")) | (buffer == ord("\n"))
    ends = np.flatnonzero(separator)
    assert len(ends) == n_fields, "lines were checked for their field count"
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts
    is_digit = (buffer >= ord("0")) & (buffer <= ord("9"))
    other = np.zeros(len(buffer) + 1, dtype=np.int32)
    np.cumsum(~is_digit & ~separator, out=other[1:])
    irregular = (lengths < 1) | (lengths > 3) | (other[ends] != other[starts])
    digit = np.zeros(len(buffer) + 2, dtype=np.int16)  # two leading zeros: index end-3 is valid for every field
    np.subtract(buffer, ord("0"), out=digit[2:], where=is_digit, casting="unsafe")
    values = (digit[ends + 1] + 10 * digit[ends] * (lengths >= 2)
              + 100 * digit[ends - 1] * (lengths >= 3)).astype(np.int64)
    values[irregular] = 0
    return values, irregular


def _plain_int(field: bytes) -> int | None:
    """The integer a field spells (surrounding spaces and a sign allowed), else None.

    Numbers of more than ``_MAX_DIGITS`` digits come back as +-10**_MAX_DIGITS: out of range either way,
    and no huge integer is built from a damaged file.
    """
    text = field.strip()
    digits = text[1:] if text[:1] in (b"+", b"-") else text
    if not digits.isdigit():
        return None
    if len(digits) > _MAX_DIGITS:
        return -(10**_MAX_DIGITS) if text[:1] == b"-" else 10**_MAX_DIGITS
    return int(text)
