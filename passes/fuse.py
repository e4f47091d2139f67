"""Fuse BatchNormalization into the preceding Conv.

Cases rewritten:
1. ``Conv(x, W[, b]) -> BatchNormalization`` where W, b and the BN parameters are
   constants and the Conv output feeds only the BN: the BN is folded into new
   weights ``W * s`` and bias ``(b - mean) * s + beta`` with ``s = scale / sqrt(var + eps)``.
2. The same for ``ConvTranspose`` (scale applies to the output-channel axis 1, per group).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from mconv.passes.base import Pass, PassResult
from mconv.passes.graph import attr, consumers, graph_output_names, is_default_domain


def batchnorm_affine(bn: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> tuple[np.ndarray, np.ndarray]:
    """Inference-mode BatchNormalization as a per-channel ``x * scale + shift`` (float64);
    its four parameters must be in ``inits``."""
    gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
    scale = gamma / np.sqrt(var + attr(bn, "epsilon", 1e-5))
    return scale, beta - mean * scale


class FuseConvBatchNormPass(Pass):
    """Fold inference-mode BatchNormalization into Conv/ConvTranspose weights."""

    name = "fuse_conv_bn"

    def call(self, model: onnx.ModelProto) -> PassResult:
        g = model.graph
        inits = {t.name: t for t in g.initializer}
        users = consumers(g)
        outputs = graph_output_names(g)
        producer = {o: n for n in g.node for o in n.output}
        drop: set[int] = set()
        new_inits: dict[str, onnx.TensorProto] = {}
        renames: dict[str, str] = {}
        fused = 0
        for bn in g.node:
            if bn.op_type != "BatchNormalization" or not is_default_domain(bn) or len(bn.output) != 1:
                continue
            conv = producer.get(bn.input[0])
            if conv is None or conv.op_type not in ("Conv", "ConvTranspose") or id(conv) in drop:
                continue
            if len(users.get(conv.output[0], [])) != 1 or conv.output[0] in outputs:
                continue
            names = list(conv.input[1:]) + list(bn.input[1:5])
            if any(n not in inits or n in new_inits for n in names if n):
                continue
            w = numpy_helper.to_array(inits[conv.input[1]])
            if w.dtype not in (np.float32, np.float64, np.float16):
                continue
            b = numpy_helper.to_array(inits[conv.input[2]]) if len(conv.input) > 2 and conv.input[2] else None
            s, shift = batchnorm_affine(bn, inits)
            if conv.op_type == "Conv":
                w2 = w.astype(np.float64) * s.reshape(-1, *([1] * (w.ndim - 1)))
            else:
                group = attr(conv, "group", 1)
                cin, cout_g = w.shape[0], w.shape[1]
                wg = w.astype(np.float64).reshape(group, cin // group, cout_g, *w.shape[2:])
                wg = wg * s.reshape(group, 1, cout_g, *([1] * (w.ndim - 2)))
                w2 = wg.reshape(w.shape)
            b0 = b.astype(np.float64) if b is not None else np.zeros_like(s)
            b2 = b0 * s + shift
            wname, bname = f"{conv.name or conv.output[0]}_W_bnfused", f"{conv.name or conv.output[0]}_B_bnfused"
            new_inits[wname] = numpy_helper.from_array(w2.astype(w.dtype), wname)
            new_inits[bname] = numpy_helper.from_array(b2.astype(w.dtype), bname)
            del conv.input[1:]
            conv.input.extend([wname, bname])
            # The conv now produces the BN's output name (which others read).
            conv.output[0], old = bn.output[0], conv.output[0]
            renames[old] = bn.output[0]
            drop.add(id(bn))
            fused += 1
        if not fused:
            return PassResult(model, False)
        keep = [n for n in g.node if id(n) not in drop]
        del g.node[:]
        g.node.extend(keep)
        g.initializer.extend(new_inits.values())
        # Stale value_info for the old conv output would mislead later passes.
        stale = set(renames)
        vis = [vi for vi in g.value_info if vi.name not in stale]
        del g.value_info[:]
        g.value_info.extend(vis)
        return PassResult(model, True, [f"fused {fused} BatchNormalization node(s)"])
