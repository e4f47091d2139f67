"""ONNX-level pattern fusions applied before lowering, so the rule table sees one
node where ncnn has one layer.

Cases (each only when the inner tensors have no other consumer and are not
graph outputs):
    Mul(x, Sigmoid(x))                         -> Swish
    Mul(x, Tanh(Softplus(x)))                  -> Mish
    Mul(x, HardSigmoid(x, 1/6, 0.5))           -> HardSwish
    Mul(Mul(x, Add(Erf(Div(x, √2)), 1)), 0.5)  -> Gelu (exact), any operand order,
                                                   also Mul(x, 1/√2) for the Div
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
    """Exact GELU ending in ``last`` (a Mul): (x, removed nodes) or None."""
    half_of = None
    for k in (0, 1):
        if g.scalar(last.input[k]) == 0.5:
            half_of = last.input[1 - k]
    if half_of is None or not g.only_use(half_of):
        return None
    m1 = g.prod(half_of, "Mul")
    if m1 is None:
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
            return x, [m1, add, erf, sc]
    return None


def fuse_patterns(prep: Prepared) -> list[onnx.NodeProto]:
    """The prepared nodes with the patterns above replaced by single nodes."""
    nodes = list(prep.nodes)
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
            x, gone = gelu
            replace[id(n)] = helper.make_node("Gelu", [x], list(n.output), name=n.name)
            removed.update(id(r) for r in gone)
    out = []
    for n in nodes:
        if id(n) in removed:
            continue
        out.append(replace.get(id(n), n))
    return out
