"""Reductions along axes: Softmax, LogSoftmax, Reduce*, CumSum.

Cases:
    Softmax / LogSoftmax opset >= 13 -> Softmax ``0=axis 1=1`` on the Mat axis
    (the ``1=1`` is ncnn's fixbug flag, without it axis -1 is misread);
    opset < 13 flattens to (outer, inner) first. LogSoftmax adds UnaryOp log.
    ReduceSum/SumSquare/Mean/Max/Min/Prod/L1/L2/LogSum/LogSumExp (axes from
    attribute or input, keepdims, noop_with_empty_axes) -> Reduction with
    ``5=1``; reduced axes are always present in the Mat (a size-1 axis is not a
    no-op for L2, LogSum, SumSquare). CumSum (forward, inclusive) ->
    CumulativeSum.
    TopK has no layer: ncnn's ArgMax (which has a top-k parameter) is compiled out
    of ncnn's standard packages ("layer ArgMax not exists" at load), so a detector
    that selects queries by TopK (RT-DETR) is refused before writing.
"""

from __future__ import annotations

import numpy as np

from mconv.targets.ncnn.lower import Ctx, Node, NotLowerable, default_keep, nc_shape
from mconv.targets.ncnn.registry import rule
from mconv.targets.ncnn.rules_shape import _common_keep


def _softmax(ctx: Ctx, node: Node, log: bool) -> None:
    x = node.inputs[0]
    assert x is not None
    out = node.outputs[0]
    opset = ctx.prep.opset
    axis = int(node.attr("axis", -1 if opset >= 13 else 1))
    axis = axis + x.rank if axis < 0 else axis
    if opset >= 13 or axis == x.rank - 1:
        keep = _common_keep(x.shape, [x], (axis,))
        blob = ctx.blob_as(x, keep)
        nc = nc_shape(x.shape, keep)
        ax = keep.index(axis)
    else:
        outer = int(np.prod(x.shape[:axis]))
        inner = int(np.prod(x.shape[axis:]))
        keep = x.keep if x.keep is not None else default_keep(x.shape)
        nc = (outer, inner) if outer > 1 else (inner,)
        blob = ctx.reshape(ctx.blob_as(x), nc, name_hint=x.name)
        ax = len(nc) - 1
    blob = ctx.emit("Softmax", [blob], nc, {0: ax, 1: 1}, out_name=None if log else out)
    if log:
        blob = ctx.emit("UnaryOp", [blob], nc, {0: 8}, out_name=out)
    ctx.bind(out, blob, keep)


@rule("Softmax")
def softmax(ctx: Ctx, node: Node) -> None:
    _softmax(ctx, node, log=False)


@rule("LogSoftmax")
def log_softmax(ctx: Ctx, node: Node) -> None:
    _softmax(ctx, node, log=True)


_REDUCE = {
    "ReduceSum": 0,
    "ReduceSumSquare": 2,
    "ReduceMean": 3,
    "ReduceMax": 4,
    "ReduceMin": 5,
    "ReduceProd": 6,
    "ReduceL1": 7,
    "ReduceL2": 8,
    "ReduceLogSum": 9,
    "ReduceLogSumExp": 10,
}


@rule(*_REDUCE)
def reduce(ctx: Ctx, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    if "axes" in node.attrs:
        axes = list(node.attr("axes"))
    else:
        a = node.const(1, "axes") if len(node.inputs) > 1 else None
        axes = [int(v) for v in a] if a is not None else []
    keepdims = int(node.attr("keepdims", 1))
    out = node.outputs[0]
    if not axes:
        if int(node.attr("noop_with_empty_axes", 0)):
            ctx.alias(out, x)
            return
        axes = list(range(x.rank))
    axes = sorted({a + x.rank if a < 0 else a for a in axes})
    try:
        keep = _common_keep(x.shape, [x], tuple(axes))
    except NotLowerable:
        if x.blob is None:
            raise
        _reduce_grouped(ctx, node, x, axes)
        return
    blob = ctx.blob_as(x, keep)
    nc_axes = [keep.index(a) for a in axes]
    reduce_all = int(len(nc_axes) == len(keep) or not keep)
    out_shape = ctx.out_shape()
    if keepdims:
        out_keep = keep
        kept = [a for a in keep if a not in axes]
        if len(kept) == 1 and len(keep) == 3 and kept[0] == keep[0]:
            # Global pooling kept as (C, 1, 1): a 1-D [C] Mat instead, which feeds an
            # InnerProduct and broadcasts per channel without a Reshape.
            out_keep, keepdims = tuple(kept), 0
    else:
        remaining = [a for a in range(x.rank) if a not in axes]
        out_keep = tuple(remaining.index(a) for a in keep if a in remaining)
    p = {0: _REDUCE[node.op], 1: reduce_all, 3: nc_axes, 4: keepdims, 5: 1}
    res = ctx.emit("Reduction", [blob], nc_shape(out_shape, out_keep), p, out_name=out)
    ctx.bind(out, res, out_keep)


def _reduce_grouped(ctx: Ctx, node: Node, x, axes: list[int]) -> None:
    """A reduction over a tensor with more axes than a Mat (Hiera's max over mask units,
    6-D): runs of adjacent reduced / kept axes merge into one Mat axis each, which
    leaves the values in place, so up to 4 runs reduce in one Reduction."""
    runs: list[list] = []  # [size, reduced]
    for a, d in enumerate(x.shape):
        if d == 1:
            continue
        if runs and runs[-1][1] == (a in axes):
            runs[-1][0] *= d
        else:
            runs.append([d, a in axes])
    if len(runs) > 4:
        raise NotLowerable(f"reduction over {list(x.shape)}: more than 4 alternating axis runs")
    out = node.outputs[0]
    if any(r for _, r in runs):
        nc = tuple(int(d) for d, _ in runs)
        nc_axes = [i for i, (_, r) in enumerate(runs) if r]
        blob = ctx.reshape(x.blob, nc, name_hint=x.name)
        kept = tuple(int(d) for d, r in runs if not r) or (1,)
        p = {0: _REDUCE[node.op], 1: int(len(nc_axes) == len(nc)), 3: nc_axes, 4: 0, 5: 1}
        res = ctx.emit("Reduction", [blob], kept, p)
    else:  # every reduced axis has size 1: the values as they are
        res = x.blob
    ctx.bind_view(out, res)


@rule("CumSum")
def cumsum(ctx: Ctx, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    exclusive = int(node.attr("exclusive", 0))
    reverse = int(node.attr("reverse", 0))
    axis = int(np.asarray(node.const(1, "axis")).ravel()[0])
    axis = axis + x.rank if axis < 0 else axis
    keep = _common_keep(x.shape, [x], (axis,))
    blob = ctx.blob_as(x, keep)
    nc = nc_shape(x.shape, keep)
    ax = keep.index(axis)
    src = ctx.emit("Flip", [blob], nc, {0: [ax]}) if reverse else blob
    res = ctx.emit("CumulativeSum", [src], nc, {0: ax})
    if exclusive:  # exclusive = inclusive - x
        res = ctx.emit("BinaryOp", [res, src], nc, {0: 1})
    if reverse:
        res = ctx.emit("Flip", [res], nc, {0: [ax]})
    ctx.bind(node.outputs[0], res, keep)
