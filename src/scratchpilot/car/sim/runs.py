"""Runs in the simulator, each one vehicle loop: record the expert, let a pilot drive, score the expert.

Every run builds the same :class:`~scratchpilot.car.vehicle.Vehicle` the real car uses -- a frame source,
whoever chooses the label, the :class:`~scratchpilot.car.safety.Safety` gate in front of the car link --
with the simulator as both the camera and the car link.
"""

from __future__ import annotations

import numpy as np

from ...util.progress import progress as progress_bar
from ..parts import PilotPart, Progress, RecorderPart, Tally, VideoPart
from ..safety import Safety
from ..vehicle import Vehicle, percentiles
from .appearance import STANDARD
from .parts import ExpertPart, Perturbation, SimFrames


def sim_safety(sim) -> Safety:
    """The safety gate on the simulator: simulated time, no frame-age limit (a simulated frame is never
    late), and "hold still" sent on every stopped frame (the simulated world only moves on a command)."""
    return Safety(sim, max_frame_age=None, clock=lambda: sim.time, stop_repeat_s=0.0)


def add_sim_gate(car: Vehicle, sim, inputs=("label", "confidence", "frame_time")) -> Safety:
    """Put the simulator's safety gate (:func:`sim_safety`) into ``car``, outputs ``(sent, stop)``. It runs
    on frames only: once the episode is over there is no frame and no car to command, and that is not a
    stop (the real car's gate, by contrast, must also run without a frame)."""
    safety = sim_safety(sim)
    car.add(safety, inputs=inputs, outputs=("sent", "stop"), run_if="image", name="safety")
    return safety


def pilot_vehicle(sim, pilot, *, max_steps: int | None = None, extra=()) -> Vehicle:
    """sim frames -> pilot -> safety -> the simulator; ``extra`` parts ``(part, inputs, outputs)`` follow."""
    car = Vehicle()
    car.add(SimFrames(sim, max_steps), outputs=("image", "frame_time", "end"))
    car.add(PilotPart(pilot), inputs=("image",), outputs=("label", "confidence"), run_if="image", name="pilot")
    add_sim_gate(car, sim)
    for part, inputs, outputs in extra:
        car.add(part, inputs, outputs)
    return car


def record_expert(root, seeds, *, noise: float = 0.02, rng_seed: int = 0, progress: bool = True,
                  name: str | None = None, pilot=None, max_steps: int | None = None, appearance=None):
    """Record every frame of each track in ``seeds`` with the scripted expert's label for it.

    Who actually drives:

    - the expert (``pilot=None``), but with ``noise`` > 0 the car starts, with that probability at each
      step, a random command held for a few frames: the frames of the car drifting and the expert's labels
      for them teach the pilot how to recover;
    - or a trained ``pilot`` (DAgger): the pilot drives and the expert only labels, so the data covers
      the situations the pilot gets itself into.

    Labels are always the expert's choice; ``max_steps`` cuts episodes short (tests). ``appearance`` is
    how the world looks (:mod:`.appearance`): one :class:`~.appearance.Appearance` for every track, or a
    function of the track seed giving each track its own (None: the standard look).
    Returns ``(session path, list of per-episode metrics)``.
    """
    from ...nn import blas_threads
    from ..sessions.writer import SessionWriter
    from .env import MAX_EPISODE_STEPS, Simulator
    from .expert import ScriptedExpert

    rng = np.random.default_rng(rng_seed)
    expert = ScriptedExpert()
    episodes = []
    seeds = list(seeds)
    driver = "expert" if pilot is None else "pilot+expert-labels"
    looks = {seed: (appearance(seed) if callable(appearance) else appearance) or STANDARD for seed in seeds}
    meta = {"seeds": seeds, "noise": noise, "rng_seed": rng_seed, "expert": expert.params.to_dict(),
            "dagger": pilot is not None, "appearance": {str(seed): look.to_dict() for seed, look in looks.items()}}
    bar = progress_bar(total=len(seeds) * MAX_EPISODE_STEPS, desc=f"recording ({driver})", unit="frame",
                       enabled=progress)
    with SessionWriter(root, source="sim", driver=driver, meta=meta, name=name) as writer, blas_threads(1), bar:
        sim = Simulator(seeds[0], appearance=looks[seeds[0]])
        try:
            car = Vehicle()
            car.add(SimFrames(sim, max_steps), outputs=("image", "frame_time", "end"))
            car.add(ExpertPart(expert, sim), outputs=("expert_label",), run_if="image")
            if pilot is None:
                car.add(Perturbation(noise, rng), inputs=("expert_label",), outputs=("label",), run_if="image")
            else:
                car.add(PilotPart(pilot), inputs=("image",), outputs=("label", "confidence"), run_if="image")
            car.add(RecorderPart(writer), inputs=("image", "expert_label", "frame_time", "episode"),
                    outputs=("recorded",))
            add_sim_gate(car, sim)
            car.add(Progress(bar))
            for episode, seed in enumerate(seeds):
                if episode:
                    sim.appearance = looks[seed]
                    sim.reset(seed)
                expert.reset(sim.track)
                if pilot is not None:
                    pilot.reset()
                car.memory["episode"] = episode
                car.run()
                episodes.append({"episode": episode, **sim.metrics.to_dict()})
        finally:
            sim.close()
        writer.update_meta({"episodes": episodes})
        path = writer.path
    return path, episodes


def drive_sim(pilot, seeds, *, video=None, video_every: int = 2, progress: bool = True,
              max_steps: int | None = None, appearance=None, log_part=None) -> dict:
    """Let the pilot drive each track of ``seeds`` in the simulator; per-track and summary figures.

    The decide latency (preprocess + forward) is measured on every step; the loop rate counts the
    simulator too. ``video`` saves the first track as a GIF of what the car saw and what it did;
    ``appearance`` is how the world and the camera look (:mod:`.appearance`; default standard);
    ``log_part`` (a :class:`~scratchpilot.car.monitoring.DriveLogPart`) logs every decision.
    """
    from ...nn import blas_threads
    from .env import MAX_EPISODE_STEPS, Simulator

    tracks, all_decide, steps_total, seconds_total = [], [], 0, 0.0
    recorder = VideoPart(every=video_every, enabled=bool(video))
    appearance = appearance or STANDARD
    desc = "driving" if appearance is STANDARD else f"driving ({appearance.name})"
    bar = progress_bar(total=len(seeds) * MAX_EPISODE_STEPS, desc=desc, unit="frame", enabled=progress)
    sim = Simulator(seeds[0], appearance=appearance)
    try:
        # one frame at a time: more BLAS threads only add latency to a product this small
        with blas_threads(1), bar:
            for i, seed in enumerate(seeds):
                if i:
                    sim.reset(seed)
                pilot.reset()
                recorder.enabled = bool(video) and i == 0
                sent = Tally()
                extra = [(recorder, ("image", "sent", "confidence"), ()), (sent, ("sent",), ()),
                         (Progress(bar), (), ())]
                if log_part is not None:
                    extra.append((log_part, ("image", "label", "confidence", "sent", "stop"), ()))
                car = pilot_vehicle(sim, pilot, max_steps=max_steps, extra=extra)
                run = car.run()
                decide = list(run.part_ms["pilot"])
                timing = percentiles(decide, 50, 99)
                tracks.append({**sim.metrics.to_dict(), "decide_ms_p50": timing["p50"],
                               "decide_ms_p99": timing["p99"], "loop_hz": run.loop_hz, "labels": sent.counts})
                all_decide += decide
                steps_total += run.ticks
                seconds_total += run.seconds
    finally:
        sim.close()
    decide = np.asarray(all_decide)
    result = {"appearance": appearance.to_dict(), "tracks": tracks,
              "mean_score": float(np.mean([t["score"] for t in tracks])),
              "min_score": float(np.min([t["score"] for t in tracks])),
              "laps_completed": int(sum(t["lap_completed"] for t in tracks)),
              "decide_ms_p50": float(np.percentile(decide, 50)), "decide_ms_p99": float(np.percentile(decide, 99)),
              "loop_hz": steps_total / seconds_total if seconds_total else 0.0}
    if video and recorder.frames:
        save_video(recorder.frames, video)
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


def expert_scores(seeds, progress: bool = False) -> dict:
    """The scripted expert on the same tracks, without rendering (state only: fast)."""
    from .env import Simulator
    from .expert import ScriptedExpert, drive_episode

    tracks = []
    expert = ScriptedExpert()
    for seed in seeds:
        with Simulator(seed, render_frames=False) as sim:
            tracks.append(drive_episode(sim, expert).to_dict())
    return {"tracks": tracks, "mean_score": float(np.mean([t["score"] for t in tracks])),
            "min_score": float(np.min([t["score"] for t in tracks]))}


def drive_conditions(pilot, seeds, names, *, video=None, progress: bool = True,
                     max_steps: int | None = None, log_part=None) -> dict[str, dict]:
    """:func:`drive_sim` once per named appearance condition (:data:`~.appearance.CONDITIONS`), on the same
    tracks; the video, if asked for, shows the first condition."""
    from .appearance import condition

    looks = [condition(name) for name in names]  # every name checked before the first drive
    return {look.name: drive_sim(pilot, seeds, video=video if i == 0 else None, progress=progress,
                                 max_steps=max_steps, appearance=look, log_part=log_part)
            for i, look in enumerate(looks)}
