"""Evaluate one ONNX node on constant inputs: the one constant evaluator.

:class:`~mconv.passes.fold.FoldConstantsPass` and the ncnn writer's folding
(``mconv.targets.ncnn.fold`` and its lowering loop) both call
:func:`evaluate_node`, and both ask :func:`is_foldable` which nodes to leave alone.

Common shape-arithmetic ops have numpy kernels (:data:`NUMPY_KERNELS`); anything
else, or a kernel that raises, goes through onnx's reference evaluator.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mconv.passes.graph import attr, is_default_domain

# Never folded by anyone: a random op would bake one sample into the model.
RANDOM_OPS = frozenset(
    {
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
    }
)
# Kept as nodes by the ONNX passes even on constant inputs (``keep_structure``):
# control flow and sequences (their subgraphs may read outer-scope tensors), and
# quantization nodes, which QDQ consumers (TensorRT, onnxruntime) must still see.
# The ncnn writer folds them: ncnn has no layer for any of them, so evaluating
# them is its only way to lower them.
STRUCTURE_OPS = frozenset(
    {
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
)
# The reference kernel is wrong for these; their numpy kernel is used even
# when the caller asks for the reference evaluator.
_REFERENCE_WRONG = frozenset({"GatherElements"})
# Ops the reference evaluator implements only from a later version (onnx 1.23 has
# DequantizeLinear from 19 on) whose later version computes the same for every input
# the older one accepts: DequantizeLinear 10 and 13 (int8/uint8/int32 with a float
# scale) are DequantizeLinear 19 without its new types. Run them at that version.
_REFERENCE_SINCE = {"DequantizeLinear": 19}


def is_foldable(node: onnx.NodeProto, *, keep_structure: bool = True) -> bool:
    """Whether ``node`` may be replaced by its value once its inputs are constant.

    Args:
        node: the node.
        keep_structure: also refuse :data:`STRUCTURE_OPS` and nodes with
            subgraph attributes (the passes' choice; the ncnn writer passes
            False).
    """
    if not is_default_domain(node) or node.op_type in RANDOM_OPS:
        return False
    if not keep_structure:
        return True
    return node.op_type not in STRUCTURE_OPS and not any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    )


def evaluate_node(
    node: onnx.NodeProto, values: list[np.ndarray | None], opset: int, *, numpy_kernels: bool = True
) -> list[np.ndarray | None]:
    """The outputs of ``node`` on constant inputs, one per ``node.output`` (None for an empty name).

    Args:
        node: a default-domain node.
        values: one array per ``node.input`` (None for an empty name).
        opset: the default-domain opset.
        numpy_kernels: try :data:`NUMPY_KERNELS` first (the passes); False
            (the ncnn writer) uses the reference evaluator for every op except
            those whose reference kernel is wrong.

    Raises:
        Exception: whatever the reference evaluator raises on a node it cannot run.
    """
    # IEEE results (log(0) = -inf, a cast of inf) are what the runtime computes too, and
    # models rely on them (T5's relative-position buckets take log(0), then discard it
    # with Where): numpy's RuntimeWarnings about them would only be noise on stderr.
    with np.errstate(all="ignore"):
        if numpy_kernels or node.op_type in _REFERENCE_WRONG:
            fn = NUMPY_KERNELS.get(node.op_type)
            if fn is not None and all(v is not None for v in values):
                try:
                    return fn(node, [np.asarray(v) for v in values])
                except Exception:
                    pass  # the reference evaluator knows the corner cases
        return _run_reference(node, values, opset)


def _run_reference(node: onnx.NodeProto, values: list[np.ndarray | None], opset: int) -> list[np.ndarray | None]:
    """Run ``node`` alone in onnx's reference evaluator; inputs and outputs are renamed
    so that any names (duplicates included) work."""
    from onnx.reference import ReferenceEvaluator

    one = onnx.NodeProto()
    one.CopyFrom(node)
    in_names = [f"i{k}" if v is not None else "" for k, v in enumerate(values)]
    out_names = [f"o{k}" if o else "" for k, o in enumerate(node.output)]
    one.input[:] = in_names
    one.output[:] = out_names
    inputs = [
        helper.make_tensor_value_info(nm, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
        for nm, v in zip(in_names, values)
        if v is not None
    ]
    outputs = [helper.make_empty_tensor_value_info(o) for o in out_names if o]
    g = helper.make_graph([one], "fold", inputs, outputs)
    opset = max(opset, _REFERENCE_SINCE.get(node.op_type, 0))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    res = iter(ReferenceEvaluator(m).run(None, {nm: v for nm, v in zip(in_names, values) if v is not None}))
    return [np.asarray(next(res)) if o else None for o in out_names]


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


# op -> kernel(node, arrays) -> outputs; numpy results equal to the reference evaluator's.
NUMPY_KERNELS: dict[str, Callable] = {
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
