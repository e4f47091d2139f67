"""Normalizations: BatchNormalization, InstanceNormalization,
LayerNormalization, GroupNormalization, RMSNormalization, LRN.

Cases:
    BatchNormalization (inference form, constant stats) -> BatchNorm on the
    NC... Mat (per channel = outermost axis, or per element of a 1-D [C]); when
    axis 0 is larger than 1 (rows, not a batch) -> x * a + b per channel.
    InstanceNormalization / GroupNormalization -> InstanceNorm / GroupNorm on the
    (C, H, W) Mat, or a (C, 1, H*W...) one for other spatial ranks: ncnn reduces
    over w*h*d of each channel. GroupNormalization opset 18 (scale per group) is
    expanded per channel. LayerNormalization / RMSNormalization over the last
    k axes -> LayerNorm / RMSNorm on a (rows, inner) Mat with ``0=inner``
    (ncnn-format.md: always write affine_size). LRN -> LRN across channels.
"""

from __future__ import annotations

import numpy as np

from mconv.targets.ncnn.ir import Weight
from mconv.targets.ncnn.lower import Ctx, Node, NotLowerable, Tensor, default_keep, nc_shape
from mconv.targets.ncnn.registry import rule


def _nc_keep(x: Tensor) -> tuple[int, ...]:
    return tuple(range(1, x.rank))


@rule("BatchNormalization")
def batch_norm(ctx: Ctx, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    if len([o for o in node.outputs if o]) > 1 or int(node.attr("training_mode", 0)):
        raise NotLowerable("training-mode BatchNormalization")
    scale, bias, mean, var = (np.asarray(node.const(i, n), np.float32) for i, n in
                              ((1, "scale"), (2, "B"), (3, "mean"), (4, "var")))  # fmt: skip
    eps = float(node.attr("epsilon", 1e-5))
    if x.shape and x.shape[0] != 1:
        _rows_affine(ctx, node, x, scale / np.sqrt(var + np.float32(eps)), bias - mean * scale / np.sqrt(var + eps))
        return
    keep = _nc_keep(x)
    xb = ctx.blob_as(x, keep)
    c = x.shape[1]
    weights = [Weight(v.ravel(), tagged=False) for v in (scale, mean, var, bias)]
    out = ctx.emit(
        "BatchNorm", [xb], nc_shape(x.shape, keep), {0: c, 1: eps}, weights,
        out_name=node.outputs[0],
    )  # fmt: skip
    ctx.bind(node.outputs[0], out, keep)


def _rows_affine(ctx: Ctx, node: Node, x: Tensor, a: np.ndarray, b: np.ndarray) -> None:
    """BatchNormalization whose axis 0 is not a batch of 1 (LeViT's BatchNorm1d over a
    [tokens, C] matrix): the same per-channel affine for every row, ``x * a + b`` with
    [1, C, 1...] constants (numpy broadcasting), since ncnn's BatchNorm scales the
    outermost Mat axis."""
    from mconv.targets.ncnn.rules_elementwise import ADD, MUL
    from mconv.targets.ncnn.rules_logic import binary

    shape = (1, x.shape[1], *([1] * (x.rank - 2)))
    const = [Tensor(f"{node.name}_{k}", shape, np.dtype("float32"), const=v.astype(np.float32).reshape(shape))
             for k, v in (("a", a), ("b", b))]  # fmt: skip
    t = binary(ctx, MUL, x, const[0], tuple(x.shape))
    t = binary(ctx, ADD, t, const[1], tuple(x.shape), node.outputs[0])
    assert t.blob is not None and t.keep is not None
    ctx.bind(node.outputs[0], t.blob, t.keep)


def _per_channel(ctx: Ctx, node: Node, type_: str, params: dict, weights: list[Weight]) -> None:
    x = node.inputs[0]
    assert x is not None
    if x.rank < 3:
        raise NotLowerable(f"input rank {x.rank} (needs N, C and a spatial axis)")
    xb = ctx.blob_as(x, _nc_keep(x))
    c = x.shape[1]
    size = int(np.prod(x.shape[2:]))
    nc = (c, *x.shape[2:]) if x.rank == 4 else (c, 1, size)  # a (C, H, W) Mat as it is
    xb = ctx.reshape(xb, nc, name_hint=x.name)
    out = ctx.emit(type_, [xb], nc, params, weights, out_name=node.outputs[0])
    ctx.bind(node.outputs[0], out, _nc_keep(x))


@rule("InstanceNormalization")
def instance_norm(ctx: Ctx, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    scale = np.asarray(node.const(1, "scale"), np.float32).ravel()
    bias = np.asarray(node.const(2, "B"), np.float32).ravel()
    eps = float(node.attr("epsilon", 1e-5))
    c = x.shape[1]
    w = [Weight(scale, tagged=False), Weight(bias, tagged=False)]
    _per_channel(ctx, node, "InstanceNorm", {0: c, 1: eps, 2: 1}, w)


@rule("GroupNormalization")
def group_norm(ctx: Ctx, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    groups = int(node.attr("num_groups"))
    scale = np.asarray(node.const(1, "scale"), np.float32).ravel()
    bias = np.asarray(node.const(2, "bias"), np.float32).ravel()
    eps = float(node.attr("epsilon", 1e-5))
    c = x.shape[1]
    if scale.size == groups and groups != c:  # opset 18: one value per group
        scale = np.repeat(scale, c // groups)
        bias = np.repeat(bias, c // groups)
    w = [Weight(scale, tagged=False), Weight(bias, tagged=False)]
    _per_channel(ctx, node, "GroupNorm", {0: groups, 1: c, 2: eps, 3: 1}, w)


def _last_axes_norm(ctx: Ctx, node: Node, type_: str, has_bias: bool) -> None:
    x = node.inputs[0]
    assert x is not None
    if len([o for o in node.outputs if o]) > 1:
        raise NotLowerable("mean / inv-std-dev outputs")
    axis = int(node.attr("axis", -1))
    axis = axis + x.rank if axis < 0 else axis
    inner = int(np.prod(x.shape[axis:]))
    rows = int(np.prod(x.shape[:axis]))
    scale = np.broadcast_to(np.asarray(node.const(1, "scale"), np.float32),
                            x.shape[axis:]).ravel()  # fmt: skip
    bias_v = node.const(2, "bias") if has_bias else None
    eps = float(node.attr("epsilon", 1e-5))
    weights = [Weight(scale.copy(), tagged=False)]
    if has_bias:
        bias = (np.zeros(inner, np.float32) if bias_v is None else
                np.broadcast_to(np.asarray(bias_v, np.float32), x.shape[axis:]).ravel())  # fmt: skip
        weights.append(Weight(np.ascontiguousarray(bias), tagged=False))
    xb = ctx.blob_as(x)
    nc = tuple(ctx.g.shapes.get(xb, ()))
    if not (nc and nc[-1] == inner and len(nc) <= 3):
        # ncnn normalizes each innermost row of a 2-D or 3-D Mat when affine_size is
        # its width; any other layout becomes (rows, inner).
        nc = (rows, inner) if rows > 1 else (inner,)
        xb = ctx.reshape(xb, nc, name_hint=x.name)
    out = ctx.emit(type_, [xb], nc, {0: inner, 1: eps, 2: 1}, weights)
    keep = x.keep if x.keep is not None else default_keep(x.shape)
    ctx.bind(node.outputs[0], out, keep)


@rule("LayerNormalization")
def layer_norm(ctx: Ctx, node: Node) -> None:
    _last_axes_norm(ctx, node, "LayerNorm", has_bias=True)


@rule("RMSNormalization")
def rms_norm(ctx: Ctx, node: Node) -> None:
    _last_axes_norm(ctx, node, "RMSNorm", has_bias=False)


@rule("LRN")
def lrn(ctx: Ctx, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    if x.rank != 4:
        raise NotLowerable(f"LRN on rank {x.rank}")
    keep = _nc_keep(x)
    xb = ctx.blob_as(x, keep)
    p = {
        0: 0,
        1: int(node.attr("size")),
        2: float(node.attr("alpha", 1e-4)),
        3: float(node.attr("beta", 0.75)),
        4: float(node.attr("bias", 1.0)),
    }
    out = ctx.emit("LRN", [xb], nc_shape(x.shape, keep), p, out_name=node.outputs[0])
    ctx.bind(node.outputs[0], out, keep)
