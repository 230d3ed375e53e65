"""Values from outside, quoted in messages: cut short, because a crafted field may hold megabytes of text or
lists nested a thousand deep (``repr`` alone would print all of it, or fail on the depth).

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
