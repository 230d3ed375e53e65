"""Recorded driving sessions: the folder format (:mod:`.format`), writing (:mod:`.writer`), reading
(:mod:`.reader`), cleaning by exclusion (:mod:`.cleaning`) and importing other tools' data (:mod:`.importers`)."""

from .format import SessionError
from .reader import FrameSet, Session, is_session, list_sessions, load_exclusions, load_frames
from .writer import SessionWriter

__all__ = ["FrameSet", "Session", "SessionError", "SessionWriter", "is_session", "list_sessions",
           "load_exclusions", "load_frames"]
