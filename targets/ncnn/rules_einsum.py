"""Einsum -> Permute / Reshape views around one ncnn MatMul (two operands) or a Permute
(one operand, a Reduction first for summed letters): MViTv2's decomposed relative
positions (``byhwc,hkc->byhwk``) and attention written as einsum.

Letters of size 1 everywhere are dropped (they carry no values); for two operands the
letters split into batch (both operands and the output), contracted (both, not the
output) and free ones (one operand and the output): A becomes (batch, free_a, contracted),
B (batch, contracted, free_b), their product is permuted to the output's order; a letter
of one operand only and not in the output is summed in that operand first. Each operand
and the product must fit a Mat (at most 4 letters larger than 1). Repeated letters
(traces, diagonals) and ellipses are refused.
"""

from __future__ import annotations

import numpy as np

from mconv.targets.ncnn.lower import Ctx, Node, NotLowerable, Tensor, default_keep, sanitize_hint
from mconv.targets.ncnn.registry import rule
from mconv.targets.ncnn.rules_shape import perm_order_type


def _parse(equation: str, n_inputs: int) -> tuple[list[str], str]:
    eq = equation.replace(" ", "")
    if "." in eq:
        raise NotLowerable("Einsum with an ellipsis")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != n_inputs:
        raise NotLowerable("Einsum equation does not match its inputs")
    if "->" not in eq:  # implicit output: the letters seen once, sorted
        letters = "".join(terms)
        rhs = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    for t in (*terms, rhs):
        if len(set(t)) != len(t):
            raise NotLowerable("Einsum with a repeated letter in one term (trace or diagonal)")
    return terms, rhs


def _arranged(ctx: Ctx, t: Tensor, term: str, order: str, size: dict[str, int]) -> str:
    """Operand ``t`` (letters ``term``, size-1 letters dropped) as a Mat with its letters
    in ``order``; letters of ``term`` not in ``order`` are summed first."""
    if len(term) > 4 or len(order) > 4:
        raise NotLowerable(f"Einsum operand with {max(len(term), len(order))} axes larger than 1")
    if t.const is not None:
        value = np.asarray(t.const, np.float32).reshape([size[c] for c in term])
        summed = tuple(i for i, c in enumerate(term) if c not in order)
        value = value.sum(axis=summed) if summed else value
        kept = [c for c in term if c in order]
        value = value.transpose([kept.index(c) for c in order]) if order else value
        nc = tuple(size[c] for c in order) or (1,)
        return ctx.const_blob(np.ascontiguousarray(value), nc, sanitize_hint(t.name))
    assert t.blob is not None
    blob = ctx.reshape(t.blob, tuple(size[c] for c in term) or (1,), name_hint=t.name)
    summed = [i for i, c in enumerate(term) if c not in order]
    if summed:
        kept = "".join(c for c in term if c in order)
        p = {0: 0, 1: int(len(summed) == len(term)), 3: summed, 4: 0, 5: 1}
        blob = ctx.emit("Reduction", [blob], tuple(size[c] for c in kept) or (1,), p)
        term = kept
    return _permuted(ctx, blob, term, order, size)


def _permuted(ctx: Ctx, blob: str, have: str, want: str, size: dict[str, int]) -> str:
    if have == want:
        return blob
    perm = tuple(have.index(c) for c in want)
    return ctx.emit("Permute", [blob], tuple(size[c] for c in want), {0: perm_order_type(perm)})


@rule("Einsum")
def einsum(ctx: Ctx, node: Node) -> None:
    ins = [t for t in node.inputs if t is not None]
    eq = node.attr("equation")
    terms, rhs = _parse(eq.decode() if isinstance(eq, bytes) else str(eq), len(ins))
    if len(ins) not in (1, 2):
        raise NotLowerable(f"Einsum of {len(ins)} operands")
    if all(t.const is not None for t in ins):
        raise NotLowerable("Einsum of constants (fold first)")
    size: dict[str, int] = {}
    for t, term in zip(ins, terms):
        if len(term) != t.rank:
            raise NotLowerable("Einsum term does not match its operand's rank")
        for c, d in zip(term, t.shape):
            if size.setdefault(c, int(d)) != int(d):
                raise NotLowerable(f"Einsum letter '{c}' has sizes {size[c]} and {d}")
    big = {c for c, d in size.items() if d > 1}
    terms = ["".join(c for c in term if c in big) for term in terms]
    out = "".join(c for c in rhs if c in big)
    name = node.outputs[0]
    if len(ins) == 1:
        blob = _arranged(ctx, ins[0], terms[0], out, size)
        ctx.bind(name, blob, default_keep(ctx.out_shape()))
        return
    ta, tb = terms
    batch = [c for c in out if c in ta and c in tb]
    contract = [c for c in ta if c in tb and c not in out]
    free_a = [c for c in ta if c not in tb and c in out]  # the others are summed within A
    free_b = [c for c in tb if c not in ta and c in out]
    a = _arranged(ctx, ins[0], ta, "".join(batch + free_a + contract), size)
    b = _arranged(ctx, ins[1], tb, "".join(batch + contract + free_b), size)

    def prod(letters: list[str]) -> int:
        return int(np.prod([size[c] for c in letters])) if letters else 1

    nb, m, k, n = prod(batch), prod(free_a), prod(contract), prod(free_b)
    lead = (nb,) if nb > 1 else ()
    a = ctx.reshape(a, (*lead, m, k))
    b = ctx.reshape(b, (*lead, k, n))
    mm = ctx.emit("MatMul", [a, b], (*lead, m, n), {0: 0})
    got = "".join(batch + free_a + free_b)
    if len(got) > 4:
        raise NotLowerable(f"Einsum product with {len(got)} axes larger than 1")
    mm = ctx.reshape(mm, tuple(size[c] for c in got) or (1,))
    blob = _permuted(ctx, mm, got, out, size)
    ctx.bind(name, blob, default_keep(ctx.out_shape()))
