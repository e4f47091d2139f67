"""Rules for data movement, reductions and softmax.

Cases:
    Concat                         -> CONCATENATION (axis remapped when the inputs are NHWC)
    Reshape/Flatten/Squeeze/Unsqueeze -> RESHAPE to the static output shape (ONNX layout)
    Transpose                      -> TRANSPOSE composed with the input's layout (nothing when
                                      the composition is the identity)
    Softmax / LogSoftmax           -> SOFTMAX / LOG_SOFTMAX on the last physical axis (channels of
                                      an NHWC tensor are last); other axes transpose around it;
                                      opset < 13 flattens from ``axis``
    Reduce{Mean,Sum,Max,Min,Prod}  -> MEAN / SUM / REDUCE_MAX / REDUCE_MIN / REDUCE_PROD
    Split                          -> SPLIT_V;  Slice -> STRIDED_SLICE
    Gather                         -> GATHER;  Pad -> PAD / PADV2 / MIRROR_PAD
    Expand / Tile                  -> BROADCAST_TO / TILE
"""

from __future__ import annotations

import numpy as np
import onnx

from mconv.errors import ConversionError
from mconv.targets.litert.lower import TO_NHWC, Lowering, attrs, nhwc_axis


def _axis(low: Lowering, name: str, axis: int, layout: str) -> int:
    axis = axis % low.rank(name)
    return nhwc_axis(axis) if layout == "nhwc" else axis


def concat(low: Lowering, n: onnx.NodeProto) -> None:
    names = [i for i in n.input if i]
    layout = low.follow(names)
    ins = [low.get(i, layout) for i in names]
    axis = _axis(low, n.output[0], int(attrs(n)["axis"]), layout)
    opts = {"Axis": axis, "FusedActivationFunction": 0}
    low.emit("CONCATENATION", ins, n.output[0], layout, "ConcatenationOptions", **opts)


def to_static_shape(code: str):
    """A rule: ``code(x, output's static shape)`` in ONNX layout (RESHAPE, BROADCAST_TO)."""

    def rule(low: Lowering, n: onnx.NodeProto) -> None:
        x = low.get(n.input[0])
        shape = low.graph.i32(f"{n.output[0]}__shape", low.shape(n.output[0]))
        low.emit(code, [x, shape], n.output[0], "onnx")

    return rule


reshape = to_static_shape("RESHAPE")


def transpose(low: Lowering, n: onnx.NodeProto) -> None:
    rank = low.rank(n.input[0])
    perm = list(attrs(n).get("perm", list(range(rank))[::-1]))
    layout = low.layout(n.input[0])
    src = TO_NHWC if layout == "nhwc" else tuple(range(rank))
    q = [src.index(p) for p in perm]  # physical axes in output order
    x = low.get(n.input[0], layout)
    if q == list(range(rank)):
        low.values[n.output[0]] = {"onnx": x}
        low.home[n.output[0]] = "onnx"
        return
    low.emit("TRANSPOSE", [x, low.graph.i32(f"{n.output[0]}__perm", q)], n.output[0], "onnx")


def softmax(low: Lowering, n: onnx.NodeProto) -> None:
    rank = low.rank(n.input[0])
    default = -1 if low.prep.opset >= 13 else 1
    axis = int(attrs(n).get("axis", default)) % rank
    code = "SOFTMAX" if n.op_type == "Softmax" else "LOG_SOFTMAX"
    table, fields = ("SoftmaxOptions", {"Beta": 1.0}) if code == "SOFTMAX" else (None, {})
    name = n.output[0]
    if rank == 4 and axis == 1 and low.layout(n.input[0]) == "nhwc":
        low.emit(code, [low.get(n.input[0], "nhwc")], name, "nhwc", table, **fields)
        return
    x = low.get(n.input[0])
    shape = low.shape(n.input[0])
    g = low.graph
    if axis == rank - 1:
        low.emit(code, [x], name, "onnx", table, **fields)
    elif low.prep.opset < 13:
        flat = (int(np.prod(shape[:axis])), int(np.prod(shape[axis:])))
        t, s = low.temp(f"{name}__flat", flat), low.temp(f"{name}__soft", flat)
        g.op("RESHAPE", [x, g.i32(f"{name}__fshape", flat)], [t])
        g.op(code, [t], [s], table, **fields)
        low.emit("RESHAPE", [s, g.i32(f"{name}__shape", shape)], name, "onnx")
    else:
        perm = [i for i in range(rank) if i != axis] + [axis]
        moved = tuple(shape[p] for p in perm)
        t, s = low.temp(f"{name}__moved", moved), low.temp(f"{name}__soft", moved)
        g.op("TRANSPOSE", [x, g.i32(f"{name}__perm", perm)], [t])
        g.op(code, [t], [s], table, **fields)
        low.emit("TRANSPOSE", [s, g.i32(f"{name}__back", list(np.argsort(perm)))], name, "onnx")


_REDUCE = {"ReduceMean": "MEAN", "ReduceSum": "SUM", "ReduceMax": "REDUCE_MAX", "ReduceMin": "REDUCE_MIN"}
_REDUCE["ReduceProd"] = "REDUCE_PROD"


def reduce(low: Lowering, n: onnx.NodeProto) -> None:
    a = attrs(n)
    rank = low.rank(n.input[0])
    axes = a.get("axes")
    if axes is None and len(n.input) > 1 and n.input[1]:
        v = low.const(n.input[1])
        if v is None:
            raise ConversionError("reduction axes computed at run time are not supported")
        axes = [int(i) for i in v.ravel()]
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            low.alias(n.output[0], n.input[0])
            return
        axes = list(range(rank))
    keep = bool(a.get("keepdims", 1))
    layout = low.follow([n.input[0]]) if keep else "onnx"
    x = low.get(n.input[0], layout)
    phys = sorted(_axis(low, n.input[0], int(i), layout) for i in axes)
    ins = [x, low.graph.i32(f"{n.output[0]}__axes", phys)]
    low.emit(_REDUCE[n.op_type], ins, n.output[0], layout, "ReducerOptions", KeepDims=keep)


def split(low: Lowering, n: onnx.NodeProto) -> None:
    a = attrs(n)
    layout = low.follow([n.input[0]])
    axis = int(a.get("axis", 0)) % low.rank(n.input[0])
    dim = low.shape(n.input[0])[axis]
    sizes = a.get("split")
    if sizes is None and len(n.input) > 1 and n.input[1]:
        sizes = low.const(n.input[1])
    if sizes is None:
        sizes = [low.shape(o)[axis] for o in n.output]
    sizes = [int(s) for s in np.asarray(sizes).ravel()]
    if sum(sizes) != dim:
        raise ConversionError(f"split sizes {sizes} do not add up to the axis size {dim}")
    x = low.get(n.input[0], layout)
    ins = [
        x,
        low.graph.i32(f"{n.output[0]}__sizes", sizes),
        low.graph.i32(f"{n.output[0]}__axis", _axis(low, n.input[0], axis, layout)),
    ]
    outs = [low.put(o, layout) for o in n.output]
    low.graph.op("SPLIT_V", ins, outs, "SplitVOptions", NumSplits=len(outs))


def _slice_args(low: Lowering, n: onnx.NodeProto):
    if low.prep.opset < 10:
        a = attrs(n)
        return a["starts"], a["ends"], a.get("axes"), None
    vals = [low.const(i) if len(n.input) > k and i else None for k, i in enumerate(n.input[:5])]
    vals += [None] * (5 - len(vals))
    if vals[1] is None or vals[2] is None or (len(n.input) > 3 and n.input[3] and vals[3] is None):
        raise ConversionError("Slice bounds computed at run time are not supported")
    if len(n.input) > 4 and n.input[4] and vals[4] is None:
        raise ConversionError("Slice steps computed at run time are not supported")
    return vals[1].ravel(), vals[2].ravel(), None if vals[3] is None else vals[3].ravel(), vals[4]


def slice_(low: Lowering, n: onnx.NodeProto) -> None:
    starts, ends, axes, steps = _slice_args(low, n)
    shape = low.shape(n.input[0])
    rank = len(shape)
    axes = list(range(len(starts))) if axes is None else [int(i) % rank for i in axes]
    steps = [1] * len(starts) if steps is None else [int(s) for s in np.asarray(steps).ravel()]
    layout = low.follow([n.input[0]])
    phys = [shape[p] for p in TO_NHWC] if layout == "nhwc" else list(shape)
    begin, end, stride, end_mask = [0] * rank, list(phys), [1] * rank, 0
    for ax, s, e, st in zip(axes, starts, ends, steps, strict=False):
        b_, e_, st_ = slice(int(s), int(e), st).indices(shape[ax])
        p = _axis(low, n.input[0], ax, layout)
        begin[p], end[p], stride[p] = b_, e_, st_
        if st_ < 0 and e_ < 0:
            end_mask |= 1 << p
    x = low.get(n.input[0], layout)
    g = low.graph
    name = n.output[0]
    ins = [x, g.i32(f"{name}__begin", begin), g.i32(f"{name}__end", end), g.i32(f"{name}__strides", stride)]
    low.emit("STRIDED_SLICE", ins, name, layout, "StridedSliceOptions", EndMask=end_mask)


def gather(low: Lowering, n: onnx.NodeProto) -> None:
    axis = int(attrs(n).get("axis", 0)) % low.rank(n.input[0])
    x = low.get(n.input[0])
    idx = low.const(n.input[1])
    if idx is not None:
        dim = low.shape(n.input[0])[axis]
        i = low.graph.i32(f"{n.output[0]}__indices", np.where(idx < 0, idx + dim, idx))
    else:
        i = low.get(n.input[1])
    low.emit("GATHER", [x, i], n.output[0], "onnx", "GatherOptions", Axis=axis, BatchDims=0)


def pad(low: Lowering, n: onnx.NodeProto) -> None:
    a = attrs(n)
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = a.get("pads") if low.prep.opset < 11 else low.const(n.input[1])
    value = a.get("value", 0.0)
    if low.prep.opset >= 11 and len(n.input) > 2 and n.input[2]:
        v = low.const(n.input[2])
        if v is None:
            raise ConversionError("a pad value computed at run time is not supported")
        value = float(v.ravel()[0])
    if pads is None or (len(n.input) > 3 and n.input[3]):
        raise ConversionError("Pad needs constant pads on all axes")
    rank = low.rank(n.input[0])
    pads = [int(p) for p in np.asarray(pads).ravel()]
    spec = [[pads[i], pads[i + rank]] for i in range(rank)]
    layout = low.follow([n.input[0]])
    if layout == "nhwc":
        spec = [spec[p] for p in TO_NHWC]
    x = low.get(n.input[0], layout)
    g = low.graph
    p = g.i32(f"{n.output[0]}__pads", spec)
    if mode == "reflect":
        low.emit("MIRROR_PAD", [x, p], n.output[0], layout, "MirrorPadOptions", Mode=0)
    elif mode != "constant":
        raise ConversionError(f"Pad mode '{mode}' is not supported (constant, reflect)")
    elif value == 0.0:
        low.emit("PAD", [x, p], n.output[0], layout)
    else:
        low.emit("PADV2", [x, p, g.const(f"{n.output[0]}__value", np.float32(value))], n.output[0], layout)


def tile(low: Lowering, n: onnx.NodeProto) -> None:
    reps = low.const(n.input[1])
    if reps is None:
        raise ConversionError("Tile repeats computed at run time are not supported")
    x = low.get(n.input[0])
    low.emit("TILE", [x, low.graph.i32(f"{n.output[0]}__reps", reps.ravel())], n.output[0], "onnx")


RULES = {op: reduce for op in _REDUCE} | {
    "Concat": concat,
    "Reshape": reshape,
    "Flatten": reshape,
    "Squeeze": reshape,
    "Unsqueeze": reshape,
    "Transpose": transpose,
    "Softmax": softmax,
    "LogSoftmax": softmax,
    "Split": split,
    "Slice": slice_,
    "Gather": gather,
    "Pad": pad,
    "Expand": to_static_shape("BROADCAST_TO"),
    "Tile": tile,
}
