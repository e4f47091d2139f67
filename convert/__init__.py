"""Source-framework exporters: each module turns a source file into an ONNX model."""
