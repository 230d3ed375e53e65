"""Crash-safe session recording: round trips, chunking, corruption, and a real kill -9 mid-recording."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from scratchpilot.car.links import LABELS
from scratchpilot.car.preprocess import FramePreprocessor
from scratchpilot.car.sessions import Session, SessionError, SessionWriter, list_sessions, load_frames
from scratchpilot.car.sessions import writer as recorder


def frame_for(i: int, shape=(12, 16, 3)) -> np.ndarray:
    """A frame whose pixels encode its position, so that any reordering or loss shows."""
    rng = np.random.default_rng(i)
    frame = rng.integers(0, 256, shape, dtype=np.uint8)
    frame.flat[0] = i % 256
    return frame


def record(root, count, *, chunk_frames=7, episodes_every=10, **kwargs) -> Path:
    with SessionWriter(root, source="test", driver="unit", chunk_frames=chunk_frames, **kwargs) as writer:
        for i in range(count):
            label = LABELS[i % len(LABELS)] if i % 2 else i % len(LABELS)  # names and indices both work
            writer.add(frame_for(i), label, 0.02 * i, episode=i // episodes_every)
    return writer.path


def test_round_trip_chunks_metadata_and_checksums(tmp_path):
    with SessionWriter(tmp_path, source="sim", driver="expert", meta={"seeds": [3, 4]}, chunk_frames=7,
                       name="run") as writer:
        for i in range(30):
            writer.add(frame_for(i), i % 5, 0.02 * i, episode=i // 10)
        writer.update_meta({"scores": [900.5]})
    path = tmp_path / "run"
    assert writer.path == path and writer.frame_count == 30

    manifest = json.loads((path / "manifest.json").read_text())
    assert [c["count"] for c in manifest["chunks"]] == [7, 7, 7, 7, 2]
    assert [c["start"] for c in manifest["chunks"]] == [0, 7, 14, 21, 28]
    assert manifest["closed"] is True and manifest["frames"] == 30
    for chunk in manifest["chunks"]:
        assert hashlib.sha256((path / chunk["file"]).read_bytes()).hexdigest() == chunk["sha256"]

    session = Session.open(path)
    assert session.closed and len(session) == session.total_frames == 30
    assert session.meta["source"] == "sim" and session.meta["driver"] == "expert"
    assert session.meta["seeds"] == [3, 4] and session.meta["scores"] == [900.5]
    assert session.meta["frame_shape"] == [12, 16, 3] and session.frame_shape == (12, 16, 3)
    assert session.label_names == LABELS
    assert session.meta["scratchpilot_version"] and session.meta["created_at"]
    assert np.array_equal(session.frames(), np.stack([frame_for(i) for i in range(30)]))
    assert np.array_equal(session.labels, np.arange(30) % 5)
    assert np.allclose(session.timestamps, 0.02 * np.arange(30))
    assert np.array_equal(session.episodes, np.arange(30) // 10)
    chunks = list(session.iter_chunks())
    assert [len(c.labels) for c in chunks] == [7, 7, 7, 7, 2]
    assert np.array_equal(np.concatenate([c.indices for c in chunks]), np.arange(30))
    assert session.verify() == [] and session.stray_files() == []


def test_labels_as_names_or_indices_grayscale_and_synchronous_writes(tmp_path):
    with SessionWriter(tmp_path, chunk_frames=4, background=False, compress=False) as writer:
        for i in range(9):
            writer.add(np.full((5, 6), i, np.uint8), "left" if i % 2 else 3, float(i))
    session = Session.open(writer.path)
    assert session.frames().shape == (9, 5, 6)
    assert [session.label_names[k] for k in session.labels[:3]] == ["right", "left", "right"]
    assert not any(c["compressed"] for c in session.chunks)


def test_chunks_also_close_after_chunk_seconds(tmp_path):
    now = [0.0]
    with SessionWriter(tmp_path, chunk_frames=1000, chunk_seconds=1.0, clock=lambda: now[0]) as writer:
        for i in range(10):
            now[0] += 0.4
            writer.add(frame_for(i), 0, now[0])
    counts = [c["count"] for c in Session.open(writer.path).chunks]
    # a chunk's clock starts at its first frame (t=0.4) and runs out at its fourth (t=1.6)
    assert counts == [4, 4, 2]


def test_bad_frames_and_labels_are_refused(tmp_path):
    writer = SessionWriter(tmp_path, chunk_frames=5)
    writer.add(frame_for(0), 0, 0.0)
    with pytest.raises(ValueError, match="shape"):
        writer.add(frame_for(1, shape=(12, 17, 3)), 0, 0.1)
    with pytest.raises(ValueError, match="uint8"):
        writer.add(frame_for(1).astype(np.float32), 0, 0.1)
    with pytest.raises(ValueError, match="unknown label 'reverse'"):
        writer.add(frame_for(1), "reverse", 0.1)
    for bad in (5, -1, True, 1.0):
        with pytest.raises(ValueError, match="label"):
            writer.add(frame_for(1), bad, 0.1)
    with pytest.raises(ValueError, match="JSON-able"):
        writer.update_meta({"when": object()})
    writer.close()
    writer.close()  # twice is fine
    with pytest.raises(SessionError, match="closed"):
        writer.add(frame_for(1), 0, 0.1)
    assert len(Session.open(writer.path)) == 1


def test_names_never_clash(tmp_path):
    first = SessionWriter(tmp_path, name="same")
    second = SessionWriter(tmp_path, name="same")
    first.close()
    second.close()
    assert (first.path.name, second.path.name) == ("same", "same-2")
    assert list_sessions(tmp_path) == [first.path, second.path]
    assert list_sessions(first.path) == [first.path]
    with pytest.raises(ValueError, match="plain folder name"):
        SessionWriter(tmp_path, name="../escape")


def test_compression_is_dropped_when_it_does_not_pay(tmp_path):
    smooth = np.tile(np.arange(96, dtype=np.uint8), (96, 1))[:, :, None].repeat(3, axis=2)
    with SessionWriter(tmp_path, chunk_frames=10, background=False) as writer:
        for i in range(30):
            writer.add(smooth, 0, float(i))
    assert all(c["compressed"] for c in Session.open(writer.path).chunks)
    noise = np.random.default_rng(0).integers(0, 256, (40, 96, 96, 3), dtype=np.uint8)
    with SessionWriter(tmp_path, chunk_frames=10, background=False) as writer:
        for i, frame in enumerate(noise):
            writer.add(frame, 0, float(i))
    session = Session.open(writer.path)
    assert [c["compressed"] for c in session.chunks] == [True, False, False, False]
    assert np.array_equal(session.frames(), noise)


def test_a_corrupted_chunk_is_reported_by_name(tmp_path):
    path = record(tmp_path, 21)
    victim = path / "chunk-000001.npz"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    expected = np.stack([frame_for(i) for i in [*range(7), *range(14, 21)]])
    session = Session.open(path, warn=None)
    problems = session.verify()
    assert len(problems) == 1 and "chunk-000001.npz" in problems[0] and "sha256" in problems[0]
    assert np.array_equal(session.frames(), expected)  # the damaged chunk costs its own 7 frames only
    warnings = []
    assert np.array_equal(Session.open(path, warn=warnings.append).frames(), expected)
    assert len(warnings) == 1 and "chunk-000001.npz: sha256" in warnings[0] and "7 frames are lost" in warnings[0]
    victim.write_bytes(bytes(data[:100]))  # truncated: even unverified reads say what is wrong
    session = Session.open(path, verify=False, warn=None)
    assert np.array_equal(session.frames(), expected)
    assert "chunk-000001.npz: not a readable chunk" in session.damaged["chunk-000001.npz"]
    victim.unlink()
    session = Session.open(path, verify=False, warn=None)
    assert len(session) == 14 and session.lost_frames == 7
    assert "chunk-000001.npz: chunk listed in the manifest is missing" in session.damaged["chunk-000001.npz"]


def test_bad_manifests_are_refused_with_the_file_and_line(tmp_path):
    path = record(tmp_path, 10)
    manifest = path / "manifest.json"
    good = json.loads(manifest.read_text())
    manifest.write_text('{"format": "scratchpilot-session",\n "chunks": [}\n')
    with pytest.raises(SessionError, match=r"manifest.json, line 2: the session manifest is not valid JSON"):
        Session.open(path)
    manifest.write_text(json.dumps({**good, "chunks": good["chunks"][1:]}))
    with pytest.raises(SessionError, match=r"chunks\[0\] starts at frame 7, expected 0"):
        Session.open(path)
    manifest.write_text(json.dumps({**good, "format": "other"}))
    with pytest.raises(SessionError, match="not a scratchpilot session manifest"):
        Session.open(path)
    with pytest.raises(SessionError, match="no session manifest here"):
        Session.open(tmp_path / "nothing")


def test_stray_temp_files_and_unlisted_chunks_are_ignored(tmp_path):
    path = record(tmp_path, 20)
    expected = Session.open(path).frames()
    # what a crash can leave: a torn chunk temp file, a torn manifest temp file, and a complete chunk
    # whose manifest update never happened
    (path / ".chunk-000003.npz.4242.1.tmp").write_bytes(b"PK\x03\x04 torn")
    (path / ".manifest.json.4242.1.tmp").write_text('{"format": "scratchpilot-session", "chu')
    (path / "chunk-000003.npz").write_bytes((path / "chunk-000000.npz").read_bytes())
    session = Session.open(path)
    assert np.array_equal(session.frames(), expected) and session.verify() == []
    assert session.stray_files() == [".chunk-000003.npz.4242.1.tmp", ".manifest.json.4242.1.tmp",
                                     "chunk-000003.npz"]


def test_a_failed_chunk_write_ends_the_recording_but_keeps_what_was_written(tmp_path, monkeypatch):
    real_write = recorder.write_atomic

    def failing_write(path, data, **options):
        if path.name == "chunk-000001.npz":
            raise OSError(28, "No space left on device")
        real_write(path, data, **options)

    monkeypatch.setattr(recorder, "write_atomic", failing_write)
    writer = SessionWriter(tmp_path, chunk_frames=5)
    with pytest.raises(SessionError, match="No space left on device"):
        for i in range(100):
            writer.add(frame_for(i), 0, float(i))
            time.sleep(0.001)  # let the writer thread fail before the 100 frames are in
    with pytest.raises(SessionError, match="writing a chunk failed"):
        writer.close()
    session = Session.open(writer.path)
    assert not session.closed and session.total_frames == 5
    assert np.array_equal(session.frames(), np.stack([frame_for(i) for i in range(5)]))


def test_load_frames_groups_by_session_and_episode(tmp_path):
    first = record(tmp_path, 25, episodes_every=10)
    second = record(tmp_path, 8, episodes_every=100)
    pre = FramePreprocessor({"grayscale": True, "downsample": 2})
    data = load_frames([tmp_path], pre)
    assert data.features.shape == (33, 6 * 8) and data.features.dtype == np.float32
    assert data.group_keys == [(first.name, 0, 0), (first.name, 1, 0), (first.name, 2, 0), (second.name, 0, 0)]
    assert np.array_equal(np.bincount(data.groups), [10, 10, 5, 8])
    blocks = load_frames([first], block_frames=4)  # runs of 4 frames within each episode of 10
    assert [key[1:] for key in blocks.group_keys] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]
    assert np.array_equal(np.bincount(blocks.groups), [4, 4, 2, 4, 4, 2, 4, 1])
    assert np.array_equal(data.labels[:25], np.arange(25) % 5)
    assert data.label_names == LABELS
    raw = load_frames([Session.open(second)])
    assert raw.features.shape == (8, 12, 16, 3)
    with SessionWriter(tmp_path, labels=("a", "b")) as other:
        other.add(frame_for(0), "a", 0.0)
    with pytest.raises(SessionError, match="differ"):
        load_frames([tmp_path])


KILL_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from scratchpilot.car.sessions import SessionWriter

    writer = SessionWriter(sys.argv[1], source="test", driver="victim", name="victim", chunk_frames=20,
                           chunk_seconds=1e9)
    i = 0
    while True:
        rng = np.random.default_rng(i)
        frame = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        frame[:24] = i % 256  # half smooth, half noise: compression stays on, writes take a while
        writer.add(frame, i % 5, 0.02 * i, episode=i // 100)
        i += 1
        if i % 20 == 0:
            print(i, flush=True)
""")


@pytest.mark.parametrize("extra_delay", [0.0, 0.037, 0.111])
def test_kill_9_while_recording_loses_at_most_the_chunk_in_progress(tmp_path, extra_delay):
    env = {**os.environ, "PYTHONPATH": str(Path(recorder.__file__).parents[3])}
    process = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE,
                               text=True, env=env)
    try:
        announced = 0
        deadline = time.monotonic() + 30
        while announced < 200 and time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line, "the recorder died on its own"
            announced = int(line)
        assert announced >= 200, "the recorder did not get going within 30 s"
        time.sleep(extra_delay)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()

    session = Session.open(tmp_path / "victim")
    assert not session.closed
    # when frame 200 was added, all but the last two chunks before it were on disk and in the manifest
    assert session.total_frames >= 160 and session.total_frames % 20 == 0
    assert session.verify() == []
    frames = session.frames()
    for i in range(session.total_frames):
        expected = np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        expected[:24] = i % 256
        assert np.array_equal(frames[i], expected), f"frame {i} differs"
    assert np.array_equal(session.labels, np.arange(session.total_frames) % 5)
    assert np.allclose(session.timestamps, 0.02 * np.arange(session.total_frames))
    assert np.array_equal(session.episodes, np.arange(session.total_frames) // 100)
    # anything else in the folder is a leftover of the interrupted write, and ignored
    for name in session.stray_files():
        assert name.startswith(".chunk-") or name.startswith(".manifest.json") or name.startswith("chunk-")
    (tmp_path / "victim" / ".chunk-999999.npz.1.1.tmp").write_bytes(b"torn")
    assert len(Session.open(tmp_path / "victim").frames()) == session.total_frames
