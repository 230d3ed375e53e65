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
from pathlib import Path

import numpy as np

from . import activations, conv, layers, norm, optim, pooling, residual
from .archive import CONFIG_KEY, FORMAT, FORMAT_VERSION, Archive, ModelFileError, brief

_LAYER_TYPES = {cls.__name__: cls for cls in (
    layers.Dense, layers.Dropout, layers.Flatten, layers.Reshape, activations.Sigmoid, activations.Tanh,
    activations.ReLU, activations.ReLU6, activations.LeakyReLU, conv.Conv2D, conv.DepthwiseConv2D,
    pooling.MaxPool2D, pooling.AvgPool2D, pooling.GlobalAvgPool2D, norm.BatchNorm, residual.Residual)}
_OPTIMIZERS = {"SGD": optim.SGD, "Adam": optim.Adam}
#: the largest size of one dimension of ``input_shape`` a model file may declare
MAX_DIMENSION = 1 << 24


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
    values = sum(layer.parameter_count() for m in getattr(model, "members", [model]) for layer in m.layers)
    if values > MAX_VALUES:  # load would refuse the file: say so before writing it
        raise ValueError(f"{path}: the model holds {values:,d} parameter values, more than the {MAX_VALUES:,d} "
                         f"a model file may hold")
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
        raise ModelFileError(f"{where}: unknown layer {brief(cfg)}; known: {sorted(_LAYER_TYPES)}")
    kwargs = {k: v for k, v in cfg.items() if k not in ("type", "trainable")}
    trainable = cfg.get("trainable", True)
    if not isinstance(trainable, bool):
        raise ModelFileError(f"{where}: 'trainable' must be true or false, got {brief(trainable)}")
    if cfg["type"] == "Residual":  # a block of inner layers, each built (and checked) the same way
        inner = kwargs.get("layers")
        if not isinstance(inner, list) or not inner:
            raise ModelFileError(f"{where}: a Residual block needs a list of inner layers, got {brief(inner)}")
        kwargs["layers"] = [_build_layer(c, f"{where}, inner layer {j}") for j, c in enumerate(inner)]
    try:
        layer = _LAYER_TYPES[cfg["type"]](**kwargs)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ModelFileError(f"{where}: invalid layer {brief(cfg)}: {brief(str(exc), 300)}") from None
    layer.trainable = trainable
    return layer


def _count_layers(layer_list) -> int:
    """Layers in a stack, the inner layers of residual blocks included."""
    return sum(1 + _count_layers(getattr(layer, "layers", ())) for layer in layer_list)


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
    with Archive(Path(path)) as archive:
        return archive.config


#: the most layers a model file may describe, all ensemble members together (the digits CNN has 19)
MAX_LAYERS = 1024
#: the most parameter and state values a model file may hold (256 MiB in float32; the digits CNN holds
#: 0.4 million): loading costs about twice what the arrays take (the parameters and their gradients)
MAX_VALUES = 1 << 26

def load(path):
    """Load a model saved by :meth:`Sequential.save` (or an :class:`~scratchpilot.nn.Ensemble`); raises
    :class:`ModelFileError` on any problem.

    Everything is checked before anything large is allocated: the config, the whole architecture (every
    member of an ensemble) against every array header, no entry left over, and the total size against
    :data:`MAX_VALUES`; then the models are built and their arrays read straight into their buffers."""
    from .ensemble import Ensemble

    path = Path(path)
    with Archive(path) as archive:
        config = archive.config
        if "ensemble" in config:
            members_cfg = config["ensemble"]
            if not isinstance(members_cfg, list) or not members_cfg:
                raise ModelFileError(f"{path}: ensemble lists no members")
            for k, cfg in enumerate(members_cfg):
                if not isinstance(cfg, dict):
                    raise ModelFileError(f"{path}: ensemble member {k} is not a model config")
            plans = [_Plan(cfg, archive, f"m{k}.", f"member {k}: ") for k, cfg in enumerate(members_cfg)]
        else:
            plans = [_Plan(config, archive, "", "")]
        layers_total = sum(_count_layers(plan.layers) for plan in plans)
        if layers_total > MAX_LAYERS:
            raise ModelFileError(f"{path}: {layers_total:,d} layers, more than the {MAX_LAYERS:,d} a model file "
                                 f"may describe")
        extra = archive.names() - set().union(*(plan.expected for plan in plans))
        if extra:
            raise ModelFileError(f"{path}: unexpected arrays {sorted(extra)[:5]} (tampered or foreign file?)")
        values = sum(plan.values for plan in plans)
        if values > MAX_VALUES:
            raise ModelFileError(f"{path}: holds {values:,d} parameter values, more than the {MAX_VALUES:,d} a "
                                 f"model file may hold")
        members = [plan.build(archive) for plan in plans]
    if "ensemble" in config:
        try:
            model = Ensemble(members)
        except ValueError as exc:
            raise ModelFileError(f"{path}: {exc}") from None
    else:
        model = members[0]
    model.metadata = config.get("metadata") or {}
    saved_at = config.get("saved_at")
    model.saved_at = saved_at if isinstance(saved_at, str) else None
    return model


class _Plan:
    """One ``Sequential`` of a model file, checked but not yet built: its layers (without arrays), loss,
    dtype and the arrays ``{prefix}p{i}.{name}`` / ``{prefix}s{i}.{name}`` it needs, each checked against
    its header."""

    def __init__(self, config: dict, archive: Archive, prefix: str, who: str) -> None:
        from .losses import LOSSES
        from .model import infer_shapes

        path = archive.path
        where = f"{path}: {who}"
        self.where, self.config = where, config
        layer_cfgs = config.get("layers")
        if not isinstance(layer_cfgs, list) or not layer_cfgs:
            raise ModelFileError(f"{where}config has no layers")
        if len(layer_cfgs) > MAX_LAYERS:
            raise ModelFileError(f"{where}{len(layer_cfgs):,d} layers, more than the {MAX_LAYERS:,d} a model "
                                 f"file may describe")
        self.layers = [_build_layer(cfg, f"{where}layer {i}") for i, cfg in enumerate(layer_cfgs)]
        input_shape = config.get("input_shape")
        if input_shape is not None and not (isinstance(input_shape, list) and input_shape
                                            and all(isinstance(d, int) and not isinstance(d, bool)
                                                    and 0 < d <= MAX_DIMENSION for d in input_shape)):
            raise ModelFileError(f"{where}bad input_shape {brief(input_shape)} (positive sizes up to "
                                 f"{MAX_DIMENSION:,d})")
        self.input_shape = input_shape
        try:
            infer_shapes(self.layers, input_shape)
        except (ValueError, OverflowError) as exc:
            raise ModelFileError(f"{where}inconsistent architecture: {exc}") from None
        loss_cfg = config.get("loss") or {}
        loss_type = loss_cfg.get("type") if isinstance(loss_cfg, dict) else None
        self.loss_cls = LOSSES.get(loss_type) if isinstance(loss_type, str) else None
        if self.loss_cls is None:
            raise ModelFileError(f"{where}unknown loss {brief(loss_cfg)}; known: {sorted(LOSSES)}")
        dtype = config.get("dtype", "float32")
        if dtype not in ("float32", "float64"):
            raise ModelFileError(f"{where}unsupported dtype {brief(dtype)}")
        self.dtype = np.dtype(dtype)
        self.history = _history(config.get("history"), where)
        # every array the layers need, checked against its header: nothing is allocated yet
        self.arrays: list[tuple[int, str, str, tuple[int, ...]]] = []  # (layer, "p"/"s", name, shape)
        for i, layer in enumerate(self.layers):
            params, state = layer.array_shapes()
            for kind, shapes in (("p", params), ("s", state)):
                for name, shape in shapes.items():
                    archive.check(f"{prefix}{kind}{i}.{name}", shape, self.dtype, f"layer {i} ({layer!r})")
                    self.arrays.append((i, kind, name, shape))
        self.prefix = prefix
        self.expected = {f"{prefix}{kind}{i}.{name}" for i, kind, name, _ in self.arrays}
        self.values = sum(math.prod(shape) for *_, shape in self.arrays)

    def build(self, archive: Archive):
        """The ``Sequential``, its arrays read from the archive straight into its parameter buffer."""
        from .model import Sequential

        # read-only stand-ins that take no memory: Sequential packs them into the one buffer it allocates
        # for all parameters (and one for their gradients), and the file's values are read into that
        zero = np.zeros((), self.dtype)
        for i, kind, name, shape in self.arrays:
            layer = self.layers[i]
            if kind == "p":
                layer.params[name] = np.broadcast_to(zero, shape)
            else:
                layer.state[name] = np.empty(shape, self.dtype)
        try:
            model = Sequential(self.layers, loss=self.loss_cls(), optimizer=_build_optimizer(
                self.config.get("optimizer")), seed=0, dtype=self.dtype, input_shape=self.input_shape)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ModelFileError(f"{self.where}inconsistent architecture: {exc}") from None
        for i, kind, name, _ in self.arrays:
            layer = model.layers[i]
            key = f"{self.prefix}{kind}{i}.{name}"
            target = layer.params[name] if kind == "p" else layer.state[name]
            archive.read_into(key, target)
            if name == "running_var" and (target < 0).any():
                raise ModelFileError(f"{archive.path}: array {key} has negative variances")
        model.history.update(self.history)
        return model


def _history(history, where: str) -> dict[str, list[float]]:
    """The saved training history: per metric name, a list of finite numbers (one per epoch)."""
    if history is None:
        return {}
    if not isinstance(history, dict):
        raise ModelFileError(f"{where}history must be a JSON object, got {brief(history)}")
    for key, values in history.items():
        if not (isinstance(values, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 and math.isfinite(v) for v in values)):
            raise ModelFileError(f"{where}history[{key!r}] must be a list of finite numbers, got "
                                 f"{brief(values)}")
    return {key: list(values) for key, values in history.items()}
