"""Fused attention: the ``MconvAttention`` node built by :func:`fuse.fuse_attention`
-> one ncnn ``MultiHeadAttention`` layer.

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
    if q is None or k is None or v is None or any(t.const is not None for t in (q, k, v)):
        raise NotLowerable("attention inputs must be dynamic")
    embed, qdim = wq.shape
    kdim, vdim = wk.shape[1], wv.shape[1]
    lq = int(np.prod(q.shape)) // qdim
    lk = int(np.prod(k.shape)) // kdim
    blobs = {}
    for t, width in ((q, qdim), (k, kdim), (v, vdim)):
        if t.name not in blobs:
            rows = int(np.prod(t.shape)) // width
            blobs[t.name] = ctx.reshape(ctx.blob_as(t), (rows, width), name_hint=t.name)
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
