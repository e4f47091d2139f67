"""ONNX-level pattern fusions applied before lowering, so the rule table sees one
node where ncnn has one layer.

Cases (each only when the inner tensors have no other consumer and are not
graph outputs):
    Mul(x, Sigmoid(x))                         -> Swish
    Mul(x, Tanh(Softplus(x)))                  -> Mish
    Mul(x, HardSigmoid(x, 1/6, 0.5))           -> HardSwish
    Mul(Mul(x, Add(Erf(Div(x, √2)), 1)), 0.5)  -> Gelu (exact), any operand order,
                                                   also Mul(x, 1/√2) for the Div
    Mul(x, Add(Erf(Div(x, √2)), 1))            -> Gelu then x2 (the 0.5 went to the next layer)
    Reshape, Transpose (0, 2, 1, 3, 4), Reshape -> ShuffleChannel (channel shuffle)
    Mul(x, scalar c) read only by Conv / MatMul -> the weights scaled by c
    Where(IsNaN(Softmax(.)), c, Softmax(.))     -> the Softmax (a guard that never fires)
    Reshape, InstanceNorm, Reshape, Mul, Add    -> GroupNormalization (torch's GroupNorm)
    MatMul, [scale], [+ mask], Softmax, MatMul  -> SDPA (attention fuse_attention left)
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from mconv.targets.ncnn.fold import Prepared


class _Graph:
    def __init__(self, prep: Prepared, nodes: list[onnx.NodeProto]) -> None:
        self.prep = prep
        self.nodes = nodes
        self.producer = {o: n for n in nodes for o in n.output}
        self.uses: dict[str, int] = {}
        for n in nodes:
            for i in n.input:
                self.uses[i] = self.uses.get(i, 0) + 1
        for o in prep.outputs:
            self.uses[o] = self.uses.get(o, 0) + 100

    def only_use(self, name: str) -> bool:
        return self.uses.get(name, 0) == 1

    def prod(self, name: str, op: str) -> onnx.NodeProto | None:
        n = self.producer.get(name)
        return n if n is not None and n.op_type == op else None

    def scalar(self, name: str) -> float | None:
        v = self.prep.consts.get(name)
        if v is None or np.asarray(v).size != 1:
            return None
        return float(np.asarray(v).ravel()[0])


def _other(n: onnx.NodeProto, name: str) -> str | None:
    if len(n.input) != 2:
        return None
    a, b = n.input
    return b if a == name else a if b == name else None


def _match_simple(g: _Graph, mul: onnx.NodeProto):
    """Swish / Mish / HardSwish rooted at ``mul``: (new op, x, removed nodes)."""
    for k in (0, 1):
        t, x = mul.input[k], mul.input[1 - k]
        if not g.only_use(t):
            continue
        s = g.prod(t, "Sigmoid")
        if s is not None and s.input[0] == x:
            return "Swish", x, [s]
        hs = g.prod(t, "HardSigmoid")
        if hs is not None and hs.input[0] == x:
            at = {a.name: helper.get_attribute_value(a) for a in hs.attribute}
            if abs(at.get("alpha", 0.2) - 1 / 6) < 1e-6 and abs(at.get("beta", 0.5) - 0.5) < 1e-6:
                return "HardSwish", x, [hs]
        th = g.prod(t, "Tanh")
        if th is not None and g.only_use(th.input[0]):
            sp = g.prod(th.input[0], "Softplus")
            if sp is not None and sp.input[0] == x:
                return "Mish", x, [th, sp]
    return None


def _match_gelu(g: _Graph, last: onnx.NodeProto):
    """GELU ending in ``last`` (a Mul): (x, removed nodes, factor, approximate) or None.

    ``factor`` is 1 for ``0.5 * x * (1 + erf(x / √2))`` and 2 when the 0.5 is gone
    (the passes folded it into the next layer's weights); ``approximate`` is "tanh"
    for ``0.5 * x * (1 + tanh(√(2/π) * (x + 0.044715 x³)))`` (GPT-2's gelu_new, which
    ncnn's GELU ``0=1`` computes with the same constants)."""
    for k in (0, 1):
        if g.scalar(last.input[k]) == 0.5 and g.only_use(last.input[1 - k]):
            m1 = g.prod(last.input[1 - k], "Mul")
            hit = _gelu_branch(g, m1) if m1 is not None else None
            if hit is not None:
                return hit[0], [m1, *hit[1]], 1.0, hit[2]
        # 0.5 * x taken first: Mul(Mul(x, 0.5), 1 + tanh(...))
        h = g.prod(last.input[k], "Mul")
        if h is not None and g.only_use(last.input[k]) and 0.5 in (g.scalar(h.input[0]), g.scalar(h.input[1])):
            x = h.input[0] if g.scalar(h.input[1]) == 0.5 else h.input[1]
            probe = helper.make_node("Mul", [x, last.input[1 - k]], ["_"])
            hit = _gelu_branch(g, probe)
            if hit is not None:
                return hit[0], [h, *hit[1]], 1.0, hit[2]
    hit = _gelu_branch(g, last)
    return (hit[0], hit[1], 2.0, hit[2]) if hit is not None else None


def _gelu_branch(g: _Graph, m1: onnx.NodeProto):
    """``Mul(x, 1 + erf(...))`` or ``Mul(x, 1 + tanh(...))``: (x, inner nodes, approximate)."""
    hit = _erf_branch(g, m1)
    if hit is not None:
        return hit[0], hit[1], "none"
    hit = _tanh_branch(g, m1)
    return (hit[0], hit[1], "tanh") if hit is not None else None


def _tanh_branch(g: _Graph, m1: onnx.NodeProto):
    """``Mul(x, Add(Tanh(√(2/π) * (x + 0.044715 * x**3)), 1))``: (x, inner nodes) or None."""
    if m1.op_type != "Mul":
        return None
    for k in (0, 1):
        x, add_out = m1.input[k], m1.input[1 - k]
        add = g.prod(add_out, "Add")
        if add is None or not g.only_use(add_out):
            continue
        t_out = _other(add, next((i for i in add.input if g.scalar(i) == 1.0), ""))
        th = g.prod(t_out, "Tanh") if t_out is not None and g.only_use(t_out) else None
        sc = g.prod(th.input[0], "Mul") if th is not None and g.only_use(th.input[0]) else None
        c = _scaled(g, sc, 0.7978845608)
        inner = g.prod(c, "Add") if c is not None and g.only_use(c) else None
        if inner is None or x not in inner.input:
            continue
        cube_s = _other(inner, x)
        cm = g.prod(cube_s, "Mul") if cube_s is not None and g.only_use(cube_s) else None
        cube = _scaled(g, cm, 0.044715)
        pw = g.prod(cube, "Pow") if cube is not None and g.only_use(cube) else None
        if pw is None or pw.input[0] != x or g.scalar(pw.input[1]) != 3.0:
            continue
        return x, [add, th, sc, inner, cm, pw]
    return None


def _scaled(g: _Graph, n: onnx.NodeProto | None, value: float) -> str | None:
    """The other input of ``n`` = Mul(t, value) (within 1e-5), else None."""
    if n is None or len(n.input) != 2:
        return None
    for k in (0, 1):
        c = g.scalar(n.input[k])
        if c is not None and abs(c - value) <= 1e-5 * abs(value):
            return n.input[1 - k]
    return None


def _erf_branch(g: _Graph, m1: onnx.NodeProto):
    """``Mul(x, Add(Erf(x / √2), 1))`` rooted at ``m1``: (x, its inner nodes) or None."""
    if m1.op_type != "Mul":
        return None
    for k in (0, 1):
        x, add_out = m1.input[k], m1.input[1 - k]
        add = g.prod(add_out, "Add")
        if add is None or not g.only_use(add_out):
            continue
        erf_out = _other(add, next((i for i in add.input if g.scalar(i) == 1.0), ""))
        if erf_out is None or not g.only_use(erf_out):
            continue
        erf = g.prod(erf_out, "Erf")
        if erf is None or not g.only_use(erf.input[0]):
            continue
        sc = g.producer.get(erf.input[0])
        if sc is None or sc.op_type not in ("Div", "Mul") or sc.input[0] != x:
            continue
        c = g.scalar(sc.input[1])
        if c is None:
            continue
        ok = abs(c - np.sqrt(2)) < 1e-4 if sc.op_type == "Div" else abs(c - 1 / np.sqrt(2)) < 1e-4
        if ok:
            return x, [add, erf, sc]
    return None


def fuse_patterns(prep: Prepared) -> list[onnx.NodeProto]:
    """The prepared nodes with the patterns above replaced by single nodes."""
    nodes = fuse_group_norm(prep, drop_softmax_nan_guards(prep, list(prep.nodes)))
    nodes = drop_broadcast_expands(prep, gather_elements_as_gather(prep, nodes))
    g = _Graph(prep, nodes)
    removed: set[int] = set()
    replace: dict[int, onnx.NodeProto] = {}
    for n in nodes:
        if n.op_type != "Mul" or id(n) in removed:
            continue
        hit = _match_simple(g, n)
        if hit is not None:
            op, x, gone = hit
            replace[id(n)] = helper.make_node(op, [x], list(n.output), name=n.name)
            removed.update(id(r) for r in gone)
            continue
        gelu = _match_gelu(g, n)
        if gelu is not None:
            x, gone, factor, approx = gelu
            if factor == 1.0:
                replace[id(n)] = helper.make_node("Gelu", [x], list(n.output), name=n.name, approximate=approx)
            else:
                half, two = f"{n.output[0]}__gelu", f"{n.output[0]}__x2"
                prep.consts[two] = np.array(factor, np.float32)
                prep.shapes[half], prep.dtypes[half] = prep.shapes.get(x, ()), np.dtype("float32")
                replace[id(n)] = [
                    helper.make_node("Gelu", [x], [half], name=n.name, approximate=approx),
                    helper.make_node("Mul", [half, two], list(n.output), name=f"{n.name}_x2"),
                ]
            removed.update(id(r) for r in gone)
    out = []
    for n in nodes:
        if id(n) in removed:
            continue
        r = replace.get(id(n), n)
        out.extend(r if isinstance(r, list) else [r])
    out = fuse_sdpa(prep, fold_scale_into_weights(prep, fuse_channel_shuffle(prep, fuse_attention(prep, out))))
    return fuse_linear_bias(prep, split_slices(prep, out))


# ----------------------------------------------------------------------------- attention
#
# torch.onnx exports nn.MultiheadAttention (and TransformerEncoderLayer's
# self-attention) as: an input projection (MatMul + Add, or Gemm), a chain of
# pure data movement (Reshape / Transpose / Squeeze / Unsqueeze / Gather /
# Slice / Split) into per-head q, k, v, scalar scales, MatMul, optional
# additive mask, Softmax, MatMul, movement back to [rows, embed] and the output
# projection. Rather than matching one exporter's exact node list, the matcher
# walks those movement chains and *evaluates them on index arrays*: the
# result says which projected column feeds each (head, position, channel),
# and the fusion applies only when every row maps to its own position, the
# column map is position-independent and the batch is 1. The projection
# weights are then permuted accordingly, so the fused node is exact.

ATTENTION_OP = "MconvAttention"
_MOVES = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Gather", "Slice", "Split", "Flatten", "Identity"}


def _attrs(n: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in n.attribute}


class _AttnGraph(_Graph):
    def __init__(self, prep: Prepared, nodes: list[onnx.NodeProto]) -> None:
        super().__init__(prep, nodes)
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in nodes:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)

    def const(self, name: str) -> np.ndarray | None:
        return None if not name else self.prep.consts.get(name)

    def is_move(self, n: onnx.NodeProto | None) -> bool:
        if n is None or n.op_type not in _MOVES or not n.input or self.const(n.input[0]) is not None:
            return False
        return all(self.const(i) is not None for i in n.input[1:] if i)

    def scalar_scale(self, n: onnx.NodeProto | None) -> tuple[str, float] | None:
        """(dynamic input, factor) when ``n`` multiplies/divides by a scalar constant."""
        if n is None or n.op_type not in ("Mul", "Div") or len(n.input) != 2:
            return None
        for k in (0, 1) if n.op_type == "Mul" else (1,):
            c = self.scalar(n.input[k])
            if c is not None and self.const(n.input[1 - k]) is None:
                return n.input[1 - k], (c if n.op_type == "Mul" else 1.0 / c)
        return None

    def back(self, name: str, scales: bool = True):
        """Walk producers of ``name`` through moves (and scalar scales):
        (source, [(node, output)] in forward order, product of scales)."""
        chain: list[tuple[onnx.NodeProto, str]] = []
        scale = 1.0
        while True:
            p = self.producer.get(name)
            if self.is_move(p):
                chain.append((p, name))
                name = p.input[0]
                continue
            s = self.scalar_scale(p) if scales else None
            if s is not None:
                chain.append((p, name))
                name, f = s
                scale *= f
                continue
            break
        chain.reverse()
        return name, chain, scale

    def forward(self, name: str):
        """Follow sole consumers of ``name`` through moves: (end, [(node, output)])."""
        chain: list[tuple[onnx.NodeProto, str]] = []
        while name not in self.prep.outputs:
            users = self.consumers.get(name, [])
            if len(users) != 1 or not self.is_move(users[0]) or users[0].input[0] != name:
                break
            u = users[0]
            if u.op_type == "Split" or len(u.output) != 1:
                break
            chain.append((u, u.output[0]))
            name = u.output[0]
        return name, chain

    def eval_moves(self, idx: np.ndarray, chain) -> np.ndarray:
        """Apply a movement chain (scales skipped) to an index array."""
        for n, out in chain:
            if n.op_type in ("Mul", "Div"):
                continue
            idx = _apply_move(self, n, out, idx)
            want = self.prep.shapes.get(out)
            if want is None or tuple(idx.shape) != tuple(want):
                raise ValueError("shape mismatch")
        return idx


def _apply_move(g: _AttnGraph, n: onnx.NodeProto, out: str, x: np.ndarray) -> np.ndarray:
    at = _attrs(n)
    op = n.op_type
    ins = [g.const(i) if i else None for i in n.input]
    if op == "Identity":
        return x
    if op == "Reshape":
        shape = [int(v) for v in ins[1]]
        if not at.get("allowzero", 0):
            shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
        return x.reshape(shape)
    if op == "Flatten":
        a = int(at.get("axis", 1))
        a = a + x.ndim if a < 0 else a
        return x.reshape(int(np.prod(x.shape[:a])), -1)
    if op == "Transpose":
        perm = at.get("perm")
        return np.transpose(x, perm if perm is not None else None)
    if op in ("Squeeze", "Unsqueeze"):
        axes = at.get("axes") if "axes" in at else (ins[1] if len(ins) > 1 else None)
        if op == "Squeeze":
            if axes is None:
                return np.squeeze(x)
            return np.squeeze(x, tuple(int(a) for a in axes))
        out_rank = x.ndim + len(axes)
        for a in sorted(int(v) + out_rank if v < 0 else int(v) for v in axes):
            x = np.expand_dims(x, a)
        return x
    if op == "Gather":
        return np.take(x, np.asarray(ins[1]).astype(np.int64), axis=int(at.get("axis", 0)))
    if op == "Slice":
        if "starts" in at:
            starts, ends = at["starts"], at["ends"]
            axes = at.get("axes", list(range(len(starts))))
            steps = [1] * len(starts)
        else:
            starts, ends = list(ins[1]), list(ins[2])
            axes = list(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
            steps = list(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
        sl = [slice(None)] * x.ndim
        for s, e, a, st in zip(starts, ends, axes, steps):
            sl[int(a)] = slice(int(s), int(e), int(st))
        return x[tuple(sl)]
    if op == "Split":
        a = int(at.get("axis", 0))
        sizes = [g.prep.shapes[o][a] for o in n.output]
        k = list(n.output).index(out)
        start = int(sum(sizes[:k]))
        return np.take(x, np.arange(start, start + sizes[k]), axis=a)
    raise ValueError(op)


def _projection(g: _AttnGraph, name: str):
    """``name = rows(x) @ W + b``: (x, W [K, N], b [N], nodes) or None."""
    p = g.producer.get(name)
    if p is None:
        return None
    n_out = g.prep.shapes.get(name, (0,))[-1]
    if p.op_type == "Gemm":
        at = _attrs(p)
        w = g.const(p.input[1])
        if at.get("transA", 0) or w is None or g.const(p.input[0]) is not None:
            return None
        w = np.asarray(w, np.float64)
        w = (w.T if at.get("transB", 0) else w) * float(at.get("alpha", 1.0))
        b = np.zeros(w.shape[1])
        if len(p.input) > 2 and p.input[2]:
            c = g.const(p.input[2])
            if c is None or c.size not in (1, w.shape[1]) or (c.ndim == 2 and c.shape[0] != 1):
                return None
            b = np.broadcast_to(np.asarray(c, np.float64).ravel(), (w.shape[1],)) * float(at.get("beta", 1.0))
        return p.input[0], w, b, [p]
    bias = np.zeros(n_out)
    nodes = []
    if p.op_type == "Add" and len(p.input) == 2:
        for k in (0, 1):
            c = g.const(p.input[k])
            if c is not None and c.size == n_out and c.shape[-1] == n_out and g.only_use(p.input[1 - k]):
                bias = np.asarray(c, np.float64).ravel()
                nodes.append(p)
                p = g.producer.get(p.input[1 - k])
                break
        else:
            return None
    cols = None
    if p is not None and p.op_type == "Split":
        # q, k, v projections merged into one MatMul, then split by columns.
        cols = _split_columns(g, p, nodes[-1].input if nodes else [name])
        if cols is None:
            return None
        nodes.append(p)
        p = g.producer.get(p.input[0])
    if p is None or p.op_type != "MatMul":
        return None
    w = g.const(p.input[1])
    if w is None or w.ndim != 2 or g.const(p.input[0]) is not None:
        return None
    w = np.asarray(w, np.float64)
    if cols is not None:
        w = w[:, cols[0] : cols[1]]
    if w.shape[1] != n_out:
        return None
    return p.input[0], w, bias, [p, *nodes]


def _split_columns(g: _AttnGraph, split: onnx.NodeProto, names) -> tuple[int, int] | None:
    """The [start, end) columns of the last axis that the split output in ``names`` takes."""
    shape = g.prep.shapes.get(split.input[0])
    axis = int(_attrs(split).get("axis", 0))
    if shape is None or (axis + len(shape)) % len(shape) != len(shape) - 1:
        return None
    sizes = [g.prep.shapes[o][-1] for o in split.output]
    k = next((i for i, o in enumerate(split.output) if o in names), None)
    if k is None:
        return None
    start = int(sum(sizes[:k]))
    return start, start + int(sizes[k])


def _head_columns(rows: np.ndarray, cols: np.ndarray, seq: int) -> np.ndarray | None:
    """For index arrays [H, L, d]: the column of each (head, channel) when row ==
    position everywhere and columns do not depend on the position; else None."""
    if rows.shape[1] != seq or not np.array_equal(rows, np.broadcast_to(np.arange(seq)[None, :, None], rows.shape)):
        return None
    if not np.array_equal(cols, np.broadcast_to(cols[:, :1, :], cols.shape)):
        return None
    return cols[:, 0, :].reshape(-1)


def _match_attention(g: _AttnGraph, sm: onnx.NodeProto):
    """The pieces of a multi-head attention around Softmax ``sm`` (a dict for the
    fused layer), or None when the pattern does not hold."""
    scores = _match_scores(g, sm)
    if scores is None:
        return None
    nodes, mm1, mm2, post, mask = scores
    found = _match_heads(g, mm1, mm2, post, nodes)
    if found is None:
        return None
    heads, scale = found
    hq, lq, dq = heads["q"][3:]
    hk, lk, dk = heads["k"][3:]
    hv, lv, dv = heads["v"][3:]
    if not (hq == hk == hv and dq == dk == dv and lk == lv):
        return None
    embed = hq * dq
    # MatMul shapes must be plain per-head products (no broadcasting tricks).
    s1 = g.prep.shapes.get(mm1.output[0])
    if s1 is None or int(np.prod(s1)) != hq * lq * lk or tuple(s1[-2:]) != (lq, lk):
        return None
    out = _match_output(g, mm2.output[0], hq, lq, dq, nodes)
    if out is None:
        return None
    y, wo_nc, bo = out
    xs = _match_inputs(g, heads)
    if xs is None:
        return None
    if wo_nc.shape[0] != heads["q"][1].shape[0]:
        return None  # ncnn's output width is the query input width
    mask_v = None
    if mask is not None:
        mask_v = _mask_value(g, mask, s1, hq, lq, lk)
        if mask_v is None:
            return None
    return dict(nodes=nodes, heads=heads, xs=xs, y=y, wo=wo_nc, bo=bo, scale=scale,
                num_heads=hq, embed=embed, mask=mask, mask_v=mask_v)  # fmt: skip


def _match_scores(g: _AttnGraph, sm: onnx.NodeProto):
    """Softmax over the last axis of ``[scale] [Add mask] [scale] MatMul``, read by
    one MatMul: (nodes, the scores MatMul, the values MatMul, the scale after the
    mask, the mask tensor or None), or None."""
    shape_s = g.prep.shapes.get(sm.output[0])
    if shape_s is None or len(shape_s) < 2:
        return None
    axis = int(_attrs(sm).get("axis", -1 if g.prep.opset >= 13 else 1))
    if (axis + len(shape_s)) % len(shape_s) != len(shape_s) - 1:
        return None
    nodes: list[onnx.NodeProto] = [sm]
    t, chain, post = g.back(sm.input[0])
    if any(n.op_type not in ("Mul", "Div") for n, _ in chain):
        return None
    nodes += [n for n, _ in chain]
    mask = None
    p = g.producer.get(t)
    if p is not None and p.op_type == "Add" and len(p.input) == 2:
        if post != 1.0:
            return None
        for k in (0, 1):
            t2, ch2, sc2 = g.back(p.input[k])
            mm = g.producer.get(t2)
            if mm is not None and mm.op_type == "MatMul" and all(n.op_type in ("Mul", "Div") for n, _ in ch2):
                mask = p.input[1 - k]
                nodes += [p] + [n for n, _ in ch2]
                t, post = t2, sc2
                break
        else:
            return None
    mm1 = g.producer.get(t)
    if mm1 is None or mm1.op_type != "MatMul":
        return None
    nodes.append(mm1)
    users = g.consumers.get(sm.output[0], [])
    if len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[0] != sm.output[0]:
        return None
    mm2 = users[0]
    nodes.append(mm2)
    return nodes, mm1, mm2, post, mask


def _match_heads(g: _AttnGraph, mm1: onnx.NodeProto, mm2: onnx.NodeProto, post: float, nodes: list):
    """Q, K and V as projections split into heads by data movement: (key -> (input,
    head weights, head bias, heads, length, head size), the overall scale), or None.
    Appends the movement and projection nodes to ``nodes``."""
    qs, qch, qsc = g.back(mm1.input[0])
    ks, kch, ksc = g.back(mm1.input[1])
    vs, vch, vsc = g.back(mm2.input[1])
    if vsc != 1.0:
        return None
    scale = qsc * ksc * post
    projs = {}
    for src in {qs, ks, vs}:
        pr = _projection(g, src)
        if pr is None:
            return None
        projs[src] = pr
    heads = {}
    for key, src, ch, trans in (("q", qs, qch, False), ("k", ks, kch, True), ("v", vs, vch, False)):
        x, w, b, _ = projs[src]
        n_cols = w.shape[1]
        size = int(np.prod(g.prep.shapes[src]))
        idx = g.eval_moves(np.arange(size).reshape(g.prep.shapes[src]), ch)
        if trans:
            idx = np.swapaxes(idx, -1, -2)
        if idx.ndim < 3:
            return None
        seq, d = idx.shape[-2], idx.shape[-1]
        idx = idx.reshape(-1, seq, d)
        if size // n_cols != seq:
            return None
        cols = _head_columns(idx // n_cols, idx % n_cols, seq)
        if cols is None:
            return None
        heads[key] = (x, w[:, cols], b[cols], idx.shape[0], seq, d)
        nodes += [n for n, _ in ch]
    for src in {qs, ks, vs}:
        nodes += projs[src][3]
    return heads, scale


def _match_output(g: _AttnGraph, o: str, h: int, lq: int, dq: int, nodes: list):
    """The attention output ``o`` moved to [rows, embed], projected and moved to Y:
    (Y, the output weights [out, embed] in ncnn's head order, the bias), or None.
    Appends the nodes to ``nodes``."""
    embed = h * dq
    so = g.prep.shapes.get(o)
    if so is None or int(np.prod(so)) != h * lq * dq or tuple(so[-2:]) != (lq, dq):
        return None
    z, zch = g.forward(o)
    found = _output_projection(g, z)
    if found is None:
        return None
    yp, (_, wo, bo, on) = found
    zidx = g.eval_moves(np.arange(h * lq * dq).reshape(so), zch)
    if zidx.size != h * lq * dq or wo.shape[0] != embed:
        return None
    zidx = zidx.reshape(lq, embed)
    hh, ll, jj = zidx // (lq * dq), (zidx // dq) % lq, zidx % dq
    if not np.array_equal(ll, np.broadcast_to(np.arange(lq)[:, None], ll.shape)):
        return None
    pi = hh * dq + jj
    if not np.array_equal(pi, np.broadcast_to(pi[:1], pi.shape)):
        return None
    pi = pi[0]
    if sorted(pi.tolist()) != list(range(embed)):
        return None
    n_out = wo.shape[1]
    wo_nc = np.zeros((n_out, embed))
    wo_nc[:, pi] = wo.T
    y, ych = g.forward(yp)
    yidx = g.eval_moves(np.arange(int(np.prod(g.prep.shapes[yp]))).reshape(g.prep.shapes[yp]), ych)
    if not np.array_equal(yidx.ravel(), np.arange(yidx.size)) or yidx.size != lq * n_out:
        return None
    nodes += [n for n, _ in zch] + on + [n for n, _ in ych]
    return y, wo_nc, bo


def _output_projection(g: _AttnGraph, z: str):
    """The MatMul/Gemm (with a following bias Add) that alone reads ``z``: (its
    output, the projection), or None."""
    zu = g.consumers.get(z, [])
    if len(zu) != 1 or zu[0].op_type not in ("MatMul", "Gemm") or zu[0].input[0] != z:
        return None
    yp = zu[0].output[0]
    yu = g.consumers.get(yp, [])
    if zu[0].op_type == "MatMul" and len(yu) == 1 and yu[0].op_type == "Add" and yp not in g.prep.outputs:
        other = _other(yu[0], yp)
        c = g.const(other) if other else None
        if c is not None and c.shape[-1:] == (g.prep.shapes[yp][-1],) and c.size == c.shape[-1]:
            yp = yu[0].output[0]
    op = _projection(g, yp)
    if op is None or op[0] != z:
        return None
    return yp, op


def _match_inputs(g: _AttnGraph, heads: dict):
    """Each projection input traced back through moves that keep C order (rows must
    be positions): key -> (source tensor, movement nodes), or None."""
    xs = {}
    for key in ("q", "k", "v"):
        x, w = heads[key][0], heads[key][1]
        src, xch, _ = g.back(x, scales=False)
        size = int(np.prod(g.prep.shapes[x]))
        xi = g.eval_moves(np.arange(size).reshape(g.prep.shapes[src]), xch)
        if not np.array_equal(xi.ravel(), np.arange(size)) or size != heads[key][4] * w.shape[0]:
            return None
        if g.prep.shapes[src][-1] != w.shape[0]:
            src, xch = x, []
        xs[key] = (src, [n for n, _ in xch])
    return xs


def _mask_value(g: _AttnGraph, mask: str, s1, h: int, lq: int, lk: int):
    """Constant mask -> array [L, Lk] or [H, L, Lk]; dynamic mask -> "" when its
    values are exactly [L, Lk] (any leading 1s); otherwise None."""
    c = g.const(mask)
    if c is not None:
        try:
            full = np.broadcast_to(np.asarray(c, np.float32), tuple(s1)).reshape(h, lq, lk)
        except ValueError:
            return None
        if all(np.array_equal(full[0], full[i]) for i in range(1, h)):
            return np.ascontiguousarray(full[0])
        return np.ascontiguousarray(full)
    ms = g.prep.shapes.get(mask)
    if ms is None or tuple(ms[-2:]) != (lq, lk) or int(np.prod(ms)) != lq * lk:
        return None
    return ""


def fuse_attention(prep: Prepared, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Replace every matched attention block by one ``MconvAttention`` node.

    Inputs: q source, k source, v source, mask ("" if none), then constants
    wq, bq, wk, bk, wv, bv, wo, bo in ncnn's layout ([out, in] rows).
    Attributes: num_heads, scale.
    """
    for _ in range(64):
        g = _AttnGraph(prep, nodes)
        hit = None
        for n in nodes:
            if n.op_type == "Softmax":
                try:
                    hit = _match_attention(g, n)
                except (ValueError, KeyError, IndexError, TypeError):
                    hit = None
                if hit is not None:
                    break
        if hit is None:
            return nodes
        new = _apply_attention(prep, g, nodes, hit)
        if new is None:
            return nodes
        nodes = new
    return nodes


def _apply_attention(prep: Prepared, g: _AttnGraph, nodes: list[onnx.NodeProto], hit: dict):
    y = hit["y"]
    core = {id(n) for n in hit["nodes"]}
    by_id = {id(n): n for n in nodes}
    for i in core:
        for o in by_id[i].output:
            if not o or o == y:
                continue
            if o in prep.outputs or any(id(u) not in core for u in g.consumers.get(o, [])):
                return None
    removed = set(core)
    # Movement in front of the projections goes too when nothing else reads it.
    for key in ("q", "k", "v"):
        for n in reversed(hit["xs"][key][1]):
            if all(o not in prep.outputs and all(id(u) in removed for u in g.consumers.get(o, [])) for o in n.output):
                removed.add(id(n))
    base = f"{y}__mha"
    names = []
    for key in ("q", "k", "v"):
        _, w, b, *_ = hit["heads"][key]
        for suffix, v in (("w", w.T), ("b", b)):
            nm = f"{base}_{key}{suffix}"
            prep.consts[nm] = np.ascontiguousarray(v, np.float32)
            names.append(nm)
    for suffix, v in (("w", hit["wo"]), ("b", hit["bo"])):
        nm = f"{base}_o{suffix}"
        prep.consts[nm] = np.ascontiguousarray(v, np.float32)
        names.append(nm)
    mask = ""
    if hit["mask"] is not None:
        if isinstance(hit["mask_v"], np.ndarray):
            mask = f"{base}_mask"
            prep.consts[mask] = hit["mask_v"]
        else:
            mask = hit["mask"]
    xs = [hit["xs"][k][0] for k in ("q", "k", "v")]
    fused = helper.make_node(ATTENTION_OP, [*xs, mask, *names], [y], name=f"{y}_attention",
                             num_heads=int(hit["num_heads"]), scale=float(hit["scale"]))  # fmt: skip
    out = []
    placed = False
    for n in nodes:
        if id(n) in removed:
            if y in n.output:
                out.append(fused)
                placed = True
            continue
        out.append(n)
    return out if placed else None


# ----------------------------------------------------------------------------- one Split


def _part(g: _AttnGraph, n: onnx.NodeProto, x: str):
    """(axis, start, end, squeeze) when ``n`` takes one contiguous block of ``x``."""
    shape = g.prep.shapes.get(x)
    if shape is None or not n.input or n.input[0] != x or len(n.output) != 1:
        return None
    at = _attrs(n)
    if n.op_type == "Gather":
        idx = g.const(n.input[1]) if len(n.input) > 1 else None
        if idx is None or idx.size != 1 or idx.ndim > 1:
            return None
        a = int(at.get("axis", 0))
        a = a + len(shape) if a < 0 else a
        i = int(np.asarray(idx).ravel()[0])
        i = i + shape[a] if i < 0 else i
        if not 0 <= i < shape[a]:
            return None
        return a, i, i + 1, idx.ndim == 0
    if n.op_type == "Slice":
        if "starts" in at:
            starts, ends = at["starts"], at["ends"]
            axes = at.get("axes", list(range(len(starts))))
            steps = [1]
        else:
            cs = [g.const(i) if i else None for i in n.input[1:]]
            if any(c is None for c, i in zip(cs, n.input[1:]) if i) or len(cs) < 2:
                return None
            starts, ends = list(cs[0]), list(cs[1])
            axes = list(cs[2]) if len(cs) > 2 and cs[2] is not None else list(range(len(starts)))
            steps = list(cs[3]) if len(cs) > 3 and cs[3] is not None else [1]
        if len(starts) != 1 or any(int(s) != 1 for s in steps):
            return None
        a = int(axes[0])
        a = a + len(shape) if a < 0 else a
        s, e, _ = slice(int(starts[0]), int(ends[0]), 1).indices(shape[a])
        return (a, s, e, False) if e > s else None
    return None


def split_slices(prep: Prepared, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """A tensor read only by Gathers / Slices that cut one axis into contiguous
    blocks (torch's q/k/v ``unbind`` or ``chunk``) -> one Split (ncnn ``Slice``),
    plus a Reshape per Gather to drop the axis, instead of a Crop per block."""
    g = _AttnGraph(prep, nodes)
    replace: dict[int, list[onnx.NodeProto]] = {}
    for x, users in g.consumers.items():
        if len(users) < 2 or g.const(x) is not None or x not in prep.shapes:
            continue
        pairs = [(u, p) for u in users if (p := _part(g, u, x)) is not None]
        if len(pairs) < 2 or len({p[0] for _, p in pairs}) != 1:
            continue
        users = [u for u, _ in pairs]
        parts = [p for _, p in pairs]
        axis = parts[0][0]
        order = sorted(range(len(users)), key=lambda i: parts[i][1])
        pos = 0
        for i in order:
            if parts[i][1] != pos:
                break
            pos = parts[i][2]
        else:
            if pos != prep.shapes[x][axis]:
                continue
            outs, extra = [], []
            for i in order:
                u, squeeze = users[i], parts[i][3]
                out = u.output[0]
                if squeeze:
                    part = f"{out}__split"
                    shp = list(prep.shapes[x])
                    shp[axis] = 1
                    prep.shapes[part] = tuple(shp)
                    prep.dtypes[part] = prep.dtypes.get(x, np.dtype("float32"))
                    cname = f"{out}__split_shape"
                    prep.consts[cname] = np.asarray(prep.shapes[out], np.int64)
                    extra.append(helper.make_node("Reshape", [part, cname], [out], name=f"{u.name or out}_squeeze"))
                    outs.append(part)
                else:
                    outs.append(out)
            split = helper.make_node("Split", [x], outs, name=f"{x}_split", axis=axis)
            first = min(users, key=lambda u: nodes.index(u))
            replace[id(first)] = [split, *extra]
            for u in users:
                replace.setdefault(id(u), [])
    if not replace:
        return nodes
    out_nodes = []
    for n in nodes:
        out_nodes.extend(replace.get(id(n), [n]))
    return out_nodes


# ----------------------------------------------------------------------------- linear + bias

LINEAR_OP = "MconvLinear"


def fuse_linear_bias(prep: Prepared, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """MatMul(x, const W [K, N]) + const bias [N] -> one ``MconvLinear(x, W, b)``,
    so the bias rides in the Gemm/InnerProduct layer instead of a MemoryData +
    BinaryOp pair."""
    g = _AttnGraph(prep, nodes)
    replace: dict[int, onnx.NodeProto | None] = {}
    for n in nodes:
        if n.op_type != "MatMul" or g.const(n.input[0]) is not None:
            continue
        w = g.const(n.input[1])
        y = n.output[0]
        users = g.consumers.get(y, [])
        if w is None or w.ndim != 2 or len(users) != 1 or not g.only_use(y) or users[0].op_type != "Add":
            continue
        add = users[0]
        other = _other(add, y)
        c = g.const(other) if other else None
        ys, zs = prep.shapes.get(y), prep.shapes.get(add.output[0])
        if c is None or ys is None or zs != ys or c.size != w.shape[1] or c.shape[-1:] != (w.shape[1],):
            continue
        if c.ndim > len(ys) or np.dtype(c.dtype).kind != "f":
            continue
        bname = f"{add.output[0]}__bias"
        prep.consts[bname] = np.asarray(c, np.float32).ravel()
        replace[id(n)] = None
        replace[id(add)] = helper.make_node(LINEAR_OP, [n.input[0], n.input[1], bname], [add.output[0]],
                                            name=add.name or n.name)  # fmt: skip
    out = []
    for n in nodes:
        if id(n) in replace:
            if replace[id(n)] is not None:
                out.append(replace[id(n)])
            continue
        out.append(n)
    return out


# ----------------------------------------------------------------------------- channel shuffle

SHUFFLE_OP = "MconvShuffleChannel"


def fuse_channel_shuffle(prep: Prepared, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """ShuffleNet's channel shuffle, Reshape [1, C, H, W] -> [1, g, C/g, H, W],
    Transpose (0, 2, 1, 3, 4), Reshape -> [1, C, H, W], -> one ``MconvShuffleChannel``
    (ncnn ``ShuffleChannel group=g``) instead of Reshape, Permute, Reshape."""
    g = _AttnGraph(prep, nodes)
    replace: dict[int, onnx.NodeProto | None] = {}
    for t in nodes:
        perm = _attrs(t).get("perm") if t.op_type == "Transpose" else None
        if perm is None or list(perm) != [0, 2, 1, 3, 4]:
            continue
        r1 = g.producer.get(t.input[0])
        users = g.consumers.get(t.output[0], [])
        if r1 is None or r1.op_type != "Reshape" or len(users) != 1 or users[0].op_type != "Reshape":
            continue
        r2 = users[0]
        src, mid, dst = (prep.shapes.get(n) for n in (r1.input[0], r1.output[0], r2.output[0]))
        if src is None or mid is None or dst is None or len(src) != 4 or src[0] != 1 or tuple(dst) != tuple(src):
            continue
        if tuple(mid) != (1, mid[1], src[1] // mid[1], *src[2:]) or not (
            g.only_use(r1.output[0]) and g.only_use(t.output[0])
        ):
            continue
        replace[id(r1)] = replace[id(t)] = None
        replace[id(r2)] = helper.make_node(SHUFFLE_OP, [r1.input[0]], [r2.output[0]], name=t.name, group=int(mid[1]))
    if not replace:
        return nodes
    return [replace.get(id(n), n) for n in nodes if replace.get(id(n), n) is not None]


# ----------------------------------------------------------------------------- scale into weights


def fold_scale_into_weights(prep: Prepared, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``Mul(x, c)`` (scalar constant) read only as the data input of a Conv, or of a
    MatMul with a constant B, whose weight nothing else reads -> that layer with its
    weight scaled by c (bias unchanged: W (c x) + b = (c W) x + b)."""
    g = _AttnGraph(prep, nodes)
    weight_uses = {k: len(v) for k, v in g.consumers.items()}
    drop: set[int] = set()
    rewired: dict[int, onnx.NodeProto] = {}
    for n in nodes:
        s = g.scalar_scale(n) if n.op_type == "Mul" else None
        users = g.consumers.get(n.output[0], [])
        if s is None or len(users) != 1 or not g.only_use(n.output[0]):
            continue
        u = users[0]
        if u.op_type not in ("Conv", "MatMul") or u.input[0] != n.output[0] or id(u) in rewired:
            continue
        w = g.const(u.input[1])
        if w is None or weight_uses.get(u.input[1], 0) != 1 or np.dtype(w.dtype).kind != "f":
            continue
        name = f"{u.input[1]}__scaled"
        prep.consts[name] = (np.asarray(w, np.float32) * np.float32(s[1])).astype(w.dtype)
        prep.shapes[name], prep.dtypes[name] = tuple(w.shape), np.dtype(w.dtype)
        new = onnx.NodeProto()
        new.CopyFrom(u)
        new.input[0], new.input[1] = s[0], name
        rewired[id(u)] = new
        drop.add(id(n))
    if not rewired:
        return nodes
    return [rewired.get(id(n), n) for n in nodes if id(n) not in drop]


# ----------------------------------------------------------------------------- SDPA

SDPA_OP = "MconvSDPA"


def fuse_sdpa(prep: Prepared, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """The attention core left after :func:`fuse_attention` (projections it could not
    match: cross-attention on a class token, multi-query attention, MobileViT's
    patches, masks computed at run time) -> one ``MconvSDPA`` (ncnn ``SDPA``):

        MatMul(Q [.., H, Lq, d], KT [.., G, d, Lk]) [* or / scalar] [+ mask]
        -> Softmax(last axis) -> MatMul(., V [.., G, Lk, dv]),   G = H or 1

    When KT is a Transpose of K's last two axes read by nothing else, SDPA reads K
    itself (the Transpose goes)."""
    return _replace_matches(prep, nodes, "Softmax", _match_sdpa)


def _replace_matches(prep: Prepared, nodes: list[onnx.NodeProto], op: str, match) -> list[onnx.NodeProto]:
    """Each ``op`` node that ``match(g, node)`` recognises -> its (removed nodes, new
    node); the new node takes the place of the last removed one. Matches that would
    share a node are skipped."""
    g = _AttnGraph(prep, nodes)
    replace: dict[int, onnx.NodeProto | None] = {}
    for n in nodes:
        hit = match(g, n) if n.op_type == op else None
        if hit is None or any(id(r) in replace for r in hit[0]):
            continue
        gone, node = hit
        for r in gone:
            replace[id(r)] = None
        replace[id(gone[-1])] = node
    if not replace:
        return nodes
    return [replace.get(id(n), n) for n in nodes if replace.get(id(n), n) is not None]


def _match_sdpa(g: _AttnGraph, sm: onnx.NodeProto):
    """(nodes replaced, last being the second MatMul; the SDPA node) or None."""
    shape_s = g.prep.shapes.get(sm.output[0])
    if (
        shape_s is None
        or len(shape_s) < 3
        or (int(_attrs(sm).get("axis", -1)) + len(shape_s)) % len(shape_s) != len(shape_s) - 1
    ):
        return None
    users = g.consumers.get(sm.output[0], [])
    if len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[0] != sm.output[0]:
        return None
    mm2, gone = users[0], [sm]
    walked = _scores_affine(g, sm.input[0], gone)
    if walked is None:
        return None
    t, scale, mask = walked
    mm1 = g.producer.get(t)
    if mm1 is None or mm1.op_type != "MatMul" or not g.only_use(t) or not g.only_use(sm.output[0]):
        return None
    q, kt, v = mm1.input[0], mm1.input[1], mm2.input[1]
    for i in (0, 1):  # scalar scales of q or k (MobileViT scales both by d**-0.25)
        x = q if i == 0 else kt
        while (p := g.producer.get(x)) is not None and (s := g.scalar_scale(p)) is not None and g.only_use(x):
            x, scale = s[0], scale * s[1]
            gone.append(p)
        q, kt = (x, kt) if i == 0 else (q, x)
    sq, sk, sv = (g.prep.shapes.get(x) for x in (q, kt, v))
    if sq is None or sk is None or sv is None or min(len(sq), len(sk), len(sv)) < 2:
        return None
    h = int(np.prod(sq[:-2]))
    lead_k = tuple(d for d in sk[:-2] if d != 1)
    if lead_k not in ((), tuple(d for d in sq[:-2] if d != 1)) or tuple(sv[:-2]) != tuple(sk[:-2]):
        return None  # K and V: the heads (and leading axes) of Q, or one shared group
    if sk[-2] != sq[-1] or sv[-2] != sk[-1]:
        return None
    if mask and not _sdpa_mask_ok(g.prep.shapes.get(mask), h, sq[-2], sk[-1]):
        return None
    k_in, transposed = kt, 1
    tp = g.producer.get(kt)
    perm = _attrs(tp).get("perm") if tp is not None and tp.op_type == "Transpose" else None
    if perm is not None and list(perm) == [*range(len(sk) - 2), len(sk) - 1, len(sk) - 2] and g.only_use(kt):
        k_in, transposed = tp.input[0], 0
        gone.append(tp)
    gone = [*gone, mm1, mm2]
    node = helper.make_node(SDPA_OP, [q, k_in, v, mask], list(mm2.output), name=f"{mm2.name or sm.name}_sdpa",
                            scale=float(scale), k_transposed=transposed)  # fmt: skip
    return gone, node


def _scores_affine(g: _AttnGraph, t: str, gone: list[onnx.NodeProto]):
    """Walk back from the softmax input through Reshapes (that keep the last two axes),
    Adds and scalar scales to the scores MatMul: the softmax input is then
    ``scale * scores + mask``. Returns (scores, scale, mask name or "") or None.

    Constant masks are summed (Swin: relative position bias, then the shift mask in
    another shape) into one constant in the softmax input's shape; a dynamic mask is
    taken when it is the only one and nothing scales it."""
    target = g.prep.shapes.get(t)
    scale, const, dyn = 1.0, None, ""
    while (p := g.producer.get(t)) is not None and g.only_use(t):
        ps = g.prep.shapes.get(p.input[0]) if p.input else None
        if p.op_type == "Reshape" and ps is not None and target is not None and tuple(ps[-2:]) == tuple(target[-2:]):
            t = p.input[0]
        elif (s := g.scalar_scale(p)) is not None:
            t, scale = s[0], scale * s[1]
        elif p.op_type == "Add" and len(p.input) == 2:
            k = next((k for k in (0, 1) if g.const(p.input[k]) is not None), None)
            if k is not None:
                c = np.broadcast_to(np.asarray(g.const(p.input[k]), np.float32), g.prep.shapes[p.output[0]])
                c = scale * c.reshape(target)
                const = c if const is None else const + c
                t = p.input[1 - k]
            else:
                mm = [i for i in p.input if getattr(g.producer.get(i), "op_type", "") in ("MatMul", "Mul", "Div")]
                if dyn or scale != 1.0 or len(mm) != 1:
                    return None
                dyn, t = next(i for i in p.input if i != mm[0]), mm[0]
        else:
            break
        gone.append(p)
    if const is not None and dyn:
        return None
    mask = dyn
    if const is not None:
        mask = f"{t}__sdpa_mask"
        g.prep.consts[mask] = np.ascontiguousarray(const, np.float32)
        g.prep.shapes[mask] = tuple(const.shape)
    return t, scale, mask


def _sdpa_mask_ok(shape, h: int, lq: int, lk: int) -> bool:
    """Masks SDPA can read: [.., Lq, Lk] shared by all heads or one per head, or a
    [.., 1, Lk] row for every query."""
    if shape is None or len(shape) < 2:
        return False
    lead = int(np.prod(shape[:-2]))
    return (tuple(shape[-2:]) == (lq, lk) and lead in (1, h)) or (tuple(shape[-2:]) == (1, lk) and lead == 1)


def drop_softmax_nan_guards(prep: Prepared, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``Where(IsNaN(S), c, S)`` with S a Softmax output -> S (transformers' guard
    against fully masked rows): a softmax of finite values is never NaN, and masks
    are lowered finite (rules_logic), so the guard is the identity in ncnn. Removing
    it here lets the attention fusions see Softmax -> MatMul."""
    g = _AttnGraph(prep, nodes)
    rename: dict[str, str] = {}
    drop: set[int] = set()
    for w in nodes:
        if w.op_type != "Where" or len(w.input) != 3 or w.output[0] in prep.outputs:
            continue
        isnan = g.prod(w.input[0], "IsNaN")
        s = w.input[2]
        if isnan is None or isnan.input[0] != s or g.prod(s, "Softmax") is None or len(g.consumers[w.input[0]]) != 1:
            continue
        rename[w.output[0]] = s
        drop |= {id(w), id(isnan)}
    return _bypass(nodes, rename, drop)


def _bypass(nodes: list[onnx.NodeProto], rename: dict[str, str], drop: set[int]) -> list[onnx.NodeProto]:
    """``nodes`` without the dropped ones, their consumers reading ``rename[output]``."""
    if not rename:
        return nodes
    out = []
    for n in nodes:
        if id(n) in drop:
            continue
        if any(i in rename for i in n.input):
            m = onnx.NodeProto()
            m.CopyFrom(n)
            for k, i in enumerate(m.input):
                m.input[k] = rename.get(i, i)
            n = m
        out.append(n)
    return out


def gather_elements_as_gather(prep: Prepared, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``GatherElements(data, Expand(u))`` (through Casts) where ``u`` is 1 on every
    axis but ``axis`` and the expansion spans data's other axes -> ``Gather(data,
    flat(u), axis)``: the same rows picked whole (RT-DETR picks its top-k boxes so).
    ncnn has no per-element gather; a row gather by computed indices it has."""
    g = _AttnGraph(prep, nodes)
    out: list[onnx.NodeProto] = []
    for n in nodes:
        if n.op_type != "GatherElements" or len(n.input) != 2:
            out.append(n)
            continue
        data, ids = n.input
        axis = next((int(helper.get_attribute_value(a)) for a in n.attribute if a.name == "axis"), 0)
        t = ids
        while (p := g.producer.get(t)) is not None and p.op_type == "Cast":
            t = p.input[0]
        e = g.producer.get(t)
        ds, os_ = prep.shapes.get(data), prep.shapes.get(n.output[0])
        us = prep.shapes.get(e.input[0]) if e is not None and e.op_type == "Expand" else None
        if us is None or ds is None or os_ is None or len(us) != len(ds) or len(os_) != len(ds):
            out.append(n)
            continue
        axis %= len(ds)
        if any(us[a] != 1 or os_[a] != ds[a] for a in range(len(ds)) if a != axis):
            out.append(n)
            continue
        u, k = e.input[0], int(us[axis])
        flat, shape = f"{n.output[0]}__rows", f"{n.output[0]}__rows_shape"
        prep.consts[shape] = np.array([k], np.int64)
        prep.shapes[shape], prep.dtypes[shape] = (1,), np.dtype("int64")
        prep.shapes[flat], prep.dtypes[flat] = (k,), prep.dtypes.get(u, np.dtype("int64"))
        out.append(helper.make_node("Reshape", [u, shape], [flat], name=f"{n.name}_rows"))
        out.append(helper.make_node("Gather", [data, flat], list(n.output), name=n.name, axis=axis))
    return out


_BROADCASTING = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where"}


def drop_broadcast_expands(prep: Prepared, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``Expand(x)`` read only by broadcasting element-wise ops whose result has the
    same shape without it -> ``x`` (torch's ``F.normalize`` divides by
    ``norm.clamp_min(eps).expand_as(x)``: XCiT, EdgeNeXt). The expanded copy would be
    a MemoryData of zeros and an extra BinaryOp in ncnn."""
    g = _AttnGraph(prep, nodes)
    rename: dict[str, str] = {}
    drop: set[int] = set()
    for e in nodes:
        if e.op_type != "Expand" or e.output[0] in prep.outputs or g.const(e.input[0]) is not None:
            continue
        x, y = e.input[0], e.output[0]
        xs = prep.shapes.get(x)
        users = g.consumers.get(y, [])
        if xs is None or not users:
            continue
        ok = True
        for u in users:
            if u.op_type not in _BROADCASTING or (u.op_type == "Where" and u.input[0] == y):
                ok = False
                break
            shapes = [xs if i == y else prep.shapes.get(i) for i in u.input]
            out = prep.shapes.get(u.output[0])
            if out is None or any(sh is None for sh in shapes):
                ok = False
                break
            try:
                ok = tuple(np.broadcast_shapes(*[tuple(sh) for sh in shapes])) == tuple(out)
            except ValueError:
                ok = False
            if not ok:
                break
        if ok:
            rename[y] = x
            drop.add(id(e))
    return _bypass(nodes, rename, drop)


def fuse_group_norm(prep: Prepared, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """GroupNorm as torch exports it, Reshape [1, C, ...] -> [1, G, -1],
    InstanceNormalization (scale 1, bias 0), Reshape back, [Mul gamma [C,1..]],
    [Add beta [C,1..]] -> one GroupNormalization with per-channel scale and bias
    (ncnn ``GroupNorm``; PoolFormer's and MobileViTv2's GroupNorm(1, C))."""
    return _replace_matches(prep, nodes, "InstanceNormalization", _match_group_norm)


def _channel_const(g: _AttnGraph, n: onnx.NodeProto | None, x: str, op: str, c: int, rank: int):
    """The per-channel constant of ``n = op(x, const)`` as a [C] vector, else None."""
    if n is None or n.op_type != op or len(n.input) != 2:
        return None
    other = _other(n, x)
    v = g.const(other) if other else None
    if v is None or v.size != c or np.dtype(v.dtype).kind != "f":
        return None
    shape = list(v.shape)
    while len(shape) < rank:
        shape.insert(0, 1)
    if len(shape) != rank or shape[1] != c:
        return None
    return np.asarray(v, np.float32).ravel()


def _match_group_norm(g: _AttnGraph, inorm: onnx.NodeProto):
    r1 = g.prod(inorm.input[0], "Reshape")
    users = g.consumers.get(inorm.output[0], [])
    if r1 is None or len(users) != 1 or users[0].op_type != "Reshape":
        return None
    r2 = users[0]
    x = r1.input[0]
    sx, mid = g.prep.shapes.get(x), g.prep.shapes.get(inorm.output[0])
    if sx is None or mid is None or len(sx) < 3 or sx[0] != 1 or len(mid) != 3 or g.prep.shapes.get(r2.output[0]) != sx:
        return None
    groups, c = int(mid[1]), int(sx[1])
    scale, bias = g.const(inorm.input[1]), g.const(inorm.input[2])
    if scale is None or bias is None or not (np.all(scale == 1) and np.all(bias == 0)) or c % groups:
        return None
    if not (g.only_use(inorm.input[0]) and g.only_use(inorm.output[0])):
        return None
    gone, y = [r1, inorm, r2], r2.output[0]
    gamma, beta = np.ones(c, np.float32), np.zeros(c, np.float32)
    for op in ("Mul", "Add"):
        u = g.consumers.get(y, [])
        v = _channel_const(g, u[0], y, op, c, len(sx)) if len(u) == 1 and g.only_use(y) else None
        if v is None:
            continue
        if op == "Mul":
            gamma = v
        else:
            beta = v
        gone.append(u[0])
        y = u[0].output[0]
    eps = float(_attrs(inorm).get("epsilon", 1e-5))
    names = [f"{y}__gn_scale", f"{y}__gn_bias"]
    g.prep.consts[names[0]], g.prep.consts[names[1]] = gamma, beta
    node = helper.make_node("GroupNormalization", [x, *names], [y], name=f"{inorm.name}_groupnorm",
                            num_groups=groups, epsilon=eps)  # fmt: skip
    return gone, node
