"""Full-integer INT8 for the TFLite graph (TFLite's int8 quantization spec).

1. Calibration: the FP32 graph runs in LiteRT's interpreter (builtin kernels, all
   tensors preserved) on the calibration samples; each float tensor's min/max is kept.
2. Rewrite, op by op: ops with int8 kernels (:data:`INT8_OPS`) read and write int8,
   the others stay float; QUANTIZE / DEQUANTIZE go in only where an int8 tensor meets
   a float op (or the float graph inputs/outputs), once per tensor.

Parameters:
    weights of CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED: int8 per output channel,
        symmetric (zero point 0); bias int32 with scale in_scale * w_scale[c]
    activations: int8 asymmetric from the calibrated [min, max] (widened to hold 0)
    SOFTMAX / LOGISTIC outputs: scale 1/256, zero point -128; TANH: 1/128, 0. A SOFTMAX
        that is a graph output stays float: that step zeroes every probability below
        1/512 (all of them for a flat 1000-class output)
    data movement, pools and resizes: the output keeps its input's parameters
    CONCATENATION: inputs requantized to the output's parameters where they differ
    other float constants (ADD/MUL operands, PADV2 values): int8 per tensor
"""

from __future__ import annotations

import numpy as np

from mconv.errors import ConversionError
from mconv.targets.litert.graph import Graph, Op, Quant

WEIGHTED = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0}  # op -> weight channel axis
SAME_AS_INPUT = {
    "RESHAPE",
    "TRANSPOSE",
    "MAX_POOL_2D",
    "AVERAGE_POOL_2D",
    "PAD",
    "PADV2",
    "RESIZE_NEAREST_NEIGHBOR",
    "RESIZE_BILINEAR",
    "STRIDED_SLICE",
    "SPLIT",
    "SPLIT_V",
    "GATHER",
    "DEPTH_TO_SPACE",
    "SPACE_TO_DEPTH",
}
FIXED = {"SOFTMAX": (1 / 256, -128), "LOGISTIC": (1 / 256, -128), "TANH": (1 / 128, 0)}
CALIBRATED = {"ADD", "SUB", "MUL", "MEAN", "CONCATENATION", "HARD_SWISH", "RELU", "RELU6", "LEAKY_RELU"}
INT8_OPS = set(WEIGHTED) | SAME_AS_INPUT | set(FIXED) | CALIBRATED


def calibrate(model_bytes: bytes, g: Graph, samples: list[dict[str, np.ndarray]]) -> dict[int, tuple[float, float]]:
    """Tensor index -> (min, max) over ``samples`` (feeds keyed by input tensor name)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(
        model_content=model_bytes,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        experimental_preserve_all_tensors=True,
    )
    interp.allocate_tensors()
    wanted = [i for i, t in enumerate(g.tensors) if t.data is None and t.dtype == "float32"]
    ranges: dict[int, tuple[float, float]] = {}
    for feeds in samples:
        for i in g.inputs:
            interp.set_tensor(i, np.ascontiguousarray(feeds[g.tensors[i].name], dtype=np.float32))
        interp.invoke()
        for i in wanted:
            try:
                v = interp.get_tensor(i)
            except ValueError:  # not computed: an orphan of a fused activation
                continue
            lo, hi = float(v.min()), float(v.max())
            old = ranges.get(i, (lo, hi))
            ranges[i] = (min(lo, old[0]), max(hi, old[1]))
    return ranges


def activation_quant(lo: float, hi: float) -> Quant:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255.0, 1e-8)
    zp = int(np.clip(round(-128 - lo / scale), -128, 127))
    return Quant(np.array([scale], np.float32), np.array([zp], np.int64))


def _q(x: np.ndarray, quant: Quant, axis: int | None = None) -> np.ndarray:
    s = quant.scale if axis is None else quant.scale.reshape([-1 if d == axis else 1 for d in range(x.ndim)])
    z = quant.zero_point if axis is None else 0
    with np.errstate(over="ignore"):  # PADV2's lowest-float pad value saturates to -128
        return np.clip(np.round(x / s) + z, -128, 127).astype(np.int8)


class Int8Rewrite:
    """The rewrite of one graph (see the module docstring)."""

    def __init__(self, g: Graph, ranges: dict[int, tuple[float, float]]) -> None:
        self.g = g
        self.ranges = ranges
        self.other: dict[int, int] = {}  # tensor -> its counterpart in the other type
        self.ops: list[Op] = []
        self.final = _final_ops(g)

    def quantized(self, t: int, quant: Quant | None = None) -> int:
        """The int8 form of tensor ``t`` (with ``quant`` when given: requantized if needed)."""
        g = self.g
        if g.tensors[t].dtype == "int8":
            if quant is None or _same(g.tensors[t].quant, quant):
                return t
            src = t
        elif t in self.other:
            return self.quantized(self.other[t], quant)
        else:
            src = t
        if g.tensors[t].data is not None:  # a float constant
            q = quant or activation_quant(float(g.tensors[t].data.min()), float(g.tensors[t].data.max()))
            return g.const(f"{g.tensors[t].name}__int8", _q(g.tensors[t].data, q), quant=q)
        if quant is None:
            if t not in self.ranges:
                raise ConversionError(f"tensor '{g.tensors[t].name}' has no calibration range")
            quant = activation_quant(*self.ranges[t])
        q = g.tensor(f"{g.tensors[t].name}__int8", g.tensors[t].shape, "int8", quant)
        self.ops.append(Op("QUANTIZE", [src], [q]))
        if g.tensors[t].dtype != "int8":
            self.other[t] = q
        return q

    def floated(self, t: int) -> int:
        g = self.g
        if g.tensors[t].dtype != "int8":
            return t
        if t not in self.other:
            f = g.tensor(f"{g.tensors[t].name}__float", g.tensors[t].shape)
            self.ops.append(Op("DEQUANTIZE", [t], [f]))
            self.other[t] = f
        return self.other[t]

    def weighted(self, op: Op) -> None:
        g = self.g
        x = self.quantized(op.inputs[0])
        w = g.tensors[op.inputs[1]].data
        axis = WEIGHTED[op.code]
        red = tuple(d for d in range(w.ndim) if d != axis)
        scale = np.maximum(np.abs(w).max(axis=red), 1e-12) / 127.0
        wq = Quant(scale.astype(np.float32), np.zeros(scale.size, np.int64), axis)
        in_scale = float(g.tensors[x].quant.scale[0])
        wt = g.const(f"{g.tensors[op.inputs[1]].name}__int8", _q(w, wq, axis), quant=wq)
        ins = [x, wt]
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            b = g.tensors[op.inputs[2]].data
            bscale = (in_scale * scale).astype(np.float32)
            bq = Quant(bscale, np.zeros(scale.size, np.int64), 0)
            ins.append(
                g.const(f"{g.tensors[op.inputs[2]].name}__int32", np.round(b / bscale).astype(np.int32), quant=bq)
            )
        op.inputs = ins
        self._outputs(op, None)

    def _outputs(self, op: Op, quant: Quant | None) -> None:
        for t in op.outputs:
            tensor = self.g.tensors[t]
            tensor.dtype = "int8"
            if quant is not None:
                tensor.quant = quant
            elif op.code in FIXED:
                s, z = FIXED[op.code]
                tensor.quant = Quant(np.array([s], np.float32), np.array([z], np.int64))
            else:
                tensor.quant = activation_quant(*self.ranges.get(t, (0.0, 0.0)))

    def rewrite(self, op: Op) -> None:
        g = self.g
        floats = [k for k, t in enumerate(op.inputs) if t >= 0 and g.tensors[t].dtype in ("float32", "int8")]
        final_softmax = op.code == "SOFTMAX" and id(op) in self.final
        if op.code not in INT8_OPS or final_softmax or not all(g.tensors[t].dtype == "float32" for t in op.outputs):
            op.inputs = [self.floated(t) if k in floats else t for k, t in enumerate(op.inputs)]
        elif op.code in WEIGHTED and g.tensors[op.inputs[1]].data is not None:
            self.weighted(op)
        elif op.code in SAME_AS_INPUT:
            data = 1 if op.code == "SPLIT" else 0
            x = self.quantized(op.inputs[data])
            quant = g.tensors[x].quant
            op.inputs = [
                x if k == data else (self.quantized(t, quant) if k in floats else t) for k, t in enumerate(op.inputs)
            ]
            self._outputs(op, quant)
        elif op.code == "CONCATENATION":
            quant = activation_quant(*self.ranges[op.outputs[0]])
            op.inputs = [self.quantized(t, quant) for t in op.inputs]
            self._outputs(op, quant)
        elif op.code in WEIGHTED:
            op.inputs = [self.floated(t) if k in floats else t for k, t in enumerate(op.inputs)]
        else:
            op.inputs = [self.quantized(t) if k in floats else t for k, t in enumerate(op.inputs)]
            self._outputs(op, None)
        self.ops.append(op)


def _final_ops(g: Graph) -> set[int]:
    """ids of the ops that compute a graph output, looking through RESHAPE / TRANSPOSE."""
    producer = {o: op for op in g.ops for o in op.outputs}
    out = set()
    for t in g.outputs:
        op = producer.get(t)
        while op is not None and op.code in ("RESHAPE", "TRANSPOSE"):
            op = producer.get(op.inputs[0])
        if op is not None:
            out.add(id(op))
    return out


def _same(a: Quant | None, b: Quant | None) -> bool:
    if a is None or b is None:
        return a is b
    return np.array_equal(a.scale, b.scale) and np.array_equal(a.zero_point, b.zero_point)


def quantize_int8(g: Graph, ranges: dict[int, tuple[float, float]], *, int8_io: bool = False) -> dict:
    """Rewrite ``g`` in place; returns a summary (ops in int8 / in float)."""
    rw = Int8Rewrite(g, ranges)
    if int8_io:
        for t in g.inputs:
            g.tensors[t].dtype = "int8"
            g.tensors[t].quant = activation_quant(*ranges[t])
    old = g.ops
    for op in old:
        rw.rewrite(op)
    outs = []
    for t in g.outputs:
        name = g.tensors[t].name
        o = rw.quantized(t) if int8_io else rw.floated(t)
        if o != t:
            g.tensors[t].name = g._unique(f"{name}__inner")
            g.tensors[o].name = name
        outs.append(o)
    g.outputs = outs
    g.ops = rw.ops
    int8 = sum(1 for op in old if any(g.tensors[t].dtype == "int8" for t in op.outputs))
    return {"int8_ops": int8, "float_ops": len(old) - int8}
