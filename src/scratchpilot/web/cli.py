"""``scratchpilot serve``: the digits web classifier on waitress.

Only argparse and the standard library are imported here; Flask, waitress and the model load when the
command runs.
"""

from __future__ import annotations

import logging
import os

from .. import options
from ..errors import CommandError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="web page to draw digits on, and a JSON API (waitress)",
        description="Serve the digits classifier: a page to draw or upload a digit, POST /api/predict, "
                    "GET /api/model, GET /healthz.")
    p.add_argument("--model", help="digits model file (.npz); default: the cached default model, trained "
                                   "on MNIST the first time (a few minutes)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for "
                                                       "every interface)")
    p.add_argument("--port", type=options.port, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    # Every thread of a process takes turns on one GIL, so more threads only reorder its queue; two gave a
    # lower p99 than one or four in a paired bench/serve_load.py run. The cores are used by worker processes,
    # each kept on one CPU: threads handing the GIL between cores are far slower (bench/results/notes.md).
    p.add_argument("--threads", type=options.integer(1, 256), default=2,
                   help="waitress threads per worker process (default 2)")
    p.add_argument("--workers", type=options.integer(1, 256), default=2 if hasattr(os, "fork") else 1,
                   help="server processes sharing the port (default 2 where the OS can fork, else 1; "
                        "about one per core gives the most requests per second)")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="let the OS move worker processes between CPUs (default: each worker keeps one CPU)")
    watch = p.add_argument_group("monitoring")
    watch.add_argument("--log", metavar="DIR", help="folder of the prediction log, one record per answered "
                                                    "prediction (default: logs/serve in the cache, printed at start)")
    watch.add_argument("--no-log", dest="log_on", action="store_false", help="keep no prediction log")
    watch.add_argument("--log-images", action="store_true",
                       help="store each prepared 28×28 digit in its record (default: none are stored)")
    watch.add_argument("--log-max-mb", type=options.integer(1, 1 << 20), default=64,
                       help="start a new log file past this size, in MB (default 64; 16 kept per process)")
    watch.add_argument("--no-metrics", dest="metrics", action="store_false",
                       help="no GET /metrics (Prometheus text format)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    try:
        from .. import nn
        from .app import create_app
        from .server import run_server
    except ModuleNotFoundError as exc:
        raise CommandError(f"serve needs the web extra ({exc.name} is missing): pip install 'scratchpilot[web]'"
                           ) from None
    if args.model:
        model_path = args.model
    else:
        from ..digits.models import ensure_default_model

        model_path = ensure_default_model(progress=True)
    from .classifier import DigitClassifier

    try:
        classifier = DigitClassifier(model_path)  # a bad model file is refused before anything is written
    except nn.ModelFileError as exc:
        raise CommandError(f"cannot serve: {exc}") from None
    prediction_log = _open_log(args)
    if args.metrics:
        _multiprocess_metrics(args.workers)
    try:
        app = create_app(model_path, classifier, prediction_log=prediction_log, log_images=args.log_images,
                         metrics=args.metrics)
    except ModuleNotFoundError as exc:
        raise CommandError(f"--metrics needs {exc.name}: pip install 'scratchpilot[web]' (or give --no-metrics)"
                           ) from None
    # one image per request: BLAS threads only add hand-over cost, and waitress threads give the parallelism
    nn.set_blas_threads(1)
    # waitress warns "Task queue depth is N" for every request queued behind busy threads: under load that
    # is one line per request, which costs more than it tells
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    info = app.extensions["scratchpilot_classifier"].info
    accuracy = f", {info['accuracy']:.2%} on {info['accuracy_on']}" if info.get("accuracy") is not None else ""
    print(f"model {model_path} ({info['architecture']}{accuracy})")
    if prediction_log is not None:
        print(f"prediction log: {prediction_log.folder}" + (" (with the digits)" if args.log_images else ""))
    monitoring = app.extensions.get("scratchpilot_monitoring")
    if monitoring is not None and monitoring.profile is None:
        print("the model has no reference profile (trained before profiles were kept): no drift score")

    def ready(port: int) -> None:
        processes = f"{args.workers} processes × {args.threads} threads" if args.workers > 1 else \
            f"{args.threads} threads"
        print(f"serving on http://{_display_host(args.host)}:{port}/  ({processes}; Ctrl+C to stop)", flush=True)

    try:
        run_server(app, host=args.host, port=args.port, threads=args.threads, workers=args.workers,
                   on_ready=ready, pin=args.pin)
    except OSError as exc:
        raise CommandError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    except RuntimeError as exc:
        raise CommandError(str(exc)) from None
    return 0


def _open_log(args):
    """The prediction log ``args`` ask for (None with ``--no-log``)."""
    if not args.log_on:
        return None
    from ..monitor.predlog import PredictionLog, default_log_dir

    folder = args.log or default_log_dir("serve")
    try:
        return PredictionLog(folder, max_bytes=args.log_max_mb * 1024 * 1024)
    except OSError as exc:
        raise CommandError(f"--log {folder}: cannot write there: {exc.strerror or exc}") from None


def _multiprocess_metrics(workers: int) -> None:
    """prometheus_client's multiprocess mode for forked workers: a fresh folder for their value files, set
    before prometheus_client is imported (it reads the variable then), removed when the server stops."""
    if workers <= 1 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="scratchpilot-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    parent = os.getpid()
    atexit.register(lambda: os.getpid() == parent and shutil.rmtree(folder, ignore_errors=True))


def _display_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
