"""Models out of the project, in the formats the ecosystem reads: ONNX (:mod:`.onnx_export`)."""
