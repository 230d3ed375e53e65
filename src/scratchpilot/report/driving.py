"""``report data`` for a folder of driving sessions (as written by :mod:`scratchpilot.car.sessions`).

Description: sessions, frames, frame shape, labels, sources and drivers, chunk files with their SHA-256.
Exploration: label distribution overall and per session, frame rate over time, sample frames and mean
frame per label, session lengths. Quality: unreadable or corrupted chunks, interrupted recordings,
timestamps that run backwards or pause, frozen (repeated) frames, duplicate frames, single-frame label
blips, constant pixels and label imbalance.

Frames are read one chunk at a time, so memory stays at one chunk plus per-label sums, whatever the
number of sessions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import html as H
from . import quality
from .findings import Report, _finding, findings_markdown

SAMPLES_PER_LABEL = 8
MAX_THUMBNAILS = 16
#: a pause between two frames longer than this many median frame intervals (and 0.25 s) is a gap
GAP_FACTOR, GAP_MIN_SECONDS = 5.0, 0.25
FPS_WINDOW = 10


class SessionReportError(ValueError):
    """Sessions a report cannot be made from; the message names the folder and says why."""


def is_sessions_folder(spec: str) -> bool:
    """True when ``spec`` is a session folder or a folder holding at least one session."""
    path = Path(spec).expanduser()
    if not path.is_dir():
        return False
    from ..car.sessions import is_session
    from ..car.sessions.reader import missing_manifests

    # a folder of chunks that lost its manifest is still sessions: the report says so
    return is_session(path) or any(p.is_dir() and is_session(p) for p in path.iterdir()) or \
        bool(missing_manifests(path))


@dataclass
class _SessionInfo:
    """What the report keeps of one session after reading it."""

    name: str
    path: Path
    session: object = None  # scratchpilot.car.sessions.Session, None when unreadable
    error: str | None = None
    no_manifest: bool = False  # a folder of chunks without a manifest
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    timestamps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    episodes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    hashes: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.uint64))
    frozen: np.ndarray | None = None  # bool (N,): frame equals the previous one; None when frames were not read


def _open_sessions(root: Path) -> list[_SessionInfo]:
    """Every session under ``root``, read through the session reader: one that cannot be opened keeps its
    error, one with damaged chunks keeps the rest (the chunks' problems are in ``session.damaged``)."""
    from ..car.sessions import Session, SessionError, list_sessions
    from ..car.sessions.reader import missing_manifests, no_manifest_message

    try:
        paths = list_sessions(root)
        lost = missing_manifests(root)
    except (SessionError, OSError) as exc:
        raise SessionReportError(str(exc)) from None
    if not paths and not lost:
        raise SessionReportError(f"{root}: no driving sessions (folders with a manifest.json) here")
    infos = [_SessionInfo(name=path.name, path=path, error=no_manifest_message(path, root), no_manifest=True)
             for path in lost]
    for path in paths:
        info = _SessionInfo(name=path.name, path=path)
        try:
            session = Session.open(path, warn=None)  # damaged chunks become findings
            session.verify()
            info.session = session
            info.labels, info.timestamps, info.episodes = session.labels, session.timestamps, session.episodes
        except SessionError as exc:
            info.error = str(exc)
        infos.append(info)
    return sorted(infos, key=lambda info: info.name)


def _repaired_losses(meta: dict) -> list | None:
    """What a manifest rebuilt by ``car sessions --repair`` could not recover, or None for a recorded one."""
    repaired = meta.get("repaired")
    if repaired is None:
        return None
    lost = repaired.get("lost") if isinstance(repaired, dict) else None
    return lost if isinstance(lost, list) and lost else ["(not recorded)"]


def _timing(timestamps: np.ndarray, episodes: np.ndarray) -> dict:
    """Frame intervals within episodes: rate, gaps and backward steps, plus the series for the timeline."""
    same_episode = episodes[1:] == episodes[:-1]
    dt = np.diff(timestamps)[same_episode]
    positive = dt[dt > 0]
    median = float(np.median(positive)) if len(positive) else 0.0
    gap_limit = max(GAP_FACTOR * median, GAP_MIN_SECONDS)
    duration = 0.0
    for episode in np.unique(episodes):
        times = timestamps[episodes == episode]
        duration += float(times.max() - times.min()) if len(times) else 0.0
    # a continuous clock across episodes for the timeline: each episode continues where the last ended
    steps = np.diff(timestamps, prepend=timestamps[:1] if len(timestamps) else timestamps)
    steps[np.r_[True, ~same_episode] if len(timestamps) else []] = 0.0
    clock = np.cumsum(np.clip(steps, 0.0, None))
    if len(clock) > FPS_WINDOW:
        span = clock[FPS_WINDOW:] - clock[:-FPS_WINDOW]
        with np.errstate(divide="ignore"):
            rate = np.where(span > 0, FPS_WINDOW / span, np.nan)
        series = (clock[FPS_WINDOW:], rate)
    else:
        series = (clock, np.full(len(clock), np.nan))
    return {"duration_s": duration, "fps": len(timestamps) / duration if duration > 0 else None,
            "median_interval_s": median, "gaps": int(np.sum(dt > gap_limit)), "gap_limit_s": gap_limit,
            "longest_gap_s": float(dt.max()) if len(dt) else 0.0, "backward_steps": int(np.sum(dt < 0)),
            "series": series}


def _label_blips(labels: np.ndarray, episodes: np.ndarray) -> np.ndarray:
    """Positions of frames whose label differs from both neighbours, which agree with each other (a one-frame
    flicker, typical of a key tapped by mistake), int64 (B,)."""
    if len(labels) < 3:
        return np.zeros(0, np.int64)
    inner = (labels[1:-1] != labels[:-2]) & (labels[:-2] == labels[2:])
    same = (episodes[1:-1] == episodes[:-2]) & (episodes[1:-1] == episodes[2:])
    return np.flatnonzero(inner & same) + 1


def build_driving_report(root, seed: int = 0, out_name: str | None = None) -> Report:
    """Describe, explore and verify the driving sessions in ``root`` (or the session ``root`` itself)."""
    from . import plots

    started = time.perf_counter()
    root = Path(root).expanduser()
    infos = _open_sessions(root)
    readable = [i for i in infos if i.session is not None]
    findings: list[dict] = []
    for info in infos:
        if info.no_manifest:
            findings.append(_finding("no_manifest", "error", info.name, info.error, 1))
        elif info.error:
            findings.append(_finding("unreadable_session", "error", info.name, f"cannot be read: {info.error}", 1))
        elif info.session.damaged:
            damaged = [c for c in info.session.chunks if c["file"] in info.session.damaged]
            findings.append(_finding("damaged_chunks", "error", info.name,
                                     f"{len(damaged)} chunk(s) cannot be read, {info.session.lost_frames:,d} frames "
                                     "lost (the other chunks are used): " + "; ".join(
                                         info.session.damaged[c["file"]] for c in damaged[:3]),
                                     info.session.lost_frames))
    if not readable:
        raise SessionReportError(f"{root}: none of the {len(infos)} sessions can be read "
                                 f"(first: {infos[0].error})")
    label_names = tuple(readable[0].session.label_names)
    for info in readable[1:]:
        if tuple(info.session.label_names) != label_names:
            findings.append(_finding("label_names", "error", info.name,
                                     f"labels {', '.join(info.session.label_names)} differ from "
                                     f"{', '.join(label_names)}: left out", 1))
            info.session, info.error = None, "different label names"
    readable = [i for i in infos if i.session is not None]
    shapes = [tuple(i.session.frame_shape or ()) for i in readable]
    frame_counts = {s: sum(len(i.labels) for i, t in zip(readable, shapes, strict=True) if t == s) for s in set(shapes)}
    main_shape = max(frame_counts, key=frame_counts.get)
    imaged = [i for i, s in zip(readable, shapes, strict=True) if s == main_shape and len(i.labels)]
    for info, shape in zip(readable, shapes, strict=True):
        if shape != main_shape:
            findings.append(_finding("frame_shape", "info", info.name,
                                     f"frames are {'×'.join(map(str, shape))}, most are "
                                     f"{'×'.join(map(str, main_shape))}: left out of the image figures", 0))

    # one pass over the frames: hashes, frozen frames, per-label sums, samples, pixel range and histogram
    k = len(label_names)
    rng = np.random.default_rng(seed)
    all_labels = np.concatenate([i.labels for i in imaged]) if imaged else np.zeros(0, np.int64)
    offsets = np.cumsum([0] + [len(i.labels) for i in imaged])
    chosen = {c: np.sort(rng.choice(np.flatnonzero(all_labels == c), min(SAMPLES_PER_LABEL,
                                                                        int(np.sum(all_labels == c))),
                                    replace=False)) for c in range(k)}
    wanted = {int(g): (c, j) for c, picks in chosen.items() for j, g in enumerate(picks)}
    samples = np.full((k, SAMPLES_PER_LABEL, *main_shape), 255, np.uint8)
    sums = np.zeros((k, *main_shape), np.float64)
    low = np.full(main_shape, 255, np.uint8)
    high = np.zeros(main_shape, np.uint8)
    histogram = np.zeros(256, np.int64)
    frozen_shown: list[tuple[str, int, np.ndarray]] = []
    blips_shown: list[tuple[str, int, int, int, np.ndarray]] = []
    for n, info in enumerate(imaged):
        parts, frozen_parts = [], []
        position = 0
        previous, previous_episode = None, None
        blips = set(_label_blips(info.labels, info.episodes).tolist())
        info.session.verify_checksums = False  # verified above
        for chunk in info.session.iter_chunks():
            frames = chunk.frames
            parts.append(np.stack([quality.row_hashes(frames, seed=1), quality.row_hashes(frames, seed=2)], axis=1))
            # a frozen frame repeats the one before it byte for byte (within an episode)
            same = (frames[1:] == frames[:-1]).reshape(len(frames) - 1, -1).all(axis=1) if len(frames) > 1 \
                else np.zeros(0, bool)
            same &= chunk.episodes[1:] == chunk.episodes[:-1]
            first = (previous is not None and previous_episode == chunk.episodes[0]
                     and np.array_equal(previous, frames[0]))
            frozen = np.concatenate(([first], same))
            frozen_parts.append(frozen)
            for j in np.flatnonzero(frozen)[:max(0, MAX_THUMBNAILS - len(frozen_shown))]:
                frozen_shown.append((info.name, position + int(j), frames[j]))
            for j in range(len(frames)):
                spot = wanted.get(int(offsets[n] + position + j))
                if spot is not None:
                    samples[spot] = frames[j]
                if position + j in blips and len(blips_shown) < MAX_THUMBNAILS:
                    blips_shown.append((info.name, position + j, int(info.labels[position + j]),
                                        int(info.labels[position + j - 1]), frames[j]))
            for c in np.unique(chunk.labels):
                sums[c] += frames[chunk.labels == c].sum(axis=0, dtype=np.float64)
            np.minimum(low, frames.min(axis=0), out=low)
            np.maximum(high, frames.max(axis=0), out=high)
            histogram += np.bincount(frames.ravel(), minlength=256)
            previous, previous_episode = frames[-1], chunk.episodes[-1]
            position += len(frames)
        info.hashes = np.concatenate(parts) if parts else np.zeros((0, 2), np.uint64)
        info.frozen = np.concatenate(frozen_parts) if frozen_parts else np.zeros(0, bool)

    # per-session numbers
    sessions = []
    for info in infos:
        row = {"name": info.name, "path": str(info.path), "error": info.error}
        if info.session is not None:
            s = info.session
            timing = _timing(info.timestamps, info.episodes)
            frozen = int(info.frozen.sum()) if info.frozen is not None else (0 if not len(info.labels) else None)
            row.update({
                "source": s.meta.get("source"), "driver": s.meta.get("driver"), "created_at": s.meta.get("created_at"),
                "frame_shape": list(s.frame_shape or ()), "frames": int(len(info.labels)),
                "total_frames": int(s.total_frames), "lost_frames": int(s.lost_frames),
                "excluded_frames": int(s.total_frames - len(info.labels) - s.lost_frames),
                "episodes": int(len(np.unique(info.episodes))), "complete": bool(s.closed),
                "repaired": _repaired_losses(s.meta),
                "label_counts": np.bincount(info.labels, minlength=k).tolist(),
                "duration_s": timing["duration_s"], "fps": timing["fps"],
                "median_interval_s": timing["median_interval_s"], "gaps": timing["gaps"],
                "gap_limit_s": timing["gap_limit_s"], "longest_gap_s": timing["longest_gap_s"],
                "backward_steps": timing["backward_steps"], "frozen_frames": frozen,
                "label_blips": int(len(_label_blips(info.labels, info.episodes))),
                "stray_files": s.stray_files(),
                "chunks": [{"file": str(info.path / c["file"]), "frames": c["count"], "sha256": c["sha256"]}
                           for c in s.chunks]})
            row["_series"] = timing["series"]
        sessions.append(row)
    good = [r for r in sessions if r["error"] is None]

    for r in good:
        name = r["name"]
        if not r["frames"]:
            findings.append(_finding("empty_session", "warning", name, "holds no frames", 1))
        if r["repaired"]:
            findings.append(_finding("repaired_session", "warning", name,
                                     "the manifest was rebuilt from the chunks (car sessions --repair); lost: "
                                     + "; ".join(map(str, r["repaired"])), 1))
        elif not r["complete"]:
            findings.append(_finding("incomplete_session", "warning", name,
                                     "the recording was interrupted (no clean close); its complete chunks are "
                                     "used", 1))
        if r["stray_files"]:
            findings.append(_finding("stray_files", "info", name,
                                     f"{len(r['stray_files'])} files the manifest does not list (ignored): "
                                     f"{', '.join(r['stray_files'][:3])}", len(r["stray_files"])))
        if r["excluded_frames"]:
            findings.append(_finding("excluded_frames", "info", name,
                                     f"{r['excluded_frames']:,d} frames excluded by cleaning", r["excluded_frames"]))
        if r["backward_steps"]:
            findings.append(_finding("timestamps_backwards", "error", name,
                                     f"{r['backward_steps']:,d} times the timestamp goes backwards within an episode",
                                     r["backward_steps"]))
        if r["gaps"]:
            findings.append(_finding("timestamp_gaps", "warning", name,
                                     f"{r['gaps']:,d} pauses longer than {r['gap_limit_s']:.2f} s between frames "
                                     f"(longest {r['longest_gap_s']:.2f} s): dropped frames?", r["gaps"]))
        if r["frozen_frames"] is None:
            findings.append(_finding("frames_not_checked", "info", name, "frames of another size: not checked "
                                     "for repeats", 0))
        elif r["frozen_frames"]:
            findings.append(_finding("frozen_frames", "warning", name,
                                     f"{r['frozen_frames']:,d} frames repeat the previous frame exactly (a stalled "
                                     "camera?)", r["frozen_frames"]))
        if r["label_blips"]:
            findings.append(_finding("label_blips", "info", name,
                                     f"{r['label_blips']:,d} single-frame label changes (label differs from both "
                                     "neighbours)", r["label_blips"]))
    timing_ok = [r for r in good if r["frames"] and not (r["backward_steps"] or r["gaps"] or r["frozen_frames"])]
    if good and len(timing_ok) == len(good):
        findings.append(_finding("timing", "ok", None, "timestamps increase steadily in every session, "
                                 "no pauses and no repeated frames"))

    # duplicates over all sessions (128-bit hashes of each frame's bytes)
    if imaged:
        hashes = np.concatenate([i.hashes for i in imaged])
        keys = hashes.view(np.dtype((np.void, 16))).ravel()
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        copies = int(np.sum(counts[counts > 1] - 1))
        duplicate_groups = int(np.sum(counts > 1))
    else:
        copies = duplicate_groups = 0
    if copies:
        findings.append(_finding("duplicates", "info", None,
                                 f"{duplicate_groups:,d} frames occur more than once ({copies:,d} extra copies, "
                                 "frozen frames included)", copies, groups=duplicate_groups))
    else:
        findings.append(_finding("duplicates", "ok", None, "no frame occurs twice"))

    totals = np.sum([r["label_counts"] for r in good], axis=0) if good else np.zeros(k, np.int64)
    used = totals > 0
    if (~used).any():
        findings.append(_finding("unused_labels", "info", None, "labels never used: " + ", ".join(
            label_names[c] for c in np.flatnonzero(~used)), int(np.sum(~used))))
    if used.sum() >= 2:
        balance = quality.class_imbalance(totals[used])
        used_names = [label_names[c] for c in np.flatnonzero(used)]
        text = (f"label counts range from {totals[used].min():,d} ({used_names[balance['smallest']]}) to "
                f"{totals[used].max():,d} ({used_names[balance['largest']]}), ratio {balance['ratio']:.2f}")
        findings.append(_finding("class_imbalance", "warning" if balance["warning"] else "ok", None,
                                 text + (" (above 1.5: weight the loss or re-sample when training)"
                                         if balance["warning"] else ""), int(balance["warning"]),
                                 ratio=balance["ratio"]))
    constant = (low == high) if imaged else np.zeros(main_shape, bool)
    if constant.any():
        findings.append(_finding("constant_pixels", "info", None,
                                 f"{int(constant.sum()):,d} of {constant.size:,d} pixel values never change", int(
                                     constant.sum())))

    # ---- page
    n_frames = int(totals.sum())
    described = {
        "sessions": len(infos), "readable_sessions": len(good), "frames": n_frames,
        "frame_shape": list(main_shape), "frame_dtype": "uint8", "labels": list(label_names),
        "label_counts": totals.tolist(), "duration_s": float(sum(r["duration_s"] for r in good)),
        "bytes_on_disk": int(sum((Path(c["file"]).stat().st_size if Path(c["file"]).exists() else 0)
                                 for r in good for c in r["chunks"])),
        "fields": [{"name": "frame", "type": "uint8", "shape": list(main_shape)},
                   {"name": "label", "type": "uint8", "values": f"{k} labels"},
                   {"name": "timestamp", "type": "float64", "values": "seconds"},
                   {"name": "episode", "type": "int32", "values": "episode number within the session"}],
    }
    sessions_rows = [(r["name"], f"{r.get('source')}/{r.get('driver')}", r["frames"], r["excluded_frames"],
                      r["episodes"], f"{r['duration_s']:.1f} s", f"{r['fps']:.1f}" if r["fps"] else "-",
                      "yes" if r["complete"] else "interrupted") for r in good]
    description = [
        H.key_values([("sessions", f"{len(infos)} ({len(good)} readable)"), ("frames", f"{n_frames:,d}"),
                      ("frame", f"{'×'.join(map(str, main_shape))} uint8"),
                      ("labels", ", ".join(label_names)),
                      ("recorded time", f"{described['duration_s']:.1f} s"),
                      ("on disk", f"{described['bytes_on_disk'] / 2**20:.1f} MiB")]),
        "<h3>Fields (per frame)</h3>",
        H.table(("field", "type", "values"), [
            ("frame", "uint8", "×".join(map(str, main_shape)) + " pixels"),
            ("label", "uint8", ", ".join(f"{i} = {n}" for i, n in enumerate(label_names))),
            ("timestamp", "float64", "seconds"),
            ("episode", "int32", "episode (track, run) within the session")]),
        "<h3>Sessions</h3>",
        H.table(("session", "source/driver", "frames", "excluded", "episodes", "duration", "fps", "complete"),
                sessions_rows, numeric=(2, 3, 4, 5, 6)),
        "<h3>Source files</h3>",
        H.table(("session", "chunk", "frames", "sha256 (from the manifest, verified)"),
                [(r["name"], Path(c["file"]).name, c["frames"], H.Raw(f"<code>{H.esc(c['sha256'])}</code>"))
                 for r in good for c in r["chunks"][:20]], numeric=(2,), wrap=(3,)),
    ]
    distribution = H.figure(plots.class_distribution({"all sessions": totals}, label_names, "Label distribution"),
                            "Frames per label over all sessions.", "labels")
    exploration = [distribution]
    if good:
        shares = np.array([np.array(r["label_counts"]) / max(r["frames"], 1) for r in good])
        exploration = [H.figure_row(distribution, H.figure(
            plots.stacked_shares(shares, [r["name"] for r in good], label_names, "Label distribution per session"),
            "Share of each label within each session.", "per session"))]
        series = {r["name"]: r["_series"] for r in good if len(r["_series"][0])}
        lengths = H.figure(plots.horizontal_bars([r["duration_s"] for r in good], [r["name"] for r in good],
                                                 "Session lengths", "recorded seconds"),
                           "Frames per session: " + ", ".join(f"{r['name']}: {r['frames']:,d}" for r in good),
                           "session lengths")
        rate = (H.figure(plots.timelines(series, "Frame rate over time", "frames per second"),
                         f"Frames per second over a sliding window of {FPS_WINDOW} frames; episodes follow each "
                         "other.", "frame rate") if series else "")
        exploration.append(H.figure_row(rate, lengths))
    if imaged:
        rows = [c for c in range(k) if totals[c]]
        exploration.append(H.figure(plots.image_grid(samples[rows], [label_names[c] for c in rows],
                                                     "Sample frames per label", tile_inches=0.9),
                                    "Random frames of each label (seeded).", "sample frames"))
        counts_img = np.bincount(all_labels, minlength=k)
        means = np.stack([sums[c] / counts_img[c] for c in rows])
        exploration.append(H.figure_row(
            H.figure(plots.mean_images(means, [label_names[c] for c in rows], "Mean frame per label"),
                     "The average frame of each label.", "mean frames"),
            H.figure(plots.pixel_histogram({"all frames": histogram}),
                     "Share of channel values at each level (log scale).", "histogram")))
    quality_html = [H.findings_list(findings)]
    rows = [(r["name"], r["gaps"], f"{r['longest_gap_s']:.2f} s", r["backward_steps"],
             "-" if r["frozen_frames"] is None else r["frozen_frames"],
             r["label_blips"], f"{r['median_interval_s'] * 1000:.1f} ms") for r in good]
    quality_html.append(H.table(("session", "pauses", "longest pause", "backward steps", "frozen frames",
                                 "label blips", "median interval"), rows, numeric=(1, 2, 3, 4, 5, 6)))

    def thumb(frame: np.ndarray, caption: str) -> tuple[str, str]:
        return H.image_data_uri(frame, scale=max(1, 96 // max(frame.shape[:2]))), caption

    if frozen_shown:
        total_frozen = sum(r["frozen_frames"] or 0 for r in good)
        quality_html.append(f"<h3>Frozen frames ({len(frozen_shown)} of {total_frozen:,d})</h3>" + H.thumbnails(
            thumb(frame, f"{H.esc(name)} #{pos}<br>same as #{pos - 1}") for name, pos, frame in frozen_shown))
    if blips_shown:
        total_blips = sum(r["label_blips"] for r in good)
        quality_html.append(f"<h3>Single-frame label changes ({len(blips_shown)} of {total_blips:,d})</h3>"
                            + H.thumbnails(
            thumb(frame, f"{H.esc(name)} #{pos}<br><b>{H.esc(label_names[label])}</b> between "
                         f"{H.esc(label_names[around])}") for name, pos, label, around, frame in blips_shown))

    title = f"Data report: driving sessions in {root.name or root}"
    n_bad = sum(f["severity"] in ("warning", "error") for f in findings)
    page = H.page(title, "CRISP-DM data understanding for recorded driving: describe, explore and verify",
                  H.cards([(str(len(infos)), "sessions"), (f"{n_frames:,d}", "frames"),
                           (f"{described['duration_s']:.0f} s", "recorded"), (str(k), "labels"),
                           (str(n_bad), "warnings and errors")]),
                  [("description", "1. Description", "".join(description)),
                   ("exploration", "2. Exploration", "".join(exploration)),
                   ("quality", "3. Quality", "".join(quality_html))])
    for r in sessions:
        r.pop("_series", None)
    seconds = time.perf_counter() - started
    from .. import __version__

    data = {"report": "data", "kind": "driving", "title": title, "scratchpilot_version": __version__,
            "seed": seed, "dataset": str(root), "description": described, "sessions": sessions,
            "quality": {"duplicate_groups": duplicate_groups, "duplicate_copies": copies,
                        "constant_pixels": int(constant.sum())},
            "findings": findings, "seconds": seconds}
    lines = [f"# {title}", "", f"- {len(infos)} sessions ({len(good)} readable), {n_frames:,d} frames of "
             f"{'×'.join(map(str, main_shape))}, {described['duration_s']:.1f} s recorded",
             "- labels: " + ", ".join(f"{n} {c:,d}" for n, c in zip(label_names, totals.tolist(), strict=True)),
             "", "## Findings", "", *findings_markdown(findings), ""]
    if out_name:
        lines.append(f"Report: {out_name} ({seconds:.1f} s)")
    return Report(data=data, html=page, markdown="\n".join(lines) + "\n")
