"""A read Caffe net -> ONNX, one small mapping per layer type.

Tensor names: every Caffe blob keeps its name on its last writer (so outputs and
``--locate`` read like the prototxt); earlier versions of an in-place blob (``conv1`` before
its in-place ReLU) are renamed ``<blob>/<layer>``. Shapes are static (Caffe nets declare their
input shapes) and are tracked here, so Reshape/Flatten/Slice/pooling get concrete sizes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mconv.convert.caffe import geometry as geo
from mconv.convert.caffe.netdef import Layer, Net, blob
from mconv.errors import ConversionError, InputError, UsageError

MIN_OPSET = 13
Shape = tuple[int, ...]


class Graph:
    """The ONNX graph under construction and the Caffe blob -> tensor name bookkeeping."""

    def __init__(self, net: Net, opset: int) -> None:
        self.net, self.opset = net, opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.shapes: dict[str, Shape] = {}
        self.current: dict[str, str] = {}
        self.used: set[str] = set(net.inputs)
        self.writes = Counter(t for layer in net.layers if layer.type != "Input" for t in layer.tops)
        self.written: Counter = Counter()
        self.node_names: set[str] = set()

    def unique(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.unique(base)
        # np.ascontiguousarray would make scalars 1-D; Clip's min/max must stay 0-D.
        self.inits.append(numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def ints(self, base: str, values) -> str:
        return self.const(base, np.asarray(list(values), dtype=np.int64))

    def node(self, op: str, inputs: list[str], outputs: list[str], layer: Layer, **attrs) -> None:
        name, i = (layer.name, 1) if layer.name not in self.node_names else (f"{layer.name}/{op}", 1)
        while name in self.node_names:
            name, i = f"{layer.name}/{op}_{i}", i + 1
        self.node_names.add(name)
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))

    def tmp(self, layer: Layer, what: str) -> str:
        return self.unique(f"{layer.name}/{what}")

    def top_name(self, layer: Layer, top: str) -> str:
        """The tensor name of this write of ``top`` (the blob's own name on its last writer)."""
        self.written[top] += 1
        last = self.written[top] == self.writes[top]
        if last and top not in self.net.inputs and top not in self.used:
            self.used.add(top)
            return top
        return self.unique(f"{top}/{layer.name}")

    def blob(self, layer: Layer, index: int, shape: Shape, what: str) -> str:
        return self.const(f"{layer.name}/{what}", blob(self.net, layer, index, shape).astype(np.float32))


Mapper = Callable[[Graph, Layer, list[str], list[Shape], list[str]], list[Shape]]


def _conv(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
    p, win = layer.param.convolution_param, geo.conv_window(layer)
    n, c, h, w = _need_4d(layer, shapes[0])
    group, out_c = int(p.group), int(p.num_output)
    deconv = layer.type == "Deconvolution"
    wshape = (c, out_c // group, *win.kernel) if deconv else (out_c, c // group, *win.kernel)
    inputs = [xs[0], g.blob(layer, 0, wshape, "weight")]
    if p.bias_term:
        inputs.append(g.blob(layer, 1, (out_c,), "bias"))
    (ph, pw), (sh, sw), (dh, dw), (kh, kw) = win.pad, win.stride, win.dilation, win.kernel
    g.node("ConvTranspose" if deconv else "Conv", inputs, outs, layer, kernel_shape=[kh, kw], strides=[sh, sw],
           pads=[ph, pw, ph, pw], dilations=[dh, dw], group=group)  # fmt: skip
    size = geo.deconv_out if deconv else geo.conv_out
    return [(n, out_c, size(h, kh, sh, ph, dh), size(w, kw, sw, pw, dw))]


def _need_4d(layer: Layer, shape: Shape) -> Shape:
    if len(shape) != 4:
        raise ConversionError(f"layer '{layer.name}' ({layer.type}): only 2-D (NCHW) inputs are mapped, got {shape}")
    return shape


def _pool(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
    n, c, h, w = _need_4d(layer, shapes[0])
    win, ave = geo.pool_window(layer, (h, w)), layer.param.pooling_param.pool == 1
    if layer.param.pooling_param.global_pooling:
        g.node("GlobalAveragePool" if ave else "GlobalMaxPool", xs[:1], outs, layer)
        return [(n, c, 1, 1)]
    ceil = geo.pool_ceil(layer)
    (kh, kw), (sh, sw), (ph, pw) = win.kernel, win.stride, win.pad
    oh, ow = geo.pool_out(h, kh, sh, ph, ceil), geo.pool_out(w, kw, sw, pw, ceil)
    # Explicit end pads reproduce Caffe's output size (its last window may hang over the pad).
    eh, ew = max(0, (oh - 1) * sh + kh - h - ph), max(0, (ow - 1) * sw + kw - w - pw)
    attrs = {"kernel_shape": [kh, kw], "strides": [sh, sw], "pads": [ph, pw, eh, ew]}
    if not ave:
        g.node("MaxPool", xs[:1], outs, layer, **attrs)
        return [(n, c, oh, ow)]
    divisor = _caffe_ave_divisor((h, w), win, (oh, ow))
    if np.all(divisor == kh * kw):
        g.node("AveragePool", xs[:1], outs, layer, count_include_pad=1, **attrs)
        return [(n, c, oh, ow)]
    # Caffe divides by the window's extent inside input + pad (not beyond): AveragePool over
    # the zero-padded input divides by kh*kw, a constant map then corrects the edge windows.
    mean = g.tmp(layer, "mean")
    g.node("AveragePool", xs[:1], [mean], layer, count_include_pad=1, **attrs)
    fix = (kh * kw / divisor).astype(np.float32).reshape(1, 1, oh, ow)
    g.node("Mul", [mean, g.const(f"{layer.name}/divisor_fix", fix)], outs, layer)
    return [(n, c, oh, ow)]


def _caffe_ave_divisor(hw: tuple[int, int], win: geo.Window, out: tuple[int, int]) -> np.ndarray:
    """Caffe's AVE pool size per output position: the window clipped to input + pad."""
    sizes = []
    for size, k, s, p, o in zip(hw, win.kernel, win.stride, win.pad, out):
        start = np.arange(o) * s - p
        sizes.append(np.minimum(start + k, size + p) - start)
    return np.outer(sizes[0], sizes[1]).astype(np.float64)


def _inner_product(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
    p, shape = layer.param.inner_product_param, shapes[0]
    axis, out_n = geo.canonical_axis(int(p.axis), len(shape)), int(p.num_output)
    k = int(np.prod(shape[axis:]))
    flat = g.tmp(layer, "flat")
    g.node("Flatten", xs[:1], [flat], layer, axis=axis)
    inputs = [flat, g.blob(layer, 0, (k, out_n) if p.transpose else (out_n, k), "weight")]
    if p.bias_term:
        inputs.append(g.blob(layer, 1, (out_n,), "bias"))
    out_shape = (*shape[:axis], out_n)
    if axis == 1:
        g.node("Gemm", inputs, outs, layer, transB=0 if p.transpose else 1)
        return [out_shape]
    gemm = g.tmp(layer, "gemm")
    g.node("Gemm", inputs, [gemm], layer, transB=0 if p.transpose else 1)
    g.node("Reshape", [gemm, g.ints(f"{layer.name}/shape", out_shape)], outs, layer)
    return [out_shape]


def _batch_norm(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
    c = shapes[0][1]
    factor = float(blob(g.net, layer, 2, (1,))[0])
    # Caffe stores running sums: divide by the accumulated factor (0 when never updated).
    k = 0.0 if factor == 0 else 1.0 / factor
    mean = g.const(f"{layer.name}/mean", (blob(g.net, layer, 0, (c,)) * k).astype(np.float32))
    var = g.const(f"{layer.name}/var", (blob(g.net, layer, 1, (c,)) * k).astype(np.float32))
    one = g.const(f"{layer.name}/one", np.ones(c, np.float32))
    zero = g.const(f"{layer.name}/zero", np.zeros(c, np.float32))
    eps = float(layer.param.batch_norm_param.eps)
    g.node("BatchNormalization", [xs[0], one, zero, mean, var], outs, layer, epsilon=eps)
    return [shapes[0]]


def _scale(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
    p, shape = layer.param.scale_param, shapes[0]
    two = len(xs) > 1
    bshape = geo.scale_shape(layer, shape, shapes[1] if two else None)
    if two:
        factor = g.tmp(layer, "factor")
        g.node("Reshape", [xs[1], g.ints(f"{layer.name}/factor_shape", bshape)], [factor], layer)
    else:
        factor = g.blob(layer, 0, bshape, "scale")
    if not p.bias_term:
        g.node("Mul", [xs[0], factor], outs, layer)
        return [shape]
    scaled = g.tmp(layer, "scaled")
    g.node("Mul", [xs[0], factor], [scaled], layer)
    g.node("Add", [scaled, g.blob(layer, 0 if two else 1, bshape, "bias")], outs, layer)
    return [shape]


def _unary(op: str, **fixed) -> Mapper:
    def mapper(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
        g.node(op, xs[:1], outs, layer, **fixed)
        return [shapes[0]]

    return mapper


def _relu(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
    slope = float(layer.param.relu_param.negative_slope)
    if slope == 0:
        g.node("Relu", xs[:1], outs, layer)
    else:
        g.node("LeakyRelu", xs[:1], outs, layer, alpha=slope)
    return [shapes[0]]


def _prelu(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
    shape = shapes[0]
    count = 1 if layer.param.prelu_param.channel_shared else shape[1]
    slope = blob(g.net, layer, 0, (count,)).reshape((count,) + (1,) * (len(shape) - 2))
    g.node("PRelu", [xs[0], g.const(f"{layer.name}/slope", slope.astype(np.float32))], outs, layer)
    return [shape]


def _elu(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
    g.node("Elu", xs[:1], outs, layer, alpha=float(layer.param.elu_param.alpha))
    return [shapes[0]]


def _power(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
    p, x = layer.param.power_param, xs[0]
    steps = [("Mul", float(p.scale), 1.0), ("Add", float(p.shift), 0.0), ("Pow", float(p.power), 1.0)]
    steps = [(op, v) for op, v, identity in steps if v != identity] or [("Identity", None)]
    for i, (op, value) in enumerate(steps):
        out = outs[0] if i == len(steps) - 1 else g.tmp(layer, op.lower())
        inputs = [x] if value is None else [x, g.const(f"{layer.name}/{op.lower()}", np.float32(value))]
        g.node(op, inputs, [out], layer)
        x = out
    return [shapes[0]]


def _concat(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
    axis = geo.concat_axis(layer, len(shapes[0]))
    g.node("Concat", xs, outs, layer, axis=axis)
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    return [tuple(out)]


def _eltwise(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
    p = layer.param.eltwise_param
    op = {0: "Mul", 1: "Sum", 2: "Max"}[p.operation]
    coeffs = [float(c) for c in p.coeff]
    if op == "Sum" and coeffs:
        if len(coeffs) != len(xs):
            raise InputError(f"{g.net.prototxt}:{layer.line}: Eltwise '{layer.name}' has {len(xs)} bottoms but "
                             f"{len(coeffs)} coeff values; give one per bottom")  # fmt: skip
        weighted = []
        for i, (x, c) in enumerate(zip(xs, coeffs)):
            if c == 1.0:
                weighted.append(x)
                continue
            weighted.append(g.tmp(layer, f"term{i}"))
            g.node("Mul", [x, g.const(f"{layer.name}/coeff{i}", np.float32(c))], [weighted[-1]], layer)
        xs = weighted
    acc = xs[0]
    for i, x in enumerate(xs[1:], start=1):
        out = outs[0] if i == len(xs) - 1 else g.tmp(layer, f"acc{i}")
        g.node("Add" if op == "Sum" else op, [acc, x], [out], layer)
        acc = out
    if len(xs) == 1:
        g.node("Identity", xs, outs, layer)
    return [shapes[0]]


def _softmax(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
    g.node("Softmax", xs[:1], outs, layer, axis=geo.canonical_axis(int(layer.param.softmax_param.axis), len(shapes[0])))
    return [shapes[0]]


def _reshape_to(target: Callable[[Layer, Shape], Shape]) -> Mapper:
    def mapper(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
        shape = target(layer, shapes[0])
        if int(np.prod(shape)) != int(np.prod(shapes[0])) or min(shape, default=1) < 1:
            raise InputError(f"{g.net.prototxt}:{layer.line}: {layer.type} '{layer.name}' cannot turn "
                             f"{list(shapes[0])} into {list(shape)}")  # fmt: skip
        g.node("Reshape", [xs[0], g.ints(f"{layer.name}/shape", shape)], outs, layer)
        return [shape]

    return mapper


def _permute(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
    order = geo.permute_order(layer, len(shapes[0]))
    g.node("Transpose", xs[:1], outs, layer, perm=order)
    return [tuple(shapes[0][a] for a in order)]


def _identity(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
    for out in outs:
        g.node("Identity", xs[:1], [out], layer)
    return [shapes[0]] * len(outs)


def _slice(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
    try:
        axis, sizes = geo.slice_sizes(layer, shapes[0])
    except ValueError as e:
        raise InputError(f"{g.net.prototxt}:{layer.line}: Slice '{layer.name}': {e}") from e
    g.node("Split", [xs[0], g.ints(f"{layer.name}/split", sizes)], outs, layer, axis=axis)
    return [tuple(s if i != axis else n for i, s in enumerate(shapes[0])) for n in sizes]


def _interp(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
    n, c, h, w = _need_4d(layer, shapes[0])
    try:
        oh, ow = geo.interp_size(layer, (h, w))
    except ValueError as e:
        raise InputError(f"{g.net.prototxt}:{layer.line}: Interp '{layer.name}': {e}") from e
    # Caffe's Interp maps corners to corners: (in - 1) / (out - 1).
    sizes = g.ints(f"{layer.name}/sizes", (n, c, oh, ow))
    g.node("Resize", [xs[0], "", "", sizes], outs, layer, mode="linear", coordinate_transformation_mode="align_corners")
    return [(n, c, oh, ow)]


def _upsample(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
    n, c, h, w = _need_4d(layer, shapes[0])
    sh, sw = geo.upsample_scale(layer)
    scales = g.const(f"{layer.name}/scales", np.array([1, 1, sh, sw], np.float32))
    g.node("Resize", [xs[0], "", scales], outs, layer, mode="nearest", coordinate_transformation_mode="asymmetric",
           nearest_mode="floor")  # fmt: skip
    return [(n, c, h * sh, w * sw)]


def _normalize(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
    p, shape = layer.param.norm_param, shapes[0]
    axes = list(range(1, len(shape))) if p.across_spatial else [1]
    sq = g.tmp(layer, "sumsq")
    if g.opset >= 18:
        g.node("ReduceSumSquare", [xs[0], g.ints(f"{layer.name}/axes", axes)], [sq], layer, keepdims=1)
    else:
        g.node("ReduceSumSquare", xs[:1], [sq], layer, axes=axes, keepdims=1)
    eps, norm, unit = g.tmp(layer, "eps"), g.tmp(layer, "norm"), g.tmp(layer, "unit")
    g.node("Add", [sq, g.const(f"{layer.name}/eps_value", np.float32(p.eps))], [eps], layer)
    g.node("Sqrt", [eps], [norm], layer)
    g.node("Div", [xs[0], norm], [unit], layer)
    count = 1 if p.channel_shared else shape[1]
    scale = blob(g.net, layer, 0, (count,)).reshape((count,) + (1,) * (len(shape) - 2))
    g.node("Mul", [unit, g.const(f"{layer.name}/scale", scale.astype(np.float32))], outs, layer)
    return [shape]


def _lrn(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
    p = layer.param.lrn_param
    g.node(
        "LRN", xs[:1], outs, layer, size=int(p.local_size), alpha=float(p.alpha), beta=float(p.beta), bias=float(p.k)
    )
    return [shapes[0]]


def _prior_box(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
    if len(shapes) != 2 or len(shapes[0]) != 4 or len(shapes[1]) != 4:
        raise InputError(f"{g.net.prototxt}:{layer.line}: PriorBox '{layer.name}' needs two 4-D bottoms (the "
                         "feature map and the image)")  # fmt: skip
    try:
        priors = geo.prior_boxes(layer, shapes[0][2:], shapes[1][2:])
    except ValueError as e:
        raise InputError(f"{g.net.prototxt}:{layer.line}: PriorBox '{layer.name}': {e}") from e
    g.node("Constant", [], outs, layer, value=numpy_helper.from_array(priors, outs[0]))
    return [priors.shape]


def _crop(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
    try:
        axis, offsets = geo.crop_window(layer, shapes[0], shapes[1])
    except (ValueError, IndexError) as e:
        raise InputError(f"{g.net.prototxt}:{layer.line}: Crop '{layer.name}': {e}") from e
    sizes = shapes[1][axis:]
    starts = g.ints(f"{layer.name}/starts", offsets)
    ends = g.ints(f"{layer.name}/ends", [o + n for o, n in zip(offsets, sizes)])
    axes = g.ints(f"{layer.name}/axes", range(axis, len(shapes[0])))
    g.node("Slice", [xs[0], starts, ends, axes], outs, layer)
    return [(*shapes[0][:axis], *sizes)]


def _relu6(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
    lo, hi = g.const(f"{layer.name}/min", np.float32(0)), g.const(f"{layer.name}/max", np.float32(6))
    g.node("Clip", [xs[0], lo, hi], outs, layer)
    return [shapes[0]]


def _shuffle_channel(g: Graph, layer: Layer, xs: list[str], shapes: list[Shape], outs: list[str]) -> list[Shape]:
    n, c, h, w = _need_4d(layer, shapes[0])
    group = int(layer.param.shuffle_channel_param.group)
    if c % group:
        raise InputError(f"{g.net.prototxt}:{layer.line}: ShuffleChannel '{layer.name}': {c} channels do not "
                         f"split into {group} groups")  # fmt: skip
    split, moved = g.tmp(layer, "groups"), g.tmp(layer, "moved")
    g.node("Reshape", [xs[0], g.ints(f"{layer.name}/grouped", (n, group, c // group, h, w))], [split], layer)
    g.node("Transpose", [split], [moved], layer, perm=[0, 2, 1, 3, 4])
    g.node("Reshape", [moved, g.ints(f"{layer.name}/shape", (n, c, h, w))], outs, layer)
    return [shapes[0]]


MAPPERS: dict[str, Mapper] = {
    "Convolution": _conv, "Deconvolution": _conv, "Pooling": _pool, "InnerProduct": _inner_product,
    "BatchNorm": _batch_norm, "Scale": _scale, "ReLU": _relu, "PReLU": _prelu, "ELU": _elu,
    "Sigmoid": _unary("Sigmoid"), "TanH": _unary("Tanh"), "AbsVal": _unary("Abs"), "Power": _power,
    "Concat": _concat, "Eltwise": _eltwise, "Softmax": _softmax, "Flatten": _reshape_to(geo.flatten_target),
    "Reshape": _reshape_to(geo.reshape_target), "Permute": _permute, "Dropout": _identity, "Split": _identity,
    "Slice": _slice, "Interp": _interp, "Upsample": _upsample, "Normalize": _normalize, "LRN": _lrn,
    "PriorBox": _prior_box, "Crop": _crop, "ReLU6": _relu6, "ShuffleChannel": _shuffle_channel,
    "DepthwiseConvolution": _conv, "ConvolutionDepthwise": _conv,
}  # fmt: skip


def _bottoms(g: Graph, layer: Layer) -> tuple[list[str], list[Shape]]:
    names = []
    for b in layer.bottoms:
        if b not in g.current:
            raise InputError(f"{g.net.prototxt}:{layer.line}: layer '{layer.name}' reads blob '{b}', which no "
                             "earlier layer or input produces")  # fmt: skip
        names.append(g.current[b])
    return names, [g.shapes[n] for n in names]


def build(net: Net, opset: int) -> onnx.ModelProto:
    """The ONNX model of a net whose layers are all supported (checked before)."""
    if opset < MIN_OPSET:
        raise UsageError(f"--opset {opset}: Caffe nets are converted at opset {MIN_OPSET} or newer")
    g = Graph(net, opset)
    for name, shape in net.inputs.items():
        g.current[name], g.shapes[name] = name, shape
    for layer in net.layers:
        if layer.type == "Input":
            continue
        xs, shapes = _bottoms(g, layer)
        outs = [g.top_name(layer, t) for t in layer.tops]
        for top, out, shape in zip(layer.tops, outs, MAPPERS[layer.type](g, layer, xs, shapes, outs)):
            g.current[top], g.shapes[out] = out, shape
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in net.inputs.items()]
    outputs = [
        helper.make_tensor_value_info(g.current[b], TensorProto.FLOAT, list(g.shapes[g.current[b]]))
        for b in net.outputs()
        if g.current.get(b, b) not in net.inputs
    ]
    graph = helper.make_graph(g.nodes, net.name or net.prototxt.stem, inputs, outputs, initializer=g.inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="mconv-caffe")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    return model
