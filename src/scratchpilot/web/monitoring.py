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
import bisect
import logging
import math
import os
import threading
import time

import numpy as np

from ..monitor.drift import LOW_CONFIDENCE
from .fastpath import OBSERVATION_KEY

log = logging.getLogger(__name__)

#: recent answers the drift gauge is computed over, and how often it is recomputed
DRIFT_WINDOW, DRIFT_EVERY = 500, 100
#: routes named in the metrics (anything else counts as "other": unbounded label values would grow forever)
ROUTES = ("/", "/api/predict", "/api/model", "/healthz", "/metrics")
#: seconds between hand-overs of the gathered counts to prometheus_client
FLUSH_S = 0.5
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The server's Prometheus metrics, in a registry of their own (or in multiprocess files).

    Counts are added up in the process and handed to prometheus_client every :data:`FLUSH_S` seconds (and
    before every scrape): under multiprocess mode each ``inc`` is a locked write to a memory-mapped file,
    and five of them per request cost more than the rest of the monitoring. A scrape can so miss up to
    :data:`FLUSH_S` of another worker's requests; the next one has them.
    """

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
        self._lock = threading.Lock()
        self._pid = None
        self._reset()

    def _reset(self) -> None:
        self._requests: dict = {}
        self._latencies: dict = {}  # route → [count per bucket (+Inf last), sum]
        self._predictions: dict = {}
        self._low = 0
        self._flushed = time.monotonic()

    def record(self, route: str, status: int, seconds: float, label: str | None = None, low: bool = False) -> None:
        """Count one answered request (and its prediction)."""
        with self._lock:
            if self._pid != os.getpid():  # a new worker: its own counts and its own flusher
                self._pid = os.getpid()
                self._reset()
                threading.Thread(target=self._flush_now_and_then, name="metrics-flush", daemon=True).start()
            key = (route, str(status))
            self._requests[key] = self._requests.get(key, 0) + 1
            buckets = self._latencies.get(route)
            if buckets is None:
                buckets = self._latencies[route] = [[0] * (len(LATENCY_BUCKETS) + 1), 0.0]
            buckets[0][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            buckets[1] += seconds
            if label is not None:
                self._predictions[label] = self._predictions.get(label, 0) + 1
                self._low += low
            due = time.monotonic() - self._flushed >= FLUSH_S
        if due:
            self.flush()

    def flush(self) -> None:
        """Hand the counts gathered since the last flush to prometheus_client."""
        with self._lock:
            requests, latencies, predictions, low = self._requests, self._latencies, self._predictions, self._low
            self._reset()
        for (route, status), n in requests.items():
            self.requests.labels(route, status).inc(n)
        for route, (counts, total) in latencies.items():
            _observe_many(self.latency.labels(route), counts, total)
        for label, n in predictions.items():
            self.predictions.labels(label).inc(n)
        if low:
            self.low_confidence.inc(low)

    def _flush_now_and_then(self) -> None:
        pid = os.getpid()
        while self._pid == pid:
            time.sleep(FLUSH_S)
            try:
                self.flush()
            except Exception:  # noqa: BLE001 -- the next round tries again; the server goes on
                log.exception("flushing the metrics failed")

    def exposition(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        self.flush()
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)


def _observe_many(histogram, counts: list[int], total: float) -> None:
    """Add ``counts`` observations per bucket (summing to ``total``) to a labelled histogram child at once.

    prometheus_client has no batch observe; its histogram keeps one value per bucket (``_buckets``, not
    cumulative, the last for +Inf) and ``_sum``. Should a later version store them otherwise, each
    observation is replayed at its bucket's bound (exact counts, the sum then approximate)."""
    buckets, sum_value = getattr(histogram, "_buckets", None), getattr(histogram, "_sum", None)
    if buckets is not None and sum_value is not None and len(buckets) == len(counts):
        for value, n in zip(buckets, counts, strict=True):
            if n:
                value.inc(n)
        sum_value.inc(total)
        return
    bounds = [*LATENCY_BUCKETS, LATENCY_BUCKETS[-1]]
    for bound, n in zip(bounds, counts, strict=True):
        for _ in range(n):
            histogram.observe(bound)


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
        self.drift_score = math.nan
        # the last DRIFT_WINDOW answers' features, one row each, written in turn (a ring)
        self._names = list(profile["features"]) if profile is not None else []
        self._recent = np.full((DRIFT_WINDOW, len(self._names)), np.nan)
        self._seen = 0
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
        predicted = route == "/api/predict" and environ.get("REQUEST_METHOD") == "POST"
        label, confidence = observation.get("label"), observation.get("confidence")
        if self.metrics is not None:
            answered = predicted and status == 200 and label is not None
            self.metrics.record(route, status, seconds, label if answered else None,
                                answered and confidence < LOW_CONFIDENCE)
        if not predicted:
            return
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
        if self._names and features is not None:
            self._recent[self._seen % DRIFT_WINDOW] = [features[name] for name in self._names]
            self._seen += 1
            if self._seen % DRIFT_EVERY == 0 and self._drift_lock.acquire(blocking=False):
                try:
                    self._update_drift()
                finally:
                    self._drift_lock.release()

    def _update_drift(self) -> None:
        from ..monitor.drift import MIN_WINDOW
        from ..monitor.stats import bin_counts, psi

        if min(self._seen, DRIFT_WINDOW) < MIN_WINDOW:
            return
        recent = self._recent[: min(self._seen, DRIFT_WINDOW)]
        score = max(psi(dist["shares"], dist["n"], bin_counts(recent[:, k], dist["edges"]))
                    for k, dist in enumerate(self.profile["features"].values()))
        self.drift_score = score
        if self.metrics is not None and math.isfinite(score):
            self.metrics.drift.set(score)

    def _serve_metrics(self, start_response):
        from prometheus_client import CONTENT_TYPE_LATEST

        data = self.metrics.exposition()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(data))),
                                  ("X-Content-Type-Options", "nosniff")])
        return [data]
