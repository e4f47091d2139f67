"""Caffe -> ONNX: the registry's adapter for mconv's own Caffe reader (``mconv.convert.caffe``).

The reader maps a ``.prototxt`` net and its ``.caffemodel`` weights to ONNX; its reference
(a numpy implementation of the layers, independent of the ONNX mapping) stands in for Caffe,
which does not install here. The pair is ``MODEL.prototxt --weights NET.caffemodel``, or found
by name beside the file given.
"""

from __future__ import annotations

from pathlib import Path

from mconv.convert.base import DEFAULT_OPSET, ExportOptions, Source, SourceExport, sample_feeds


def _reader():
    """The reader package, imported only once a Caffe file is at hand."""
    from mconv.convert import caffe

    return caffe


class CaffeSource(Source):
    name = "caffe"
    framework = "Caffe"
    extra = "caffe"
    description = "Caffe nets: .prototxt + .caffemodel (--weights, or found by name)"
    suffixes = (".prototxt", ".caffemodel")
    takes_weights = True

    def detect(self, path: Path) -> bool:
        if not path.is_file() or path.suffix.lower() not in self.suffixes:
            return False  # by name first: the reader's content check then decides
        try:
            reader = _reader()
        except ImportError:  # the reader is not part of this installation
            return False
        return bool(reader.detect(path))

    def stem(self, path: Path) -> str:
        return path.stem or "model"

    def export(self, path: Path, opts: ExportOptions) -> SourceExport:
        reader = _reader()
        prototxt, caffemodel = reader.find_pair(path, opts.weights)
        model = reader.to_onnx(prototxt, caffemodel, opset=opts.opset or DEFAULT_OPSET)
        feeds = sample_feeds(model, opts)
        ref = reader.run_reference(prototxt, caffemodel, feeds)
        names = [o.name for o in model.graph.output]
        reference = [ref[n] for n in names] if all(n in ref for n in names) else list(ref.values())
        return SourceExport(model, "mconv caffe reader", reference, feeds, facts={"weights": str(caffemodel)})
