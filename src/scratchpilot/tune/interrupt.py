"""Ctrl-C in a tuning worker, at a safe point.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be. In the middle of a write to
the study's storage that can leave Optuna's journal lock file behind (every later write then waits out
the lock's 30-second grace period) or a half-written record. So while a worker runs, the first Ctrl-C
only sets a flag, and ``KeyboardInterrupt`` is raised at once where that is safe (inside a trial's
training, :meth:`DeferredInterrupt.interruptible`) or at the next safe point otherwise (between trials,
after a storage call made from inside training). Optuna then marks the running trial failed and the
command exits 130. A second Ctrl-C interrupts wherever it lands.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class DeferredInterrupt:
    """SIGINT as a flag outside :meth:`interruptible` regions, as ``KeyboardInterrupt`` inside them."""

    def __init__(self) -> None:
        self.pending = False
        self._open = 0  # depth of interruptible regions around the code now running

    def _handler(self, signum, frame) -> None:
        again = self.pending
        self.pending = True
        if again or self._open:
            raise KeyboardInterrupt

    def check(self) -> None:
        """A safe point: raise ``KeyboardInterrupt`` if Ctrl-C was pressed."""
        if self.pending:
            raise KeyboardInterrupt

    @contextmanager
    def installed(self):
        """Handle SIGINT this way for the block (only the main thread can install a handler)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self.pending, self._open = False, 0
        previous = signal.signal(signal.SIGINT, self._handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)

    @contextmanager
    def interruptible(self):
        """Code that may be stopped anywhere (training a model: nothing is written)."""
        self.check()
        self._open += 1
        try:
            yield
        finally:
            self._open -= 1

    @contextmanager
    def shielded(self):
        """A storage call from inside an interruptible region: Ctrl-C waits for it to end."""
        saved, self._open = self._open, 0
        try:
            yield
        finally:
            self._open = saved
        if saved:
            self.check()


#: the one handler of the process (a worker process has one main thread)
INTERRUPT = DeferredInterrupt()
