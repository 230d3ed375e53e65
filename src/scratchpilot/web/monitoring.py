"""The served model, watched: a prediction log record and Prometheus metrics for every request.

:class:`Monitoring` wraps the whole WSGI app (the JSON fast path and Flask alike). For each request it
leaves a dict in the environ under :data:`.fastpath.OBSERVATION_KEY`, which the predict routes fill with
the input's features, the label, its confidence and the digit; afterwards it writes one record of
``POST /api/predict`` to the :class:`~scratchpilot.monitor.predlog.PredictionLog` (time, model id,
features, label, confidence, latency, status) and counts the request in the metrics. ``GET /metrics``
answers in Prometheus's text format.

Metrics (``prometheus_client``): ``scratchpilot_requests_total{route,status}``,
``scratchpilot_request_seconds{route}`` (histogram), ``scratchpilot_predictions_total{label}``,
``scratchpilot_low_confidence_total`` (answers below :data:`LOW_CONFIDENCE`), and
``scratchpilot_drift_score``: the largest input-feature PSI of the process's last :data:`DRIFT_WINDOW`
answers against the model's profile (see :mod:`scratchpilot.monitor.drift`; the highest of the live
workers). Under forked workers prometheus_client's multiprocess mode is used: each process writes its
values to files in ``PROMETHEUS_MULTIPROC_DIR``, and any worker's ``/metrics`` adds them all up.
"""

from __future__ import annotations

import base64
import collections
import logging
import math
import os
import threading
import time

from .fastpath import OBSERVATION_KEY

log = logging.getLogger(__name__)

#: an answer whose top probability is below this counts as low-confidence
LOW_CONFIDENCE = 0.6
#: recent answers the drift gauge is computed over, and how often it is recomputed
DRIFT_WINDOW, DRIFT_EVERY = 500, 50
#: routes named in the metrics (anything else counts as "other": unbounded label values would grow forever)
ROUTES = ("/", "/api/predict", "/api/model", "/healthz", "/metrics")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The server's Prometheus metrics, in a registry of their own (or in multiprocess files)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # multiprocess values live in files, not in a registry; otherwise one registry per app, so that two
        # apps in one process (the tests) do not clash over the names
        self.registry = CollectorRegistry()
        where = {"registry": None if self.multiprocess else self.registry}
        self.requests = Counter("scratchpilot_requests", "HTTP requests answered", ["route", "status"], **where)
        self.latency = Histogram("scratchpilot_request_seconds", "time from request to answer", ["route"],
                                 buckets=LATENCY_BUCKETS, **where)
        self.predictions = Counter("scratchpilot_predictions", "digits answered, by predicted label", ["label"],
                                   **where)
        self.low_confidence = Counter("scratchpilot_low_confidence",
                                      f"answers whose top probability is below {LOW_CONFIDENCE}", **where)
        gauge_mode = {"multiprocess_mode": "livemax"} if self.multiprocess else {}
        self.drift = Gauge("scratchpilot_drift_score", "largest input-feature PSI of recent answers against the "
                           "model's profile (0.25 or more: drift)", **where, **gauge_mode)
        if not self.multiprocess:  # NaN until enough answers (in files, NaN would win or lose the max by order)
            self.drift.set(math.nan)

    def exposition(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)


class Monitoring:
    """WSGI middleware: log and count every request to ``app`` for ``classifier``.

    Parameters
    ----------
    log : a :class:`~scratchpilot.monitor.predlog.PredictionLog`, or None for no log.
    log_images : also store each prepared 28×28 digit in its record (base64 of the 784 bytes).
    metrics : serve ``GET /metrics`` and keep the counters.
    profile : the model's reference profile (:func:`scratchpilot.monitor.profile.read_profile`), or None:
        then the drift gauge stays NaN.
    """

    def __init__(self, app, classifier, *, log=None, log_images: bool = False, metrics: bool = True,
                 profile: dict | None = None):
        self.app, self.classifier, self.log, self.log_images = app, classifier, log, log_images
        self.metrics = Metrics() if metrics else None
        self.profile = profile
        self.recent = collections.deque(maxlen=DRIFT_WINDOW)
        self._since_drift = 0
        self._drift_lock = threading.Lock()
        self.model_id = classifier.model_id

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/metrics" and self.metrics is not None and environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            return self._serve_metrics(start_response)
        started = time.perf_counter()
        observation: dict = {}
        environ[OBSERVATION_KEY] = observation
        status = []

        def recording_start_response(status_line, headers, exc_info=None):
            status.append(status_line)
            return start_response(status_line, headers, exc_info)

        body = self.app(environ, recording_start_response)
        try:
            self._observe(environ, path, int(status[0][:3]) if status else 500, time.perf_counter() - started,
                          observation)
        except Exception:  # noqa: BLE001 -- watching must never cost the client its answer
            log.exception("monitoring failed for %s %s", environ.get("REQUEST_METHOD"), path)
        return body

    def _observe(self, environ, path: str, status: int, seconds: float, observation: dict) -> None:
        route = path if path in ROUTES else "other"
        if self.metrics is not None:
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(seconds)
        if route != "/api/predict" or environ.get("REQUEST_METHOD") != "POST":
            return
        label, confidence = observation.get("label"), observation.get("confidence")
        features = observation.get("features")
        if self.log is not None:
            record = {"t": time.time(), "model": self.model_id, "kind": "digits", "status": status,
                      "latency_ms": round(seconds * 1000, 3), "label": label, "confidence": confidence,
                      "features": features}
            if self.log_images and observation.get("digit") is not None:
                record["image"] = base64.b64encode(observation["digit"].tobytes()).decode("ascii")
            self.log.write(record)
        if status != 200 or label is None:
            return
        if self.metrics is not None:
            self.metrics.predictions.labels(label).inc()
            if confidence < LOW_CONFIDENCE:
                self.metrics.low_confidence.inc()
        if self.profile is not None and features is not None:
            self.recent.append(features)
            self._since_drift += 1
            if self._since_drift >= DRIFT_EVERY and self._drift_lock.acquire(blocking=False):
                try:
                    self._since_drift = 0
                    self._update_drift()
                finally:
                    self._drift_lock.release()

    def _update_drift(self) -> None:
        from ..monitor.drift import drift_score

        score = drift_score(self.profile, list(self.recent))
        if self.metrics is not None and math.isfinite(score):
            self.metrics.drift.set(score)
        self.drift_score = score

    def _serve_metrics(self, start_response):
        from prometheus_client import CONTENT_TYPE_LATEST

        data = self.metrics.exposition()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(data))),
                                  ("X-Content-Type-Options", "nosniff")])
        return [data]
