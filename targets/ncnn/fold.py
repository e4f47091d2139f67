"""Static shapes and constants for the writer.

ncnn layers take literal shapes, so the writer needs every tensor's static shape
and every constant's value. :func:`prepare` fixes the input shapes (a dynamic
leading dim becomes a batch of 1), runs ONNX shape inference, and folds nodes
whose inputs are all constant (plus ``Shape``/``Size`` of statically shaped
tensors), repeating until nothing changes. The lead's ``mconv.passes`` does the
same ahead of the writer; this is the writer's own guarantee for models handed
to it directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mconv.errors import ConversionError

# Never evaluated at write time: random ops would bake one sample in.
_NEVER_FOLD = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
}
# Initializers larger than this are hidden from shape inference (it only needs
# their shapes; serializing hundreds of MB for it is slow).
_BIG = 4096


@dataclass
class Prepared:
    """A model ready for lowering.

    Attributes:
        nodes: the nodes left after folding, in topological order.
        consts: tensor name -> value for every constant.
        shapes: tensor name -> static shape.
        dtypes: tensor name -> numpy dtype.
        inputs: graph input names (initializers excluded).
        outputs: graph output names.
        dyn_batch: inputs whose leading dim was dynamic and fixed to 1.
        opset: the default-domain opset.
    """

    nodes: list[onnx.NodeProto]
    consts: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype]
    inputs: list[str]
    outputs: list[str]
    dyn_batch: set[str] = field(default_factory=set)
    opset: int = 13


def _dims(vi: onnx.ValueInfoProto) -> list[int | None] | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]


def _np_dtype(elem_type: int) -> np.dtype:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:
        return np.dtype("float32")


def fixed_input_shapes(
    model: onnx.ModelProto, overrides: dict[str, tuple[int, ...]] | None = None
) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """Concrete input shapes: overrides first, a dynamic leading dim becomes 1.

    Raises:
        ConversionError: an input has another dynamic dim or an unknown rank.
    """
    inits = {t.name for t in model.graph.initializer}
    shapes: dict[str, tuple[int, ...]] = {}
    dyn: set[str] = set()
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        if overrides and vi.name in overrides:
            shapes[vi.name] = tuple(int(v) for v in overrides[vi.name])
            continue
        dims = _dims(vi)
        if dims is None:
            raise ConversionError(
                f"input '{vi.name}' has an unknown rank; give its shape, e.g. --input {vi.name}:1x3x224x224"
            )
        fixed = []
        for i, d in enumerate(dims):
            if d is None or d <= 0:
                if i != 0:
                    raise ConversionError(
                        f"input '{vi.name}' has dynamic dimension {i}; ncnn params need static "
                        f"shapes: give it with --input {vi.name}:" + "x".join(str(x) if x else "N" for x in dims)
                    )
                dyn.add(vi.name)
                d = 1
            fixed.append(int(d))
        shapes[vi.name] = tuple(fixed)
    return shapes, dyn


def _eval_node(node: onnx.NodeProto, vals: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    names = [f"i{k}" if v is not None else "" for k, v in enumerate(vals)]
    n = helper.make_node(
        node.op_type,
        names,
        [f"o{k}" for k in range(len(node.output))],
        domain=node.domain,
        **{a.name: helper.get_attribute_value(a) for a in node.attribute},
    )
    inputs = [
        helper.make_tensor_value_info(nm, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
        for nm, v in zip(names, vals)
        if v is not None
    ]
    outputs = [helper.make_empty_tensor_value_info(o) for o in n.output]
    g = helper.make_graph([n], "fold", inputs, outputs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    ref = ReferenceEvaluator(m)
    res = ref.run(None, {nm: v for nm, v in zip(names, vals) if v is not None})
    return [np.asarray(r) for r in res]


def _infer(
    model: onnx.ModelProto,
    graph_inputs: list[onnx.ValueInfoProto],
    consts: dict[str, np.ndarray],
    nodes: list[onnx.NodeProto],
) -> onnx.ModelProto:
    """Shape inference on a light copy: big constants become typed inputs."""
    g = model.graph
    inits = []
    extra_inputs = []
    for name, v in consts.items():
        if v.size <= _BIG:
            inits.append(numpy_helper.from_array(np.asarray(v), name))
        else:
            extra_inputs.append(
                helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
            )
    inputs = [vi for vi in graph_inputs if vi.name not in consts] + extra_inputs
    light = helper.make_graph(nodes, g.name or "g", inputs, list(g.output), inits)
    # IR < 4 ignores initializers that are not graph inputs: use a newer IR.
    ir = max(model.ir_version, 8)
    m = helper.make_model(light, opset_imports=list(model.opset_import), ir_version=ir)
    try:
        return onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:  # inference errors leave shapes unknown; rules then report
        return m


def prepare(model: onnx.ModelProto, overrides: dict[str, tuple[int, ...]] | None = None) -> Prepared:
    """Fix input shapes, infer shapes and fold constants (see module docstring)."""
    opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 13)
    in_shapes, dyn = fixed_input_shapes(model, overrides)
    g = model.graph
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    new_inputs = []
    for vi in g.input:
        if vi.name in consts:
            continue
        vi2 = helper.make_tensor_value_info(vi.name, vi.type.tensor_type.elem_type, list(in_shapes[vi.name]))
        new_inputs.append(vi2)
    nodes = list(g.node)

    shapes: dict[str, tuple[int, ...]] = dict(in_shapes)
    dtypes: dict[str, np.dtype] = {vi.name: _np_dtype(vi.type.tensor_type.elem_type) for vi in new_inputs}
    for _ in range(8):
        inferred = _infer(model, new_inputs, consts, nodes)
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            dims = _dims(vi)
            if dims is not None and all(d is not None for d in dims):
                shapes[vi.name] = tuple(int(d) for d in dims)
            if vi.type.tensor_type.elem_type:
                dtypes[vi.name] = _np_dtype(vi.type.tensor_type.elem_type)
        changed = False
        kept = []
        for node in nodes:
            vals = _foldable(node, consts, shapes)
            if vals is None:
                kept.append(node)
                continue
            try:
                if node.op_type == "Shape":
                    res = [_shape_op(node, shapes[node.input[0]])]
                elif node.op_type == "Size":
                    res = [np.array(int(np.prod(shapes[node.input[0]])), np.int64)]
                elif node.op_type == "Constant":
                    res = [_constant(node)]
                else:
                    res = _eval_node(node, vals, opset)
            except Exception:  # not foldable here; the rule table decides
                kept.append(node)
                continue
            for name, v in zip(node.output, res):
                if name:
                    consts[name] = v
                    shapes[name] = tuple(v.shape)
                    dtypes[name] = v.dtype
            changed = True
        nodes = kept
        if not changed:
            break
    for name, v in consts.items():
        shapes[name] = tuple(v.shape)
        dtypes[name] = v.dtype
    return Prepared(
        nodes=nodes,
        consts=consts,
        shapes=shapes,
        dtypes=dtypes,
        inputs=[vi.name for vi in new_inputs],
        outputs=[o.name for o in g.output],
        dyn_batch=dyn,
        opset=opset,
    )


def _foldable(
    node: onnx.NodeProto, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]
) -> list[np.ndarray | None] | None:
    if node.op_type in _NEVER_FOLD or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type in ("Shape", "Size"):
        return [] if node.input[0] in shapes else None
    if node.op_type == "Constant":
        return []
    if not node.input:
        return None
    vals: list[np.ndarray | None] = []
    for name in node.input:
        if not name:
            vals.append(None)
        elif name in consts:
            vals.append(consts[name])
        else:
            return None
    return vals


def _shape_op(node: onnx.NodeProto, shape: tuple[int, ...]) -> np.ndarray:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    start = attrs.get("start", 0)
    end = attrs.get("end")
    return np.array(shape[slice(start, end)], dtype=np.int64)


def _constant(node: onnx.NodeProto) -> np.ndarray:
    a = node.attribute[0]
    v = helper.get_attribute_value(a)
    if a.name == "value":
        return numpy_helper.to_array(v)
    if a.name in ("value_float", "value_int"):
        return np.array(v, dtype=np.float32 if a.name == "value_float" else np.int64)
    if a.name in ("value_floats", "value_ints"):
        return np.array(v, dtype=np.float32 if a.name == "value_floats" else np.int64)
    raise ValueError(f"Constant attribute {a.name} is not foldable")
