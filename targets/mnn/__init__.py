"""MNN target: ONNX -> ``<stem>.mnn`` through MNN's own converter and quantizer.

``convert`` calls the compiled converter/quantizer in child processes (never the
``MNN.tools`` wrappers, which install packages and send telemetry); ``files`` reads
``.mnn`` FlatBuffers without MNN; ``ops`` lists the ONNX ops the converter lowers;
``runner`` runs models with MNN's Module API; ``target`` is the registered target.
"""

from mconv.targets.mnn.runner import MnnRunner
from mconv.targets.mnn.target import MnnOptions, MnnTarget

__all__ = ["MnnOptions", "MnnRunner", "MnnTarget"]
