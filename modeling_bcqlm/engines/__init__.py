"""BcQLM on inference engines other than PyTorch: export, and a runtime with `generate` (needs the `onnx` extra)."""

# The decoder weight precisions of `onnx_export.export_onnx` (onnxruntime-genai's builder quantizes int4 and int8).
ONNX_PRECISIONS = ("int4", "int8", "fp32")
