"""The lowering pipeline: fold, fuse patterns, apply the rule table, then tidy the
TFLite graph (fused activations, float16 weights) for :mod:`.flatbuf`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from mconv.errors import ConversionError
from mconv.targets.litert.graph import Graph
from mconv.targets.litert.lower import TO_NHWC, Lowering, lower_nodes
from mconv.targets.litert.rules_math import RULES as MATH
from mconv.targets.litert.rules_nn import RULES as NN
from mconv.targets.litert.rules_shape import RULES as SHAPE

RULES = {**NN, **MATH, **SHAPE}
# Ops whose options carry a fused activation, and the activations that fold into them.
_FUSES = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "SUB", "MUL", "DIV"}
_ACTS = {"RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3}


def supported_ops() -> set[str]:
    return set(RULES) | {"Constant"}


@dataclass
class Lowered:
    graph: Graph
    meta: dict


def prepare(model: onnx.ModelProto, input_shapes: dict | None = None, mode: str = "eager"):
    """Folded, pattern-fused nodes (the ncnn writer's folding and fusions, shared).
    ``mode="lazy"`` leaves large weights unread until a rule reads them (listing ops
    reads none; :func:`lower_model` converts each where it is lowered, so the arrays
    are not all held beside the model's copies before the graph's own are made)."""
    from mconv.targets.ncnn.fold import fold_graph
    from mconv.targets.ncnn.fuse import _Graph, _match_gelu, _match_simple

    try:
        prep = fold_graph(model, input_shapes, mode=mode)
    except ConversionError as e:
        raise ConversionError(e.message.replace("ncnn params", "TFLite tensors")) from e
    g = _Graph(prep, list(prep.nodes))
    drop, out = set(), []
    for n in prep.nodes:
        hit = _match_simple(g, n) if n.op_type == "Mul" else None
        gelu = _match_gelu(g, n) if n.op_type == "Mul" and hit is None else None
        if hit is not None and hit[0] in ("Swish", "HardSwish"):
            op, x, gone = hit
            out.append(helper.make_node(op, [x], list(n.output), name=n.name))
            drop.update(id(r) for r in gone)
        elif gelu is not None and gelu[2] == 1.0:
            x, gone, _, approx = gelu
            out.append(helper.make_node("Gelu", [x], list(n.output), name=n.name, approximate=approx))
            drop.update(id(r) for r in gone)
        else:
            out.append(n)
    return prep, [n for n in out if id(n) not in drop]


def lower_model(
    model: onnx.ModelProto, *, input_shapes: dict | None = None, io_layout: str = "onnx", mode: str = "lazy"
) -> Lowered:
    """The TFLite graph of ``model``; ``mode``: :func:`prepare`'s (``"eager"`` reads every
    weight before lowering: same graph, more memory)."""
    prep, nodes = prepare(model, input_shapes, mode=mode)
    low = Lowering(prep)
    io = []
    for name in prep.inputs:
        layout = "nhwc" if io_layout == "nhwc" and low.rank(name) == 4 else "onnx"
        low.graph.inputs.append(low.put(name, layout))
        io.append(_io_meta(low, name, layout))
    lower_nodes(low, nodes, RULES)
    outs = []
    for name in prep.outputs:
        layout = "nhwc" if io_layout == "nhwc" and low.rank(name) == 4 else "onnx"
        if name not in low.values:
            raise ConversionError(f"output '{name}' is a constant; TFLite graphs need computed outputs")
        t = low.get(name, layout)
        if t in low.graph.inputs or t in low.graph.outputs:
            copy = low.temp(name, low.graph.tensors[t].shape, low.graph.tensors[t].dtype)
            low.graph.op("RESHAPE", [t, low.graph.i32(f"{name}__copy", low.graph.tensors[t].shape)], [copy])
            t = copy
        _rename(low.graph, t, name)
        low.graph.outputs.append(t)
        outs.append(_io_meta(low, name, layout))
    fuse_activations(low.graph)
    fold_reshapes(low.graph)
    meta = {"inputs": io, "outputs": outs, "io_layout": io_layout, "dyn_batch_inputs": sorted(prep.dyn_batch)}
    return Lowered(low.graph, meta)


def _io_meta(low: Lowering, name: str, layout: str) -> dict:
    shape = low.shape(name)
    if layout == "nhwc":
        shape = tuple(shape[p] for p in TO_NHWC)
    dtype = np.dtype(low.prep.dtypes.get(name, np.float32)).name
    return {"name": name, "shape": list(shape), "dtype": dtype, "layout": layout, "onnx_shape": list(low.shape(name))}


def _rename(g: Graph, t: int, name: str) -> None:
    for other in g.tensors:
        if other.name == name and other is not g.tensors[t]:
            other.name = g._unique(f"{name}__internal")
    g.tensors[t].name = name


def fuse_activations(g: Graph) -> None:
    """RELU / RELU6 / RELU_N1_TO_1 after an op with a fused-activation field, when the
    op's output has no other reader and is not a graph output, becomes that field."""
    consumers = g.consumers()
    producer = {o: op for op in g.ops for o in op.outputs}
    dropped = set()
    for act in g.ops:
        if act.code not in _ACTS:
            continue
        src = act.inputs[0]
        prod = producer.get(src)
        if prod is None or prod.code not in _FUSES or len(consumers.get(src, [])) != 1 or src in g.outputs:
            continue
        if g.tensors[src].dtype != "float32" or id(prod) in dropped:
            continue
        if prod.options is None or prod.options[1].get("FusedActivationFunction", 0):
            continue  # every rule writes options for these ops; one activation per op
        table, fields = prod.options
        fields["FusedActivationFunction"] = _ACTS[act.code]
        prod.options = (table, fields)
        prod.outputs = [act.outputs[0]]
        producer[act.outputs[0]] = prod
        dropped.add(id(act))
    g.ops = [op for op in g.ops if id(op) not in dropped]


def fold_reshapes(g: Graph) -> None:
    """RESHAPE of a RESHAPE whose result nothing else reads (and is no graph output)
    reshapes the first one's input directly (e.g. the layout RESHAPE before a Flatten)."""
    consumers = g.consumers()
    producer = {o: op for op in g.ops for o in op.outputs}
    dropped = set()
    for op in g.ops:
        if op.code != "RESHAPE":
            continue
        first = producer.get(op.inputs[0])
        while first is not None and first.code == "RESHAPE" and len(consumers.get(first.outputs[0], [])) == 1:
            if first.outputs[0] in g.outputs:
                break
            dropped.add(id(first))
            op.inputs[0] = first.inputs[0]
            first = producer.get(op.inputs[0])
    g.ops = [op for op in g.ops if id(op) not in dropped]


def to_fp16(g: Graph) -> int:
    """Float constants stored as float16, each read through a DEQUANTIZE to float32
    (what TFLite's float16 quantization writes). Returns how many were converted."""
    consumers = g.consumers()
    count = 0
    head = []
    for i, t in enumerate(list(g.tensors)):
        if t.data is None or t.data.dtype != np.float32 or t.data.size < 2 or i not in consumers:
            continue
        half = g.const(f"{t.name}__fp16", t.data.astype(np.float16))
        t.data = None  # the original tensor is now DEQUANTIZE's output
        head.append(_dequantize(g, half, i))
        count += 1
    g.ops = head + g.ops
    return count


def _dequantize(g: Graph, src: int, dst: int):
    from mconv.targets.litert.graph import Op

    return Op("DEQUANTIZE", [src], [dst])
