"""Rules for the layout-sensitive ops (NHWC kernels) and the linear layers.

Cases:
    Conv 2-D, group 1          -> CONV_2D (weights OIHW -> OHWI)
    Conv, group = C_in         -> DEPTHWISE_CONV_2D (weights [1, kh, kw, O])
    Conv, other groups         -> SPLIT, one CONV_2D per group, CONCATENATION
    pads                       -> SAME when they are TFLite's SAME pads, else PAD + VALID
    MaxPool / AveragePool      -> MAX_POOL_2D / AVERAGE_POOL_2D (padding as for Conv; max
                                  pools pad with the lowest float; average pools that
                                  exclude padding are rescaled by the window counts)
    GlobalAverage/MaxPool      -> MEAN / REDUCE_MAX over H, W (keep dims)
    Gemm, MatMul (const 2-D B) -> FULLY_CONNECTED (+ ADD for a bias that is not [N])
    MatMul, Gemm (dynamic B)   -> BATCH_MATMUL
    BatchNormalization         -> MUL + ADD by per-channel constants
    LRN (odd size)             -> LOCAL_RESPONSE_NORMALIZATION (alpha / size)
    Resize / Upsample          -> RESIZE_NEAREST_NEIGHBOR / RESIZE_BILINEAR
    LayerNormalization         -> MEAN, SQUARED_DIFFERENCE, MEAN, ADD, RSQRT, SUB, MUL, MUL, ADD
    DepthToSpace (DCR)         -> DEPTH_TO_SPACE; SpaceToDepth -> SPACE_TO_DEPTH
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from mconv.errors import ConversionError
from mconv.targets.litert.lower import Lowering, attrs

SAME, VALID = 0, 1
_LOWEST = float(np.finfo(np.float32).min)


def _same_pads(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    eff = (k - 1) * d + 1
    total = max((math.ceil(size / s) - 1) * s + eff - size, 0)
    return total // 2, total - total // 2


def spatial_pads(low: Lowering, n: onnx.NodeProto, kernel, hw) -> tuple[list[int], int]:
    """ONNX pads as [top, left, bottom, right] (auto_pad and ceil_mode resolved) and
    whether they are TFLite's SAME."""
    a = attrs(n)
    strides = a.get("strides", [1, 1])
    dil = a.get("dilations", [1, 1])
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    same = [_same_pads(hw[i], kernel[i], strides[i], dil[i]) for i in range(2)]
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [p[0 if auto == "SAME_UPPER" else 1] for p in same] + [p[1 if auto == "SAME_UPPER" else 0] for p in same]
    elif auto == "VALID":
        pads = [0, 0, 0, 0]
    else:
        pads = list(a.get("pads", [0, 0, 0, 0]))
    if a.get("ceil_mode", 0):
        out_hw = low.shape(n.output[0])[2:]
        for i in range(2):
            eff = (kernel[i] - 1) * dil[i] + 1
            need = (out_hw[i] - 1) * strides[i] + eff - (hw[i] + pads[i] + pads[i + 2])
            pads[i + 2] += max(need, 0)
    return pads, SAME if pads == [same[0][0], same[1][0], same[0][1], same[1][1]] else VALID


def pad_nhwc(low: Lowering, x: int, pads: list[int], name: str, value: float = 0.0) -> int:
    """PAD (or PADV2 with ``value``) of an NHWC tensor by ONNX [t, l, b, r] pads."""
    if not any(pads):
        return x
    n_, h, w, c = low.graph.tensors[x].shape
    spec = [[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]]
    y = low.temp(f"{name}__pad", (n_, h + pads[0] + pads[2], w + pads[1] + pads[3], c))
    if value == 0.0:
        low.graph.op("PAD", [x, low.graph.i32(f"{name}__pads", spec)], [y])
    else:
        v = low.graph.const(f"{name}__padvalue", np.array(value, np.float32))
        low.graph.op("PADV2", [x, low.graph.i32(f"{name}__pads", spec), v], [y])
    return y


def conv(low: Lowering, n: onnx.NodeProto) -> None:
    w = low.const(n.input[1])
    if w is None:
        raise ConversionError("weights computed at run time are not supported; they must be constants")
    if w.ndim != 4:
        raise ConversionError(f"only 2-D convolutions are supported (weights of rank {w.ndim})")
    a = attrs(n)
    o, ig, kh, kw = w.shape
    bias = low.const(n.input[2]) if len(n.input) > 2 and n.input[2] else np.zeros(o, np.float32)
    if bias is None:
        raise ConversionError("a bias computed at run time is not supported")
    c_in = low.shape(n.input[0])[1]
    group = int(a.get("group", 1))
    x = low.get(n.input[0], "nhwc")
    pads, padding = spatial_pads(low, n, (kh, kw), low.shape(n.input[0])[2:])
    if padding == VALID:
        x = pad_nhwc(low, x, pads, n.output[0])
    s, d = a.get("strides", [1, 1]), a.get("dilations", [1, 1])
    geo = {"Padding": padding, "StrideH": s[0], "StrideW": s[1], "DilationHFactor": d[0], "DilationWFactor": d[1]}
    name = n.output[0]
    if group == 1:
        wt = low.graph.const(f"{name}__w", w.transpose(0, 2, 3, 1).astype(np.float32))
        b = low.graph.const(f"{name}__b", bias.astype(np.float32))
        low.emit("CONV_2D", [x, wt, b], name, "nhwc", "Conv2DOptions", **geo)
    elif group == c_in and ig == 1:
        wt = low.graph.const(f"{name}__w", w.reshape(o, kh, kw).transpose(1, 2, 0)[None].astype(np.float32))
        b = low.graph.const(f"{name}__b", bias.astype(np.float32))
        low.emit(
            "DEPTHWISE_CONV_2D", [x, wt, b], name, "nhwc", "DepthwiseConv2DOptions", DepthMultiplier=o // c_in, **geo
        )
    else:
        _grouped_conv(low, n, x, w, bias, group, geo)


def _grouped_conv(low: Lowering, n: onnx.NodeProto, x: int, w, bias, group: int, geo: dict) -> None:
    name = n.output[0]
    out_shape = low.shape(name)
    n_, h, wd, c = low.graph.tensors[x].shape
    parts = [low.temp(f"{name}__in{g}", (n_, h, wd, c // group)) for g in range(group)]
    low.graph.op("SPLIT", [low.graph.i32(f"{name}__axis", 3), x], parts, "SplitOptions", NumSplits=group)
    og = w.shape[0] // group
    outs = []
    for g in range(group):
        wt = low.graph.const(f"{name}__w{g}", w[g * og : (g + 1) * og].transpose(0, 2, 3, 1).astype(np.float32))
        b = low.graph.const(f"{name}__b{g}", bias[g * og : (g + 1) * og].astype(np.float32))
        y = low.temp(f"{name}__out{g}", (out_shape[0], out_shape[2], out_shape[3], og))
        low.graph.op("CONV_2D", [parts[g], wt, b], [y], "Conv2DOptions", **geo)
        outs.append(y)
    opts = {"Axis": 3, "FusedActivationFunction": 0}
    low.emit("CONCATENATION", outs, name, "nhwc", "ConcatenationOptions", **opts)


def pool(low: Lowering, n: onnx.NodeProto) -> None:
    a = attrs(n)
    k = a["kernel_shape"]
    if len(k) != 2 or a.get("dilations", [1, 1]) != [1, 1]:
        raise ConversionError("only 2-D pools without dilation are supported")
    s = a.get("strides", [1, 1])
    hw = low.shape(n.input[0])[2:]
    pads, padding = spatial_pads(low, n, k, hw)
    x = low.get(n.input[0], "nhwc")
    is_max = n.op_type == "MaxPool"
    exclude = not is_max and not a.get("count_include_pad", 0)
    if not is_max and not exclude and padding == SAME:
        padding = VALID  # TFLite's SAME average leaves the padding out of the count
    if padding == VALID:
        # Max pools pad with the lowest float (PADV2, which XNNPACK does not run: ~20% of
        # a ResNet-18); after a ReLU-like op zero padding is the same and stays delegated.
        low_pad = 0.0 if not is_max or low.non_negative(n.input[0]) else _LOWEST
        x = pad_nhwc(low, x, pads, n.output[0], low_pad)
    opts = {"Padding": padding, "StrideH": s[0], "StrideW": s[1], "FilterHeight": k[0], "FilterWidth": k[1]}
    code = "MAX_POOL_2D" if is_max else "AVERAGE_POOL_2D"
    if not (exclude and padding == VALID and any(pads)):
        low.emit(code, [x], n.output[0], "nhwc", "Pool2DOptions", **opts)
        return
    # Padding excluded from the average: average over the zero-padded input, then
    # rescale each output by kernel area / number of real elements in its window.
    out = low.shape(n.output[0])
    y = low.temp(f"{n.output[0]}__avg", (out[0], out[2], out[3], out[1]))
    low.graph.op(code, [x], [y], "Pool2DOptions", **opts)
    ones = np.pad(np.ones(hw, np.float32), ((pads[0], pads[2]), (pads[1], pads[3])))
    counts = np.array(
        [
            [ones[i * s[0] : i * s[0] + k[0], j * s[1] : j * s[1] + k[1]].sum() for j in range(out[3])]
            for i in range(out[2])
        ]
    )
    scale = low.graph.const(f"{n.output[0]}__count", (k[0] * k[1] / counts)[None, :, :, None].astype(np.float32))
    low.emit("MUL", [y, scale], n.output[0], "nhwc", "MulOptions", FusedActivationFunction=0)


def global_pool(low: Lowering, n: onnx.NodeProto) -> None:
    if low.rank(n.input[0]) != 4:
        raise ConversionError("only 4-D global pools are supported")
    x = low.get(n.input[0], "nhwc")
    code = "MEAN" if n.op_type == "GlobalAveragePool" else "REDUCE_MAX"
    low.emit(
        code, [x, low.graph.i32(f"{n.output[0]}__axes", [1, 2])], n.output[0], "nhwc", "ReducerOptions", KeepDims=True
    )


def gemm(low: Lowering, n: onnx.NodeProto) -> None:
    a = attrs(n)
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    x = low.get(n.input[0])
    name = n.output[0]
    if a.get("transA", 0):
        m, k = low.shape(n.input[0])
        t = low.temp(f"{name}__at", (k, m))
        low.graph.op("TRANSPOSE", [x, low.graph.i32(f"{name}__perm", [1, 0])], [t])
        x = t
    b = low.const(n.input[1])
    c = low.const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
    if b is None:
        y = matmul_dynamic(
            low, x, low.get(n.input[1]), name, adj_y=bool(a.get("transB", 0)), final=c is None and len(n.input) < 3
        )
        if len(n.input) > 2 and n.input[2]:
            _add_bias(low, y, n.input[2], name, beta)
        return
    w = (b if a.get("transB", 0) else b.T) * alpha
    bias_vec = c is not None and c.size in (1, w.shape[0]) and c.ndim <= 2
    bias = np.broadcast_to(c.ravel() * beta, (w.shape[0],)) if bias_vec else np.zeros(w.shape[0])
    late = len(n.input) > 2 and n.input[2] and not bias_vec
    ins = [
        x,
        low.graph.const(f"{name}__w", w.astype(np.float32)),
        low.graph.const(f"{name}__b", bias.astype(np.float32)),
    ]
    if late:
        y = low.temp(f"{name}__fc", low.shape(name))
        low.graph.op("FULLY_CONNECTED", ins, [y], "FullyConnectedOptions", FusedActivationFunction=0)
        _add_bias(low, y, n.input[2], name, beta)
    else:
        low.emit("FULLY_CONNECTED", ins, name, "onnx", "FullyConnectedOptions", FusedActivationFunction=0)


def _add_bias(low: Lowering, y: int, c_name: str, name: str, beta: float) -> None:
    c = low.get(c_name)
    if beta != 1.0:
        scaled = low.temp(f"{name}__c", low.graph.tensors[c].shape)
        low.graph.op("MUL", [c, low.graph.const(f"{name}__beta", np.float32(beta))], [scaled], "MulOptions")
        c = scaled
    low.emit("ADD", [y, c], name, "onnx", "AddOptions", FusedActivationFunction=0)


def matmul_dynamic(low: Lowering, x: int, b: int, name: str, *, adj_y: bool = False, final: bool = True) -> int:
    ins = [x, b]
    opts = {"AdjX": False, "AdjY": adj_y}
    if final:
        return low.emit("BATCH_MATMUL", ins, name, "onnx", "BatchMatMulOptions", **opts)
    y = low.temp(f"{name}__mm", low.shape(name))
    low.graph.op("BATCH_MATMUL", ins, [y], "BatchMatMulOptions", **opts)
    return y


def matmul(low: Lowering, n: onnx.NodeProto) -> None:
    b = low.const(n.input[1])
    x = low.get(n.input[0])
    if b is not None and b.ndim == 2 and low.rank(n.input[0]) >= 2:
        ins = [x, low.graph.const(f"{n.output[0]}__w", b.T.astype(np.float32))]
        ins.append(low.graph.const(f"{n.output[0]}__b", np.zeros(b.shape[1], np.float32)))
        keep = low.rank(n.input[0]) > 2
        opts = {"FusedActivationFunction": 0, "KeepNumDims": keep}
        low.emit("FULLY_CONNECTED", ins, n.output[0], "onnx", "FullyConnectedOptions", **opts)
        return
    if low.rank(n.input[0]) < 2 or low.rank(n.input[1]) < 2:
        raise ConversionError("MatMul with a 1-D operand is not supported")
    matmul_dynamic(low, x, low.get(n.input[1]), n.output[0])


def batch_norm(low: Lowering, n: onnx.NodeProto) -> None:
    vals = [low.const(i) for i in n.input[1:5]]
    if any(v is None for v in vals):
        raise ConversionError("BatchNormalization needs constant scale, bias, mean and variance")
    gamma, beta, mean, var = (np.asarray(v, np.float64) for v in vals)
    eps = float(attrs(n).get("epsilon", 1e-5))
    scale = gamma / np.sqrt(var + eps)
    shift = beta - mean * scale
    layout = low.follow([n.input[0]])
    x = low.get(n.input[0], layout)
    rank = low.rank(n.input[0])
    shape = (-1,) if layout == "nhwc" else (-1,) + (1,) * (rank - 2)
    name = n.output[0]
    t = low.temp(f"{name}__scaled", low.graph.tensors[x].shape)
    low.graph.op("MUL", [x, low.graph.const(f"{name}__scale", scale.reshape(shape))], [t], "MulOptions")
    low.emit("ADD", [t, low.graph.const(f"{name}__shift", shift.reshape(shape))], name, layout, "AddOptions")


def lrn(low: Lowering, n: onnx.NodeProto) -> None:
    a = attrs(n)
    size = int(a["size"])
    if size % 2 == 0:
        raise ConversionError(f"LRN with an even size ({size}) has no TFLite equivalent")
    x = low.get(n.input[0], "nhwc")
    opts = {
        "Radius": (size - 1) // 2,
        "Bias": float(a.get("bias", 1.0)),
        "Alpha": float(a.get("alpha", 1e-4)) / size,
        "Beta": float(a.get("beta", 0.75)),
    }
    low.emit("LOCAL_RESPONSE_NORMALIZATION", [x], n.output[0], "nhwc", "LocalResponseNormalizationOptions", **opts)


def _text(v, default: str) -> str:
    if v is None:
        return default
    return v.decode() if isinstance(v, bytes) else str(v)


def resize(low: Lowering, n: onnx.NodeProto) -> None:
    a = attrs(n)
    if low.rank(n.input[0]) != 4:
        raise ConversionError("only 4-D resizes are supported")
    mode = _text(a.get("mode"), "nearest")
    coord = _text(a.get("coordinate_transformation_mode"), "half_pixel" if n.op_type == "Resize" else "asymmetric")
    nearest = _text(a.get("nearest_mode"), "round_prefer_floor")
    out = low.shape(n.output[0])
    if out[:2] != low.shape(n.input[0])[:2]:
        raise ConversionError("resizing the batch or channel axis is not supported")
    x = low.get(n.input[0], "nhwc")
    size = low.graph.i32(f"{n.output[0]}__size", out[2:])
    if mode == "nearest":
        ok = {("asymmetric", "floor"): (False, False), ("align_corners", "round_prefer_ceil"): (True, False)}
        ok[("half_pixel", "round_prefer_ceil")] = ok[("tf_half_pixel_for_nn", "round_prefer_ceil")] = (False, True)
        if n.op_type == "Upsample":
            coord, nearest = "asymmetric", "floor"
        if (coord, nearest) not in ok:
            raise ConversionError(f"nearest Resize with {coord}/{nearest} has no TFLite equivalent")
        align, half = ok[(coord, nearest)]
        code, table = "RESIZE_NEAREST_NEIGHBOR", "ResizeNearestNeighborOptions"
    elif mode in ("linear", "bilinear"):
        if coord not in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"):
            raise ConversionError(f"linear Resize with {coord} coordinates has no TFLite equivalent")
        align, half = coord == "align_corners", coord in ("half_pixel", "pytorch_half_pixel")
        code, table = "RESIZE_BILINEAR", "ResizeBilinearOptions"
    else:
        raise ConversionError(f"Resize mode '{mode}' is not supported (nearest, linear)")
    low.emit(code, [x, size], n.output[0], "nhwc", table, AlignCorners=align, HalfPixelCenters=half)


def layer_norm(low: Lowering, n: onnx.NodeProto) -> None:
    a = attrs(n)
    rank = low.rank(n.input[0])
    axis = int(a.get("axis", -1)) % rank
    eps = float(a.get("epsilon", 1e-5))
    g = low.graph
    x = low.get(n.input[0])
    name = n.output[0]
    shape = low.shape(n.input[0])
    red = shape[:axis] + (1,) * (rank - axis)
    axes = g.i32(f"{name}__axes", list(range(axis, rank)))
    mean, var, sq, inv, cen, norm = (
        low.temp(f"{name}__{k}", s)
        for k, s in zip(("mean", "var", "sq", "inv", "centred", "norm"), (red, red, shape, red, shape, shape))
    )
    g.op("MEAN", [x, axes], [mean], "ReducerOptions", KeepDims=True)
    g.op("SQUARED_DIFFERENCE", [x, mean], [sq])
    g.op("MEAN", [sq, axes], [var], "ReducerOptions", KeepDims=True)
    veps = low.temp(f"{name}__veps", red)
    g.op("ADD", [var, g.const(f"{name}__eps", np.float32(eps))], [veps], "AddOptions")
    g.op("RSQRT", [veps], [inv])
    g.op("SUB", [x, mean], [cen], "SubOptions")
    g.op("MUL", [cen, inv], [norm], "MulOptions")
    scale = low.const(n.input[1]) if len(n.input) > 1 else None
    bias = low.const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
    if bias is None:
        low.emit("MUL", [norm, low.get(n.input[1])], name, "onnx", "MulOptions")
        return
    scaled = low.temp(f"{name}__scaled", shape)
    g.op(
        "MUL",
        [norm, low.get(n.input[1]) if scale is None else g.const(f"{name}__gamma", scale.astype(np.float32))],
        [scaled],
        "MulOptions",
    )
    low.emit("ADD", [scaled, g.const(f"{name}__beta", bias.astype(np.float32))], name, "onnx", "AddOptions")


def depth_space(low: Lowering, n: onnx.NodeProto) -> None:
    a = attrs(n)
    if n.op_type == "DepthToSpace" and _text(a.get("mode"), "DCR") != "DCR":
        raise ConversionError("DepthToSpace in CRD mode has no TFLite equivalent (DCR only)")
    x = low.get(n.input[0], "nhwc")
    code = "DEPTH_TO_SPACE" if n.op_type == "DepthToSpace" else "SPACE_TO_DEPTH"
    table = "DepthToSpaceOptions" if n.op_type == "DepthToSpace" else "SpaceToDepthOptions"
    low.emit(code, [x], n.output[0], "nhwc", table, BlockSize=int(a["blocksize"]))


RULES = {
    "Conv": conv,
    "MaxPool": pool,
    "AveragePool": pool,
    "GlobalAveragePool": global_pool,
    "GlobalMaxPool": global_pool,
    "Gemm": gemm,
    "MatMul": matmul,
    "BatchNormalization": batch_norm,
    "LRN": lrn,
    "Resize": resize,
    "Upsample": resize,
    "LayerNormalization": layer_norm,
    "DepthToSpace": depth_space,
    "SpaceToDepth": depth_space,
}
