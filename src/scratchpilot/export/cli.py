"""``scratchpilot export``: a model file in another format. Only argparse is imported here."""

from __future__ import annotations

from .. import options
from ..errors import CommandError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a model in another format (ONNX)",
                              description="Write a scratchpilot model (MLP or CNN) as an ONNX graph, operator set "
                                          "17: input 'input' (batch × the model's inputs), outputs "
                                          "'probabilities' and 'label'; the preprocessing spec and the labels go "
                                          "into the ONNX metadata.")
    p.add_argument("model", metavar="MODEL", help="a model file (.npz) written by scratchpilot")
    p.add_argument("--onnx", required=True, type=options.output_file(".onnx"), metavar="PATH",
                   help="the ONNX file to write")
    p.add_argument("--check", action="store_true",
                   help="run the graph with onnxruntime on random inputs against scratchpilot's own outputs")
    p.add_argument("--json", metavar="PATH", type=options.json_file, help="write what was exported as JSON")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from .. import nn
    from ..util.files import write_json_result

    try:
        import onnx  # noqa: F401

        from .onnx_export import OPSET, ExportError, export_onnx
    except ModuleNotFoundError as exc:
        raise CommandError(f"export needs the onnx package ({exc.name} is missing): pip install "
                           f"'scratchpilot[export]'") from None
    try:
        result = export_onnx(args.model, args.onnx)
    except nn.ModelFileError as exc:
        raise CommandError(str(exc)) from None
    except ExportError as exc:
        raise CommandError(f"{args.model}: {exc}") from None
    if args.check:
        result["max_abs_difference"] = _check(args.model, args.onnx)
    print(f"wrote {args.onnx} (ONNX opset {OPSET}, {result['bytes'] / 1024:.0f} KiB; input {result['input']})"
          + (f"; onnxruntime within {result['max_abs_difference']:.1e} of scratchpilot" if args.check else ""))
    write_json_result(args.json, result)
    return 0


def _check(model_path, onnx_path) -> float:
    import numpy as np

    try:
        import onnxruntime
    except ModuleNotFoundError:
        raise CommandError("--check needs onnxruntime: pip install onnxruntime") from None
    from .. import nn

    model = nn.load(model_path)
    x = np.random.default_rng(0).random((64, *model.input_shape), dtype=np.float32)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ours = model.predict_proba(x)
    theirs = session.run(["probabilities"], {"input": x})[0]
    return float(np.abs(ours - theirs).max())
