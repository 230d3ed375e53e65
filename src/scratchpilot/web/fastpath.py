"""The hot path under load: ``POST /api/predict`` with a JSON body answered without Flask.

Everything else (pages, uploads, errors of other routes) goes on to the Flask app of :mod:`.app`.
"""

from __future__ import annotations

import logging

from . import api
from .classifier import DigitClassifier

#: where the monitoring middleware (:mod:`.monitoring`) leaves a dict for the request's label and features
OBSERVATION_KEY = "scratchpilot.observation"

log = logging.getLogger(__name__)


class JsonPredictRoute:
    """WSGI middleware answering ``POST /api/predict`` with a JSON body itself; all else goes to Flask.

    Same validation, answers and errors as the Flask route (both call :func:`.api.digit_from_json` and
    :func:`.api.answer`); what it leaves out is Flask's per-request machinery (request context, routing,
    ``Request``/``Response`` objects, after-request hooks), which under load costs the server more CPU
    than the prediction itself (the figures are in bench/results/notes.md).
    """

    def __init__(self, flask_wsgi_app, classifier: DigitClassifier):
        from werkzeug.http import HTTP_STATUS_CODES

        self.flask_wsgi_app = flask_wsgi_app
        self.classifier = classifier
        # status lines exactly as Flask writes them: "400 BAD REQUEST"
        self.reasons = {code: phrase.upper() for code, phrase in HTTP_STATUS_CODES.items()}

    def __call__(self, environ, start_response):
        if (environ.get("PATH_INFO") != "/api/predict" or environ.get("REQUEST_METHOD") != "POST"
                or environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower() != "application/json"):
            return self.flask_wsgi_app(environ, start_response)
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:  # no length given: Flask knows how to read such a body
            return self.flask_wsgi_app(environ, start_response)
        try:
            if length > api.MAX_BODY_BYTES:
                raise api.BadInput(api.TOO_LARGE, 413)
            body = api.parse_json(environ["wsgi.input"].read(length) if length > 0 else b"")
            observation = environ.get(OBSERVATION_KEY)
            status, data = 200, api.answer(self.classifier, *api.digit_from_json(body, observation), observation)
        except api.BadInput as exc:
            status, data = exc.status, api.error_body(str(exc), exc.status)
        except Exception:  # a bug, not bad input: the traceback goes to the log, not to the client
            log.exception("internal error in %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            status, data = 500, api.error_body("internal server error", 500)
        start_response(f"{status} {self.reasons.get(status, 'UNKNOWN')}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                        ("X-Content-Type-Options", "nosniff")])
        return [data]
