"""Argument types shared by every sub-command: numbers in a range, ports, output paths.

Each is an argparse ``type=``: a bad value is refused while the command line is parsed, before any work
starts, with the allowed range in the message (``argument --epochs: must be an integer ≥ 1, got 0``).
Output paths are checked there too, so a typo in ``--out`` never costs a finished training.
Only the standard library is imported: ``scratchpilot --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


def _plain(value) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _describe(lo, hi, lo_open: bool, hi_open: bool) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '≥'} {_plain(lo)}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '≤'} {_plain(hi)}")
    return " and ".join(parts)


def integer(lo: int | None = None, hi: int | None = None):
    """An argparse type: an integer in ``[lo, hi]`` (either end may be None: unbounded)."""
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be an integer {_describe(lo, hi, False, False)}, "
                                             f"got {text!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be an integer {_describe(lo, hi, False, False)}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False):
    """An argparse type: a finite float between ``lo`` and ``hi``; ``lo_open``/``hi_open`` exclude the ends."""
    def parse(text: str) -> float:
        rule = _describe(lo, hi, lo_open, hi_open)
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be a number {rule}, got {text!r}".rstrip()) from None
        too_low = lo is not None and (value <= lo if lo_open else value < lo)
        too_high = hi is not None and (value >= hi if hi_open else value > hi)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number {rule}, got {text}".replace("  ", " "))
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"must be a number {rule}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


#: the common cases, named once
positive_int = integer(1)
non_negative_int = integer(0)
seed = integer(0, 2**32 - 1)  # what numpy.random.default_rng accepts as one integer
port = integer(0, 65535)
probability = number(0.0, 1.0)
held_out_share = number(0.0, 1.0, hi_open=True)  # rows kept back for validation: none, or some, never all
positive_number = number(0.0, lo_open=True)


_DURATION_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600}


def duration(text: str) -> float:
    """An argparse type: a positive wall-clock duration in seconds: ``90``, ``90s``, ``20m``, ``1h``, ``1h30m``."""
    import re

    rule = "must be a duration such as 90s, 20m, 1h or 1h30m"
    cleaned = text.strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(h|min|m|s)?", cleaned)
    if not cleaned or re.sub(r"(\d+(?:\.\d+)?)\s*(h|min|m|s)?", "", cleaned).strip():
        raise argparse.ArgumentTypeError(f"{rule}, got {text!r}")
    if len(parts) > 1 and any(not unit for _, unit in parts):
        raise argparse.ArgumentTypeError(f"{rule} (a unit on every part), got {text!r}")
    seconds = sum(float(number) * _DURATION_UNITS[unit or "s"] for number, unit in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"{rule} (more than zero), got {text!r}")
    return seconds


def _first_existing(path: Path) -> Path:
    """The deepest folder of ``path``'s parents that exists (what creating ``path`` would start from)."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def _check_creatable(path: Path, what: str) -> None:
    """Refuse ``path`` when the missing folders above it cannot be created or written in."""
    if path.name in ("", ".", ".."):
        raise argparse.ArgumentTypeError(f"{path}: not a {what} name")
    start = _first_existing(path)
    if not start.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: {start} is a file, not a folder")
    _check_writable(path, start)


def _check_writable(path: Path, folder: Path) -> None:
    """Create and remove a probe file in ``folder``: permission bits alone miss a read-only mount, /proc,
    and root (who passes every permission check)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{path}: cannot write in {folder} (permission denied)")
    probe = folder / f".scratchpilot-write-test-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # a probe of this process already there: the folder takes files
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{path}: cannot write in {folder} ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def output_file(*suffixes: str):
    """An argparse type: a file this command will write; with ``suffixes``, its name must end in one of them.

    Refused at once: an existing folder of that name, a parent that is a file, a folder without write
    permission, an existing file that cannot be replaced, an unknown suffix (e.g. a plot as ``.jpeg2``).
    """
    allowed = tuple(s.lower() for s in suffixes)

    def parse(text: str) -> Path:
        if not text:
            raise argparse.ArgumentTypeError("an empty output path")
        path = Path(text).expanduser()
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{path}: is a folder; give a file name")
        if allowed and not path.name.lower().endswith(allowed):
            raise argparse.ArgumentTypeError(f"{path}: unknown file type; use one of {', '.join(allowed)}")
        if path.exists() and not os.access(path, os.W_OK) and not os.access(path.parent, os.W_OK):
            raise argparse.ArgumentTypeError(f"{path}: cannot replace it (permission denied)")
        _check_creatable(path, "file")
        return path

    parse.__name__ = "output file"
    return parse


def output_folder(text: str) -> Path:
    """An argparse type: a folder this command will create or add to."""
    if not text:
        raise argparse.ArgumentTypeError("an empty output folder")
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"{path}: is a file, not a folder")
        _check_writable(path, path)
        return path
    _check_creatable(path, "folder")
    return path


output_folder.__name__ = "output folder"

#: what ``--json PATH`` options take
json_file = output_file(".json")
#: figures matplotlib writes (``--plot``, ``--sheet``)
figure_file = output_file(".png", ".svg", ".pdf")
#: model files
model_file = output_file(".npz")
#: tables (predictions, submissions, exported datasets)
csv_file = output_file(".csv", ".csv.gz")
