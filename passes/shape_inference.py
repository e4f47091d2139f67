"""Shape inference with onnx's own engine, data propagation on."""

from __future__ import annotations

import os
import tempfile

import onnx

from mconv.modelio import weightless
from mconv.passes.base import Pass, PassResult

# Initializers above this size are not needed for shape inference (only small
# integer tensors carry shapes), so inference runs on a copy without them.
_SKELETON_BYTES = 4096


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose large initializers are declared as typed graph inputs."""
    return weightless(model, _SKELETON_BYTES)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return ``model`` with value_info filled in; tolerant of ops onnx cannot infer."""
    skel = _skeleton(model)
    if skel.ByteSize() < (1 << 31) - 1:
        inferred = onnx.shape_inference.infer_shapes(skel, check_type=False, strict_mode=False, data_prop=True)
    else:  # a huge graph even without weights: go through a file
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "m.onnx")
            onnx.save(skel, p)
            onnx.shape_inference.infer_shapes_path(p, p, check_type=False, strict_mode=False, data_prop=True)
            inferred = onnx.load(p, load_external_data=False)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    outs = {o.name: o for o in inferred.graph.output}
    for o in model.graph.output:
        if o.name in outs and not o.type.tensor_type.HasField("shape"):
            o.CopyFrom(outs[o.name])
    return model


class InferShapesPass(Pass):
    """Fill in value_info for every tensor whose shape onnx can infer."""

    name = "infer_shapes"

    def call(self, model: onnx.ModelProto) -> PassResult:
        before = len(model.graph.value_info)
        try:
            model = infer_shapes(model)
        except Exception as e:  # a partial graph is still worth passing on
            first = (str(e).splitlines() or [type(e).__name__])[0][:200]
            return PassResult(model, False, [f"shape inference stopped: {first}"])
        return PassResult(
            model, len(model.graph.value_info) != before, [f"{len(model.graph.value_info)} tensors with known types"]
        )
