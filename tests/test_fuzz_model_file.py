"""Fuzzing the model-file loader: configs and arrays mutated from real saved models (issue 14).

Each example starts from a small model saved by :meth:`Sequential.save` (an MLP with dropout, or a CNN
with BatchNorm) and damages it: a config value replaced by another JSON type, a key deleted, a value
nested deep, a size multiplied; an array's ``.npy`` header rewritten (shape, dtype, order) with or without
its data; bytes of the zip flipped or the file cut short. The property (:func:`fuzzing.check_parser`):
:func:`scratchpilot.nn.load` returns a usable model or raises :class:`ModelFileError` naming the file,
within a memory and time bound.
"""

from __future__ import annotations

import copy
import io
import json
import zipfile

import numpy as np
import pytest
from fuzzing import check_parser, fuzz_settings, json_paths, json_values
from hypothesis import given
from hypothesis import strategies as st

from scratchpilot import nn
from scratchpilot.nn import ModelFileError, load

MEMORY_BOUND = 24 << 20  # the models are a few kB: any large allocation is a size taken on trust
SECONDS_BOUND = 5.0


def _saved(model, path) -> tuple[dict, dict[str, bytes]]:
    """(config, {array name: .npy bytes}) of ``model`` as :meth:`Sequential.save` writes it."""
    model.save(path)
    with zipfile.ZipFile(path) as z:
        entries = {name[:-4]: z.read(name) for name in z.namelist()}
    config = json.loads(np.load(io.BytesIO(entries.pop("config.json"))).tobytes())
    return config, entries


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> list[tuple[dict, dict[str, bytes]]]:
    folder = tmp_path_factory.mktemp("templates")
    rng = np.random.default_rng(0)
    mlp = nn.Sequential([nn.Dense(6, 5), nn.ReLU(), nn.Dropout(0.2), nn.Dense(5, 3)], seed=0,
                        optimizer=nn.SGD(0.1, momentum=0.9))
    mlp.fit(rng.standard_normal((32, 6)), rng.integers(0, 3, 32), epochs=2, batch_size=8, progress=False)
    mlp.metadata = {"labels": ["a", "b", "c"], "preprocessing": {"kind": "test"}, "test_accuracy": 0.5}
    cnn = nn.Sequential([nn.Conv2D(1, 2, 3, padding="same"), nn.BatchNorm(2), nn.ReLU(), nn.MaxPool2D(2),
                         nn.Flatten(), nn.Dense(18, 3)], seed=0, input_shape=(6, 6, 1), optimizer=nn.Adam())
    cnn.fit(rng.random((16, 6, 6, 1)), rng.integers(0, 3, 16), epochs=1, batch_size=8, progress=False)
    return [_saved(mlp, folder / "mlp.npz"), _saved(cnn, folder / "cnn.npz")]


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "model.npz"


def npy(array: np.ndarray | None = None, header: dict | None = None, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    if header is None:
        np.save(buf, array)
        return buf.getvalue()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def write(path, config, entries: dict[str, bytes], deflate: bool, config_text: bytes | None = None) -> None:
    text = config_text if config_text is not None else json.dumps(config).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as z:
        z.writestr("config.json.npy", npy(np.frombuffer(text, np.uint8)))
        for name, data in entries.items():
            z.writestr(f"{name}.npy", data)


def check_load(path):
    """The property; a model that loads must also predict (finite scores of the right shape)."""
    model = check_parser(lambda: load(path), ModelFileError, str(path), max_bytes=MEMORY_BOUND,
                         max_seconds=SECONDS_BOUND)
    if model is not None:
        shape = model.input_shape  # None: a file may leave it out (then only dense widths were checked)
        if shape is not None and all(d < 4096 for d in shape):
            with np.errstate(all="ignore"):
                scores = model.predict_proba(np.zeros((2, *shape), np.float32))
            assert scores.shape == (2, model.n_outputs)
        model.summary()
    return model


# ------------------------------------------------------------------------ config mutations

JSON_VALUES = json_values(3, 10 ** 9, "Dense", "float64", "same")


def _mutate(config, path, how, value, depth):
    """``config`` with the value at ``path`` replaced, deleted, nested ``depth`` deep or scaled."""
    config = copy.deepcopy(config)
    if not path:
        return value if how == "replace" else config
    parent = config
    for key in path[:-1]:
        parent = parent[key]
    key, old = path[-1], parent[path[-1]]
    if how == "delete":
        parent.pop(key)
    elif how == "nest":
        for _ in range(depth):
            old = [old]
        parent[key] = old
    elif how == "scale" and isinstance(old, int) and not isinstance(old, bool):
        parent[key] = old * depth
    else:
        parent[key] = value
    return config


@fuzz_settings(400)
@given(data=st.data(), which=st.integers(0, 1), deflate=st.booleans(),
       how=st.sampled_from(["replace", "delete", "nest", "scale"]), value=JSON_VALUES,
       depth=st.sampled_from([1, 2, 3, 40, 1000, 10 ** 6]))
def test_a_mutated_config_loads_or_is_refused(templates, target, data, which, deflate, how, value, depth):
    config, entries = templates[which]
    path = data.draw(st.sampled_from(list(json_paths(config))), label="path")
    # json.dumps itself recurses: deeper nesting is written by hand in the next test
    write(target, _mutate(config, path, how, value, depth if how != "nest" else min(depth, 500)), entries,
          deflate)
    check_load(target)


@fuzz_settings(60)
@given(which=st.integers(0, 1), depth=st.sampled_from([33, 999, 5000, 100_000]), cut=st.integers(0, 400))
def test_a_config_nested_deep_or_cut_short_is_refused(templates, target, which, depth, cut):
    config, entries = templates[which]
    text = json.dumps(config).encode()
    nested = text[:-1] + b', "x": ' + b"[" * depth + b"]" * depth + b"}"
    for config_text in (nested, text[:cut]):
        write(target, None, entries, True, config_text=config_text)
        assert check_load(target) is None


# ------------------------------------------------------------------------ array mutations

DTYPES = ["<f4", "<f8", ">f4", "<f2", "<i4", "|u1", "|b1", "<c8", "|O", "|V4", "<U2", [("a", "<f4")]]


@fuzz_settings(400)
@given(data=st.data(), which=st.integers(0, 1), deflate=st.booleans(),
       dtype=st.sampled_from([None, *DTYPES]), fortran=st.booleans(),
       shape=st.one_of(st.none(), st.lists(st.sampled_from([0, 1, 2, 3, 5, 18, 10 ** 6, 10 ** 12, 2 ** 62]),
                                           max_size=4).map(tuple)),
       keep_data=st.sampled_from(["all", "none", "half", "more"]), drop=st.booleans(), extra=st.booleans())
def test_a_mutated_array_header_loads_or_is_refused(templates, target, data, which, deflate, dtype, fortran,
                                                     shape, keep_data, drop, extra):
    config, entries = templates[which]
    entries = dict(entries)
    name = data.draw(st.sampled_from(sorted(entries)), label="array")
    array = np.load(io.BytesIO(entries[name]))
    raw = array.tobytes()
    raw = {"all": raw, "none": b"", "half": raw[:len(raw) // 2], "more": raw + bytes(len(raw) + 8)}[keep_data]
    header = {"descr": array.dtype.str if dtype is None else dtype,
              "fortran_order": fortran, "shape": array.shape if shape is None else shape}
    try:
        entries[name] = npy(header=header, data=raw)
    except (ValueError, TypeError):  # a header numpy itself refuses to write
        return
    if drop:
        entries.pop(data.draw(st.sampled_from(sorted(entries)), label="dropped"))
    if extra:
        entries["p9.W"] = npy(np.zeros(3, np.float32))
    write(target, config, entries, deflate)
    check_load(target)


#: per template, the config fields that widen its hidden layer together and stay consistent: (layer, field,
#: multiple of the factor)
WIDEN = [[(0, "n_out", 1), (3, "n_in", 1)], [(0, "out_channels", 1), (1, "n_features", 1), (5, "n_in", 1)]]


@fuzz_settings(150)
@given(which=st.integers(0, 1), factor=st.sampled_from([2, 7, 1000, 10 ** 5, 10 ** 9, 10 ** 12]),
       data_kind=st.sampled_from(["none", "original", "zeros"]), deflate=st.booleans())
def test_a_config_and_headers_that_lie_together_about_size_are_refused(templates, target, which, factor,
                                                                        data_kind, deflate):
    """The config asks for a wider layer and every header claims the size it needs: the data decides."""
    config, entries = templates[which]
    config = copy.deepcopy(config)
    for i, field, _ in WIDEN[which]:
        config["layers"][i][field] *= factor
    entries = dict(entries)
    for i, layer_cfg in enumerate(config["layers"]):
        kwargs = {k: v for k, v in layer_cfg.items() if k not in ("type", "trainable")}
        params, state = getattr(nn, layer_cfg["type"])(**kwargs).array_shapes()
        for kind, shapes in (("p", params), ("s", state)):
            for name, shape in shapes.items():
                key = f"{kind}{i}.{name}"
                old = np.load(io.BytesIO(entries[key]))
                size = int(np.prod(shape)) * 4
                raw = {"none": b"", "original": old.tobytes(),
                       "zeros": bytes(size) if size <= 1 << 20 else old.tobytes()}[data_kind]
                entries[key] = npy(header={"descr": "<f4", "fortran_order": False, "shape": shape}, data=raw)
    write(target, config, entries, deflate)
    model = check_load(target)
    assert model is None or (data_kind == "zeros" and factor <= 1000)


# ------------------------------------------------------------------------ damaged bytes

@fuzz_settings(400)
@given(data=st.data(), which=st.integers(0, 1), deflate=st.booleans(),
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), max_size=4),
       cut=st.one_of(st.none(), st.floats(0, 1)))
def test_a_damaged_or_truncated_file_loads_or_is_refused(templates, target, data, which, deflate, flips, cut):
    config, entries = templates[which]
    write(target, config, entries, deflate)
    raw = bytearray(target.read_bytes())
    for where, xor in flips:
        raw[int(where * len(raw))] ^= xor
    if cut is not None:
        raw = raw[:int(cut * len(raw))]
    target.write_bytes(bytes(raw))
    check_load(target)


def test_the_templates_load_unchanged(templates, target):
    for config, entries in templates:
        write(target, config, entries, True)
        assert check_load(target) is not None
