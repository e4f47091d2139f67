"""ONNX itself: the interchange format, loaded as it is (the detection fallback)."""

from __future__ import annotations

from pathlib import Path

from mconv.convert.base import ExportOptions, Source, SourceExport
from mconv.errors import InputError


class OnnxSource(Source):
    name = "onnx"
    framework = "ONNX"
    description = "ONNX models (.onnx, with external data)"
    suffixes = (".onnx",)
    fallback = True
    exports = False

    def detect(self, path: Path) -> bool:
        # Any plain file nothing else claimed: loading it says whether it is ONNX.
        return path.is_file()

    def export(self, path: Path, opts: ExportOptions) -> SourceExport:
        from mconv.modelio import parse_model

        try:
            parse_model(path)
        except InputError:
            raise InputError(
                f"{path}: not a model file mconv exports (PyTorch, PaddlePaddle, TensorFlow/Keras, Caffe); "
                "check the file"
            ) from None
        raise InputError(f"{path}: already ONNX; use `mconv optimize` or `mconv build` on it")
