"""Save/load round trips and refusal of bad model files."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from scratchpilot import nn
from scratchpilot.nn import SGD, Dense, Dropout, LeakyReLU, ModelFileError, ReLU, Sequential, load


@pytest.fixture()
def trained(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 6)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    model = Sequential([Dense(6, 5), LeakyReLU(0.05), Dropout(0.2), Dense(5, 3, init="glorot")],
                       optimizer=SGD(0.1, momentum=0.9), seed=0)
    model.fit(X, y, epochs=2, batch_size=16, progress=False)
    model.metadata = {"preprocessing": {"kind": "mnist", "scale": 255}, "labels": ["a", "b", "c"]}
    path = tmp_path / "m.npz"
    model.save(path)
    return model, path, X


def test_round_trip_is_bit_exact(trained):
    model, path, X = trained
    loaded = load(path)
    for a, b in zip(model.layers, loaded.layers, strict=True):
        assert type(a) is type(b) and a.config() == b.config()
        for k in a.params:
            assert a.params[k].dtype == b.params[k].dtype
            assert np.array_equal(a.params[k], b.params[k])
    assert np.array_equal(model.predict_proba(X), loaded.predict_proba(X))
    assert loaded.metadata == model.metadata
    assert loaded.history["loss"] == model.history["loss"]
    assert nn.read_config(path)["format_version"] == nn.io.FORMAT_VERSION


def _write_npz(path, **arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _config_bytes(cfg):
    return np.frombuffer(json.dumps(cfg).encode(), dtype=np.uint8)


def _good_config(path):
    with np.load(path, allow_pickle=False) as z:
        return json.loads(z["config.json"].tobytes()), {k: z[k] for k in z.files if k != "config.json"}


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        load(tmp_path / "nope.npz")


def test_truncated_file(trained, tmp_path):
    _, path, _ = trained
    data = path.read_bytes()
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated or corrupted"):
        load(bad)


def test_random_bytes(tmp_path):
    bad = tmp_path / "noise.npz"
    bad.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(ModelFileError, match=str(bad.name)):
        load(bad)


def test_foreign_npz(tmp_path):
    bad = tmp_path / "foreign.npz"
    _write_npz(bad, weights=np.zeros(3))
    with pytest.raises(ModelFileError, match="no config.json entry"):
        load(bad)


def test_bare_npy(tmp_path):
    bad = tmp_path / "bare.npy"
    np.save(bad, np.zeros(3))
    with pytest.raises(ModelFileError, match="not an .npz"):
        load(bad)


def test_pickled_object_array_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "evil.npz"
    arr = np.empty(1, dtype=object)
    arr[0] = Evil()
    with open(bad, "wb") as fh:
        np.savez(fh, **{"config.json": arr})
    with pytest.raises(ModelFileError):
        load(bad)
    assert not marker.exists()


def test_tampered_shape(trained, tmp_path):
    _, path, _ = trained
    cfg, arrays = _good_config(path)
    arrays["p0.W"] = np.zeros((7, 5), np.float32)
    bad = tmp_path / "tampered.npz"
    _write_npz(bad, **{"config.json": _config_bytes(cfg)}, **arrays)
    with pytest.raises(ModelFileError, match=r"p0.W has shape \(7, 5\)"):
        load(bad)


@pytest.mark.parametrize("mutate, match", [
    (lambda cfg, arr: cfg.update(format="something-else"), "not a scratchpilot model"),
    (lambda cfg, arr: cfg.update(format_version=99), "newer scratchpilot"),
    (lambda cfg, arr: cfg["layers"].append({"type": "os.system", "cmd": "rm"}), "unknown layer"),
    (lambda cfg, arr: cfg["layers"][0].update(n_in=-3), "invalid layer"),
    (lambda cfg, arr: cfg.update(loss={"type": "Evil"}), "unknown loss"),
    (lambda cfg, arr: arr.pop("p3.b"),
     r"missing array p3.b for layer 3 \(Dense"),
    (lambda cfg, arr: arr.update(extra=np.zeros(1)), "unexpected arrays"),
    (lambda cfg, arr: arr.update({"p0.b": np.full(5, np.nan, np.float32)}), r"^[^:]*bad.npz: array p0.b contains NaN"),
    (lambda cfg, arr: arr.update({"p0.b": np.zeros(5, np.float64)}), "dtype float64"),
])
def test_tampered_config(trained, tmp_path, mutate, match):
    _, path, _ = trained
    cfg, arrays = _good_config(path)
    mutate(cfg, arrays)
    bad = tmp_path / "bad.npz"
    _write_npz(bad, **{"config.json": _config_bytes(cfg)}, **arrays)
    with pytest.raises(ModelFileError, match=match):
        load(bad)


def test_config_not_json(tmp_path):
    bad = tmp_path / "garbage.npz"
    _write_npz(bad, **{"config.json": np.frombuffer(b"\xff{not json", dtype=np.uint8)})
    with pytest.raises(ModelFileError, match="not valid UTF-8 JSON"):
        load(bad)


def test_save_is_atomic_and_leaves_no_temp_files(trained, tmp_path):
    model, path, _ = trained
    model.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]
    assert zipfile.is_zipfile(io.BytesIO(path.read_bytes()))


def test_relu_model_loads(tmp_path):
    model = Sequential([Dense(3, 2), ReLU(), Dense(2, 2)], seed=1)
    model.save(tmp_path / "r.npz")
    assert load(tmp_path / "r.npz").summary() == model.summary()


@pytest.fixture()
def cnn_file(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.random((16, 6, 6, 1)).astype(np.float32)
    model = Sequential([nn.Conv2D(1, 2, 3, padding="same"), nn.BatchNorm(2), nn.ReLU(), nn.MaxPool2D(2),
                        nn.Flatten(), nn.Dense(18, 3)], seed=0, input_shape=(6, 6, 1))
    model.fit(X, rng.integers(0, 3, 16), epochs=1, batch_size=8, progress=False)
    path = tmp_path / "cnn.npz"
    model.save(path)
    return path


def _huge(cfg):
    """A consistent architecture that asks for ten million parameters the file does not hold."""
    cfg["layers"][0]["out_channels"] = 10 ** 6
    cfg["layers"][1]["n_features"] = 10 ** 6
    cfg["layers"][5]["n_in"] = 9 * 10 ** 6


@pytest.mark.parametrize("mutate, match", [
    (lambda cfg, arr: cfg["layers"].insert(0, {"type": "Conv3D", "in_channels": 1}), "unknown layer"),
    (lambda cfg, arr: cfg["layers"][0].update(kernel=[3, 0]), "Conv2D: kernel must be a positive integer"),
    (lambda cfg, arr: cfg["layers"][0].update(padding="full"), "padding must be"),
    (lambda cfg, arr: cfg["layers"][0].update(out_channels=3), r"layer 1 \(BatchNorm.*normalises 2 features"),
    (lambda cfg, arr: _huge(cfg), r"p0.W has shape \(3, 3, 1, 2\), layer 0 \(Conv2D.*needs \(3, 3, 1, 1000000\)"),
    (lambda cfg, arr: arr.update({"p0.W": np.zeros((3, 3, 1, 3), np.float32)}), "p0.W has shape"),
    (lambda cfg, arr: cfg["layers"][5].update(n_in=20), r"layer 5 \(Dense.*gives \(18,\)"),
    (lambda cfg, arr: arr.pop("s1.running_var"), r"missing array s1.running_var for layer 1 \(BatchNorm"),
    (lambda cfg, arr: arr.update({"s1.running_var": np.full(2, -1.0, np.float32)}), "negative variances"),
    (lambda cfg, arr: cfg.update(input_shape=[6, 6, 0]), "bad input_shape"),
    (lambda cfg, arr: cfg["layers"][0].update(trainable="no"), "'trainable' must be true or false"),
])
def test_tampered_cnn_files_are_refused_with_the_reason(cnn_file, tmp_path, mutate, match):
    cfg, arrays = _good_config(cnn_file)
    mutate(cfg, arrays)
    bad = tmp_path / "bad.npz"
    _write_npz(bad, **{"config.json": _config_bytes(cfg)}, **arrays)
    with pytest.raises(ModelFileError, match=match):
        load(bad)


def test_truncated_cnn_file_is_refused(cnn_file, tmp_path):
    data = cnn_file.read_bytes()
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated or corrupted"):
        load(bad)


def test_version_1_files_still_load(trained, tmp_path):
    """A file as the first format wrote it: dense layers, no input_shape, no state arrays, version 1."""
    model, path, X = trained
    cfg, arrays = _good_config(path)
    cfg["format_version"] = 1
    cfg.pop("input_shape")
    old = tmp_path / "v1.npz"
    _write_npz(old, **{"config.json": _config_bytes(cfg)}, **arrays)
    loaded = load(old)
    assert loaded.input_shape == (6,)
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    assert nn.io.FORMAT_VERSION == 2


def _zip_with(path, entries: dict, compression=zipfile.ZIP_DEFLATED):
    """An .npz written by hand: {name: bytes of a .npy} — for entries numpy itself would not write."""
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for name, data in entries.items():
            z.writestr(name, data)


def _npy_bytes(array=None, header_shape=None, dtype="<f4"):
    buf = io.BytesIO()
    if header_shape is None:
        np.save(buf, array)
        return buf.getvalue()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": header_shape})
    return buf.getvalue()


def _dense_config():
    return {"format": "scratchpilot-model", "format_version": 2, "layers": [{"type": "Dense", "n_in": 4, "n_out": 3}],
            "loss": {"type": "SoftmaxCrossEntropy"}, "input_shape": [4]}


def test_a_deflate_bomb_is_refused_before_it_is_unpacked(tmp_path):
    import tracemalloc

    bad = tmp_path / "bomb.npz"
    config = _npy_bytes(np.frombuffer(json.dumps(_dense_config()).encode(), np.uint8))
    bomb = _npy_bytes(np.zeros(25_000_000, np.float32))  # 100 MB of zeros, about 100 KB deflated
    _zip_with(bad, {"config.json.npy": config, "p0.W.npy": bomb, "p0.b.npy": _npy_bytes(np.zeros(3, np.float32))})
    assert bad.stat().st_size < 1_000_000
    tracemalloc.start()
    with pytest.raises(ModelFileError, match=r"p0.W has shape \(25000000,\).*needs \(4, 3\)"):
        load(bad)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20_000_000  # nothing near the 100 MB the entry unpacks to


@pytest.mark.parametrize("entries, match", [
    ({"p0.W.npy": _npy_bytes(header_shape=(10 ** 13,))}, r"p0.W claims shape \(10000000000000,\).*its entry holds 0"),
    ({"p0.W.npy": _npy_bytes(np.zeros((4, 3), np.float32)) + b"\0" * 200_000}, "unpacks to"),
])
def test_array_headers_are_checked_before_their_data(tmp_path, entries, match):
    bad = tmp_path / "bad.npz"
    config = _npy_bytes(np.frombuffer(json.dumps(_dense_config()).encode(), np.uint8))
    _zip_with(bad, {"config.json.npy": config, "p0.b.npy": _npy_bytes(np.zeros(3, np.float32)), **entries})
    with pytest.raises(ModelFileError, match=match):
        load(bad)


@pytest.mark.parametrize("config_text, match", [
    (json.dumps({**_dense_config(), "layers": [{"type": ["Dense"], "n_in": 4, "n_out": 3}]}), "unknown layer"),
    (json.dumps({**_dense_config(), "loss": {"type": ["x"]}}), "unknown loss"),
    (json.dumps({**_dense_config(), "layers": [{"type": "Reshape", "shape": [10 ** 20]}]}),
     "invalid layer|architecture"),
    (json.dumps({**_dense_config(), "input_shape": [4, 2 ** 62 + 196]}), "bad input_shape"),
    ('{"format": "scratchpilot-model", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "not valid UTF-8 JSON"),
    ('{"format": "scratchpilot-model", "x": ' + "9" * 5000 + "}", "not valid UTF-8 JSON"),
    (json.dumps({**_dense_config(), "layers": [{"type": "Conv2D", "in_channels": 1, "out_channels": 1,
                                                "kernel": 3, "padding": 10 ** 12}]}), "padding must be"),
])
def test_crafted_configs_get_a_model_file_error(tmp_path, config_text, match):
    bad = tmp_path / "bad.npz"
    config = _npy_bytes(np.frombuffer(config_text.encode(), np.uint8))
    _zip_with(bad, {"config.json.npy": config, "p0.W.npy": _npy_bytes(np.zeros((4, 3), np.float32)),
                    "p0.b.npy": _npy_bytes(np.zeros(3, np.float32))})
    with pytest.raises(ModelFileError, match=match):
        load(bad)


def test_corrupt_and_unsupported_compression_get_a_model_file_error(tmp_path, trained):
    _, path, _ = trained
    data = bytearray(path.read_bytes())
    stored = tmp_path / "stored.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(stored, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    deflated = bytearray(stored.read_bytes())
    start = deflated.index(b"config.json.npy") + len("config.json.npy") + 40
    deflated[start:start + 40] = b"\xff" * 40  # garbage in the middle of the first deflate stream
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(bytes(deflated))
    with pytest.raises(ModelFileError, match="not a readable|not valid"):
        load(corrupt)
    flagged = tmp_path / "flagged.npz"
    data[6] |= 1  # "encrypted" flag of the first local header
    central = data.rindex(b"PK\x01\x02")
    data[central + 8] |= 1
    flagged.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="not a readable"):
        load(flagged)


# ------------------------------------------------------------------------ sizes and types checked first
# (the crafted files of the probe, loaded under an address-space limit: tests/test_nn_io_memory.py)

def test_a_text_file_or_a_folder_is_not_a_model_file(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("not a model\n")
    with pytest.raises(ModelFileError, match=r"notes.npz: not a scratchpilot model file \(not an .npz archive"):
        load(text)
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(ModelFileError, match="dir.npz: a folder"):
        load(tmp_path / "dir.npz")


def test_fortran_ordered_arrays_load_with_their_values(trained, tmp_path):
    model, path, X = trained
    cfg, arrays = _good_config(path)
    entries = {f"{k}.npy": _npy_bytes(np.asfortranarray(v)) for k, v in arrays.items()}
    assert b"'fortran_order': True" in entries["p0.W.npy"]
    fortran = tmp_path / "fortran.npz"
    _zip_with(fortran, {"config.json.npy": _npy_bytes(_config_bytes(cfg)), **entries})
    np.testing.assert_array_equal(load(fortran).predict_proba(X), model.predict_proba(X))


def test_zip_entries_that_lie_about_their_size_or_use_other_compression_are_refused(trained, tmp_path):
    import model_files

    bomb = tmp_path / "bomb.npz"
    model_files.deflate_bomb(bomb)
    with pytest.raises(ModelFileError, match="config.json.npy claims to unpack .* to 2,000,000,000"):
        load(bomb)
    _, path, _ = trained
    cfg, arrays = _good_config(path)
    bz = tmp_path / "bzip2.npz"
    _zip_with(bz, {"config.json.npy": _npy_bytes(_config_bytes(cfg)),
                   **{f"{k}.npy": _npy_bytes(v) for k, v in arrays.items()}}, compression=zipfile.ZIP_BZIP2)
    with pytest.raises(ModelFileError, match="config.json.npy uses zip compression method 12; only stored or deflated"):
        load(bz)


def test_layer_count_depth_and_total_size_are_capped(trained, tmp_path, monkeypatch):
    import model_files

    many = tmp_path / "many.npz"
    model_files.many_layers(many, n_layers=2000, width=2)
    with pytest.raises(ModelFileError, match="2,000 layers, more than the 1,024"):
        load(many)
    model, path, _ = trained
    cfg, arrays = _good_config(path)
    deep = tmp_path / "deep.npz"
    nested = {"labels": ["a"]}
    for _ in range(40):
        nested = {"x": nested}
    _write_npz(deep, **{"config.json": _config_bytes({**cfg, "metadata": nested})}, **arrays)
    with pytest.raises(ModelFileError, match="nests deeper than 32 levels"):
        load(deep)
    monkeypatch.setattr(nn.io, "MAX_VALUES", 50)
    with pytest.raises(ModelFileError, match=r"holds 53 parameter values, more than the 50"):
        load(path)
    with pytest.raises(ValueError, match="more than the 50 a model file may hold"):
        model.save(tmp_path / "too-big.npz")
    assert not (tmp_path / "too-big.npz").exists()


@pytest.mark.parametrize("field, value, match", [
    ("metadata", ["labels"], "metadata must be a JSON object"),
    ("history", {"loss": [0.5, "0.4"]}, r"history\['loss'\] must be a list of finite numbers"),
    ("history", {"loss": [0.5, 1e999]}, r"history\['loss'\] must be a list of finite numbers"),
    ("history", "long", "history must be a JSON object"),
    ("format_version", True, "bad format_version"),
])
def test_config_fields_of_the_wrong_type_are_refused(trained, tmp_path, field, value, match):
    _, path, _ = trained
    cfg, arrays = _good_config(path)
    bad = tmp_path / "bad.npz"
    text = json.dumps({**cfg, field: value}).replace("1e999", "Infinity")
    _write_npz(bad, **{"config.json": np.frombuffer(text.encode(), np.uint8)}, **arrays)
    with pytest.raises(ModelFileError, match=match):
        load(bad)


def test_a_saved_at_of_another_type_is_left_out(trained, tmp_path):
    _, path, _ = trained
    cfg, arrays = _good_config(path)
    odd = tmp_path / "odd.npz"
    _write_npz(odd, **{"config.json": _config_bytes({**cfg, "saved_at": [2026]})}, **arrays)
    assert load(odd).saved_at is None and load(path).saved_at == cfg["saved_at"]
