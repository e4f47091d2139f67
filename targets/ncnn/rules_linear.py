"""Matrix products: Gemm and MatMul (constant and dynamic operands).

Cases:
    Gemm transA=0 with constant B -> InnerProduct (alpha folded into the
    weights, beta*C folded into the bias when C is a row vector, else added);
    any other Gemm -> MatMul on 2-D Mats (+ scale/bias BinaryOps).
    MatMul with a constant 2-D B -> ncnn's Gemm with constant B over the rows
    of A (A reshaped to [rows, K]), InnerProduct for a single row;
    otherwise -> MatMul with both operands brought to the output rank (ncnn's
    MatMul broadcasts leading dims like numpy at equal rank); 1-D operands get
    ONNX's vector semantics through reshapes.
"""

from __future__ import annotations

import numpy as np

from mconv.targets.ncnn.ir import Weight
from mconv.targets.ncnn.lower import (
    Ctx,
    Node,
    NotLowerable,
    Tensor,
    default_keep,
    sanitize_hint,
)
from mconv.targets.ncnn.registry import rule
from mconv.targets.ncnn.rules_elementwise import ADD, MUL, binary_tensors


def inner_product(
    ctx: Ctx, a: Tensor, w_nk: np.ndarray, bias: np.ndarray | None, out_name: str, out_keep: tuple | None = None
) -> None:
    """``out = a @ w_nk.T + bias`` over the last axis of ``a`` (InnerProduct); the
    output is bound with ``out_keep`` (default: its shape's default representation)."""
    n, k = w_nk.shape
    rows = int(np.prod(a.shape[:-1])) if a.rank > 1 else 1
    nc_in = (rows, k) if rows > 1 else (k,)
    ab = ctx.reshape(ctx.blob_as(a), nc_in, name_hint=a.name) if a.const is None else None
    if ab is None:
        raise NotLowerable("constant input (fold it first)")
    nc_out = (rows, n) if rows > 1 else (n,)
    if rows > 1:
        # Over rows, ncnn's Gemm (constant B stored [N, K], C per column) ran as fast
        # as InnerProduct or faster on every shape measured (1 thread, x86, ncnn
        # 1.0.20261020: 0.98-1.95x in Gemm's favour, e.g. [128,768]x[768,3072] 1.84x,
        # the MLP-Mixer's token MLP 1.06x), and its INT8 path is the fast one (0.73x
        # FP32 where InnerProduct's ran 2.2x). A vector (one row) stays InnerProduct.
        weights = [Weight(np.ascontiguousarray(w_nk, np.float32).ravel(), tagged=True)]
        if bias is not None:
            weights.append(Weight(np.asarray(bias, np.float32).ravel(), tagged=True))
        p = {2: 0, 3: 1, 4: 0, 5: 1, 6: int(bias is not None), 7: rows, 8: n, 9: k, 10: 4}
        blob = ctx.emit("Gemm", [ab], nc_out, p, weights, out_name=out_name)
        ctx.bind(out_name, blob, default_keep(ctx.shape(out_name)))
        return
    weights = [Weight(np.ascontiguousarray(w_nk, np.float32).ravel(), tagged=True)]
    if bias is not None:
        weights.append(Weight(np.asarray(bias, np.float32).ravel(), tagged=False))
    blob = ctx.emit(
        "InnerProduct",
        [ab],
        nc_out,
        {0: n, 1: int(bias is not None), 2: int(w_nk.size)},
        weights,
        out_name=out_name,
    )
    out_shape = ctx.shape(out_name)
    if out_keep is None and out_shape and all(d == 1 for d in out_shape[:-1]):
        out_keep = (len(out_shape) - 1,)  # a vector: keep the 1-D Mat (no Reshape)
    ctx.bind(out_name, blob, out_keep or default_keep(out_shape))


@rule("Gemm")
def gemm(ctx: Ctx, node: Node) -> None:
    a, b, c = node.inp(0), node.inp(1), node.inp(2)
    assert a is not None and b is not None
    alpha = float(node.attr("alpha", 1.0))
    beta = float(node.attr("beta", 1.0))
    ta, tb = int(node.attr("transA", 0)), int(node.attr("transB", 0))
    out = node.outputs[0]
    out_shape = ctx.out_shape()
    n = out_shape[1]
    if ta == 0 and a.const is None and b.const is not None:
        bm = np.asarray(b.const, np.float32)
        w = (bm if tb else bm.T) * np.float32(alpha)
        bias = None
        if c is not None and c.const is not None and np.asarray(c.const).size in (1, n):
            cv = np.asarray(c.const, np.float32)
            if cv.ndim < 2 or cv.shape[0] == 1:
                bias = np.broadcast_to(cv.reshape(-1), (n,)) * np.float32(beta)
                c = None
        if c is None:
            inner_product(ctx, a, w, bias, out)
            return
        inner_product(ctx, a, w, bias, out + "_gemm")
        _add_c(ctx, node, ctx.tensors[out + "_gemm"], c, beta)
        return
    # General form: MatMul on explicit 2-D operands.
    ab = _as2d(ctx, a, ta)
    bb = _as2d(ctx, b, tb)
    m = out_shape[0]
    mm = ctx.emit("MatMul", [ab, bb], (m, n), {0: 0}, out_name=out if c is None and alpha == 1 else None)
    t = Tensor(out + "_mm", tuple(out_shape), np.dtype("float32"), blob=mm, keep=(0, 1))
    if alpha != 1.0:
        blob, keep = binary_tensors(ctx, MUL, t, _scalar(alpha), tuple(out_shape), out if c is None else None)
        t = Tensor(out + "_alpha", tuple(out_shape), np.dtype("float32"), blob=blob, keep=keep)
    if c is None:
        assert t.blob is not None and t.keep is not None
        ctx.bind(out, t.blob, t.keep)
        return
    _add_c(ctx, node, t, c, beta)


def _scalar(v: float) -> Tensor:
    return Tensor("scalar", (), np.dtype("float32"), const=np.array(v, np.float32))


def _add_c(ctx: Ctx, node: Node, t: Tensor, c: Tensor, beta: float) -> None:
    out = node.outputs[0]
    out_shape = ctx.out_shape()
    if beta != 1.0:
        if c.const is not None:
            c = Tensor(c.name, c.shape, c.dtype, const=np.asarray(c.const, np.float32) * beta)
        else:
            blob, keep = binary_tensors(ctx, MUL, c, _scalar(beta), c.shape)
            c = Tensor(c.name + "_beta", c.shape, c.dtype, blob=blob, keep=keep)
    blob, keep = binary_tensors(ctx, ADD, t, c, tuple(out_shape), out)
    ctx.bind(out, blob, keep)


def _as2d(ctx: Ctx, t: Tensor, trans: int) -> str:
    """A 2-D Mat of ``t`` (transposed when ``trans``)."""
    if t.const is not None:
        v = np.asarray(t.const, np.float32)
        v = v.T if trans else v
        return ctx.const_blob(v, v.shape, sanitize_hint(t.name))
    b = ctx.reshape(ctx.blob_as(t), tuple(t.shape), name_hint=t.name)
    if trans:
        b = ctx.emit("Permute", [b], (t.shape[1], t.shape[0]), {0: 1})
    return b


@rule("MatMul")
def matmul(ctx: Ctx, node: Node) -> None:
    a, b = node.inputs[0], node.inputs[1]
    assert a is not None and b is not None
    out = node.outputs[0]
    out_shape = ctx.out_shape()
    if b.const is not None and b.rank == 2 and a.const is None:
        inner_product(ctx, a, np.asarray(b.const, np.float32).T, None, out)
        return
    a_shape, b_shape = list(a.shape), list(b.shape)
    if a.rank == 1:
        a_shape = [1, *a_shape]
    if b.rank == 1:
        b_shape = [*b_shape, 1]
    r = max(len(a_shape), len(b_shape))
    a_shape = [1] * (r - len(a_shape)) + a_shape
    b_shape = [1] * (r - len(b_shape)) + b_shape
    full_out = [max(x, y) for x, y in zip(a_shape[:-2], b_shape[:-2])] + [a_shape[-2], b_shape[-1]]
    # Leading batch dims that are 1 in both operands change nothing: drop them
    # (ncnn's MatMul goes up to 4-D).
    lead = 0
    while r - lead > 2 and a_shape[lead] == 1 and b_shape[lead] == 1:
        lead += 1
    a_nc, b_nc = tuple(a_shape[lead:]), tuple(b_shape[lead:])
    o_nc = tuple(full_out[lead:])
    if len(o_nc) > 4:
        raise NotLowerable(f"MatMul of rank {r} needs more than 4 ncnn dims")
    ab = _operand_shaped(ctx, a, a_nc)
    bb = _operand_shaped(ctx, b, b_nc)
    mm = ctx.emit("MatMul", [ab, bb], o_nc, {0: 0})
    ctx.bind(out, mm, default_keep(out_shape))


def _operand_shaped(ctx: Ctx, t: Tensor, nc: tuple[int, ...]) -> str:
    if t.const is not None:
        return ctx.const_blob(np.asarray(t.const, np.float32), nc, sanitize_hint(t.name))
    return ctx.reshape(ctx.blob_as(t), nc, name_hint=t.name)


@rule("MconvLinear")
def linear(ctx: Ctx, node: Node) -> None:
    """MatMul + bias fused by :func:`fuse.fuse_linear_bias`: ``x @ W + b``."""
    a = node.inputs[0]
    assert a is not None
    w = np.asarray(node.const(1, "weight"), np.float32)
    b = np.asarray(node.const(2, "bias"), np.float32)
    if a.const is not None:
        raise NotLowerable("constant input (fold it first)")
    inner_product(ctx, a, w.T, b, node.outputs[0])
