"""Small helpers shared by the tests that run real servers, sockets and serial links."""

from __future__ import annotations

import time


def wait_until(predicate, timeout_s: float = 3.0, interval_s: float = 0.005) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passes; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()
