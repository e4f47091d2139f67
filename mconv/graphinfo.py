"""Facts about an ONNX graph: its real inputs and outputs, shapes, dtypes, ops."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int | str | None, ...] | None  # None: rank unknown; str/None: dynamic dim
    dtype: str  # numpy dtype name

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape) if self.shape is not None else None, "dtype": self.dtype}


def _info(vi: onnx.ValueInfoProto) -> TensorInfo:
    tt = vi.type.tensor_type
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
    except Exception:
        dtype = "unknown"
    shape: tuple | None = None
    if tt.HasField("shape"):
        dims = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                dims.append(d.dim_param)
            else:
                dims.append(None)
        shape = tuple(dims)
    return TensorInfo(vi.name, shape, dtype)


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [g for attr in node.attribute for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)]


def all_graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """``graph`` and every subgraph nested in its nodes' attributes (If/Loop/Scan)."""
    return [graph] + [g for node in graph.node for sub in _subgraphs(node) for g in all_graphs(sub)]


def all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Every node, depth first: each node, then the nodes of its subgraphs."""
    return [n for node in graph.node for n in [node, *(m for sub in _subgraphs(node) for m in all_nodes(sub))]]


def graph_inputs(model: onnx.ModelProto) -> list[TensorInfo]:
    """Inputs that are not initializers (old exporters list weights as inputs too)."""
    inits = {t.name for t in model.graph.initializer}
    return [_info(vi) for vi in model.graph.input if vi.name not in inits]


def graph_outputs(model: onnx.ModelProto) -> list[TensorInfo]:
    return [_info(vi) for vi in model.graph.output]


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    c = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in model.graph.node)
    return dict(sorted(c.items()))


def nodes_by_op(model: onnx.ModelProto) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for i, n in enumerate(model.graph.node):
        key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
        out.setdefault(key, []).append(n.name or f"{n.op_type}_{i}")
    return out


def activation_quantizers(model: onnx.ModelProto) -> list[str]:
    """Names of the QuantizeLinear nodes that quantize a computed tensor, not a constant:
    the mark of a model quantized already (Q/DQ on activations)."""
    consts = {t.name for t in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [
        n.name or f"{n.op_type}_{i}"
        for i, n in enumerate(model.graph.node)
        if n.op_type == "QuantizeLinear" and n.domain in ("", "ai.onnx") and n.input[0] not in consts
    ]


def opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def parameter_stats(model: onnx.ModelProto) -> tuple[int, int]:
    """(parameter count, parameter bytes) over initializers."""
    from mconv.modelio import tensor_nbytes

    count = 0
    nbytes = 0
    for t in model.graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        count += n
        nbytes += tensor_nbytes(t)
    return count, nbytes


# Fused attention ops (onnxruntime's contrib ops, ONNX opset 23's Attention).
FUSED_ATTENTION = ("Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedMultiHeadAttention")
# Ops that may sit between the score MatMul, the Softmax and the value MatMul.
_ATTENTION_GLUE = ("Add", "Mul", "Div", "Sub", "Where", "Cast", "Reshape", "Transpose", "Dropout", "Identity", "Sqrt")


def attention_blocks(model: onnx.ModelProto) -> int:
    """How many attention blocks the graph has: MatMul -> Softmax -> MatMul chains (masks,
    scales and reshapes in between allowed, at most 4 ops each side) plus fused attention ops."""
    nodes = all_nodes(model.graph)
    producer = {o: n for n in nodes for o in n.output if o}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for x in n.input:
            consumers.setdefault(x, []).append(n)

    def reaches(start: list[str], step, hops: int = 4) -> bool:
        frontier = start
        for _ in range(hops + 1):
            nxt = []
            for t in frontier:
                for n in step(t):
                    if n.op_type in ("MatMul", "Einsum"):
                        return True
                    if n.op_type in _ATTENTION_GLUE:
                        nxt += list(n.output if step is down else n.input)
            frontier = nxt
        return False

    def up(t: str) -> list[onnx.NodeProto]:
        return [producer[t]] if t in producer else []

    def down(t: str) -> list[onnx.NodeProto]:
        return consumers.get(t, [])

    count = sum(n.op_type in FUSED_ATTENTION for n in nodes)
    for n in nodes:
        if n.op_type == "Softmax" and reaches(list(n.input[:1]), up) and reaches(list(n.output[:1]), down):
            count += 1
    return count


def inferred_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    try:
        return onnx.shape_inference.infer_shapes(m)
    except Exception:  # shape inference is a help here, not a requirement
        return m


def toposorted(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes in topological order (valid ONNX is sorted already; this tolerates files that are not)."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    out: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for n in pending:
            if all(x in known for x in n.input):
                out.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # a cycle or an outer-scope name: keep file order
            out += rest
            break
        pending = rest
    return out


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` with ``names`` added as graph outputs (typed where known)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    typed = {v.name: v for v in m.graph.value_info}
    for n in names:
        if n in have:
            continue
        if n in typed:
            m.graph.output.append(typed[n])
        else:
            m.graph.output.add().name = n
        have.add(n)
    return m


def node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"
