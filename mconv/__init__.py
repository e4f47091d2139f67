"""mconv: one command-line tool from PyTorch to ONNX, ncnn, OpenVINO and TensorRT,
with every artifact verified by the real runtime.

Importing this package imports no heavy framework (torch, openvino, ncnn, tensorrt).
"""

__version__ = "0.1.0"
