"""Constant folding in the project's own code (no onnxsim needed).

Cases rewritten:
1. ``Shape``/``Size`` of a tensor whose shape is fully static -> constant.
2. A deterministic node whose inputs are all constants -> its outputs become
   initializers (ConstantOfShape weights, shape arithmetic, Cast, ...).
3. ``Constant`` nodes -> initializers.
Common shape-arithmetic ops are evaluated with numpy; anything else goes through
onnx's reference evaluator. A node whose outputs would exceed the fold limit
(``max_folded_bytes``, by default :func:`mconv.limits.fold_limit` of the model),
computed before it runs (:mod:`mconv.passes.sizes`), is left unfolded and never
evaluated; so is every node once the tensors folded by one run reach twice
the limit.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from mconv.passes.base import Pass, PassResult
from mconv.passes.graph import attr, constant_node_value, is_default_domain, static_shapes
from mconv.passes.sizes import output_nbytes

# Constant inputs read to size a node (shape vectors, repeats, pads) are small.
_SHAPE_INPUT_ELEMENTS = 1 << 16

# Ops never folded: random or with side effects / control flow.
_NEVER = {
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "If",
    "Loop",
    "Scan",
    "SequenceConstruct",
    "SequenceInsert",
    "SequenceAt",
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
}


def _axes(node, arrs, idx=1):
    a = attr(node, "axes")
    if a is None and len(arrs) > idx and arrs[idx] is not None:
        a = arrs[idx].tolist()
    return None if a is None else [int(x) for x in np.atleast_1d(a)]


def _slice(node, arrs):
    x = arrs[0]
    if len(arrs) >= 3:
        starts, ends = arrs[1], arrs[2]
        axes = arrs[3] if len(arrs) > 3 and arrs[3] is not None else np.arange(len(starts))
        steps = arrs[4] if len(arrs) > 4 and arrs[4] is not None else np.ones(len(starts), np.int64)
    else:
        starts, ends = attr(node, "starts"), attr(node, "ends")
        axes = attr(node, "axes") or list(range(len(starts)))
        steps = [1] * len(starts)
    sl = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = int(a) % x.ndim
        s, e = _slice_bounds(x.shape[a], int(s), int(e), int(st))
        sl[a] = slice(s, None if e < 0 else e, int(st))  # e == -1: up to and including index 0
    return [x[tuple(sl)]]


def _slice_bounds(dim: int, start: int, end: int, step: int) -> tuple[int, int]:
    """Start and end after ONNX Slice's clamping.

    Not Python's: with a negative step, a start below ``-dim`` is clamped to index 0
    (one element), where Python's slicing gives nothing (tests/property/test_regressions.py).
    """
    start += dim if start < 0 else 0
    end += dim if end < 0 else 0
    if step > 0:
        return min(max(start, 0), dim), min(max(end, 0), dim)
    return min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)


def _reshape(node, arrs):
    x, shape = arrs[0], [int(v) for v in arrs[1]]
    if not attr(node, "allowzero", 0):
        shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return [x.reshape(shape)]


def _cast(node, arrs):
    to = onnx.helper.tensor_dtype_to_np_dtype(attr(node, "to"))
    return [arrs[0].astype(to)]


def _cos(node, arrs):
    value = attr(node, "value")
    v = numpy_helper.to_array(value) if value is not None else np.zeros(1, np.float32)
    # A read-only view: the bytes are made once, when it becomes an initializer.
    return [np.broadcast_to(v.reshape(-1)[:1].reshape(()), [int(d) for d in arrs[0]])]


def _gather(node, arrs):
    return [np.take(arrs[0], arrs[1].astype(np.int64), axis=attr(node, "axis", 0))]


def gather_elements(data: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
    """ONNX GatherElements (onnx's reference kernel misreads 2-D inputs: BERT's
    token_type_ids buffer [1, 512] gathered by [1, 128] positions)."""
    axis %= data.ndim
    idx = idx.astype(np.int64)
    idx = np.where(idx < 0, idx + data.shape[axis], idx)
    data = data[tuple(slice(None) if a == axis else slice(0, idx.shape[a]) for a in range(data.ndim))]
    return np.take_along_axis(data, idx, axis=axis)


def _concat(node, arrs):
    return [np.concatenate(arrs, axis=attr(node, "axis"))]


def _unsqueeze(node, arrs):
    x = arrs[0]
    axes = sorted(a % (x.ndim + len(_axes(node, arrs))) for a in _axes(node, arrs))
    for a in axes:
        x = np.expand_dims(x, a)
    return [x]


def _squeeze(node, arrs):
    axes = _axes(node, arrs)
    return [np.squeeze(arrs[0], axis=None if axes is None else tuple(axes))]


def _binary(fn):
    return lambda node, arrs: [
        np.asarray(fn(arrs[0], arrs[1])).astype(
            np.result_type(arrs[0], arrs[1]) if fn not in (np.equal, np.less, np.greater) else bool
        )
    ]


def _div(node, arrs):
    a, b = arrs
    if np.issubdtype(a.dtype, np.integer):
        return [np.trunc(a / b).astype(a.dtype)]
    return [(a / b).astype(a.dtype)]


_NUMPY: dict[str, Callable] = {
    "Identity": lambda n, a: [a[0]],
    "Cast": _cast,
    "ConstantOfShape": _cos,
    "Gather": _gather,
    "GatherElements": lambda n, a: [gather_elements(a[0], a[1], attr(n, "axis", 0))],
    "Concat": _concat,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Slice": _slice,
    "Reshape": _reshape,
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _div,
    "Equal": _binary(np.equal),
    "Less": _binary(np.less),
    "Greater": _binary(np.greater),
    "Neg": lambda n, a: [np.negative(a[0])],
    "Abs": lambda n, a: [np.abs(a[0])],
    "Sqrt": lambda n, a: [np.sqrt(a[0])],
    "Where": lambda n, a: [np.where(a[0], a[1], a[2])],
    "Transpose": lambda n, a: [np.transpose(a[0], attr(n, "perm"))],
    "Range": lambda n, a: [np.arange(a[0], a[1], a[2]).astype(a[0].dtype)],
    "Expand": lambda n, a: [a[0] * np.ones([int(d) for d in a[1]], a[0].dtype)],
    "Floor": lambda n, a: [np.floor(a[0])],
    "Ceil": lambda n, a: [np.ceil(a[0])],
}


def _evaluate(node: onnx.NodeProto, arrs: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    fn = _NUMPY.get(node.op_type)
    if fn is not None and all(a is not None for a in arrs):
        try:
            return fn(node, arrs)
        except Exception:
            pass  # the reference evaluator knows the corner cases
    from onnx.reference import ReferenceEvaluator

    names = [n if n else "" for n in node.input]
    inputs = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in names if n]
    g = onnx.helper.make_graph(
        [node],
        "fold",
        inputs,
        [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o],
    )
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", opset)])
    ev = ReferenceEvaluator(m)
    feeds = {n: a for n, a in zip(node.input, arrs) if n}
    return list(ev.run(None, feeds))


class FoldConstantsPass(Pass):
    """Fold Shape/Size of static tensors and nodes whose inputs are all constant."""

    name = "fold_constants"

    def __init__(self, max_folded_bytes: int | None = None) -> None:
        self.max_folded_bytes = max_folded_bytes

    def call(self, model: onnx.ModelProto) -> PassResult:
        g = model.graph
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        consts: dict[str, np.ndarray] = {}
        init_names = {t.name for t in g.initializer}
        graph_inputs = {i.name for i in g.input} - init_names
        shapes = static_shapes(model)
        lazy_inits = {t.name: t for t in g.initializer}
        new_inits: list[str] = []
        keep: list[onnx.NodeProto] = []
        folded = 0
        failures: list[str] = []
        too_big: list[str] = []
        if self.max_folded_bytes is not None:
            limit = self.max_folded_bytes
        else:
            from mconv.limits import fold_limit

            limit = fold_limit(model)
        budget = 2 * limit
        elem_types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.input, *g.value_info, *g.output]}

        def shape_of(name: str) -> tuple[int, ...] | None:
            if name in consts:
                return tuple(consts[name].shape)
            t = lazy_inits.get(name)
            if t is not None and name not in graph_inputs:
                return tuple(int(d) for d in t.dims)
            return shapes.get(name)

        def small_value(name: str) -> np.ndarray | None:
            s = shape_of(name)
            if s is None or int(np.prod(s, dtype=np.int64)) > _SHAPE_INPUT_ELEMENTS:
                return None
            return value(name)

        def itemsize(name: str) -> int:
            if name in consts:
                return consts[name].itemsize
            t = lazy_inits.get(name)
            et = t.data_type if t is not None else elem_types.get(name, 0)
            try:
                return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(et)).itemsize if et else 0
            except Exception:
                return 0

        def value(name: str) -> np.ndarray | None:
            if name in consts:
                return consts[name]
            t = lazy_inits.get(name)
            if t is not None and name not in graph_inputs:
                consts[name] = numpy_helper.to_array(t)
                return consts[name]
            return None

        def is_const(name: str) -> bool:
            return name == "" or name in consts or (name in lazy_inits and name not in graph_inputs)

        for node in g.node:
            if (
                not is_default_domain(node)
                or node.op_type in _NEVER
                or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
            ):
                keep.append(node)
                continue
            out: list[np.ndarray] | None = None
            if node.op_type == "Constant":
                v = constant_node_value(node)
                out = None if v is None else [v]
            elif node.op_type in ("Shape", "Size") and node.input[0] in shapes:
                shp = shapes[node.input[0]]
                if node.op_type == "Size":
                    out = [np.array(int(np.prod(shp)), np.int64)]
                else:
                    start, end = attr(node, "start", 0), attr(node, "end", None)
                    out = [np.array(shp[start:end], np.int64)]
            elif all(is_const(i) for i in node.input) and node.input:
                size = output_nbytes(node, shape_of, small_value, itemsize, shapes.get)
                if size is None or size > limit or size > budget:
                    too_big.append(f"{node.name or node.op_type} ({_size_text(size)})")
                    keep.append(node)
                    continue
                budget -= size
                arrs = [value(i) if i else None for i in node.input]
                try:
                    out = _evaluate(node, arrs, opset)
                except Exception as e:  # leave the node, say why
                    failures.append(f"{node.name or node.op_type}: {type(e).__name__}")
                    out = None
                if out is not None and sum(np.asarray(o).nbytes for o in out) > limit:
                    out = None
            if out is None or len(out) < len([o for o in node.output if o]):
                keep.append(node)
                continue
            for name, arr in zip(node.output, out):
                if name:
                    arr = np.asarray(arr)
                    consts[name] = arr
                    new_inits.append(name)
            folded += 1
        notes = []
        if too_big:
            from mconv.limits import human

            notes.append(
                f"left {len(too_big)} node(s) unfolded above the fold limit {human(limit)} "
                f"(--fold-limit): " + ", ".join(too_big[:5])
            )
        if not folded:
            return PassResult(model, False, notes)
        # Only materialise folded tensors something still reads.
        used = {i for n in keep for i in n.input} | {o.name for o in g.output}
        del g.node[:]
        g.node.extend(keep)
        for name in new_inits:
            if name in used:
                _add_initializer(g, name, consts[name])
        notes.insert(0, f"folded {folded} node(s)")
        if failures:
            notes.append(f"left {len(failures)} node(s) unfolded: " + ", ".join(failures[:5]))
        return PassResult(model, True, notes)


_RAW_KINDS = "biuf"


def _add_initializer(g: onnx.GraphProto, name: str, arr: np.ndarray) -> None:
    """Append ``arr`` as an initializer, copying its bytes once (from_array then
    ``extend`` copied them three times: 1.8 s of vgg19's 548 MB of folded weights)."""
    if sys.byteorder == "little" and arr.dtype.kind in _RAW_KINDS and arr.dtype.itemsize in (1, 2, 4, 8):
        try:
            dtype = onnx.helper.np_dtype_to_tensor_dtype(arr.dtype)
        except Exception:
            dtype = None
        if dtype:
            t = g.initializer.add()
            t.name, t.data_type = name, dtype
            t.dims.extend(int(d) for d in arr.shape)
            t.raw_data = arr.tobytes()
            return
    g.initializer.append(numpy_helper.from_array(np.asarray(arr), name))


def _size_text(size: int | None) -> str:
    from mconv.limits import human

    return "size unknown" if size is None else human(size)
