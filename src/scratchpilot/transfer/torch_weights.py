"""Reading a PyTorch ``.pth`` of weights without torch, and without letting its pickle run anything.

A ``.pth`` in PyTorch's legacy format (what ``torch.save`` wrote before 1.6, and what the pretrained
EfficientNet-Lite0 ships as) is five pickles in a row, then raw bytes:

1. a magic number, 2. the format's protocol version (1001), 3. the saving machine's sizes and byte order,
4. the state dict: an ``OrderedDict`` of tensors, each ``torch._utils._rebuild_tensor_v2(storage, offset,
   size, stride, ...)``, where ``storage`` is a *persistent id* ``("storage", torch.FloatStorage, key,
   location, numel, view)`` standing for bytes stored further on,
5. the storage keys in the order their bytes follow; then, per key, an 8-byte element count and the data.

A pickle may call any importable function, so this one is read by an unpickler that admits exactly the
globals of that list (:data:`ADMITTED`), each re-implemented here with NumPy, and refuses any other before
it can run; each pickle is first walked opcode by opcode (:func:`_scan`), so no length field can make the
unpickler allocate more than the file holds. Sizes, offsets and strides are checked against the bytes the
file really holds before anything is allocated. The result is a plain ``{name: numpy array}``.
"""

from __future__ import annotations

import collections
import hashlib
import io
import math
import pickle  # only through _WeightsUnpickler below: named globals admitted, nothing else
import pickletools
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
#: the most tensors, and the most bytes of storage, a weights file may describe (EfficientNet-Lite0 holds
#: 255 tensors in 19 MB; a large ImageNet network a few hundred MB)
MAX_TENSORS = 100_000
MAX_STORAGE_BYTES = 2 << 30

#: the most memo entries a pickle may use (a weights pickle uses about three per tensor)
MAX_MEMO = 1 << 20

#: storage classes a weights pickle may name, and the little-endian dtype of their elements
STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": None,
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}


class TorchWeightsError(ValueError):
    """A ``.pth`` that cannot be read as plain weights; the message names the file and the problem."""


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass
class _Storage:
    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None  # filled once the raw bytes after the pickles are read


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """What ``torch._utils._rebuild_tensor_v2`` rebuilds, as a reference into a storage (checked later)."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor whose storage is not a persistent storage reference")
    if not (isinstance(storage_offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)
            and len(size) == len(stride) and all(isinstance(n, int) for n in (*size, *stride))):
        raise pickle.UnpicklingError(f"a tensor with offset {storage_offset!r}, size {size!r}, stride {stride!r}")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    """The older ``torch._utils._rebuild_tensor``: the same without the autograd fields."""
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


#: (module, name) -> what stands in for it; nothing else may be named by the pickle
ADMITTED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _WeightsUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ADMITTED` globals and turns storages into placeholders."""

    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str):
        try:
            return ADMITTED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: a weights file names only "
                                         "tensors, their storages and an OrderedDict") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise pickle.UnpicklingError(f"unknown persistent id {str(pid)[:80]}")
        _, kind, key, _location, numel, view = pid
        if view is not None:
            raise pickle.UnpicklingError(f"storage {key}: views of storages are not supported")
        dtype = STORAGE_DTYPES[kind.name]
        if dtype is None:
            raise pickle.UnpicklingError(f"storage {key}: {kind.name} has no NumPy type")
        if not 0 <= numel <= MAX_STORAGE_BYTES:
            raise pickle.UnpicklingError(f"storage {key}: {numel} elements")
        storage = self.storages.get(key)
        if storage is None:
            if len(self.storages) >= MAX_TENSORS:
                raise pickle.UnpicklingError(f"more than {MAX_TENSORS:,d} storages")
            storage = self.storages[key] = _Storage(key, np.dtype(dtype), numel)
        elif storage.dtype != np.dtype(dtype) or storage.numel != numel:
            raise pickle.UnpicklingError(f"storage {key} named twice with different types or sizes")
        return storage


def read_torch_weights(path, sha256: str | None = None) -> dict[str, np.ndarray]:
    """The tensors of a legacy-format PyTorch ``.pth`` as ``{name: array}`` (copies, C-contiguous).

    ``sha256``: the file's expected SHA-256 (hex), checked before anything of it is unpickled.
    Raises :class:`TorchWeightsError` naming the file for anything else than plain weights: a refused
    global, a damaged or truncated file, a size, offset or stride outside its storage, the zip format.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TorchWeightsError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256.lower():
        raise TorchWeightsError(f"{path}: SHA-256 {hashlib.sha256(data).hexdigest()} is not the expected "
                                f"{sha256}: a different or damaged file (nothing of it was unpickled)")
    if data[:4] == b"PK\x03\x04":
        raise TorchWeightsError(f"{path}: a zip-format .pth (torch.save since PyTorch 1.6); only the legacy "
                                "format is read here")
    try:
        return _parse(io.BytesIO(data), len(data))
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            OverflowError, RecursionError, MemoryError, struct.error) as exc:
        raise TorchWeightsError(f"{path}: not a plain PyTorch weights file ({type(exc).__name__}: "
                                f"{str(exc)[:300]})") from None


def _scan(stream: io.BytesIO) -> None:
    """Walk the pickle that starts at the stream's position, opcode by opcode, without running it.

    The C unpickler allocates a counted argument (``BINBYTES``: up to 2⁶⁴ bytes) before reading it, and
    grows its memo to whatever index a ``PUT`` names, so a two-byte change can ask for gigabytes;
    :mod:`pickletools` reads an argument only if the file holds it. After this walk every argument is
    known to fit in the file and every memo index to be below :data:`MAX_MEMO`.
    """
    view = io.BytesIO(stream.getbuffer())
    view.seek(stream.tell())
    try:
        with warnings.catch_warnings():  # pickletools decodes text arguments, warning on odd escapes
            warnings.simplefilter("ignore", DeprecationWarning)
            for opcode, arg, _ in pickletools.genops(view):
                if opcode.name == "STOP":
                    return
                # the C unpickler grows its memo to the index a PUT names: 10⁸ would take gigabytes
                if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= arg < MAX_MEMO:
                    raise pickle.UnpicklingError(f"a pickle storing memo entry {arg:,d}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise pickle.UnpicklingError(f"a damaged pickle ({str(exc)[:120]})") from None
    raise pickle.UnpicklingError("a pickle without its end")


def _parse(stream: io.BytesIO, size: int) -> dict[str, np.ndarray]:
    storages: dict[str, _Storage] = {}

    def load():
        _scan(stream)
        return _WeightsUnpickler(stream, storages).load()

    if load() != MAGIC_NUMBER:
        raise pickle.UnpicklingError("not a PyTorch file (wrong magic number)")
    if load() != PROTOCOL_VERSION:
        raise pickle.UnpicklingError("an unknown PyTorch file protocol")
    info = load()
    if not isinstance(info, dict) or info.get("little_endian") is not True:
        raise pickle.UnpicklingError("written on a big-endian machine, or without its system information")
    state = load()
    keys = load()
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise pickle.UnpicklingError("the weights are not a dict of named tensors")
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)) or set(keys) != set(storages):
        raise pickle.UnpicklingError("the storage keys do not match the tensors' storages")
    for key in keys:
        storage = storages[key]
        count = int.from_bytes(_exactly(stream, 8), "little")
        nbytes = count * storage.dtype.itemsize
        if count != storage.numel or nbytes > size - stream.tell():
            raise pickle.UnpicklingError(f"storage {key}: {count:,d} elements where the pickle says "
                                         f"{storage.numel:,d}, with {size - stream.tell():,d} bytes left")
        storage.data = np.frombuffer(_exactly(stream, nbytes), dtype=storage.dtype)
    return {name: _materialise(name, ref) for name, ref in state.items()}


def _exactly(stream: io.BytesIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError(f"the file ends {n - len(data):,d} bytes early")
    return data


def _materialise(name: str, ref) -> np.ndarray:
    """A tensor reference as its own array, after checking it stays inside its storage."""
    if not isinstance(ref, _TensorRef):
        raise pickle.UnpicklingError(f"{name} is a {type(ref).__name__}, not a tensor")
    if any(n < 0 for n in ref.size) or any(s < 0 for s in ref.stride) or ref.offset < 0:
        raise pickle.UnpicklingError(f"{name}: negative size, stride or offset")
    if math.prod(ref.size) == 0:
        return np.zeros(ref.size, dtype=ref.storage.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
    if last >= ref.storage.numel:
        raise pickle.UnpicklingError(f"{name}: reaches element {last:,d} of a {ref.storage.numel:,d}-element "
                                     "storage")
    itemsize = ref.storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(ref.storage.data[ref.offset:], shape=ref.size,
                                           strides=tuple(s * itemsize for s in ref.stride), writeable=False)
    return np.ascontiguousarray(view)
