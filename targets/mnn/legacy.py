"""Rewrites MNN's converter needs before it sees the graph.

MNN 3.6's converter gets ONNX's pre-13 ``Softmax``/``LogSoftmax`` wrong whenever the axis is
not the last one: those opsets define the op on the input flattened to 2-D at ``axis``
(``[N, C, 1, 1]`` with ``axis=1`` normalises over all ``C``), MNN normalises over the
last axis alone (every output of ``[N, C, 1, 1]`` becomes 1). SqueezeNet's classifier, as
shipped in the onnx package, is such a graph. So before converting, each such node becomes
``Flatten(axis) -> Softmax(axis=1) -> Reshape(Shape(x))``, on which both opsets agree.
"""

from __future__ import annotations

import onnx
from onnx import helper

from mconv.graphinfo import opset

_OPS = ("Softmax", "LogSoftmax")


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    values = [*model.graph.input, *model.graph.value_info, *model.graph.output]
    return {v.name: len(v.type.tensor_type.shape.dim) for v in values if v.type.tensor_type.HasField("shape")}


def flatten_legacy_softmax(model: onnx.ModelProto) -> int:
    """Rewrite, in place, every pre-13 Softmax/LogSoftmax over a non-last axis; return how many.

    Cases: opset < 13, default domain, ``axis`` (default 1) not the input's last axis, or
    the input's rank unknown (the rewrite is exact for any rank). Opset >= 13 graphs and a
    last-axis softmax (a Flatten's output included: running it again changes nothing) are
    left alone.
    """
    if opset(model) >= 13:
        return 0
    ranks = _ranks(model)
    ranks.update({o: 2 for n in model.graph.node if n.op_type == "Flatten" for o in n.output})  # 2-D
    nodes: list[onnx.NodeProto] = []
    count = 0
    for node in model.graph.node:
        if node.op_type not in _OPS or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        rank = ranks.get(node.input[0])
        if axis == -1 or (rank is not None and axis == rank - 1):
            nodes.append(node)
            continue
        x, y, base = node.input[0], node.output[0], node.name or node.output[0]
        nodes += [
            helper.make_node("Shape", [x], [f"{base}/mnn_shape"], name=f"{base}/mnn_shape"),
            helper.make_node("Flatten", [x], [f"{base}/mnn_flat"], name=f"{base}/mnn_flatten", axis=axis),
            helper.make_node(node.op_type, [f"{base}/mnn_flat"], [f"{base}/mnn_2d"], name=node.name, axis=1),
            helper.make_node("Reshape", [f"{base}/mnn_2d", f"{base}/mnn_shape"], [y], name=f"{base}/mnn_reshape"),
        ]
        count += 1
    if count:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return count
