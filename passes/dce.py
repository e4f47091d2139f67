"""Dead-node elimination.

Cases rewritten:
1. Nodes none of whose outputs reach a graph output are removed.
2. Initializers nothing reads are removed (also from graph inputs, where old
   exporters listed them).
3. value_info entries for tensors that no longer exist are removed.
"""

from __future__ import annotations

import onnx

from mconv.modelio import tensor_nbytes
from mconv.passes.base import Pass, PassResult
from mconv.passes.graph import subgraph_outer_reads


class EliminateDeadNodesPass(Pass):
    """Remove nodes and initializers that do not contribute to any graph output."""

    name = "eliminate_dead_nodes"

    def call(self, model: onnx.ModelProto) -> PassResult:
        g = model.graph
        live = {o.name for o in g.output}
        keep_rev = []
        for node in reversed(g.node):
            if any(o in live for o in node.output if o):
                keep_rev.append(node)
                live.update(i for i in node.input if i)
                for a in node.attribute:
                    if a.type == onnx.AttributeProto.GRAPH:
                        live |= subgraph_outer_reads(a.g)
                    elif a.type == onnx.AttributeProto.GRAPHS:
                        for sg in a.graphs:
                            live |= subgraph_outer_reads(sg)
        removed_nodes = len(g.node) - len(keep_rev)
        dead_inits = [i for i, t in enumerate(g.initializer) if t.name not in live]
        removed_inits = len(dead_inits)
        init_names = {t.name for t in g.initializer}
        inputs = [i for i in g.input if i.name not in init_names or i.name in live]
        if removed_nodes:
            del g.node[:]
            g.node.extend(reversed(keep_rev))
        if dead_inits:
            _remove_initializers(g, dead_inits)
        if len(inputs) != len(g.input):
            del g.input[:]
            g.input.extend(inputs)
        produced = {o for n in g.node for o in n.output} | {i.name for i in g.input}
        vis = [vi for vi in g.value_info if vi.name in produced]
        if len(vis) != len(g.value_info):
            del g.value_info[:]
            g.value_info.extend(vis)
        modified = bool(removed_nodes or removed_inits)
        return PassResult(
            model, modified, [f"removed {removed_nodes} node(s), {removed_inits} initializer(s)"] if modified else []
        )


def _remove_initializers(g: onnx.GraphProto, dead: list[int]) -> None:
    """Drop initializers by index. Rebuilding the list copies every tensor, which is cheap
    for many small ones but doubles memory for multi-GB weights; deleting in place costs
    O(n) per deletion, which is cheap for the few large tensors of a big model."""
    total = sum(tensor_nbytes(t) for t in g.initializer)  # dims only: raw_data access copies
    if total < (256 << 20):
        dead_set = set(dead)
        keep = [t for i, t in enumerate(g.initializer) if i not in dead_set]
        del g.initializer[:]
        g.initializer.extend(keep)
    else:
        for i in reversed(dead):
            del g.initializer[i]
