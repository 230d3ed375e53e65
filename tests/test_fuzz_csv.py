"""Fuzzing the Kaggle CSV readers, strict and lenient: real MNIST rows, mutated (issue 14).

Each example starts from a valid Kaggle train or test CSV (six MNIST test images, as
:func:`write_kaggle_csv` writes them) and changes it the ways a hand edit, another tool or a damaged
download can: header names, cells (empty, signs, padding, leading zeros, huge numbers, NUL, non-ASCII),
row lengths, deleted, repeated and empty lines, line ends, a BOM, UTF-16 or Latin-1 text, NUL bytes, very
long lines and fields, a cut or a flipped byte; then gzips the result or not (and cuts or flips the gzip
stream), and gives it as a file or through a pipe.

The properties (:func:`fuzzing.check_parser`, within a memory and time bound):

- strict, :func:`read_kaggle_csv`: exactly the rows an independent reading of the format gives (the
  :func:`reference` below), or :class:`CsvFormatError` naming the file when that reading refuses it too;
- lenient, :func:`read_csv_lenient` (what ``report data`` falls back on): consistent rows, line numbers and
  problems, or a ValueError naming the file; and wherever the strict reader accepts a file, the same rows
  with no problem but empty lines at the very end.
"""

from __future__ import annotations

import gzip
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from fuzzing import check_parser, fuzz_settings
from hypothesis import event, given
from hypothesis import strategies as st
from support import pipe_path

from scratchpilot.data import CsvFormatError, read_idx, read_kaggle_csv, write_kaggle_csv
from scratchpilot.report.lenient_csv import read_csv_lenient

MEMORY_BOUND = 32 << 20  # the files are at most a few hundred kB
SECONDS_BOUND = 5.0
PIXELS = [f"pixel{i}" for i in range(784)]
INTEGER = re.compile(rb"[+-]?[0-9]+")


@pytest.fixture(scope="module")
def seeds(shared_data) -> dict[str, bytes]:
    """A train CSV (label first) and a test CSV of six MNIST test images, as the writer makes them."""
    images = read_idx(shared_data / "mnist" / "t10k-images-idx3-ubyte.gz")[:6].reshape(6, 784)
    labels = read_idx(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz")[:6].astype(np.int64)
    with tempfile.TemporaryDirectory() as folder:
        return {"train": write_kaggle_csv(Path(folder) / "train.csv", images, labels).read_bytes(),
                "test": write_kaggle_csv(Path(folder) / "test.csv", images).read_bytes()}


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="fuzz-csv-") as folder:
        yield Path(folder)


# ------------------------------------------------------------------------------------------- mutations

CELLS = st.sampled_from([b"", b"0", b"9", b"10", b"255", b"256", b"-1", b"-0", b"+7", b" 7", b"7 ", b"0007",
                         b"1.5", b"1e2", b"abc", b"NaN", b"na", b"?", b'"3"', b"9" * 30, b"0" * 5000 + b"12",
                         b"7" * 5000, b"\x00", b"\xc3\xa9", b"\xff", b"1\r", b"\r", b"12\r3", b"\t5"])
HEADER_NAMES = st.sampled_from([b"label", b"pixel0", b"pixel1", b"pixel783", b"pixel784", b"", b"Label",
                                b'"label"', b" pixel0 ", b"\xef\xbb\xbflabel", b"\xc2\xa0label", b"image"])

LINE_MUTATION = st.one_of(
    st.tuples(st.just("cell"), st.integers(1, 7), st.integers(0, 785), CELLS),
    st.tuples(st.just("header"), st.just(0), st.integers(0, 785), HEADER_NAMES),
    st.tuples(st.just("drop_cell"), st.integers(0, 7), st.integers(0, 785), st.none()),
    st.tuples(st.just("add_cell"), st.integers(0, 7), st.integers(0, 785), CELLS),
    st.tuples(st.just("drop_line"), st.integers(0, 7), st.none(), st.none()),
    st.tuples(st.just("repeat_line"), st.integers(0, 7), st.none(), st.none()),
    st.tuples(st.just("insert_line"), st.integers(0, 8),
              st.sampled_from([b"", b" ", b"\t", b"0", b"\x00", b"," * 784, b"," * 300_000,
                               b"0," * 100_000 + b"0", b"1" * 200_000]), st.none()),
)

TEXT_MUTATION = st.one_of(
    st.tuples(st.just("crlf"), st.booleans()),  # all line ends, or every other one
    st.tuples(st.just("bom"), st.none()),
    st.tuples(st.just("utf16"), st.none()),
    st.tuples(st.just("latin1"), st.none()),
    st.tuples(st.just("nul"), st.integers(0, 10**6)),
    st.tuples(st.just("strip_final_newline"), st.none()),
    st.tuples(st.just("final_newlines"), st.integers(2, 4)),
    st.tuples(st.just("cut"), st.integers(0, 10**6)),
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
)

ENCODING = st.sampled_from(["plain", "plain", "gzip", "gzip-cut", "gzip-flip"])


def mutate_lines(text: bytes, mutations) -> bytes:
    lines = text.split(b"\n")[:-1]
    for kind, row, column, value in mutations:
        row = min(row, len(lines) - 1) if kind != "insert_line" else min(row, len(lines))
        if not lines or row < 0:
            break
        if kind == "insert_line":
            lines.insert(row, column)
        elif kind == "drop_line":
            del lines[row]
        elif kind == "repeat_line":
            lines.insert(row, lines[row])
        else:
            fields = lines[row].split(b",")
            column %= len(fields) + (kind == "add_cell")
            if kind in ("cell", "header"):
                fields[column] = value
            elif kind == "drop_cell":
                del fields[column]
            else:
                fields.insert(column, value)
            lines[row] = b",".join(fields)
    return b"\n".join(lines) + b"\n"


def mutate_text(text: bytes, mutation) -> bytes:
    kind, *args = mutation
    if kind == "crlf":
        if args[0]:
            return text.replace(b"\n", b"\r\n")
        parts = text.split(b"\n")
        return b"".join(p + (b"\r\n" if i % 2 else b"\n") for i, p in enumerate(parts[:-1])) + parts[-1]
    if kind == "bom":
        return b"\xef\xbb\xbf" + text
    if kind == "utf16":
        return text.decode("latin-1").encode("utf-16")
    if kind == "latin1":
        return text.replace(b"pixel1,", "pixél1,".encode("latin-1"), 1)
    if kind == "nul" and text:
        at = args[0] % len(text)
        return text[:at] + b"\x00" + text[at:]
    if kind == "strip_final_newline":
        return text.rstrip(b"\n")
    if kind == "final_newlines":
        return text + b"\n" * args[0]
    if kind == "cut":
        return text[: args[0] % (len(text) + 1)]
    if kind == "flip" and text:
        flipped = bytearray(text)
        flipped[args[0] % len(text)] ^= args[1]
        return bytes(flipped)
    return text


def encode(text: bytes, encoding: str, where: int) -> bytes:
    if encoding == "plain":
        return text
    packed = bytearray(gzip.compress(text, mtime=0))
    if encoding == "gzip-cut":
        return bytes(packed[: where % len(packed)])
    packed[where % len(packed)] ^= 0x5A
    return bytes(packed)


# ---------------------------------------------------------------------------------- reference reading


def reference(text: bytes):
    """The format read plainly, line by line: (X, y) or None where a reader must refuse the text.

    BOM dropped, a missing final newline added, CRLF read as LF, empty lines at the very end ignored;
    header ``label,pixel0..pixel783`` or ``pixel0..pixel783`` (names stripped of spaces and quotes);
    every row that many integers (``[+-]?[0-9]+``), labels 0..9, pixels 0..255; at least one row.
    """
    text = text.removeprefix(b"\xef\xbb\xbf")
    if not text.endswith(b"\n"):
        text += b"\n"
    lines = text.replace(b"\r\n", b"\n").split(b"\n")[:-1]
    while lines and lines[-1] == b"":
        lines.pop()
    if len(lines) < 2:
        return None
    names = [n.decode("utf-8", "replace").strip().strip('"') for n in lines[0].split(b",")]
    if names not in (["label", *PIXELS], PIXELS):
        return None
    has_labels = names[0] == "label"
    rows = []
    for line in lines[1:]:
        fields = line.split(b",")
        if len(fields) != len(names) or not all(INTEGER.fullmatch(f) for f in fields):
            return None
        values = [int(f.lstrip(b"+-").lstrip(b"0") or b"0") * (-1 if f[:1] == b"-" else 1)
                  if len(f.lstrip(b"+-").lstrip(b"0")) <= 3 else 10**6 for f in fields]
        if has_labels and not 0 <= values[0] <= 9:
            return None
        if not all(0 <= v <= 255 for v in values):
            return None
        rows.append(values)
    table = np.array(rows, dtype=np.int64)
    if has_labels:
        return table[:, 1:].astype(np.uint8), table[:, 0]
    return table.astype(np.uint8), None


def unpacked(content: bytes) -> bytes | None:
    """What a reader sees in ``content``: its gzip unpacked; None where that gzip is damaged."""
    if content[:2] != b"\x1f\x8b":
        return content
    try:
        return gzip.decompress(content)
    except (OSError, EOFError, ValueError, gzip.zlib.error):
        return None


def make_input(seeds, seed, line_mutations, text_mutations, encoding, where) -> bytes:
    text = mutate_lines(seeds[seed], line_mutations)
    for mutation in text_mutations:
        text = mutate_text(text, mutation)
    return encode(text, encoding, where)


def read_through(content: bytes, through_pipe: bool, workdir: Path, name: str, reader, errors):
    if through_pipe:  # read once, no size known beforehand: the bounds must hold without it
        with pipe_path(content) as path:
            return check_parser(lambda: reader(path), errors, path, max_bytes=MEMORY_BOUND,
                                max_seconds=SECONDS_BOUND)
    path = workdir / name
    path.write_bytes(content)
    return check_parser(lambda: reader(path), errors, str(path), max_bytes=MEMORY_BOUND, max_seconds=SECONDS_BOUND)


INPUTS = dict(seed=st.sampled_from(["train", "test"]), line_mutations=st.lists(LINE_MUTATION, max_size=3),
              text_mutations=st.lists(TEXT_MUTATION, max_size=2), encoding=ENCODING, where=st.integers(0, 2**20),
              through_pipe=st.booleans())


@fuzz_settings(500)
@given(**INPUTS)
def test_strict_reader_mutated(seeds, workdir, seed, line_mutations, text_mutations, encoding, where,
                               through_pipe):
    content = make_input(seeds, seed, line_mutations, text_mutations, encoding, where)
    result = read_through(content, through_pipe, workdir, "strict.csv", read_kaggle_csv, CsvFormatError)
    plain = unpacked(content)
    expected = reference(plain) if plain is not None else None
    event("read" if result is not None else "refused")
    if plain is None:  # damaged gzip: the reader reads to the end, where gzip's own checks fail at the latest
        assert result is None, "rows returned from damaged gzip data"
        return
    assert (result is None) == (expected is None), \
        f"the reader {'refused' if result is None else 'accepted'} what the reference reading did not"
    if result is not None:
        (X, y), (X_ref, y_ref) = result, expected
        assert X.dtype == np.uint8 and X.shape == X_ref.shape and X.flags.c_contiguous
        np.testing.assert_array_equal(X, X_ref)
        assert (y is None) == (y_ref is None)
        if y is not None:
            assert y.dtype == np.int64
            np.testing.assert_array_equal(y, y_ref)


@fuzz_settings(400)
@given(**INPUTS)
def test_lenient_reader_mutated(seeds, workdir, seed, line_mutations, text_mutations, encoding, where,
                                through_pipe):
    content = make_input(seeds, seed, line_mutations, text_mutations, encoding, where)
    result = read_through(content, through_pipe, workdir, "lenient.csv", read_csv_lenient, ValueError)
    event("read" if result is not None else "refused")
    if result is None:
        return
    n = len(result.pixels)
    assert result.pixels.dtype == np.uint8 and result.pixels.shape == (n, 784)
    assert result.labels is None or (result.labels.dtype == np.int64 and result.labels.shape == (n,)
                                     and (n == 0 or 0 <= result.labels.min() <= result.labels.max() <= 9))
    lines = result.line_numbers
    assert lines.shape == (n,) and np.all(np.diff(lines) > 0) and (n == 0 or lines[0] >= 1)
    assert n <= result.n_data_lines and result.n_problems >= len(result.problems)
    assert sum(result.problem_counts.values()) == result.n_problems
    last_line = result.n_data_lines + 2
    assert all(1 <= p.line <= last_line and p.kind in result.problem_counts for p in result.problems)
    assert not set(lines.tolist()) & {p.line for p in result.problems if p.kind != "header"}
    plain = unpacked(content)
    expected = reference(plain) if plain is not None else None
    if expected is not None:  # a file the strict reader takes: the same rows, nothing wrong but blank end lines
        X_ref, y_ref = expected
        np.testing.assert_array_equal(result.pixels, X_ref)
        assert (result.labels is None) == (y_ref is None)
        if y_ref is not None:
            np.testing.assert_array_equal(result.labels, y_ref)
        assert all(p.kind == "empty_line" and p.line > lines[-1] for p in result.problems), result.problems[:3]
