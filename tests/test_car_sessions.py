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
    unreadable = make_session(tmp_path, ["forward"] * 10, name="unreadable")
    (unreadable / "manifest.json").write_text("{}")
    rows = summarize(tmp_path)
    assert [row["name"] for row in rows] == ["broken", "good", "unreadable"]
    # a damaged chunk costs its own frames: the rest of the session is listed
    assert rows[0]["error"] is None and rows[0]["frames"] == 2 and rows[0]["lost_frames"] == 8
    assert [c["file"] for c in rows[0]["damaged_chunks"]] == ["chunk-000000.npz"]
    assert rows[1]["error"] is None and "not a scratchpilot session manifest" in rows[2]["error"]
    table = format_table(rows)
    assert "broken (damaged)" in table and "broken: chunk-000000.npz cannot be read, 8 frames lost" in table
    assert "UNREADABLE" in table and "good" in table


# ---------------------------------------------------------------- damaged sessions (issue 14, classes 10-12)


def rewrite_manifest(path, change):
    """Apply ``change`` to the manifest document of session ``path`` and save it."""
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def rewrite_chunk(path, index, **arrays):
    """Replace arrays of one chunk and update its sha256, as a tool that forges consistent files would."""
    file = path / f"chunk-{index:06d}.npz"
    with np.load(file) as archive:
        content = {key: archive[key] for key in archive.files}
    content.update(arrays)
    np.savez(file, **content)
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    rewrite_manifest(path, lambda m: m["chunks"][index].update(sha256=digest))


def cli(capsys, *argv):
    """Run ``scratchpilot ARGV`` in-process: (exit status, stdout, stderr), never a traceback."""
    from scratchpilot.cli import main

    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


def train_cli(capsys, tmp_path, *sessions):
    return cli(capsys, "car", "train", "--sessions", *sessions, "--epochs", "1", "--hidden", "4",
               "--model", tmp_path / "pilot.npz")


def report_cli(capsys, tmp_path, root):
    out = tmp_path / "report.json"
    status, stdout, err = cli(capsys, "report", "data", root, "--out", tmp_path / "report.html", "--json", out)
    return status, (json.loads(out.read_text()) if status == 0 else None), stdout + err


@pytest.mark.parametrize(("field", "change"), [
    ("chunks[0]", lambda m: m["chunks"][0].update(start=0.0)),
    ("chunks[1]", lambda m: m["chunks"][1].update(count=True)),
    ("chunks[2]", lambda m: m["chunks"][2].update(count=10 ** 12)),
    ("chunks[1]", lambda m: m["chunks"].__setitem__(1, {**m["chunks"][0], "start": 8})),  # listed twice
    ("chunks[0]", lambda m: m["chunks"][0].update(sha256=["x"])),
    ("meta.labels", lambda m: m["meta"].update(labels=[1, 2, 3])),
    ("meta.labels", lambda m: m["meta"].update(labels=["a", "a"])),
    ("meta.frame_shape", lambda m: m["meta"].update(frame_shape="abc")),
    ("meta.frame_shape", lambda m: m["meta"].update(frame_shape=[-6, 8, 3])),
    ("meta.source", lambda m: m["meta"].update(source=[[["sim"]]])),
    ("meta", lambda m: m.update(meta="sim")),
    ("closed", lambda m: m.update(closed="yes")),
    ("frames", lambda m: m.update(frames=-1)),
    ("format_version", lambda m: m.update(format_version=True)),
])
def test_manifest_fields_of_the_wrong_type_are_refused_by_name(tmp_path, field, change):
    path = make_session(tmp_path, ["forward"] * 40, name="s")
    rewrite_manifest(path, change)
    with pytest.raises(SessionError) as caught:
        session = Session.open(path)
        session.frames()
    message = str(caught.value)
    assert str(path / "manifest.json") in message and field in message


def test_a_manifest_nested_too_deeply_is_refused_by_name(tmp_path):
    path = make_session(tmp_path, ["forward"] * 8, name="s")
    (path / "manifest.json").write_text('{"meta": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(SessionError, match="manifest.json: the session manifest is nested too deeply"):
        Session.open(path)


def test_negative_or_unknown_labels_in_a_chunk_cost_that_chunk_only(tmp_path):
    path = make_session(tmp_path, ["left"] * 24, name="s")  # 3 chunks of 8
    rewrite_chunk(path, 1, labels=np.array([-3] + [2] * 7, np.int8))
    rewrite_chunk(path, 2, labels=np.full(8, 7, np.uint8))
    warnings = []
    session = Session.open(path, warn=warnings.append)
    assert len(session) == 8 and np.array_equal(session.labels, np.full(8, 2))
    assert sorted(session.damaged) == ["chunk-000001.npz", "chunk-000002.npz"]
    assert "field 'labels' holds -3" in session.damaged["chunk-000001.npz"]
    assert "field 'labels' holds 7" in session.damaged["chunk-000002.npz"]
    assert len(warnings) == 2 and "chunk-000001.npz" in warnings[0] and "8 frames" in warnings[0]
    assert summarize(path)[0]["label_counts"]["left"] == 8  # the listing neither crashes nor counts them


def test_one_bad_session_breaks_neither_listing_nor_training_nor_reports(tmp_path, capsys):
    for name in ("good1", "good2"):
        make_session(tmp_path, ["forward", "left", "right", "none"] * 10, episodes=[i // 10 for i in range(40)],
                     name=name)
    bad = make_session(tmp_path, ["left"] * 16, name="bad")
    rewrite_manifest(bad, lambda m: m["chunks"][0].update(start=0.0))
    status, out, err = cli(capsys, "car", "sessions", tmp_path)
    assert status == 0 and "UNREADABLE" in out and "chunks[0]" in out
    assert out.splitlines()[-1].split()[:4] == ["total", "3", "sessions", "80"]

    status, out, err = train_cli(capsys, tmp_path, tmp_path)
    assert status == 0, err
    assert "scratchpilot: warning: skipped session" in err and "bad" in err and "chunks[0]" in err
    assert "mlp: 80 frames" in out

    status, report, _ = report_cli(capsys, tmp_path, tmp_path)
    assert status == 0 and report["description"]["readable_sessions"] == 2
    assert "chunks[0]" in finding_of(report, "unreadable_session", "bad")["message"]


def test_training_on_nothing_but_bad_sessions_says_why(tmp_path, capsys):
    bad = make_session(tmp_path, ["left"] * 16, name="bad")
    rewrite_manifest(bad, lambda m: m["meta"].update(labels="forward"))
    status, _, err = train_cli(capsys, tmp_path, tmp_path)
    assert status == 2 and "scratchpilot: error: no usable sessions" in err and "meta.labels" in err
    status, _, text = report_cli(capsys, tmp_path, tmp_path)
    assert status == 2 and "scratchpilot: error:" in text and "meta.labels" in text


def finding_of(report, check, session=None):
    matches = [f for f in report["findings"] if f["check"] == check and (session is None or f["split"] == session)]
    assert len(matches) == 1, [(f["check"], f["split"]) for f in report["findings"]]
    return matches[0]


def test_one_truncated_chunk_costs_only_its_frames(tmp_path, capsys):
    path = make_session(tmp_path, ["forward", "left"] * 20, episodes=[i // 10 for i in range(40)], name="s")
    victim = path / "chunk-000002.npz"
    victim.write_bytes(victim.read_bytes()[:300])
    warnings = []
    session = Session.open(path, warn=warnings.append)
    assert len(session) == 32 and session.lost_frames == 8
    assert np.array_equal(session.indices, np.r_[0:16, 24:40])
    assert np.array_equal(session.frames()[:, 0, 0, 0], np.r_[0:16, 24:40])
    assert warnings == [f"s: skipped chunk-000002.npz: its 8 frames are lost ({session.damaged['chunk-000002.npz']})"]
    assert str(victim) in warnings[0]
    assert "not a readable chunk" in session.damaged["chunk-000002.npz"]

    status, out, _ = cli(capsys, "car", "sessions", tmp_path, "--exclude", "s", "0", "4")
    assert status == 0 and "chunk-000002.npz" in out and "8 frames lost" in out
    assert summarize(path)[0]["frames"] == 28
    status, out, err = train_cli(capsys, tmp_path, tmp_path)
    assert status == 0 and "mlp: 28 frames" in out
    assert "chunk-000002.npz: its 8 frames are lost" in err
    status, report, _ = report_cli(capsys, tmp_path, tmp_path)
    assert status == 0 and report["sessions"][0]["frames"] == 28
    assert "chunk-000002.npz" in finding_of(report, "damaged_chunks", "s")["message"]
    assert finding_of(report, "damaged_chunks", "s")["count"] == 8


def test_a_corrupted_chunk_found_while_training_is_skipped_with_a_warning(tmp_path, capsys):
    path = make_session(tmp_path, ["forward", "left"] * 20, episodes=[i // 10 for i in range(40)], name="s")
    victim = path / "chunk-000003.npz"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    status, out, err = train_cli(capsys, tmp_path, tmp_path)
    assert status == 0 and "mlp: 32 frames" in out and "chunk-000003.npz: its 8 frames are lost" in err


def test_a_session_without_manifest_is_listed_and_rebuilt_from_its_chunks(tmp_path, capsys):
    from scratchpilot.car.sessions.repair import repair

    labels = ["forward", "left", "right", "none"] * 10
    path = make_session(tmp_path, labels, episodes=[i // 10 for i in range(40)], name="lost")
    before = Session.open(path)
    expected = before.frames(), before.labels, before.timestamps, before.episodes
    (path / "manifest.json").unlink()
    rows = summarize(tmp_path)
    assert rows[0]["name"] == "lost" and "no manifest.json" in rows[0]["error"]
    assert "5 chunk files, 40 frames" in rows[0]["error"] and "--repair" in rows[0]["error"]

    (path / "chunk-000004.npz").write_bytes(b"PK\x03\x04 torn")
    results = repair(tmp_path)
    assert [r["path"] for r in results] == [str(path)]
    assert results[0]["frames"] == 32 and results[0]["chunks"] == 4
    assert [s["file"] for s in results[0]["skipped_chunks"]] == ["chunk-000004.npz"]
    assert "source" in results[0]["lost"][0] and not list(path.glob(".*.tmp"))
    session = Session.open(path)
    assert np.array_equal(session.frames(), expected[0][:32]) and session.verify() == []
    assert np.array_equal(session.labels, expected[1][:32])
    assert np.array_equal(session.timestamps, expected[2][:32])
    assert np.array_equal(session.episodes, expected[3][:32])
    assert session.label_names == before.label_names and session.meta["repaired"]["lost"] == results[0]["lost"]
    assert repair(tmp_path) == []  # nothing left to rebuild


def test_cli_lists_a_missing_manifest_and_repairs_it(tmp_path, capsys):
    make_session(tmp_path, ["forward", "left"] * 20, episodes=[i // 10 for i in range(40)], name="good")
    lost = make_session(tmp_path, ["right", "none"] * 20, episodes=[i // 10 for i in range(40)], name="lost")
    (lost / "manifest.json").unlink()
    status, out, _ = cli(capsys, "car", "sessions", tmp_path)
    assert status == 0 and "lost" in out and "NO MANIFEST" in out and "--repair" in out
    status, out, err = train_cli(capsys, tmp_path, tmp_path)
    assert status == 0 and "mlp: 40 frames" in out
    assert "lost: no manifest.json" in err and "--repair" in err
    status, _, err = train_cli(capsys, tmp_path, lost)
    assert status == 2 and "no manifest.json" in err and "--repair" in err
    status, report, _ = report_cli(capsys, tmp_path, tmp_path)
    assert status == 0 and "--repair" in finding_of(report, "no_manifest", "lost")["message"]

    status, out, _ = cli(capsys, "car", "sessions", tmp_path, "--repair")
    assert status == 0 and f"rebuilt {lost / 'manifest.json'}: 5 chunks, 40 frames" in out
    assert "lost: the recording's metadata" in out and "NO MANIFEST" not in out
    status, out, _ = train_cli(capsys, tmp_path, tmp_path)
    assert status == 0 and "mlp: 80 frames" in out
    status, report, _ = report_cli(capsys, tmp_path, tmp_path)
    assert status == 0 and report["description"]["readable_sessions"] == 2
    assert "recording's metadata" in finding_of(report, "repaired_session", "lost")["message"]
    status, out, _ = cli(capsys, "car", "sessions", tmp_path, "--repair")
    assert status == 0 and "nothing to repair" in out


def test_repair_fails_loudly_when_no_chunk_can_be_read(tmp_path, capsys):
    lost = make_session(tmp_path, ["forward", "left"] * 8, name="hopeless")
    (lost / "manifest.json").unlink()
    for chunk in lost.glob("chunk-*.npz"):
        chunk.write_bytes(b"not a zip")
    status, out, err = cli(capsys, "car", "sessions", tmp_path, "--repair")
    assert status == 2 and f"cannot rebuild {lost}" in out
    assert f"could not rebuild the manifest of {lost}" in err
    assert not (lost / "manifest.json").exists()


def test_repair_rebuilds_an_unreadable_manifest_and_keeps_it_aside(tmp_path, capsys):
    make_session(tmp_path, ["forward", "left"] * 8, name="good")
    broken = make_session(tmp_path, ["right", "none"] * 8, episodes=[i // 8 for i in range(16)], name="broken")
    (broken / "manifest.json").write_text('{"format": "scratchpilot-session", "format_version": 1, "meta": 7}')
    status, out, _ = cli(capsys, "car", "sessions", tmp_path)
    assert status == 0 and "UNREADABLE" in out and "--repair" in out
    status, out, _ = cli(capsys, "car", "sessions", tmp_path, "--repair")
    assert status == 0 and f"rebuilt {broken / 'manifest.json'}: 2 chunks, 16 frames" in out
    assert "kept as manifest.json.unreadable" in out and "UNREADABLE" not in out
    assert (broken / "manifest.json.unreadable").read_text().endswith('"meta": 7}')  # nothing deleted
    status, out, _ = train_cli(capsys, tmp_path, tmp_path)
    assert status == 0 and "mlp: 32 frames" in out


def test_a_failed_rebuild_puts_the_unreadable_manifest_back(tmp_path, capsys):
    broken = make_session(tmp_path, ["right", "none"] * 8, name="broken")
    (broken / "manifest.json").write_text("{not json")
    for chunk in broken.glob("chunk-*.npz"):
        chunk.write_bytes(b"not a zip")
    status, out, err = cli(capsys, "car", "sessions", tmp_path, "--repair")
    assert status == 2 and "its unreadable manifest is left as it was" in out
    assert (broken / "manifest.json").read_text() == "{not json"
    assert not (broken / "manifest.json.unreadable").exists()
