"""``scratchpilot car drive``: the network drives, in the simulator (``--sim``) or the real car
(``--source tcp://PI:8000`` with ``--serial PORT`` or ``--dry-run``)."""

from __future__ import annotations

from ...errors import CommandError
from ...util.files import write_json_result
from .common import load_pilot, open_link, open_window, release, setup_logging, stream_client


def run(args) -> int:
    if getattr(args, "source", None):
        return drive_real_car(args)
    if not args.sim:
        raise CommandError("choose --sim (the simulator) or --source tcp://PI:8000 (the real car)")
    from ..sim.runs import drive_conditions

    pilot = load_pilot(args.model)
    names = list(dict.fromkeys(getattr(args, "appearance", None) or ["standard"]))
    log_part = open_drive_log(args)
    results = drive_conditions(pilot, list(range(args.seed, args.seed + args.tracks)), names, video=args.video,
                               log_part=log_part)
    if log_part is not None:
        log_part.log.close()
        print(f"{log_part.written:,d} decisions logged in {log_part.log.folder}")
    for name, result in results.items():
        if len(results) > 1:
            print(f"\n{name}")
        print(format_drive_table(result))
    if len(results) > 1:
        print("\n" + format_conditions_table(results))
    # one condition: its result as before; several: one result per condition
    write_json_result(args.json, results[names[0]] if len(results) == 1 else {"conditions": results})
    return 0


def open_drive_log(args):
    """The :class:`~..monitoring.DriveLogPart` ``car drive`` was asked for (None with ``--no-log``)."""
    if not getattr(args, "log_on", True):
        return None
    from ...monitor.predlog import PredictionLog, default_log_dir
    from ...monitor.profile import model_id
    from ..monitoring import DriveLogPart

    folder = args.log or default_log_dir("drive")
    try:
        log = PredictionLog(folder, name="decisions")
    except OSError as exc:
        raise CommandError(f"--log {folder}: cannot write there: {exc.strerror or exc}") from None
    print(f"prediction log: {log.folder}", flush=True)
    return DriveLogPart(log, model_id(args.model))


def format_conditions_table(results: dict[str, dict], expert: dict | None = None) -> str:
    """One line per appearance condition: mean and worst track, laps, decide p99 and loop rate, and the
    expert's mean beside them (it reads the track's geometry, so it scores the same under every look)."""
    head = f"{'condition':<10} {'mean':>7} {'worst':>7} {'laps':>6} {'p99 ms':>7} {'loop Hz':>8}"
    if expert:
        head += f" {'expert':>7} {'vs expert':>9}"
    lines = [head]
    for name, r in results.items():
        line = (f"{name:<10} {r['mean_score']:>7.1f} {r['min_score']:>7.1f} "
                f"{r['laps_completed']:>3d}/{len(r['tracks']):<2d} {r['decide_ms_p99']:>7.3f} {r['loop_hz']:>8.0f}")
        if expert:
            line += f" {expert['mean_score']:>7.1f} {r['mean_score'] / expert['mean_score']:>9.1%}"
        lines.append(line)
    return "\n".join(lines)


def format_drive_table(result: dict, expert: dict | None = None) -> str:
    """Per-track scores (and the expert's beside them), then the means and the decide latency."""
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


def drive_real_car(args) -> int:
    """``car drive --model M --source tcp://PI:8000 (--serial PORT | --dry-run)``: the network drives."""
    from ..hardware.real_car import RealCar
    from ..hardware.window import CarWindow
    from ..preprocess import PreprocessSpecError
    from ..safety import Safety

    setup_logging()
    if not args.dry_run and not args.serial:
        raise CommandError("driving the real car needs --serial PORT (the Arduino), or --dry-run to only "
                           "show the commands")
    pilot = load_pilot(args.model)
    link = open_link(args.serial, dry_run=args.dry_run)
    client = window = car = None
    ended = "error"
    try:
        client = stream_client(args.source)
        window = open_window(f"scratchpilot drive  {args.source}", not getattr(args, "no_window", False))
        safety = Safety(link, max_frame_age=args.max_frame_age, min_confidence=args.min_confidence or None)
        log_part = open_drive_log(args)
        car = RealCar(client, safety, window, pilot=pilot, duration_s=getattr(args, "duration", None),
                      log_part=log_part)
        target = "dry run, nothing is sent" if args.dry_run else f"serial {args.serial}"
        print(f"driving from {args.source} ({target}); "
              + ("space = e-stop, Esc = quit" if isinstance(window, CarWindow) else "Ctrl-C = stop"), flush=True)
        try:
            ended = car.run()
        except KeyboardInterrupt:
            ended = "Ctrl-C"
        except PreprocessSpecError as exc:
            raise CommandError(f"{args.model}: {exc}") from None
    finally:
        release(link, client, window)
    from ..vehicle import percentiles

    summary = {"model": str(args.model), "source": args.source, "serial": args.serial, "dry_run": args.dry_run,
               "ended": ended, "max_frame_age_s": args.max_frame_age, "min_confidence": args.min_confidence,
               **car.summary(), "stream": dict(client.stats), "link": dict(link.stats),
               "serial_round_trip_ms": percentiles(getattr(link, "round_trip_ms", ()), 50, 99)}
    latency = summary["latency_ms"]
    print(f"{summary['commands']} commands from {summary['decisions']} decisions "
          f"({summary['decisions_per_s']:.1f}/s), latency p50 {latency['p50']} ms p99 {latency['p99']} ms, "
          f"{summary['stops_total']} stop(s); ended: {ended}", flush=True)
    for stop in summary["stops"][:20]:
        print(f"  stop at {stop['t_s']:.2f} s (frame {stop['frame']}): {stop['reason']}", flush=True)
    write_json_result(getattr(args, "json", None), summary)
    return 0
