"""``scratchpilot car record``: labelled frames from the scripted expert or the keyboard in the simulator,
or from the real car's stream with the arrow keys (``--source tcp://PI:8000 --keyboard``)."""

from __future__ import annotations

from ...errors import CommandError
from ...util.files import write_json_result
from .common import open_link, open_window, release, setup_logging, stream_client


def run(args) -> int:
    from ..sessions.format import SessionError

    try:
        return _record(args)
    except SessionError as exc:  # a chunk that cannot be written ends the recording, with what it kept
        raise CommandError(f"recording stopped: {exc} (the chunks written before it are kept)") from None


def _record(args) -> int:
    if getattr(args, "source", None):
        return record_real_car(args)
    if args.driver == "keyboard":
        return record_sim_keyboard(args)
    from ..sim.runs import record_expert

    seeds = range(args.seed, args.seed + args.episodes)
    path, episodes = record_expert(args.out, seeds, noise=args.noise)
    for e in episodes:
        print(f"track {e['seed']}: {e['steps']} frames, score {e['score']:.0f} (with noise {args.noise})")
    print(f"session: {path}")
    write_json_result(args.json, {"session": str(path), "episodes": episodes})
    return 0


def sim_keyboard_vehicle(sim, window, writer, *, max_steps: int | None = None):
    """The simulator driven by the arrow keys: sim frames -> window keys -> safety -> the simulator, with
    every frame the keys drove recorded. Returns ``(vehicle, recorder part)``."""
    from ..hardware.window import WindowControls, WindowDisplay
    from ..parts import KeyboardPart, RecorderPart
    from ..sim.parts import SimFrames
    from ..sim.runs import add_sim_gate
    from ..vehicle import Vehicle

    recorder = RecorderPart(writer)
    car = Vehicle()
    car.add(SimFrames(sim, max_steps), outputs=("image", "frame_time", "end"))
    car.add(WindowControls(window), outputs=("held", "estop", "end"))
    car.add(KeyboardPart(), inputs=("held",), outputs=("label",), run_if="image")
    safety = add_sim_gate(car, sim, inputs=("label", "confidence", "frame_time", "source_fault", "estop"))
    car.add(recorder, inputs=("image", "label", "frame_time", "episode", "stop"), outputs=("recorded",))
    count = lambda: f"recorded: {recorder.stats['recorded']}"  # noqa: E731
    car.add(WindowDisplay(window, safety, "keys", count, clock=lambda: sim.time),
            inputs=("image", "label", "confidence", "stop", "frame_time"))
    return car, recorder


def record_sim_keyboard(args) -> int:
    """Drive a simulated track with the arrow keys in a window, recording every frame the keys drove."""
    from ..sessions.writer import SessionWriter
    from ..sim.env import FPS, Simulator

    window = open_window(f"scratchpilot record  track {args.seed}")
    try:
        with Simulator(args.seed) as sim, SessionWriter(args.out, source="sim", driver="keyboard",
                                                        meta={"seeds": [args.seed]}) as writer:
            car, recorder = sim_keyboard_vehicle(sim, window, writer)
            print("arrow keys drive, space = e-stop, Esc = quit", flush=True)
            ended = car.run(rate_hz=FPS).ended  # the simulator's own rate, so a person can follow
            m = sim.metrics
            episodes = [m.to_dict()]
            writer.update_meta({"episodes": episodes})
            path = writer.path
    finally:
        window.close()
    print(f"track {args.seed}: score {m.score:.1f}, {m.tiles_visited}/{m.tiles_total} tiles, {m.steps} frames, "
          f"{recorder.stats['recorded']} recorded into {path} ({ended})", flush=True)
    write_json_result(args.json, {"session": str(path), "episodes": episodes, "recorder": recorder.stats})
    return 0


def record_real_car(args) -> int:
    """``car record --source tcp://PI:8000 --keyboard [--serial PORT]``: label frames with the arrow keys.

    Each frame is labelled with the arrow keys held when it arrives, one label per frame for as long as
    keys are held; the keys also drive the car through the safety gate.
    """
    from ..hardware.real_car import RealCar
    from ..safety import Safety
    from ..sessions.writer import SessionWriter

    setup_logging()
    if not getattr(args, "keyboard", False):
        raise CommandError("recording from a real car needs --keyboard (the arrow keys label the frames)")
    max_age = getattr(args, "max_frame_age", 0.2)
    link = open_link(getattr(args, "serial", None))
    client = None
    window = writer = car = None
    ended = "error"
    try:
        client = stream_client(args.source)
        window = open_window(f"scratchpilot record  {args.source}")
        writer = SessionWriter(args.out, source=args.source, driver="keyboard",
                               meta={"serial": getattr(args, "serial", None), "max_frame_age_s": max_age,
                                     "labelling": "arrow keys held when each frame arrived"})
        car = RealCar(client, Safety(link, max_frame_age=max_age), window, writer=writer,
                      duration_s=getattr(args, "duration", None))
        print(f"recording {args.source} into {writer.path}; arrow keys drive and label, space = e-stop, "
              "Esc = quit", flush=True)
        try:
            ended = car.run()
        except KeyboardInterrupt:
            ended = "Ctrl-C"
        writer.update_meta({"stream": dict(client.stats), "recorder": dict(car.recorder.stats),
                            "stops": car.safety.stop_count})
    finally:
        release(link, client, window, writer)
    recorder = car.recorder
    summary = {"session": str(writer.path), "ended": ended, "frames_recorded": recorder.stats["recorded"],
               "labels": dict(recorder.label_counts), "recorder": dict(recorder.stats),
               "stream": dict(client.stats), "link": dict(link.stats), **car.safety.summary()}
    print(f"recorded {summary['frames_recorded']} frames into {writer.path} ({ended}); labels "
          f"{summary['labels']}; {car.safety.stop_count} stop(s)", flush=True)
    write_json_result(getattr(args, "json", None), summary)
    return 0
