"""Integer graph inputs: token ids for ncnn's Embed, or values.

ncnn's Embed reads its input Mat's bytes as int32 (and clamps to [0, V-1]); every
other layer reads floats. So an integer input that indexes a constant [V, D] table (a
``Gather`` on axis 0, indices straight from the input) is fed as int32 bits, and one
that is only read as values (an attention mask) is fed as float values.

Cases:
    one lookup, no other use   -> the Gather rule writes one Embed (rules_shape)
    several lookups and/or uses as values (RoBERTa: word embeddings, and positions
    computed from ``input_ids != pad``) -> one Embed over the tables side by side,
    plus a column holding ``arange(V)`` when the ids are also read as values; a Slice
    splits its rows into each lookup's result and the ids' float values. The ids
    blob never feeds two layers: a Split layer would convert it to fp16/bf16 storage
    on ARM, and the int32 bits would not survive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from mconv.targets.ncnn.fold import value_of
from mconv.targets.ncnn.ir import Weight
from mconv.targets.ncnn.lower import Ctx, default_keep, nc_shape


@dataclass
class IdsPlan:
    """How one integer input is read: its lookups (Gather nodes) and whether it is
    also read as values."""

    name: str
    lookups: list[onnx.NodeProto] = field(default_factory=list)
    as_values: bool = False

    @property
    def combined(self) -> bool:
        return len(self.lookups) > 1 or (bool(self.lookups) and self.as_values)


def _is_lookup(n: onnx.NodeProto, x: str, consts: dict) -> bool:
    if n.op_type != "Gather" or len(n.input) < 2 or n.input[1] != x or n.input[0] not in consts:
        return False
    axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
    return len(consts[n.input[0]].shape) == 2 and axis in (0, -2)


def plan_ids(nodes: list[onnx.NodeProto], int_inputs: list[str], consts: dict) -> dict[str, IdsPlan]:
    """The integer inputs that are token ids (at least one lookup), with their uses."""
    plans: dict[str, IdsPlan] = {}
    for x in int_inputs:
        p = IdsPlan(x)
        for n in nodes:
            if x not in n.input:
                continue
            if _is_lookup(n, x, consts) and list(n.input).count(x) == 1:
                p.lookups.append(n)
            else:
                p.as_values = True
        if p.lookups:
            plans[x] = p
    return plans


def lower_combined(ctx: Ctx, p: IdsPlan, ids_blob: str) -> set[int]:
    """Emit the one Embed of a combined plan, bind each lookup's output and (if read as
    values) rebind the input to its float values; returns the ids of the handled nodes."""
    shape = ctx.prep.shapes[p.name]
    words = int(np.prod(shape)) if shape else 1
    tables = [np.asarray(value_of(ctx.prep.consts[n.input[0]]), np.float32) for n in p.lookups]
    v = max(t.shape[0] for t in tables)
    cols = [np.pad(t, ((0, v - t.shape[0]), (0, 0))) for t in tables]
    if p.as_values:
        cols.append(np.arange(v, dtype=np.float32)[:, None])
    table = np.ascontiguousarray(np.concatenate(cols, axis=1))
    width = table.shape[1]
    ib = ctx.reshape(ids_blob, (words,), name_hint=p.name)
    emb = ctx.emit("Embed", [ib], (words, width), {0: width, 1: v, 2: 0, 3: int(table.size)},
                   [Weight(table.ravel(), tagged=True)])  # fmt: skip
    sizes = [c.shape[1] for c in cols]
    parts = ctx.layer("Slice", [emb], [(words, s) for s in sizes], {0: [*sizes[:-1], -233], 1: 1})
    for n, blob in zip(p.lookups, parts):
        out = n.output[0]
        keep = default_keep(ctx.prep.shapes[out])
        ctx.bind(out, ctx.reshape(blob, nc_shape(ctx.prep.shapes[out], keep), name_hint=out), keep)
    if p.as_values:
        keep = default_keep(shape)
        ctx.tensors.pop(p.name, None)
        ctx.bind(p.name, ctx.reshape(parts[-1], nc_shape(shape, keep), name_hint=p.name), keep)
    return {id(n) for n in p.lookups}
