"""Remove nodes that compute nothing.

Cases rewritten:
1. ``Identity`` -> its input.
2. ``Dropout`` (inference) -> its input, when its mask output is unused.
3. ``Cast`` to the type its input already has -> its input.
4. ``Reshape`` of a ``Reshape`` output read by nothing else -> one Reshape.
5. ``Reshape`` to the shape its input already has -> its input.
6. ``CastLike(x, like)`` -> ``Cast(x, to=<like's type>)`` where that type is known (the
   exported forms of functions such as Gelu, HardSigmoid or Softplus use it on constants,
   which then fold), and dropped like any Cast when it changes nothing.
A node whose output is a graph output is kept (the output name must survive).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mconv.passes.base import Pass, PassResult
from mconv.passes.graph import (
    apply_renames,
    attr,
    consumers,
    graph_output_names,
    is_default_domain,
    static_shapes,
)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.input, *g.value_info, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


class EliminateNoOpsPass(Pass):
    """Drop Identity, inference Dropout, no-op Cast and redundant Reshape nodes."""

    # The registry name predates the other cases; recipes and --passes use it.
    name = "eliminate_identity"

    def call(self, model: onnx.ModelProto) -> PassResult:
        g = model.graph
        outputs = graph_output_names(g)
        users = consumers(g)
        types = _elem_types(model)
        shapes = static_shapes(model)
        inits = {t.name: t for t in g.initializer}
        producer = {o: n for n in g.node for o in n.output}
        renames: dict[str, str] = {}
        drop: set[int] = set()
        counts: dict[str, int] = {}
        _cast_like_to_cast(g, types, counts)
        for node in g.node:
            if not is_default_domain(node) or not node.output:
                continue
            src = node.input[0] if node.input else ""
            out = node.output[0]
            kind = None
            if node.op_type == "Identity":
                kind = "Identity"
            elif (
                node.op_type == "Dropout"
                and (len(node.output) < 2 or not users.get(node.output[1]))
                and _inference_dropout(node, inits)
            ):
                kind = "Dropout"
            elif node.op_type == "Cast" and src in types and types[src] == attr(node, "to") and types[src]:
                kind = "Cast"
            elif node.op_type == "Reshape" and src in shapes and out in shapes and shapes[src] == shapes[out]:
                kind = "Reshape"
            elif node.op_type == "Reshape" and src in producer:
                prev = producer[src]
                if (
                    prev.op_type == "Reshape"
                    and len(users.get(src, [])) == 1
                    and src not in outputs
                    and _non_zero_shape(node, inits)
                ):
                    node.input[0] = prev.input[0]  # Reshape(Reshape(x)) == Reshape(x)
                    counts["Reshape chain"] = counts.get("Reshape chain", 0) + 1
                    continue
            if kind and out not in outputs:  # a graph output's name must survive
                renames[out] = renames.get(src, src)
                drop.add(id(node))
                counts[kind] = counts.get(kind, 0) + 1
        if not counts:
            return PassResult(model, False)
        keep = [n for n in g.node if id(n) not in drop]
        del g.node[:]
        g.node.extend(keep)
        apply_renames(g, renames)
        return PassResult(model, True, [f"{k}: {v}" for k, v in sorted(counts.items())])


def _cast_like_to_cast(g: onnx.GraphProto, types: dict[str, int], counts: dict[str, int]) -> None:
    for node in g.node:
        if node.op_type != "CastLike" or not is_default_domain(node) or len(node.input) != 2:
            continue
        to = types.get(node.input[1])
        if not to:
            continue
        saturate = [a for a in node.attribute if a.name == "saturate"]  # Cast has it from opset 19, as CastLike
        node.op_type = "Cast"
        del node.input[1]
        del node.attribute[:]
        node.attribute.extend([helper.make_attribute("to", to), *saturate])
        counts["CastLike -> Cast"] = counts.get("CastLike -> Cast", 0) + 1


def _inference_dropout(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    """Dropout is the identity unless ``training_mode`` is (or may be) true with a ratio above 0."""
    training = node.input[2] if len(node.input) > 2 else ""
    if not training:
        return True
    if training not in inits or not bool(numpy_helper.to_array(inits[training]).any()):
        return training in inits  # a run-time flag: keep the node; a constant false: identity
    ratio = node.input[1] if len(node.input) > 1 else ""
    return bool(ratio) and ratio in inits and not numpy_helper.to_array(inits[ratio]).any()


def _non_zero_shape(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    """A Reshape whose target shape has no 0 (copy-dim) entries does not depend on its input's shape."""
    t = inits.get(node.input[1]) if len(node.input) > 1 else None
    if t is None:
        return False
    return bool(np.all(numpy_helper.to_array(t) != 0))
