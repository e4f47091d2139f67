"""Merge summed parallel branches on one input into one Conv (structural re-parameterization).

Train-time multi-branch blocks (RepVGG, MobileOne, RepViT, FastViT, RepGhost, ACNet) sum
several linear branches of the same input; exported without their ``reparameterize()``
step, every branch is a separate convolution over the whole feature map. Cases rewritten,
for ``Add(a, b)`` where a and b read the same tensor x and each is one of:

1. ``Conv(x, W[, B])`` with constant weights, ``auto_pad`` NOTSET, read only by the Add;
2. ``BatchNormalization(x)`` with constant parameters, read only by the Add (a per-channel
   scale and shift: an identity kernel times the scale);
3. x itself (an identity kernel);
4. a constant that varies only along the channel axis (it joins the Conv's bias;
   timm's MobileOne starts its sum from a constant 0).

``Sub(a, b)`` is merged as ``a + (-1)·b``, and ``Mul(Conv(x), c)`` with c per channel
becomes a Conv with scaled weights: FastViT's RepMixer, ``x + γ·(mixer(x) - norm(x))``,
becomes one Conv in three rounds.

At least one side is a Conv. Both Convs need the same strides, dilations and group, and
kernels that read the same input positions once each kernel is aligned by its padding
(a 1x1 with pad 0 inside a 3x3 with pad 1, a 1x3 inside a 3x3, ...). The identity needs
stride 1, as many output as input channels, and a kernel whose padding keeps the size.
The Add becomes ``Conv(x, W', B')`` with the kernels summed in float64. Chains
``Add(Add(a, b), c)`` merge one Add per round; a BatchNormalization after the merged
Add is left to ``fuse_conv_bn``, which runs after this pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mconv.passes.base import Pass, PassResult
from mconv.passes.fuse import batchnorm_affine
from mconv.passes.graph import attr, constant_node_value, consumers, graph_output_names, is_default_domain

_MAX_ROUNDS = 32
_OPS = ("Add", "Sub", "Mul")


@dataclass
class _Branch:
    """One summand as a convolution of ``x``. A Conv's kernel (O, I/g, *k) and bias (O,)
    are read only when the branch is merged (most Adds, residual ones, never are)."""

    x: str
    node: onnx.NodeProto | None = None  # the producer that disappears, if any
    conv_inits: tuple | None = None  # a Conv's (W, B or None) initializers
    pads: list[int] = field(default_factory=list)  # begin..., end...
    strides: list[int] = field(default_factory=list)
    dilations: list[int] = field(default_factory=list)
    group: int = 1
    scale: np.ndarray | None = None  # affine branch: per-channel scale (identity: None)
    shift: np.ndarray | None = None  # affine branch: per-channel shift
    const_src: object = None  # a constant summand's initializer or Constant node
    factor: float = 1.0  # -1 for the subtrahend of a Sub

    @cached_property
    def const(self) -> np.ndarray | None:
        """The constant summand (read only when the other side is a Conv)."""
        src = self.const_src
        if src is None:
            return None
        return numpy_helper.to_array(src) if isinstance(src, onnx.TensorProto) else constant_node_value(src)

    @cached_property
    def w(self) -> np.ndarray:
        return self.factor * numpy_helper.to_array(self.conv_inits[0]).astype(np.float64)

    @cached_property
    def b(self) -> np.ndarray:
        t = self.conv_inits[1]
        b = np.zeros(self.w.shape[0]) if t is None else numpy_helper.to_array(t).astype(np.float64)
        return self.factor * b

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.conv_inits[0].data_type))


class MergeParallelConvsPass(Pass):
    """Merge summed Conv / identity / BatchNormalization branches of one input into one Conv."""

    name = "merge_parallel_convs"

    def call(self, model: onnx.ModelProto) -> PassResult:
        merged = 0
        for _ in range(_MAX_ROUNDS):
            n = _merge_round(model.graph)
            if not n:
                break
            merged += n
        if not merged:
            return PassResult(model, False)
        return PassResult(model, True, [f"merged {merged} Add/Sub/Mul node(s) of parallel branches into Conv(s)"])


def _merge_round(g: onnx.GraphProto) -> int:
    inits = {t.name: t for t in g.initializer}
    users = consumers(g)
    outputs = graph_output_names(g)
    producer = {o: n for n in g.node for o in n.output}
    replace: dict[int, onnx.NodeProto] = {}
    drop: set[int] = set()
    new_inits: list[onnx.TensorProto] = []
    for add in g.node:
        if add.op_type not in _OPS or not is_default_domain(add) or len(add.input) != 2 or id(add) in drop:
            continue
        sides = [_branch(t, add, producer, users, outputs, inits) for t in add.input]
        if any(s is None for s in sides) or any(s.node is not None and id(s.node) in drop for s in sides):
            continue
        a, b = sides
        if add.op_type == "Sub":
            b.factor = -1.0
        merged = _scaled(a, b) if add.op_type == "Mul" else _combine(a, b)
        if merged is None:
            continue
        w, bias, pads, dilations, ref = merged
        base = add.name or add.output[0]
        wname, bname = _fresh(f"{base}_W_merged", inits), _fresh(f"{base}_B_merged", inits)
        dtype = ref.dtype
        for name, arr in ((wname, w), (bname, bias)):
            t = numpy_helper.from_array(arr.astype(dtype), name)
            inits[name] = t
            new_inits.append(t)
        replace[id(add)] = helper.make_node(
            "Conv",
            [ref.x, wname, bname],
            [add.output[0]],
            name=base,
            kernel_shape=list(w.shape[2:]),
            pads=pads,
            strides=ref.strides,
            dilations=dilations,
            group=ref.group,
        )
        drop.update(id(s.node) for s in sides if s.node is not None)
    if not replace:
        return 0
    gone = {o for n in g.node if id(n) in drop for o in n.output}
    nodes = [replace.get(id(n), n) for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    vis = [vi for vi in g.value_info if vi.name not in gone]  # the branches' own outputs are gone
    del g.value_info[:]
    g.value_info.extend(vis)
    return len(replace)


def _branch(t, add, producer, users, outputs, inits) -> _Branch | None:
    """Describe summand ``t`` of ``add`` as a convolution of some tensor, or None."""
    n = producer.get(t)
    sole = n is not None and t not in outputs and len(users.get(t, [])) == 1 and is_default_domain(n)
    if sole and n.op_type == "Conv" and len(n.output) == 1:
        return _conv_branch(n, inits)
    if sole and n.op_type == "BatchNormalization" and len(n.output) == 1:
        if any(p not in inits for p in n.input[1:5]):
            return None
        scale, shift = batchnorm_affine(n, inits)
        return _Branch(n.input[0], n, scale=scale, shift=shift)
    if t in inits:
        return _Branch("", const_src=inits[t])
    if n is not None and n.op_type == "Constant" and is_default_domain(n):
        return _Branch("", const_src=n)
    return _Branch(t)


def _conv_branch(n: onnx.NodeProto, inits) -> _Branch | None:
    if attr(n, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or len(n.input) < 2:
        return None
    bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
    if n.input[1] not in inits or (bias is not None and bias not in inits):
        return None
    w = inits[n.input[1]]
    if (
        w.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
        or len(w.dims) < 3
    ):
        return None
    rank = len(w.dims) - 2
    return _Branch(
        n.input[0],
        n,
        (w, inits[bias] if bias else None),
        list(attr(n, "pads", [0] * (2 * rank))),
        list(attr(n, "strides", [1] * rank)),
        list(attr(n, "dilations", [1] * rank)),
        attr(n, "group", 1),
    )


def _combine(a: _Branch, b: _Branch):
    """(W, B, pads, dilations, the Conv side) of the one Conv equal to a + b, or None."""
    if a.conv_inits is None:
        a, b = b, a
    if a.conv_inits is None:
        return None
    if b.const is not None:
        bias = _per_channel(b.const, a.w.shape[0], a.w.ndim)
        return None if bias is None else (a.w, a.b + b.factor * bias, a.pads, a.dilations, a)
    if a.x != b.x:
        return None
    merged = _merge(a, b) if b.conv_inits is not None else _merge_identity(a, b)
    return None if merged is None else (*merged, a)


def _scaled(a: _Branch, b: _Branch):
    """(W, B, ...) of the Conv equal to Conv(x) * c for a per-channel constant c, or None."""
    if a.conv_inits is None:
        a, b = b, a
    if a.conv_inits is None or b.const is None:
        return None
    s = _per_channel(b.const, a.w.shape[0], a.w.ndim)
    if s is None:
        return None
    return a.w * s.reshape(-1, *([1] * (a.w.ndim - 1))), a.b * s, a.pads, a.dilations, a


def _per_channel(c: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """A constant applied to a Conv output as a per-channel vector (O,), or None when it
    varies along another axis or would broadcast the output to a larger shape."""
    if c.dtype not in (np.float16, np.float32, np.float64) or c.ndim > rank:
        return None
    full = c.reshape((1,) * (rank - c.ndim) + c.shape)
    if any(d != 1 for i, d in enumerate(full.shape) if i != 1) or full.shape[1] not in (1, channels):
        return None
    return np.broadcast_to(full.reshape(-1).astype(np.float64), (channels,))


def _merge(a: _Branch, b: _Branch):
    """Two Conv branches -> (W, B, pads, dilations) of one Conv, or None when they do not align."""
    if a.strides != b.strides or a.group != b.group:
        return None
    if a.w.shape[:2] != b.w.shape[:2] or a.w.ndim != b.w.ndim:
        return None
    rank = a.w.ndim - 2
    kernel, pads, offsets, dilations = [], [0] * (2 * rank), ([], []), []
    for i in range(rank):
        ka, kb = a.w.shape[2 + i], b.w.shape[2 + i]
        # A kernel of size 1 reads one position whatever its dilation.
        d = a.dilations[i] if ka > 1 else b.dilations[i]
        if (b.dilations[i] if kb > 1 else d) != d:
            return None
        dilations.append(d)
        # Output size is (size + begin + end - d*(k-1) - 1) // s + 1: the extents must match.
        if a.pads[i] + a.pads[rank + i] - d * (ka - 1) != b.pads[i] + b.pads[rank + i] - d * (kb - 1):
            return None
        begin = max(a.pads[i], b.pads[i])
        oa, ob = begin - a.pads[i], begin - b.pads[i]
        if oa % d or ob % d:
            return None
        oa, ob = oa // d, ob // d
        k = max(oa + ka, ob + kb)
        pads[i], pads[rank + i] = begin, a.pads[i] + a.pads[rank + i] - d * (ka - 1) + d * (k - 1) - begin
        if pads[rank + i] < 0:
            return None
        kernel.append(k)
        offsets[0].append(oa)
        offsets[1].append(ob)
    w = np.zeros(a.w.shape[:2] + tuple(kernel))
    for src, off in ((a.w, offsets[0]), (b.w, offsets[1])):
        w[(slice(None), slice(None), *(slice(o, o + k) for o, k in zip(off, src.shape[2:], strict=True)))] += src
    return w, a.b + b.b, pads, dilations


def _merge_identity(conv: _Branch, ident: _Branch):
    """A Conv branch plus x (or a per-channel affine of x) -> (W, B, pads, dilations), or None."""
    w = conv.w
    rank = w.ndim - 2
    out_c, in_per_group = w.shape[0], w.shape[1]
    if out_c != in_per_group * conv.group or any(s != 1 for s in conv.strides):
        return None
    centre = []
    for i in range(rank):
        d, k, begin = conv.dilations[i], w.shape[2 + i], conv.pads[i]
        # Same size as the input, and the input's own position is a kernel tap.
        if begin + conv.pads[rank + i] != d * (k - 1) or begin % d:
            return None
        centre.append(begin // d)
    scale = ident.factor * (ident.scale if ident.scale is not None else np.ones(out_c))
    shift = ident.factor * (ident.shift if ident.shift is not None else np.zeros(out_c))
    if scale.shape != (out_c,) or shift.shape != (out_c,):
        return None
    w2 = w.copy()
    chans = np.arange(out_c)
    w2[(chans, chans % in_per_group, *centre)] += scale
    return w2, conv.b + shift, list(conv.pads), conv.dilations


def _fresh(name: str, taken) -> str:
    out, i = name, 0
    while out in taken:
        i += 1
        out = f"{name}_{i}"
    return out
