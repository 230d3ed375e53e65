"""Fuzzing the web API's request bodies (issue 14): JSON pixels, data-URL images and uploads.

Each example starts from a valid prediction request made from a real MNIST-like digit (784 pixels, flat
or as 28 rows, or a PNG in a data URL) and damages it the ways a client can: a pixel or an option given
another JSON type, the list cut or lengthened, a row of the wrong length, a key deleted, a value nested
100,000 deep, the image's bytes flipped or cut or its header claiming a huge size, the base64 or the
data URL broken, the JSON text itself flipped or cut. The property (:func:`fuzzing.check_parser`) on the
validation of :mod:`scratchpilot.web.api`: the prepared 28×28 digit, or :class:`BadInput` with a 4xx
status and a short message naming the part of the request at fault, within a memory and time bound. A
smaller number goes through the Flask app (with its JSON fast path): never a 500, always JSON.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib

import numpy as np
import pytest
from fuzzing import check_parser, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st
from web_support import multipart, png_bytes

from scratchpilot.web import api

MEMORY_BOUND = 64 << 20  # a body is at most 2 MB; its image at most the decoder's pixel limit
SECONDS_BOUND = 5.0
#: what a refusal names: the field at fault, the body, or that nothing was drawn
NAMES = ("'pixels'", "'image'", "'preview'", "'preprocess'", "body", "nothing drawn")


def a_digit() -> np.ndarray:
    """A plain '7': a bar and a slanted stroke on black, as MNIST draws it."""
    digit = np.zeros((28, 28), np.uint8)
    digit[6:9, 6:22] = 255
    for row in range(9, 23):
        digit[row, 20 - (row - 9) // 2: 23 - (row - 9) // 2] = 220
    return digit


DIGIT = a_digit()
PNG = png_bytes(255 - DIGIT)  # dark on light, as a canvas or a photo of paper

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8)


def broken_image(draw) -> bytes:
    """The digit's PNG damaged: bytes flipped, cut, its IHDR size rewritten (CRC fixed), or not a PNG."""
    how = draw(st.sampled_from(["flip", "cut", "size", "other"]))
    data = bytearray(PNG)
    if how == "flip":
        for position, mask in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(1, 255)),
                                            min_size=1, max_size=4)):
            data[position] ^= mask
    elif how == "cut":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif how == "size":  # a tiny file claiming width × height: a decompression bomb's header
        side = st.integers(0, 64) | st.sampled_from([3546, 4096, 20000, 1 << 31])
        struct.pack_into(">II", data, 16, draw(side), draw(side))
        struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    else:
        data = bytearray(draw(st.binary(max_size=64)))
    return bytes(data)


@st.composite
def bodies(draw) -> bytes:
    """A predict request's JSON body: valid, then mutated (see the module docstring)."""
    form = draw(st.sampled_from(["flat", "rows", "image"]))
    pixels = DIGIT.tolist() if form == "rows" else DIGIT.reshape(-1).tolist()
    body: dict = {"image": "data:image/png;base64," + base64.b64encode(PNG).decode()} if form == "image" \
        else {"pixels": pixels}
    for key in ("preview", "preprocess"):
        if draw(st.booleans()):
            body[key] = draw(st.booleans())
    deep = None
    for mutation in draw(st.lists(st.sampled_from(["pixel", "length", "row", "key", "delete", "deep", "blank",
                                                   "image", "url", "base64"]), max_size=3)):
        if mutation == "pixel" and "pixels" in body and isinstance(body["pixels"], list) and body["pixels"]:
            target = body["pixels"]
            if isinstance(target[0], list):
                target = target[draw(st.integers(0, len(target) - 1))]
            if isinstance(target, list) and target:
                target[draw(st.integers(0, len(target) - 1))] = draw(
                    json_values | st.sampled_from([256, -1, 255.6, -0.4, 1e308, float("nan"), float("inf"), True]))
        elif mutation == "length" and isinstance(body.get("pixels"), list):
            size = draw(st.sampled_from([0, 1, 27, 28, 29, 783, 785, 1568]) | st.integers(0, 2000))
            body["pixels"] = (body["pixels"] * (size // max(len(body["pixels"]), 1) + 1))[:size]
        elif mutation == "row" and form == "rows" and isinstance(body.get("pixels"), list) and body["pixels"]:
            row = draw(st.integers(0, len(body["pixels"]) - 1))
            if isinstance(body["pixels"][row], list):
                body["pixels"][row] = body["pixels"][row][:draw(st.integers(0, 40))]
        elif mutation == "key":
            body[draw(st.sampled_from(["pixels", "image", "preview", "preprocess"]))] = draw(json_values)
        elif mutation == "delete" and body:
            del body[draw(st.sampled_from(sorted(body)))]
        elif mutation == "deep":
            deep = draw(st.sampled_from([100, 1000, 100_000]))
            body[draw(st.sampled_from(["pixels", "image", "preview"]))] = "__DEEP__"
        elif mutation == "blank" and "pixels" in body:
            body["pixels"] = [0] * 784
        elif mutation == "image":
            body["image"] = "data:image/png;base64," + base64.b64encode(broken_image(draw)).decode()
        elif mutation == "url" and isinstance(body.get("image"), str):
            head = draw(st.sampled_from(["data:image/png;base64", "data:text/plain;base64", "data:image/png",
                                         "image/png;base64", ""]))
            body["image"] = head + "," + body["image"].partition(",")[2]
        elif mutation == "base64" and isinstance(body.get("image"), str):
            payload = body["image"].partition(",")[2]
            cut = draw(st.integers(0, len(payload)))
            body["image"] = "data:image/png;base64," + payload[:cut] + draw(st.sampled_from(["", "=", "!", "A", " "]))
    text = json.dumps(body, allow_nan=True)
    if deep:
        text = text.replace('"__DEEP__"', "[" * deep + "]" * deep)
    raw = text.encode()
    how = draw(st.sampled_from(["as is"] * 6 + ["flip", "cut", "not an object", "bad utf-8"]))
    if how == "flip" and raw:
        position = draw(st.integers(0, len(raw) - 1))
        raw = raw[:position] + bytes([raw[position] ^ draw(st.integers(1, 255))]) + raw[position + 1:]
    elif how == "cut":
        raw = raw[:draw(st.integers(0, len(raw)))]
    elif how == "not an object":
        raw = b"[" + raw + b"]"
    elif how == "bad utf-8":
        raw = raw[:1] + b"\xff\xfe" + raw[1:]
    return raw


def validate(raw: bytes):
    """The API's validation of one JSON body; a refusal must be a 4xx with a short message."""
    try:
        return api.digit_from_json(api.parse_json(raw))
    except api.BadInput as exc:
        assert exc.status in (400, 422), exc.status
        assert len(str(exc)) < 1000, f"the message echoes the input: {str(exc)[:200]}..."
        raise


@given(raw=bodies())
@fuzz_settings(400)
def test_fuzzed_json_bodies(raw):
    result = check_parser(lambda: validate(raw), api.BadInput, NAMES, max_bytes=MEMORY_BOUND,
                          max_seconds=SECONDS_BOUND)
    if result is not None:
        digit, want_preview = result
        assert digit.dtype == np.uint8 and digit.shape == (28, 28) and digit.any()
        assert isinstance(want_preview, bool)


@given(data=st.data())
@fuzz_settings(150)
def test_fuzzed_image_bytes(data):
    """The image decoding and preparation alone (what a multipart upload reaches)."""
    image = broken_image(data.draw)
    result = check_parser(lambda: api._prepare_bytes(image, "uploaded file 'x.png'"), api.BadInput,
                          ("uploaded file 'x.png'", "nothing drawn"), max_bytes=MEMORY_BOUND,
                          max_seconds=SECONDS_BOUND)
    assert result is None or (result.dtype == np.uint8 and result.shape == (28, 28))


# --------------------------------------------------------------------- through the app: never a 500


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from werkzeug.test import Client

    from scratchpilot import nn
    from scratchpilot.web.app import create_app

    path = tmp_path_factory.mktemp("fuzz-web") / "tiny.npz"
    nn.Sequential([nn.Dense(784, 10)]).save(path)  # untrained: the answers' values do not matter here
    return Client(create_app(path))


@given(raw=bodies(), kind=st.sampled_from(["json", "multipart", "text/plain", "none"]),
       data=st.data())
@fuzz_settings(80)
def test_fuzzed_requests_through_the_app(client, raw, kind, data):
    if kind == "multipart":
        body, content_type = multipart(data.draw(st.sampled_from(["image", "file"])), "digit.png",
                                       data.draw(st.sampled_from([PNG, b""])) or broken_image(data.draw))
    else:
        body, content_type = raw, {"json": "application/json", "text/plain": "text/plain", "none": None}[kind]
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/api/predict", data=body, headers=headers)
    assert response.status_code in (200, 400, 413, 415, 422), (response.status_code, response.data[:300])
    assert response.mimetype == "application/json"
    answer = response.get_json()
    if response.status_code == 200:
        assert 0 <= answer["label"] <= 9 and len(answer["probabilities"]) == 10
    else:
        assert answer["status"] == response.status_code and answer["error"]
