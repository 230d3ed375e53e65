"""A dependency-free progress bar for training loops: not scratchpilot.util.progress, because the engine
imports nothing of the project (NumPy only)."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    """Redraws one line on stderr at most every ``interval`` seconds: ``label [####  ] 42% 1.2s key=val``."""

    def __init__(self, total: int, label: str = "", stream=None, interval: float = 0.1, width: int = 24):
        self.total, self.label, self.width, self.interval = max(1, total), label, width, interval
        self.stream = stream if stream is not None else sys.stderr
        self.start = self._last = time.perf_counter()
        self.done = 0
        # redraw in place only on a terminal; in logs (CI, pipes) print just the closing line
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, done: int, **metrics) -> None:
        self.done = done
        now = time.perf_counter()
        if self.live and (now - self._last >= self.interval or done >= self.total):
            self._last = now
            self._draw(now, metrics, end="")

    def close(self, **metrics) -> None:
        self.done = self.total
        self._draw(time.perf_counter(), metrics, end="\n")

    def _draw(self, now: float, metrics: dict, end: str) -> None:
        frac = min(1.0, self.done / self.total)
        filled = int(round(frac * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        text = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        prefix, clear = ("\r", "\033[K") if self.live else ("", "")
        self.stream.write(f"{prefix}{self.label} [{bar}] {frac:4.0%} {now - self.start:5.1f}s {text}{clear}{end}")
        self.stream.flush()
