"""A scratchpilot model as an ONNX graph, for onnxruntime, browsers, phones and other frameworks.

scratchpilot keeps images channels-last (NHWC, :mod:`scratchpilot.nn.conv`); ONNX's ``Conv`` and pooling
take channels-first (NCHW). The graph therefore transposes once where the data becomes an image and back
where it is flattened, so that the flattening order, and with it every dense weight, stays scratchpilot's.
The output is what :meth:`~scratchpilot.nn.Sequential.predict_proba` returns (``probabilities``) and its
argmax (``label``); the input is the model's own, with a free batch dimension. The preprocessing spec,
the labels and the source model go into the model's ``metadata_props`` as JSON.
"""

from __future__ import annotations

import json

import numpy as np

#: the ONNX operator set written (onnxruntime 1.17 and later run it)
OPSET = 17


class ExportError(ValueError):
    """A model that cannot be written as ONNX; the message names the layer."""


class _Graph:
    """The nodes and weights being written, and the tensor currently flowing (its name, shape, layout)."""

    def __init__(self, helper, numpy_helper) -> None:
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.initializers = [], []
        self.counter = 0

    def name(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}_{self.counter}"

    def const(self, array: np.ndarray, stem: str) -> str:
        name = self.name(stem)
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], **attributes) -> str:
        out = self.name(op.lower())
        self.nodes.append(self.helper.make_node(op, inputs, [out], **attributes))
        return out


def to_onnx(model, *, source: str = "", producer_version: str = ""):
    """The :class:`onnx.ModelProto` of a scratchpilot ``Sequential``; raises :class:`ExportError`."""
    from onnx import TensorProto, helper, numpy_helper

    from .. import nn

    if hasattr(model, "members"):
        raise ExportError("an ensemble cannot be exported yet: export one of its members "
                          "(scratchpilot digits combine made it from single models)")
    g = _Graph(helper, numpy_helper)
    shape = tuple(int(d) for d in model.input_shape)
    x = "input"
    layout = "nchw" if len(shape) == 3 else "flat"
    if layout == "nchw":  # an image in (NHWC): channels first for ONNX's Conv
        x = g.node("Transpose", [x], perm=[0, 3, 1, 2])
    for index, layer in enumerate(model.layers):
        x, shape, layout = _layer(g, nn, layer, index, x, shape, layout)
    if layout == "nchw":  # an image out: scratchpilot's order
        x = g.node("Transpose", [x], perm=[0, 2, 3, 1])
    loss = type(model.loss).__name__
    if loss == "SoftmaxCrossEntropy":
        x = g.node("Softmax", [x], axis=-1)
    elif loss == "SigmoidCrossEntropy":
        x = g.node("Sigmoid", [x])
    g.nodes.append(helper.make_node("Identity", [x], ["probabilities"]))
    g.nodes.append(helper.make_node("ArgMax", ["probabilities"], ["label"], axis=-1, keepdims=0))
    outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", *shape]),
               helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"])]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *model.input_shape])]
    graph = helper.make_graph(g.nodes, "scratchpilot", inputs, outputs, initializer=g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="scratchpilot", producer_version=producer_version)
    proto.ir_version = min(proto.ir_version, 9)  # what onnxruntime releases of the last two years read
    metadata = getattr(model, "metadata", None) or {}
    props = {"scratchpilot.preprocessing": metadata.get("preprocessing"), "scratchpilot.labels": metadata.get("labels"),
             "scratchpilot.source_model": source, "scratchpilot.input_layout": "NHWC" if len(model.input_shape) == 3
             else "flat", "scratchpilot.task": metadata.get("task", "digits")}
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    return proto


def _layer(g: _Graph, nn, layer, index: int, x: str, shape: tuple, layout: str):
    """Write one layer; returns the new (tensor, shape, layout)."""
    kind = type(layer).__name__
    f32 = np.float32
    if isinstance(layer, nn.Dropout):
        return x, shape, layout  # identity at inference
    if isinstance(layer, (nn.Flatten, nn.Reshape)):
        target = layer.output_shape(shape)
        if layout == "nchw":
            x = g.node("Transpose", [x], perm=[0, 2, 3, 1])
        x = g.node("Reshape", [x, g.const(np.array([-1, *target], dtype=np.int64), "shape")])
        if len(target) == 3:
            return g.node("Transpose", [x], perm=[0, 3, 1, 2]), tuple(target), "nchw"
        if len(target) != 1:
            raise ExportError(f"layer {index} ({kind}): reshaping to {target} is not exported (only to a vector or "
                              f"an image)")
        return x, tuple(target), "flat"
    if isinstance(layer, nn.Dense):
        if layout != "flat":
            raise ExportError(f"layer {index} (Dense) takes an image; put a Flatten before it")
        W = layer.params["W"].astype(f32)
        x = g.node("Gemm", [x, g.const(W, "W"), g.const(layer.params["b"].astype(f32), "b")])
        return x, (W.shape[1],), layout
    activation = {"ReLU": ("Relu", {}), "Sigmoid": ("Sigmoid", {}), "Tanh": ("Tanh", {})}.get(kind)
    if activation is not None:
        return g.node(activation[0], [x], **activation[1]), shape, layout
    if isinstance(layer, nn.LeakyReLU):
        return g.node("LeakyRelu", [x], alpha=float(layer.alpha)), shape, layout
    if isinstance(layer, nn.ReLU6):
        return g.node("Clip", [x, g.const(np.array(0, f32), "lo"), g.const(np.array(6, f32), "hi")]), shape, layout
    if isinstance(layer, nn.Conv2D):
        pads, (ho, wo) = layer._geometry(shape[0], shape[1])
        W = np.transpose(layer.params["W"], (3, 2, 0, 1)).astype(f32)  # (kh, kw, in, out) → (out, in, kh, kw)
        x = g.node("Conv", [x, g.const(W, "W"), g.const(layer.params["b"].astype(f32), "b")],
                   kernel_shape=list(layer.kernel), strides=list(layer.stride),
                   pads=[pads[0][0], pads[1][0], pads[0][1], pads[1][1]])
        return x, (ho, wo, layer.out_channels), layout
    if isinstance(layer, (nn.MaxPool2D, nn.AvgPool2D)):
        out = layer.output_shape(shape)
        op = "MaxPool" if isinstance(layer, nn.MaxPool2D) else "AveragePool"
        return g.node(op, [x], kernel_shape=list(layer.pool), strides=list(layer.stride)), tuple(out), layout
    if isinstance(layer, nn.GlobalAvgPool2D):
        x = g.node("GlobalAveragePool", [x])
        x = g.node("Flatten", [x], axis=1)
        return x, (shape[2],), "flat"
    if isinstance(layer, nn.BatchNorm):
        p, s = layer.params, layer.state
        x = g.node("BatchNormalization", [x, g.const(p["gamma"].astype(f32), "gamma"),
                                          g.const(p["beta"].astype(f32), "beta"),
                                          g.const(s["running_mean"].astype(f32), "mean"),
                                          g.const(s["running_var"].astype(f32), "var")], epsilon=float(layer.eps))
        return x, shape, layout
    raise ExportError(f"layer {index} ({kind}) has no ONNX export yet; exported layers: Dense, Dropout, Flatten, "
                      f"Reshape, ReLU, ReLU6, LeakyReLU, Sigmoid, Tanh, Conv2D, MaxPool2D, AvgPool2D, "
                      f"GlobalAvgPool2D, BatchNorm")


def export_onnx(model_path, out_path) -> dict:
    """Read a model file, write its ONNX graph atomically to ``out_path``; what was written."""
    import onnx

    from .. import __version__, nn
    from ..monitor.profile import model_id
    from ..util.files import write_atomic

    model = nn.load(model_path)
    proto = to_onnx(model, source=f"{model_path} ({model_id(model_path)})", producer_version=__version__)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    write_atomic(out_path, data)
    return {"model": str(model_path), "onnx": str(out_path), "opset": OPSET, "bytes": len(data),
            "input": ["batch", *map(int, model.input_shape)], "outputs": ["probabilities", "label"],
            "layers": [type(layer).__name__ for layer in model.layers]}
