"""Output sizes of a node computed before the node is evaluated.

Constant folding must know what a node will allocate before running it: an
``Expand``/``Tile``/``ConstantOfShape``/``Range`` reads its output shape from a
small constant input, and a broadcasting op or ``MatMul`` of two small constants
can still be huge (``[60000, 1] + [1, 60000]``). :func:`output_nbytes` computes
the size from the input shapes and the small constant inputs only, never from
the node's output.

Cases:
1. ``ConstantOfShape``: the product of its shape input.
2. ``Expand``: the broadcast of the data shape and the shape input.
3. ``Tile``: the data shape times the repeats.
4. ``Range``: ``ceil((limit - start) / delta)`` elements.
5. Broadcasting element-wise ops, ``Where``, ``MatMul``, ``Gemm``: the broadcast shape.
6. ``Gather``/``GatherElements``/``OneHot``/``Pad``/``Resize``/``Upsample``/``Concat``:
   from the indices, pads, scales or sizes.
7. ``Cast``: the input's element count at the target type.
Other ops produce no more than they read: the sum of their input bytes (or the
inferred output shapes when they are larger).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx

from mconv.passes.graph import attr

ShapeOf = Callable[[str], "tuple[int, ...] | None"]
ValueOf = Callable[[str], "np.ndarray | None"]
ItemOf = Callable[[str], int]

_BROADCAST = {
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "And", "Or", "Xor", "Equal", "Less", "Greater",
    "LessOrEqual", "GreaterOrEqual", "Max", "Min", "Sum", "Mean", "Where", "BitShift", "PRelu",
    "BitwiseAnd", "BitwiseOr", "BitwiseXor",
}  # fmt: skip
# Ops whose output can be far larger than their inputs: a size they cannot
# compute (unknown input shape, non-constant shape input) means "do not fold".
EXPANDING = _BROADCAST | {
    "ConstantOfShape", "Expand", "Tile", "Range", "MatMul", "Gemm", "Gather", "GatherElements",
    "GatherND", "OneHot", "Pad", "Resize", "Upsample", "Concat", "Cast", "EyeLike", "Einsum",
    "ConvTranspose", "CumSum", "Trilu", "ScatterND", "ScatterElements", "DepthToSpace",
}  # fmt: skip


def _prod(shape) -> int:
    return math.prod(int(d) for d in shape)


def _broadcast(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for k in range(rank):
        dims = [s[k - rank + len(s)] for s in shapes if k - rank + len(s) >= 0]
        big = max(dims, default=1)
        out.append(0 if 0 in dims else big)
    return tuple(out)


def _ints(v: np.ndarray | None) -> list[int] | None:
    return None if v is None else [int(x) for x in np.asarray(v).reshape(-1)]


# Each function: (node, inputs, input shapes (None: unknown), value) -> element count or None.
_Count = Callable[[onnx.NodeProto, list[str], list, ValueOf], "int | None"]


def _all_known(ins: list[str], s: list) -> list[tuple[int, ...]] | None:
    """The input shapes when every present input's is known."""
    known = [x for x in s if x is not None]
    return None if len(known) < len([i for i in ins if i]) else known


def _constant_of_shape(node, ins, s, value) -> int | None:
    dims = _ints(value(ins[0]))
    return None if dims is None else _prod(dims)


def _expand(node, ins, s, value) -> int | None:
    dims = _ints(value(ins[1]))
    return None if dims is None or s[0] is None else _prod(_broadcast([s[0], tuple(dims)]))


def _tile(node, ins, s, value) -> int | None:
    reps = _ints(value(ins[1]))
    return None if reps is None or s[0] is None else _prod(s[0]) * _prod(reps)


def _range(node, ins, s, value) -> int | None:
    v = [value(i) for i in ins[:3]]
    if any(x is None for x in v):
        return None
    start, limit, delta = (float(np.asarray(x).reshape(-1)[0]) for x in v)
    return 0 if delta == 0 else max(0, math.ceil((limit - start) / delta))


def _first_input(node, ins, s, value) -> int | None:
    return None if s[0] is None else _prod(s[0])


def _broadcasting(node, ins, s, value) -> int | None:
    known = _all_known(ins, s)
    return None if known is None else _prod(_broadcast(known))


def _matmul(node, ins, s, value) -> int | None:
    if s[0] is None or s[1] is None or not s[0] or not s[1]:
        return None
    a, b = s[0], s[1]
    if node.op_type == "Gemm":
        m = a[1] if attr(node, "transA", 0) else a[0]
        n = b[0] if attr(node, "transB", 0) else b[1]
        return m * n
    m = a[-2] if len(a) > 1 else 1
    n = b[-1] if len(b) > 1 else 1
    return _prod(_broadcast([a[:-2], b[:-2]])) * m * n


def _gather(node, ins, s, value) -> int | None:
    if s[0] is None or s[1] is None or not s[0]:
        return None
    axis = int(attr(node, "axis", 0)) % len(s[0])
    return _prod(s[1]) * _prod(s[0]) // max(1, s[0][axis])


def _gather_elements(node, ins, s, value) -> int | None:
    return None if s[1] is None else _prod(s[1])


def _one_hot(node, ins, s, value) -> int | None:
    depth = _ints(value(ins[1]))
    return None if depth is None or s[0] is None else _prod(s[0]) * abs(depth[0])


def _pad(node, ins, s, value) -> int | None:
    pads = _ints(value(ins[1])) if len(ins) > 1 else _ints(attr(node, "pads"))
    if pads is None or s[0] is None:
        return None
    if len(ins) > 3 and ins[3]:
        return None  # axes given: not worth the corner cases
    r = len(s[0])
    return _prod(max(0, d + pads[k] + pads[k + r]) for k, d in enumerate(s[0]))


def _resize(node, ins, s, value) -> int | None:
    if s[0] is None:
        return None
    sizes = _ints(value(ins[3])) if len(ins) > 3 and ins[3] else None
    if sizes:
        return _prod(sizes) if len(sizes) == len(s[0]) else None
    si = 2 if node.op_type == "Resize" else 1
    scales = value(ins[si]) if len(ins) > si and ins[si] else attr(node, "scales")
    if scales is None:
        return None
    sc = [float(x) for x in np.asarray(scales).reshape(-1)]
    return _prod(math.floor(d * f) for d, f in zip(s[0], sc)) if len(sc) == len(s[0]) else None


def _concat(node, ins, s, value) -> int | None:
    known = _all_known(ins, s)
    return None if known is None else sum(_prod(x) for x in known)


def _largest_input(node, ins, s, value) -> int | None:
    """Other expanding ops: at least their largest input (None when any is unknown)."""
    known = _all_known(ins, s)
    return None if not known else max(_prod(x) for x in known)


_COUNTS: dict[str, _Count] = {
    "ConstantOfShape": _constant_of_shape,
    "Expand": _expand,
    "Tile": _tile,
    "Range": _range,
    "EyeLike": _first_input,
    **dict.fromkeys(_BROADCAST, _broadcasting),
    "MatMul": _matmul,
    "Gemm": _matmul,
    "Gather": _gather,
    "GatherElements": _gather_elements,
    "OneHot": _one_hot,
    "Pad": _pad,
    "Resize": _resize,
    "Upsample": _resize,
    "Concat": _concat,
}


def _elements(node: onnx.NodeProto, shape: ShapeOf, value: ValueOf) -> int | None:
    """Element count of the first output, or None when it cannot be computed."""
    ins = list(node.input)
    fn = _COUNTS.get(node.op_type) or (_largest_input if node.op_type in EXPANDING else None)
    if fn is None:
        return None
    return fn(node, ins, [shape(i) if i else None for i in ins], value)


def output_nbytes(
    node: onnx.NodeProto,
    shape: ShapeOf,
    value: ValueOf,
    itemsize: ItemOf,
    inferred: ShapeOf | None = None,
) -> int | None:
    """Bytes ``node``'s outputs will take, or None when they cannot be bounded.

    ``shape(name)`` gives a tensor's static shape, ``value(name)`` a small constant's
    value (only shape-like inputs are asked for), ``itemsize(name)`` the element size
    (0 when unknown), ``inferred(name)`` an output's shape from shape inference.
    """
    outs = [o for o in node.output if o]
    widest = max((itemsize(o) for o in outs), default=0)
    if not widest and node.input:  # output type unknown: the data input's (Expand, Tile, Add, ...)
        data = node.input[1] if node.op_type == "Where" and len(node.input) > 1 else node.input[0]
        widest = itemsize(data) if data else 0
    widest = widest or 8
    if node.op_type == "Cast":
        to = attr(node, "to")
        widest = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(to)).itemsize if to else 8
    elif node.op_type == "ConstantOfShape":
        v = attr(node, "value")
        widest = onnx.numpy_helper.to_array(v).itemsize if v is not None else 4
    n = _elements(node, shape, value)
    if n is not None:
        return n * widest * max(1, len(outs))
    if node.op_type in EXPANDING:
        return None
    total = 0
    for i in node.input:
        if i:
            s = shape(i)
            if s is None:
                return None
            total += _prod(s) * (itemsize(i) or 8)
    if inferred is not None:
        inf = [inferred(o) for o in outs]
        if all(x is not None for x in inf):
            total = max(total, sum(_prod(x) * widest for x in inf))
    return total
