"""The package's one progress bar: tqdm when it is installed, else a plain line on stderr (or nothing)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any


class _TextProgress:
    """A dependency-free counter on stderr, used when tqdm is not installed."""

    def __init__(self, iterable, total: int | None, desc: str, unit: str, byte_units: bool,
                 interval: float = 0.5):
        self._iterable = iterable
        self.total, self.desc, self.unit, self.byte_units, self.interval = total, desc, unit, byte_units, interval
        self.n = 0
        self._last = 0.0

    def __iter__(self):
        for item in self._iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> _TextProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._draw()

    def close(self) -> None:
        if self._last:
            self._draw()
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._last = 0.0

    def _draw(self) -> None:
        if self.byte_units:
            done = f"{self.n / 2**20:.1f}" + (f"/{self.total / 2**20:.1f}" if self.total else "") + " MiB"
        else:
            done = f"{self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"
        share = f" {self.n / self.total:4.0%}" if self.total else ""
        sys.stderr.write(f"\r{self.desc} {done}{share}\033[K")
        sys.stderr.flush()


class _NoProgress:
    def __init__(self, iterable=None):
        self._iterable = iterable if iterable is not None else ()
        self.n = 0

    def __iter__(self):
        return iter(self._iterable)

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        pass


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True, byte_units: bool = False, leave: bool = False) -> Any:
    """A progress bar over ``iterable`` (iterate it) or counted by hand (``update(n)``; a context manager).

    ``enabled=False`` gives a silent stand-in with the same methods. With tqdm the bar is drawn only on a
    terminal, so logs and CI output stay clean; ``byte_units`` counts bytes shown as KiB/MiB.
    """
    if not enabled:
        return _NoProgress(iterable)
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    try:
        from tqdm import tqdm
    except ImportError:
        return _TextProgress(iterable if iterable is not None else (), total, desc, unit, byte_units)
    options: dict[str, Any] = {"unit_scale": True, "unit_divisor": 1024} if byte_units else {}
    return tqdm(iterable, total=total, desc=desc, unit="B" if byte_units else unit, leave=leave,
                disable=None, mininterval=0.5, **options)
