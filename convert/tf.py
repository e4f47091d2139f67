"""TensorFlow / Keras -> ONNX, through tf2onnx, in a child process.

Source kinds, detected from the content:
- ``saved_model``: a SavedModel folder (``saved_model.pb``; e.g. Keras 3 ``model.export(dir)``),
  converted from its ``serving_default`` signature;
- ``keras``: a Keras 3 ``.keras`` zip (``config.json`` + weights), loaded in Keras' safe mode
  (no Python lambdas from the file);
- ``h5``: a legacy Keras HDF5 model file (the HDF5 signature; a weights-only file is refused).

The ONNX inputs keep the framework's NHWC layout unless ``--layout nchw`` asks for NCHW: then
each 4-D input is transposed at the boundary inside the graph, where mconv's passes cancel it
against the transposes tf2onnx puts before convolutions.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mconv.convert.base import ExportOptions, Source, SourceExport, export_isolated
from mconv.errors import ConversionError, InputError, MissingDependencyError, UsageError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
TO_NHWC = (0, 2, 3, 1)


def source_kind(path: Path) -> str | None:
    """'saved_model' | 'keras' | 'h5', or None when ``path`` is none of them."""
    if path.is_dir():
        return "saved_model" if (path / "saved_model.pb").is_file() else None
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        head = f.read(8)
    if head == HDF5_MAGIC:
        return "h5"
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
        except zipfile.BadZipFile:
            return None
        if "config.json" in names and ("model.weights.h5" in names or "metadata.json" in names):
            return "keras"
    return None


class TensorFlowSource(Source):
    name = "tf"
    framework = "TensorFlow/Keras"
    extra = "tf"
    description = "Keras .keras / .h5 models and TensorFlow SavedModel folders"
    suffixes = (".keras", ".h5", ".hdf5")
    layouts = ("nhwc", "nchw")

    def detect(self, path: Path) -> bool:
        return source_kind(path) is not None

    def stem(self, path: Path) -> str:
        if path.is_dir():
            return path.resolve().name or "model"
        return super().stem(path)

    def export(self, path: Path, opts: ExportOptions) -> SourceExport:
        layout = self.check_layout(opts) or self.layouts[0]
        kind = source_kind(path)
        what = "the TensorFlow exporter"
        out = export_isolated("mconv.convert.tf:export_in_child", path, opts, what, path=str(path), kind=kind)
        feeds = out["feeds"]
        if layout == "nchw":
            feeds = inputs_to_nchw(out["model"], feeds)
        facts = {"format": kind, "layout": layout}
        return SourceExport(out["model"], "tf2onnx", out["reference"], feeds, facts=facts)


def inputs_to_nchw(model: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Make each 4-D NHWC graph input NCHW, with a Transpose back to NHWC inside; the feeds
    transposed to match."""
    from onnx import helper

    inits = {t.name for t in model.graph.initializer}
    out = dict(feeds)
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if vi.name in inits or len(dims) != 4:
            continue
        inner = f"{vi.name}__nhwc"
        for node in model.graph.node:
            node.input[:] = [inner if i == vi.name else i for i in node.input]
        for o in model.graph.output:
            if o.name == vi.name:
                raise UsageError(f"--layout nchw: input '{vi.name}' is also a graph output; keep --layout nhwc")
        kept = [type(d)() for d in dims]
        for k, d in zip(kept, dims):
            k.CopyFrom(d)
        for dst, src in zip(dims, (kept[0], kept[3], kept[1], kept[2])):
            dst.CopyFrom(src)
        node = helper.make_node("Transpose", [vi.name], [inner], name=f"{vi.name}_to_nhwc", perm=list(TO_NHWC))
        model.graph.node.insert(0, node)
        if vi.name in out:
            out[vi.name] = np.ascontiguousarray(out[vi.name].transpose(0, 3, 1, 2))
    return out


def _import_frameworks() -> tuple[Any, Any]:
    from mconv.quiet import verbose

    if not verbose():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
    except ImportError as e:
        raise MissingDependencyError("TensorFlow", "tf", "needed to read Keras and SavedModel sources") from e
    try:
        import tf2onnx
    except ImportError as e:
        raise MissingDependencyError("tf2onnx", "tf", "converts TensorFlow models to ONNX") from e
    return tf, tf2onnx


def _specs(tf: Any, inputs: list[tuple[str, list, Any]], shapes: dict[str, list[int]], path: str) -> list:
    """TensorSpecs for the inputs: --input shapes, else the model's with a batch of 1."""
    unknown = set(shapes) - {n for n, _, _ in inputs}
    if unknown:
        have = ", ".join(n for n, _, _ in inputs)
        raise UsageError(f"--input {sorted(unknown)[0]}: the model has no such input (inputs: {have})")
    specs = []
    for name, dims, dtype in inputs:
        shape = shapes.get(name)
        if shape is None:
            shape = [1 if (d is None and i == 0) else d for i, d in enumerate(dims)]
            if any(d is None for d in shape):
                given = "x".join("N" if d is None else str(d) for d in dims)
                raise UsageError(f"{path}: input '{name}' has dynamic dimensions ({given}); fix them with --input")
        specs.append(tf.TensorSpec(shape, dtype, name=name))
    return specs


def _load_keras(path: str, kind: str) -> Any:
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except ValueError as e:
        first = (str(e).strip().splitlines() or [""])[0]
        if kind == "h5" and "config" in first.lower():
            raise InputError(f"{path}: an HDF5 file of weights only; save the whole model (model.save(...))") from e
        raise InputError(f"{path}: Keras could not load the model: {first[:300]}") from e


def export_in_child(path: str, kind: str, opset: int, shapes: dict[str, list[int]]) -> dict[str, Any]:
    """Convert with tf2onnx, then run TensorFlow on one sample (in the child process)."""
    import onnx

    from mconv.convert.base import sample_feeds

    tf, tf2onnx = _import_frameworks()
    if kind == "saved_model":
        fn, inputs, call = _saved_model(tf, path)
    else:
        model = _load_keras(path, kind)
        inputs = [(t.name, list(t.shape), t.dtype) for t in model.inputs]
        fn, call = None, lambda feeds: model([tf.constant(feeds[n]) for n, _, _ in inputs], training=False)
    specs = _specs(tf, inputs, shapes, path)
    try:
        if fn is None:
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=specs, opset=opset)
        else:
            proto, _ = tf2onnx.convert.from_function(tf.function(fn, input_signature=specs), specs, opset=opset)
    except Exception as e:
        raise ConversionError(f"{path}: tf2onnx could not convert the model: {_last_line(e)}") from e
    feeds = sample_feeds(proto, ExportOptions())
    got = call(feeds)
    names = [o.name for o in proto.graph.output]
    if isinstance(got, dict):
        ordered = [got[n] for n in names] if all(n in got for n in names) else [got[k] for k in sorted(got)]
    else:
        ordered = list(got) if isinstance(got, (list, tuple)) else [got]
    blob = onnx.ModelProto.SerializeToString(proto)
    return {"model": blob, "feeds": feeds, "reference": [np.asarray(t) for t in ordered]}


def _last_line(e: Exception) -> str:
    """TensorFlow's errors start with "in user code:" and end with what went wrong."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:300]


def _saved_model(tf: Any, path: str) -> tuple[Any, list, Any]:
    """The serving signature of a SavedModel: the function, its inputs and a caller on feeds."""
    try:
        loaded = tf.saved_model.load(path)
    except Exception as e:
        raise InputError(f"{path}: TensorFlow could not load the SavedModel: {_last_line(e)}") from e
    sig = loaded.signatures.get("serving_default")
    if sig is None:
        have = ", ".join(loaded.signatures) or "none"
        raise InputError(f"{path}: the SavedModel has no serving_default signature (signatures: {have})")
    spec = sig.structured_input_signature[1]
    inputs = [(name, list(s.shape), s.dtype) for name, s in sorted(spec.items())]

    # Through ``loaded``: the signature alone does not keep the model's variables alive.
    def fn(*args):
        return loaded.signatures["serving_default"](**{n: a for (n, _, _), a in zip(inputs, args)})

    def call(feeds):
        return {k: v.numpy() for k, v in fn(*[tf.constant(feeds[n]) for n, _, _ in inputs]).items()}

    return fn, inputs, call
