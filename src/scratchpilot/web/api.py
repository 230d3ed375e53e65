"""What a prediction request must hold, checked once for both routes that serve it.

The Flask route (:mod:`.app`) and the JSON fast path (:mod:`.fastpath`) call the same functions here:
they parse and validate a body into the prepared 28×28 digit, raise :class:`BadInput` (with the HTTP status
to answer) for anything the client got wrong, and write the answer and error bodies. Bad input never
gives a 500.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import reprlib

import numpy as np
import orjson

from ..data.digit_image import (
    ImageDecodeError,
    NothingDrawnError,
    decode_image,
    digit_input_features,
    prepare_digit,
    prepare_digit_with_features,
)
from .classifier import DigitClassifier

#: the largest request body accepted (a 280×280 canvas PNG is ~10 KB; a reduced phone photo well under this)
MAX_BODY_BYTES = 2 * 1024 * 1024
TOO_LARGE = f"request body too large: the limit is {MAX_BODY_BYTES // 1024 // 1024} MB"
_PIXELS = 28 * 28


class BadInput(ValueError):
    """A request the client got wrong; answered with ``status`` and the message as JSON."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def digit_from_request(request, observation: dict | None = None) -> tuple[np.ndarray, bool]:
    """The prepared uint8 (28, 28) digit a predict request carries, and whether it wants the preview.

    With ``observation`` (a dict, when the server is watched: :mod:`.monitoring`), the input's features as
    it arrived go into ``observation["features"]``."""
    content_type = request.mimetype
    if content_type == "multipart/form-data":
        upload = request.files.get("image")
        if upload is None:
            raise BadInput("multipart upload has no file field named 'image'")
        return _prepare_bytes(upload.read(), f"uploaded file {upload.filename or 'image'!r}", observation), True
    if content_type == "application/json":
        return digit_from_json(parse_json(request.get_data(cache=False)), observation)
    raise BadInput(f"unsupported content type {content_type or 'none'!r}: send multipart/form-data "
                   f"(field 'image') or application/json", 415)


def digit_from_json(body: dict, observation: dict | None = None) -> tuple[np.ndarray, bool]:
    """The prepared digit a parsed JSON predict body carries, and whether it wants the preview (and its
    features in ``observation``, as :func:`digit_from_request`)."""
    want_preview = body.get("preview", "pixels" not in body)
    if not isinstance(want_preview, bool):
        raise BadInput("'preview' must be true or false")
    if "pixels" in body:
        preprocess = body.get("preprocess", True)
        if not isinstance(preprocess, bool):
            raise BadInput("'preprocess' must be true or false")
        pixels = _pixels(body["pixels"])
        if not preprocess:
            if not pixels.any():
                raise BadInput("nothing drawn: all 784 pixels are 0", 422)
            if observation is not None:
                observation["features"] = digit_input_features(pixels)
            return pixels, want_preview
        return _prepare(pixels, "'pixels'", observation), want_preview
    if "image" in body:
        return _prepare_bytes(_data_url_bytes(body["image"]), "'image'", observation), want_preview
    raise BadInput(f"JSON body needs 'pixels' or 'image'; got keys {sorted(body)[:5]}")


def _prepare(image, what: str, observation: dict | None = None) -> np.ndarray:
    """:func:`prepare_digit`, its errors turned into answers naming the part of the request at fault."""
    try:
        if observation is None:
            return prepare_digit(image)
        digit, observation["features"] = prepare_digit_with_features(image)
        return digit
    except NothingDrawnError as exc:
        raise BadInput(str(exc), 422) from None
    except ValueError as exc:
        raise BadInput(f"{what}: {exc}") from None


def _prepare_bytes(data: bytes, what: str, observation: dict | None = None) -> np.ndarray:
    try:
        image = decode_image(data, where=what)  # the decoder's message starts with ``what``
    except ImageDecodeError as exc:
        raise BadInput(str(exc)) from None
    return _prepare(image, what, observation)


def _pixels(values) -> np.ndarray:
    """Validate JSON pixels: 784 numbers (flat, or 28 rows of 28) in 0..255 → uint8 (28, 28)."""
    if not isinstance(values, list):
        raise BadInput(f"'pixels' must be a list of {_PIXELS} numbers, got {type(values).__name__}")
    if len(values) == 28 and all(isinstance(row, list) for row in values):
        if any(len(row) != 28 for row in values):
            raise BadInput("'pixels' given as rows must be 28 rows of 28 numbers")
        values = [v for row in values for v in row]
    if len(values) != _PIXELS:
        raise BadInput(f"'pixels' must hold {_PIXELS} numbers (28×28, row-major), got {len(values)}")
    # exact types: bool is an int subclass, and NumPy would happily turn "12" or true into a number.
    # Bad values are quoted with reprlib: a pixel may be a 1,000-deep list (plain repr recurses too deep)
    # or a 1 MB string (which should not be echoed back).
    kinds = set(map(type, values))
    if not kinds <= {int, float}:
        i = next(i for i, v in enumerate(values) if type(v) is not int and type(v) is not float)
        raise BadInput(f"'pixels'[{i}] is {reprlib.repr(values[i])}: every pixel must be a number 0..255")
    if kinds == {int}:
        # the usual request (a canvas or MNIST digit): bytearray takes ints 0..255 only, much faster than NumPy
        with contextlib.suppress(ValueError):  # some int outside 0..255: the general path names it
            return np.frombuffer(bytearray(values), dtype=np.uint8).reshape(28, 28)
    try:
        array = np.asarray(values, dtype=np.float64)
    except OverflowError:  # an integer beyond float range
        raise BadInput("'pixels' holds a number far outside 0..255") from None
    bad = ~((array >= 0) & (array <= 255))  # NaN (JSON NaN parses) fails both comparisons
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise BadInput(f"'pixels'[{i}] is {reprlib.repr(values[i])}: every pixel must be a finite number in 0..255")
    return np.rint(array).astype(np.uint8).reshape(28, 28)


def parse_json(raw: bytes) -> dict:
    """A request body parsed as a JSON object."""
    try:
        body = orjson.loads(raw)  # several times faster than json.loads on a list of pixels
    except orjson.JSONDecodeError:
        # orjson takes strict JSON only. Python's parser also reads NaN, Infinity and numbers beyond a double's
        # range (json.dumps writes the first two), which then get an error naming the pixel, not the parser.
        # json.loads rather than Flask's get_json, which lets RecursionError (deeply nested input) escape.
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # ValueError covers JSONDecodeError and bad UTF-8
            raise BadInput(f"body is not valid JSON: {exc}"[:300]) from None
    if not isinstance(body, dict):
        raise BadInput('body must be a JSON object: {"pixels": [...]} or {"image": "data:image/png;base64,..."}')
    return body


def answer(classifier: DigitClassifier, digit: np.ndarray, want_preview: bool,
           observation: dict | None = None) -> bytes:
    """The JSON answer to a prediction: label, probabilities, labels, model and, if asked, the preview (and
    the label, its confidence and the digit in ``observation``, when given)."""
    label, probabilities = classifier.predict(digit)
    if observation is not None:
        observation.update(label=classifier.labels[label], confidence=probabilities[label], digit=digit)
    answer = {"label": label, "probabilities": probabilities, "labels": classifier.labels, "model": classifier.name}
    if want_preview:
        answer["preview"] = digit.reshape(-1).tolist()
    return orjson.dumps(answer)


def error_body(message: str, status: int) -> bytes:
    return orjson.dumps({"error": message, "status": status})


def _data_url_bytes(url) -> bytes:
    """The bytes of a ``data:image/...;base64,...`` URL."""
    if not isinstance(url, str):
        raise BadInput(f"'image' must be a data URL string, got {type(url).__name__}")
    head, comma, payload = url.partition(",")
    if not comma or not head.startswith("data:image/") or not head.endswith(";base64"):
        raise BadInput("'image' must be a data URL like data:image/png;base64,...")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadInput(f"'image' data URL is not valid base64: {exc}") from None
