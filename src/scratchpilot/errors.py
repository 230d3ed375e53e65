"""Errors every application may raise, kept apart from ``cli.py`` so that apps never import upward."""

from __future__ import annotations


class CommandError(Exception):
    """A user-facing error: printed as ``scratchpilot: error: ...`` with exit status 2, no traceback."""
