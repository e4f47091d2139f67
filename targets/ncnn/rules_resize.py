"""Spatial resampling and space/depth shuffles: Resize, Upsample, GridSample, DepthToSpace,
SpaceToDepth.

Cases:
    Resize/Upsample on N, C, [H,] W with N and C unscaled -> Interp.
    nearest: accepted when ONNX's source index for every output pixel (its
    coordinate_transformation_mode and nearest_mode, computed here) equals
    ncnn's ``floor(x * in/out)`` (or ``floor(x / scale)`` for explicit
    scales), so e.g. asymmetric/floor always and half_pixel/round_prefer_floor
    for integer factors. linear/cubic: half_pixel and pytorch_half_pixel ->
    align 0, align_corners -> ``6=1``, when the output size equals input*scale
    (ncnn derives the scale from the sizes); asymmetric linear is refused.
    DepthToSpace -> PixelShuffle (DCR 1, CRD 0); SpaceToDepth -> Reorg.
    GridSample (2-D, 3-D; bilinear, bicubic in 2-D; zeros or border padding)
    -> GridSample.
"""

from __future__ import annotations

import numpy as np

from mconv.targets.ncnn.lower import Ctx, Node, NotLowerable, nc_shape
from mconv.targets.ncnn.registry import rule


def _onnx_nearest_index(n_in: int, n_out: int, scale: float, ctm: str, mode: str) -> np.ndarray:
    x = np.arange(n_out, dtype=np.float64)
    if ctm == "asymmetric":
        xo = x / scale
    elif ctm == "half_pixel":
        xo = (x + 0.5) / scale - 0.5
    elif ctm == "pytorch_half_pixel":
        xo = (x + 0.5) / scale - 0.5 if n_out > 1 else np.zeros_like(x)
    elif ctm == "align_corners":
        xo = x * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros_like(x)
    elif ctm == "tf_half_pixel_for_nn":
        xo = (x + 0.5) / scale
    else:
        return np.full(n_out, -1)
    if mode == "floor":
        i = np.floor(xo)
    elif mode == "ceil":
        i = np.ceil(xo)
    elif mode == "round_prefer_ceil":
        i = np.floor(xo + 0.5)
    else:  # round_prefer_floor
        i = np.ceil(xo - 0.5)
    return np.clip(i, 0, n_in - 1).astype(np.int64)


def _ncnn_nearest_index(n_in: int, n_out: int, step: float) -> np.ndarray:
    x = np.arange(n_out, dtype=np.float32)
    return np.minimum(np.floor(x * np.float32(step)), n_in - 1).astype(np.int64)


def _interp(ctx: Ctx, node: Node, mode: str, scales: list[float] | None, ctm: str) -> None:
    x = node.inputs[0]
    assert x is not None
    out_shape = ctx.out_shape()
    if x.rank not in (3, 4):
        raise NotLowerable(f"resize of rank {x.rank}")
    if tuple(out_shape[:2]) != tuple(x.shape[:2]):
        raise NotLowerable("resize of the batch or channel axis")
    n = x.rank - 2
    ins, outs = list(x.shape[2:]), list(out_shape[2:])
    sc = [(scales[2 + i] if scales else outs[i] / ins[i]) for i in range(n)]
    p: dict = {}
    if mode == "nearest":
        nmode = node.attr("nearest_mode", "round_prefer_floor")
        explicit = bool(scales) and all(int(ins[i] * sc[i]) == outs[i] for i in range(n))
        for i in range(n):
            step = 1.0 / sc[i] if explicit else ins[i] / outs[i]
            want = _onnx_nearest_index(ins[i], outs[i], sc[i], ctm, nmode)
            if not np.array_equal(want, _ncnn_nearest_index(ins[i], outs[i], step)):
                raise NotLowerable(f"nearest with {ctm}/{nmode} at scale {sc[i]:g}")
        p[0] = 1
        if explicit:
            p[1] = float(sc[0]) if n == 2 else 1.0
            p[2] = float(sc[-1])
        else:
            p[3], p[4] = (outs[0] if n == 2 else 1), outs[-1]
    else:
        if ctm not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
            raise NotLowerable(f"{mode} with coordinate_transformation_mode={ctm}")
        if ctm == "pytorch_half_pixel" and any(o == 1 for o in outs):
            raise NotLowerable("pytorch_half_pixel to size 1")
        # A scale that is not out/in (0.6 of 4 -> 2) samples at (x + 0.5) / scale - 0.5:
        # ncnn does so when Interp gets the scales and no sizes (then out = int(in *
        # scale), checked against the runtime); with sizes it samples at in/out.
        by_scale = bool(scales) and any(abs(ins[i] * sc[i] - outs[i]) > 1e-6 for i in range(n))
        if by_scale and ctm == "align_corners":
            raise NotLowerable("align_corners with a scale that is not out/in")
        if by_scale and any(int(ins[i] * sc[i]) != outs[i] for i in range(n)):
            raise NotLowerable("scale whose output size ncnn would round differently")
        if mode == "cubic":
            if float(node.attr("cubic_coeff_a", -0.75)) != -0.75:
                raise NotLowerable("cubic_coeff_a != -0.75")
            if int(node.attr("exclude_outside", 0)):
                raise NotLowerable("exclude_outside=1")
        if int(node.attr("antialias", 0)) and any(o < i for o, i in zip(outs, ins)):
            raise NotLowerable("antialiased downscale")
        p[0] = 2 if mode == "linear" else 3
        if by_scale:
            p[1] = float(sc[0]) if n == 2 else 1.0
            p[2] = float(sc[-1])
        else:
            p[3], p[4] = (outs[0] if n == 2 else 1), outs[-1]
        p[6] = int(ctm == "align_corners")
    keep = tuple(range(1, x.rank))
    xb = ctx.blob_as(x, keep)
    c = x.shape[1]
    if n == 1:
        xb = ctx.reshape(xb, (c, 1, ins[0]), name_hint=x.name)
    blob = ctx.emit("Interp", [xb], (c, outs[0] if n == 2 else 1, outs[-1]), p)
    ctx.bind(node.outputs[0], blob, keep)


@rule("Resize")
def resize(ctx: Ctx, node: Node) -> None:
    mode = node.attr("mode", "nearest")
    x = node.inputs[0]
    assert x is not None
    axes = node.attr("axes")
    if node.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise NotLowerable("keep_aspect_ratio_policy (scale is not out/in per axis)")
    ctm = node.attr("coordinate_transformation_mode", "half_pixel")
    scales = None
    if ctx.prep.opset >= 11:
        s = node.const(2, "scales") if len(node.inputs) > 2 else None
        if s is not None and s.size:
            scales = [float(v) for v in s]
            if axes is not None:  # opset 18: scales only for the listed axes
                full = [1.0] * x.rank
                for a, v in zip(axes, scales):
                    full[a + x.rank if a < 0 else a] = v
                scales = full
    else:
        s = node.const(1, "scales")
        scales = [float(v) for v in s]
        ctm = "asymmetric" if ctx.prep.opset < 11 else ctm
    _interp(ctx, node, mode, scales, ctm)


@rule("Upsample")
def upsample(ctx: Ctx, node: Node) -> None:
    mode = node.attr("mode", "nearest")
    if "scales" in node.attrs:
        scales = [float(v) for v in node.attr("scales")]
    else:
        scales = [float(v) for v in node.const(1, "scales")]
    # Upsample (opset 7-9) is asymmetric with floor rounding.
    if mode == "nearest":
        node.attrs["nearest_mode"] = "floor"
    _interp(ctx, node, mode, scales, "asymmetric")


@rule("DepthToSpace")
def depth_to_space(ctx: Ctx, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    bs = int(node.attr("blocksize"))
    mode = node.attr("mode", "DCR")
    keep = tuple(range(1, x.rank))
    if x.rank != 4:
        raise NotLowerable(f"rank {x.rank}")
    xb = ctx.blob_as(x, keep)
    out_shape = ctx.out_shape()
    blob = ctx.emit("PixelShuffle", [xb], nc_shape(out_shape, keep), {0: bs, 1: int(mode == "DCR")})
    ctx.bind(node.outputs[0], blob, keep)


@rule("SpaceToDepth")
def space_to_depth(ctx: Ctx, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    bs = int(node.attr("blocksize"))
    keep = tuple(range(1, x.rank))
    if x.rank != 4:
        raise NotLowerable(f"rank {x.rank}")
    xb = ctx.blob_as(x, keep)
    out_shape = ctx.out_shape()
    mode = node.attr("mode", "DCR")
    blob = ctx.emit("Reorg", [xb], nc_shape(out_shape, keep), {0: bs, 1: int(mode == "DCR")})
    ctx.bind(node.outputs[0], blob, keep)


_GRID_MODES = {"bilinear": 1, "linear": 1, "nearest": 2, "bicubic": 3, "cubic": 3}
_GRID_PADDING = {"zeros": 1, "border": 2, "reflection": 3}


@rule("GridSample")
def grid_sample(ctx: Ctx, node: Node) -> None:
    """GridSample (2-D and 3-D, batch 1; 2-D batches item by item) -> ncnn GridSample: the grid [1, H, W, 2] is
    the Mat (c=H, h=W, w=2) the layer reads without ``permute_fusion``. Nearest
    sampling and reflection padding are refused: they differ from onnxruntime on the
    onnx conformance cases (ncnn rounds half up; its reflection differs)."""
    x, grid = node.inputs[0], node.inputs[1]
    assert x is not None and grid is not None
    mode = node.attr("mode", "linear" if ctx.prep.opset >= 20 else "bilinear")
    padding = node.attr("padding_mode", "zeros")
    if mode not in _GRID_MODES or padding not in _GRID_PADDING:
        raise NotLowerable(f"mode {mode}, padding {padding}")
    if mode == "nearest":
        raise NotLowerable("nearest sampling (ncnn rounds half up, ONNX half to even: results differ at .5)")
    if padding == "reflection":
        raise NotLowerable("reflection padding (ncnn's reflected coordinates differ from ONNX's)")
    if x.const is not None or x.rank not in (4, 5):
        raise NotLowerable("a dynamic 4-D or 5-D input")
    if mode in ("bicubic", "cubic") and x.rank == 5:
        raise NotLowerable("bicubic 3-D sampling (ncnn's GridSample is bicubic in 2-D only)")
    params = {0: _GRID_MODES[mode], 1: _GRID_PADDING[padding], 2: int(node.attr("align_corners", 0)), 3: 0}
    n = int(x.shape[0])
    if n > 1 and not ctx.batched_inputs():
        _grid_sample_batch(ctx, node, x, grid, params)
        return
    keep = tuple(range(1, x.rank))
    xb = ctx.blob_as(x, keep)
    gb = ctx.blob_as(grid, tuple(range(1, grid.rank)))
    out = ctx.emit("GridSample", [xb, gb], nc_shape(ctx.out_shape(), keep), params, out_name=node.outputs[0])
    ctx.bind(node.outputs[0], out, keep)


# Most batch items sampled one GridSample each (multi-scale deformable attention
# samples one value map per head: 8).
GRID_BATCH_MAX = 64


def _grid_sample_batch(ctx: Ctx, node: Node, x, grid, params: dict) -> None:
    """A batch of 2-D samplings (RT-DETR's deformable attention puts its heads in the
    batch axis): Slice both along it, one GridSample per item, Concat the results."""
    n = int(x.shape[0])
    if x.rank != 4 or int(grid.shape[0]) != n or n > GRID_BATCH_MAX:
        raise NotLowerable(f"GridSample of a batch of {n} {x.rank - 2}-D inputs (2-D up to {GRID_BATCH_MAX} converts)")
    c, h, w = (int(d) for d in x.shape[1:])
    gh, gw = int(grid.shape[1]), int(grid.shape[2])
    xb = ctx.reshape(ctx.blob_as(x), (n, c, h, w), name_hint=x.name)
    gb = ctx.reshape(ctx.blob_as(grid), (n, gh, gw, 2), name_hint=grid.name)
    xs = ctx.layer("Slice", [xb], [(1, c, h, w)] * n, {0: [1] * (n - 1) + [-233], 1: 0})
    gs = ctx.layer("Slice", [gb], [(1, gh, gw, 2)] * n, {0: [1] * (n - 1) + [-233], 1: 0})
    outs = []
    for xi, gi in zip(xs, gs):
        xi = ctx.reshape(xi, (c, h, w))
        gi = ctx.reshape(gi, (gh, gw, 2))
        outs.append(ctx.emit("GridSample", [xi, gi], (c, gh, gw), params))
    cat = ctx.emit("Concat", outs, (n * c, gh, gw), {0: 0})
    out_shape = ctx.out_shape()
    keep = tuple(range(len(out_shape)))
    ctx.bind(node.outputs[0], ctx.reshape(cat, nc_shape(out_shape, keep), name_hint=node.outputs[0]), keep)
