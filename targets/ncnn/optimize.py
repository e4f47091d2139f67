"""Optimizations on the ncnn graph (after lowering, before Split insertion).

Passes, each returning whether it changed the graph:

* :func:`fuse_batchnorm` — BatchNorm right after a convolution or a one-vector
  InnerProduct (sole consumer) is folded into its weights and bias.
* :func:`fuse_activation` — ReLU / leaky ReLU / Clip / Sigmoid / Mish /
  HardSwish right after a convolution, deconvolution or InnerProduct becomes
  its fused activation (keys 9/10), which ncnn applies in the same kernel.
* :func:`merge_reshapes` — Reshape of a Reshape reads the first input; a
  Reshape to the shape it already has disappears.
* :func:`fold_transpose_b` — a Permute swapping the last two axes that feeds a
  MatMul's second input becomes the MatMul's ``transB`` (``v @ attn^T`` in YOLO12's
  area attention: the (heads, N, N) attention matrix is not copied).

Blobs named in ``keep_blobs`` (graph inputs and outputs) are never removed.
"""

from __future__ import annotations

import numpy as np

from mconv.targets.ncnn.ir import Layer, NcnnGraph

_WEIGHTED = {
    "Convolution",
    "ConvolutionDepthWise",
    "Convolution1D",
    "ConvolutionDepthWise1D",
    "Convolution3D",
    "InnerProduct",
}
_ACT_HOSTS = _WEIGHTED | {"Deconvolution", "DeconvolutionDepthWise", "Deconvolution1D"}


def _sole_consumer(g: NcnnGraph, blob: str, keep: set[str]) -> Layer | None:
    if blob in keep:
        return None
    users = [layer for layer in g.layers if blob in layer.inputs]
    if len(users) != 1 or users[0].inputs.count(blob) != 1 or len(users[0].inputs) != 1:
        return None
    return users[0]


def _bias_key(layer: Layer) -> int:
    return 1 if layer.type == "InnerProduct" else 5


def fuse_batchnorm(g: NcnnGraph, keep: set[str]) -> bool:
    changed = False
    for layer in list(g.layers):
        if layer.type not in _WEIGHTED or len(layer.outputs) != 1 or 9 in layer.params:
            continue
        bn = _sole_consumer(g, layer.outputs[0], keep)
        if bn is None or bn.type != "BatchNorm":
            continue
        if layer.type == "InnerProduct" and len(g.shapes.get(layer.outputs[0], ())) != 1:
            continue  # over rows, BatchNorm scales each row, not each output
        slope, mean, var, bias = (w.data.astype(np.float64) for w in bn.weights)
        eps = float(bn.params.get(1, 0.0))
        a = slope / np.sqrt(var + eps)
        b = bias - mean * a
        w = layer.weights[0].data.astype(np.float64).reshape(len(a), -1) * a[:, None]
        layer.weights[0].data = w.astype(np.float32).ravel()
        old_b = layer.weights[1].data.astype(np.float64) if layer.params.get(_bias_key(layer), 0) else np.zeros_like(a)
        new_b = (old_b * a + b).astype(np.float32)
        if layer.params.get(_bias_key(layer), 0):
            layer.weights[1].data = new_b
        else:
            from mconv.targets.ncnn.ir import Weight

            layer.weights.insert(1, Weight(new_b, tagged=False))
            layer.params[_bias_key(layer)] = 1
        layer.outputs = list(bn.outputs)
        g.layers.remove(bn)
        changed = True
    return changed


def _activation(layer: Layer) -> tuple[int, list[float] | None] | None:
    p = layer.params
    if layer.type == "ReLU":
        slope = float(p.get(0, 0.0))
        return (1, None) if slope == 0.0 else (2, [slope])
    if layer.type == "Clip":
        return 3, [float(p.get(0)), float(p.get(1))]
    if layer.type == "Sigmoid":
        return 4, None
    if layer.type == "Mish":
        return 5, None
    if layer.type == "HardSwish":
        return 6, [float(p.get(0, 0.2)), float(p.get(1, 0.5))]
    return None


def fuse_activation(g: NcnnGraph, keep: set[str]) -> bool:
    changed = False
    for layer in list(g.layers):
        if layer.type not in _ACT_HOSTS or len(layer.outputs) != 1 or 9 in layer.params:
            continue
        act = _sole_consumer(g, layer.outputs[0], keep)
        if act is None:
            continue
        spec = _activation(act)
        if spec is None:
            continue
        layer.params[9] = spec[0]
        if spec[1] is not None:
            layer.params[10] = spec[1]
        layer.outputs = list(act.outputs)
        g.layers.remove(act)
        changed = True
    return changed


def merge_reshapes(g: NcnnGraph, keep: set[str]) -> bool:
    changed = False
    producers = g.producers()
    for layer in list(g.layers):
        if layer.type != "Reshape" or layer not in g.layers:
            continue
        src = layer.inputs[0]
        prev = producers.get(src)
        if prev is not None and prev.type == "Reshape" and prev in g.layers:
            users = [x for x in g.layers if src in x.inputs]
            layer.inputs = list(prev.inputs)
            if len(users) == 1 and src not in keep:
                g.layers.remove(prev)
            changed = True
        src = layer.inputs[0]
        if g.shapes.get(src) == g.shapes.get(layer.outputs[0]) and layer.outputs[0] not in keep:
            out = layer.outputs[0]
            for x in g.layers:
                x.inputs = [src if b == out else b for b in x.inputs]
            g.layers.remove(layer)
            changed = True
        producers = g.producers()
    return changed


def fold_transpose_b(g: NcnnGraph, keep: set[str]) -> bool:
    changed = False
    producers = g.producers()
    for layer in list(g.layers):
        if layer.type != "MatMul" or len(layer.inputs) != 2 or int(layer.params.get(0, 0)) != 0:
            continue
        prev = producers.get(layer.inputs[1])
        if prev is None or prev.type != "Permute" or int(prev.params.get(0, 0)) != 1:
            continue
        src_shape, b_shape = g.shapes.get(prev.inputs[0]), g.shapes.get(layer.inputs[1])
        if src_shape is None or b_shape is None or len(src_shape) < 2 or len(src_shape) != len(b_shape):
            continue  # order_type 1 swaps the two innermost axes of a 2-, 3- or 4-D Mat
        out = prev.outputs[0]
        layer.inputs = [layer.inputs[0], prev.inputs[0]]
        layer.params[0] = 1
        if out not in keep and not any(out in x.inputs for x in g.layers):
            g.layers.remove(prev)
        changed = True
        producers = g.producers()
    return changed


def run_all(g: NcnnGraph, keep_blobs: set[str]) -> dict[str, str]:
    """Run every pass to a fixed point; returns renamed blobs (none so far)."""
    for _ in range(4):
        changed = merge_reshapes(g, keep_blobs)
        changed |= fuse_batchnorm(g, keep_blobs)
        changed |= fuse_activation(g, keep_blobs)
        changed |= fold_transpose_b(g, keep_blobs)
        if not changed:
            break
    return {}
