"""``scratchpilot report ...``: data and model reports as self-contained HTML pages.

Only argparse and the standard library are imported here; NumPy, matplotlib and the engine load in the
handlers.
"""

from __future__ import annotations

import argparse
import sys

from .. import options
from ..errors import CommandError
from ..util.files import write_atomic, write_json_result

DATA_HELP = ("mnist, mnist-test, fashion, fashion-test, a Kaggle CSV (.csv/.csv.gz), an IDX images file, "
             "a folder of images in one subfolder per label, or a folder of driving sessions")


def add_parser(subparsers) -> None:
    report = subparsers.add_parser("report", help="CRISP-DM reports: understand the data, assess a model",
                                   description="Self-contained HTML reports (figures embedded, no external "
                                               "resources) with a short Markdown summary on stdout.")
    commands = report.add_subparsers(dest="report_command", metavar="SUBCOMMAND", required=True)

    data = commands.add_parser("data", help="describe, explore and verify a dataset",
                               description="Describe (records, fields, sources and checksums, labels), explore "
                                           "(class distribution, samples, mean images, pixel histogram; for "
                                           "driving sessions labels per session, frame rate, session lengths) "
                                           "and verify (bad values, duplicates, leakage, constant pixels, class "
                                           "imbalance, suspected label errors) a dataset.")
    data.add_argument("dataset", metavar="DATASET", help=DATA_HELP)
    data.add_argument("--compare", metavar="DATASET",
                      help="a second split to check for leakage and shift against (default: mnist-test for "
                           "mnist, fashion-test for fashion; 'none' for no comparison)")
    data.add_argument("--out", default="data-report.html", type=options.output_file(".html"),
                      help="HTML file (default data-report.html)")
    data.add_argument("--json", metavar="PATH", type=options.json_file,
                      help="write the report's figures and findings as JSON")
    data.add_argument("--seed", type=options.seed, default=0,
                      help="seed for the samples shown and the neighbour search")
    data.add_argument("--no-progress", action="store_true", help="no progress bars")
    data.set_defaults(func=cmd_data)

    model = commands.add_parser("model", help="assess a trained model on a labelled dataset",
                                description="Accuracy with a 95%% Wilson interval, confusion matrix, per-class "
                                            "precision/recall/F1, learning curves, the most confident mistakes, "
                                            "calibration (reliability diagram, ECE). Works for digits models, "
                                            "for pilots (on a folder of driving sessions) and for transfer "
                                            "models (on a folder with one subfolder of images per class).")
    model.add_argument("model", metavar="MODEL", help="a model file (.npz) written by scratchpilot")
    model.add_argument("dataset", metavar="DATASET", help=DATA_HELP)
    model.add_argument("--out", default="model-report.html", type=options.output_file(".html"),
                       help="HTML file (default model-report.html)")
    model.add_argument("--json", metavar="PATH", type=options.json_file, help="write the report's figures as JSON")
    model.add_argument("--cache-dir", help="for a transfer model: where converted backbones and bottleneck "
                                           "features are kept (default: SCRATCHPILOT_CACHE or ~/.cache/scratchpilot)")
    model.add_argument("--no-progress", action="store_true", help="no progress bars")
    model.set_defaults(func=cmd_model)

    monitor = commands.add_parser(
        "monitor", help="drift of a deployed model's logged answers against its reference profile",
        description="Cut prediction logs (scratchpilot serve --log, car drive --log) into windows and compare "
                    "each with the model file's reference profile: per input feature and for the predicted "
                    "classes the population stability index and a two-sample KS test, the confidence trend, "
                    "the lowest-confidence inputs, and a verdict per window (drift: PSI ≥ 0.25 confirmed by "
                    "KS p < 0.01; watch: PSI ≥ 0.1). Unreadable records are skipped and listed.")
    monitor.add_argument("logs", metavar="DIR", nargs="+", help="log folders (or .jsonl files)")
    monitor.add_argument("--model", required=True, help="the model file that answered (.npz)")
    monitor.add_argument("--window", default="1h", type=_window,
                         help="window length: a duration (90s, 20m, 1h; default 1h) or a count of answers (500req)")
    monitor.add_argument("--out", default="monitor.html", type=options.output_file(".html"),
                         help="HTML file (default monitor.html)")
    monitor.add_argument("--json", metavar="PATH", type=options.json_file, help="write the windows' figures as JSON")
    monitor.add_argument("--fail-on-drift", action="store_true",
                         help="exit 3 when any window shows drift (and 4 when drift cannot be assessed), for cron "
                              "or CI")
    monitor.set_defaults(func=cmd_monitor)


def _window(text: str):
    from .monitor import parse_window

    return parse_window(text)


def _write(report, args: argparse.Namespace) -> None:
    try:
        write_atomic(args.out, report.html.encode("utf-8"))
        write_json_result(args.json, report.data)
    except OSError as exc:
        raise CommandError(f"cannot write the report: {exc}") from None
    sys.stdout.write(report.markdown)
    size = args.out.stat().st_size
    print(f"\nwrote {args.out} ({size / 2**20:.1f} MiB)" + (f" and {args.json}" if args.json else ""))


def cmd_data(args: argparse.Namespace) -> int:
    from . import data, driving

    progress = not args.no_progress
    try:
        if driving.is_sessions_folder(args.dataset):
            report = driving.build_driving_report(args.dataset, seed=args.seed, out_name=str(args.out))
        else:
            primary = data.load_split(args.dataset, progress=progress)
            compare_spec = args.compare or data.DEFAULT_COMPARE.get(args.dataset.strip().lower())
            compare = None
            if compare_spec and compare_spec.lower() != "none":
                compare = data.load_split(compare_spec, progress=progress)
            report = data.build_data_report(primary, compare, seed=args.seed, progress=progress,
                                            out_name=str(args.out))
    except (data.ReportError, driving.SessionReportError) as exc:
        raise CommandError(str(exc)) from None
    _write(report, args)
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from . import data, driving, model

    try:
        report = model.build_model_report(args.model, args.dataset, progress=not args.no_progress,
                                          out_name=str(args.out), cache_dir=args.cache_dir)
    except (data.ReportError, driving.SessionReportError, model.ModelReportError) as exc:
        raise CommandError(str(exc)) from None
    _write(report, args)
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    from . import monitor

    try:
        report = monitor.build_monitor_report(args.logs, args.model, args.window, out_name=str(args.out))
    except monitor.ReportError as exc:
        raise CommandError(str(exc)) from None
    _write(report, args)
    if args.fail_on_drift:
        if report.data["drifted_windows"]:
            print(f"drift in {len(report.data['drifted_windows'])} of {len(report.data['windows'])} windows",
                  file=sys.stderr)
            return 3
        if not report.data["profile"] or not any(w["verdict"] in ("stable", "watch") for w in report.data["windows"]):
            print("drift could not be assessed (no profile, or no window with enough answers)", file=sys.stderr)
            return 4
    return 0
