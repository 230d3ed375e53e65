"""Session listing and non-destructive cleaning (exclude / restore ranges)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from scratchpilot.car.sessions import Session, SessionError, SessionWriter
from scratchpilot.car.sessions.cleaning import exclude, exclusions, format_table, restore, summarize


def make_session(root, labels, *, episodes=None, fps=50.0, name=None, close=True):
    writer = SessionWriter(root, source="sim", driver="expert", name=name, chunk_frames=8)
    for i, label in enumerate(labels):
        episode = 0 if episodes is None else episodes[i]
        writer.add(np.full((6, 8, 3), i % 256, np.uint8), label, i / fps, episode=episode)
    if close:
        writer.close()
    else:
        writer.flush()  # frames on disk, but never closed: as after a crash
    return writer.path


def chunk_digests(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.glob("chunk-*.npz"))}


def test_summary_counts_labels_and_duration_per_episode(tmp_path):
    labels = ["forward"] * 30 + ["left"] * 6 + ["right"] * 4
    episodes = [0] * 20 + [1] * 20
    path = make_session(tmp_path, labels, episodes=episodes, fps=20.0, name="a")
    make_session(tmp_path, ["none", "brake"] * 3, name="b", close=False)
    rows = summarize(tmp_path)
    assert [row["name"] for row in rows] == ["a", "b"]
    first = rows[0]
    assert first["path"] == str(path) and first["source"] == "sim" and first["driver"] == "expert"
    assert first["frames"] == first["total_frames"] == 40 and first["excluded_frames"] == 0
    assert first["episodes"] == 2 and first["chunks"] == 5 and first["complete"] is True
    assert first["label_counts"] == {"none": 0, "forward": 30, "left": 6, "right": 4, "brake": 0}
    # each episode spans 19 frame intervals at 20 fps; the gap between episodes does not count
    assert first["duration_s"] == pytest.approx(2 * 19 / 20)
    assert first["frame_shape"] == [6, 8, 3]
    assert rows[1]["complete"] is False and rows[1]["label_counts"]["brake"] == 3

    table = format_table(rows)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["session", "source/driver", "frames"]
    assert "forward 75%  left 15%  right 10%" in table
    assert "b (interrupted)" in table
    assert lines[-1].split()[:4] == ["total", "2", "sessions", "46"]
    assert format_table([]) == "no sessions"


def test_exclude_and_restore_never_touch_the_frames(tmp_path):
    path = make_session(tmp_path, ["forward"] * 40)
    digests = chunk_digests(path)
    first = exclude(path, 5, 10, "car off the road")
    second = exclude(path, 30, 40, "crash")
    assert (first["id"], second["id"]) == (1, 2) and first["reason"] == "car off the road"
    assert chunk_digests(path) == digests

    session = Session.open(path)
    assert len(session) == 25 and session.total_frames == 40
    kept = np.r_[0:5, 10:30]
    assert np.array_equal(session.indices, kept)
    assert np.array_equal(session.frames()[:, 0, 0, 0], kept)
    assert np.allclose(session.timestamps, kept / 50.0)
    assert len(Session.open(path, include_excluded=True).frames()) == 40
    assert summarize(path)[0]["excluded_frames"] == 15

    assert restore(path, start=32, stop=35) == 3  # splits range 2 in two
    assert [(r["id"], r["start"], r["stop"]) for r in exclusions(path)] == [(1, 5, 10), (2, 30, 32), (3, 35, 40)]
    assert restore(path, range_id=1) == 5
    assert len(Session.open(path)) == 40 - 2 - 5
    assert restore(path) == 7
    assert exclusions(path) == [] and len(Session.open(path)) == 40
    assert chunk_digests(path) == digests


def test_overlapping_exclusions_count_once(tmp_path):
    path = make_session(tmp_path, ["left"] * 20)
    exclude(path, 0, 10)
    exclude(path, 5, 15)
    assert len(Session.open(path)) == 5
    assert restore(path, range_id=1) == 5  # frames 0..4 come back; 5..9 stay out under range 2
    assert restore(path, range_id=2) == 10


def test_bad_ranges_and_files_are_refused(tmp_path):
    path = make_session(tmp_path, ["forward"] * 16, name="s")
    for start, stop in ((-1, 4), (4, 4), (10, 17)):
        with pytest.raises(SessionError, match=f"cannot exclude frames {start}:{stop}; the session has frames 0:16"):
            exclude(path, start, stop)
    with pytest.raises(SessionError, match="frame numbers"):
        exclude(path, 1.5, 3)
    with pytest.raises(SessionError, match="no exclusion with id 9"):
        restore(path, range_id=9)
    with pytest.raises(SessionError, match="not both"):
        restore(path, range_id=1, start=0)

    (path / "exclusions.json").write_text('{"version": 1,\n "ranges": [\n {"id": 1, "start": 2 "stop": 4}]}\n')
    with pytest.raises(SessionError, match=r"exclusions.json, line 3: the exclusions file is not valid JSON"):
        Session.open(path)
    (path / "exclusions.json").write_text(json.dumps({"version": 1, "ranges": [{"id": 1, "start": 2, "stop": 99}]}))
    with pytest.raises(SessionError, match=r"ranges\[0\] ends at frame 99, but the session has 16 frames"):
        Session.open(path)


def test_a_damaged_session_does_not_hide_the_others(tmp_path):
    make_session(tmp_path, ["forward"] * 10, name="good")
    broken = make_session(tmp_path, ["forward"] * 10, name="broken")
    (broken / "chunk-000000.npz").write_bytes(b"not a zip")
    rows = summarize(tmp_path)
    assert [row["name"] for row in rows] == ["broken", "good"]
    assert "chunk-000000.npz" in rows[0]["error"] and rows[1]["error"] is None
    assert "UNREADABLE" in format_table(rows) and "good" in format_table(rows)
