"""Caffe's shape rules for windows (convolution, pooling) and resizing layers, read from the params.

Both the ONNX mapping and the numpy reference read a layer's geometry here: these are facts
of the Caffe format (which field wins, how sizes round), not of either implementation.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Window:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)


def _pair(p: Any, single: str, h: str, w: str, default: int) -> tuple[int, int]:
    if p.HasField(h) or p.HasField(w):
        return int(getattr(p, h)), int(getattr(p, w))
    values = [int(v) for v in getattr(p, single)]
    if not values:
        return default, default
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def conv_window(layer: Any) -> Window:
    """Kernel, stride, pad and dilation of a Convolution/Deconvolution (2-D)."""
    p = layer.param.convolution_param
    dil = [int(v) for v in p.dilation] or [1]
    return Window(
        kernel=_pair(p, "kernel_size", "kernel_h", "kernel_w", 0),
        stride=_pair(p, "stride", "stride_h", "stride_w", 1),
        pad=_pair(p, "pad", "pad_h", "pad_w", 0),
        dilation=(dil[0], dil[-1]),
    )


def conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def deconv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return s * (size - 1) + d * (k - 1) + 1 - 2 * p


def pool_window(layer: Any, hw: tuple[int, int]) -> Window:
    """A Pooling layer's window; global pooling covers the whole input (pad 0, stride 1)."""
    p = layer.param.pooling_param
    if p.global_pooling:
        return Window(kernel=(hw[0], hw[1]), stride=(1, 1), pad=(0, 0))
    return Window(
        kernel=_pair(p, "kernel_size", "kernel_h", "kernel_w", 0),
        stride=_pair(p, "stride", "stride_h", "stride_w", 1),
        pad=_pair(p, "pad", "pad_h", "pad_w", 0),
    )


def pool_ceil(layer: Any) -> bool:
    """BVLC Caffe always rounds the output size up; forks add round_mode/ceil_mode to round down."""
    p = layer.param.pooling_param
    if p.HasField("round_mode"):
        return p.round_mode == 0
    return p.ceil_mode


def pool_out(size: int, k: int, s: int, p: int, ceil: bool) -> int:
    """Caffe's pooled size: rounded up (or down), and the last window must start inside the
    input or its leading pad (else it is dropped)."""
    span = size + 2 * p - k
    out = (-(-span // s) if ceil else span // s) + 1
    if p > 0 and (out - 1) * s >= size + p:
        out -= 1
    return out


def interp_size(layer: Any, hw: tuple[int, int]) -> tuple[int, int]:
    """Output size of PSPNet's Interp: shrink, zoom, explicit height/width, or shrink then zoom."""
    p = layer.param.interp_param
    shrink, zoom = p.HasField("shrink_factor"), p.HasField("zoom_factor")
    h, w = hw
    if shrink and not zoom:
        return (h - 1) // p.shrink_factor + 1, (w - 1) // p.shrink_factor + 1
    if zoom and not shrink:
        return h + (h - 1) * (p.zoom_factor - 1), w + (w - 1) * (p.zoom_factor - 1)
    if p.HasField("height") and p.HasField("width"):
        return int(p.height), int(p.width)
    if shrink and zoom:
        h, w = (h - 1) // p.shrink_factor + 1, (w - 1) // p.shrink_factor + 1
        return h + (h - 1) * (p.zoom_factor - 1), w + (w - 1) * (p.zoom_factor - 1)
    raise ValueError("Interp needs zoom_factor, shrink_factor, or height and width")


def upsample_scale(layer: Any) -> tuple[int, int]:
    p = layer.param.upsample_param
    sh = p.scale_h if p.HasField("scale_h") else p.scale
    sw = p.scale_w if p.HasField("scale_w") else p.scale
    return int(sh), int(sw)


def canonical_axis(axis: int, ndim: int) -> int:
    return axis + ndim if axis < 0 else axis


def reshape_target(layer: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Caffe Reshape: ``dim: 0`` copies the input dim, one ``-1`` is inferred; ``axis`` and
    ``num_axes`` choose the span of input axes replaced."""
    p = layer.param.reshape_param
    dims = [int(d) for d in p.shape.dim]
    start = canonical_axis(int(p.axis), len(shape) + 1) if p.axis < 0 else int(p.axis)
    end = len(shape) if p.num_axes == -1 else start + int(p.num_axes)
    middle = [shape[start + i] if d == 0 else d for i, d in enumerate(dims)]
    out = [*shape[:start], *middle, *shape[end:]]
    total = 1
    for d in shape:
        total *= d
    if -1 in out:
        known = 1
        for d in out:
            known *= d if d != -1 else 1
        out[out.index(-1)] = total // known
    return tuple(out)


def flatten_target(layer: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    p = layer.param.flatten_param
    a = canonical_axis(int(p.axis), len(shape))
    e = canonical_axis(int(p.end_axis), len(shape))
    inner = 1
    for d in shape[a : e + 1]:
        inner *= d
    return (*shape[:a], inner, *shape[e + 1 :])


def permute_order(layer: Any, ndim: int) -> list[int]:
    """The given axes first, then the rest in their order (Caffe's Permute completes the order)."""
    order = [int(o) for o in layer.param.permute_param.order]
    return order + [a for a in range(ndim) if a not in order]


def concat_axis(layer: Any, ndim: int) -> int:
    p = layer.param.concat_param
    if p.HasField("concat_dim") and not p.HasField("axis"):
        return int(p.concat_dim)
    return canonical_axis(int(p.axis), ndim)


def slice_sizes(layer: Any, shape: tuple[int, ...]) -> tuple[int, list[int]]:
    """The slice axis and each top's extent along it."""
    p = layer.param.slice_param
    axis = int(p.slice_dim) if p.HasField("slice_dim") and not p.HasField("axis") else int(p.axis)
    axis = canonical_axis(axis, len(shape))
    n, tops = shape[axis], len(layer.tops)
    points = [int(v) for v in p.slice_point]
    if not points:
        if n % tops:
            raise ValueError(f"axis {axis} of size {n} does not split into {tops} equal tops")
        return axis, [n // tops] * tops
    if len(points) != tops - 1 or points != sorted(points) or points[-1] >= n:
        raise ValueError(f"slice_point {points} does not cut axis {axis} of size {n} into {tops} tops")
    bounds = [0, *points, n]
    return axis, [b - a for a, b in itertools.pairwise(bounds)]


def scale_shape(layer: Any, shape: tuple[int, ...], operand: tuple[int, ...] | None) -> tuple[int, ...]:
    """The broadcast shape of a Scale layer's factor (a blob, or the second bottom ``operand``)."""
    p = layer.param.scale_param
    axis = canonical_axis(int(p.axis), len(shape))
    if operand is not None:
        covered = tuple(operand)
    elif p.num_axes == -1:
        covered = shape[axis:]
    else:
        covered = shape[axis : axis + int(p.num_axes)]
    return covered + (1,) * (len(shape) - axis - len(covered))


def prior_boxes(layer: Any, feat_hw: tuple[int, int], img_hw: tuple[int, int]) -> np.ndarray:
    """SSD's PriorBox output, (1, 2, H*W*priors*4): boxes (xmin, ymin, xmax, ymax) relative to
    the image, then their variances. It depends on shapes and params only, so it is a constant
    of a net with static input shapes."""
    p = layer.param.prior_box_param
    mins, maxs = [float(v) for v in p.min_size], [float(v) for v in p.max_size]
    if not mins or (maxs and len(maxs) != len(mins)):
        raise ValueError(f"needs min_size, and as many max_size as min_size (got {mins}, {maxs})")
    ratios = [1.0]
    for ar in p.aspect_ratio:
        if all(abs(ar - r) >= 1e-6 for r in ratios):
            ratios += [float(ar), 1.0 / ar] if p.flip else [float(ar)]
    sizes = []  # (width, height) of each prior at one position, in Caffe's order
    for s, m in enumerate(mins):
        sizes.append((m, m))
        if maxs:
            sizes.append((math.sqrt(m * maxs[s]),) * 2)
        sizes += [(m * math.sqrt(r), m / math.sqrt(r)) for r in ratios if abs(r - 1.0) >= 1e-6]
    lh, lw = feat_hw
    if p.HasField("img_h") or p.HasField("img_w"):
        ih, iw = int(p.img_h), int(p.img_w)
    else:
        ih, iw = (int(p.img_size),) * 2 if p.HasField("img_size") else img_hw
    if p.HasField("step_h") or p.HasField("step_w"):
        sh, sw = float(p.step_h), float(p.step_w)
    else:
        sh, sw = (float(p.step),) * 2 if p.HasField("step") else (ih / lh, iw / lw)
    cy, cx = np.meshgrid((np.arange(lh) + p.offset) * sh, (np.arange(lw) + p.offset) * sw, indexing="ij")
    half = np.asarray(sizes, np.float64) / 2  # (P, 2) half width, half height
    cx, cy = cx[..., None], cy[..., None]
    boxes = np.stack(
        [(cx - half[:, 0]) / iw, (cy - half[:, 1]) / ih, (cx + half[:, 0]) / iw, (cy + half[:, 1]) / ih], -1
    )
    boxes = boxes.reshape(-1)
    if p.clip:
        boxes = np.clip(boxes, 0.0, 1.0)
    variance = [float(v) for v in p.variance] or [0.1]
    if len(variance) not in (1, 4):
        raise ValueError(f"needs 1 or 4 variance values, got {len(variance)}")
    variances = np.resize(np.asarray(variance), boxes.size)
    return np.stack([boxes, variances])[None].astype(np.float32)


def crop_window(layer: Any, shape: tuple[int, ...], ref: tuple[int, ...]) -> tuple[int, list[int]]:
    """Crop: from ``axis`` on, the reference bottom's sizes at ``offset`` (one for all axes or one each)."""
    p = layer.param.crop_param
    axis = canonical_axis(int(p.axis), len(shape))
    count = len(shape) - axis
    offsets = [int(o) for o in p.offset]
    if len(offsets) not in (0, 1, count):
        raise ValueError(f"needs 0, 1 or {count} offset values, got {len(offsets)}")
    offsets = offsets * count if len(offsets) == 1 else offsets or [0] * count
    for i, (o, n) in enumerate(zip(offsets, ref[axis:])):
        if o + n > shape[axis + i]:
            raise ValueError(f"offset {o} + size {n} exceeds axis {axis + i} of size {shape[axis + i]}")
    return axis, offsets
