"""Elementwise rules: they run in whatever layout their inputs are in (constants
are broadcast to the activation's rank and permuted to match).

Cases:
    Add/Sub/Mul/Div/Pow/Max/Min (2 inputs)  -> ADD/SUB/MUL/DIV/POW/MAXIMUM/MINIMUM
    Pow(x, 2)                               -> MUL(x, x)
    Relu/Sigmoid/Tanh/Exp/Log/Sqrt/Abs/...  -> the unary builtin
    Clip(0, 6) / (0, 1) / (-1, 1)           -> RELU6 / RELU_0_TO_1 / RELU_N1_TO_1, else MAXIMUM + MINIMUM
    LeakyRelu / PRelu / Elu / HardSwish     -> LEAKY_RELU / PRELU / ELU / HARD_SWISH
    HardSigmoid                             -> MUL, ADD, RELU_0_TO_1
    Gelu (also fused from Erf patterns)     -> GELU
    Swish (fused x * sigmoid(x))            -> LOGISTIC + MUL
    Reciprocal                              -> DIV(1, x)
    Identity / Dropout                      -> nothing (an alias)
    Cast (between float and integer types)  -> CAST
"""

from __future__ import annotations

import numpy as np
import onnx

from mconv.errors import ConversionError
from mconv.targets.litert.lower import Lowering, attrs

_BINARY = {
    "Add": ("ADD", "AddOptions"),
    "Sub": ("SUB", "SubOptions"),
    "Mul": ("MUL", "MulOptions"),
    "Div": ("DIV", "DivOptions"),
    "Pow": ("POW", None),
    "Max": ("MAXIMUM", None),
    "Min": ("MINIMUM", None),
}
_UNARY = {
    "Relu": "RELU",
    "Sigmoid": "LOGISTIC",
    "Tanh": "TANH",
    "Exp": "EXP",
    "Log": "LOG",
    "Sqrt": "SQRT",
    "Abs": "ABS",
    "Neg": "NEG",
    "Floor": "FLOOR",
    "Ceil": "CEIL",
    "Sin": "SIN",
    "Cos": "COS",
    "HardSwish": "HARD_SWISH",
    "Sign": "SIGN",
    "Round": "ROUND",
}


def _operands(low: Lowering, names: list[str]) -> tuple[list[int], str]:
    layout = low.follow(names)
    dtype = next((low.graph.tensors[low.get(n, layout)].dtype for n in names if low.const(n) is None), None)
    out = []
    for name in names:
        if low.const(name) is not None:
            value = low.const(name)
            if layout == "nhwc" and value.ndim > 0:
                value = value.reshape((1,) * (4 - value.ndim) + value.shape)
            out.append(low.const_tensor(name, value, layout, dtype))
        else:
            out.append(low.get(name, layout))
    return out, layout


def binary(low: Lowering, n: onnx.NodeProto) -> None:
    if len(n.input) != 2:
        raise ConversionError(f"{n.op_type} with {len(n.input)} inputs is not supported (2 only)")
    code, table = _BINARY[n.op_type]
    exp = low.const(n.input[1])
    if n.op_type == "Pow" and exp is not None and exp.size == 1 and float(exp.ravel()[0]) == 2.0:
        (x,), layout = _operands(low, [n.input[0]])
        low.emit("MUL", [x, x], n.output[0], layout, "MulOptions")
        return
    ins, layout = _operands(low, list(n.input))
    fields = {"FusedActivationFunction": 0} if table else {}
    low.emit(code, ins, n.output[0], layout, table, **fields)


def sum_(low: Lowering, n: onnx.NodeProto) -> None:
    """Sum of any number of inputs: a chain of ADDs (broadcasting like ONNX)."""
    names = [i for i in n.input if i]
    if len(names) == 1:
        low.alias(n.output[0], names[0])
        return
    ins, layout = _operands(low, names)
    acc = ins[0]
    for k, t in enumerate(ins[1:-1]):
        shape = np.broadcast_shapes(low.graph.tensors[acc].shape, low.graph.tensors[t].shape)
        nxt = low.temp(f"{n.output[0]}__sum{k}", shape)
        low.graph.op("ADD", [acc, t], [nxt], "AddOptions", FusedActivationFunction=0)
        acc = nxt
    low.emit("ADD", [acc, ins[-1]], n.output[0], layout, "AddOptions", FusedActivationFunction=0)


def unary(low: Lowering, n: onnx.NodeProto) -> None:
    (x,), layout = _operands(low, [n.input[0]])
    low.emit(_UNARY[n.op_type], [x], n.output[0], layout)


def _clip_bounds(low: Lowering, n: onnx.NodeProto) -> tuple[float, float]:
    a = attrs(n)
    lo, hi = a.get("min", -np.inf), a.get("max", np.inf)
    for k, default in ((1, lo), (2, hi)):
        if len(n.input) > k and n.input[k]:
            v = low.const(n.input[k])
            if v is None:
                raise ConversionError("Clip bounds computed at run time are not supported")
            if k == 1:
                lo = float(v)
            else:
                hi = float(v)
        elif k == 1:
            lo = float(default)
    return float(lo), float(hi)


def clip(low: Lowering, n: onnx.NodeProto) -> None:
    lo, hi = _clip_bounds(low, n)
    (x,), layout = _operands(low, [n.input[0]])
    named = {(0.0, 6.0): "RELU6", (0.0, 1.0): "RELU_0_TO_1", (-1.0, 1.0): "RELU_N1_TO_1", (0.0, np.inf): "RELU"}
    if (lo, hi) in named:
        low.emit(named[(lo, hi)], [x], n.output[0], layout)
        return
    g = low.graph
    shape = g.tensors[x].shape
    if lo > -np.inf:
        t = low.temp(f"{n.output[0]}__lo", shape)
        g.op("MAXIMUM", [x, g.const(f"{n.output[0]}__min", np.float32(lo))], [t])
        x = t
    low.emit("MINIMUM", [x, g.const(f"{n.output[0]}__max", np.float32(min(hi, 3.4e38)))], n.output[0], layout)


def leaky_relu(low: Lowering, n: onnx.NodeProto) -> None:
    (x,), layout = _operands(low, [n.input[0]])
    alpha = float(attrs(n).get("alpha", 0.01))
    low.emit("LEAKY_RELU", [x], n.output[0], layout, "LeakyReluOptions", Alpha=alpha)


def prelu(low: Lowering, n: onnx.NodeProto) -> None:
    if low.const(n.input[1]) is None:
        raise ConversionError("PRelu slopes computed at run time are not supported")
    ins, layout = _operands(low, list(n.input))
    low.emit("PRELU", ins, n.output[0], layout)


def elu(low: Lowering, n: onnx.NodeProto) -> None:
    if float(attrs(n).get("alpha", 1.0)) != 1.0:
        raise ConversionError("Elu with alpha != 1 has no TFLite equivalent")
    unary_code(low, n, "ELU")


def unary_code(low: Lowering, n: onnx.NodeProto, code: str, table: str | None = None, **fields) -> int:
    (x,), layout = _operands(low, [n.input[0]])
    return low.emit(code, [x], n.output[0], layout, table, **fields)


def gelu(low: Lowering, n: onnx.NodeProto) -> None:
    approx = attrs(n).get("approximate", b"none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    unary_code(low, n, "GELU", "GeluOptions", Approximate=approx == "tanh")


def hard_sigmoid(low: Lowering, n: onnx.NodeProto) -> None:
    a = attrs(n)
    (x,), layout = _operands(low, [n.input[0]])
    g = low.graph
    shape = g.tensors[x].shape
    name = n.output[0]
    t1, t2 = low.temp(f"{name}__ax", shape), low.temp(f"{name}__axb", shape)
    g.op("MUL", [x, g.const(f"{name}__alpha", np.float32(a.get("alpha", 0.2)))], [t1], "MulOptions")
    g.op("ADD", [t1, g.const(f"{name}__beta", np.float32(a.get("beta", 0.5)))], [t2], "AddOptions")
    low.emit("RELU_0_TO_1", [t2], name, layout)


def swish(low: Lowering, n: onnx.NodeProto) -> None:
    (x,), layout = _operands(low, [n.input[0]])
    s = low.temp(f"{n.output[0]}__sigmoid", low.graph.tensors[x].shape)
    low.graph.op("LOGISTIC", [x], [s])
    low.emit("MUL", [x, s], n.output[0], layout, "MulOptions")


def reciprocal(low: Lowering, n: onnx.NodeProto) -> None:
    (x,), layout = _operands(low, [n.input[0]])
    one = low.graph.const(f"{n.output[0]}__one", np.float32(1.0))
    low.emit("DIV", [one, x], n.output[0], layout, "DivOptions")


def identity(low: Lowering, n: onnx.NodeProto) -> None:
    low.alias(n.output[0], n.input[0])


def cast(low: Lowering, n: onnx.NodeProto) -> None:
    to = onnx.helper.tensor_dtype_to_np_dtype(attrs(n)["to"]).name
    to = {"int64": "int32", "float64": "float32"}.get(to, to)
    (x,), layout = _operands(low, [n.input[0]])
    if low.graph.tensors[x].dtype == to:
        low.alias(n.output[0], n.input[0])
        return
    t = low.put(n.output[0], layout, to)
    low.graph.op("CAST", [x], [t])


RULES = {op: binary for op in _BINARY} | {op: unary for op in _UNARY}
RULES.update(
    {
        "Clip": clip,
        "LeakyRelu": leaky_relu,
        "PRelu": prelu,
        "Elu": elu,
        "Gelu": gelu,
        "HardSigmoid": hard_sigmoid,
        "Swish": swish,
        "Reciprocal": reciprocal,
        "Sum": sum_,
        "Identity": identity,
        "Dropout": identity,
        "Cast": cast,
    }
)
