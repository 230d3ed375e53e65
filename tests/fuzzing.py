"""The property every parser of outside bytes must hold, checked by the hypothesis suites.

Either the parser returns a valid result, or it raises the project's own error type with a message that
names the input — never another exception, never more than a fixed memory bound, never longer than a
time bound. ``make test`` runs a bounded number of examples per suite; ``make fuzz`` multiplies them by
``SCRATCHPILOT_FUZZ_SCALE`` (and prints hypothesis's statistics).
"""

from __future__ import annotations

import os
import time
import tracemalloc

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

#: how many times more examples ``make fuzz`` runs than ``make test``
FUZZ_SCALE = max(1, int(os.environ.get("SCRATCHPILOT_FUZZ_SCALE", "1")))


def fuzz_settings(examples: int, **kwargs) -> settings:
    """Hypothesis settings for one suite: ``examples`` in ``make test`` (times the fuzz scale in ``make fuzz``),
    no per-example deadline (the bound is checked by :func:`check_parser` instead, so a slow VM phase does
    not fail the suite), and no health check against slow data generation."""
    return settings(max_examples=examples * FUZZ_SCALE, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], **kwargs)


def check_parser(parse, errors, names: str | tuple[str, ...], *, max_bytes: int = 64 << 20,
                 max_seconds: float = 5.0):
    """Run ``parse()`` and check the property; return its result, or ``None`` when it refused the input.

    ``errors``: the project's error type(s) the parser may raise; ``names``: what a refusal's message must
    mention (the file's name or path, the request, the field), any one of them when a tuple.
    ``max_bytes``: the most memory (Python and NumPy allocations, traced) the call may take at its peak.
    """
    names = (names,) if isinstance(names, str) else names
    tracemalloc.start()
    start = time.perf_counter()
    try:
        result = parse()
    except errors as exc:
        message = str(exc)
        assert any(name in message for name in names), f"the error does not name the input {names}: {message}"
        result = None
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak <= max_bytes, f"the parser took {peak:,d} bytes at its peak (bound {max_bytes:,d})"
    assert elapsed <= max_seconds, f"the parser took {elapsed:.2f} s (bound {max_seconds} s)"
    return result


def json_values(*specials, nan: bool = False):
    """A hypothesis strategy for any JSON value, small and nested, with ``specials`` (sizes and names that
    reach deep checks) drawn more often; ``nan`` also draws NaN and infinities (Python's json writes them)."""
    leaves = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
              | st.sampled_from([0, 1, -1, 18, 2 ** 31, 10 ** 12, *specials])
              | st.floats(allow_nan=nan, allow_infinity=nan) | st.text(max_size=8))
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=8)


def json_paths(value, prefix=()):
    """Every place in a JSON value, as a tuple of keys and indices (the value itself first)."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from json_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from json_paths(item, (*prefix, i))
