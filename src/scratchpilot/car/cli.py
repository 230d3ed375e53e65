"""``scratchpilot car ...`` and ``scratchpilot demo``: record, sessions, train, check, drive, stream.

The handlers live in :mod:`scratchpilot.car.commands`, one module per command; only argparse is imported
here, so ``scratchpilot --help`` works without the car's optional dependencies.
"""

from __future__ import annotations

import argparse

from .. import options


def _add_json(p) -> None:
    p.add_argument("--json", type=options.json_file, metavar="PATH", help="write the measured figures as JSON")


def _add_appearance(p, default) -> None:
    from .sim.appearance import CONDITIONS

    p.add_argument("--appearance", nargs="+", choices=list(CONDITIONS), default=default, metavar="LOOK",
                   help=f"simulator: drive under each of these looks, {' | '.join(CONDITIONS)}: colours = road "
                        "and grass in other colours (a draw no training uses), dusk = 60%% brightness, noise = "
                        f"camera noise σ 12 (default {' '.join(default)})")


def _add_robustness(p) -> None:
    p.add_argument("--colour", choices=["luma", "principal"],
                   help="how colour becomes grey: luma weights, or each frame's principal colour axis (keeps "
                        "the road visible whatever its colours; default luma, the demo uses principal)")
    p.add_argument("--normalise", choices=["none", "zscore", "stretch"],
                   help="normalise each frame on its own (zscore: mean 0, sd 1; stretch: min 0, max 1), so "
                        "dusk looks like noon (default none)")
    p.add_argument("--edges", action="store_true", help="add a channel of gradient magnitudes")
    p.add_argument("--augment", type=options.non_negative_int, default=0, metavar="COPIES",
                   help="train on this many extra copies of the frames under random light, contrast, colour "
                        "shift, blur and camera noise (default 0; the settings go into the model file)")


def add_parser(subparsers) -> None:
    car = subparsers.add_parser("car", help="the self-driving car: record, train, check, drive, stream")
    sub = car.add_subparsers(dest="car_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("record", help="record labelled frames: expert or keyboard in the simulator, or the real car")
    p.add_argument("--driver", choices=["expert", "keyboard"], default="expert",
                   help="who drives in the simulator (default expert; keyboard opens a window and records "
                        "what the arrow keys drive)")
    p.add_argument("--episodes", type=options.positive_int, default=5, help="simulator episodes to record (default 5)")
    p.add_argument("--seed", type=options.seed, default=1000, help="first track seed (default 1000)")
    p.add_argument("--noise", type=options.probability, default=0.02,
                   help="expert only: chance per step of starting a random command held for 4-11 frames, so "
                        "the data shows how to recover (labels stay the expert's; default 0.02, about 13%% "
                        "of the frames)")
    p.add_argument("--out", type=options.output_folder, default="sessions",
                   help="root folder of the sessions (default sessions/)")
    p.add_argument("--source", help="real car: tcp://PI:8000 (the Pi's 'scratchpilot car stream')")
    p.add_argument("--keyboard", action="store_true", help="real car: label frames with the arrow keys")
    p.add_argument("--serial", help="real car: the Arduino's serial port (e.g. /dev/ttyUSB0) so keys also drive")
    p.add_argument("--duration", type=options.positive_number,
                   help="real car: stop after this many seconds (default: Esc)")
    _add_json(p)
    p.set_defaults(func=_dispatch("record"))

    p = sub.add_parser("sessions", help="list sessions; exclude or restore frame ranges (non-destructive)")
    p.add_argument("root", nargs="?", default="sessions")
    p.add_argument("--exclude", nargs=3, metavar=("SESSION", "START", "STOP"),
                   help="exclude frames START..STOP-1 of SESSION from training")
    p.add_argument("--restore", nargs=3, metavar=("SESSION", "START", "STOP"), help="undo an exclusion")
    p.add_argument("--reason", default="", help="why frames are excluded (kept with the exclusion)")
    p.add_argument("--import-tub", metavar="TUB", help="import a donkeycar tub (folder or .tar.gz) as a session")
    p.add_argument("--import-npz", metavar="NPZ", help="import an AutoRCCar-style .npz as a session")
    p.add_argument("--repair", action="store_true",
                   help="rebuild the manifest of each session folder that lost it, from its chunks (frames, "
                        "labels, timestamps; the recording's metadata cannot be recovered and is listed as lost)")
    _add_json(p)
    p.set_defaults(func=_dispatch("sessions"))

    p = sub.add_parser("train", help="train a pilot on recorded sessions")
    p.add_argument("--sessions", nargs="+", default=["sessions"], help="session folders or roots")
    p.add_argument("--model", type=options.model_file, default="pilot.npz",
                   help="where to save the pilot (default pilot.npz)")
    p.add_argument("--arch", choices=["mlp", "cnn"], default="mlp",
                   help="mlp: the blog's 3-layer net on the flattened frame; cnn: a small donkeycar-style conv "
                        "net on the frame and its motion channel (default mlp)")
    p.add_argument("--hidden", type=options.integer(1, 1 << 16), default=128,
                   help="hidden units of the dense layer (default 128)")
    p.add_argument("--epochs", type=options.positive_int, help="passes over the data (default 10 for mlp, 6 for cnn)")
    from .pilot import MAX_HISTORY_LAG

    p.add_argument("--history-lag", type=options.integer(0, MAX_HISTORY_LAG), default=2,
                   help="also feed the change since this many frames ago, so the net can see motion (0 = off; "
                        f"up to {MAX_HISTORY_LAG}; default 2)")
    p.add_argument("--balance", type=options.probability, default=0.5,
                   help="oversample rare labels: each drawn in proportion to count**BALANCE (1 = as recorded, "
                        "0 = all equally often; default 0.5)")
    p.add_argument("--val-fraction", type=options.held_out_share, default=0.2,
                   help="fraction of sessions/episodes held out for validation, 0 ≤ F < 1 (never single frames; "
                        "default 0.2)")
    p.add_argument("--seed", type=options.seed, default=0)
    p.add_argument("--patience", type=options.positive_int, metavar="EPOCHS",
                   help="stop when the validation loss has not improved for this many epochs and keep the best "
                        "epoch's weights (default: train every epoch; the demo uses 3)")
    _add_robustness(p)
    _add_json(p)
    p.set_defaults(func=_dispatch("train"))

    p = sub.add_parser("check", help="accuracy and confusion per label, plus a contact sheet of predictions")
    p.add_argument("--model", required=True)
    p.add_argument("--sessions", nargs="+", required=True)
    p.add_argument("--sheet", type=options.output_file(".png"), default="contact_sheet.png",
                   help="contact sheet PNG (default contact_sheet.png)")
    _add_json(p)
    p.set_defaults(func=_dispatch("check"))

    p = sub.add_parser("drive", help="drive by the network's predictions: simulator or real car")
    p.add_argument("--model", required=True)
    p.add_argument("--sim", action="store_true", help="drive in the simulator")
    p.add_argument("--tracks", type=options.positive_int, default=3, help="simulator: number of tracks (default 3)")
    p.add_argument("--seed", type=options.seed, default=0, help="simulator: first track seed (default 0)")
    p.add_argument("--video", type=options.output_file(".gif"), metavar="GIF",
                   help="simulator: save what the car saw and did (GIF)")
    _add_appearance(p, ["standard"])
    p.add_argument("--source", help="real car: tcp://PI:8000")
    p.add_argument("--serial", help="real car: the Arduino's serial port")
    p.add_argument("--min-confidence", type=options.probability, default=0.0,
                   help="real car: stop when the prediction's probability is below this (default 0: off)")
    p.add_argument("--max-frame-age", type=options.positive_number, default=0.2,
                   help="real car: stop when the newest frame is older than this many seconds (default 0.2)")
    p.add_argument("--dry-run", action="store_true", help="real car: show what would be sent, send nothing")
    p.add_argument("--no-window", action="store_true",
                   help="real car: no pygame window (and so no space-bar e-stop: Ctrl-C stops the car)")
    p.add_argument("--duration", type=options.positive_number,
                   help="real car: stop after this many seconds (default: Esc/Ctrl-C)")
    p.add_argument("--log", metavar="DIR", help="folder of the prediction log: every decision with its frame's "
                                                "features (default: logs/drive in the cache, printed at start)")
    p.add_argument("--no-log", dest="log_on", action="store_false", help="keep no prediction log")
    _add_json(p)
    p.set_defaults(func=_dispatch("drive"))

    p = sub.add_parser("stream", help="on the Pi: stream camera frames over TCP")
    p.add_argument("--camera", default="picamera2", help="picamera2 | opencv:0 | test-pattern | sim")
    p.add_argument("--size", default="320x240")
    p.add_argument("--fps", type=options.number(0.0, 1000.0, lo_open=True), default=24.0)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=options.port, default=8000)
    p.set_defaults(func=_dispatch("stream"))

    demo = subparsers.add_parser("demo", help="the main job: record an expert, train a pilot, drive unseen tracks")
    demo.add_argument("--out", type=options.output_folder, default="runs/demo",
                      help="keeps sessions, pilot.npz, results.json, drive.gif")
    demo.add_argument("--episodes", type=options.positive_int, help="expert episodes to record first (default 10)")
    demo.add_argument("--tracks", type=options.positive_int, default=10, help="unseen tracks to drive (default 10)")
    demo.add_argument("--rounds", type=options.non_negative_int, help="DAgger rounds (default 2)")
    demo.add_argument("--arch", choices=["mlp", "cnn"],
                      help="the pilot's network (default mlp: the CNN measured no better)")
    demo.add_argument("--dagger-episodes", type=options.positive_int, help="tracks per DAgger round (default 8)")
    _add_appearance(demo, ["standard", "colours", "dusk", "noise"])
    demo.add_argument("--max-steps", type=options.positive_int,
                      help=argparse.SUPPRESS)  # tests: cut every episode short
    demo.add_argument("--seed", type=options.seed, default=0)
    _add_json(demo)
    demo.set_defaults(func=_dispatch("demo"))


#: command -> (module in scratchpilot.car.commands, handler)
_HANDLERS = {"record": ("record", "run"), "sessions": ("sessions", "run"), "train": ("train", "run_train"),
             "check": ("train", "run_check"), "drive": ("drive", "run"), "stream": ("stream", "run"),
             "demo": ("demo", "run")}


def _dispatch(name: str):
    """A handler that imports the module doing the work only when the command runs."""

    def handler(args: argparse.Namespace) -> int:
        import importlib

        module, function = _HANDLERS[name]
        return getattr(importlib.import_module(f"scratchpilot.car.commands.{module}"), function)(args)

    return handler
