"""ncnn target: a pure-Python ONNX -> ncnn ``.param``/``.bin`` writer.

Modules: ``registry`` (the rule table), ``rules_*`` (one per op family),
``fold`` (static shapes and constants), ``fuse`` (ONNX patterns), ``lower``
(tensors, batch axis, helpers), ``optimize`` (ncnn-graph fusions), ``ir``
(layers and serialization), ``writer`` (the driver), ``quantize`` (fp16, int8
and the calibration table), ``runner`` and ``conformance``. Nothing here imports
ncnn until a runner loads a model.
"""

from mconv.targets.ncnn.target import NcnnTarget

__all__ = ["NcnnTarget"]
