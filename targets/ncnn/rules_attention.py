"""Fused attention: ``MconvAttention`` (from :func:`fuse.fuse_attention`) and ``MconvSDPA``
(from :func:`fuse.fuse_sdpa`) -> one ncnn ``MultiHeadAttention`` or ``SDPA`` layer.

Layer params: ``0=embed_dim 1=num_heads 2=embed_dim*qdim 3=kdim 4=vdim
5=attn_mask 6=scale``; weights in load order q, k, v, out, each a tagged weight
``[out_features, in_features]`` followed by a raw bias. Inputs are 2-D Mats
``[seq, features]``: one blob (self-attention), ``q, kv`` or ``q, k, v``, then
the additive mask (``[Lq, Lk]`` shared by all heads or ``[H, Lq, Lk]``).
The output is ``[Lq, qdim]`` (ncnn's output width is the query width).
"""

from __future__ import annotations

import numpy as np

from mconv.targets.ncnn.ir import Weight
from mconv.targets.ncnn.lower import Ctx, Node, NotLowerable, default_keep, sanitize_hint
from mconv.targets.ncnn.registry import rule


@rule("MconvAttention")
def attention(ctx: Ctx, node: Node) -> None:
    q, k, v, mask = node.inputs[:4]
    wq, bq, wk, bk, wv, bv, wo, bo = (np.asarray(node.const(i), np.float32) for i in range(4, 12))
    if q is None or k is None or v is None or all(t.const is not None for t in (q, k, v)):
        raise NotLowerable("attention inputs all constant (fold first)")
    embed, qdim = wq.shape
    kdim, vdim = wk.shape[1], wv.shape[1]
    lq = int(np.prod(q.shape)) // qdim
    lk = int(np.prod(k.shape)) // kdim
    blobs = {}
    for t, width in ((q, qdim), (k, kdim), (v, vdim)):
        if t.name not in blobs:
            rows = int(np.prod(t.shape)) // width
            blobs[t.name] = _rows(ctx, t, (rows, width))
    inputs = [blobs[q.name]]
    if k.name != q.name or v.name != q.name:
        inputs.append(blobs[k.name])
        if v.name != k.name:
            inputs.append(blobs[v.name])
    has_mask = mask is not None
    if mask is not None:
        if mask.const is not None:
            m = np.asarray(mask.const, np.float32)
            inputs.append(ctx.const_blob(m, m.shape, sanitize_hint(mask.name)))
        else:
            inputs.append(ctx.reshape(ctx.blob_as(mask), (lq, lk), name_hint=mask.name))
    params = {
        0: int(embed),
        1: int(node.attr("num_heads")),
        2: int(wq.size),
        3: int(kdim),
        4: int(vdim),
        5: int(has_mask),
        6: float(node.attr("scale")),
    }
    weights = []
    for w, b in ((wq, bq), (wk, bk), (wv, bv), (wo, bo)):
        weights += [Weight(np.ascontiguousarray(w).ravel(), tagged=True), Weight(b.ravel(), tagged=False)]
    out = node.outputs[0]
    blob = ctx.emit("MultiHeadAttention", inputs, (lq, wo.shape[0]), params, weights, out_name=out)
    ctx.bind(out, blob, default_keep(ctx.shape(out)))


@rule("MconvSDPA")
def sdpa(ctx: Ctx, node: Node) -> None:
    """``MconvSDPA(Q, K or KT, V, mask)`` from :func:`fuse.fuse_sdpa` -> ncnn ``SDPA``
    on (heads, rows, dim) Mats: ``5=has_mask 6=scale``; K is (groups, Lk, d), so a
    transposed K gets a Permute first; the mask is (Lq, Lk) or (H, Lq, Lk), a
    [1, Lk] row mask is tiled to Lq rows."""
    q, k, v, mask = node.inputs[:4]
    if q is None or k is None or v is None or all(t.const is not None for t in (q, k, v)):
        raise NotLowerable("attention inputs all constant (fold first)")
    lq, d = q.shape[-2:]
    h = int(np.prod(q.shape[:-2]))
    transposed = int(node.attr("k_transposed", 1))
    lk = k.shape[-1] if transposed else k.shape[-2]
    g = int(np.prod(k.shape[:-2]))
    qb = _rows(ctx, q, (h, lq, d))
    if transposed and k.const is not None:  # a constant K^T: transposed here, no Permute
        kb = ctx.const_blob(np.asarray(k.const, np.float32).reshape(g, d, lk).transpose(0, 2, 1), (g, lk, d),
                            sanitize_hint(k.name))  # fmt: skip
    else:
        kb = _rows(ctx, k, (g, d, lk) if transposed else (g, lk, d))
        if transposed:
            kb = ctx.emit("Permute", [kb], (g, lk, d), {0: 1})
    vb = _rows(ctx, v, (g, lk, v.shape[-1]))
    inputs = [qb, kb, vb]
    if mask is not None:
        inputs.append(_sdpa_mask(ctx, mask, h, lq, lk))
    out = node.outputs[0]
    params = {5: int(mask is not None), 6: float(node.attr("scale"))}
    blob = ctx.emit("SDPA", inputs, (h, lq, v.shape[-1]), params, out_name=out)
    ctx.bind(out, blob, default_keep(ctx.shape(out)))


def _rows(ctx: Ctx, t, nc: tuple[int, ...]) -> str:
    """Operand ``t`` as a Mat of shape ``nc``: a MemoryData when it is a constant (a learned
    query, as in SigLIP's attention-pooling head, arrives folded with its projection)."""
    if t.const is not None:
        return ctx.const_blob(np.asarray(t.const, np.float32).reshape(nc), nc, sanitize_hint(t.name))
    return ctx.reshape(ctx.blob_as(t), nc, name_hint=t.name)


def _sdpa_mask(ctx: Ctx, mask, h: int, lq: int, lk: int) -> str:
    size = int(np.prod(mask.shape))
    rows = size // lk
    nc = (h, lq, lk) if size == h * lq * lk and h > 1 else (rows, lk)
    if mask.const is not None:
        full = (nc[0], lq, lk) if len(nc) == 3 else (lq, lk)
        m = np.broadcast_to(np.asarray(mask.const, np.float32).reshape(nc), full)
        if m.ndim == 3 and all(np.array_equal(m[0], m[i]) for i in range(1, m.shape[0])):
            m = m[0]  # the same for every head: one (Lq, Lk) Mat
        return ctx.const_blob(np.ascontiguousarray(m), m.shape, sanitize_hint(mask.name))
    blob = ctx.reshape(ctx.blob_as(mask), nc, name_hint=mask.name)
    if rows == 1 and lq > 1:  # one row for every query: ncnn's SDPA reads Lq rows
        blob = ctx.emit("Tile", [blob], (lq, lk), {0: 0, 1: lq})
    return blob
