"""Hypothesis strategies that build random valid ONNX graphs from a grammar of common ops.

A graph starts from one float32 input (NCHW, NC or NLC) and grows by applying ops to
tensors drawn from a pool of everything built so far, so a tensor can have several
consumers and a graph several outputs. Each op rule knows the shapes it accepts and
computes the shape it produces, so every generated model passes ``onnx.checker`` with
``full_check`` (checked in :func:`onnx_graphs`) and runs in onnxruntime.

Constant values come from a numpy generator seeded by a drawn integer, so an example is
fully determined by hypothesis' choices and shrinks towards seed 0. Magnitudes are drawn
from a small set (0.1 .. 10) so that folding and fusion see non-trivial numbers, but
stay bounded so that eight ops cannot overflow float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
MAX_ELEMENTS = 4096  # per tensor: keeps every example fast on two cores
MAGNITUDES = (0.1, 1.0, 3.0, 10.0)


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]


class GraphCase:
    """A generated model and what went into it (its repr is the readable graph)."""

    def __init__(self, model: onnx.ModelProto, ops: list[str], input_shape: tuple[int, ...]) -> None:
        self.model = model
        self.ops = ops
        self.input_shape = input_shape

    def feeds(self, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {"x": rng.standard_normal(self.input_shape).astype(np.float32)}

    def __repr__(self) -> str:
        # Printed by hypothesis for a falsifying example: the readable form of the graph.
        return f"GraphCase(ops={self.ops}, input={list(self.input_shape)})\n{onnx.printer.to_text(self.model.graph)}"


@dataclass
class GraphBuilder:
    """Accumulates nodes and initializers; ``pool`` holds the float tensors ops may read."""

    rng: np.random.Generator
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    pool: list[Tensor] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    _count: int = 0

    def fresh(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def const(self, arr: np.ndarray, prefix: str = "c", as_node: bool = False) -> str:
        """An initializer (or a Constant node) holding ``arr``."""
        name = self.fresh(prefix)
        if as_node:
            self.nodes.append(
                helper.make_node(
                    "Constant", [], [name], name=self.fresh("Constant"), value=numpy_helper.from_array(arr)
                )
            )
        else:
            self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def ints(self, values) -> str:
        return self.const(np.asarray(list(values), np.int64), "i")

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> list[str]:
        outs = [self.fresh(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.fresh(op), **attrs))
        return outs

    def floats(self, shape, magnitude: float = 1.0) -> np.ndarray:
        return (self.rng.standard_normal(shape) * magnitude).astype(np.float32)

    def emit(self, op: str, name: str, shape: tuple[int, ...]) -> Tensor | None:
        if math.prod(shape) > MAX_ELEMENTS or any(d < 1 for d in shape):
            return None
        t = Tensor(name, tuple(int(d) for d in shape))
        self.pool.append(t)
        self.ops.append(op)
        return t


Draw = Callable  # hypothesis draw function
Rule = Callable[[Draw, GraphBuilder, Tensor], "Tensor | None"]


def _axis(draw, rank: int) -> int:
    """A valid axis, sometimes negative."""
    a = draw(st.integers(0, rank - 1))
    return a - rank if draw(st.booleans()) else a


def _broadcast_shape(draw, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape that broadcasts to ``shape`` (maybe of lower rank, maybe all ones)."""
    drop = draw(st.integers(0, len(shape)))
    tail = shape[drop:]
    return tuple(d if draw(st.booleans()) else 1 for d in tail)


# ---------------------------------------------------------------------------
# Op rules: each takes (draw, builder, input tensor) and returns the new tensor or
# None when the rule does not apply to that input.


def conv(draw, b: GraphBuilder, t: Tensor):
    if len(t.shape) != 4:
        return None
    n, c, h, w = t.shape
    groups = draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
    m = groups * draw(st.integers(1, max(1, 8 // groups)))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    attrs: dict = {"kernel_shape": list(k), "strides": list(s), "dilations": list(d), "group": groups}
    ext = [d[i] * (k[i] - 1) + 1 for i in range(2)]
    if auto_pad == "NOTSET":
        pads = [draw(st.integers(0, k[i] - 1)) for i in (0, 1)] + [draw(st.integers(0, k[i] - 1)) for i in (0, 1)]
        attrs["pads"] = pads
        out = [(x + pads[i] + pads[i + 2] - ext[i]) // s[i] + 1 for i, x in enumerate((h, w))]
    else:
        attrs["auto_pad"] = auto_pad
        if auto_pad == "VALID":
            out = [(x - ext[i]) // s[i] + 1 for i, x in enumerate((h, w))]
        else:
            out = [-(-x // s[i]) for i, x in enumerate((h, w))]
    if min(out) < 1 or (auto_pad.startswith("SAME") and d != (1, 1)):
        return None  # onnxruntime has no SAME padding with dilation
    fan_in = (c // groups) * k[0] * k[1]
    mag = draw(st.sampled_from(MAGNITUDES))
    wname = b.const(b.floats((m, c // groups, *k), mag / math.sqrt(fan_in)), "W")
    inputs = [t.name, wname]
    if draw(st.booleans()):
        inputs.append(b.const(b.floats((m,), mag), "B"))
    (y,) = b.node("Conv", inputs, **attrs)
    return b.emit("Conv", y, (n, m, *out))


def batchnorm(draw, b: GraphBuilder, t: Tensor):
    if len(t.shape) < 2:
        return None
    c = t.shape[1]
    mag = draw(st.sampled_from(MAGNITUDES))
    scale = b.const(b.rng.uniform(0.5, 1.5, c).astype(np.float32) * np.float32(mag), "bn_scale")
    bias = b.const(b.floats((c,), mag), "bn_bias")
    mean = b.const(b.floats((c,), mag), "bn_mean")
    var = b.const(b.rng.uniform(0.2, 2.0, c).astype(np.float32) * np.float32(mag), "bn_var")
    eps = draw(st.sampled_from([1e-5, 1e-3]))
    (y,) = b.node("BatchNormalization", [t.name, scale, bias, mean, var], epsilon=eps)
    return b.emit("BatchNormalization", y, t.shape)


def activation(draw, b: GraphBuilder, t: Tensor):
    op = draw(st.sampled_from(["Relu", "Sigmoid", "Tanh", "LeakyRelu", "Clip", "HardSwish", "HardSigmoid", "Gelu"]))
    if op == "LeakyRelu":
        (y,) = b.node(op, [t.name], alpha=draw(st.sampled_from([0.01, 0.1, 0.2])))
    elif op == "HardSigmoid":
        (y,) = b.node(op, [t.name], alpha=draw(st.sampled_from([0.2, 1 / 6])), beta=0.5)
    elif op == "Clip":
        lo = draw(st.sampled_from([None, -1.0, 0.0]))
        hi = draw(st.sampled_from([None, 1.0, 6.0]))
        inputs = [t.name, "" if lo is None else b.const(np.array(lo, np.float32)), ""]
        if hi is not None:
            inputs[2] = b.const(np.array(hi, np.float32))
        while inputs[-1] == "":
            inputs.pop()
        (y,) = b.node(op, inputs)
    elif op == "Gelu":
        # The erf form exporters emit: x * 0.5 * (1 + erf(x / sqrt(2))).
        (d,) = b.node("Div", [t.name, b.const(np.array(math.sqrt(2.0), np.float32))])
        (e,) = b.node("Erf", [d])
        (a,) = b.node("Add", [e, b.const(np.array(1.0, np.float32))])
        (m,) = b.node("Mul", [t.name, a])
        (y,) = b.node("Mul", [m, b.const(np.array(0.5, np.float32))])
    else:
        (y,) = b.node(op, [t.name])
    return b.emit(op, y, t.shape)


def binary_const(draw, b: GraphBuilder, t: Tensor):
    op = draw(st.sampled_from(["Add", "Sub", "Mul", "Div"]))
    shape = _broadcast_shape(draw, t.shape)
    mag = draw(st.sampled_from(MAGNITUDES))
    if op == "Div":
        vals = b.rng.uniform(0.5, 2.0, shape) * b.rng.choice([-1.0, 1.0], shape) * mag
    else:
        vals = b.rng.standard_normal(shape) * mag
    c = b.const(np.asarray(vals, np.float32).reshape(shape), as_node=draw(st.booleans()))
    swap = op != "Div" and draw(st.booleans())
    (y,) = b.node(op, [c, t.name] if swap else [t.name, c])
    return b.emit(op, y, t.shape)


def binary_tensor(draw, b: GraphBuilder, t: Tensor):
    """Add/Sub/Mul of two pool tensors of the same shape (often the same tensor twice)."""
    others = [o for o in b.pool if o.shape == t.shape]
    other = draw(st.sampled_from(others))
    op = draw(st.sampled_from(["Add", "Sub", "Mul"]))
    (y,) = b.node(op, [t.name, other.name])
    return b.emit(op + "(x,y)", y, t.shape)


def matmul(draw, b: GraphBuilder, t: Tensor):
    if len(t.shape) not in (2, 3):
        return None
    k = t.shape[-1]
    n = draw(st.integers(1, 16))
    mag = draw(st.sampled_from(MAGNITUDES))
    (y,) = b.node("MatMul", [t.name, b.const(b.floats((k, n), mag / math.sqrt(k)), "W")])
    return b.emit("MatMul", y, (*t.shape[:-1], n))


def gemm(draw, b: GraphBuilder, t: Tensor):
    if len(t.shape) != 2:
        return None
    k = t.shape[1]
    n = draw(st.integers(1, 16))
    trans_b = draw(st.booleans())
    mag = draw(st.sampled_from(MAGNITUDES))
    w = b.floats((n, k) if trans_b else (k, n), mag / math.sqrt(k))
    inputs = [t.name, b.const(w, "W")]
    if draw(st.booleans()):
        inputs.append(b.const(b.floats(draw(st.sampled_from([(n,), (1, n)])), mag), "B"))
    attrs = {
        "transB": int(trans_b),
        "alpha": draw(st.sampled_from([1.0, 0.5])),
        "beta": draw(st.sampled_from([1.0, 2.0])),
    }
    (y,) = b.node("Gemm", inputs, **attrs)
    return b.emit("Gemm", y, (t.shape[0], n))


def concat(draw, b: GraphBuilder, t: Tensor):
    axis = _axis(draw, len(t.shape))
    ax = axis % len(t.shape)

    def fits(o: Tensor) -> bool:
        return len(o.shape) == len(t.shape) and all(o.shape[i] == t.shape[i] for i in range(len(t.shape)) if i != ax)

    others = [o for o in b.pool if fits(o)]
    parts = [t.name]
    size = t.shape[ax]
    for _ in range(draw(st.integers(1, 2))):
        if draw(st.booleans()):
            o = draw(st.sampled_from(others))
            parts.append(o.name)
            size += o.shape[ax]
        else:
            extra = draw(st.integers(1, 3))
            shape = tuple(extra if i == ax else d for i, d in enumerate(t.shape))
            parts.append(b.const(b.floats(shape, draw(st.sampled_from(MAGNITUDES)))))
            size += extra
    (y,) = b.node("Concat", parts, axis=axis)
    return b.emit("Concat", y, tuple(size if i == ax else d for i, d in enumerate(t.shape)))


def split(draw, b: GraphBuilder, t: Tensor):
    splittable = [i for i, d in enumerate(t.shape) if d >= 2]
    if not splittable:
        return None
    ax = draw(st.sampled_from(splittable))
    dim = t.shape[ax]
    if draw(st.booleans()) and dim % 2 == 0:
        sizes = [dim // 2, dim // 2]
        outs = b.node("Split", [t.name], 2, axis=ax)
    else:
        first = draw(st.integers(1, dim - 1))
        sizes = [first, dim - first]
        outs = b.node("Split", [t.name, b.ints(sizes)], 2, axis=ax)
    result = None
    for name, size in zip(outs, sizes):
        result = b.emit("Split", name, tuple(size if i == ax else d for i, d in enumerate(t.shape)))
    return result


def slice_(draw, b: GraphBuilder, t: Tensor):
    rank = len(t.shape)
    axes = draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True))
    starts, ends, steps, shape = [], [], [], list(t.shape)
    for a in axes:
        dim = t.shape[a]
        step = draw(st.sampled_from([1, 1, 2, -1, -2]))
        start = draw(st.integers(-dim - 2, dim + 1))
        end = draw(st.sampled_from([draw(st.integers(-dim - 2, dim + 2)), 2**62 if step > 0 else -(2**62)]))
        n = _slice_len(dim, start, end, step)
        if n < 1:
            return None
        shape[a] = n
        starts.append(start)
        ends.append(end)
        steps.append(step)
    axes_in = [a - rank if draw(st.booleans()) else a for a in axes]
    (y,) = b.node("Slice", [t.name, b.ints(starts), b.ints(ends), b.ints(axes_in), b.ints(steps)])
    return b.emit("Slice", y, tuple(shape))


def _slice_len(dim: int, start: int, end: int, step: int) -> int:
    """Output length of ONNX Slice on one axis (the spec's clamping, which differs from
    Python's for negative steps with a start below -dim)."""
    start += dim if start < 0 else 0
    end += dim if end < 0 else 0
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return len(range(start, end, step))


def _factor(draw, total: int, parts: int) -> list[int]:
    out = []
    for _ in range(parts - 1):
        divisors = [d for d in range(1, total + 1) if total % d == 0]
        f = draw(st.sampled_from(divisors))
        out.append(f)
        total //= f
    return [*out, total]


def reshape(draw, b: GraphBuilder, t: Tensor):
    rest = math.prod(t.shape[1:])
    dims = [t.shape[0], *_factor(draw, rest, draw(st.integers(1, 3)))]
    spec = list(dims)
    if draw(st.booleans()):
        spec[draw(st.integers(0, len(spec) - 1))] = -1
    for i in range(min(len(spec), len(t.shape))):  # 0 copies the input's dim
        if spec[i] == t.shape[i] and draw(st.booleans()):
            spec[i] = 0
    if spec.count(-1) and 0 in spec and dims[spec.index(-1)] == 0:
        return None
    (y,) = b.node("Reshape", [t.name, b.ints(spec)])
    return b.emit("Reshape", y, tuple(dims))


def flatten(draw, b: GraphBuilder, t: Tensor):
    axis = draw(st.integers(0, len(t.shape)))
    (y,) = b.node("Flatten", [t.name], axis=axis)
    return b.emit("Flatten", y, (math.prod(t.shape[:axis]), math.prod(t.shape[axis:])))


def transpose(draw, b: GraphBuilder, t: Tensor):
    perm = draw(st.permutations(range(len(t.shape))))
    (y,) = b.node("Transpose", [t.name], perm=list(perm))
    return b.emit("Transpose", y, tuple(t.shape[p] for p in perm))


def unsqueeze(draw, b: GraphBuilder, t: Tensor):
    if len(t.shape) >= 5:
        return None
    rank = len(t.shape) + 1
    a = draw(st.integers(0, rank - 1))
    shape = list(t.shape)
    shape.insert(a, 1)
    (y,) = b.node("Unsqueeze", [t.name, b.ints([a - rank if draw(st.booleans()) else a])])
    return b.emit("Unsqueeze", y, tuple(shape))


def squeeze(draw, b: GraphBuilder, t: Tensor):
    ones = [i for i, d in enumerate(t.shape) if d == 1]
    if not ones or len(t.shape) <= 1:
        return None
    axes = draw(st.lists(st.sampled_from(ones), min_size=1, unique=True))
    if len(axes) == len(t.shape):
        axes = axes[:-1]
    shape = tuple(d for i, d in enumerate(t.shape) if i not in axes)
    (y,) = b.node("Squeeze", [t.name, b.ints(axes)])
    return b.emit("Squeeze", y, shape)


def softmax(draw, b: GraphBuilder, t: Tensor):
    (y,) = b.node("Softmax", [t.name], axis=_axis(draw, len(t.shape)))
    return b.emit("Softmax", y, t.shape)


def pool(draw, b: GraphBuilder, t: Tensor):
    if len(t.shape) != 4:
        return None
    n, c, h, w = t.shape
    op = draw(st.sampled_from(["MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool"]))
    if op.startswith("Global"):
        (y,) = b.node(op, [t.name])
        return b.emit(op, y, (n, c, 1, 1))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = [draw(st.integers(0, k[i % 2] - 1)) for i in range(4)]
    ceil_mode = draw(st.integers(0, 1))
    out = []
    for i, x in enumerate((h, w)):
        span = x + pads[i] + pads[i + 2] - k[i]
        if span < 0:
            return None
        o = (-(-span // s[i]) if ceil_mode else span // s[i]) + 1
        if ceil_mode and (o - 1) * s[i] >= x + pads[i]:
            # The last window would start in the end padding: onnx's shape inference
            # keeps it, onnxruntime drops it. Not a case to test converters on.
            return None
        out.append(o)
    attrs = {"kernel_shape": list(k), "strides": list(s), "pads": pads, "ceil_mode": ceil_mode}
    if op == "AveragePool":
        attrs["count_include_pad"] = draw(st.integers(0, 1))
    (y,) = b.node(op, [t.name], **attrs)
    return b.emit(op, y, (n, c, *out))


def resize(draw, b: GraphBuilder, t: Tensor):
    if len(t.shape) != 4:
        return None
    n, c, h, w = t.shape
    mode = draw(st.sampled_from(["nearest", "linear"]))
    ctm = draw(st.sampled_from(["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel"]))
    attrs = {"mode": mode, "coordinate_transformation_mode": ctm}
    if mode == "nearest":
        attrs["nearest_mode"] = draw(st.sampled_from(["floor", "round_prefer_floor", "round_prefer_ceil"]))
    if draw(st.booleans()):
        sh, sw = draw(st.sampled_from([1.0, 2.0, 0.5])), draw(st.sampled_from([1.0, 2.0, 3.0]))
        out = (math.floor(h * sh), math.floor(w * sw))
        if min(out) < 1:
            return None
        scales = b.const(np.array([1, 1, sh, sw], np.float32))
        (y,) = b.node("Resize", [t.name, "", scales], **attrs)
    else:
        out = (draw(st.integers(1, 2 * h)), draw(st.integers(1, 2 * w)))
        (y,) = b.node("Resize", [t.name, "", "", b.ints([n, c, *out])], **attrs)
    return b.emit("Resize", y, (n, c, *out))


def pad(draw, b: GraphBuilder, t: Tensor):
    rank = len(t.shape)
    mode = draw(st.sampled_from(["constant", "reflect", "edge"]))
    # Only spatial axes (from 2 on; the last one for NC): what converters meet in practice.
    axes = list(range(2, rank)) or [rank - 1]
    pads = [0] * (2 * rank)
    for a in axes:
        for side in (0, rank):
            hi = t.shape[a] - 1 if mode == "reflect" else 2
            lo = -1 if mode == "constant" and t.shape[a] > 2 else 0
            pads[a + side] = draw(st.integers(lo, max(lo, hi)))
    shape = tuple(d + pads[i] + pads[i + rank] for i, d in enumerate(t.shape))
    inputs = [t.name, b.ints(pads)]
    if mode == "constant" and draw(st.booleans()):
        inputs.append(b.const(np.array(draw(st.sampled_from([0.0, 1.5, -2.0])), np.float32)))
    (y,) = b.node("Pad", inputs, mode=mode)
    return b.emit("Pad", y, shape)


def reduce(draw, b: GraphBuilder, t: Tensor):
    rank = len(t.shape)
    op = draw(st.sampled_from(["ReduceMean", "ReduceSum"]))
    axes = sorted(draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True)))
    keep = draw(st.integers(0, 1))
    if not keep and len(axes) == rank:
        keep = 1
    given = [a - rank if draw(st.booleans()) else a for a in axes]
    if op == "ReduceMean":  # axes is an attribute until opset 18
        (y,) = b.node(op, [t.name], axes=given, keepdims=keep)
    else:
        (y,) = b.node(op, [t.name, b.ints(given)], keepdims=keep)
    shape = tuple(1 if i in axes else d for i, d in enumerate(t.shape) if keep or i not in axes)
    return b.emit(op, y, shape)


def no_op(draw, b: GraphBuilder, t: Tensor):
    op = draw(st.sampled_from(["Identity", "Dropout", "Cast"]))
    if op == "Cast":
        (y,) = b.node(op, [t.name], to=TensorProto.FLOAT)
    elif op == "Dropout":
        y = b.node(op, [t.name], draw(st.integers(1, 2)))[0]
    else:
        (y,) = b.node(op, [t.name])
    return b.emit(op, y, t.shape)


def shape_reshape(draw, b: GraphBuilder, t: Tensor):
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, the way exporters flatten.

    Keeps the first ``keep`` dims (read from the tensor's own shape at run time) and
    folds the rest into -1.
    """
    rank = len(t.shape)
    if rank < 2:
        return None
    keep = draw(st.integers(1, rank - 1))
    (shp,) = b.node("Shape", [t.name])
    parts = []
    for i in range(keep):
        (g,) = b.node("Gather", [shp, b.const(np.array(i, np.int64), "idx")], axis=0)
        (u,) = b.node("Unsqueeze", [g, b.ints([0])])
        parts.append(u)
    (spec,) = b.node("Concat", [*parts, b.ints([-1])], axis=0)
    (y,) = b.node("Reshape", [t.name, spec])
    return b.emit("Shape->Reshape", y, (*t.shape[:keep], math.prod(t.shape[keep:])))


RULES: dict[str, Rule] = {
    "conv": conv,
    "batchnorm": batchnorm,
    "activation": activation,
    "binary_const": binary_const,
    "binary_tensor": binary_tensor,
    "matmul": matmul,
    "gemm": gemm,
    "concat": concat,
    "split": split,
    "slice": slice_,
    "reshape": reshape,
    "flatten": flatten,
    "transpose": transpose,
    "unsqueeze": unsqueeze,
    "squeeze": squeeze,
    "softmax": softmax,
    "pool": pool,
    "resize": resize,
    "pad": pad,
    "reduce": reduce,
    "no_op": no_op,
    "shape_reshape": shape_reshape,
}

# Which rules may apply to a tensor of each rank (rules still check the details).
_BY_RANK = {
    2: [r for r in RULES if r not in ("conv", "pool", "resize")],
    3: [r for r in RULES if r not in ("conv", "pool", "resize", "gemm")],
    4: [r for r in RULES if r not in ("matmul", "gemm")],
}
_BY_RANK[1] = [r for r in _BY_RANK[2] if r not in ("batchnorm", "flatten", "shape_reshape", "softmax")]
_BY_RANK[5] = [r for r in _BY_RANK[3] if r not in ("batchnorm", "matmul", "unsqueeze")]

# Drawn twice as often: the ops real CNNs are made of.
_FREQUENT = ("conv", "activation", "binary_const", "pool", "batchnorm")

INPUT_SHAPES = {
    "NCHW": st.tuples(st.integers(1, 2), st.integers(1, 8), st.integers(1, 12), st.integers(1, 12)),
    "NC": st.tuples(st.integers(1, 2), st.integers(1, 32)),
    "NLC": st.tuples(st.integers(1, 2), st.integers(1, 12), st.integers(1, 16)),
}


@st.composite
def onnx_graphs(
    draw,
    layouts: tuple[str, ...] = ("NCHW", "NCHW", "NC", "NLC"),
    max_ops: int = 8,
    rules: tuple[str, ...] | None = None,
) -> GraphCase:
    """A random valid float32 ONNX model with one input ``x`` and one or more outputs."""
    layout = draw(st.sampled_from(layouts))
    shape = draw(INPUT_SHAPES[layout])
    b = GraphBuilder(np.random.default_rng(draw(st.integers(0, 2**16))))
    x = Tensor("x", shape)
    b.pool.append(x)
    if draw(st.booleans()):
        # A constant of the input's shape: rules applied to it build subgraphs that
        # constant folding must evaluate, and binary_tensor can join them with x.
        k = b.const(b.floats(shape, draw(st.sampled_from(MAGNITUDES))), "k", as_node=draw(st.booleans()))
        b.pool.append(Tensor(k, shape))
    n_ops = draw(st.integers(1, max_ops))
    attempts = 0
    last = None
    while len(b.ops) < n_ops and attempts < 4 * n_ops:
        attempts += 1
        # Mostly extend the newest tensor (deep chains); sometimes branch from any.
        src = b.pool[-1] if draw(st.booleans()) else draw(st.sampled_from(b.pool))
        names = [r for r in _BY_RANK.get(len(src.shape), []) if rules is None or r in rules]
        names += [r for r in names if r in _FREQUENT]
        if not names:
            continue
        mark = (len(b.nodes), len(b.inits), b._count)
        out = RULES[draw(st.sampled_from(names))](draw, b, src)
        if out is None:  # rejected (too large, empty): drop what it built
            del b.nodes[mark[0] :], b.inits[mark[1] :]
            continue
        last = out
    if last is None:
        (y,) = b.node("Relu", ["x"])
        last = b.emit("Relu", y, shape)
    outputs = [last]
    for t in b.pool[1:]:  # a few more outputs: intermediate tensors also read by others
        if t is not last and len(outputs) < 3 and draw(st.integers(0, 4)) == 0:
            outputs.append(t)
    graph = helper.make_graph(
        b.nodes,
        "property",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.shape)) for t in outputs],
        initializer=b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    # The grammar must only produce valid models: a failure here is a bug in a rule.
    onnx.checker.check_model(model, full_check=True)
    return GraphCase(model, list(b.ops), tuple(shape))
