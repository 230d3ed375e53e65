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
    try:
        app = create_app(model_path)
    except nn.ModelFileError as exc:
        raise CommandError(f"cannot serve: {exc}") from None
    # one image per request: BLAS threads only add hand-over cost, and waitress threads give the parallelism
    nn.set_blas_threads(1)
    # waitress warns "Task queue depth is N" for every request queued behind busy threads: under load that
    # is one line per request, which costs more than it tells
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    info = app.extensions["scratchpilot_classifier"].info
    accuracy = f", {info['accuracy']:.2%} on {info['accuracy_on']}" if info.get("accuracy") is not None else ""
    print(f"model {model_path} ({info['architecture']}{accuracy})")

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


def _display_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
