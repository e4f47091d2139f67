"""Outputs behind a selection: rows picked by TopK or NonMaxSuppression.

A detector that ends in ``TopK`` over query scores (RT-DETR), or one with NMS in the
graph, emits its rows in score order. Two correct runtimes whose scores differ by
float noise may order two nearly equal queries the other way round; the rows are the
same detections, but compared element by element they look wildly wrong.

:func:`selected_outputs` finds those outputs (their producer chain reaches a
selecting op); :func:`match_rows` puts the artifact's rows in the order of the
reference's rows that they best match, jointly over all outputs behind the same
selection (boxes, scores and labels move together), so that the usual metrics then
compare detection with detection.
"""

from __future__ import annotations

import numpy as np
import onnx

# Ops that pick and order rows. ArgMax/ArgMin are not among them: they label positions
# (a class per pixel or per box) without reordering anything, so those outputs compare
# element-wise, and a label that flips shows as the error it is.
SELECTING_OPS = ("TopK", "NonMaxSuppression")
# Above this many rows the assignment costs too much; such outputs compare element-wise.
MAX_ROWS = 4096


def selected_outputs(model: onnx.ModelProto) -> dict[str, str]:
    """Graph output -> the selecting node (``"TopK 'name'"``) its value depends on.

    Outputs that no selection reaches are absent. Where several selections feed an
    output, the one nearest to it is named.
    """
    producer = {o: n for n in model.graph.node for o in n.output if o}
    out: dict[str, str] = {}
    for g_out in model.graph.output:
        seen: set[str] = set()
        frontier = [g_out.name]
        found = None
        while frontier and found is None:
            nxt = []
            for t in frontier:
                node = producer.get(t)
                if node is None or t in seen:
                    continue
                seen.add(t)
                if node.op_type in SELECTING_OPS:
                    found = f"{node.op_type} '{node.name or node.output[0]}'"
                    break
                nxt += [x for x in node.input if x]
            frontier = nxt
        if found:
            out[g_out.name] = found
    return out


def _rows(a: np.ndarray) -> np.ndarray:
    """(groups, rows, features): leading 1-dims dropped, the second-last axis as rows."""
    shape = [d for d in a.shape]
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    a = a.reshape(shape)
    if a.ndim == 0:
        return a.reshape(1, 1, 1)
    if a.ndim == 1:
        return a.reshape(1, -1, 1)
    return a.reshape(-1, a.shape[-2], a.shape[-1])


def match_rows(refs: list[np.ndarray], gots: list[np.ndarray]) -> list[np.ndarray] | None:
    """The ``gots`` with their rows reordered to best match ``refs`` (one permutation for all).

    Rows are matched by the Hungarian method (scipy) on the summed squared row
    differences, each output scaled by its reference's largest magnitude; every
    output must have the same groups and rows. Returns None when they do not, or
    when a shape differs from its reference.
    """
    from scipy.optimize import linear_sum_assignment

    r3 = [_rows(np.asarray(r, dtype=np.float64)) for r in refs]
    try:
        g3 = [_rows(np.asarray(g, dtype=np.float64).reshape(np.shape(r))) for g, r in zip(gots, refs)]
    except ValueError:
        return None
    if len({a.shape[:2] for a in r3}) != 1 or r3[0].shape[1] > MAX_ROWS:
        return None
    groups, rows = r3[0].shape[:2]
    out = [g.copy() for g in g3]
    for b in range(groups):
        cost = np.zeros((rows, rows))
        for r, g in zip(r3, g3):
            scale = float(np.abs(r[b]).max()) or 1.0
            rb = np.nan_to_num(r[b] / scale, nan=1e15, posinf=1e15, neginf=-1e15)
            gb = np.nan_to_num(g[b] / scale, nan=-1e15, posinf=-1e15, neginf=1e15)
            # |r - g|^2 without the (rows, rows, features) difference array.
            cost += (rb * rb).sum(1)[:, None] + (gb * gb).sum(1)[None, :] - 2.0 * rb @ gb.T
        ri, gi = linear_sum_assignment(cost)
        perm = np.empty(rows, dtype=int)
        perm[ri] = gi
        for o, g in zip(out, g3):
            o[b] = g[b][perm]
    return [o.reshape(np.shape(r)) for o, r in zip(out, refs)]
