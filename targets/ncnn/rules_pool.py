"""Pooling: MaxPool, AveragePool (1-D, 2-D, 3-D; pads, ceil mode), GlobalAveragePool,
GlobalMaxPool.

Cases:
    Max/AveragePool -> Pooling with explicit pads in "valid" mode (5=1); ceil
    mode is an extra right/bottom pad computed from ONNX's output size (so the
    "last window starts inside" rule of onnxruntime holds; ncnn's own full mode
    lacks it). Average with count_include_pad=1 and a ceil tail is refused
    (ncnn would count the tail). 1-D pools run as 2-D with height 1; 3-D pools
    -> Pooling3D on the (C, D, H, W) Mat with the same pads. Dilated or
    index-returning MaxPool is refused. Global pools -> Pooling 4=1 on a
    (C, 1, S) Mat, giving a 1-D [C] blob.
"""

from __future__ import annotations

import numpy as np

from mconv.targets.ncnn.lower import Ctx, Node, NotLowerable
from mconv.targets.ncnn.registry import rule
from mconv.targets.ncnn.rules_conv import _pads


def _pool(ctx: Ctx, node: Node, kind: int) -> None:
    x = node.inputs[0]
    assert x is not None
    if len([o for o in node.outputs if o]) > 1:
        raise NotLowerable("MaxPool Indices output")
    n = x.rank - 2
    if n not in (1, 2, 3):
        raise NotLowerable(f"{n}-D pooling")
    k = list(node.attr("kernel_shape"))
    s = list(node.attr("strides", [1] * n))
    d = list(node.attr("dilations", [1] * n))
    if any(v != 1 for v in d):
        raise NotLowerable("dilated pooling")
    begin, end = _pads(node, x.shape[2:], k, s, d)
    out_shape = ctx.out_shape()
    include = int(node.attr("count_include_pad", 0))
    extra = []
    for i in range(n):
        need = (out_shape[2 + i] - 1) * s[i] + k[i] - (x.shape[2 + i] + begin[i] + end[i])
        extra.append(max(0, need))
        if need < 0 and (x.shape[2 + i] + begin[i] + end[i] - k[i]) // s[i] + 1 != out_shape[2 + i]:
            raise NotLowerable("output size not reachable with explicit pads")
    if kind == 1 and include and any(extra):
        raise NotLowerable("average pool with count_include_pad=1 and a ceil-mode tail")
    keep = tuple(range(1, x.rank))
    xb = ctx.blob_as(x, keep)
    if n == 1:
        k, s, begin, end, extra = [1, *k], [1, *s], [0, *begin], [0, *end], [0, *extra]
        xb = ctx.reshape(xb, (x.shape[1], 1, x.shape[2]), name_hint=x.name)
    if n == 3:
        p3 = {
            0: kind,
            1: k[2], 11: k[1], 21: k[0], 2: s[2], 12: s[1], 22: s[0],
            3: begin[2], 13: begin[1], 23: begin[0],
            14: end[2] + extra[2], 15: end[1] + extra[1], 16: end[0] + extra[0],
            5: 1,
            6: include,
        }  # fmt: skip
        out = ctx.emit("Pooling3D", [xb], tuple(out_shape[1:]), p3)
        ctx.bind(node.outputs[0], out, keep)
        return
    p = {
        0: kind,
        1: k[1], 11: k[0], 2: s[1], 12: s[0],
        3: begin[1], 13: begin[0], 14: end[1] + extra[1], 15: end[0] + extra[0],
        5: 1,
        6: include,
    }  # fmt: skip
    oh = out_shape[2] if n == 2 else 1
    ow = out_shape[-1]
    out = ctx.emit("Pooling", [xb], (x.shape[1], oh, ow), p)
    ctx.bind(node.outputs[0], out, keep)


@rule("MaxPool")
def max_pool(ctx: Ctx, node: Node) -> None:
    if int(node.attr("storage_order", 0)):
        raise NotLowerable("storage_order=1")
    _pool(ctx, node, 0)


@rule("AveragePool")
def average_pool(ctx: Ctx, node: Node) -> None:
    _pool(ctx, node, 1)


def _global(ctx: Ctx, node: Node, kind: int) -> None:
    x = node.inputs[0]
    assert x is not None
    if x.rank < 3:
        raise NotLowerable(f"global pool on rank {x.rank}")
    c = x.shape[1]
    xb = ctx.blob_as(x, tuple(range(1, x.rank)))
    # ncnn pools each channel of a 3-D Mat: a 4-D tensor already is one; others are
    # flattened to [C, 1, L] first.
    to = tuple(x.shape[1:]) if x.rank == 4 else (c, 1, int(np.prod(x.shape[2:])))
    xb = ctx.reshape(xb, to, name_hint=x.name)
    out = ctx.emit("Pooling", [xb], (c,), {0: kind, 4: 1})
    ctx.bind(node.outputs[0], out, (1,))


@rule("GlobalAveragePool")
def global_average_pool(ctx: Ctx, node: Node) -> None:
    _global(ctx, node, 1)


@rule("GlobalMaxPool")
def global_max_pool(ctx: Ctx, node: Node) -> None:
    _global(ctx, node, 0)
