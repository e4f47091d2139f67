"""LiteRT / TFLite target: an own ONNX -> ``.tflite`` flatbuffer writer, verified with
LiteRT's interpreter (``ai-edge-litert``); no TensorFlow at build or run time."""

from mconv.targets.litert.target import LiteRtOptions, LiteRtTarget

__all__ = ["LiteRtOptions", "LiteRtTarget"]
