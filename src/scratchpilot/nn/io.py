"""Save and load models as one ``.npz``: a JSON config plus the parameter arrays.

Layout of the archive (a plain zip of ``.npy`` files):

- ``config.json.npy``: the UTF-8 bytes of a JSON document, as a uint8 array, holding the format name and
  version, the architecture, loss, optimiser, dtype, training history and free-form ``metadata``
  (preprocessing spec, label names, accuracy, ...).
- ``p{i}.{name}.npy``: parameter ``name`` of layer ``i`` (e.g. ``p0.W``).
- ``s{i}.{name}.npy``: saved state of layer ``i`` that is not trained (BatchNorm's running statistics).

Format versions: 1 had dense layers only; 2 adds the convolutional, pooling and normalisation layers, the
state arrays and ``input_shape``. Version-1 files still load.

Loading uses ``allow_pickle=False`` throughout, checks every array's shape and dtype against the config,
and turns any problem (truncated, foreign, tampered or too-new file) into a :class:`ModelFileError` that
names the file and what is wrong. Nothing in a model file is ever executed.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from . import activations, conv, layers, norm, optim, pooling

FORMAT = "scratchpilot-model"
FORMAT_VERSION = 2
CONFIG_KEY = "config.json"

_LAYER_TYPES = {cls.__name__: cls for cls in (
    layers.Dense, layers.Dropout, layers.Flatten, layers.Reshape, activations.Sigmoid, activations.Tanh,
    activations.ReLU, activations.ReLU6, activations.LeakyReLU, conv.Conv2D, conv.DepthwiseConv2D,
    pooling.MaxPool2D, pooling.AvgPool2D, pooling.GlobalAvgPool2D, norm.BatchNorm)}
_OPTIMIZERS = {"SGD": optim.SGD, "Adam": optim.Adam}
#: the largest size of one dimension of ``input_shape`` a model file may declare
MAX_DIMENSION = 1 << 24


class ModelFileError(ValueError):
    """A model file that cannot be loaded; the message names the file and the problem."""


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def save(model, path) -> None:
    """Write ``model`` (a ``Sequential`` or an ``Ensemble``) atomically (temp file + rename) to ``path``."""
    path = Path(path)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "saved_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    arrays = {}
    members = getattr(model, "members", None)
    if members is None:
        config.update(_model_config(model))
        arrays.update(_model_arrays(model))
    else:  # an ensemble: each member's config and arrays, the arrays prefixed m{k}.
        config["ensemble"] = [_model_config(m) for m in members]
        for k, member in enumerate(members):
            arrays.update({f"m{k}.{key}": value for key, value in _model_arrays(member).items()})
    config["metadata"] = _jsonable(model.metadata)
    arrays[CONFIG_KEY] = np.frombuffer(json.dumps(config, allow_nan=False).encode("utf-8"), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    # not scratchpilot.util.files.atomic_write: scratchpilot.nn imports nothing of the project (NumPy only)
    # a hidden temp file beside the target (same file system, so the rename is atomic; normal permissions)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _model_config(model) -> dict:
    return {**model.config(), "history": _jsonable(dict(model.history))}


def _model_arrays(model) -> dict[str, np.ndarray]:
    arrays = {}
    for i, layer in enumerate(model.layers):
        for name, value in layer.params.items():
            arrays[f"p{i}.{name}"] = value
        for name, value in layer.state.items():
            arrays[f"s{i}.{name}"] = value
    return arrays


def _build_layer(cfg: dict, where: str):
    if not isinstance(cfg, dict) or not isinstance(cfg.get("type"), str) or cfg["type"] not in _LAYER_TYPES:
        raise ModelFileError(f"{where}: unknown layer {cfg!r}; known: {sorted(_LAYER_TYPES)}")
    kwargs = {k: v for k, v in cfg.items() if k not in ("type", "trainable")}
    trainable = cfg.get("trainable", True)
    if not isinstance(trainable, bool):
        raise ModelFileError(f"{where}: 'trainable' must be true or false, got {trainable!r}")
    try:
        layer = _LAYER_TYPES[cfg["type"]](**kwargs)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ModelFileError(f"{where}: invalid layer {cfg!r}: {exc}") from None
    layer.trainable = trainable
    return layer


def _build_optimizer(cfg: dict | None):
    """The saved optimiser, or plain SGD when the entry is missing or unusable: it is only needed to train
    further, never to predict."""
    if not isinstance(cfg, dict):
        return optim.SGD()
    cfg = dict(cfg)
    kind = cfg.pop("type", "SGD")
    cls = _OPTIMIZERS.get(kind, optim.SGD) if isinstance(kind, str) else optim.SGD
    cfg.pop("schedule", None)  # schedules are training-time choices; not needed to predict
    try:
        return cls(**cfg)
    except (TypeError, ValueError, OverflowError):
        return optim.SGD()


def read_config(path) -> dict:
    """Read and check just the JSON config of a model file."""
    with _Archive(Path(path)) as archive:
        return archive.config


#: the largest config a model file may carry (its history and metadata included)
MAX_CONFIG_BYTES = 16 << 20
#: room for an .npy header beyond an array's data
NPY_HEADER_BYTES = 1 << 16
#: what can go wrong reading a zip of .npy files: truncation, a corrupt or unsupported compression, bad
#: headers (ValueError also covers object arrays, which allow_pickle=False refuses), absurd sizes
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError,
                NotImplementedError, RuntimeError, zlib.error, MemoryError, OverflowError)


class _Archive:
    """A model ``.npz`` read in order of trust: the config first, then each array's ``.npy`` header (shape
    and dtype), and an array's data only once its header matches what the layer needs — so a crafted
    entry (a deflate bomb, a header claiming 10¹³ values) is refused before anything is allocated for it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> _Archive:
        path = self.path
        if not path.exists():
            raise ModelFileError(f"{path}: no such model file")
        try:
            with open(path, "rb") as fh:
                bare = fh.read(6) == b"\x93NUMPY"
            if bare:
                raise ModelFileError(f"{path}: not a scratchpilot model (a bare .npy array, not an .npz)")
            self.zip = zipfile.ZipFile(path)
        except _READ_ERRORS as exc:
            raise self._unreadable(exc) from None
        self._headers: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        infos = {info.filename: info for info in self.zip.infolist()}
        self.infos = {name[:-4]: info for name, info in infos.items() if name.endswith(".npy")}
        if CONFIG_KEY not in self.infos:
            self.zip.close()
            raise ModelFileError(f"{path}: not a scratchpilot model (no {CONFIG_KEY} entry; "
                                 f"entries: {sorted(infos)[:5]})")
        try:
            self.config = self._read_config()
        except BaseException:
            self.zip.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.zip.close()

    def _unreadable(self, exc: BaseException) -> ModelFileError:
        return ModelFileError(f"{self.path}: not a readable scratchpilot model file (truncated or corrupted?): "
                              f"{type(exc).__name__}: {exc}")

    def names(self) -> set[str]:
        """The array entries (the config left out)."""
        return set(self.infos) - {CONFIG_KEY}

    def header(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """``(shape, dtype)`` from the entry's .npy header, reading nothing else (read once per entry)."""
        if name not in self._headers:
            self._headers[name] = self._read_header(name)
        return self._headers[name]

    def _read_header(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        try:
            with self.zip.open(self.infos[name]) as fh:
                version = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read(fh)
        except _READ_ERRORS as exc:
            raise self._unreadable(exc) from None
        if dtype.hasobject:
            raise ModelFileError(f"{self.path}: array {name} holds Python objects (refused: never unpickled)")
        return tuple(shape), dtype

    def read(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The entry's data, after checking its header against ``shape`` and ``dtype``."""
        got_shape, got_dtype = self.header(name)
        if got_shape != tuple(shape):
            raise ModelFileError(f"{self.path}: array {name} has shape {got_shape}, needs {tuple(shape)}")
        if got_dtype != dtype:
            raise ModelFileError(f"{self.path}: array {name} has dtype {got_dtype}, expected {dtype}")
        needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if self.infos[name].file_size > needed + NPY_HEADER_BYTES:
            raise ModelFileError(f"{self.path}: array {name} unpacks to {self.infos[name].file_size:,d} bytes "
                                 f"for {needed:,d} bytes of data (tampered?)")
        try:
            with self.zip.open(self.infos[name]) as fh:
                return np.lib.format.read_array(fh, allow_pickle=False)
        except _READ_ERRORS as exc:
            raise self._unreadable(exc) from None

    def _read_config(self) -> dict:
        path = self.path
        shape, dtype = self.header(CONFIG_KEY)
        if dtype != np.uint8 or len(shape) != 1:
            raise ModelFileError(f"{path}: {CONFIG_KEY} must be a 1-D uint8 array, got {dtype} {shape}")
        if shape[0] > MAX_CONFIG_BYTES:
            raise ModelFileError(f"{path}: {CONFIG_KEY} is {shape[0]:,d} bytes, more than the "
                                 f"{MAX_CONFIG_BYTES:,d} a model config may take")
        raw = self.read(CONFIG_KEY, shape, dtype)
        try:
            config = json.loads(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            raise ModelFileError(f"{path}: config is not valid UTF-8 JSON: {type(exc).__name__}: {exc}") from None
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise ModelFileError(f"{path}: not a scratchpilot model (format is "
                                 f"{config.get('format') if isinstance(config, dict) else config!r})")
        version = config.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise ModelFileError(f"{path}: bad format_version {version!r}")
        if version > FORMAT_VERSION:
            raise ModelFileError(f"{path}: written by a newer scratchpilot (format version {version}); "
                                 f"this one reads up to {FORMAT_VERSION}: upgrade scratchpilot")
        return config


def load(path):
    """Load a model saved by :meth:`Sequential.save` (or an :class:`~scratchpilot.nn.Ensemble`); raises
    :class:`ModelFileError` on any problem."""
    from .ensemble import Ensemble

    path = Path(path)
    with _Archive(path) as archive:
        return _load(archive, archive.config, path, Ensemble)


def _load(archive: _Archive, config: dict, path: Path, Ensemble):
    if "ensemble" in config:
        members_cfg = config["ensemble"]
        if not isinstance(members_cfg, list) or not members_cfg:
            raise ModelFileError(f"{path}: ensemble lists no members")
        expected: set[str] = set()
        members = []
        for k, cfg in enumerate(members_cfg):
            if not isinstance(cfg, dict):
                raise ModelFileError(f"{path}: ensemble member {k} is not a model config")
            member, keys = _build_model(cfg, archive, path, f"m{k}.", f"member {k}: ")
            members.append(member)
            expected |= keys
        try:
            model = Ensemble(members)
        except ValueError as exc:
            raise ModelFileError(f"{path}: {exc}") from None
    else:
        model, expected = _build_model(config, archive, path, "", "")
    extra = archive.names() - expected
    if extra:
        raise ModelFileError(f"{path}: unexpected arrays {sorted(extra)[:5]} (tampered or foreign file?)")
    metadata = config.get("metadata") or {}
    model.metadata = metadata if isinstance(metadata, dict) else {}
    model.saved_at = config.get("saved_at")
    return model


def _build_model(config: dict, archive: _Archive, path: Path, prefix: str, who: str):
    """One ``Sequential`` from its config and the arrays named ``{prefix}p{i}.{name}`` / ``s{i}.{name}``."""
    from .losses import LOSSES
    from .model import Sequential, infer_shapes

    where = f"{path}: {who}"
    layer_cfgs = config.get("layers")
    if not isinstance(layer_cfgs, list) or not layer_cfgs:
        raise ModelFileError(f"{where}config has no layers")
    built = [_build_layer(cfg, f"{where}layer {i}") for i, cfg in enumerate(layer_cfgs)]
    input_shape = config.get("input_shape")
    if input_shape is not None and not (isinstance(input_shape, list) and input_shape
                                        and all(isinstance(d, int) and not isinstance(d, bool)
                                                and 0 < d <= MAX_DIMENSION for d in input_shape)):
        raise ModelFileError(f"{where}bad input_shape {input_shape!r} (positive sizes up to {MAX_DIMENSION:,d})")
    try:
        infer_shapes(built, input_shape)
    except (ValueError, OverflowError) as exc:
        raise ModelFileError(f"{where}inconsistent architecture: {exc}") from None
    names = archive.names()
    for i, layer in enumerate(built):  # refuse before allocating: a tampered config could ask for any size
        own = sorted(key for key in names if key.startswith((f"{prefix}p{i}.", f"{prefix}s{i}.")))
        headers = {key: archive.header(key) for key in own}
        held = sum(math.prod(shape) for shape, _ in headers.values())
        if layer.parameter_count() > held:
            listed = ", ".join(f"{key} {headers[key][0]}" for key in own) or "none"
            raise ModelFileError(f"{where}layer {i} ({layer!r}) needs {layer.parameter_count():,d} parameter "
                                 f"values, the file holds {held:,d} for it (arrays: {listed}); tampered "
                                 f"or truncated?")
    loss_cfg = config.get("loss") or {}
    loss_type = loss_cfg.get("type") if isinstance(loss_cfg, dict) else None
    loss_cls = LOSSES.get(loss_type) if isinstance(loss_type, str) else None
    if loss_cls is None:
        raise ModelFileError(f"{where}unknown loss {loss_cfg!r}; known: {sorted(LOSSES)}")
    dtype = config.get("dtype", "float32")
    if dtype not in ("float32", "float64"):
        raise ModelFileError(f"{where}unsupported dtype {dtype!r}")
    try:
        model = Sequential(built, loss=loss_cls(), optimizer=_build_optimizer(config.get("optimizer")),
                           seed=0, dtype=dtype, input_shape=input_shape)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ModelFileError(f"{where}inconsistent architecture: {exc}") from None
    expected = set()
    for i, layer in enumerate(model.layers):
        arrays_of_layer = [(f"{prefix}p{i}.{name}", param) for name, param in layer.params.items()]
        arrays_of_layer += [(f"{prefix}s{i}.{name}", value) for name, value in layer.state.items()]
        for key, param in arrays_of_layer:
            expected.add(key)
            if key not in names:
                raise ModelFileError(f"{path}: missing array {key} for layer {i} ({layer!r})")
            shape, dtype = archive.header(key)
            if shape != param.shape:
                raise ModelFileError(f"{path}: array {key} has shape {shape}, layer {i} ({layer!r}) "
                                     f"needs {param.shape}")
            value = archive.read(key, param.shape, param.dtype)
            if not np.isfinite(value).all():
                raise ModelFileError(f"{path}: array {key} contains NaN or infinite values")
            if key.endswith(".running_var") and (value < 0).any():
                raise ModelFileError(f"{path}: array {key} has negative variances")
            param[...] = value
    history = config.get("history") or {}
    if isinstance(history, dict):
        for key, values in history.items():
            if isinstance(values, list):
                model.history[key] = values
    return model, expected
