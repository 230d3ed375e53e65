"""Fuzzing the session reader: manifests and chunks mutated from a real recording (issue 14).

Each example starts from a small session written by :class:`SessionWriter` and damages it the ways a
disk, a crash or a hand edit can: JSON values replaced by other types, keys deleted, values nested deep,
the text cut or flipped; chunk bytes flipped, files truncated or deleted, ``.npy`` header fields (dtype,
shape, order) rewritten, with or without a matching sha256 in the manifest. The property
(:func:`fuzzing.check_parser`): opening and reading the session gives consistent data or a
:class:`SessionError` naming the session folder or file, within a memory and time bound; a chunk that is
skipped names itself in the reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fuzzing import check_parser, fuzz_settings, json_paths, json_values
from hypothesis import given
from hypothesis import strategies as st

from scratchpilot.car.sessions import Session, SessionError, SessionWriter
from scratchpilot.car.sessions.cleaning import summarize
from scratchpilot.car.sessions.parse import read_chunk
from scratchpilot.car.sessions.repair import rebuild_manifest

MEMORY_BOUND = 32 << 20  # the session is a few kB: any large allocation is a size taken on trust
SECONDS_BOUND = 5.0


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> dict[str, bytes]:
    """The files of a real 3-chunk session (18 frames of 6x8x3, two episodes, all five labels)."""
    root = tmp_path_factory.mktemp("template")
    rng = np.random.default_rng(3)
    with SessionWriter(root, source="sim", driver="expert", name="s", chunk_frames=6, background=False,
                       meta={"track": {"seed": 7, "look": "standard"}}) as writer:
        for i in range(18):
            writer.add(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), i % 5, i * 0.05, episode=i // 9)
    return {p.name: p.read_bytes() for p in writer.path.iterdir()}


def materialise(files: dict[str, bytes]) -> tuple[tempfile.TemporaryDirectory, Path]:
    holder = tempfile.TemporaryDirectory(prefix="fuzz-session-")
    folder = Path(holder.name) / "rec-under-test"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return holder, folder


def read_all(folder: Path) -> Session:
    """What every consumer does: open, read labels and frames, verify, list."""
    session = Session.open(folder, warn=None)
    frames = session.frames()  # a chunk whose sha256 fails is found here and dropped from the labels too
    labels = session.labels
    session.verify()
    assert len(frames) == len(labels) == len(session.timestamps) == len(session.episodes) == len(session)
    assert frames.dtype == np.uint8 and frames.shape[1:] == session.frame_shape
    assert labels.size == 0 or (labels.min() >= 0 and labels.max() < len(session.label_names))
    for file, reason in session.damaged.items():
        assert file in reason, reason
    row = summarize(folder)[0]
    assert row["error"] is None or str(folder) in row["error"]
    return session


# ------------------------------------------------------------------------ manifest mutations

JSON_VALUES = json_values(nan=True)


def _mutate_json(document, data):
    paths = list(json_paths(document))[1:]
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path = data.draw(st.sampled_from(paths), label="path")
        parent = document
        try:
            for step in path[:-1]:
                parent = parent[step]
            if not isinstance(parent, (dict, list)):
                continue  # an earlier mutation made it text (which indexes, but cannot be changed)
            current = parent[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation moved it
        action = data.draw(st.sampled_from(["replace", "delete", "nest", "number", "duplicate"]), label="action")
        if action == "replace":
            parent[path[-1]] = data.draw(JSON_VALUES, label="value")
        elif action == "delete":
            del parent[path[-1]]
        elif action == "nest":
            depth = data.draw(st.sampled_from([1, 5, 200, 900]), label="depth")
            nested = current
            for _ in range(depth):
                nested = [nested]
            parent[path[-1]] = nested
        elif action == "number" and isinstance(current, (int, float)) and not isinstance(current, bool):
            parent[path[-1]] = current + data.draw(st.sampled_from([-1, 1, 0.5, -current - 1, 10 ** 9]), label="d")
        elif action == "duplicate" and isinstance(parent, list):
            parent.insert(int(path[-1]), json.loads(json.dumps(current)))
    return document


@fuzz_settings(300)
@given(data=st.data())
def test_mutated_manifests_are_read_or_refused_by_name(template, data):
    files = dict(template)
    document = _mutate_json(json.loads(files["manifest.json"]), data)
    try:
        text = json.dumps(document)
    except (RecursionError, ValueError):
        text = files["manifest.json"].decode()
    if data.draw(st.booleans(), label="text damage"):
        raw = bytearray(text.encode())
        position = data.draw(st.integers(0, len(raw) - 1), label="at")
        if data.draw(st.booleans(), label="truncate"):
            raw = raw[:position]
        else:
            raw[position] = data.draw(st.integers(0, 255), label="byte")
        files["manifest.json"] = bytes(raw)
    else:
        files["manifest.json"] = text.encode()
    holder, folder = materialise(files)
    with holder:
        check_parser(lambda: read_all(folder), SessionError, str(folder),
                     max_bytes=MEMORY_BOUND, max_seconds=SECONDS_BOUND)


@fuzz_settings(60)
@given(ranges=JSON_VALUES | st.lists(st.fixed_dictionaries(
    {"id": JSON_VALUES, "start": st.integers(-3, 25), "stop": st.integers(-3, 25)}), max_size=3))
def test_mutated_exclusions_are_read_or_refused_by_name(template, ranges):
    holder, folder = materialise({**template, "exclusions.json": json.dumps({"version": 1, "ranges": ranges}).encode()})
    with holder:
        check_parser(lambda: read_all(folder), SessionError, str(folder),
                     max_bytes=MEMORY_BOUND, max_seconds=SECONDS_BOUND)


# ------------------------------------------------------------------------ chunk mutations

DESCRS = ["|u1", "<i8", "<f8", ">f8", "<i2", "|i1", "|b1", "|O", "<U4", "<c16", "|V8", "<f2", "<u8"]
SIZES = st.sampled_from([0, 1, 6, 1000, 2 ** 20, 2 ** 24, 2 ** 31, 10 ** 12, 2 ** 62])


def _shape(shape: tuple[int, ...], data) -> tuple[int, ...]:
    """Mostly the real shape with one size changed (so later checks are reached), else any shape."""
    if shape and data.draw(st.integers(0, 4), label="shape kind"):
        sizes = list(shape)
        sizes[data.draw(st.integers(0, len(sizes) - 1), label="dim")] = data.draw(SIZES, label="size")
        return tuple(sizes)
    return tuple(data.draw(st.lists(SIZES, max_size=5), label="shape"))


def _npy(header: dict, payload: bytes) -> bytes:
    text = repr(header).encode("latin1")
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + payload


def _rewrite_header(chunk: bytes, data, fields=("descr", "fortran_order", "shape", "payload")) -> bytes:
    """The chunk with one member's ``.npy`` header field changed (and perhaps its data cut or extended)."""
    with np.load(io.BytesIO(chunk)) as archive:
        arrays = {key: archive[key] for key in archive.files}
    key = data.draw(st.sampled_from(["frames", *sorted(arrays)]), label="member")  # frames: the big one
    array = arrays[key]
    header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False, "shape": array.shape}
    field = data.draw(st.sampled_from(fields), label="field")
    payload = array.tobytes()
    if field == "descr":
        header["descr"] = data.draw(st.sampled_from(DESCRS), label="descr")
    elif field == "fortran_order":
        header["fortran_order"] = True
    elif field == "shape":
        header["shape"] = _shape(array.shape, data)
    else:
        cut = data.draw(st.integers(-len(payload), 64), label="cut")
        payload = payload[:len(payload) + cut] if cut < 0 else payload + bytes(cut)
    members = {f"{k}.npy": (_npy(header, payload) if k == key else _npy(
        {"descr": np.lib.format.dtype_to_descr(v.dtype), "fortran_order": False, "shape": v.shape}, v.tobytes()))
        for k, v in arrays.items()}
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if data.draw(st.booleans(), label="deflate") else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, member in members.items():
            archive.writestr(name, member)
    return buffer.getvalue()


@fuzz_settings(300)
@given(data=st.data())
def test_mutated_chunks_are_skipped_by_name_or_refused(template, data):
    files = dict(template)
    chunks = sorted(name for name in files if name.startswith("chunk-"))
    victim = data.draw(st.sampled_from(chunks), label="chunk")
    original = files[victim]
    action = data.draw(st.sampled_from(["flip", "truncate", "splice", "header", "delete"]), label="action")
    if action == "flip":
        raw = bytearray(original)
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            raw[data.draw(st.integers(0, len(raw) - 1), label="at")] ^= data.draw(st.integers(1, 255), label="bits")
        files[victim] = bytes(raw)
    elif action == "truncate":
        files[victim] = original[:data.draw(st.integers(0, len(original) - 1), label="length")]
    elif action == "splice":
        at = data.draw(st.integers(0, len(original)), label="at")
        files[victim] = original[:at] + data.draw(st.binary(max_size=64), label="bytes") + original[at + 8:]
    elif action == "header":
        files[victim] = _rewrite_header(original, data)
    else:
        del files[victim]
    if victim in files and data.draw(st.booleans(), label="rehash"):
        # a consistent forgery: the manifest's sha256 matches, so only the content checks can catch it
        manifest = json.loads(files["manifest.json"])
        for chunk in manifest["chunks"]:
            if chunk["file"] == victim:
                chunk["sha256"] = hashlib.sha256(files[victim]).hexdigest()
        files["manifest.json"] = json.dumps(manifest).encode()
    holder, folder = materialise(files)
    with holder:
        session = check_parser(lambda: read_all(folder), SessionError, str(folder),
                               max_bytes=MEMORY_BOUND, max_seconds=SECONDS_BOUND)
        if session is not None and files.get(victim) != original:
            assert set(session.damaged) <= {victim}  # only the damaged chunk is lost, never its neighbours
            assert len(session) >= 12


@fuzz_settings(100)
@given(data=st.data())
def test_manifests_rebuilt_from_mutated_chunks_read_back(template, data):
    files = {name: value for name, value in template.items() if name != "manifest.json"}
    chunks = sorted(files)
    victim = data.draw(st.sampled_from(chunks), label="chunk")
    if data.draw(st.booleans(), label="header"):
        files[victim] = _rewrite_header(files[victim], data)
    else:
        raw = bytearray(files[victim])
        raw[data.draw(st.integers(0, len(raw) - 1), label="at")] ^= 0xFF
        files[victim] = bytes(raw)
    holder, folder = materialise(files)
    with holder:
        result = check_parser(lambda: rebuild_manifest(folder), SessionError, str(folder),
                              max_bytes=MEMORY_BOUND, max_seconds=SECONDS_BOUND)
        if result is not None:
            session = read_all(folder)
            assert session.damaged == {} and len(session) == result["frames"] >= 12
            assert {s["file"] for s in result["skipped_chunks"]} <= {victim}
            shutil.rmtree(folder)


@fuzz_settings(200)
@given(data=st.data())
def test_chunks_with_lying_headers_are_read_alone_or_refused(template, data):
    """What the rebuild reads: a chunk with no manifest to check it against, only the caps and its own size."""
    name = data.draw(st.sampled_from(sorted(n for n in template if n.startswith("chunk-"))), label="chunk")
    mutated = _rewrite_header(template[name], data, fields=("descr", "shape", "shape", "payload"))
    holder, folder = materialise({name: mutated})
    with holder:
        check_parser(lambda: read_chunk(folder / name), SessionError, str(folder / name),
                     max_bytes=MEMORY_BOUND, max_seconds=SECONDS_BOUND)
