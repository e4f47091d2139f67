"""Binary element-wise ops with ONNX (numpy) broadcasting.

ncnn's BinaryOp broadcasts like numpy only between Mats of the same rank (a
lower-rank operand is expanded by ncnn's own rules, see ncnn-format.md §3), so
both operands are always brought to the output's rank first: constants become
MemoryData of exactly that rank, dynamic operands get a Reshape.

Cases:
    Add, Sub, Mul, Div, Pow, Max, Min, Mod(fmod=1) -> BinaryOp; a one-element
    constant becomes the scalar form ``1=1 2=b`` (RSUB/RDIV/RPOW when it is the
    left operand); Sum of equal shapes -> Eltwise sum; variadic Sum/Max/Min/Mean
    -> chains.
"""

from __future__ import annotations

import numpy as np

from mconv.targets.ncnn.ir import FLT_MAX
from mconv.targets.ncnn.lower import Ctx, Node, NotLowerable, Tensor, default_keep, nc_shape
from mconv.targets.ncnn.registry import rule

ADD, SUB, MUL, DIV, MAX, MIN, POW, RSUB, RDIV, RPOW = range(10)
FMOD = 12
_REVERSED = {SUB: RSUB, DIV: RDIV, POW: RPOW, ADD: ADD, MUL: MUL, MAX: MAX, MIN: MIN}


def _out_keep(out_shape: tuple[int, ...], dyn: list[Tensor]) -> tuple[int, ...]:
    r = len(out_shape)
    for t in dyn:
        if t.keep is None:
            continue
        off = r - t.rank
        keep = tuple(range(off)) + tuple(a + off for a in t.keep)
        # Axes the operand drops must stay size 1 in the output, and the Mat
        # must fit in ncnn's dims.
        if all(out_shape[a] == 1 for a in range(r) if a not in keep) and len(keep) <= 4:
            return _trim(keep, out_shape)
    return default_keep(out_shape)


def _trim(keep: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Drop leading size-1 axes added by left-padding (keeps Mats small)."""
    k = list(keep)
    while len(k) > 1 and shape[k[0]] == 1 and k[0] == 0:
        k.pop(0)
    return tuple(k)


def _operand_nc(t: Tensor, out_shape: tuple[int, ...], keep: tuple[int, ...]) -> tuple[int, ...]:
    """The ncnn shape operand ``t`` takes in a BinaryOp producing ``out_shape`` with ``keep``."""
    return nc_shape((1,) * (len(out_shape) - t.rank) + tuple(t.shape), keep)


def _operand(ctx: Ctx, t: Tensor, out_shape: tuple[int, ...], keep: tuple[int, ...],
             other_nc: tuple[int, ...] | None = None) -> str:  # fmt: skip
    """The blob of operand ``t`` shaped for the BinaryOp; ``other_nc`` is the other operand's
    ncnn shape (None: the other operand is a scalar parameter)."""
    r = len(out_shape)
    padded = (1,) * (r - t.rank) + tuple(t.shape)
    nc = nc_shape(padded, keep)
    if t.const is not None:
        from mconv.targets.ncnn.lower import sanitize_hint

        return ctx.const_blob(np.asarray(t.const).reshape(padded), nc, sanitize_hint(t.name))
    assert t.blob is not None
    cur = ctx.g.shapes.get(t.blob)
    per_channel = other_nc is None or (len(other_nc) == 3 and other_nc[0] == nc[0] and other_nc[1:] != (1, 1))
    if len(nc) == 3 and nc[1:] == (1, 1) and cur == (nc[0],) and per_channel:
        # A 1-D [C] Mat broadcasts per channel against a (C, H, W) one in ncnn's
        # BinaryOp only when C is the *other* Mat's c (otherwise ncnn takes it along w,
        # e.g. against a (1, H, W) gate): no Reshape for squeeze-excitation.
        return t.blob
    return ctx.reshape(t.blob, nc, name_hint=t.name)


def binary_tensors(
    ctx: Ctx,
    op: int,
    a: Tensor,
    b: Tensor,
    out_shape: tuple[int, ...],
    out_name: str | None = None,
) -> tuple[str, tuple[int, ...] | None]:
    """Emit ``a <op> b`` with numpy broadcasting; returns (blob, keep), keep None for a
    result with more than 4 axes larger than 1 (see :func:`_binary_grouped`)."""
    dyn = [t for t in (a, b) if t.const is None]
    if not dyn:
        raise NotLowerable("both operands constant (fold first)")
    try:
        keep = _out_keep(out_shape, dyn)
    except NotLowerable:
        if sum(d > 1 for d in out_shape) <= 4 or any(t.blob is None for t in dyn):
            raise
        return _binary_grouped(ctx, op, a, b, tuple(out_shape), out_name)
    nc = nc_shape(out_shape, keep)
    for scalar, other, opx in ((b, a, op), (a, b, _REVERSED.get(op))):
        if scalar.const is not None and np.asarray(scalar.const).size == 1 and opx is not None:
            if tuple(np.broadcast_shapes(other.shape, scalar.shape)) != tuple(out_shape):
                continue
            ob = _operand(ctx, other, out_shape, keep)
            value = float(np.asarray(scalar.const).ravel()[0])
            out = ctx.emit("BinaryOp", [ob], nc, {0: opx, 1: 1, 2: value}, out_name=out_name)
            return out, keep
    ab = _operand(ctx, a, out_shape, keep, _operand_nc(b, out_shape, keep))
    bb = _operand(ctx, b, out_shape, keep, _operand_nc(a, out_shape, keep))
    out = ctx.emit("BinaryOp", [ab, bb], nc, {0: op}, out_name=out_name)
    return out, keep


def _binary_grouped(
    ctx: Ctx, op: int, a: Tensor, b: Tensor, out_shape: tuple[int, ...], out_name: str | None
) -> tuple[str, tuple[int, ...] | None]:
    """``a <op> b`` with more axes than a Mat (BoTNet's relative-position logits, 5-D):
    adjacent output axes where each operand is present / broadcast alike merge into one
    Mat axis (the values stay in place), up to 4 runs. Returns (blob, keep), keep None
    when the result still has more than 4 axes (bound flat, for a reshaping consumer)."""
    r = len(out_shape)
    pads = [(1,) * (r - t.rank) + tuple(t.shape) for t in (a, b)]
    runs: list[list] = []  # [a size, b size, out size, class]
    for i, o in enumerate(out_shape):
        if o == 1:
            continue
        cls = (pads[0][i] == o, pads[1][i] == o)
        if runs and runs[-1][3] == cls:
            runs[-1][0] *= pads[0][i]
            runs[-1][1] *= pads[1][i]
            runs[-1][2] *= o
        else:
            runs.append([pads[0][i], pads[1][i], o, cls])
    if len(runs) > 4:
        raise NotLowerable(f"broadcast to {list(out_shape)}: more than 4 alternating axis runs")
    blobs = []
    for k, t in enumerate((a, b)):
        nc = tuple(int(run[k]) for run in runs)
        if t.const is not None:
            blobs.append(ctx.const_blob(np.asarray(t.const, np.float32).reshape(nc), nc, "operand"))
        else:
            assert t.blob is not None
            blobs.append(ctx.reshape(t.blob, nc, name_hint=t.name))
    dst = tuple(int(run[2]) for run in runs)
    blob = ctx.emit("BinaryOp", blobs, dst, {0: op}, out_name=out_name)
    try:
        keep = default_keep(out_shape)
    except NotLowerable:
        return blob, None
    return ctx.reshape(blob, nc_shape(out_shape, keep)), keep


def _binary_rule(op: int):
    def lower(ctx: Ctx, node: Node) -> None:
        a, b = node.inputs[0], node.inputs[1]
        assert a is not None and b is not None
        out = node.outputs[0]
        blob, keep = binary_tensors(ctx, op, a, b, ctx.out_shape(), out)
        ctx.bind(out, blob, keep)

    return lower


for _op, _code in (
    ("Sub", SUB),
    ("Mul", MUL),
):
    rule(_op)(_binary_rule(_code))


@rule("Add")
def add(ctx: Ctx, node: Node) -> None:
    """BinaryOp add; a constant additive mask with -inf entries whose sum only feeds a
    Softmax gets -FLT_MAX there instead. A row with an unmasked entry comes out the
    same (exp(-FLT_MAX - max) is 0 as exp(-inf) is), and a fully masked row is
    uniform instead of NaN, so the `Where(row_all_masked, 0, softmax)` that
    attention graphs add after it reads 0 rather than NaN (ncnn's Where is
    arithmetic: 0 * NaN is NaN)."""
    a, b = node.inputs[0], node.inputs[1]
    assert a is not None and b is not None
    out = node.outputs[0]
    a2, b2 = _no_neg_inf(a), _no_neg_inf(b)
    if (a2 is not a or b2 is not b) and _only_softmax(ctx, out):
        a, b = a2, b2
    blob, keep = binary_tensors(ctx, ADD, a, b, ctx.out_shape(), out)
    ctx.bind(out, blob, keep)


def _no_neg_inf(t: Tensor) -> Tensor:
    if t.const is None or not np.issubdtype(np.asarray(t.const).dtype, np.floating):
        return t
    v = np.asarray(t.const, np.float32)
    if not np.isneginf(v).any():
        return t
    return Tensor(t.name, t.shape, np.dtype("float32"), const=np.where(np.isneginf(v), np.float32(-FLT_MAX), v))


def _only_softmax(ctx: Ctx, name: str, depth: int = 0) -> bool:
    """Whether tensor ``name`` is read only by Softmax nodes (through Cast / Identity)
    and is not a graph output."""
    if name in ctx.prep.outputs or depth > 4:
        return False
    readers = [n for n in ctx.prep.nodes if name in n.input]
    if not readers:
        return False
    for n in readers:
        if n.op_type in ("Cast", "Identity") and ctx.prep.dtypes.get(n.output[0], np.dtype("float32")).kind == "f":
            if not _only_softmax(ctx, n.output[0], depth + 1):
                return False
        elif n.op_type != "Softmax" or list(n.input).index(name) != 0:
            return False
    return True


UNARY_FLOOR, UNARY_TRUNC = 2, 19


def _integer(ctx: Ctx, node: Node) -> bool:
    return ctx.prep.dtypes.get(node.outputs[0], np.dtype("float32")).kind in "iu"


@rule("Div")
def div(ctx: Ctx, node: Node) -> None:
    """Float Div -> BinaryOp div; integer Div (index arithmetic, e.g. ``idx // classes``
    in a detection head) truncates toward zero as onnxruntime does: div + UnaryOp trunc
    (exact for the integer values float Mats hold, below 2**23)."""
    a, b = node.inputs[0], node.inputs[1]
    assert a is not None and b is not None
    out = node.outputs[0]
    if not _integer(ctx, node):
        _binary_rule(DIV)(ctx, node)
        return
    d = _scalar_divisor(ctx, a, b)
    if d is not None:
        # ncnn may divide by a scalar as a product with its reciprocal (its AVX-512 path
        # does), so 15 / 3 can come out as 4.9999995 and truncate to 4. The quotient's
        # magnitude floor((|a| + 0.5) / |d|) is exact however the division rounds (the
        # fraction stays >= 0.5 / |d| away from the next integer), then the sign.
        from mconv.targets.ncnn.rules_logic import UNARY_ABS, UNARY_SIGN, binary, scalar, unary

        x = _as_tensor(ctx, a)
        m = unary(ctx, scalar(ctx, scalar(ctx, unary(ctx, x, UNARY_ABS), ADD, 0.5), DIV, abs(d)), UNARY_FLOOR)
        s = unary(ctx, x, UNARY_SIGN)
        q = binary(ctx, MUL, m, s, tuple(x.shape), out if d > 0 else None)
        if d < 0:
            q = scalar(ctx, q, MUL, -1.0, out)
        assert q.blob is not None and q.keep is not None
        ctx.bind(out, q.blob, q.keep)
        return
    blob, keep = binary_tensors(ctx, DIV, a, b, ctx.out_shape())
    ctx.bind(out, ctx.emit("UnaryOp", [blob], nc_shape(ctx.out_shape(), keep), {0: UNARY_TRUNC}, out_name=out), keep)


def _scalar_divisor(ctx: Ctx, a, b) -> float | None:
    """The divisor of an integer Div/Mod when it is one nonzero constant and ``a`` has
    the output's shape (the exact paths below); else None."""
    if b.const is None or np.asarray(b.const).size != 1 or a.const is not None:
        return None
    d = float(np.asarray(b.const).ravel()[0])
    if d == 0 or d != int(d) or tuple(a.shape) != tuple(ctx.out_shape()):
        return None
    return d


def _as_tensor(ctx: Ctx, x) -> Tensor:
    return Tensor(x.name, x.shape, x.dtype, blob=ctx.blob_as(x), keep=x.keep or default_keep(x.shape))


UNARY_SQUARE, UNARY_SQRT, UNARY_RSQRT, UNARY_RECIPROCAL = 4, 5, 6, 15
_POW_UNARY = {2.0: UNARY_SQUARE, 0.5: UNARY_SQRT, -0.5: UNARY_RSQRT, -1.0: UNARY_RECIPROCAL}


@rule("Pow")
def pow_(ctx: Ctx, node: Node) -> None:
    """ncnn's pow is exp(y * log(x)): garbage for a base <= 0 (checked against the
    runtime). A constant exponent therefore becomes exact layers: 1 -> nothing, 2 /
    0.5 / -0.5 / -1 -> UnaryOp square / sqrt / rsqrt / reciprocal, other small
    integers -> products; any other exponent reads max(x, FLT_MIN) (0 ** y = 0 for
    y > 0; a negative base with a fractional exponent is NaN in ONNX anyway), and so
    does an exponent tensor (0 ** y < 0 then comes out as a huge finite number, not inf)."""
    from mconv.targets.ncnn.rules_logic import binary, scalar, unary

    x, e = node.inputs[0], node.inputs[1]
    assert x is not None and e is not None
    out = node.outputs[0]
    ev = float(np.asarray(e.const).ravel()[0]) if e.const is not None and np.asarray(e.const).size == 1 else None
    if ev is None and x.const is None:
        # An exponent tensor: the same max(x, FLT_MIN) read gives 0 ** y = 0 for y > 0
        # and 1 for y = 0 (the unclamped kernel returns ~2.4e38 at x = 0 for any y).
        xc = Tensor(x.name, x.shape, x.dtype, blob=ctx.blob_as(x), keep=x.keep or default_keep(x.shape))
        t = binary(ctx, POW, scalar(ctx, xc, MAX, float(np.finfo(np.float32).tiny)), e, tuple(ctx.out_shape()), out)
        assert t.blob is not None and t.keep is not None
        ctx.bind(out, t.blob, t.keep)
        return
    if ev is None or x.const is not None or tuple(x.shape) != tuple(ctx.out_shape()):
        _binary_rule(POW)(ctx, node)
        return
    x = Tensor(x.name, x.shape, x.dtype, blob=ctx.blob_as(x), keep=x.keep or default_keep(x.shape))
    if ev == 1.0:
        ctx.alias(out, x)
        return
    if ev in _POW_UNARY:
        t = unary(ctx, x, _POW_UNARY[ev], out)
    elif ev == int(ev) and 2 <= abs(ev) <= 4:
        # x**2, then x**3 = x**2 * x, x**4 = x**2 * x**2; a negative power inverts that.
        name = out if ev > 0 else None
        t = unary(ctx, x, UNARY_SQUARE, name if abs(ev) == 2 else None)
        if abs(ev) > 2:
            t = binary(ctx, MUL, t, x if abs(ev) == 3 else t, tuple(x.shape), name)
        if ev < 0:
            t = unary(ctx, t, UNARY_RECIPROCAL, out)
    else:
        t = scalar(ctx, scalar(ctx, x, MAX, float(np.finfo(np.float32).tiny)), POW, ev, out)
    assert t.blob is not None and t.keep is not None
    ctx.bind(out, t.blob, t.keep)


@rule("Mod")
def mod(ctx: Ctx, node: Node) -> None:
    """fmod=1 -> BinaryOp fmod; integer Mod (fmod=0, sign of the divisor) ->
    ``a - floor(a / b) * b``, exact on the integer values float Mats hold (class ids
    from a flattened top-k index)."""
    if int(node.attr("fmod", 0)) == 1:
        _binary_rule(FMOD)(ctx, node)
        return
    if not _integer(ctx, node):
        # Python-style modulo of floats: ncnn's REMAINDER differs on mixed signs
        # (checked against the runtime), and a - floor(a/b)*b rounds differently.
        raise NotLowerable("Mod with fmod=0 of floats")
    from mconv.targets.ncnn.rules_logic import binary

    a, b = node.inputs[0], node.inputs[1]
    assert a is not None and b is not None
    shape = tuple(ctx.out_shape())
    d = _scalar_divisor(ctx, a, b)
    if d is not None:
        # floor(a / d + 0.5 / |d|) is floor(a / d) exactly even when ncnn divides by a
        # product with the reciprocal (see div).
        from mconv.targets.ncnn.rules_logic import scalar, unary

        x = _as_tensor(ctx, a)
        q = unary(ctx, scalar(ctx, scalar(ctx, x, DIV, d), ADD, 0.5 / abs(d)), UNARY_FLOOR)
        qb = scalar(ctx, q, MUL, d)
        blob, keep = binary_tensors(ctx, SUB, a, qb, shape, node.outputs[0])
        ctx.bind(node.outputs[0], blob, keep)
        return
    q, keep = binary_tensors(ctx, DIV, a, b, shape)
    if keep is None:
        raise NotLowerable("Mod over more than 4 axes larger than 1")
    q = ctx.emit("UnaryOp", [q], nc_shape(shape, keep), {0: UNARY_FLOOR})
    qt = Tensor(f"{node.outputs[0]}_q", shape, np.dtype("float32"), blob=q, keep=keep)
    qb = binary(ctx, MUL, qt, b, shape)
    blob, keep = binary_tensors(ctx, SUB, a, qb, shape, node.outputs[0])
    ctx.bind(node.outputs[0], blob, keep)


def _variadic(ctx: Ctx, node: Node, op: int, mean: bool = False) -> None:
    ins = [t for t in node.inputs if t is not None]
    out_shape = ctx.out_shape()
    out = node.outputs[0]
    if len(ins) == 1:
        ctx.alias(out, ins[0])
        return
    same = all(t.shape == tuple(out_shape) and t.const is None for t in ins)
    if op == ADD and same and not mean:
        keep = ins[0].keep
        assert keep is not None
        blobs = [ctx.blob_as(t, keep) for t in ins]
        blob = ctx.emit("Eltwise", blobs, nc_shape(out_shape, keep), {0: 1}, out_name=out)
        ctx.bind(out, blob, keep)
        return
    acc = ins[0]
    for i, t in enumerate(ins[1:]):
        shape = tuple(np.broadcast_shapes(acc.shape, t.shape))
        last = i == len(ins) - 2 and not mean
        blob, keep = binary_tensors(ctx, op, acc, t, shape, out if last else None)
        acc = Tensor(f"{out}_acc{i}", shape, np.dtype("float32"), blob=blob, keep=keep)
    if mean:
        blob, keep = binary_tensors(
            ctx,
            MUL,
            acc,
            Tensor("n", (), np.dtype("float32"), const=np.array(1.0 / len(ins), np.float32)),
            tuple(out_shape),
            out,
        )
        acc = Tensor(out, tuple(out_shape), np.dtype("float32"), blob=blob, keep=keep)
    assert acc.blob is not None and acc.keep is not None
    ctx.bind(out, acc.blob, acc.keep)


@rule("Sum")
def sum_(ctx: Ctx, node: Node) -> None:
    _variadic(ctx, node, ADD)


@rule("Max")
def max_(ctx: Ctx, node: Node) -> None:
    _variadic(ctx, node, MAX)


@rule("Min")
def min_(ctx: Ctx, node: Node) -> None:
    _variadic(ctx, node, MIN)


@rule("Mean")
def mean(ctx: Ctx, node: Node) -> None:
    _variadic(ctx, node, ADD, mean=True)
