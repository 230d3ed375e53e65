"""The simulator workflow: record an expert, train a pilot, check it, let it drive, and the demo.

Each command is a thin wrapper over a function that returns its figures, so tests and the demo call the
same code as the CLI.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ..cli import CommandError

#: expert perturbations (DART-style noise): a random command held for this many frames
NOISE_HOLD_FRAMES = (4, 12)


def _progress(total: int, desc: str, enabled: bool = True):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is in the `all` extra; without it, no bar
        return None
    # disable=None: draw on a terminal, stay quiet in logs
    return tqdm(total=total, desc=desc, unit="frame", leave=False, disable=None if enabled else True,
                mininterval=0.5)


# ------------------------------------------------------------------------------------------ recording
def record_expert(root, seeds, *, noise: float = 0.02, rng_seed: int = 0, progress: bool = True,
                  name: str | None = None, pilot=None, max_steps: int | None = None):
    """Record every frame of each track in ``seeds`` with the scripted expert's label for it.

    Who actually drives:

    - the expert (``pilot=None``), but with ``noise`` > 0 the car starts, with that probability at each
      step, a random command held for a few frames: the frames of the car drifting and the expert's labels
      for them teach the pilot how to recover;
    - or a trained ``pilot`` (DAgger): the pilot drives and the expert only labels, so the data covers
      the situations the pilot gets itself into.

    Labels are always the expert's choice; ``max_steps`` cuts episodes short (tests).
    Returns ``(session path, list of per-episode metrics)``.
    """
    from .expert import ScriptedExpert
    from .recorder import SessionWriter
    from .sim import MAX_EPISODE_STEPS, Simulator

    rng = np.random.default_rng(rng_seed)
    expert = ScriptedExpert()
    episodes = []
    seeds = list(seeds)
    driver = "expert" if pilot is None else "pilot+expert-labels"
    bar = _progress(len(seeds) * MAX_EPISODE_STEPS, f"recording ({driver})", progress)
    meta = {"seeds": seeds, "noise": noise, "rng_seed": rng_seed, "expert": expert.params.to_dict(),
            "dagger": pilot is not None}
    from ..nn import blas_threads

    with SessionWriter(root, source="sim", driver=driver, meta=meta, name=name) as writer, blas_threads(1):
        sim = Simulator(seeds[0])
        try:
            for episode, seed in enumerate(seeds):
                if episode:
                    sim.reset(seed)
                expert.reset(sim.track)
                if pilot is not None:
                    pilot.reset()
                hold, perturbation = 0, None
                while not sim.done and (max_steps is None or sim.metrics.steps < max_steps):
                    frame, timestamp = sim.read()
                    label = expert.act(sim.car)
                    writer.add(frame, label, timestamp, episode=episode)
                    if pilot is not None:
                        executed = pilot.decide(frame)[0]
                    else:
                        if hold == 0 and noise and rng.random() < noise:
                            hold = int(rng.integers(*NOISE_HOLD_FRAMES))
                            perturbation = str(rng.choice(["left", "right", "none", "forward"]))
                        executed = perturbation if hold else label
                        hold = max(0, hold - 1)
                    sim.send(executed)
                    if bar is not None:
                        bar.update(1)
                episodes.append({"episode": episode, **sim.metrics.to_dict()})
        finally:
            sim.close()
            if bar is not None:
                bar.close()
        writer.update_meta({"episodes": episodes})
        path = writer.path
    return path, episodes


def cmd_record(args: argparse.Namespace) -> int:
    if args.driver == "keyboard":
        from .keyboard import main as keyboard_main

        return keyboard_main(["--seed", str(args.seed)])
    seeds = range(args.seed, args.seed + args.episodes)
    path, episodes = record_expert(args.out, seeds, noise=args.noise)
    for e in episodes:
        print(f"track {e['seed']}: {e['steps']} frames, score {e['score']:.0f} (with noise {args.noise})")
    print(f"session: {path}")
    _write_json(args.json, {"session": str(path), "episodes": episodes})
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    from . import sessions as S

    try:
        if args.import_tub or args.import_npz:
            from .importers import import_autorccar, import_tub

            path = import_tub(args.import_tub, args.root) if args.import_tub else \
                import_autorccar(args.import_npz, args.root)
            print(f"imported {path}")
        if args.exclude:
            name, start, stop = args.exclude
            S.exclude(Path(args.root) / name, int(start), int(stop), args.reason)
        if args.restore:
            name, start, stop = args.restore
            S.restore(Path(args.root) / name, start=int(start), stop=int(stop))
        rows = S.summarize(args.root)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    print(S.format_table(rows))
    _write_json(args.json, {"sessions": rows})
    return 0


# ------------------------------------------------------------------------------------------- training
def split_by_group(groups: np.ndarray, val_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of validation rows: whole groups (episodes) are held out, never single frames —
    neighbouring frames are near-duplicates and would leak."""
    keys = np.unique(groups)
    n_val = int(round(val_fraction * len(keys)))
    if val_fraction > 0 and len(keys) > 1:
        n_val = min(max(1, n_val), len(keys) - 1)
    else:
        n_val = 0
    val_keys = rng.choice(keys, size=n_val, replace=False) if n_val else np.array([], dtype=keys.dtype)
    return np.isin(groups, val_keys)


def balanced_indices(labels: np.ndarray, rng: np.random.Generator, power: float = 0.5) -> np.ndarray:
    """Oversample rare labels: each class is drawn in proportion to count**power (0.5 = square root), so
    turns, rarer than straight driving, are seen more often without drowning the common classes."""
    classes, counts = np.unique(labels, return_counts=True)
    target = counts.astype(float) ** power
    target = target / target.sum() * len(labels)
    parts = []
    for c, n, t in zip(classes, counts, target, strict=True):
        members = np.flatnonzero(labels == c)
        t = max(int(round(t)), n)  # never drop examples, only repeat rare ones
        parts.append(np.concatenate([members, rng.choice(members, t - n, replace=True)]) if t > n else members)
    return rng.permutation(np.concatenate(parts))


def open_sessions(items) -> list:
    """Open every session named by ``items`` (session folders, or folders holding sessions)."""
    from .recorder import Session, list_sessions

    opened = [Session.open(p) for item in items for p in list_sessions(item)]
    if not opened:
        raise ValueError(f"no sessions found in {', '.join(map(str, items))}")
    return opened


def picked_frames(sessions, positions: np.ndarray) -> np.ndarray:
    """The raw frames at sorted ``positions`` of the sessions' frames stacked in order (as ``load_frames``
    stacks them), read one chunk at a time so only the picked frames stay in memory."""
    picked, offset = [], 0
    for session in sessions:
        for chunk in session.iter_chunks():
            local = positions[(positions >= offset) & (positions < offset + len(chunk.frames))] - offset
            picked.extend(chunk.frames[local])
            offset += len(chunk.frames)
    return np.stack(picked)


def train_pilot(sessions, *, hidden: int = 128, epochs: int = 10, val_fraction: float = 0.2, seed: int = 0,
                history_lag: int = 2, spec: dict | None = None, progress: bool = True, balance: float = 0.5):
    """Train the blog's 3-layer pilot (input → hidden → one output per label) on recorded sessions.

    ``balance``: rare labels are oversampled so each is drawn in proportion to count**balance (1 = as
    recorded, 0.5 = square root, 0 = all labels equally often).
    Returns ``(model, report)``: the model carries its labels, preprocessing spec and history lag in its
    metadata; the report has the split, class counts and train/validation accuracy.
    """
    from .. import nn
    from .pilot import with_history
    from .preprocess import default_spec, from_spec
    from .recorder import load_frames

    opened = open_sessions(sessions)
    frame_shape = opened[0].frame_shape
    preprocess = from_spec(spec or default_spec(frame_shape))
    # Too few episodes to hold some out (one long real-car recording, a donkeycar tub): cut them into
    # blocks of consecutive frames, and hold out whole blocks.
    episodes = sum(len(np.unique(s.episodes)) for s in opened)
    frames = load_frames(opened, preprocess, block_frames=100 if episodes < 5 else None)
    X = with_history(frames.features, frames.groups, history_lag)
    y = frames.labels
    rng = np.random.default_rng(seed)
    val = split_by_group(frames.groups, val_fraction, rng)
    train_idx = balanced_indices(y[~val], rng, power=balance)
    X_train, y_train = X[~val][train_idx], y[~val][train_idx]
    labels = list(frames.label_names)
    model = nn.Sequential([nn.Dense(X.shape[1], hidden, init="he"), nn.ReLU(), nn.Dropout(0.2),
                           nn.Dense(hidden, len(labels), init="glorot")],
                          loss=nn.SoftmaxCrossEntropy(),
                          optimizer=nn.Adam(lr=1e-3, weight_decay=1e-4, schedule=nn.CosineDecay(epochs, 0.05)),
                          seed=seed)
    validation = (X[val], y[val]) if val.any() else None
    model.fit(X_train, y_train, epochs=epochs, batch_size=64, validation_data=validation, progress=progress)
    counts = {labels[k]: int(n) for k, n in zip(*np.unique(y, return_counts=True), strict=True)}
    report = {
        "frames": int(len(y)), "features": int(X.shape[1]), "labels": labels, "label_counts": counts,
        "groups": len(frames.group_keys), "validation_groups": sorted({str(frames.group_keys[g]) for g in
                                                                       np.unique(frames.groups[val])}),
        "train_frames": int((~val).sum()), "validation_frames": int(val.sum()),
        "train_accuracy": model.history["accuracy"][-1],
        "validation_accuracy": model.history["val_accuracy"][-1] if validation else None,
    }
    if validation:
        majority = np.bincount(y[val], minlength=len(labels)).max() / val.sum()
        report["validation_majority_baseline"] = float(majority)
    model.metadata = {"task": "pilot", "labels": labels, "preprocessing": preprocess.spec,
                      "history_lag": history_lag, "sessions": [s.name for s in opened],
                      "frame_shape": list(frame_shape), "train_report": report,
                      "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return model, report


def cmd_train(args: argparse.Namespace) -> int:
    try:
        # preprocessing follows the frames: the simulator's crop for 96x96 frames, else block means
        model, report = train_pilot(args.sessions, hidden=args.hidden, epochs=args.epochs,
                                    val_fraction=args.val_fraction, seed=args.seed, balance=args.balance,
                                    history_lag=args.history_lag)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    model.save(args.model)
    print(f"{report['frames']:,d} frames, labels {report['label_counts']}")
    print(f"train accuracy {report['train_accuracy']:.2%}", end="")
    if report["validation_accuracy"] is not None:
        print(f", validation accuracy {report['validation_accuracy']:.2%} on held-out (session, episode[, block]) "
              f"{', '.join(report['validation_groups'])} (majority-class baseline "
              f"{report['validation_majority_baseline']:.2%})")
    else:
        print()
    print(f"saved {args.model}")
    _write_json(args.json, {**report, "model": str(args.model)})
    return 0


# ------------------------------------------------------------------------------------------- checking
def check_pilot(pilot, sessions, sheet_path=None, thumbnails: int = 40, seed: int = 0) -> dict:
    """Accuracy and confusion per label of a pilot on sessions, and a contact sheet of predictions."""
    from ..digits.metrics import confusion_matrix, per_class_report
    from .pilot import with_history
    from .recorder import load_frames

    opened = open_sessions(sessions)
    frames = load_frames(opened, pilot.preprocess)
    X = with_history(frames.features, frames.groups, pilot.history_lag)
    names = list(frames.label_names)
    if names != pilot.labels:
        raise ValueError(f"the sessions' labels {names} differ from the pilot's {pilot.labels}")
    predicted = pilot.model.predict(X)
    confusion = confusion_matrix(frames.labels, predicted, len(names))
    result = {"frames": int(len(predicted)), "accuracy": float(np.mean(predicted == frames.labels)),
              "labels": names, "confusion": confusion.tolist(),
              "per_label": [{**row, "label": names[row["class"]]} for row in per_class_report(confusion)]}
    if sheet_path:
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(predicted), size=min(thumbnails, len(predicted)), replace=False))
        raw_frames = picked_frames(opened, pick)
        contact_sheet(raw_frames, [names[i] for i in frames.labels[pick]], [names[i] for i in predicted[pick]],
                      sheet_path)
        result["contact_sheet"] = str(sheet_path)
    return result


def contact_sheet(frames: np.ndarray, truth: list[str], predicted: list[str], path, columns: int = 8,
                  scale: int = 2) -> None:
    """A grid of frames captioned 'true / predicted' (green when they agree, red otherwise)."""
    from PIL import Image, ImageDraw

    h, w = frames.shape[1:3]
    cell_w, cell_h = w * scale, h * scale + 14
    rows = -(-len(frames) // columns)
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, frame in enumerate(frames):
        image = Image.fromarray(frame if frame.ndim == 3 else np.stack([frame] * 3, axis=-1))
        x, y = (i % columns) * cell_w, (i // columns) * cell_h
        sheet.paste(image.resize((cell_w, h * scale), Image.NEAREST), (x, y))
        ok = truth[i] == predicted[i]
        draw.text((x + 3, y + h * scale + 1), f"{truth[i]} / {predicted[i]}", fill=(0, 128, 0) if ok else (200, 0, 0))
    sheet.save(path)


def cmd_check(args: argparse.Namespace) -> int:
    from ..digits.metrics import format_confusion, format_report
    from .pilot import Pilot

    try:
        pilot = Pilot.load(args.model)
        result = check_pilot(pilot, args.sessions, args.sheet)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    print(f"accuracy {result['accuracy']:.2%} on {result['frames']:,d} frames\n")
    print(format_confusion(np.array(result["confusion"]), result["labels"]) + "\n")
    print(format_report(result["per_label"], result["labels"]))
    print(f"\ncontact sheet: {result['contact_sheet']}")
    _write_json(args.json, result)
    return 0


# -------------------------------------------------------------------------------------------- driving
def drive_sim(pilot, seeds, *, video=None, video_every: int = 2, progress: bool = True,
              max_steps: int | None = None) -> dict:
    """Let the pilot drive each track of ``seeds`` in the simulator; per-track and summary figures.

    The decide latency (preprocess + forward) is measured on every step; the loop rate counts the
    simulator too. ``video`` saves the first track as a GIF of what the car saw and what it did.
    """
    from .pilot import run_pilot_loop
    from .sim import MAX_EPISODE_STEPS, Simulator

    tracks, all_decide, video_frames = [], [], []
    steps_total, seconds_total = 0, 0.0
    bar = _progress(len(seeds) * MAX_EPISODE_STEPS, "driving", progress)
    sim = Simulator(seeds[0])
    try:
        for i, seed in enumerate(seeds):
            if i:
                sim.reset(seed)
            pilot.reset()

            def on_step(frame, label, confidence, reason, _first=(i == 0)):
                if bar is not None:
                    bar.update(1)
                if video and _first and sim.metrics.steps % video_every == 0:
                    video_frames.append((frame.copy(), label, confidence))

            stats = run_pilot_loop(sim, pilot, sim, done=lambda: sim.done, on_step=on_step, max_steps=max_steps)
            summary = stats.summary()
            tracks.append({**sim.metrics.to_dict(), "decide_ms_p50": summary["decide_ms_p50"],
                           "decide_ms_p99": summary["decide_ms_p99"], "loop_hz": summary["loop_hz"],
                           "labels": summary["labels"]})
            all_decide += stats.decide_ms
            steps_total += stats.steps
            seconds_total += stats.loop_seconds
    finally:
        sim.close()
        if bar is not None:
            bar.close()
    decide = np.asarray(all_decide)
    result = {"tracks": tracks, "mean_score": float(np.mean([t["score"] for t in tracks])),
              "min_score": float(np.min([t["score"] for t in tracks])),
              "laps_completed": int(sum(t["lap_completed"] for t in tracks)),
              "decide_ms_p50": float(np.percentile(decide, 50)), "decide_ms_p99": float(np.percentile(decide, 99)),
              "loop_hz": steps_total / seconds_total if seconds_total else 0.0}
    if video and video_frames:
        save_video(video_frames, video)
        result["video"] = str(video)
    return result


def save_video(frames, path, scale: int = 3) -> None:
    """Write (frame, label, confidence) triples as an animated GIF with the decision written on each."""
    from PIL import Image, ImageDraw

    images = []
    for frame, label, confidence in frames:
        image = Image.fromarray(frame).resize((frame.shape[1] * scale, frame.shape[0] * scale), Image.NEAREST)
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, 0, image.width, 14), fill=(0, 0, 0))
        draw.text((4, 2), f"{label} {confidence:.0%}", fill=(255, 255, 0))
        images.append(image.convert("P", palette=Image.ADAPTIVE, colors=64))
    images[0].save(path, save_all=True, append_images=images[1:], duration=40, loop=0, optimize=True)


def format_drive_table(result: dict, expert: dict | None = None) -> str:
    head = f"{'track':>6} {'score':>7} {'tiles %':>8} {'off-track':>9} {'lap':>4} {'p99 ms':>7}"
    if expert:
        head += f" {'expert':>7}"
    lines = [head]
    for i, t in enumerate(result["tracks"]):
        line = (f"{t['seed']:>6} {t['score']:>7.1f} {t['tiles_visited_pct']:>8.1f} {t['off_track_steps']:>9d} "
                f"{'yes' if t['lap_completed'] else 'no':>4} {t['decide_ms_p99']:>7.3f}")
        if expert:
            line += f" {expert['tracks'][i]['score']:>7.1f}"
        lines.append(line)
    summary = (f"{'mean':>6} {result['mean_score']:>7.1f}   laps {result['laps_completed']}/{len(result['tracks'])}, "
               f"decide p50 {result['decide_ms_p50']:.3f} ms p99 {result['decide_ms_p99']:.3f} ms, "
               f"loop {result['loop_hz']:.0f} Hz")
    if expert:
        summary += f"; expert mean {expert['mean_score']:.1f}"
    lines.append(summary)
    return "\n".join(lines)


def cmd_drive(args: argparse.Namespace) -> int:
    from .pilot import Pilot

    if not args.sim:
        raise CommandError("choose --sim (the simulator) or --source tcp://PI:8000 (the real car)")
    try:
        pilot = Pilot.load(args.model)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    result = drive_sim(pilot, list(range(args.seed, args.seed + args.tracks)), video=args.video)
    print(format_drive_table(result))
    _write_json(args.json, result)
    return 0


# ---------------------------------------------------------------------------------------------- demo
def expert_scores(seeds, progress: bool = False) -> dict:
    """The scripted expert on the same tracks, without rendering (state only: fast)."""
    from .expert import ScriptedExpert, drive_episode
    from .sim import Simulator

    tracks = []
    expert = ScriptedExpert()
    for seed in seeds:
        with Simulator(seed, render_frames=False) as sim:
            tracks.append(drive_episode(sim, expert).to_dict())
    return {"tracks": tracks, "mean_score": float(np.mean([t["score"] for t in tracks]))}


DEMO_EPISODES = 10  #: expert episodes recorded first
DEMO_DAGGER_ROUNDS = 2  #: rounds of "the pilot drives new tracks, the expert labels, the pilot is retrained"
DEMO_DAGGER_EPISODES = 8  #: episodes per DAgger round
DEMO_EPOCHS = 10
DEMO_TRAIN_SEEDS_START = 1000  #: training tracks; the demo drives tracks seed..seed+N-1 (< 1000): unseen


def learn_to_drive(root, *, episodes: int = DEMO_EPISODES, rounds: int = DEMO_DAGGER_ROUNDS,
                   dagger_episodes: int = DEMO_DAGGER_EPISODES, seed: int = 0, log=print, progress: bool = True,
                   max_steps: int | None = None):
    """Imitation learning with DAgger (Ross, Gordon & Bagnell, 2011).

    Record the expert and train; then, each round, the pilot drives ``dagger_episodes`` new training tracks
    while the expert labels every frame it sees, and the pilot is trained again on everything. Plain
    imitation only ever sees the expert's states: one mistake leads to frames it never saw.

    Each model's own drive doubles as its validation (on training tracks, never the demo's unseen ones):
    the model of the round with the best mean score is returned. Measured here, a round's model can be
    much worse than the one before (mean 843 then 400 on its tracks), so picking beats taking the last.
    Returns ``(model, report, log of rounds)``.
    """
    from .pilot import Pilot

    first = DEMO_TRAIN_SEEDS_START
    t0 = time.perf_counter()
    session, recorded = record_expert(root, range(first, first + episodes), progress=progress, max_steps=max_steps)
    history = [{"round": "expert", "seconds": time.perf_counter() - t0, "frames": sum(e["steps"] for e in recorded),
                "scores": [e["score"] for e in recorded]}]
    log(f"    expert: {history[0]['frames']:,d} frames on tracks {first}..{first + episodes - 1} "
        f"({history[0]['seconds']:.0f} s)")
    sessions, next_seed, candidates = [session], first + episodes, []
    for r in range(rounds + 1):
        t1 = time.perf_counter()
        model, report = train_pilot(sessions, seed=seed, epochs=DEMO_EPOCHS, progress=progress)
        log(f"    round {r}: trained on {report['frames']:,d} frames, validation accuracy "
            f"{report['validation_accuracy']:.1%} (majority baseline {report['validation_majority_baseline']:.1%}), "
            f"{time.perf_counter() - t1:.0f} s")
        t2 = time.perf_counter()
        seeds = range(next_seed, next_seed + dagger_episodes)
        session, driven = record_expert(root, seeds, pilot=Pilot(model), progress=progress, max_steps=max_steps)
        next_seed += dagger_episodes
        sessions.append(session)  # the last round's frames are recorded but not trained on
        scores = [e["score"] for e in driven]
        candidates.append((float(np.mean(scores)), r, model, report))
        history.append({"round": r, "seconds": time.perf_counter() - t2, "tracks": list(seeds), "scores": scores,
                        "frames": report["frames"], "validation_accuracy": report["validation_accuracy"]})
        log(f"    round {r}: the pilot drove tracks {seeds[0]}..{seeds[-1]} (mean score {np.mean(scores):.0f}) "
            f"while the expert labelled, {time.perf_counter() - t2:.0f} s")
    best_score, best_round, model, report = max(candidates, key=lambda c: c[0])
    report = {**report, "chosen_round": best_round, "chosen_round_mean_score": best_score}
    model.metadata["train_report"] = report
    log(f"    chosen: the round {best_round} pilot (mean score {best_score:.0f} on its training tracks)")
    return model, report, history


def cmd_demo(args: argparse.Namespace) -> int:
    from .pilot import Pilot

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    episodes = args.episodes or DEMO_EPISODES
    rounds = DEMO_DAGGER_ROUNDS if args.rounds is None else args.rounds
    dagger_episodes = args.dagger_episodes or DEMO_DAGGER_EPISODES
    t0 = time.perf_counter()
    print(f"1/3 learning to drive: the scripted expert on {episodes} training tracks, then "
          f"{rounds} rounds of the pilot driving while the expert labels (DAgger)", flush=True)
    model, report, learning = learn_to_drive(out / "sessions", episodes=episodes, seed=args.seed,
                                           rounds=rounds, dagger_episodes=dagger_episodes,
                                           max_steps=args.max_steps, log=lambda line: print(line, flush=True))
    model_path = out / "pilot.npz"
    model.save(model_path)
    learn_s = time.perf_counter() - t0

    seeds = list(range(args.seed, args.seed + args.tracks))
    print(f"2/3 the pilot drives {len(seeds)} unseen tracks (seeds {seeds[0]}..{seeds[-1]})", flush=True)
    t1 = time.perf_counter()
    result = drive_sim(Pilot(model), seeds, video=out / "drive.gif", max_steps=args.max_steps)
    drive_s = time.perf_counter() - t1
    print("3/3 the expert on the same tracks, for comparison", flush=True)
    expert = expert_scores(seeds)
    total_s = time.perf_counter() - t0
    print()
    print(format_drive_table(result, expert))
    results = {"mean_score": result["mean_score"], "expert_mean_score": expert["mean_score"],
               "decide_ms_p99": result["decide_ms_p99"], "decide_ms_p50": result["decide_ms_p50"],
               "loop_hz": result["loop_hz"], "laps_completed": result["laps_completed"],
               "tracks": result["tracks"], "expert_tracks": expert["tracks"], "train_report": report,
               "learning_rounds": learning, "timings": {"learn_s": learn_s, "drive_s": drive_s, "total_s": total_s},
               "model": str(model_path), "video": result.get("video")}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    _write_json(args.json, results)
    print(f"\nmodel {model_path}, video {result.get('video')}, results {out / 'results.json'} "
          f"({total_s / 60:.1f} min)")
    return 0


def _write_json(path, payload) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")
