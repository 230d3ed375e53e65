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

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data._files import GZIP_ERRORS, InputFile, InputTooLarge, read_problem

N_PIXELS = 784
N_CLASSES = 10
_MISSING_SPELLINGS = (b"", b"na", b"nan", b"null", b"none", b"?", b"-")
# about 100 to 500 KiB of text: the vectorised pass's temporaries then stay in the CPU cache
_LINES_PER_CHUNK = 256
# ... and never much more: the temporaries take about ten times the chunk's text
_CHUNK_BYTES = 1 << 19
# a line longer than this cannot be 784 or 785 sensible values: its fields are looked at one by one
_LONG_LINE = 1 << 16
# longer digit strings are out of range anyway; capping keeps the integer conversion from overflowing
_MAX_DIGITS = 9


@dataclass(frozen=True)
class CsvProblem:
    """One problem in a CSV file. ``line`` and ``column`` are 1-based; ``column`` is None for a whole line."""

    kind: str  # "missing", "not_integer", "out_of_range", "column_count", "header", "empty_line", "damaged"
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


def read_csv_lenient(path, max_problems: int = 1000, max_bytes: int | None = None) -> LenientCsv:
    """Read a Kaggle digits CSV (train or test format, plain or gzip), collecting problems instead of raising.

    The file is read once, line by line (a pipe works too), under the same size and decompression-ratio
    bound as the strict reader (:class:`scratchpilot.data._files.InputFile`). Gzip data that breaks off
    (a truncated download) keeps the lines before the break and adds a ``damaged`` problem.

    Parameters
    ----------
    path : the file.
    max_problems : how many problems to keep in detail (all are counted).
    max_bytes : the most text the file may hold once decompressed (default ``MAX_INPUT_BYTES``).

    Raises
    ------
    ValueError
        Only when nothing can be read, with the file in the message: an empty file, damaged gzip data before
        the first line ends, more text than ``max_bytes`` (a decompression bomb), or no header and no line
        of 784 or 785 values to tell the format from. OSError when the file cannot be opened.
    """
    path = Path(path)
    problems = _Collector(max_problems)
    try:
        with InputFile(path, max_bytes) as source:
            lines = iter(source.stream)
            try:
                first_line = _strip_line_end(next(lines, b"").removeprefix(b"\xef\xbb\xbf"))
                if not first_line and source.stream.peek(1) == b"":
                    raise ValueError(f"{path}: empty file")
            except GZIP_ERRORS as exc:
                raise ValueError(f"{path}: {read_problem(exc)}") from exc
            has_labels, data_start = _format_of(path, first_line, problems)
            names = ("label",) * has_labels + tuple(f"pixel{i}" for i in range(N_PIXELS))
            blocks, n_lines = _read_data_lines(path, lines, first_line if data_start == 0 else None, names,
                                               has_labels, problems)
    except InputTooLarge as exc:
        raise ValueError(str(exc)) from exc
    n_columns = len(names)
    values = np.concatenate([b[0] for b in blocks]) if blocks else np.empty((0, n_columns), np.uint8)
    line_numbers = np.concatenate([b[1] for b in blocks]) if blocks else np.empty(0, np.int64)
    return LenientCsv(
        path=path,
        pixels=np.ascontiguousarray(values[:, n_columns - N_PIXELS:]),
        labels=values[:, 0].astype(np.int64) if has_labels else None,
        line_numbers=line_numbers,
        n_data_lines=n_lines,
        problems=sorted(problems.items, key=lambda p: (p.line, p.column or 0)), n_problems=problems.total,
        problem_counts=dict(problems.counts))


def _strip_line_end(line: bytes) -> bytes:
    """A line without its LF or CRLF (a lone CR stays, and is reported as part of its field)."""
    if line.endswith(b"\n"):
        line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
    return line


def _format_of(path: Path, first: bytes, problems: _Collector) -> tuple[bool, int]:
    """Train or test format, from the header or, without one, the first line's width; and the first data line."""
    # split a bounded number of times: a damaged first line may hold millions of commas
    names = [name.decode("utf-8", "replace").strip().strip('"') for name in first.split(b",", N_PIXELS + 2)]
    width = first.count(b",") + 1
    if names[0] in ("label", "pixel0"):
        has_labels = names[0] == "label"
        expected = ["label"] * has_labels + [f"pixel{i}" for i in range(N_PIXELS)]
        if names[:len(expected)] != expected or width != len(expected):
            wrong = next((i for i, (a, b) in enumerate(zip(names, expected, strict=False)) if a != b),
                         min(width, len(expected)))
            problems.add(CsvProblem("header", 1, wrong + 1, None, names[wrong][:24] if wrong < len(names) else "",
                                    f"header column {wrong + 1} should be "
                                    f"{expected[wrong] if wrong < len(expected) else 'absent'}"))
        return has_labels, 1
    if width not in (N_PIXELS, N_PIXELS + 1):
        raise ValueError(f"{path}, line 1: neither a header (label,pixel0,... or pixel0,...) nor a row of "
                         f"784 or 785 values ({width} fields); cannot tell the format")
    problems.add(CsvProblem("header", 1, None, None, names[0][:24], "no header line; format guessed from the "
                                                                     f"first line's {width} columns"))
    return width == N_PIXELS + 1, 0


def _read_data_lines(path: Path, lines, first_row: bytes | None, names: tuple[str, ...], has_labels: bool,
                     problems: _Collector) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """Parse the data lines, a chunk at a time; returns the (values, line numbers) blocks and the line count.

    ``first_row``: line 1 when the file has no header (it is data then).
    """
    blocks, chunk, chunk_bytes = [], [], 0
    line_no = 1 if first_row is None else 0  # of the last line read
    start = line_no + 1  # of the chunk's first line
    if first_row is not None:
        chunk, chunk_bytes, line_no = [first_row], len(first_row), 1

    def flush():
        nonlocal chunk, chunk_bytes, start
        if chunk:
            blocks.append(_parse_chunk(chunk, start, names, has_labels, problems))
        chunk, chunk_bytes, start = [], 0, line_no + 1

    try:
        for raw in lines:
            line_no += 1
            line = _strip_line_end(raw)
            chunk.append(line)
            chunk_bytes += len(line)
            if len(chunk) >= _LINES_PER_CHUNK or chunk_bytes >= _CHUNK_BYTES:
                flush()
    except GZIP_ERRORS as exc:
        # the lines before the break are kept; whatever the damaged stream held after them is lost
        flush()
        problems.add(CsvProblem("damaged", line_no + 1, None, None, "",
                                f"{read_problem(exc)} after line {line_no}: the rest of {path.name} cannot be "
                                "read"))
        return blocks, line_no - (1 if first_row is None else 0)
    flush()
    return blocks, line_no - (1 if first_row is None else 0)


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
    # the vectorised pass takes about ten times its text in temporaries: an absurdly long line (its 784 or 785
    # fields then hold thousands of characters each) is left to the field-by-field pass below instead
    normal = [row for row, i in enumerate(shaped) if len(chunk[i]) <= _LONG_LINE]
    values = np.zeros((len(shaped), n_columns), np.int64)
    irregular = np.ones((len(shaped), n_columns), bool)
    if normal:
        text = b"\n".join(chunk[shaped[row]] for row in normal) + b"\n"
        plain, odd = _parse_plain_fields(np.frombuffer(text, dtype=np.uint8), len(normal) * n_columns)
        values[normal], irregular[normal] = plain.reshape(-1, n_columns), odd.reshape(-1, n_columns)
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
        raw = field(row, col).strip()
        field_text = raw[:25].decode("utf-8", "replace")
        shown = field_text if len(raw) <= 24 else field_text[:24] + "..."
        what = "label" if has_labels and col == 0 else "pixel value"
        if raw.lower() in _MISSING_SPELLINGS:
            kind, message = "missing", f"missing {what}" + (f" ({field_text!r})" if field_text else "")
        elif _plain_int(raw) is not None:
            kind, message = "out_of_range", f"{what} {shown} is outside 0..{upper[col]}"
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

    Numbers of more than ``_MAX_DIGITS`` significant digits come back as +-10**_MAX_DIGITS: out of range
    either way, and no huge integer is built from a damaged file (leading zeros are read as the strict
    reader reads them).
    """
    text = field.strip()
    digits = text[1:] if text[:1] in (b"+", b"-") else text
    if not digits.isdigit():
        return None
    significant = digits.lstrip(b"0") or b"0"
    value = 10**_MAX_DIGITS if len(significant) > _MAX_DIGITS else int(significant)
    return -value if text[:1] == b"-" else value
