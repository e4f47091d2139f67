"""Activations and element-wise unary math: ReLU family, sigmoid-like, GELU, Erf,
Clip, PReLU and the UnaryOp table.

Cases:
    Relu -> ReLU; LeakyRelu -> ReLU ``0=alpha``; Sigmoid; Tanh -> TanH; Elu -> ELU;
    Selu -> SELU; Celu -> CELU; HardSigmoid ``0=alpha 1=beta``; HardSwish with
    alpha 1/6, beta 0.5; Gelu ``0=0`` exact / ``0=1`` tanh; Erf; Softplus; Mish;
    Clip (attributes or constant inputs, absent bound = ±FLT_MAX); PRelu with a
    per-channel or scalar constant slope -> PReLU, any other slope through
    ``max(x,0) + slope*min(x,0)``; Abs, Neg, Floor, Ceil, Sqrt, Reciprocal, Exp,
    Log, Sin, Cos, Tan, Asin, Acos, Atan, Round, Sign, Sinh, Cosh, Asinh, Acosh,
    Atanh -> UnaryOp; Softsign as ``x / (1 + |x|)``.
"""

from __future__ import annotations

import numpy as np

from mconv.targets.ncnn.ir import FLT_MAX, Weight
from mconv.targets.ncnn.lower import Ctx, Node, NotLowerable, elementwise, nc_shape
from mconv.targets.ncnn.registry import rule

UNARY_OPS = {
    "Abs": 0,
    "Neg": 1,
    "Floor": 2,
    "Ceil": 3,
    "Sqrt": 5,
    "Exp": 7,
    "Log": 8,
    "Sin": 9,
    "Cos": 10,
    "Tan": 11,
    "Asin": 12,
    "Acos": 13,
    "Atan": 14,
    "Reciprocal": 15,
    "Round": 18,
    "Sign": 20,
    "Sinh": 22,
    "Asinh": 23,
    "Cosh": 24,
    "Acosh": 25,
    "Atanh": 26,
}


@rule(*UNARY_OPS)
def unary_op(ctx: Ctx, node: Node) -> None:
    elementwise(ctx, node, "UnaryOp", {0: UNARY_OPS[node.op]})


@rule("Relu")
def relu(ctx: Ctx, node: Node) -> None:
    elementwise(ctx, node, "ReLU")


@rule("LeakyRelu")
def leaky_relu(ctx: Ctx, node: Node) -> None:
    elementwise(ctx, node, "ReLU", {0: float(node.attr("alpha", 0.01))})


@rule("Sigmoid")
def sigmoid(ctx: Ctx, node: Node) -> None:
    elementwise(ctx, node, "Sigmoid")


@rule("Tanh")
def tanh(ctx: Ctx, node: Node) -> None:
    elementwise(ctx, node, "TanH")


@rule("Elu")
def elu(ctx: Ctx, node: Node) -> None:
    elementwise(ctx, node, "ELU", {0: float(node.attr("alpha", 1.0))})


@rule("Selu")
def selu(ctx: Ctx, node: Node) -> None:
    alpha = float(node.attr("alpha", 1.67326319217681884765625))
    gamma = float(node.attr("gamma", 1.05070102214813232421875))
    elementwise(ctx, node, "SELU", {0: alpha, 1: gamma})


@rule("Celu")
def celu(ctx: Ctx, node: Node) -> None:
    elementwise(ctx, node, "CELU", {0: float(node.attr("alpha", 1.0))})


@rule("HardSigmoid")
def hard_sigmoid(ctx: Ctx, node: Node) -> None:
    alpha = float(node.attr("alpha", 0.2))
    beta = float(node.attr("beta", 0.5))
    elementwise(ctx, node, "HardSigmoid", {0: alpha, 1: beta})


@rule("HardSwish")
def hard_swish(ctx: Ctx, node: Node) -> None:
    # ONNX fixes alpha=1/6, beta=0.5 (ncnn's defaults differ: write them).
    elementwise(ctx, node, "HardSwish", {0: 1.0 / 6.0, 1: 0.5})


@rule("Gelu")
def gelu(ctx: Ctx, node: Node) -> None:
    approx = node.attr("approximate", "none")
    elementwise(ctx, node, "GELU", {0: 1 if approx == "tanh" else 0})


@rule("Erf")
def erf(ctx: Ctx, node: Node) -> None:
    elementwise(ctx, node, "Erf")


@rule("Softplus")
def softplus(ctx: Ctx, node: Node) -> None:
    elementwise(ctx, node, "Softplus")


@rule("Mish")
def mish(ctx: Ctx, node: Node) -> None:
    elementwise(ctx, node, "Mish")


@rule("Swish")
def swish(ctx: Ctx, node: Node) -> None:
    alpha = float(node.attr("alpha", 1.0))
    if alpha == 1.0:
        elementwise(ctx, node, "Swish")
        return
    # x * sigmoid(alpha * x)
    x = node.inputs[0]
    assert x is not None and x.keep is not None
    nc = x.ncshape
    xb = ctx.blob_as(x)
    ax = ctx.emit("BinaryOp", [xb], nc, {0: 2, 1: 1, 2: alpha})
    sg = ctx.emit("Sigmoid", [ax], nc)
    out = ctx.emit("BinaryOp", [xb, sg], nc, {0: 2}, out_name=node.outputs[0])
    ctx.bind(node.outputs[0], out, x.keep)


@rule("Clip")
def clip(ctx: Ctx, node: Node) -> None:
    if "min" in node.attrs or "max" in node.attrs:  # opset < 11
        lo = float(node.attr("min", -FLT_MAX))
        hi = float(node.attr("max", FLT_MAX))
    else:
        lo_v = node.const(1, "min")
        hi_v = node.const(2, "max")
        lo = _bound(node, lo_v, "min", -FLT_MAX)
        hi = _bound(node, hi_v, "max", FLT_MAX)
    if lo == 0.0 and hi == FLT_MAX:
        elementwise(ctx, node, "ReLU")
    else:
        elementwise(ctx, node, "Clip", {0: lo, 1: hi})


def _bound(node: Node, value, name: str, default: float) -> float:
    """A Clip bound: a scalar, or a one-element tensor as exporters also write it."""
    if value is None:
        return default
    v = np.asarray(value)
    if v.size != 1:
        raise NotLowerable(f"{name} holds {v.size} values, not one")
    return float(v.reshape(-1)[0])


@rule("PRelu")
def prelu(ctx: Ctx, node: Node) -> None:
    x = node.inputs[0]
    slope = node.inp(1)
    assert x is not None and slope is not None
    if slope.const is not None and x.keep is not None:
        s = np.asarray(slope.const, np.float32)
        # Per-channel: slope broadcasts along ONNX axis 1 only, which is the
        # outermost Mat axis when the batch axis is dropped.
        full = np.broadcast_to(s.reshape((1,) * (x.rank - s.ndim) + s.shape), x.shape)
        if s.size == 1:
            elementwise(ctx, node, "PReLU", {0: 1}, [Weight(s.ravel(), tagged=False)])
            return
        if x.rank >= 2 and x.keep == tuple(range(1, x.rank)):
            per_c = full.reshape(x.shape[0], x.shape[1], -1)[0]
            if np.all(per_c == per_c[:, :1]):
                elementwise(ctx, node, "PReLU", {0: x.shape[1]}, [Weight(per_c[:, 0].copy(), tagged=False)])
                return
    _prelu_composite(ctx, node)


def _prelu_composite(ctx: Ctx, node: Node) -> None:
    from mconv.targets.ncnn.lower import Tensor
    from mconv.targets.ncnn.rules_elementwise import MUL, binary_tensors

    x = node.inputs[0]
    slope = node.inputs[1]
    assert x is not None and slope is not None and x.keep is not None
    keep = x.keep
    nc = nc_shape(x.shape, keep)
    xb = ctx.blob_as(x, keep)
    pos = ctx.emit("BinaryOp", [xb], nc, {0: 4, 1: 1, 2: 0.0})
    neg = ctx.emit("BinaryOp", [xb], nc, {0: 5, 1: 1, 2: 0.0})
    neg_t = Tensor(f"{x.name}_neg", x.shape, x.dtype, blob=neg, keep=keep)
    scaled, skeep = binary_tensors(ctx, MUL, neg_t, slope, x.shape)
    scaled = ctx.reshape(scaled, nc_shape(x.shape, skeep))
    if skeep != keep:
        scaled = ctx.reshape(scaled, nc)
    out = ctx.emit("BinaryOp", [pos, scaled], nc, {0: 0}, out_name=node.outputs[0])
    ctx.bind(node.outputs[0], out, keep)


@rule("Softsign")
def softsign(ctx: Ctx, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None and x.keep is not None
    nc = x.ncshape
    xb = ctx.blob_as(x)
    a = ctx.emit("UnaryOp", [xb], nc, {0: 0})
    d = ctx.emit("BinaryOp", [a], nc, {0: 0, 1: 1, 2: 1.0})
    out = ctx.emit("BinaryOp", [xb, d], nc, {0: 3}, out_name=node.outputs[0])
    ctx.bind(node.outputs[0], out, x.keep)
