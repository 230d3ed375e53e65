"""The digits web classifier's routes: a Flask app (page + JSON API).

Requests are checked in :mod:`.api` (shared with the JSON fast path, :mod:`.fastpath`); the waitress
server that runs the app is in :mod:`.server`.

Routes
------
``GET /``               the drawing page (plain HTML/JS/CSS from ``templates/`` and ``static/``, no CDN)
``POST /api/predict``   one image in, ``{"label", "probabilities", "labels", "model", "preview"?}`` out; the
                        image is either a multipart upload (field ``image``), or JSON
                        ``{"pixels": [784 numbers 0..255]}`` (row-major 28×28; add ``"preprocess": false``
                        for pixels already in MNIST form) or ``{"image": "data:image/png;base64,..."}``.
                        ``"preview"`` is the 28×28 image the network saw, 784 ints row-major: sent for
                        images, and for pixels when asked (``"preview": true``; programs sending pixels
                        rarely need their digit back, and it is a third of the answer's cost).
``GET /api/model``      what the model is: architecture, accuracy, training date, preprocessing
``GET /healthz``        liveness

Every error is JSON ``{"error": message, "status": code}``: 400 bad input, 404, 405, 413 body over
:data:`MAX_BODY_BYTES`, 415 wrong content type, 422 nothing drawn. Bad input never gives a 500. So are
the errors waitress answers itself, before the app sees the request (malformed HTTP, a body far over
the limit): see :mod:`.connections`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .api import MAX_BODY_BYTES, TOO_LARGE, BadInput, answer, digit_from_request, error_body
from .classifier import DigitClassifier
from .fastpath import OBSERVATION_KEY, JsonPredictRoute

CONTENT_SECURITY_POLICY = "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'"

log = logging.getLogger(__name__)


def create_app(model_path, classifier: DigitClassifier | None = None, *, prediction_log=None,
               log_images: bool = False, metrics: bool = False):
    """Build the Flask app for one model file.

    Parameters
    ----------
    model_path : path of the digits model (``.npz``); loaded now, so a bad file fails here.
    classifier : an already loaded :class:`DigitClassifier` to use instead (tests share one).
    prediction_log : a :class:`scratchpilot.monitor.predlog.PredictionLog` for one record per prediction
        (None: none).
    log_images : store the prepared digit in each record too.
    metrics : answer ``GET /metrics`` (Prometheus; needs ``prometheus_client``). With
        ``prediction_log`` or ``metrics`` the app is wrapped in :class:`.monitoring.Monitoring`.

    Raises
    ------
    scratchpilot.nn.ModelFileError
        If the model file is missing, corrupt or not a digits model.
    """
    import PIL.Image  # noqa: F401 - imported now rather than by the first upload, under concurrent requests
    from flask import Flask, jsonify, render_template, request
    from werkzeug.exceptions import HTTPException, InternalServerError

    classifier = classifier or DigitClassifier(model_path)
    here = Path(__file__).resolve().parent
    app = Flask(__name__, template_folder=str(here / "templates"), static_folder=str(here / "static"))
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["MAX_FORM_MEMORY_SIZE"] = MAX_BODY_BYTES
    app.json.sort_keys = False
    app.extensions["scratchpilot_classifier"] = classifier

    def error(message: str, status: int):
        return app.response_class(error_body(message, status), status=status, mimetype="application/json")

    @app.errorhandler(BadInput)
    def bad_input(exc: BadInput):
        return error(str(exc), exc.status)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.code == 413:
            return error(TOO_LARGE, 413)
        if exc.code == 404:
            return error(f"not found: {request.method} {request.path}", 404)
        if exc.code == 405:
            allowed = ", ".join(exc.valid_methods or [])
            response = error(f"method {request.method} not allowed for {request.path}; use {allowed}", 405)
            response.headers["Allow"] = allowed
            return response
        return error(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(InternalServerError)
    def internal_error(exc: InternalServerError):
        # only real bugs get here; the traceback goes to the log, not to the client
        log.error("internal error", exc_info=exc.original_exception or exc)
        return error("internal server error", 500)

    @app.after_request
    def security_headers(response):
        response.headers["X-Content-Type-Options"] = "nosniff"
        if response.mimetype == "text/html":  # the page: only our own scripts, styles and images
            response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
            response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.get("/")
    def index():
        return render_template("index.html", model=classifier.info)

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok", model=classifier.name)

    @app.get("/api/model")
    def model_info():
        return jsonify(classifier.info)

    @app.post("/api/predict")
    def predict():
        observation = request.environ.get(OBSERVATION_KEY)
        digit, want_preview = digit_from_request(request, observation)
        return app.response_class(answer(classifier, digit, want_preview, observation),
                                  mimetype="application/json")

    # JSON predictions, the hot path under load, skip Flask's request and response objects
    app.wsgi_app = JsonPredictRoute(app.wsgi_app, classifier)
    if prediction_log is not None or metrics:
        from ..monitor.profile import ProfileError, read_profile
        from .monitoring import Monitoring

        try:
            profile = read_profile(classifier.model, classifier.path)
        except ProfileError as exc:  # still served; only the drift gauge goes
            log.warning("%s; the drift score is not computed", exc)
            profile = None
        if profile is not None and profile["kind"] != "digits":
            log.warning("%s: its profile is of %s, not digits; the drift score is not computed", model_path,
                        profile["kind"])
            profile = None
        app.wsgi_app = Monitoring(app.wsgi_app, classifier, log=prediction_log, log_images=log_images,
                                  metrics=metrics, profile=profile)
        app.extensions["scratchpilot_monitoring"] = app.wsgi_app
    return app
