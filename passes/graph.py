"""Small helpers over the ONNX protobuf graph, shared by the passes."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper


def constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs, by name."""
    vals = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and len(n.output) == 1:
            v = constant_node_value(n)
            if v is not None:
                vals[n.output[0]] = v
    return vals


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), np.float32)
        if a.name == "value_int":
            return np.array(a.i, np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), np.int64)
    return None


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in graph.node:
        for name in n.input:
            if name:
                out[name].append(n)
        for a in n.attribute:  # subgraph reads count as uses
            for g in _subgraphs(a):
                for name in subgraph_outer_reads(g):
                    out[name].append(n)
    return out


def _subgraphs(a: onnx.AttributeProto) -> list[onnx.GraphProto]:
    if a.type == onnx.AttributeProto.GRAPH:
        return [a.g]
    if a.type == onnx.AttributeProto.GRAPHS:
        return list(a.graphs)
    return []


def subgraph_outer_reads(g: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from the enclosing scope."""
    defined = {i.name for i in g.input} | {t.name for t in g.initializer}
    reads: set[str] = set()
    for n in g.node:
        for name in n.input:
            if name and name not in defined:
                reads.add(name)
        for a in n.attribute:
            for sg in _subgraphs(a):
                reads |= {r for r in subgraph_outer_reads(sg) if r not in defined}
        defined.update(n.output)
    return reads


def graph_output_names(graph: onnx.GraphProto) -> set[str]:
    return {o.name for o in graph.output}


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Fully static shapes from inputs, value_info and outputs."""
    shapes: dict[str, tuple[int, ...]] = {}
    g = model.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value >= 0 and not d.dim_param:
                dims.append(d.dim_value)
            else:
                dims = None
                break
        if dims is not None:
            shapes[vi.name] = tuple(dims)
    return shapes


def replace_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Point every reader of ``old`` at ``new`` (graph outputs excluded)."""
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name == old:
                n.input[i] = new


def is_default_domain(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


def apply_renames(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Rewrite every node input through ``renames`` (chains resolved) in one sweep."""
    if not renames:
        return

    def resolve(name: str) -> str:
        seen = 0
        while name in renames and seen < 10_000:
            name = renames[name]
            seen += 1
        return name

    for n in graph.node:
        for i, name in enumerate(n.input):
            if name in renames:
                n.input[i] = resolve(name)


def value_info_map(graph: onnx.GraphProto) -> dict[str, onnx.ValueInfoProto]:
    return {vi.name: vi for vi in [*graph.input, *graph.value_info, *graph.output]}
