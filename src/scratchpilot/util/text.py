"""Text for people: values from outside quoted in messages, cut short, because a crafted field may hold
megabytes of text or lists nested a thousand deep (``repr`` alone would print all of it, or fail on the
depth); durations.

(``scratchpilot.nn`` keeps its own copy in ``nn/archive.py``: the engine imports nothing of the project.)
"""

from __future__ import annotations

import reprlib
from typing import Any

_REPR = reprlib.Repr()  # keyword arguments only from Python 3.12
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 4, 4, 40, 40, 40


def brief(value: Any, limit: int = 80) -> str:
    """``repr(value)`` with nesting, lists and long strings elided, then cut to ``limit`` characters."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def format_seconds(seconds: float) -> str:
    """A duration as people read it: ``"42 s"``, ``"3 min 05 s"``."""
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"
