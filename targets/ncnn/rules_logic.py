"""Comparisons, boolean logic, Where and value casts on float Mats.

ncnn computes in float32 and has no comparison or select layer, so booleans live in
Mats as 0.0 / 1.0 and integers as their float values (exact up to 2**24: shape
arithmetic, masks, positions). Every case below is exact on such values:

Cases:
    Equal(a, b)          -> 1 - |sign(a - b)|
    Greater(a, b)        -> max(sign(a - b), 0); Less swaps the operands
    GreaterOrEqual(a, b) -> 1 - Less(a, b); LessOrEqual -> 1 - Greater(a, b)
    Not(x) -> 1 - x; And -> a * b; Or -> max(a, b); Xor -> |a - b|
    Where(c, x, y)       -> c * x + (1 - c) * y; with scalar constants x, y whose
                            ``(x - y) * c + y`` is exact in float32, two BinaryOps;
                            a constant c picks a branch. Infinite constants in x or y
                            (masked_fill with -inf) become -/+FLT_MAX: 0 * inf would be
                            NaN, and a softmax gives the same 0 for -FLT_MAX.
    IsNaN(Softmax(...))  -> all false: a softmax of finite values is finite, and the
                            masks above are finite (a row masked entirely gives a
                            uniform row where onnxruntime gives NaN, then 0).
    Cast -> bool: |sign(x)|; float -> int: trunc; any other numeric Cast keeps the values.
"""

from __future__ import annotations

import numpy as np

from mconv.targets.ncnn.ir import FLT_MAX
from mconv.targets.ncnn.lower import Ctx, Node, NotLowerable, Tensor
from mconv.targets.ncnn.registry import rule
from mconv.targets.ncnn.rules_elementwise import ADD, MAX, MUL, SUB, binary_tensors

UNARY_ABS, UNARY_SIGN, UNARY_TRUNC = 0, 20, 19
RSUB = 7


def unary(ctx: Ctx, t: Tensor, code: int, out_name: str | None = None) -> Tensor:
    """``UnaryOp code`` of a dynamic tensor, same shape and representation."""
    assert t.blob is not None and t.keep is not None
    blob = ctx.emit("UnaryOp", [t.blob], t.ncshape, {0: code}, out_name=out_name)
    return Tensor(out_name or blob, t.shape, np.dtype("float32"), blob=blob, keep=t.keep)


def scalar(ctx: Ctx, t: Tensor, op: int, value: float, out_name: str | None = None) -> Tensor:
    """``t <op> value`` (BinaryOp with a scalar; RSUB computes ``value - t``)."""
    assert t.blob is not None and t.keep is not None
    blob = ctx.emit("BinaryOp", [t.blob], t.ncshape, {0: op, 1: 1, 2: float(value)}, out_name=out_name)
    return Tensor(out_name or blob, t.shape, np.dtype("float32"), blob=blob, keep=t.keep)


def binary(ctx: Ctx, op: int, a: Tensor, b: Tensor, shape: tuple[int, ...], out_name: str | None = None) -> Tensor:
    blob, keep = binary_tensors(ctx, op, a, b, shape, out_name)
    return Tensor(out_name or blob, shape, np.dtype("float32"), blob=blob, keep=keep)


def _finish(ctx: Ctx, node: Node, t: Tensor) -> None:
    """Bind ``t`` as the node's output (a Reshape only if its Mat shape differs)."""
    assert t.blob is not None and t.keep is not None
    ctx.bind(node.outputs[0], t.blob, t.keep)


def _sign_of_difference(ctx: Ctx, node: Node, swap: bool = False) -> Tensor:
    a, b = node.inputs[0], node.inputs[1]
    assert a is not None and b is not None
    if swap:
        a, b = b, a
    return unary(ctx, binary(ctx, SUB, a, b, ctx.out_shape()), UNARY_SIGN)


@rule("Equal")
def equal(ctx: Ctx, node: Node) -> None:
    s = unary(ctx, _sign_of_difference(ctx, node), UNARY_ABS)
    _finish(ctx, node, scalar(ctx, s, RSUB, 1.0, node.outputs[0]))


@rule("Greater", "Less")
def greater(ctx: Ctx, node: Node) -> None:
    s = _sign_of_difference(ctx, node, swap=node.op == "Less")
    _finish(ctx, node, scalar(ctx, s, MAX, 0.0, node.outputs[0]))


@rule("GreaterOrEqual", "LessOrEqual")
def greater_or_equal(ctx: Ctx, node: Node) -> None:
    # a >= b is not (a < b): the sign of b - a, clipped at 0, then flipped.
    s = scalar(ctx, _sign_of_difference(ctx, node, swap=node.op == "GreaterOrEqual"), MAX, 0.0)
    _finish(ctx, node, scalar(ctx, s, RSUB, 1.0, node.outputs[0]))


@rule("Not")
def not_(ctx: Ctx, node: Node) -> None:
    x = _dynamic(node, 0)
    _finish(ctx, node, scalar(ctx, x, RSUB, 1.0, node.outputs[0]))


@rule("And", "Or", "Xor")
def logical(ctx: Ctx, node: Node) -> None:
    a, b = node.inputs[0], node.inputs[1]
    assert a is not None and b is not None
    out = node.outputs[0]
    if node.op == "Xor":
        _finish(ctx, node, unary(ctx, binary(ctx, SUB, a, b, ctx.out_shape()), UNARY_ABS, out))
        return
    _finish(ctx, node, binary(ctx, MUL if node.op == "And" else MAX, a, b, ctx.out_shape(), out))


def _finite_const(t: Tensor) -> Tensor:
    if t.const is None:
        return t
    v = np.asarray(t.const, np.float32)
    if np.isfinite(v).all():
        return Tensor(t.name, t.shape, np.dtype("float32"), const=v)
    return Tensor(t.name, t.shape, np.dtype("float32"), const=np.nan_to_num(v, posinf=FLT_MAX, neginf=-FLT_MAX))


def _exact_affine(x: float, y: float) -> bool:
    """Whether ``(x - y) * c + y`` gives exactly x for c = 1 and y for c = 0 in float32."""
    d = np.float32(np.float32(x) - np.float32(y))
    return np.isfinite(d) and np.float32(d + np.float32(y)) == np.float32(x)


@rule("Where")
def where(ctx: Ctx, node: Node) -> None:
    c, x, y = node.inputs[0], node.inputs[1], node.inputs[2]
    assert c is not None and x is not None and y is not None
    out, shape = node.outputs[0], ctx.out_shape()
    x, y = _finite_const(x), _finite_const(y)
    if c.const is not None and (np.all(c.const) or not np.any(c.const)):
        pick = x if np.all(c.const) else y
        if pick.const is not None:
            ctx.bind_const(out, np.broadcast_to(pick.const, shape).copy())
            return
        zeros = Tensor("zeros", shape, np.dtype("float32"), const=np.zeros(shape, np.float32))
        _finish(ctx, node, binary(ctx, ADD, pick, zeros, shape, out))
        return
    if c.const is not None:
        c = Tensor(c.name, c.shape, np.dtype("float32"), const=np.asarray(c.const, np.float32))
    sx, sy = (np.asarray(t.const).size == 1 if t.const is not None else False for t in (x, y))
    if c.const is None and sx and sy:
        xv, yv = (float(np.asarray(t.const).ravel()[0]) for t in (x, y))
        if _exact_affine(xv, yv) and tuple(c.shape) == tuple(shape):
            t = scalar(ctx, c, MUL, float(np.float32(xv) - np.float32(yv)))
            _finish(ctx, node, scalar(ctx, t, ADD, yv, out))
            return
    cx = _product(ctx, c, x, shape)
    ny = _product(ctx, _negated(ctx, c), y, shape)
    _finish(ctx, node, binary(ctx, ADD, cx, ny, shape, out))


def _product(ctx: Ctx, a: Tensor, b: Tensor, shape: tuple[int, ...]) -> Tensor:
    if a.const is not None and b.const is not None:
        v = np.broadcast_to(np.asarray(a.const, np.float32) * np.asarray(b.const, np.float32), shape)
        return Tensor(f"{a.name}_x_{b.name}", shape, np.dtype("float32"), const=np.ascontiguousarray(v))
    return binary(ctx, MUL, a, b, shape)


def _negated(ctx: Ctx, c: Tensor) -> Tensor:
    if c.const is not None:
        return Tensor(c.name + "_not", c.shape, np.dtype("float32"), const=1.0 - np.asarray(c.const, np.float32))
    return scalar(ctx, c, RSUB, 1.0)


@rule("IsNaN")
def is_nan(ctx: Ctx, node: Node) -> None:
    x = _dynamic(node, 0)
    prod = next((n for n in ctx.prep.nodes if x.name in n.output), None)
    if prod is None or prod.op_type not in ("Softmax", "LogSoftmax"):
        raise NotLowerable("ncnn has no NaN test (only IsNaN of a softmax, which is never NaN, converts)")
    ctx.bind_const(node.outputs[0], np.zeros(ctx.out_shape(), bool))


@rule("Cast", "CastLike")
def cast(ctx: Ctx, node: Node) -> None:
    x = _dynamic(node, 0)
    to = ctx.prep.dtypes.get(node.outputs[0])
    if to is None:
        raise NotLowerable("Cast to an unknown type")
    if to.kind == "b" and x.dtype.kind != "b":
        s = unary(ctx, unary(ctx, x, UNARY_SIGN), UNARY_ABS, node.outputs[0])
        _finish(ctx, node, s)
    elif to.kind in "iu" and x.dtype.kind == "f":
        _finish(ctx, node, unary(ctx, x, UNARY_TRUNC, node.outputs[0]))
    elif to.kind in "fiub":
        ctx.alias(node.outputs[0], x)
    else:
        raise NotLowerable(f"Cast {x.dtype} -> {to}")


def _dynamic(node: Node, i: int) -> Tensor:
    t = node.inputs[i]
    assert t is not None
    if t.const is not None or t.blob is None or t.keep is None:
        raise NotLowerable("constant or unlowered input (fold it first)")
    return t
